"""Lesson 01: the ELBO identity on an exact model, Gaussian KLs, the reparameterisation trick, the
IWAE bound, the gradient estimators and the VAE itself."""

import math

import pytest
import torch
from torch.distributions import MultivariateNormal, Normal, kl_divergence

import tinydiff as td
from tinydiff import vae as V

F64 = torch.float64


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def _random_q(B, m, g, scale=1.0):
    """A random Gaussian q per input: mean (B, m), covariance (B, m, m) symmetric positive definite."""
    mean = scale * torch.randn(B, m, generator=g, dtype=F64)
    A = torch.randn(B, m, m, generator=g, dtype=F64)
    return mean, A @ A.transpose(-1, -2) / m + 0.05 * torch.eye(m, dtype=F64)


@pytest.fixture
def model():
    return V.LinearGaussianModel.random(5, 3, s=0.7, generator=_gen(1))


# ---------------------------------------------------------------------------------- the exact model
def test_linear_gaussian_log_prob_matches_multivariate_normal(model):
    x = model.sample(64, _gen(2))
    C = model.W @ model.W.T + model.s**2 * torch.eye(model.n, dtype=F64)
    oracle = MultivariateNormal(model.b, covariance_matrix=C).log_prob(x)
    torch.testing.assert_close(model.log_prob(x), oracle, atol=1e-10, rtol=0)


def test_log_joint_matches_torch_distributions(model):
    x, z = model.sample(16, _gen(3), return_latents=True)
    oracle = Normal(0.0, 1.0).log_prob(z).sum(-1) + Normal(z @ model.W.T + model.b, model.s).log_prob(x).sum(-1)
    torch.testing.assert_close(model.log_joint(x, z), oracle, atol=1e-10, rtol=0)


def test_sample_has_the_marginal_covariance(model):
    x = model.sample(200_000, _gen(4))
    torch.testing.assert_close(x.mean(0), model.b, atol=0.03, rtol=0)
    torch.testing.assert_close(torch.cov(x.T), model.marginal_cov(), atol=0.08, rtol=0.02)


@pytest.mark.parametrize("m", [1, 2])
def test_posterior_matches_brute_force_bayes(m):
    """p(z|x) = p(x|z) p(z) / p(x), evaluated on a grid of z: its normaliser, mean and covariance."""
    model = V.LinearGaussianModel.random(3, m, s=0.6, generator=_gen(5 + m))
    x = model.sample(3, _gen(7))
    mean, cov = model.posterior(x)
    u = torch.linspace(-7, 7, 2001 if m == 1 else 301, dtype=F64)
    grid = torch.cartesian_prod(*([u] * m)).reshape(-1, m)
    h = (u[1] - u[0]) ** m
    for i in range(x.shape[0]):
        xi = x[i : i + 1].expand(grid.shape[0], -1)
        lj = model.log_joint(xi, grid)
        log_px = torch.logsumexp(lj, 0) + math.log(h)
        w = torch.softmax(lj, 0)
        bayes_mean = w @ grid
        d = grid - bayes_mean
        bayes_cov = (w[:, None] * d).T @ d
        torch.testing.assert_close(log_px, model.log_prob(x[i : i + 1])[0], atol=1e-5, rtol=0)
        torch.testing.assert_close(bayes_mean, mean[i], atol=1e-5, rtol=0)
        torch.testing.assert_close(bayes_cov, cov[i], atol=1e-5, rtol=0)


def test_elbo_plus_kl_to_posterior_equals_log_prob_for_random_q(model):
    g = _gen(8)
    x = model.sample(32, g)
    for _ in range(5):
        q_mean, q_cov = _random_q(32, model.m, g, scale=2.0)
        lhs = model.elbo(x, q_mean, q_cov) + model.kl_to_posterior(x, q_mean, q_cov)
        torch.testing.assert_close(lhs, model.log_prob(x), atol=1e-9, rtol=0)
        assert (model.kl_to_posterior(x, q_mean, q_cov) > 0).all()  # so ELBO < log p strictly


def test_shared_q_covariance_is_accepted(model):
    """A single (m, m) covariance for all inputs gives the same numbers as repeating it per input."""
    g = _gen(9)
    x = model.sample(4, g)
    q_mean, q_cov = _random_q(1, model.m, g)
    q_mean = q_mean.expand(4, -1)
    torch.testing.assert_close(model.elbo(x, q_mean, q_cov[0]), model.elbo(x, q_mean, q_cov.expand(4, -1, -1)))


def test_true_posterior_makes_the_bound_tight(model):
    x = model.sample(16, _gen(10))
    mean, cov = model.posterior(x)
    torch.testing.assert_close(model.kl_to_posterior(x, mean, cov), torch.zeros(16, dtype=F64), atol=1e-10, rtol=0)
    torch.testing.assert_close(model.elbo(x, mean, cov), model.log_prob(x), atol=1e-9, rtol=0)
    # any other q does strictly worse
    g = _gen(11)
    worse = model.elbo(x, mean + 0.1 * torch.randn(16, model.m, generator=g, dtype=F64), cov)
    assert (worse < model.log_prob(x)).all()


def test_elbo_terms_match_monte_carlo(model):
    """E_q log p(x|z) and E_q[log p(x,z) - log q(z)] by sampling vs the closed forms."""
    g = _gen(12)
    x = model.sample(8, g)
    q_mean, q_cov = _random_q(8, model.m, g)
    z = model.sample_q(x, q_mean, q_cov, 40_000, g)
    ll = model.log_likelihood(x, z)
    se = ll.std(0) / math.sqrt(ll.shape[0])
    assert ((ll.mean(0) - model.expected_log_likelihood(x, q_mean, q_cov)).abs() < 4 * se).all()
    integrand = model.log_joint(x, z) - MultivariateNormal(q_mean, covariance_matrix=q_cov).log_prob(z)
    se = integrand.std(0) / math.sqrt(integrand.shape[0])
    assert ((integrand.mean(0) - model.elbo(x, q_mean, q_cov)).abs() < 4 * se).all()
    # and the q samples really come from q
    torch.testing.assert_close(z.mean(0), q_mean, atol=0.05, rtol=0)


# ---------------------------------------------------------------------------------- Gaussian KLs
def test_gaussian_kl_matches_torch_distributions():
    g = _gen(13)
    mu1, mu2 = torch.randn(2, 10, 4, generator=g, dtype=F64)
    lv1, lv2 = torch.randn(2, 10, 4, generator=g, dtype=F64)
    oracle = kl_divergence(Normal(mu1, (0.5 * lv1).exp()), Normal(mu2, (0.5 * lv2).exp())).sum(-1)
    torch.testing.assert_close(V.gaussian_kl(mu1, lv1, mu2, lv2), oracle, atol=1e-12, rtol=0)
    oracle0 = kl_divergence(Normal(mu1, (0.5 * lv1).exp()), Normal(0.0, 1.0)).sum(-1)
    torch.testing.assert_close(V.gaussian_kl_std_normal(mu1, lv1), oracle0, atol=1e-12, rtol=0)
    torch.testing.assert_close(V.gaussian_kl(mu1, lv1, torch.zeros(4, dtype=F64), torch.zeros(4, dtype=F64)), oracle0)


def test_gaussian_kl_full_matches_torch_distributions():
    g = _gen(14)
    m1, c1 = _random_q(6, 3, g)
    m2, c2 = _random_q(6, 3, g)
    oracle = kl_divergence(MultivariateNormal(m1, c1), MultivariateNormal(m2, c2))
    torch.testing.assert_close(V.gaussian_kl_full(m1, c1, m2, c2), oracle, atol=1e-10, rtol=0)


def test_gaussian_kl_matches_monte_carlo():
    g = _gen(15)
    mu1, lv1 = torch.tensor([[0.3, -1.0]], dtype=F64), torch.tensor([[-0.5, 0.4]], dtype=F64)
    mu2, lv2 = torch.tensor([[1.0, 0.5]], dtype=F64), torch.tensor([[0.2, -0.3]], dtype=F64)
    z = V.reparameterize(mu1, lv1, torch.randn(200_000, 1, 2, generator=g, dtype=F64))
    integrand = V.diag_gaussian_log_prob(z, mu1, lv1) - V.diag_gaussian_log_prob(z, mu2, lv2)
    se = integrand.std() / math.sqrt(integrand.numel())
    assert abs(integrand.mean() - V.gaussian_kl(mu1, lv1, mu2, lv2)[0]) < 4 * se


def test_gaussian_kl_agrees_with_the_variance_form_of_lesson_02():
    g = _gen(16)
    mu1, mu2, lv1, lv2 = torch.randn(4, 5, 3, generator=g, dtype=F64)
    torch.testing.assert_close(V.gaussian_kl(mu1, lv1, mu2, lv2), td.ddpm.gaussian_kl(mu1, lv1.exp(), mu2, lv2.exp()))


def test_log_densities_match_torch_distributions():
    g = _gen(17)
    x, mu, lv = torch.randn(3, 7, 4, generator=g, dtype=F64)
    oracle = Normal(mu, (0.5 * lv).exp()).log_prob(x).sum(-1)
    torch.testing.assert_close(V.diag_gaussian_log_prob(x, mu, lv), oracle, atol=1e-12, rtol=0)
    m, c = _random_q(7, 4, g)
    torch.testing.assert_close(V.mvn_log_prob(x, m, c), MultivariateNormal(m, c).log_prob(x), atol=1e-10, rtol=0)


# ---------------------------------------------------------------------------------- reparameterisation
def test_reparameterize_gives_the_right_distribution_and_gradients():
    mu = torch.tensor([[0.5, -2.0, 1.0]], dtype=F64, requires_grad=True)
    logvar = torch.tensor([[-1.0, 0.0, 1.5]], dtype=F64, requires_grad=True)
    eps = torch.randn(100_000, 1, 3, generator=_gen(18), dtype=F64)
    z = V.reparameterize(mu, logvar, eps)
    torch.testing.assert_close(z.mean(0), mu.detach(), atol=0.03, rtol=0)
    torch.testing.assert_close(z.var(0), logvar.detach().exp(), atol=0, rtol=0.02)  # variance, not std
    # dz/dmu = 1 and dz/dlogvar = sigma * eps / 2
    z[0].sum().backward()
    torch.testing.assert_close(mu.grad, torch.ones_like(mu))
    torch.testing.assert_close(logvar.grad, 0.5 * (0.5 * logvar.detach()).exp() * eps[0])


# ---------------------------------------------------------------------------------- importance sampling
def test_log_mean_exp_and_block_bounds():
    lw = torch.randn(12, 5, generator=_gen(19), dtype=F64) * 3
    torch.testing.assert_close(V.log_mean_exp(lw), lw.exp().mean(0).log())
    blocks = torch.stack([lw[i : i + 4].exp().mean(0).log() for i in range(0, 12, 4)]).mean(0)
    torch.testing.assert_close(V.iwae_bound(lw, 4), blocks)
    torch.testing.assert_close(V.iwae_bound(lw, 1), lw.mean(0))  # K = 1: the average log-weight


def test_iwae_with_K1_is_the_elbo_on_average(model):
    g = _gen(20)
    x = model.sample(4, g)
    mean, cov = model.posterior(x)
    q_mean, q_cov = mean + 0.4, 1.5 * cov
    lw = model.log_weights(x, q_mean, q_cov, 50_000, g)
    L1 = V.iwae_bound(lw, 1)
    se = lw.std(0) / math.sqrt(lw.shape[0])
    assert ((L1 - model.elbo(x, q_mean, q_cov)).abs() < 4 * se).all()


def test_iwae_bound_increases_with_K_and_stays_below_log_prob(model):
    g = _gen(21)
    x = model.sample(3, g)
    mean, cov = model.posterior(x)
    shift = 0.5 * torch.diagonal(cov, dim1=-2, dim2=-1).sqrt()  # half a posterior standard deviation
    lw = model.log_weights(x, mean + shift, 1.5 * cov, 2**16, g)
    log_p = model.log_prob(x)
    bounds = torch.stack([V.iwae_bound(lw, 4**j) for j in range(5)])  # K = 1, 4, 16, 64, 256
    assert (bounds[1:] > bounds[:-1]).all()  # strictly increasing in K
    # E[L_K] <= log p: the averages over 2^16 / K blocks stay below log p by more than their noise
    for j in range(3):
        K = 4**j
        per_block = V.log_mean_exp(lw.reshape(-1, K, 3), dim=1)
        se = per_block.std(0) / math.sqrt(per_block.shape[0])
        assert (bounds[j] < log_p - 2 * se).all()
    # and with all 2^16 draws the estimate reaches log p, within its (delta-method) standard error
    L_all = V.iwae_bound(lw)
    se = (lw - L_all).exp().std(0) / math.sqrt(lw.shape[0])  # std of w / mean(w), over sqrt(N)
    assert (se < 0.01).all() and ((L_all - log_p).abs() < 4 * se).all()


def test_importance_weights_are_unbiased_for_p_of_x(model):
    """E_q[p(x,z)/q(z)] = p(x) exactly, whatever q is (here a poor one: the prior)."""
    g = _gen(22)
    x = model.sample(2, g)
    eye = torch.eye(model.m, dtype=F64)
    w = model.log_weights(x, torch.zeros(2, model.m, dtype=F64), eye, 400_000, g).exp()
    p = model.log_prob(x).exp()
    se = w.std(0) / math.sqrt(w.shape[0])
    assert ((w.mean(0) - p).abs() < 4 * se).all()


# ---------------------------------------------------------------------------------- gradient estimators
CASES = [
    # f, exact d/dmu E f(z) for z ~ N(mu, sigma^2)
    (lambda z: z**2, lambda mu, s: 2 * mu),
    (torch.sin, lambda mu, s: math.cos(mu) * math.exp(-(s**2) / 2)),
    (lambda z: torch.exp(z), lambda mu, s: math.exp(mu + s**2 / 2)),
]


@pytest.mark.parametrize("case", range(len(CASES)))
@pytest.mark.parametrize("estimator", [V.grad_reparam, V.grad_score_function])
def test_gradient_estimators_are_unbiased(case, estimator):
    f, exact = CASES[case]
    mu, sigma = 0.7, 0.5
    est = estimator(f, mu, sigma, 200_000, _gen(23 + case))
    assert est.shape == (200_000,)
    se = est.std() / math.sqrt(est.numel())
    assert abs(est.mean() - exact(mu, sigma)) < 4 * se


def test_gradient_estimators_for_a_vector_mean():
    mu, sigma = torch.tensor([0.5, -1.0, 2.0], dtype=F64), 0.8
    f = lambda z: (z**2).sum(-1) + z[:, 0] * z[:, 1]  # E f = |mu|^2 + 3 sigma^2 + mu_0 mu_1
    exact = 2 * mu + torch.tensor([mu[1], mu[0], 0.0], dtype=F64)
    for estimator in (V.grad_reparam, V.grad_score_function):
        est = estimator(f, mu, sigma, 200_000, _gen(30))
        assert est.shape == (200_000, 3)
        se = est.std(0) / math.sqrt(est.shape[0])
        assert ((est.mean(0) - exact).abs() < 4 * se).all()


def test_estimator_variances_match_theory():
    """For f(z) = z^2: the reparameterisation estimate 2z has variance 4 sigma^2; the score-function estimate
    z^2 (z - mu) / sigma^2 has variance (mu^4 + 18 mu^2 s^2 + 15 s^4) / s^2 - 4 mu^2 (Gaussian moments)."""
    mu, s = 0.7, 0.5
    f = lambda z: z**2
    r = V.grad_reparam(f, mu, s, 400_000, _gen(31))
    sf = V.grad_score_function(f, mu, s, 400_000, _gen(32))
    assert abs(r.var() / (4 * s**2) - 1) < 0.02
    want = (mu**4 + 18 * mu**2 * s**2 + 15 * s**4) / s**2 - 4 * mu**2
    assert abs(sf.var() / want - 1) < 0.05
    # a baseline keeps the mean and lowers the variance
    sb = V.grad_score_function(f, mu, s, 400_000, _gen(32), baseline=mu**2 + s**2)
    assert sb.var() < sf.var()
    assert abs(sb.mean() - 2 * mu) < 4 * sb.std() / math.sqrt(sb.numel())


# ---------------------------------------------------------------------------------- the VAE
@pytest.fixture(scope="module")
def digits():
    x, _ = td.data.load_digits()
    return x


def test_vae_shapes(digits):
    torch.manual_seed(0)
    vae = V.VAE(latent_dim=4, hidden=32)
    x = digits[:5]
    mu, logvar = vae.encode(x)
    assert mu.shape == logvar.shape == (5, 4)
    assert vae.decode(mu).shape == x.shape
    assert vae.decode(torch.zeros(3, 5, 4)).shape == (3, 5, 1, 8, 8)
    assert vae.elbo(x).shape == vae.elbo(x, n_samples=3).shape == (5,)
    assert vae.loss(x).shape == ()
    assert vae.sample(7, _gen(0)).shape == vae.sample(7, _gen(0), mean=False).shape == (7, 1, 8, 8)
    assert vae.reconstruct(x).shape == x.shape
    assert vae.log_weights(x, 10, _gen(0), chunk=3).shape == (10, 5)
    assert vae.log_prob_is(x, 10, _gen(0)).shape == (5,)


def test_vae_elbo_matches_the_formula_written_out(digits):
    """ELBO = E_q log p(x|z) - KL(q || p(z)), written with torch.distributions, on the same noise."""
    torch.manual_seed(1)
    vae = V.VAE(latent_dim=3, hidden=32)
    x = digits[:6]
    mu, logvar = vae.encode(x)
    eps = torch.randn((4, 6, 3), generator=_gen(5))
    z = mu + (0.5 * logvar).exp() * eps
    s = (0.5 * vae.decoder_logvar).exp()
    rec = Normal(vae.decode(z).flatten(2), s).log_prob(x.flatten(1)).sum(-1).mean(0)
    kl = kl_divergence(Normal(mu, (0.5 * logvar).exp()), Normal(0.0, 1.0)).sum(-1)
    torch.testing.assert_close(vae.elbo(x, n_samples=4, generator=_gen(5)), rec - kl, atol=1e-4, rtol=1e-5)


def test_vae_fixed_decoder_std_is_a_buffer(digits):
    vae = V.VAE(latent_dim=2, hidden=16, decoder_std=0.2)
    assert "decoder_logvar" not in dict(vae.named_parameters())
    torch.testing.assert_close(vae.decoder_logvar, torch.tensor(2 * math.log(0.2)))
    assert "decoder_logvar" in dict(V.VAE(latent_dim=2, hidden=16).named_parameters())


def test_vae_iwae_on_average_grows_with_K_and_K1_is_the_elbo(digits):
    torch.manual_seed(2)
    vae = V.VAE(latent_dim=4, hidden=32)
    x = digits[:8]
    lw = vae.log_weights(x, 4096, _gen(6))
    L = torch.stack([V.iwae_bound(lw, K) for K in (1, 8, 64)])
    assert (L[1:] > L[:-1]).all()
    with torch.no_grad():
        elbo = vae.elbo(x, n_samples=4096, generator=_gen(7))
    se = lw.std(0) / math.sqrt(lw.shape[0])
    assert ((L[0] - elbo).abs() < 5 * se).all()


def test_vae_elbo_is_float32_under_bfloat16_autocast(digits):
    """AMP (bfloat16 autocast, what td.train.fit uses on CUDA): the networks run in bfloat16, the ELBO in float32."""
    torch.manual_seed(3)
    vae = V.VAE(latent_dim=4, hidden=32)
    x = digits[:16]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        elbo_amp = vae.elbo(x, generator=_gen(9))
    assert elbo_amp.dtype == torch.float32
    torch.testing.assert_close(elbo_amp, vae.elbo(x, generator=_gen(9)), atol=2.0, rtol=0.02)


def test_short_vae_training_decreases_the_loss(digits):
    vae = V.VAE(latent_dim=4, hidden=64)
    res = td.train.fit(vae, lambda m, b: m.loss(b), digits[:512], steps=150, batch_size=64, lr=2e-3,
                       ema_decay=None, device="cpu", progress_bar=False)
    first, last = sum(res.losses[:15]) / 15, sum(res.losses[-15:]) / 15
    assert last < first - 20  # nats per image
    with torch.no_grad():
        held_out = -vae.elbo(digits[1500:1600], generator=_gen(8)).mean()
    assert held_out < first - 20


# ---------------------------------------------------------------------------------- bad input
def test_bad_inputs_raise_value_errors(model):
    mu = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="same shape"):
        V.gaussian_kl_std_normal(mu, torch.zeros(2, 4))
    with pytest.raises(ValueError, match="batched"):
        V.gaussian_kl_std_normal(torch.zeros(3), torch.zeros(3))
    with pytest.raises(ValueError, match="broadcast"):
        V.gaussian_kl(mu, mu, torch.zeros(5), torch.zeros(5))
    with pytest.raises(ValueError, match="eps must have the shape"):
        V.reparameterize(mu, mu, torch.zeros(2, 4))
    with pytest.raises(ValueError, match="K = 3 must divide"):
        V.iwae_bound(torch.zeros(8, 2), 3)
    with pytest.raises(ValueError, match="positive integer"):
        V.iwae_bound(torch.zeros(8, 2), 0)
    with pytest.raises(ValueError, match="positive definite"):
        V.gaussian_kl_full(mu, -torch.eye(3), mu, torch.eye(3))
    with pytest.raises(ValueError, match="symmetric"):
        V.mvn_log_prob(mu, mu, torch.tensor([[1.0, 0.5, 0], [0, 1, 0], [0, 0, 1]]))
    with pytest.raises(ValueError, match="s .* must be positive"):
        V.LinearGaussianModel(torch.ones(2, 1), torch.zeros(2), s=0.0)
    with pytest.raises(ValueError, match="b must have shape"):
        V.LinearGaussianModel(torch.ones(2, 1), torch.zeros(3), s=1.0)
    with pytest.raises(ValueError, match=r"x must have shape \(B, 5\)"):
        model.log_prob(torch.zeros(4, 2))
    x = torch.zeros(4, 5)
    with pytest.raises(ValueError, match="q_mean must have shape"):
        model.elbo(x, torch.zeros(4, 2), torch.eye(3))
    with pytest.raises(ValueError, match="q_cov must have shape"):
        model.elbo(x, torch.zeros(4, 3), torch.eye(2))
    with pytest.raises(ValueError, match="positive definite"):
        model.kl_to_posterior(x, torch.zeros(4, 3), torch.diag(torch.tensor([1.0, 0.0, 1.0])))
    with pytest.raises(ValueError, match="positive integer"):
        model.log_prob_is(x, torch.zeros(4, 3), torch.eye(3), K=0)
    vae = V.VAE(latent_dim=2, hidden=8)
    with pytest.raises(ValueError, match=r"x must have shape \(B, 1, 8, 8\)"):
        vae.elbo(torch.zeros(3, 64))
    with pytest.raises(ValueError, match="latent_dim = 2"):
        vae.decode(torch.zeros(3, 5))
    with pytest.raises(ValueError, match="positive integer"):
        vae.log_prob_is(torch.zeros(3, 1, 8, 8), K=0)
    with pytest.raises(ValueError, match="positive integer"):
        vae.elbo(torch.zeros(3, 1, 8, 8), n_samples=0)
    with pytest.raises(ValueError, match="decoder_std must be positive"):
        V.VAE(decoder_std=-1.0)
    with pytest.raises(ValueError, match="sigma must be positive"):
        V.grad_reparam(torch.sin, 0.0, 0.0, 10)
    with pytest.raises(ValueError, match="sigma must be positive"):
        V.grad_score_function(torch.sin, 0.0, -1.0, 10)
    with pytest.raises(ValueError, match="one value per draw"):
        V.grad_reparam(lambda z: z.sum(), 0.0, 1.0, 10)


def test_bad_input_is_refused_by_name():
    from tinydiff import vae as Vm

    with pytest.raises(TypeError, match="mu must be a torch.Tensor"):
        Vm.gaussian_kl_std_normal(None, torch.zeros(2, 3))
    with pytest.raises(TypeError, match="W must be a tensor or an array of numbers"):
        Vm.LinearGaussianModel(None, [0.0, 0.0], 0.5)
    with pytest.raises(TypeError, match="s must be a positive real number"):
        Vm.LinearGaussianModel([[1.0], [0.0]], [0.0, 0.0], "0.5")
    model = Vm.VAE(data_shape=(2,), latent_dim=2, hidden=8)
    with pytest.raises(ValueError, match="x must have the VAE's dtype"):
        model.encode(torch.zeros(3, 2, dtype=torch.float16))
    with pytest.raises(ValueError, match="z must have shape"):
        model.log_likelihood(torch.zeros(3, 2), torch.zeros(4, 2))
    with pytest.raises(ValueError, match="baseline must be a finite number"):
        Vm.grad_score_function(lambda z: z, 0.0, 1.0, 4, baseline=float("nan"))
    with pytest.raises(TypeError, match="f returned None"):
        Vm.grad_reparam(lambda z: None, 0.0, 1.0, 4)
