"""Lesson 05: the score, Tweedie's formula, the eps-score identity, (annealed) Langevin dynamics."""

import math

import pytest
import torch

import tinydiff as td
from tinydiff import score as S
from tinydiff.data import GaussianMixture


def random_mixture(K=3, D=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    w = torch.rand(K, generator=g, dtype=torch.float64) + 0.2
    A = torch.randn(K, D, D, generator=g, dtype=torch.float64)
    covs = A @ A.transpose(-1, -2) * 0.2 + 0.05 * torch.eye(D, dtype=torch.float64)
    means = 2 * torch.randn(K, D, generator=g, dtype=torch.float64)
    return GaussianMixture(w / w.sum(), means, covs)


def unequal_ring():
    """8 narrow modes on a circle with weights 1:2:...:8 (far apart: plain Langevin cannot cross)."""
    ang = torch.arange(8, dtype=torch.float64) * (2 * math.pi / 8)
    w = torch.arange(1, 9, dtype=torch.float64)
    return GaussianMixture(w / w.sum(), 2 * torch.stack([ang.cos(), ang.sin()], 1), torch.full((8,), 0.15**2))


SCHED = td.NoiseSchedule.linear(1000)
TS = [1, 10, 100, 500, 1000]


# ------------------------------------------------------------------------------ the score
def test_gaussian_score_closed_form():
    x = torch.tensor([[1.0, 2.0], [0.0, -1.0]], dtype=torch.float64)
    mu = torch.tensor([0.0, 1.0], dtype=torch.float64)
    # by hand: -(x - mu) / 0.5
    by_hand = torch.tensor([[-2.0, -2.0], [0.0, 4.0]], dtype=torch.float64)
    torch.testing.assert_close(S.gaussian_score(x, mu, 0.5), by_hand)
    normal = torch.distributions.Normal(mu, math.sqrt(0.5))
    torch.testing.assert_close(S.gaussian_score(x, mu, 0.5), S.score_autograd(lambda z: normal.log_prob(z).sum(1), x))


@pytest.mark.parametrize("a,s", [(1.0, 0.0), (0.8, 0.6), (0.05, 0.9987)])
def test_score_autograd_matches_closed_form_mixture(a, s):
    gm = random_mixture(K=4, D=3, seed=1)
    x = torch.randn(6, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():  # score_autograd must work inside no_grad too
        auto = S.score_autograd(lambda z: gm.log_prob(z, a, s), x)
    torch.testing.assert_close(auto, gm.score(x, a, s))


# ------------------------------------------------------------------------------ Tweedie
@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("t", TS)
def test_tweedie_matches_exact_posterior_mean(seed, t):
    gm = random_mixture(K=3, D=2, seed=seed)
    ab = SCHED.alpha_bar[t]
    a, s = ab.sqrt(), (1 - ab).sqrt()
    xt = gm.sample(8, torch.Generator().manual_seed(seed + 10), dtype=torch.float64) * a + s * torch.randn(
        8, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(seed + 20))
    got = S.tweedie_x0(xt, gm.score(xt, a, s), ab)
    torch.testing.assert_close(got, gm.posterior_mean(xt, a, s), rtol=1e-6, atol=1e-8)


def test_tweedie_with_per_sample_alpha_bar():
    gm = random_mixture(K=3, D=2, seed=3)
    t = torch.tensor([1, 10, 100, 500, 1000])
    ab = SCHED.alpha_bar[t]
    xt = torch.randn(5, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    got = S.tweedie_x0(xt, gm.score(xt, ab.sqrt(), (1 - ab).sqrt()), ab)
    torch.testing.assert_close(got, gm.posterior_mean(xt, ab.sqrt(), (1 - ab).sqrt()), rtol=1e-6, atol=1e-8)


def test_tweedie_and_eps_identity_match_monte_carlo():
    """E[x0 | x_t] and E[eps | x_t] by importance weights over x0 ~ p(x0), independent of the closed forms."""
    gm = random_mixture(K=3, D=2, seed=5)
    g = torch.Generator().manual_seed(6)
    ab = SCHED.alpha_bar[300]
    a, s = ab.sqrt(), (1 - ab).sqrt()
    x0 = gm.sample(200_000, g, dtype=torch.float64)
    xt = torch.tensor([[0.3, -0.5], [1.0, 1.0], [-1.5, 0.2]], dtype=torch.float64)
    logw = -((xt[:, None, :] - a * x0[None]) ** 2).sum(-1) / (2 * s**2)  # log p(x_t | x0_i) + const
    w = torch.softmax(logw, dim=1)
    ess = 1 / (w**2).sum(1)
    assert (ess > 2000).all()
    mc_x0 = w @ x0
    mc_eps = (xt - a * mc_x0) / s  # E[eps | x_t] = (x_t - a E[x0 | x_t]) / s
    score = S.score_autograd(lambda z: gm.log_prob(z, a, s), xt)
    torch.testing.assert_close(S.tweedie_x0(xt, score, ab), mc_x0, atol=0.03, rtol=0)
    torch.testing.assert_close(td.convert.eps_from_score(score, ab), mc_eps, atol=0.03, rtol=0)


def test_marginal_is_the_average_of_gaussian_likelihoods():
    """Step 1 of the derivation: p(x_t) = E_{x0 ~ p}[N(x_t; sqrt(abar) x0, (1 - abar) I)], by Monte Carlo."""
    gm = random_mixture(K=3, D=2, seed=15)
    g = torch.Generator().manual_seed(16)
    ab = SCHED.alpha_bar[300]
    a, s = ab.sqrt(), (1 - ab).sqrt()
    x0 = gm.sample(100_000, g, dtype=torch.float64)
    xt = torch.tensor([[0.3, -0.5], [1.0, 1.0], [-1.5, 0.2]], dtype=torch.float64)
    log_lik = torch.stack([td.ddpm.gaussian_log_prob(p.expand_as(x0), a * x0, s**2) for p in xt])
    mc = torch.logsumexp(log_lik, 1) - math.log(x0.shape[0])
    torch.testing.assert_close(mc, gm.log_prob(xt, a, s), atol=0.02, rtol=0)


@pytest.mark.parametrize("t", TS)
def test_eps_score_identity_against_autograd(t):
    """eps* = -sqrt(1 - alpha_bar_t) * grad log p(x_t): the oracle's eps_fn vs autograd of the exact log-density."""
    gm = random_mixture(K=3, D=2, seed=7)
    ab = SCHED.alpha_bar[t]
    xt = 1.5 * torch.randn(6, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(8))
    auto = S.score_autograd(lambda z: gm.log_prob(z, ab.sqrt(), (1 - ab).sqrt()), xt)
    want = -(1 - ab).sqrt() * auto
    got = gm.eps_fn(SCHED)(xt, torch.full((6,), t, dtype=torch.long))
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-9)


# ------------------------------------------------------------------------------ VE <-> VP
def test_ve_vp_sigma_map_round_trip_and_scores():
    t = torch.tensor([1, 20, 300, 1000])
    sig = S.sigma_from_alpha_bar(SCHED.alpha_bar[t])
    torch.testing.assert_close(sig**2, (1 - SCHED.alpha_bar[t]) / SCHED.alpha_bar[t])
    torch.testing.assert_close(S.alpha_bar_from_sigma(sig), SCHED.alpha_bar[t])
    gm = random_mixture(K=3, D=2, seed=9)
    y = 2 * torch.randn(5, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(10))
    ve = S.ve_score_fn_from_eps_fn(gm.eps_fn(SCHED), SCHED)
    for si in sig.tolist():
        # the VE marginal x0 + sigma eps is the mixture noised with a = 1, s = sigma
        torch.testing.assert_close(ve(y, si), gm.score(y, 1.0, si), rtol=1e-6, atol=1e-9)
    assert S.timesteps_for_sigmas(SCHED, sig).tolist() == t.tolist()


def test_geometric_sigmas():
    s = S.geometric_sigmas(10.0, 0.01, 4)
    torch.testing.assert_close(s, torch.tensor([10.0, 1.0, 0.1, 0.01], dtype=torch.float64))


# ------------------------------------------------------------------------------ score error of a network
def test_score_error_per_t_weighting():
    """A known error: eps_fn = eps* + c. Then eps_mse = |c|^2, score_mse = |c|^2/(1-ab), x0_mse = |c|^2 (1-ab)/ab."""
    gm = random_mixture(K=2, D=2, seed=11)
    exact = gm.eps_fn(SCHED)
    c = torch.tensor([0.3, -0.4])
    ts = [1, 50, 999]
    zero = S.score_error_per_t(exact, gm, SCHED, ts, 64, torch.Generator().manual_seed(0))
    assert zero["score_mse"].max() < 1e-6 * zero["score_norm2"].min()
    err = S.score_error_per_t(lambda x, t: exact(x, t) + c, gm, SCHED, ts, 64, torch.Generator().manual_seed(0))
    ab = SCHED.alpha_bar[ts]
    torch.testing.assert_close(err["eps_mse"], torch.full((3,), 0.25, dtype=torch.float64), rtol=1e-4, atol=0)
    torch.testing.assert_close(err["score_mse"], 0.25 / (1 - ab), rtol=1e-4, atol=0)
    torch.testing.assert_close(err["x0_mse"], 0.25 * (1 - ab) / ab, rtol=1e-4, atol=0)
    assert err["t"].tolist() == ts


def test_eps_loss_excess_is_the_weighted_score_error():
    """Denoising score matching: DDPM's loss of a denoiser minus the loss of the exact eps* is
    (1 - abar_t) E|s_theta - s*|^2 (the cross term averages to zero)."""
    gm = random_mixture(K=3, D=2, seed=17)
    exact = gm.eps_fn(SCHED)
    bad = lambda x, t: exact(x, t) + 0.3 * torch.tanh(x.flip(1))  # an error that depends on x
    t, n = 200, 200_000
    g = torch.Generator().manual_seed(18)
    x0 = gm.sample(n, g, dtype=torch.float64)
    eps = torch.randn(n, 2, generator=g, dtype=torch.float64)
    tt = torch.full((n,), t, dtype=torch.long)
    excess = td.ddpm.loss(bad, x0, SCHED, t=tt, eps=eps) - td.ddpm.loss(exact, x0, SCHED, t=tt, eps=eps)
    err = S.score_error_per_t(bad, gm, SCHED, [t], n, torch.Generator().manual_seed(19))
    assert abs(excess.item() / err["eps_mse"].item() - 1) < 0.05, (excess.item(), err["eps_mse"].item())


def test_trained_eps_network_score_error_decreases_with_training():
    gm = GaussianMixture.isotropic([[-1.5, 0.0], [1.5, 0.5]], 0.4, weights=torch.tensor([0.3, 0.7]))
    data = gm.sample(4096, torch.Generator().manual_seed(0))
    ts = [20, 100, 300, 600, 1000]
    errs = []
    for steps in (0, 100, 500):
        torch.manual_seed(0)
        model = td.models.MLPDenoiser(dim=2, hidden=64, depth=2)
        if steps:  # steps = 0: the untrained network (fit refuses zero steps)
            model = td.train.fit(model, lambda m, b: td.ddpm.loss(m, b, SCHED), data, steps=steps, batch_size=256,
                                 lr=3e-3, ema_decay=None, progress_bar=False, device="cpu").model
        e = S.score_error_per_t(model, gm, SCHED, ts, 1000, torch.Generator().manual_seed(1))
        errs.append(e["eps_mse"].mean().item())
    assert errs[1] < 0.7 * errs[0] and errs[2] < 0.7 * errs[1], errs


# ------------------------------------------------------------------------------ Langevin
@pytest.mark.parametrize("var,delta,steps", [(0.5, 0.5, 60), (0.5, 0.02, 400)])
def test_langevin_gaussian_stationary_mean_and_variance(var, delta, steps):
    """ULA on N(mu, var I) with step delta has stationary mean mu and variance var / (1 - delta / (4 var))."""
    mu = torch.tensor([1.0, -2.0], dtype=torch.float64)
    n = 20_000
    g = torch.Generator().manual_seed(12)
    x0 = torch.zeros(n, 2, dtype=torch.float64)
    x = S.langevin(lambda z: S.gaussian_score(z, mu, var), x0, delta, steps, generator=g, progress_bar=False)
    v = S.ula_gaussian_variance(var, delta)
    se_mean, se_var = math.sqrt(v / n), v * math.sqrt(2 / n)
    assert (x.mean(0) - mu).abs().max() < 5 * se_mean
    assert (x.var(0) - v).abs().max() < 5 * se_var + 0.002 * v, (x.var(0), v)


def test_ula_gaussian_variance_is_the_fixed_point_of_the_variance_recursion():
    var, delta = 0.7, 0.9
    c = 1 - delta / (2 * var)
    v = 0.0
    for _ in range(200):
        v = c**2 * v + delta  # Var[c x + sqrt(delta) z]
    assert abs(S.ula_gaussian_variance(var, delta) - v) < 1e-12


def test_langevin_step_is_the_update_rule():
    x, sc, z = torch.tensor([[1.0, 2.0]]), torch.tensor([[-4.0, 2.0]]), torch.tensor([[0.5, -1.0]])
    # x + delta/2 * score + sqrt(delta) z with delta = 0.25
    torch.testing.assert_close(S.langevin_step(x, sc, 0.25, z), torch.tensor([[0.75, 1.75]]))


def test_annealed_langevin_step_sizes_follow_sigma_squared():
    """With a zero score the chain is a random walk whose variance is steps * sum_i eps sigma_i^2 / sigma_L^2."""
    sig = torch.tensor([2.0, 1.0, 0.5], dtype=torch.float64)
    x0 = torch.zeros(40_000, 1, dtype=torch.float64)
    x = S.annealed_langevin(lambda z, s: torch.zeros_like(z), sig, x0, steps_per_level=3, eps=0.01,
                            generator=torch.Generator().manual_seed(13), progress_bar=False)
    want = 3 * 0.01 * (sig**2).sum().item() / 0.25
    assert abs(x.var().item() / want - 1) < 0.04


def test_annealed_langevin_recovers_mixture_weights_where_plain_langevin_does_not():
    gm = unequal_ring()
    g = torch.Generator().manual_seed(14)
    n = 1500
    start = 4.0 * torch.randn(n, 2, dtype=torch.float64, generator=g)
    sig = S.geometric_sigmas(4.0, 0.02, 10)
    xa = S.annealed_langevin(lambda z, s: gm.score(z, 1.0, s), sig, start, steps_per_level=60, eps=0.3 * 0.02**2,
                             generator=g, progress_bar=False)
    xp = S.langevin(lambda z: gm.score(z), start, 0.1 * 0.15**2, 600, generator=g, progress_bar=False)
    tv_annealed = S.total_variation(S.component_fractions(gm, xa), gm.weights)
    tv_plain = S.total_variation(S.component_fractions(gm, xp), gm.weights)
    assert tv_annealed < 0.06, tv_annealed
    assert tv_plain > 0.15, tv_plain


def test_component_fractions_and_total_variation():
    gm = GaussianMixture.isotropic([[-3.0, 0.0], [3.0, 0.0]], 0.3)
    x = torch.tensor([[-3.1, 0.0], [2.9, 0.1], [3.2, 0.0], [3.0, -0.2]])
    torch.testing.assert_close(S.component_fractions(gm, x), torch.tensor([0.25, 0.75], dtype=torch.float64))
    assert S.total_variation([0.25, 0.75], [0.5, 0.5]) == pytest.approx(0.25)


# ------------------------------------------------------------------------------ bad input
def test_bad_inputs_raise_helpful_errors():
    x = torch.zeros(4, 2)
    with pytest.raises(ValueError, match=r"alpha_bar_t must lie in \(0, 1\]"):
        S.tweedie_x0(x, x, 0.0)
    with pytest.raises(ValueError, match="shape mismatch"):
        S.tweedie_x0(x, torch.zeros(4, 3), 0.5)
    with pytest.raises(ValueError, match="floating-point"):
        S.tweedie_x0(torch.zeros(4, 2, dtype=torch.long), x, 0.5)
    with pytest.raises(ValueError, match="one log-density per sample"):
        S.score_autograd(lambda z: z.sum(), x)
    with pytest.raises(ValueError, match="depend on x"):
        S.score_autograd(lambda z: torch.zeros(4), x)
    with pytest.raises(ValueError, match="variance"):
        S.gaussian_score(x, 0.0, -1.0)
    with pytest.raises(ValueError, match="step_size"):
        S.langevin(lambda z: -z, x, 0.0, 10)
    with pytest.raises(ValueError, match="n_steps"):
        S.langevin(lambda z: -z, x, 0.1, 2.5)
    with pytest.raises(ValueError, match=r"score_fn returned shape \(4, 1\)"):
        S.langevin(lambda z: z[:, :1], x, 0.1, 1, progress_bar=False)
    with pytest.raises(ValueError, match="strictly decreasing"):
        S.annealed_langevin(lambda z, s: -z, [0.1, 1.0], x, steps_per_level=1, eps=0.1)
    with pytest.raises(ValueError, match="positive"):
        S.annealed_langevin(lambda z, s: -z, [1.0, -0.1], x, steps_per_level=1, eps=0.1)
    with pytest.raises(ValueError, match="steps_per_level"):
        S.annealed_langevin(lambda z, s: -z, [1.0, 0.1], x, steps_per_level=0, eps=0.1)
    with pytest.raises(ValueError, match="eps"):
        S.annealed_langevin(lambda z, s: -z, [1.0, 0.1], x, steps_per_level=1, eps=float("nan"))
    with pytest.raises(ValueError, match="diverges"):
        S.ula_gaussian_variance(0.5, 2.0)
    with pytest.raises(ValueError, match="sigma_max"):
        S.geometric_sigmas(0.1, 1.0, 5)
    with pytest.raises(ValueError, match="integer timesteps"):
        S.score_error_per_t(lambda z, t: z, random_mixture(), SCHED, [0.5], 8)
    with pytest.raises(ValueError, match="must lie in 1..1000"):
        S.score_error_per_t(lambda z, t: z, random_mixture(), SCHED, [0], 8)
    with pytest.raises(ValueError, match="not a level of this schedule"):
        S.ve_score_fn_from_eps_fn(random_mixture().eps_fn(SCHED), SCHED)(x, 0.123456)
    with pytest.raises(ValueError, match="probability vectors"):
        S.total_variation([0.5, 0.5], [1.0])
