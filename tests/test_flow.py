"""Lesson 11: flow matching and rectified flow. Every identity against an independent oracle: the exact
Gaussian mixture (posterior mean, autograd of log p, Monte Carlo, the continuity equation), diffusers'
FlowMatchEulerDiscreteScheduler and DDIMScheduler with no weights, torch.distributions and scipy."""

import math

import pytest
import torch

import tinydiff as td
from tinydiff import flow

T = 1000


@pytest.fixture(scope="module")
def gm():
    return td.data.GaussianMixture.ring(8, radius=2.0, std=0.2)


@pytest.fixture(scope="module")
def sched():
    return td.NoiseSchedule.linear(T)


def _points(n=32, seed=0, t_lo=0.05, t_hi=0.95):
    g = torch.Generator().manual_seed(seed)
    x = 2.0 * torch.randn(n, 2, generator=g, dtype=torch.float64)
    t = t_lo + (t_hi - t_lo) * torch.rand(n, generator=g, dtype=torch.float64)
    return x, t


def _logit(t):
    return torch.log(t) - torch.log1p(-t)


# ------------------------------------------------------------------------------------- the path
def test_xt_matches_diffusers_scale_noise_and_velocity_is_its_time_derivative():
    from diffusers import FlowMatchEulerDiscreteScheduler

    g = torch.Generator().manual_seed(1)
    ds = FlowMatchEulerDiscreteScheduler(num_train_timesteps=T)
    ds.set_timesteps(sigmas=[0.9, 0.6, 0.3, 0.1])
    x0 = torch.randn(4, 3, generator=g)
    eps = torch.randn(4, 3, generator=g)
    sig = ds.sigmas[:4]
    ours = flow.xt(x0, eps, sig)
    theirs = ds.scale_noise(x0, ds.timesteps[:4], eps)
    torch.testing.assert_close(ours, theirs, atol=1e-6, rtol=0)  # float32, |x| < 5
    assert torch.allclose(ds.timesteps[:4], sig * T)  # diffusers' "timestep" is 1000 sigma
    # d x_t / dt = eps - x0, by forward-mode autodiff in float64
    x0d, epsd = x0.double(), eps.double()
    t = torch.tensor(0.37, dtype=torch.float64)
    _, dxdt = torch.func.jvp(lambda s: flow.xt(x0d, epsd, s), (t,), (torch.ones_like(t),))
    torch.testing.assert_close(dxdt, flow.conditional_velocity(x0d, epsd), atol=1e-14, rtol=0)
    # x0 and eps back from (x_t, v)
    xt = flow.xt(x0d, epsd, t)
    v = flow.conditional_velocity(x0d, epsd)
    torch.testing.assert_close(flow.x0_from_velocity(xt, v, t), x0d, atol=1e-14, rtol=0)
    torch.testing.assert_close(flow.eps_from_velocity(xt, v, t), epsd, atol=1e-14, rtol=0)
    torch.testing.assert_close(flow.velocity_from_x0(xt, x0d, t), v, atol=1e-13, rtol=0)


# ------------------------------------------------------------------------------------- the marginal velocity
def test_mixture_velocity_matches_autograd_of_log_prob(gm):
    x, t = _points()
    v = flow.mixture_velocity(gm, x, t)
    xr = x.clone().requires_grad_(True)
    score, = torch.autograd.grad(gm.log_prob(xr, 1 - t, t).sum(), xr)  # the score by autograd, not by formula
    torch.testing.assert_close(v, flow.velocity_from_score(x, score, t), atol=1e-10, rtol=0)
    # t = 0 and t = 1: the limits -x and x - E[x0]
    ends = torch.tensor([0.0, 1.0], dtype=torch.float64)
    xe = x[:2]
    ve = flow.mixture_velocity(gm, xe, ends)
    torch.testing.assert_close(ve[0], -xe[0], atol=1e-15, rtol=0)
    torch.testing.assert_close(ve[1], xe[1] - gm.mean(), atol=1e-12, rtol=0)
    # float32 in, float32 out
    assert flow.mixture_velocity(gm, x.float(), t).dtype == torch.float32


def test_mixture_velocity_matches_monte_carlo_conditional_mean(gm):
    r"""v*(x, t) = E[eps - x0 | x_t = x] by self-normalised importance sampling: x0 ~ p_data, weights
    N(x; (1-t)x0, t^2 I); eps - x0 = (x - x0)/t on the line through x. Tolerance: 5 standard errors."""
    g = torch.Generator().manual_seed(2)
    x0 = gm.sample(400_000, g, dtype=torch.float64)
    x, t = _points(6, seed=3, t_lo=0.3, t_hi=0.9)
    v = flow.mixture_velocity(gm, x, t)
    for i in range(x.shape[0]):
        ti = float(t[i])
        logw = -((x[i] - (1 - ti) * x0) ** 2).sum(1) / (2 * ti**2)
        w = torch.softmax(logw, 0)
        u = (x[i] - x0) / ti  # the conditional velocity of each path through x
        est = (w[:, None] * u).sum(0)
        se = ((w[:, None] ** 2) * (u - est) ** 2).sum(0).sqrt()
        assert 1 / (w**2).sum() > 1000, "too few effective samples for a Monte Carlo check"
        assert bool(((est - v[i]).abs() <= 5 * se + 1e-12).all()), (i, est, v[i], se)


def test_marginal_velocity_satisfies_the_continuity_equation(gm):
    r"""The marginal velocity generates p_t: d/dt log p_t + div v + v . grad log p_t = 0, exactly, with
    p_t the law of (1 - t) X + t eps (the oracle's log_prob) and every derivative by autograd in float64."""
    x, t = _points(16, seed=4, t_lo=0.1, t_hi=0.9)
    xr = x.clone().requires_grad_(True)
    tr = t.clone().requires_grad_(True)
    logp = gm.log_prob(xr, 1 - tr, tr)
    dlogp_dx, dlogp_dt = torch.autograd.grad(logp.sum(), (xr, tr))
    xv = x.clone().requires_grad_(True)
    v = flow.mixture_velocity(gm, xv, t)
    div = sum(torch.autograd.grad(v[:, j].sum(), xv, retain_graph=True)[0][:, j] for j in range(2))
    residual = dlogp_dt + div + (v.detach() * dlogp_dx).sum(1)
    assert residual.abs().max() < 1e-9, residual.abs().max()
    assert dlogp_dt.abs().max() > 0.1  # the density does change with t: the check is not vacuous


# ------------------------------------------------------------------------------------- the losses
def _features(x, t, R, c):
    """Fixed random features phi(x, t) (tanh of an affine map) plus a constant: v_W = phi W (linear in W)."""
    z = torch.tanh(torch.cat([x, t[:, None]], 1) @ R + c)
    return torch.cat([z, torch.ones_like(z[:, :1])], 1)


def test_cfm_gradient_equals_marginal_fm_gradient_by_monte_carlo(gm):
    r"""grad L_CFM = grad L_FM: the per-sample gradients of the conditional loss (target eps - x0) and of the
    marginal loss (target v*(x_t, t), the oracle) differ by a term of mean zero. For v_W = phi(x, t) W the
    per-sample gradient is 2 phi^T (v_W - target); we compare the two means to their Monte Carlo error."""
    g = torch.Generator().manual_seed(5)
    n = 200_000
    R = torch.randn(3, 12, generator=g, dtype=torch.float64)
    c = torch.randn(12, generator=g, dtype=torch.float64)
    W = 0.3 * torch.randn(13, 2, generator=g, dtype=torch.float64)
    x0 = gm.sample(n, g, dtype=torch.float64)
    eps = torch.randn(n, 2, generator=g, dtype=torch.float64)
    t = torch.rand(n, generator=g, dtype=torch.float64).clamp(1e-3, 1 - 1e-3)
    xt = flow.xt(x0, eps, t)
    phi = _features(xt, t, R, c)
    pred = phi @ W
    g_cfm = 2 * phi[:, :, None] * (pred - flow.conditional_velocity(x0, eps))[:, None, :]  # (n, 13, 2)
    g_fm = 2 * phi[:, :, None] * (pred - flow.mixture_velocity(gm, xt, t))[:, None, :]
    d = (g_cfm - g_fm).flatten(1)
    mean, cov = d.mean(0), torch.cov(d.T) / n  # the Monte Carlo mean and its covariance
    t2 = mean @ torch.linalg.solve(cov, mean)  # Hotelling's T^2 ~ chi^2 with 26 dof if the means agree
    assert t2 < 54.0, t2  # chi^2_26's 99.9 % point
    assert g_fm.flatten(1).mean(0).norm() > 50 * cov.diagonal().sqrt().norm(), "the gradient must be far above the noise"
    # the same through autograd on the package's losses (a linear model in W), on a sub-batch
    Wp = W.clone().requires_grad_(True)
    model = lambda x, tt: _features(x, tt, R, c) @ Wp  # noqa: E731
    m = 5000
    lc = flow.cfm_loss(model, x0[:m], noise=eps[:m], t=t[:m])
    grad_c, = torch.autograd.grad(lc, Wp)
    torch.testing.assert_close(grad_c, g_cfm[:m].mean(0), atol=1e-12, rtol=1e-10)
    lf = flow.fm_loss(model, xt[:m], t[:m], flow.mixture_velocity(gm, xt[:m], t[:m]))
    grad_f, = torch.autograd.grad(lf, Wp)
    torch.testing.assert_close(grad_f, g_fm[:m].mean(0), atol=1e-12, rtol=1e-10)


def test_cfm_loss_by_hand_and_reflow_loss_uses_the_coupling():
    g = torch.Generator().manual_seed(6)
    x0 = torch.randn(8, 2, generator=g, dtype=torch.float64)
    eps = torch.randn(8, 2, generator=g, dtype=torch.float64)
    t = torch.rand(8, generator=g, dtype=torch.float64)
    model = lambda x, tt: 0.5 * x + tt[:, None]  # noqa: E731
    xt = (1 - t[:, None]) * x0 + t[:, None] * eps
    want = ((0.5 * xt + t[:, None]) - (eps - x0)).pow(2).sum(1)
    torch.testing.assert_close(flow.cfm_loss(model, x0, noise=eps, t=t, reduction="none"), want, atol=1e-14, rtol=0)
    torch.testing.assert_close(flow.cfm_loss(model, x0, noise=eps, t=t), want.mean(), atol=1e-14, rtol=0)
    torch.testing.assert_close(flow.reflow_loss(model, (x0, eps), t=t), want.mean(), atol=1e-14, rtol=0)
    # images (B, C, H, W) work too
    img = torch.randn(3, 1, 4, 4, generator=g)
    assert flow.cfm_loss(lambda x, tt: torch.zeros_like(x), img).ndim == 0


# ------------------------------------------------------------------------------------- time sampling
def test_shift_is_a_logit_shift_and_matches_diffusers():
    from diffusers import FlowMatchEulerDiscreteScheduler

    t = torch.linspace(0.01, 0.99, 50, dtype=torch.float64)
    for shift in (0.5, 1.0, 3.0):
        torch.testing.assert_close(_logit(flow.shift_time(t, shift)), _logit(t) + math.log(shift), atol=1e-12, rtol=0)
        ds = FlowMatchEulerDiscreteScheduler(num_train_timesteps=T, shift=shift)
        train_grid = torch.arange(T, 0, -1, dtype=torch.float64) / T
        torch.testing.assert_close(ds.sigmas.double(), flow.shift_time(train_grid, shift), atol=1e-6, rtol=0)
    assert float(flow.shift_time(torch.tensor(0.5), 3.0)) == pytest.approx(0.75)


def test_logit_normal_density_and_sampler():
    from scipy import stats

    loc, scale = 0.3, 0.8
    t = torch.linspace(0.001, 0.999, 200, dtype=torch.float64)
    ref = torch.distributions.TransformedDistribution(
        torch.distributions.Normal(torch.tensor(loc, dtype=torch.float64), torch.tensor(scale, dtype=torch.float64)),
        [torch.distributions.SigmoidTransform()])
    torch.testing.assert_close(flow.logit_normal_log_density(t, loc, scale), ref.log_prob(t), atol=1e-10, rtol=0)
    # it integrates to 1 (trapezoid on logit space, where it is a normal density)
    g = torch.Generator().manual_seed(7)
    draws = flow.sample_time(20_000, "logit_normal", loc=loc, scale=scale, generator=g).double()
    p = stats.kstest(_logit(draws).numpy(), stats.norm(loc, scale).cdf).pvalue
    assert p > 1e-3, p
    # a shifted logit-normal is a logit-normal with loc + log(shift)
    draws = flow.sample_time(20_000, "logit_normal", loc=loc, scale=scale, shift=3.0, generator=g).double()
    assert stats.kstest(_logit(draws).numpy(), stats.norm(loc + math.log(3.0), scale).cdf).pvalue > 1e-3
    assert stats.kstest(_logit(draws).numpy(), stats.norm(loc, scale).cdf).pvalue < 1e-6  # and not the unshifted one
    u = flow.sample_time(20_000, "uniform", generator=g).double()
    assert stats.kstest(u.numpy(), "uniform").pvalue > 1e-3


# ------------------------------------------------------------------------------------- the sampler
@pytest.mark.parametrize("shift", [1.0, 3.0])
def test_euler_sampler_matches_diffusers_flow_match_euler(gm, shift):
    from diffusers import FlowMatchEulerDiscreteScheduler

    n = 12
    grid = flow.time_grid(n, shift)
    ds = FlowMatchEulerDiscreteScheduler(num_train_timesteps=T, shift=shift)
    ds.set_timesteps(sigmas=(1 - torch.arange(n, dtype=torch.float64) / n).tolist())  # diffusers shifts them itself
    torch.testing.assert_close(ds.sigmas.double(), grid, atol=1e-6, rtol=0)
    x_T = torch.randn(64, 2, generator=torch.Generator().manual_seed(8))
    velocity = flow.mixture_velocity_fn(gm)
    x = x_T.clone()
    for k in ds.timesteps:
        sigma = torch.full((64,), float(k) / T)
        x = ds.step(velocity(x, sigma), k, x).prev_sample
    ours = flow.sample(velocity, (64, 2), n, shift=shift, x_T=x_T, progress_bar=False)
    torch.testing.assert_close(ours, x, atol=2e-5, rtol=0)  # float32 chains, times rounded to float32 by diffusers
    # the default diffusers grid (linspace(1, 1/T, n), then 0) through times=
    ds.set_timesteps(n)
    ours = flow.sample(velocity, (64, 2), times=ds.sigmas.double(), x_T=x_T, progress_bar=False) if shift == 1.0 else None
    if ours is not None:
        torch.testing.assert_close(ds.sigmas.double()[:-1], torch.linspace(1, 1 / T, n, dtype=torch.float64), atol=1e-6, rtol=0)


def test_sampler_callback_generator_and_errors(gm):
    traj = td.utils.Trajectory()
    v = flow.mixture_velocity_fn(gm)
    a = flow.sample(v, (10, 2), 5, generator=torch.Generator().manual_seed(9), callback=traj, progress_bar=False)
    b = flow.sample(v, (10, 2), 5, generator=torch.Generator().manual_seed(9), progress_bar=False)
    assert torch.equal(a, b) and len(traj) == 6 and torch.equal(traj.xs[-1], a)
    assert traj.ts[0] == 1.0 and traj.ts[-1] == 0.0
    torch.testing.assert_close(traj.xs[0], torch.randn(10, 2, generator=torch.Generator().manual_seed(9)))
    # one Euler step by hand
    x1 = traj.xs[0]
    t1 = torch.full((10,), 1.0)
    torch.testing.assert_close(traj.xs[1], x1 + (0.8 - 1.0) * v(x1, t1), atol=1e-6, rtol=0)
    torch.testing.assert_close(flow.step(x1, v(x1, t1), 1.0, 0.8), traj.xs[1], atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="n_steps"):
        flow.sample(v, (10, 2), 0)
    with pytest.raises(ValueError, match="decrease"):
        flow.sample(v, (10, 2), times=[0.0, 0.5, 1.0])
    with pytest.raises(ValueError, match="shape"):
        flow.sample(lambda x, t: x[:1], (10, 2), 3, progress_bar=False)
    with pytest.raises(TypeError, match="None"):
        flow.sample(lambda x, t: None, (10, 2), 3, progress_bar=False)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        flow.xt(torch.zeros(2, 2), torch.zeros(2, 2), 1.5)
    with pytest.raises(ValueError, match="shift"):
        flow.time_grid(4, shift=0.0)
    with pytest.raises(ValueError, match="kind"):
        flow.sample_time(4, "beta")
    with pytest.raises(ValueError, match="scale"):
        flow.logit_normal_log_density(torch.tensor([0.5]), 0.0, -1.0)
    with pytest.raises(ValueError, match="noise"):
        flow.cfm_loss(lambda x, t: x, torch.zeros(4, 2), noise=torch.zeros(3, 2))
    with pytest.raises(ValueError, match="pairs"):
        flow.reflow_loss(lambda x, t: x, torch.zeros(4, 2))
    with pytest.raises(ValueError, match="t must be > 0|every t"):
        flow.velocity_from_x0(torch.zeros(2, 2), torch.zeros(2, 2), 0.0)


# ------------------------------------------------------------------------------------- the bridge to DDIM
def _ddim_states(eps_fn, x_T, sched, ts):
    """DDIM (eta = 0) states by td.ddim.step, one per grid point, from x_T at ts[0] down to t = 0."""
    grid = torch.cat([ts, ts.new_zeros(1)]).tolist()
    xs, x = [x_T], x_T
    for t, t_prev in zip(grid[:-1], grid[1:]):
        x = td.ddim.step(x, eps_fn(x, torch.full((x.shape[0],), t, dtype=torch.long)), t, t_prev, sched, eta=0.0)
        xs.append(x)
    return xs, torch.tensor(grid)


@pytest.mark.parametrize("spacing", ["leading", "trailing"])
def test_euler_flow_steps_are_ddim_steps_on_the_oracle(gm, sched, spacing):
    r"""x_fm = x_vp / (a + s) at t = s / (a + s): each Euler step of the exact flow is the DDIM step, in float64."""
    ts = td.ddim.timesteps(T, 10, spacing)
    x_T = torch.randn(128, 2, generator=torch.Generator().manual_seed(10), dtype=torch.float64)
    xs, grid = _ddim_states(gm.eps_fn(sched), x_T, sched, ts)
    ab = sched.alpha_bar[grid]
    times = flow.linear_times(sched, grid)
    traj = td.utils.Trajectory()
    x_fm0, t0 = flow.to_linear(x_T, ab[0].sqrt(), (1 - ab[0]).sqrt())
    assert float(t0) == pytest.approx(float(times[0]), abs=1e-15)
    out = flow.sample(flow.mixture_velocity_fn(gm), x_T.shape, times=times, x_T=x_fm0, callback=traj,
                      progress_bar=False)
    for i, (x_vp, x_fm) in enumerate(zip(xs, traj.xs)):
        back = flow.from_linear(x_fm, times[i], ab[i].sqrt(), (1 - ab[i]).sqrt())
        torch.testing.assert_close(back, x_vp, atol=1e-11, rtol=0, msg=f"step {i}")
    torch.testing.assert_close(out, td.ddim.sample(gm.eps_fn(sched), x_T.shape, sched, 10, spacing=spacing, x_T=x_T),
                               atol=1e-11, rtol=0)


def test_bridge_holds_for_any_eps_network(sched):
    """With an untrained network (random weights, float64) as the VP eps-predictor, the flow sampler on the
    bridge times with velocity_fn_from_eps_fn gives DDIM's states exactly: the bridge is an identity of the
    samplers, not a property of the oracle."""
    torch.manual_seed(11)
    net = td.models.MLPDenoiser(dim=2, hidden=32, depth=2).double().eval()
    eps_fn = lambda x, t: net(x, t)  # noqa: E731
    ts = td.ddim.timesteps(T, 7, "trailing")
    x_T = torch.randn(16, 2, generator=torch.Generator().manual_seed(12), dtype=torch.float64)
    xs, grid = _ddim_states(eps_fn, x_T, sched, ts)
    ab = sched.alpha_bar[grid]
    times = flow.linear_times(sched, grid)
    traj = td.utils.Trajectory()
    with torch.no_grad():
        flow.sample(flow.velocity_fn_from_eps_fn(eps_fn, sched), x_T.shape, times=times,
                    x_T=flow.to_linear(x_T, ab[0].sqrt(), (1 - ab[0]).sqrt())[0], callback=traj, progress_bar=False)
    for i in range(len(xs)):
        torch.testing.assert_close(traj.xs[i] * (ab[i].sqrt() + (1 - ab[i]).sqrt()), xs[i], atol=1e-12, rtol=1e-12)
    with pytest.raises(ValueError, match="noise levels"):
        flow.velocity_fn_from_eps_fn(eps_fn, sched)(x_T, torch.full((16,), 0.123456789, dtype=torch.float64))


def test_bridge_between_diffusers_ddim_and_flow_match_euler(gm, sched):
    """Both samplers taken from diffusers (no weights): DDIMScheduler on the VP variable with the oracle's eps,
    FlowMatchEulerDiscreteScheduler on x/(a + s) with sigmas = s/(a + s) and the same eps turned into eps - x0."""
    from diffusers import DDIMScheduler, FlowMatchEulerDiscreteScheduler

    n = 10
    dd = DDIMScheduler(num_train_timesteps=T, trained_betas=sched.beta[1:].numpy(), clip_sample=False,
                       set_alpha_to_one=True, timestep_spacing="trailing")
    dd.alphas_cumprod = sched.alpha_bar[1:].clone()
    dd.final_alpha_cumprod = torch.tensor(1.0, dtype=torch.float64)
    dd.set_timesteps(n)
    ks = dd.timesteps.long()  # diffusers index k = our t - 1
    eps_fn = gm.eps_fn(sched)
    x_T = torch.randn(64, 2, generator=torch.Generator().manual_seed(13))
    x = x_T.clone()
    for k in ks:
        x = dd.step(eps_fn(x, torch.full((64,), int(k) + 1)), int(k), x, eta=0.0).prev_sample
    x_ddim = x
    times = flow.linear_times(sched, ks + 1)
    fm = FlowMatchEulerDiscreteScheduler(num_train_timesteps=T)
    fm.set_timesteps(sigmas=times.tolist())
    ab = sched.alpha_bar[ks + 1]
    x = flow.to_linear(x_T, ab[0].sqrt(), (1 - ab[0]).sqrt())[0]
    for i, k in enumerate(fm.timesteps):
        a, s = ab[i].sqrt().float(), (1 - ab[i]).sqrt().float()
        x_vp = x * (a + s)
        eps = eps_fn(x_vp, torch.full((64,), int(ks[i]) + 1))
        x0 = (x_vp - s * eps) / a
        x = fm.step(eps - x0, k, x).prev_sample
    torch.testing.assert_close(x, x_ddim, atol=5e-5, rtol=0)  # two float32 chains of 10 steps
    assert (x_ddim - x_T).abs().max() > 0.5  # the samplers did move


# ------------------------------------------------------------------------------------- straightness and reflow
def test_straightness_zero_for_straight_paths_and_its_energy_form(gm):
    """A point mass at mu has v = (x - mu)/t: straight paths, S = 0. For the ring, S > 0 and
    S = sum dt |v|^2 - |x_1 - x_0|^2 exactly (the energy form)."""
    mu = torch.tensor([1.0, -2.0], dtype=torch.float64)
    x_T = torch.randn(256, 2, generator=torch.Generator().manual_seed(14), dtype=torch.float64)
    times = flow.time_grid(20, shift=3.0)  # a non-uniform grid: the dt weights matter
    traj = td.utils.Trajectory()
    out = flow.sample(lambda x, t: (x - mu) / t[:, None], x_T.shape, times=times, x_T=x_T, callback=traj,
                      progress_bar=False)
    torch.testing.assert_close(out, mu.expand_as(out), atol=1e-12, rtol=0)  # Euler is exact on straight lines
    assert flow.straightness(traj.stack(), times).max() < 1e-20
    traj = td.utils.Trajectory()
    flow.sample(flow.mixture_velocity_fn(gm), x_T.shape, times=times, x_T=x_T, callback=traj, progress_bar=False)
    X = traj.stack()
    S = flow.straightness(X, times)
    dt = times[:-1] - times[1:]
    vel = (X[:-1] - X[1:]) / dt[:, None, None]
    energy = (dt[:, None] * vel.pow(2).sum(2)).sum(0) - (X[0] - X[-1]).pow(2).sum(1)
    torch.testing.assert_close(S, energy, atol=1e-10, rtol=1e-10)
    assert S.mean() > 0.3  # the exact flow of a multimodal mixture is curved


def test_reflow_straightens_the_flow_and_makes_one_step_sampling_work(gm):
    """Rectified flow: pairs (x0, x1) from the exact ODE, a network trained on straight lines between them.
    One Euler step of the exact flow sends every noise to E[x0] (the mixture mean); the reflowed network's
    one step lands on the ring. Measured: mean log p of one-step samples, and the straightness."""
    torch.manual_seed(15)
    x0, x1 = flow.ode_pairs(flow.mixture_velocity_fn(gm), 4096, (2,), 32, generator=torch.Generator().manual_seed(16))
    net = td.models.MLPDenoiser(dim=2, hidden=64, depth=2, time_scale=1000.0)
    res = td.train.fit(net, flow.reflow_loss, (x0, x1), steps=400, batch_size=256, lr=3e-3, progress_bar=False,
                       device="cpu")
    model = res.sampler_model
    g = torch.Generator().manual_seed(17)
    one_exact = flow.sample(flow.mixture_velocity_fn(gm), (2000, 2), 1, generator=g, progress_bar=False)
    torch.testing.assert_close(one_exact, gm.mean().float().expand_as(one_exact), atol=1e-5, rtol=0)
    g = torch.Generator().manual_seed(17)
    one_reflow = flow.sample(model, (2000, 2), 1, generator=g, progress_bar=False)
    lp_exact = gm.log_prob(one_exact.double()).mean()
    lp_reflow = gm.log_prob(one_reflow.double()).mean()
    lp_data = gm.log_prob(gm.sample(2000, torch.Generator().manual_seed(18), dtype=torch.float64)).mean()
    assert lp_reflow > lp_exact + 20, (lp_reflow, lp_exact)
    assert lp_reflow > lp_data - 2.0, (lp_reflow, lp_data)  # within 2 nats/sample of real data
    times = flow.time_grid(16)
    S = {}
    for name, fn in (("exact", flow.mixture_velocity_fn(gm)), ("reflow", model)):
        traj = td.utils.Trajectory()
        flow.sample(fn, (1000, 2), times=times, generator=torch.Generator().manual_seed(19), callback=traj,
                    progress_bar=False)
        S[name] = flow.straightness(traj.stack(), times).mean()
    assert S["reflow"] < 0.1 * S["exact"], S


# ------------------------------------------------------------------------------------- the one denoiser interface
def test_agrees_with_the_denoiser_interface_and_the_sigma_solver(gm, sched):
    """tinydiff.denoisers (written independently, through convert's general (alpha, sigma) formulas) agrees:
    the oracle's velocity on LinearPath, a velocity network's x0 and eps, and Euler in the VE sigma
    (solvers.euler) = DDIM = Euler of the flow in t on the bridge times."""
    path = td.denoisers.LinearPath()
    x, t = _points(seed=20)
    torch.testing.assert_close(gm.denoiser(path).velocity(x, t), flow.mixture_velocity(gm, x, t), atol=1e-10, rtol=0)
    net = lambda xx, tt: 0.3 * xx + tt[:, None]  # noqa: E731
    d = td.denoisers.Denoiser(net, path, "velocity")
    torch.testing.assert_close(d.x0(x, t), flow.x0_from_velocity(x, net(x, t), t), atol=1e-12, rtol=0)
    torch.testing.assert_close(d.eps(x, t), flow.eps_from_velocity(x, net(x, t), t), atol=1e-12, rtol=0)
    ts = td.ddim.timesteps(T, 8, "trailing")
    x_T = torch.randn(32, 2, generator=torch.Generator().manual_seed(21), dtype=torch.float64)
    vp = gm.denoiser(td.denoisers.DiscreteVP(sched))
    a_T = sched.alpha_bar[ts[0]].sqrt()
    x_sigma = td.solvers.euler(vp.x0_sigma(), td.solvers.sigmas_of_timesteps(td.denoisers.DiscreteVP(sched), ts),
                               x_T / a_T, progress_bar=False)
    grid = torch.cat([ts, ts.new_zeros(1)])
    x_flow = flow.sample(flow.mixture_velocity_fn(gm), x_T.shape, times=flow.linear_times(sched, grid),
                         x_T=flow.to_linear(x_T, a_T, (1 - a_T**2).sqrt())[0], progress_bar=False)
    torch.testing.assert_close(x_flow, x_sigma, atol=1e-10, rtol=0)


def test_bad_input_names_the_argument():
    import pytest

    from tinydiff import flow

    x = torch.zeros(4, 2)
    with pytest.raises(ValueError, match="t must"):
        flow.xt(x, x, None)
    with pytest.raises(ValueError, match="eps"):
        flow.xt(x, x[:3], 0.5)
    with pytest.raises(ValueError, match="t must be a number or have shape"):
        flow.x0_from_velocity(x, x, torch.full((5,), 0.5))
    with pytest.raises(TypeError, match="gm"):
        flow.mixture_velocity(None, x, 0.5)
    with pytest.raises(TypeError, match="returned None"):
        flow.cfm_loss(lambda x, t: None, x)
    with pytest.raises(ValueError, match="time_sampling"):
        flow.cfm_loss(lambda x, t: x, x, time_sampling="normal")
    with pytest.raises(ValueError, match="batch_size"):
        flow.ode_pairs(lambda x, t: -x, 4, (2,), 2, batch_size=0)
    with pytest.raises(ValueError, match="device"):
        flow.sample_time(4, device="cpu-nonsense")
    with pytest.raises(ValueError, match=r"t must lie in \(0, 1\)"):
        flow.logit_normal_log_density(torch.tensor([0.5, 1.5]))
    with pytest.raises(TypeError, match="sched"):
        flow.linear_times(10, [1, 2])
