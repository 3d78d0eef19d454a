"""Lesson 04: the VP-SDE, reverse SDE, Fokker–Planck, probability-flow ODE, likelihood, PC sampling, DSM."""

import math

import pytest
import torch
from scipy.integrate import quad

import tinydiff as td
from tinydiff import sde as S

SDE = S.VPSDE()


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def _gaussian():
    """One 2-D Gaussian component: its reverse processes must give back exactly this mean and covariance."""
    return td.data.GaussianMixture([1.0], [[1.0, -0.5]], [[0.3, 0.6]])


def _ring():
    return td.data.GaussianMixture.ring(8, radius=2.0, std=0.3)


def _mixture_1d():
    return td.data.GaussianMixture([0.3, 0.7], [[-1.5], [1.0]], [0.1, 0.3])


def _fit_errors(x, gm):
    return td.metrics.gaussian_fit_error(x, gm.mean(), gm.covariance())


# ----------------------------------------------------------------------------------- the SDE itself
def test_beta_integral_and_marginal_closed_form():
    for t in (0.0, 0.13, 0.5, 1.0):
        B, _ = quad(lambda u: float(SDE.beta(u)), 0.0, t)  # independent oracle: numerical quadrature
        assert float(SDE.beta_integral(t)) == pytest.approx(B, rel=1e-10, abs=1e-12)
        m, s = SDE.marginal(t)
        assert float(m) == pytest.approx(math.exp(-B / 2), rel=1e-12)
        assert float(m**2 + s**2) == pytest.approx(1.0, abs=1e-12)  # variance preserving
    assert float(SDE.diffusion(0.3)) == pytest.approx(math.sqrt(0.1 + 0.3 * 19.9))
    x = torch.randn(5, 2, dtype=torch.float64, generator=_gen())
    torch.testing.assert_close(SDE.drift(x, 0.4), -0.5 * (0.1 + 0.4 * 19.9) * x)


def test_marginal_matches_simulated_forward_sde():
    x0 = torch.full((20000, 1), 1.5, dtype=torch.float64)
    t = 0.2
    xt = S.simulate_forward(None, x0, SDE, 400, t_end=t, generator=_gen(1))
    m, s = SDE.marginal(t)
    assert abs(xt.mean().item() - 1.5 * float(m)) < 0.015
    assert abs(xt.std().item() - float(s)) < 0.012  # 1 - m^2 without the square root would be 0.07 off


def test_discrete_schedule_mapping_both_ways():
    errs = []
    for T in (250, 500, 1000):
        sched = SDE.discrete_schedule(T)
        t = torch.arange(T + 1, dtype=torch.float64) / T
        torch.testing.assert_close(sched.beta[1:], SDE.beta(t[1:]) / T)
        errs.append((sched.alpha_bar - SDE.marginal(t)[0] ** 2).abs().max().item())
    assert errs[-1] < 2.5e-3
    assert 1.8 < errs[0] / errs[1] < 2.2 and 1.8 < errs[1] / errs[2] < 2.2  # first order in 1/T
    back = S.VPSDE.from_discrete(SDE.discrete_schedule(400))
    assert back.beta_min == pytest.approx(0.1, rel=1e-9) and back.beta_max == pytest.approx(20.0, rel=1e-12)
    ddpm = td.NoiseSchedule.linear(1000)
    vp = S.VPSDE.from_discrete(ddpm)
    t = torch.arange(1001, dtype=torch.float64) / 1000
    assert (ddpm.alpha_bar - vp.marginal(t)[0] ** 2).abs().max() < 2.5e-3
    assert vp.beta_max == pytest.approx(20.0) and vp.beta_min == pytest.approx(0.1, abs=0.03)


# ----------------------------------------------------------------------------------- samplers
def test_reverse_sde_recovers_gaussian_and_mixture():
    gm = _gaussian()
    x = S.sample_reverse_sde(S.mixture_score_fn(gm, SDE), (10000, 2), SDE, 150, generator=_gen(2))
    dm, dc = _fit_errors(x, gm)
    assert dm < 0.03 and dc < 0.04
    ring = _ring()
    g = _gen(3)
    xr = S.sample_reverse_sde(S.mixture_score_fn(ring, SDE), (2000, 2), SDE, 100, generator=g)
    assert td.metrics.mixture_check(xr, ring).passed  # mode weights, spreads, off-mode mass, MMD vs their floors
    for c in (0.8, 1.25):  # and the same check rejects a score 20 % too weak or 25 % too strong
        bad = S.sample_reverse_sde(lambda x, t, c=c: c * S.mixture_score_fn(ring, SDE)(x, t), (2000, 2), SDE, 100,
                                   generator=_gen(3))
        assert not td.metrics.mixture_check(bad, ring).passed, c


def test_family_with_other_sigma_recovers_gaussian():
    gm = _gaussian()
    sf = S.mixture_score_fn(gm, SDE)
    x = S.sample_reverse_family(sf, (10000, 2), SDE, 150, sigma=0.5, generator=_gen(4))
    dm, dc = _fit_errors(x, gm)
    assert dm < 0.03 and dc < 0.04
    x = S.sample_reverse_family(sf, (10000, 2), SDE, 150, sigma=lambda t: 0.3 + 0 * t, generator=_gen(4))
    dm, dc = _fit_errors(x, gm)
    assert dm < 0.03 and dc < 0.04


def test_ode_samplers_recover_gaussian():
    gm = _gaussian()
    sf = S.mixture_score_fn(gm, SDE)
    xT = torch.randn(10000, 2, generator=_gen(5))
    for x in (S.sample_ode_euler(sf, None, SDE, 150, x_T=xT), S.sample_ode_heun(sf, None, SDE, 30, x_T=xT)):
        dm, dc = _fit_errors(x, gm)
        assert dm < 0.03 and dc < 0.04
    xs = S.sample_ode_scipy(sf, None, SDE, x_T=xT[:500].double(), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(xs.float(), S.sample_ode_heun(sf, None, SDE, 40, x_T=xT[:500]), atol=5e-3, rtol=0)


def test_heun_more_accurate_than_euler_at_equal_nfe():
    ring = _ring()
    sf = S.mixture_score_fn(ring, SDE)
    xT = torch.randn(64, 2, generator=_gen(6), dtype=torch.float64)
    ref, nfe = S.sample_ode_scipy(sf, None, SDE, x_T=xT, rtol=1e-10, atol=1e-10, return_nfe=True)
    assert nfe > 50

    def err(x):
        return (x - ref).pow(2).sum(1).mean().sqrt().item()

    e_euler = [err(S.sample_ode_euler(sf, None, SDE, n, x_T=xT)) for n in (160, 320)]
    e_heun = [err(S.sample_ode_heun(sf, None, SDE, n // 2, x_T=xT)) for n in (160, 320)]  # same NFE
    assert e_heun[0] < e_euler[0] / 3 and e_heun[1] < e_euler[1] / 3
    assert 1.6 < e_euler[0] / e_euler[1] < 2.6  # first order
    assert e_heun[0] / e_heun[1] > 3.0  # second order


def test_ode_forward_then_backward_is_identity():
    sf = S.mixture_score_fn(_ring(), SDE)
    x0 = _ring().sample(16, _gen(7), dtype=torch.float64)
    z = S.sample_ode_scipy(sf, None, SDE, x_T=x0, t_max=1e-3, t_min=1.0, rtol=1e-9, atol=1e-9)
    back = S.sample_ode_scipy(sf, None, SDE, x_T=z, t_max=1.0, t_min=1e-3, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(back, x0, atol=1e-5, rtol=0)


def test_predictor_corrector_and_langevin_invariance():
    gm = _gaussian()
    sf = S.mixture_score_fn(gm, SDE)
    x = S.sample_pc(sf, (10000, 2), SDE, 100, snr=0.1, generator=_gen(8))
    dm, dc = _fit_errors(x, gm)
    assert dm < 0.03 and dc < 0.05
    # Langevin at fixed t leaves p_t invariant: start from exact samples of p_t, stay there
    t = 0.3
    m, s = SDE.marginal(t)
    xt = float(m) * gm.sample(20000, _gen(9)) + float(s) * torch.randn(20000, 2, generator=_gen(10))
    y = S.langevin_correct(sf, SDE, xt, t, snr=0.1, n_steps=30, generator=_gen(11))
    cov_t = float(m) ** 2 * gm.covariance() + float(s) ** 2 * torch.eye(2, dtype=torch.float64)
    dm, dc = td.metrics.gaussian_fit_error(y, float(m) * gm.mean(), cov_t)
    assert dm < 0.03 and dc < 0.04


def test_langevin_invariance_check_of_notebook_04_rejects_the_wrong_variants_at_quick_size():
    """Notebook 04 §6: 500 Langevin steps at t = 0.1 from exact samples of p_t (n = lv_n = 4000 in quick), judged by
    mixture_check against p_t itself. The same check passes langevin_correct with the exact score (seeds 0-3) and
    rejects the score x0.8 and x1.25, no noise, sqrt(eps) noise instead of sqrt(2 eps), and a ring without modes.
    At n = 1000 it passed x1.25 (the stationary spread is only 1/sqrt(1.25) = 0.89 of the right one); at 4000 all
    four seeds tried reject it, by 4-53 % over the spread threshold."""
    ring, n, t = td.data.GaussianMixture.ring(8, radius=2.0, std=0.3), 4000, 0.1
    sde = S.VPSDE(beta_min=0.1, beta_max=20.0)
    sf = S.mixture_score_fn(ring, sde)
    m, s = (float(v) for v in sde.marginal(t))
    p_t = td.data.GaussianMixture.isotropic(m * ring.means, (m**2 * 0.09 + s**2) ** 0.5)
    for seed in range(4):
        x = S.langevin_correct(sf, sde, p_t.sample(n, _gen(seed)), t, snr=0.1, n_steps=500, generator=_gen(seed + 50))
        assert td.metrics.mixture_check(x, p_t).passed, seed
    eps = 2 * (0.1 * s) ** 2  # the corrector's step for snr = 0.1

    def by_hand(c, noise):
        x, g = p_t.sample(n, _gen(60)), _gen(61)
        for _ in range(500):
            x = x + eps * c * sf(x, torch.full((n,), t)) + noise * (2 * eps) ** 0.5 * torch.randn(x.shape, generator=g)
        return x

    assert td.metrics.mixture_check(by_hand(1.0, 1.0), p_t).passed  # the loop written out is right...
    for c, noise in [(0.8, 1.0), (1.25, 1.0), (1.0, 0.0), (1.0, 2 ** -0.5)]:  # ...and each near miss is not
        assert not td.metrics.mixture_check(by_hand(c, noise), p_t).passed, (c, noise)
    theta = torch.rand(n, generator=_gen(62)) * 2 * torch.pi
    no_modes = 2 * m * torch.stack([theta.cos(), theta.sin()], 1) + p_t.covs[0, 0, 0] ** 0.5 * torch.randn(
        n, 2, generator=_gen(63))
    assert not td.metrics.mixture_check(no_modes, p_t).passed


def test_pc_mixture_check_at_the_notebooks_quick_size_rejects_the_wrong_variants():
    """Notebook 04 §6 checks PC samples (n = 1000 in quick) with mixture_check: the same check, at that size, passes
    PC with the exact score and rejects the score scaled by 0.8 and 1.25, PC without its noise terms, and a ring
    with the right radius but no modes."""
    ring, n = _ring(), 1000
    sf = S.mixture_score_fn(ring, SDE)
    xT = torch.randn(n, 2, generator=_gen(36))
    right = S.sample_pc(sf, None, SDE, 100, x_T=xT, snr=0.1, generator=_gen(37), progress_bar=False)
    assert td.metrics.mixture_check(right, ring).passed
    for c in (0.8, 1.25):
        bad = S.sample_pc(lambda x, t, c=c: c * sf(x, t), None, SDE, 100, x_T=xT, snr=0.1, generator=_gen(37),
                          progress_bar=False)
        assert not td.metrics.mixture_check(bad, ring).passed, c
    # PC without noise: the same steps, z = 0 (the predictor's and the corrector's)
    ts = torch.linspace(1.0, 1e-3, 101, dtype=torch.float64).tolist()
    x = xT.clone()
    for i in range(100):
        t0, t1 = ts[i], ts[i + 1]
        b = 0.1 + t0 * 19.9
        x = x + (0.5 * b * x + b * sf(x, torch.full((n,), t0))) * (t0 - t1)
        e = 2 * (0.1 * float(SDE.marginal(t1)[1])) ** 2
        x = x + e * sf(x, torch.full((n,), t1))
    assert not td.metrics.mixture_check(x, ring).passed
    ang = torch.rand(n, generator=_gen(38), dtype=torch.float64) * 2 * math.pi
    no_modes = 2.0 * torch.stack([ang.cos(), ang.sin()], 1) + 0.3 * torch.randn(n, 2, generator=_gen(39),
                                                                                   dtype=torch.float64)
    assert not td.metrics.mixture_check(no_modes, ring).passed


def test_sampling_is_reproducible_with_a_generator():
    sf = S.mixture_score_fn(_ring(), SDE)
    a = S.sample_reverse_sde(sf, (64, 2), SDE, 20, generator=_gen(12))
    b = S.sample_reverse_sde(sf, (64, 2), SDE, 20, generator=_gen(12))
    torch.testing.assert_close(a, b, atol=0, rtol=0)


# ----------------------------------------------------------------------------------- likelihood
def test_log_likelihood_matches_mixture_log_prob():
    ring = _ring()
    x = ring.sample(8, _gen(13), dtype=torch.float64)
    ll = S.log_likelihood(x, S.mixture_score_fn(ring, SDE), SDE, exact_trace=True)
    torch.testing.assert_close(ll, ring.log_prob(x), atol=2e-3, rtol=0)


def test_hutchinson_is_unbiased():
    A = torch.tensor([[1.0, 2.0, 0.5], [-1.0, 3.0, 0.0], [0.3, 0.2, -2.0]], dtype=torch.float64)
    fn = lambda u: u @ A.T  # noqa: E731  divergence = tr A = 2
    x = torch.randn(4000, 3, dtype=torch.float64, generator=_gen(14))
    torch.testing.assert_close(S.divergence_exact(fn, x), torch.full((4000,), 2.0, dtype=torch.float64))
    for z in (torch.randn(4000, 3, dtype=torch.float64, generator=_gen(15)),
              (torch.randint(0, 2, (4000, 3), generator=_gen(16)) * 2 - 1).double()):
        est = S.divergence_hutchinson(fn, x, z)
        assert abs(est.mean().item() - 2.0) < 4 * est.std().item() / math.sqrt(4000)
        assert est.std().item() > 0.5  # a real estimator, not the exact trace
    # and through the whole likelihood ODE
    ring = _ring()
    xs = ring.sample(4, _gen(17), dtype=torch.float64)
    sf = S.mixture_score_fn(ring, SDE)
    exact = S.log_likelihood(xs, sf, SDE, exact_trace=True)
    g = _gen(18)
    runs = torch.stack([S.log_likelihood(xs, sf, SDE, generator=g) for _ in range(12)])
    se = runs.std(0) / math.sqrt(12)
    assert ((runs.mean(0) - exact).abs() < 4 * se + 1e-3).all()


def _probe_z_scores(est, exact, var_formula):
    """(mean - exact) and (sample variance - formula), each in its own standard errors (the latter from the
    fourth central moment): two-sided statistics of a Monte Carlo estimator."""
    n = est.numel()
    mean, var = est.mean(), est.var()
    m4 = (est - mean).pow(4).mean()
    var_of_var = max(float(m4 - (n - 3) / (n - 1) * var**2), float(2 * var**2 / (n - 1))) / n  # >= its lower bound
    return ((mean - exact) / (var / n).sqrt()).item(), ((var - var_formula) / math.sqrt(var_of_var)).item()


def test_hutchinson_variance_matches_its_formula_for_both_probes():
    A = torch.tensor([[1.0, 2.0, 0.5], [-1.0, 3.0, 0.0], [0.3, 0.2, -2.0]], dtype=torch.float64)
    S_ = 0.5 * (A + A.T)
    # closed forms written out: Gaussian 2 sum_ij S_ij^2 = 29.68, Rademacher 2 sum_{i != j} S_ij^2 = 1.68
    assert float(S.hutchinson_variance(A, "gaussian")) == pytest.approx(2 * float((S_**2).sum()), rel=1e-12)
    assert float(S.hutchinson_variance(A, "gaussian")) == pytest.approx(29.68, rel=1e-12)
    assert float(S.hutchinson_variance(A, "rademacher")) == pytest.approx(1.68, rel=1e-12)
    # a batch (B, D, D); a diagonal J is exact with Rademacher probes; Gaussian on I_D is chi^2_D, variance 2D
    Jb = torch.stack([A, torch.diag(torch.tensor([1.0, -2.0, 5.0], dtype=torch.float64)), torch.eye(3).double()])
    torch.testing.assert_close(S.hutchinson_variance(Jb, "rademacher"), torch.tensor([1.68, 0.0, 0.0]).double())
    assert float(S.hutchinson_variance(Jb, "gaussian")[2]) == pytest.approx(6.0)
    # Monte Carlo: mean = tr A and variance = formula, each within 4 standard errors; the other formula is far off
    n = 40000
    fn = lambda u: u @ A.T  # noqa: E731
    x = torch.randn(n, 3, dtype=torch.float64, generator=_gen(30))
    probes = {"gaussian": torch.randn(n, 3, dtype=torch.float64, generator=_gen(31)),
              "rademacher": (torch.randint(0, 2, (n, 3), generator=_gen(32)) * 2 - 1).double()}
    for name, z in probes.items():
        est = S.divergence_hutchinson(fn, x, z)
        other = "rademacher" if name == "gaussian" else "gaussian"
        z_mean, z_var = _probe_z_scores(est, 2.0, S.hutchinson_variance(A, name))
        assert abs(z_mean) < 4 and abs(z_var) < 4, (name, z_mean, z_var)
        assert abs(_probe_z_scores(est, 2.0, S.hutchinson_variance(A, other))[1]) > 10, name
    # wrong estimators: probes with E[zz^T] = I/3 (uniform on [-1, 1]) and z^T v instead of z^T J z
    u = 2 * torch.rand(n, 3, dtype=torch.float64, generator=_gen(33)) - 1
    assert abs(_probe_z_scores(S.divergence_hutchinson(fn, x, u), 2.0, 1.68)[0]) > 10
    assert abs(_probe_z_scores((fn(x) * probes["rademacher"]).sum(1), 2.0, 1.68)[0]) > 10
    with pytest.raises(ValueError, match="jacobian must be square"):
        S.hutchinson_variance(torch.zeros(2, 3))
    with pytest.raises(ValueError, match="probe must be"):
        S.hutchinson_variance(A, "sphere")


# ----------------------------------------------------------------------------------- Fokker–Planck
def test_fokker_planck_pde_matches_exact_marginal():
    gm = _mixture_1d()
    grid = torch.linspace(-5, 5, 401, dtype=torch.float64)
    p0 = gm.log_prob(grid[:, None]).exp()
    p = S.fokker_planck_1d(p0, grid, SDE, t_end=0.3, steps=60)
    m, s = SDE.marginal(0.3)
    exact = gm.log_prob(grid[:, None], float(m), float(s)).exp()
    dx = float(grid[1] - grid[0])
    assert (p - exact).abs().sum().item() * dx < 1e-3
    assert p.sum().item() * dx == pytest.approx(p0.sum().item() * dx, abs=1e-10)  # mass conserved


def test_exact_marginal_satisfies_fokker_planck():
    gm = _mixture_1d()
    x = torch.linspace(-3, 3, 13, dtype=torch.float64)[:, None]

    def lp(u, t):
        m, s = SDE.marginal(t)
        return gm.log_prob(u, float(m), float(s))

    lhs, rhs = S.fokker_planck_residual(lp, SDE, x, 0.3)
    assert lhs.abs().max() > 0.1
    torch.testing.assert_close(lhs, rhs, atol=1e-6, rtol=1e-6)

    def wrong(u, t):  # a density that drifts but does not spread: must violate the equation
        m, _ = SDE.marginal(t)
        return gm.log_prob(u, float(m), 0.5)

    lhs, rhs = S.fokker_planck_residual(wrong, SDE, x, 0.3)
    assert (lhs - rhs).abs().max() > 0.05


def _mixture_1d_log_p(u, t):
    m, s = SDE.marginal(t)
    return _mixture_1d().log_prob(u, float(m), float(s))


def test_reverse_time_fokker_planck_holds_for_andersons_drift_only():
    """-dp/dt = d(mu p)/dx + g^2/2 d2p/dx2 with mu = f - g^2 score (the reverse SDE run with dt < 0), on the exact
    marginal of a 1-D mixture; the near misses (sign flipped, g^2/2, no score) miss by more than half of dp/dt."""
    gm = _mixture_1d()
    sf = S.mixture_score_fn(gm, SDE)
    x = torch.linspace(-3, 3, 41, dtype=torch.float64)[:, None]
    for t in (0.05, 0.3, 0.6):
        g2 = float(SDE.beta(t))
        lhs, rhs = S.fokker_planck_sides(_mixture_1d_log_p, lambda u, tt: S.reverse_sde_drift(sf, SDE, u, tt), g2, x, t,
                                         reverse=True)
        scale = lhs.abs().max()
        assert scale > 0.05
        assert (lhs - rhs).abs().max() < 1e-5 * scale, t
        # the drift written out, and the near misses
        for c, ok in ((1.0, True), (-1.0, False), (0.5, False), (0.0, False)):
            mu = lambda u, tt, c=c: (-0.5 * (0.1 + 19.9 * tt) * u  # noqa: E731  f - c g^2 score, written out
                                     - c * (0.1 + 19.9 * tt) * sf(u, torch.full((u.shape[0],), tt, dtype=u.dtype)))
            lhs, rhs = S.fokker_planck_sides(_mixture_1d_log_p, mu, g2, x, t, reverse=True)
            rel = ((lhs - rhs).abs().max() / scale).item()
            assert (rel < 1e-5) if ok else (rel > 0.5), (t, c, rel)
        # the PF-ODE (sigma = 0) satisfies both the forward and the reverse equation: it is its own reverse
        pf = lambda u, tt: S.pf_ode_drift(sf, SDE, u, tt)  # noqa: E731
        for rev in (False, True):
            lhs, rhs = S.fokker_planck_sides(_mixture_1d_log_p, pf, 0.0, x, t, reverse=rev)
            assert (lhs - rhs).abs().max() < 1e-5 * scale, (t, rev)
        # the forward SDE's drift with noise g satisfies the forward equation, not the reverse one
        f = lambda u, tt: SDE.drift(u, tt)  # noqa: E731
        lhs, rhs = S.fokker_planck_sides(_mixture_1d_log_p, f, g2, x, t)
        assert (lhs - rhs).abs().max() < 1e-5 * scale
        lhs, rhs = S.fokker_planck_sides(_mixture_1d_log_p, f, g2, x, t, reverse=True)
        assert (lhs - rhs).abs().max() > 0.5 * scale
    with pytest.raises(ValueError, match=r"diffusion_sq .* must be"):
        S.fokker_planck_sides(_mixture_1d_log_p, f, -1.0, x, 0.3)
    with pytest.raises(TypeError, match="drift_fn must be a callable"):
        S.fokker_planck_sides(_mixture_1d_log_p, 3.0, 1.0, x, 0.3)
    with pytest.raises(ValueError, match=r"drift_fn returned shape"):
        S.fokker_planck_sides(_mixture_1d_log_p, lambda u, tt: u[:, 0], 1.0, x, 0.3)


def test_reverse_sde_drift_is_f_minus_g2_score():
    sf = S.mixture_score_fn(_ring(), SDE)
    x = torch.randn(6, 2, dtype=torch.float64, generator=_gen(34))
    t = torch.rand(6, dtype=torch.float64, generator=_gen(35))
    beta = 0.1 + t * 19.9
    want = -0.5 * beta[:, None] * x - beta[:, None] * sf(x, t)
    torch.testing.assert_close(S.reverse_sde_drift(sf, SDE, x, t), want)
    torch.testing.assert_close(S.pf_ode_drift(sf, SDE, x, t), -0.5 * beta[:, None] * x - 0.5 * beta[:, None] * sf(x, t))


def test_particle_systems_match_fokker_planck():
    gm = _mixture_1d()
    sf = S.mixture_score_fn(gm, SDE)
    t, n = 0.3, 8000
    m, s = SDE.marginal(t)
    edges = torch.linspace(-4, 4, 41, dtype=torch.float64)
    dens = lambda u: gm.log_prob(u[:, None], float(m), float(s)).exp()  # noqa: E731
    g = _gen(19)
    floor = sum(td.metrics.histogram_tv(float(m) * gm.sample(n, g) + float(s) * torch.randn(n, 1, generator=g), edges, dens)
                for _ in range(3)) / 3
    x0 = gm.sample(n, g, dtype=torch.float64)
    for kw in (dict(sigma=1.0), dict(sigma=0.5, score_fn=sf), dict(sigma=0.0, score_fn=sf)):
        xt = S.simulate_forward(kw.pop("score_fn", None), x0, SDE, 150, t_end=t, generator=g, **kw)
        assert td.metrics.histogram_tv(xt, edges, dens) < 1.6 * floor, kw
    # the check can fail: particles from the data, not moved at all
    assert td.metrics.histogram_tv(x0, edges, dens) > 3 * floor


def test_histogram_tv_exact_values():
    edges = torch.linspace(0, 1, 5, dtype=torch.float64)
    uniform = lambda u: torch.ones_like(u)  # noqa: E731
    assert td.metrics.histogram_tv(torch.full((10,), 0.1), edges, uniform) == pytest.approx(0.75)  # all mass in one of 4 bins
    assert td.metrics.histogram_tv(torch.tensor([0.1, 0.4, 0.6, 0.9]), edges, uniform) == pytest.approx(0.0, abs=1e-12)
    assert td.metrics.histogram_tv(torch.tensor([0.1, 0.4, 0.6, 5.0]), edges, uniform) == pytest.approx(0.25)  # one outside
    with pytest.raises(ValueError, match="bin probabilities"):
        td.metrics.histogram_tv(torch.zeros(3), edges, torch.ones(3))


# ----------------------------------------------------------------------------------- score matching
def test_dsm_loss_minimised_by_true_score():
    ring = _ring()
    sf = S.mixture_score_fn(ring, SDE)
    g = _gen(20)
    x0 = ring.sample(20000, g)
    t = 0.02 + 0.98 * torch.rand(20000, generator=g, dtype=torch.float64)
    eps = torch.randn(20000, 2, generator=g)
    best = S.dsm_loss(sf, x0, SDE, t=t, eps=eps).item()
    for bad in (lambda x, tt: 1.1 * sf(x, tt), lambda x, tt: sf(x, tt) + 0.1, lambda x, tt: 0.9 * sf(x, tt)):
        assert S.dsm_loss(bad, x0, SDE, t=t, eps=eps).item() > best
    # with s_theta = -eps_theta / s(t) the weighted DSM loss is DDPM's ||eps - eps_theta||^2
    eps_net = lambda x, tt: 0.1 * x  # noqa: E731
    m, s = SDE.marginal(t)
    xt = m[:, None].float() * x0 + s[:, None].float() * eps
    want = (eps - eps_net(xt, t)).pow(2).sum(1).mean()
    got = S.dsm_loss(S.continuous_score_fn(eps_net, SDE), x0, SDE, t=t, eps=eps)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_continuous_score_fn_matches_mixture():
    ring = _ring()
    x = torch.randn(32, 2, generator=_gen(21), dtype=torch.float64)
    t = torch.full((32,), 0.4, dtype=torch.float64)
    m, s = SDE.marginal(t)
    eps_fn = lambda u, tt: -s[:, None] * ring.score(u, m, s)  # noqa: E731
    torch.testing.assert_close(S.continuous_score_fn(eps_fn, SDE)(x, t), S.mixture_score_fn(ring, SDE)(x, t))


# ----------------------------------------------------------------------------------- bad input
def test_bad_inputs_raise_value_errors():
    with pytest.raises(ValueError, match=r"must not exceed beta_max"):
        S.VPSDE(beta_min=5.0, beta_max=1.0)
    with pytest.raises(ValueError, match=r"beta_min must be"):
        S.VPSDE(beta_min=0.0)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        SDE.marginal(1.5)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        SDE.beta(torch.tensor([0.2, -0.1]))
    sf = S.mixture_score_fn(_ring(), SDE)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        sf(torch.zeros(2, 2), torch.tensor([0.5, 2.0]))
    with pytest.raises(ValueError, match=r"n_steps .* must lie in 1\.\.inf"):
        S.sample_reverse_sde(sf, (4, 2), SDE, n_steps=0)
    with pytest.raises(ValueError, match="t_min"):
        S.sample_ode_euler(sf, (4, 2), SDE, 5, t_min=1.0)
    with pytest.raises(ValueError, match="not linear"):
        S.VPSDE.from_discrete(td.NoiseSchedule.cosine(100))
    with pytest.raises(ValueError, match="too small"):
        SDE.discrete_schedule(10)
    with pytest.raises(ValueError, match="needs the score"):
        S.simulate_forward(None, torch.zeros(4, 1), SDE, 3, t_end=0.5, sigma=0.5)
    with pytest.raises(ValueError, match=r"sigma .* must be >= 0"):
        S.sample_reverse_family(sf, (4, 2), SDE, 3, sigma=-1.0)
    with pytest.raises(ValueError, match="t = 0 has no noise"):
        S.dsm_loss(sf, torch.zeros(4, 2), SDE, t=torch.zeros(4))
    with pytest.raises(ValueError, match="batch dimension"):
        S.log_likelihood(torch.zeros(3), sf, SDE)
    with pytest.raises(ValueError, match="probe must be"):
        S.log_likelihood(torch.zeros(3, 2), sf, SDE, probe="sphere")
    with pytest.raises(ValueError, match="uniform"):
        S.fokker_planck_1d(torch.ones(4), torch.tensor([0.0, 1.0, 3.0, 4.0]), SDE, t_end=0.1)
    with pytest.raises(ValueError, match="runs forward in time"):
        S.fokker_planck_1d(torch.ones(4), torch.linspace(0, 1, 4), SDE, t_start=0.5, t_end=0.2)
    with pytest.raises(ValueError, match="t_end"):
        S.simulate_forward(None, torch.zeros(4, 1), SDE, 3, t_start=0.5, t_end=0.2)
