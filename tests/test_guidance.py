"""Lesson 06: classifier guidance and classifier-free guidance, checked on the exact Gaussian-mixture oracle."""

import math

import pytest
import torch

import tinydiff as td

G = td.guidance


@pytest.fixture(scope="module")
def gm():
    return td.data.GaussianMixture.isotropic([[-1.0, 0.5], [-1.0, -1.0], [1.0, 0.5], [1.0, -1.0]], std=0.6,
                                             labels=[0, 0, 1, 1])


@pytest.fixture(scope="module")
def sched():
    return td.NoiseSchedule.linear(1000)


def _probe(n=32, seed=0):
    return 2.0 * torch.randn(n, 2, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


# ------------------------------------------------------------------------------------------ the algebra
def test_cfg_gamma_zero_is_conditional_and_minus_one_unconditional():
    u, c = torch.randn(5, 3), torch.randn(5, 3)
    torch.testing.assert_close(G.cfg(u, c, 0.0), c)
    torch.testing.assert_close(G.cfg(u, c, -1.0), u)
    torch.testing.assert_close(G.cfg(u, c, 2.0), 3.0 * c - 2.0 * u)


def test_cfg_per_sample_gamma_matches_scalar_calls():
    u, c = torch.randn(4, 2), torch.randn(4, 2)
    gam = torch.tensor([0.0, 0.5, 1.0, 3.0])
    rows = torch.stack([G.cfg(u[i:i + 1], c[i:i + 1], float(gam[i]))[0] for i in range(4)])
    torch.testing.assert_close(G.cfg(u, c, gam), rows)


def test_diffusers_convention_agrees_with_lecture_gamma():
    from diffusers.guiders import ClassifierFreeGuidance

    u, c = torch.randn(6, 2, dtype=torch.float64), torch.randn(6, 2, dtype=torch.float64)
    for gamma in [0.0, 0.7, 6.5]:
        w = G.guidance_scale_from_gamma(gamma)
        assert w == pytest.approx(1 + gamma) and G.gamma_from_guidance_scale(w) == pytest.approx(gamma)
        ours = G.cfg(u, c, gamma)
        torch.testing.assert_close(G.cfg_diffusers(u, c, w), ours)
        torch.testing.assert_close(ClassifierFreeGuidance(guidance_scale=w).forward(c, u).pred, ours)
        paper = ClassifierFreeGuidance(guidance_scale=gamma, use_original_formulation=True)
        torch.testing.assert_close(paper.forward(c, u).pred, ours)
    # the classic off-by-one: feeding w where gamma is expected is wrong
    assert not torch.allclose(G.cfg(u, c, 3.0), G.cfg_diffusers(u, c, 3.0))


def test_bayes_rule_for_scores_on_the_oracle(gm, sched):
    x = _probe()
    for t in [1, 50, 300, 700]:
        ab = sched.alpha_bar[t]
        a, s = ab.sqrt(), (1 - ab).sqrt()
        for y in (0, 1):
            lhs = gm.conditional(y).score(x, a, s)
            rhs = gm.score(x, a, s) + G.oracle_class_grad(gm, x, ab, y)
            torch.testing.assert_close(lhs, rhs, atol=1e-9, rtol=1e-7)


def test_oracle_class_log_prob_matches_class_posterior(gm, sched):
    x = _probe()
    ab = sched.alpha_bar[200]
    post = gm.class_posterior(x, ab.sqrt(), (1 - ab).sqrt())
    bayes = torch.stack([G.oracle_class_log_prob(gm, x, ab, y).exp() for y in (0, 1)], 1)
    torch.testing.assert_close(bayes, post, atol=1e-10, rtol=1e-8)


def test_classifier_eps_gamma_one_gives_conditional_eps(gm, sched):
    x = _probe()
    t = torch.full((x.shape[0],), 250)
    guided = G.oracle_classifier_eps_fn(gm, sched, 1, 1.0)(x, t)
    torch.testing.assert_close(guided, gm.conditional(1).eps_fn(sched)(x, t), atol=1e-9, rtol=1e-7)
    # classifier_eps itself: eps - gamma sqrt(1 - abar) grad log p(y | x_t), from the oracle's eps and class gradient
    ab = sched.alpha_bar[250]
    by_fn = G.classifier_eps(gm.eps_fn(sched)(x, t), G.oracle_class_grad(gm, x, ab, 1), ab, 1.0)
    torch.testing.assert_close(by_fn, gm.conditional(1).eps_fn(sched)(x, t), atol=1e-9, rtol=1e-7)
    # gamma = 0 is the unconditional model
    torch.testing.assert_close(G.oracle_classifier_eps_fn(gm, sched, 1, 0.0)(x, t), gm.eps_fn(sched)(x, t))


def test_cfg_equals_classifier_guidance_of_conditional_and_of_unconditional(gm, sched):
    x, gamma = _probe(), 2.5
    t = torch.full((x.shape[0],), 400)
    ab = sched.alpha_bar[400]
    u, c = gm.eps_fn(sched)(x, t), gm.conditional(0).eps_fn(sched)(x, t)
    grad = G.oracle_class_grad(gm, x, ab, 0)
    cfg = G.oracle_cfg_eps_fn(gm, sched, 0, gamma)(x, t)
    torch.testing.assert_close(G.cfg(u, c, gamma), cfg)
    torch.testing.assert_close(G.classifier_eps(c, grad, ab, gamma), cfg, atol=1e-9, rtol=1e-7)
    torch.testing.assert_close(G.classifier_eps(u, grad, ab, 1 + gamma), cfg, atol=1e-9, rtol=1e-7)


def test_guided_score_and_eps_forms_agree(gm, sched):
    x, gamma = _probe(), 1.7
    t = torch.full((x.shape[0],), 150)
    ab = sched.alpha_bar[150]
    grad = G.oracle_class_grad(gm, x, ab, 0)
    score = gm.score(x, ab.sqrt(), (1 - ab).sqrt())
    eps_from_guided_score = td.convert.eps_from_score(G.guided_score(score, grad, gamma), ab)
    torch.testing.assert_close(eps_from_guided_score, G.classifier_eps(gm.eps_fn(sched)(x, t), grad, ab, gamma))


def test_guided_mean_formula():
    mean, grad = torch.randn(4, 2), torch.randn(4, 2)
    torch.testing.assert_close(G.guided_mean(mean, 0.3, grad, 2.0), mean + 0.6 * grad)
    var = torch.tensor([0.1, 0.2, 0.3, 0.4])
    torch.testing.assert_close(G.guided_mean(mean, var, grad, 1.0), mean + var[:, None] * grad)


# ------------------------------------------------------------------------------------------ learned pieces
def test_classifier_grad_matches_finite_differences():
    torch.manual_seed(0)
    clf = td.models.MLPClassifier(dim=2, num_classes=3).double()
    x, t, h = _probe(8), torch.full((8,), 123), 1e-6
    y = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])

    def logp(z):
        return torch.log_softmax(clf(z, t), 1).gather(1, y[:, None])[:, 0]

    fd = torch.stack([(logp(x + h * e) - logp(x - h * e)) / (2 * h) for e in torch.eye(2, dtype=torch.float64)], 1)
    with torch.no_grad():  # samplers run under no_grad: the gradient must still be computed
        auto = G.classifier_grad(clf, x, t, y)
    torch.testing.assert_close(auto, fd.detach(), atol=1e-7, rtol=1e-6)


def test_classifier_grad_on_image_classifier_matches_finite_differences():
    torch.manual_seed(0)
    # float32: models.Classifier's time embedding is float32 only, so the step is larger and the tolerance looser
    clf = td.models.Classifier(1, 4, base_channels=8, time_conditional=True)
    x, t = torch.randn(2, 1, 8, 8), torch.tensor([10, 500])
    auto = G.classifier_grad(clf, x, t, 3)
    for pix in [(3, 4), (0, 7), (6, 1)]:
        e = torch.zeros_like(x)
        e[:, 0, pix[0], pix[1]] = 1e-2
        logp = lambda z: torch.log_softmax(clf(z, t), 1)[:, 3]  # noqa: E731
        fd = (logp(x + e) - logp(x - e)) / 2e-2
        torch.testing.assert_close(auto[:, 0, pix[0], pix[1]], fd.detach(), atol=2e-4, rtol=1e-2)


def test_drop_labels_rate_and_untouched_labels():
    y = torch.randint(0, 10, (40000,), generator=torch.Generator().manual_seed(0))
    out = G.drop_labels(y, 0.2, 10, torch.Generator().manual_seed(1))
    rate = (out == 10).double().mean().item()
    assert abs(rate - 0.2) < 4 * (0.2 * 0.8 / 40000) ** 0.5
    assert torch.equal(out[out != 10], y[out != 10])
    # seeded: the same generator seed gives the same labels
    assert torch.equal(out, G.drop_labels(y, 0.2, 10, torch.Generator().manual_seed(1)))
    assert torch.equal(G.drop_labels(y, 0.0, 10), y)
    assert (G.drop_labels(y, 1.0, 10) == 10).all()


def test_cfg_eps_fn_one_batched_pass_equals_two_calls():
    torch.manual_seed(0)
    model = td.models.MLPDenoiser(dim=2, hidden=32, depth=1, num_classes=3).eval()
    x, t = torch.randn(5, 2), torch.randint(1, 1000, (5,))
    y = torch.tensor([0, 1, 2, 1, 0])
    gam = torch.tensor([0.0, 1.0, 2.0, 3.0, 4.0])
    with torch.no_grad():
        got = G.cfg_eps_fn(model, y, gam)(x, t)
        want = G.cfg(model(x, t, torch.full((5,), 3)), model(x, t, y), gam)
        torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(G.cfg_eps_fn(model, y, 0.0)(x, t), model(x, t, y), atol=1e-6, rtol=1e-5)


def test_cfg_loss_and_classifier_loss_are_finite_and_train():
    sched = td.NoiseSchedule.linear(100)
    model = td.models.MLPDenoiser(dim=2, hidden=16, depth=1, num_classes=2)
    x0, y = torch.randn(16, 2), torch.randint(0, 2, (16,))
    assert torch.isfinite(G.cfg_loss(model, x0, y, sched, p_uncond=0.5))
    clf = td.models.MLPClassifier(dim=2, num_classes=2)
    loss = G.classifier_loss(clf, x0, y, sched)
    assert torch.isfinite(loss) and loss.requires_grad


def test_guided_ddpm_gamma_zero_reproduces_ddpm_sample(gm):
    sched = td.NoiseSchedule.linear(50, beta_end=0.2)
    eps_fn = gm.eps_fn(sched)
    grad_fn = lambda x, t, y: G.oracle_class_grad(gm, x, sched.alpha_bar[t.cpu()], y)  # noqa: E731
    a = G.guided_ddpm_sample(eps_fn, (64, 2), sched, grad_fn=grad_fn, y=0, gamma=0.0, generator=torch.Generator().manual_seed(3))
    b = td.ddpm.sample(eps_fn, (64, 2), sched, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(a, b)
    c = G.guided_ddpm_sample(eps_fn, (64, 2), sched, grad_fn=grad_fn, y=0, gamma=2.0, generator=torch.Generator().manual_seed(3))
    assert (gm.class_posterior(c).argmax(1) == 0).double().mean() > (gm.class_posterior(b).argmax(1) == 0).double().mean()


def test_oracle_guidance_accuracy_rises_monotonically_with_gamma(gm):
    sched = td.NoiseSchedule.linear(100, beta_end=0.15)
    n, gammas = 400, [0.0, 1.0, 3.0]
    gam = torch.tensor(gammas).repeat_interleave(n)
    x = td.ddpm.sample(G.oracle_classifier_eps_fn(gm, sched, 0, gam), (len(gam), 2), sched,
                       generator=torch.Generator().manual_seed(0))
    acc = [(gm.class_posterior(x[i * n:(i + 1) * n]).argmax(1) == 0).double().mean().item() for i in range(3)]
    se = 0.5 / n**0.5
    assert acc[0] + 4 * se < acc[1] < acc[2], acc
    assert abs(acc[0] - 0.5) < 4 * se, "gamma = 0 is the unconditional model: half the samples per class"


def test_cfg_does_not_sample_the_tilted_density(gm):
    sched = td.NoiseSchedule.linear(100, beta_end=0.15)
    n, gammas = 1500, [0.0, 3.0]
    gam = torch.tensor(gammas).repeat_interleave(n)
    x = td.ddpm.sample(G.oracle_cfg_eps_fn(gm, sched, 0, gam), (len(gam), 2), sched,
                       generator=torch.Generator().manual_seed(1)).double()
    z = []
    for i, g in enumerate(gammas):
        xs = x[i * n:(i + 1) * n]
        m, _ = G.grid_moments(G.tilted_log_density(gm, 0, g), lim=6.0, n=300)
        z.append(((xs.mean(0) - m).abs() / (xs.var(0) / n).sqrt()).max().item())
    assert z[0] < 4.0, f"control (gamma=0, CFG = conditional model) is off by {z[0]:.1f} s.e."
    assert z[1] > 8.0, f"CFG at gamma=3 should be far from the tilted density; only {z[1]:.1f} s.e."


def test_grid_moments_of_a_gaussian():
    cov = torch.tensor([[0.5, 0.2], [0.2, 0.3]], dtype=torch.float64)
    gauss = td.data.GaussianMixture([1.0], [[0.3, -0.4]], cov[None])
    m, C = G.grid_moments(gauss.log_prob, lim=5.0, n=300)
    torch.testing.assert_close(m, torch.tensor([0.3, -0.4], dtype=torch.float64), atol=1e-6, rtol=0)
    torch.testing.assert_close(C, cov, atol=1e-5, rtol=0)


def test_within_class_spread_and_recall():
    x = torch.tensor([[0.0, 0.0], [2.0, 0.0], [5.0, 5.0], [5.0, 7.0]])
    spread = td.metrics.within_class_spread(x, torch.tensor([0, 0, 1, 1]))
    torch.testing.assert_close(spread, torch.tensor([1.0, 1.0], dtype=torch.float64))
    real = torch.randn(500, 2, generator=torch.Generator().manual_seed(0))
    wide = torch.randn(500, 2, generator=torch.Generator().manual_seed(1))
    collapsed = 0.1 * torch.randn(500, 2, generator=torch.Generator().manual_seed(2))
    assert td.metrics.knn_recall(real, wide) > 0.9 > 0.3 > td.metrics.knn_recall(real, collapsed)
    # by hand, k = 1: generated 0, 1, 3, 6 have nearest-neighbour radii 1, 1, 2, 3 (a point is not its own neighbour)
    fake = torch.tensor([[0.0, 0.0], [1.0, 0.0], [3.0, 0.0], [6.0, 0.0]])
    real4 = torch.tensor([[0.5, 0.0], [4.5, 0.0], [9.5, 0.0], [-1.5, 0.0]])
    assert td.metrics.knn_recall(real4, fake, k=1) == pytest.approx(0.5)


# ------------------------------------------------------------------------------------------ bad input
def test_bad_inputs_raise_helpful_errors(gm):
    u, c = torch.randn(3, 2), torch.randn(3, 2)
    with pytest.raises(ValueError, match=r"gamma \(the guidance strength.*must be a finite"):
        G.cfg(u, c, float("nan"))
    with pytest.raises(ValueError, match="shape mismatch"):
        G.cfg(u, torch.randn(3, 3), 1.0)
    with pytest.raises(ValueError, match="per-sample gamma"):
        G.cfg(u, c, torch.ones(4))
    with pytest.raises(ValueError, match="p_uncond"):
        G.drop_labels(torch.zeros(3, dtype=torch.long), 1.5, 10)
    with pytest.raises(ValueError, match="null_label"):
        G.drop_labels(torch.zeros(3, dtype=torch.long), 0.1, 0)
    with pytest.raises(ValueError, match="labels y must lie"):
        G.drop_labels(torch.tensor([0, 11]), 0.1, 10)
    with pytest.raises(ValueError, match="integer class"):
        G.drop_labels(torch.tensor([0.0, 1.0]), 0.1, 10)
    with pytest.raises(ValueError, match="null label"):
        G.cfg_eps_fn(torch.nn.Identity(), 0, 1.0)
    with pytest.raises(ValueError, match="class y must be"):
        G.oracle_class_log_prob(gm, torch.zeros(2, 2), 0.5, 5)
    with pytest.raises(ValueError, match="increase lim"):
        G.grid_moments(gm.log_prob, lim=0.5, n=50)
    with pytest.raises(ValueError, match="logits"):
        G.classifier_grad(lambda x, t: x.sum(1), torch.randn(3, 2), torch.ones(3, dtype=torch.long), 0)


def test_tilted_log_density_gradient_is_the_guided_score_and_its_normaliser_matches_monte_carlo():
    """tilted_log_density itself (lesson 06 §4's central object), against two independent computations:
    its autograd gradient = score + (1 + gamma) grad log p(y|x) from the oracle's closed-form score and class
    gradient; and its normaliser by quadrature = E_{p(x|y)}[(p(x|y)/p(x))^gamma] by Monte Carlo from the oracle's
    log-densities. A version that ignores gamma, or uses 2 gamma, fails both."""
    gm = td.data.GaussianMixture.isotropic(torch.tensor([[-1.5, 0.0], [0.0, 1.0], [1.5, 0.0], [0.5, -1.0]]), std=0.6,
                                           weights=torch.tensor([0.3, 0.2, 0.3, 0.2]), labels=[0, 0, 1, 1])
    x = torch.randn(64, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 1.5
    u = torch.linspace(-7, 7, 561, dtype=torch.float64)
    pts = torch.stack(torch.meshgrid(u, u, indexing="xy"), -1).reshape(-1, 2)
    cell = float(u[1] - u[0]) ** 2
    for y, gamma in [(0, 3.0), (1, 0.5), (1, 0.0)]:
        f = G.tilted_log_density(gm, y, gamma)
        xg = x.clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(f(xg).sum(), xg)
        want = G.guided_score(gm.score(x), G.oracle_class_grad(gm, x, 1.0, y), 1 + gamma)
        torch.testing.assert_close(grad, want, rtol=1e-9, atol=1e-9)
        z_quad = float(torch.logsumexp(f(pts), 0).exp() * cell)
        cond = gm.conditional(y)
        xs = cond.sample(200_000, torch.Generator().manual_seed(1), dtype=torch.float64)
        ratio = torch.exp(gamma * (cond.log_prob(xs) - gm.log_prob(xs)))
        z_mc, se = ratio.mean().item(), ratio.std().item() / math.sqrt(len(ratio))
        assert abs(z_quad - z_mc) < 4 * se + 1e-6, (y, gamma, z_quad, z_mc, se)
        if gamma > 0:  # the normaliser is far from 1: a gamma-blind version (normaliser 1) would fail
            assert abs(z_mc - 1) > 20 * se
