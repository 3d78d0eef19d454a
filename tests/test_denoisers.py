"""The one denoiser interface: noise paths, conversions between predictions, re-expression on another path,
EDM preconditioning, and the k-diffusion-style Euler solver against DDIM."""

import pytest
import torch

import tinydiff as td
from tinydiff import convert
from tinydiff.denoisers import VE, ContinuousVP, Denoiser, DiscreteVP, LinearPath, edm_coefs

SCHED = td.NoiseSchedule.linear(1000)
SDE = td.sde.VPSDE()
GM = td.data.GaussianMixture.ring()


def _x(n=64, seed=0):
    return torch.randn(n, 2, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * 1.5


def test_discrete_path_is_ddpm_forward_process():
    path = DiscreteVP(SCHED)
    x0, eps = _x(), _x(seed=1)
    t = torch.randint(0, 1001, (64,), generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(path.q_sample(x0, t, eps), td.ddpm.q_sample(x0, t, eps, SCHED), rtol=0, atol=1e-12)


def test_continuous_path_is_the_vp_sde_marginal_and_its_derivatives_are_the_time_derivatives():
    path = ContinuousVP(SDE)
    t = torch.linspace(0.01, 1.0, 37, dtype=torch.float64)
    m, s = SDE.marginal(t)
    torch.testing.assert_close(path.alpha(t), m, rtol=1e-12, atol=0)
    torch.testing.assert_close(path.sigma(t), s, rtol=1e-12, atol=0)
    for p in (path, LinearPath(), VE()):
        tt = t.clone().requires_grad_(True)
        (da,) = torch.autograd.grad((p.alpha(tt) + 0 * tt).sum(), tt)  # + 0*t: VE's alpha is a constant
        (ds,) = torch.autograd.grad((p.sigma(tt) + 0 * tt).sum(), tt)
        torch.testing.assert_close(p.d_alpha(t), da, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(p.d_sigma(t), ds, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("path", [ContinuousVP(SDE), LinearPath(), VE()], ids=str)
def test_t_from_sigma_ve_inverts_sigma_ve(path):
    t = torch.linspace(0.02, 0.98, 25, dtype=torch.float64)
    torch.testing.assert_close(path.t_from_sigma_ve(path.sigma_ve(t)), t, rtol=1e-10, atol=1e-12)


def test_discrete_t_from_sigma_ve_returns_the_table_step():
    path = DiscreteVP(SCHED)
    t = torch.tensor([1, 2, 10, 500, 999, 1000])
    assert torch.equal(path.t_from_sigma_ve(path.sigma_ve(t)), t)
    assert torch.equal(path.t_from_sigma_ve(path.sigma_ve(t) * 1.0001), t)  # nearest step


@pytest.mark.parametrize("prediction", convert.PREDICTIONS)
@pytest.mark.parametrize("path", [DiscreteVP(SCHED), ContinuousVP(SDE), LinearPath()], ids=str)
def test_every_prediction_of_the_oracle_gives_the_same_x0_and_eps(prediction, path):
    """Write the exact oracle as a network of each kind; the Denoiser must give back the same (x0, eps)."""
    oracle = GM.denoiser(path)
    if prediction == "velocity" and isinstance(path, DiscreteVP):
        with pytest.raises(NotImplementedError, match="discrete path"):
            path.d_alpha(torch.tensor([3]))
        return
    t = torch.full((64,), 300) if isinstance(path, DiscreteVP) else torch.full((64,), 0.3, dtype=torch.float64)
    x = _x()
    x0, eps = oracle.predict(x, t)
    kw = {} if isinstance(path, DiscreteVP) else dict(d_alpha=path.d_alpha(t), d_sigma=path.d_sigma(t))
    target = convert.prediction_from(prediction, x0, eps, path.alpha(t), path.sigma(t), **kw)
    net = Denoiser(lambda x_, t_: target, path, prediction)
    got_x0, got_eps = net.predict(x, t)
    torch.testing.assert_close(got_x0, x0, rtol=0, atol=1e-10)
    torch.testing.assert_close(got_eps, eps, rtol=0, atol=1e-10)


def test_oracle_eps_and_score_agree_with_the_mixture_and_tweedie():
    path = DiscreteVP(SCHED)
    t = torch.full((64,), 250)
    x = _x()
    ab = SCHED.alpha_bar[250]
    den = GM.denoiser(path)
    torch.testing.assert_close(den.score(x, t), GM.score(x, ab.sqrt(), (1 - ab).sqrt()), rtol=0, atol=1e-10)
    torch.testing.assert_close(den.eps(x, t), GM.eps_fn(SCHED)(x, t), rtol=0, atol=1e-10)


def test_flow_velocity_of_the_oracle_is_the_monte_carlo_conditional_expectation():
    """u*(x, t) = E[eps - x0 | x_t = x] on the linear path: an importance-weighted Monte Carlo over x0 ~ p_data."""
    path = LinearPath()
    t = 0.6
    x = torch.tensor([[1.0, 0.5], [-0.3, 1.2]], dtype=torch.float64)
    x0 = GM.sample(400_000, torch.Generator().manual_seed(0), dtype=torch.float64)
    # p(x_t | x0) = N((1-t) x0, t^2 I): weights over the prior draws
    logw = -((x[:, None, :] - (1 - t) * x0[None]) ** 2).sum(-1) / (2 * t**2)
    w = torch.softmax(logw, dim=1)
    eps = (x[:, None, :] - (1 - t) * x0[None]) / t
    mc = (w[..., None] * (eps - x0[None])).sum(1)
    got = GM.denoiser(path).velocity(x, torch.full((2,), t, dtype=torch.float64))
    torch.testing.assert_close(got, mc, rtol=0, atol=0.02)


def test_on_another_path_matches_the_oracle_written_directly_on_that_path():
    """A VP oracle re-expressed on the flow line (by SNR matching) is the flow oracle: an independent check of `on`."""
    vp = GM.denoiser(ContinuousVP(SDE))
    flow = vp.on(LinearPath())
    direct = GM.denoiser(LinearPath())
    t = torch.full((64,), 0.37, dtype=torch.float64)
    x = _x()
    torch.testing.assert_close(flow.velocity(x, t), direct.velocity(x, t), rtol=0, atol=1e-10)


def test_edm_preconditioning_recovers_the_denoiser():
    """If F is chosen as (D - c_skip x)/c_out, Denoiser(..., 'edm') must return D."""
    path = VE()
    exact = GM.denoiser(path)
    sigma = 0.8
    x = _x()
    t = torch.full((64,), sigma, dtype=torch.float64)
    c_skip, c_out, c_in, c_noise = edm_coefs(torch.tensor(sigma, dtype=torch.float64))

    def F(x_in, cn):
        torch.testing.assert_close(cn, torch.full((64,), float(c_noise), dtype=torch.float64))
        x_ve = x_in / c_in
        return (exact.x0(x_ve, t) - c_skip * x_ve) / c_out

    torch.testing.assert_close(Denoiser(F, path, "edm").x0(x, t), exact.x0(x, t), rtol=0, atol=1e-10)
    # the EDM weights: c_skip + c_out^2 / sigma_d^2 ... identity c_skip^2 sigma^2/sigma_d^2 ... check the defining property:
    # Var of the training target F is 1 for unit-variance data: c_out^2 = sigma^2 sigma_d^2 / (sigma^2 + sigma_d^2)
    torch.testing.assert_close(c_out**2, torch.tensor(sigma**2 * 0.25 / (sigma**2 + 0.25), dtype=torch.float64))


@pytest.mark.parametrize("spacing", ["leading", "trailing"])
def test_euler_in_sigma_reproduces_ddim_eta0_step_for_step(spacing):
    """k-diffusion-style Euler over D(x, sigma) on the DDIM grid = td.ddim.sample(eta=0), float64, to 1e-10."""
    path = DiscreteVP(SCHED)
    den = GM.denoiser(path)
    x_T = torch.randn(200, 2, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    ts = td.ddim.timesteps(1000, 20, spacing)
    ddim = td.ddim.sample(GM.eps_fn(SCHED), (200, 2), SCHED, 20, eta=0.0, spacing=spacing, x_T=x_T, progress_bar=False)
    sigmas = td.solvers.sigmas_of_timesteps(path, ts)
    x_ve = x_T / path.alpha(ts[:1]).item()
    got = td.solvers.euler(den.x0_sigma(), sigmas, x_ve, progress_bar=False)
    torch.testing.assert_close(got, ddim, rtol=0, atol=1e-10)


def test_euler_calls_back_and_checks_the_denoiser_output():
    seen = []
    x = torch.zeros(4, 2, dtype=torch.float64)
    td.solvers.euler(lambda x, s: torch.zeros_like(x), torch.tensor([2.0, 1.0, 0.0]), x, progress_bar=False,
                     callback=lambda i, s, x: seen.append((i, s)))
    assert seen == [(0, 2.0), (1, 1.0), (2, 0.0)]
    with pytest.raises(TypeError, match="forget to `return`"):
        td.solvers.euler(lambda x, s: None, torch.tensor([2.0, 0.0]), x, progress_bar=False)
    with pytest.raises(ValueError, match="shape"):
        td.solvers.euler(lambda x, s: x[:, :1], torch.tensor([2.0, 0.0]), x, progress_bar=False)
    with pytest.raises(ValueError, match="decreasing"):
        td.solvers.euler(lambda x, s: x, torch.tensor([1.0, 2.0]), x, progress_bar=False)


def test_bad_denoiser_arguments_are_named():
    with pytest.raises(ValueError, match="prediction"):
        Denoiser(lambda x, t: x, LinearPath(), "noise")
    with pytest.raises(TypeError, match="path"):
        Denoiser(lambda x, t: x, SCHED, "eps")
    with pytest.raises(ValueError, match="velocity"):
        convert.x0_eps_from("velocity", torch.zeros(2, 2), torch.zeros(2, 2), 0.5, 0.5)


def test_bad_input_names_the_argument():
    import pytest

    from tinydiff import denoisers as dn

    sched = td.NoiseSchedule.linear(T=10)
    vp = dn.DiscreteVP(sched)
    with pytest.raises(TypeError, match="sched"):
        dn.DiscreteVP(10)
    with pytest.raises(TypeError, match="sde"):
        dn.ContinuousVP("vp")
    with pytest.raises(ValueError, match="t must hold integer timesteps in 0..10"):
        vp.alpha(torch.tensor([3, 11]))
    with pytest.raises(ValueError, match="t"):
        vp.sigma(torch.tensor([True, False]))
    with pytest.raises(ValueError, match="continuous time"):
        dn.LinearPath().log_snr(torch.tensor([2]))
    with pytest.raises(ValueError, match="sigma_ve"):
        dn.VE().t_from_sigma_ve(None)
    with pytest.raises(ValueError, match="sigma_data"):
        dn.edm_coefs(torch.ones(3), sigma_data="0.5")
    with pytest.raises(ValueError, match="t must be a scalar or have shape"):
        dn.VE().q_sample(torch.zeros(4, 2), torch.full((5,), 0.5), torch.zeros(4, 2))
    with pytest.raises(ValueError, match="eps"):
        dn.VE().q_sample(torch.zeros(4, 2), 0.5, torch.zeros(3, 2))
    d = dn.Denoiser(lambda x, t: 0.1 * x, vp)
    with pytest.raises(TypeError, match="x"):
        d.x0(None, 5)
    with pytest.raises(ValueError, match="t"):
        d.eps(torch.zeros(4, 2), torch.full((3,), 5))
