r"""Fast samplers (lesson 12): ODE solvers over the k-diffusion-style denoiser :math:`D(x, \sigma)`.

In the VE variable :math:`x = x_t/\alpha_t` at noise level :math:`\sigma = \sigma_t/\alpha_t` (any path of
:mod:`tinydiff.denoisers`, :meth:`~tinydiff.denoisers.Denoiser.x0_sigma`), the probability-flow ODE of every
diffusion model is the same equation,

.. math:: \frac{dx}{d\sigma} = \frac{x - D(x, \sigma)}{\sigma},

and its solvers step along a decreasing grid :math:`\sigma_0 > \sigma_1 > \dots > \sigma_N = 0`
(:func:`karras_sigmas`, :func:`log_sigmas`, :func:`grid`).

Solvers, each a short function ``solver(x0_fn, sigmas, x, *, callback=None, progress_bar=True)`` over
:math:`D` = ``x0_fn(x, sigma)`` (``sigma`` a float64 tensor ``(B,)``): :func:`euler` (= deterministic DDIM),
:func:`dpmpp_1` (= DDIM, written in log-SNR), :func:`dpmpp_2m`, :func:`dpmpp_3m` (DPM-Solver++), :func:`heun`
(EDM), :func:`plms` and :func:`pndm`; :func:`sample` is the one entry point over a
:class:`tinydiff.denoisers.Denoiser`. The loops read no tensor back from the device (the grid is a list of Python
floats), and the denoiser's output is checked once, at the first call.

Analytic-DPM (the optimal reverse variance of a few-step DDPM): :func:`eps_sq_mean`, :func:`analytic_variance`,
:func:`analytic_ddpm_sample`. Measuring a solver: :func:`ode_reference` (scipy), :func:`order`, :func:`nfe`.

Index convention: our ``t`` is diffusers' ``k + 1``; diffusers' schedulers hold the same VE :math:`\sigma`
(``scheduler.sigmas``), so a grid passes between the two unchanged.
"""

from __future__ import annotations

import math

import torch

from . import validation
from .utils import device_of, noise_like, progress, start_noise

__all__ = ["euler", "sigmas_of_timesteps", "GRIDS", "karras_sigmas", "log_sigmas", "grid", "heun", "dpmpp_1",
           "dpmpp_2m_step", "dpmpp_2m", "dpmpp_3m", "plms", "pndm", "SOLVERS", "nfe", "sample", "ode_reference",
           "order", "eps_sq_mean", "analytic_variance", "analytic_ddpm_sample"]


def _grid(sigmas) -> torch.Tensor:
    s = validation.tensor("sigmas", sigmas, ndim=1, finite=False)
    s = s.to(torch.float64)
    if s.numel() < 2:
        raise ValueError(f"sigmas must hold at least two noise levels (a start and an end); got {s.numel()}")
    if bool(torch.isnan(s).any()) or bool((s < 0).any()) or not bool((s[1:] < s[:-1]).all()):
        raise ValueError("sigmas must be a strictly decreasing grid of noise levels >= 0 (e.g. ending at 0)")
    return s


def sigmas_of_timesteps(path, ts) -> torch.Tensor:
    r"""The VE noise levels :math:`\sigma_t/\alpha_t` of a decreasing sequence of a path's times ``ts``, with a final 0
    appended (the clean data): the grid on which :func:`euler` reproduces ``ddim.sample(eta=0)`` step for step."""
    from .denoisers import DiscreteVP, NoisePath

    if not isinstance(path, NoisePath):
        raise TypeError(f"path must be a tinydiff.denoisers path (DiscreteVP, ContinuousVP, VE, LinearPath); got "
                        f"{validation.describe(path)}")
    if isinstance(path, DiscreteVP):
        ts = validation.timesteps("ts", ts, path.T)
    else:
        ts = validation.tensor("ts", ts, ndim=1)
    if ts.ndim != 1:
        raise ValueError(f"ts must be a 1-d decreasing sequence of times; got {validation.describe(ts)}")
    return torch.cat([path.sigma_ve(ts).to(torch.float64).cpu(), torch.zeros(1, dtype=torch.float64)])


@torch.no_grad()
def euler(x0_fn, sigmas, x: torch.Tensor, *, callback=None, progress_bar: bool = True) -> torch.Tensor:
    r"""Euler's method for :math:`dx/d\sigma = (x - D(x,\sigma))/\sigma` from ``sigmas[0]`` down to ``sigmas[-1]``:

    .. math:: x_{i+1} = x_i + (\sigma_{i+1} - \sigma_i)\,\frac{x_i - D(x_i,\sigma_i)}{\sigma_i}
              = D + \frac{\sigma_{i+1}}{\sigma_i}(x_i - D),

    which is exactly deterministic DDIM (:math:`\eta = 0`, DDIM eq. 13) on the same grid. ``x`` is the start in the VE
    variable (:math:`x_T/\alpha_T` for a VP model). ``callback(i, sigma, x)`` as for every sampler.
    """
    s = _grid(sigmas)
    x = validation.tensor("x", x, finite=True)
    levels = s.tolist()  # Python floats: the loop below never reads a tensor back from the device
    _fns(x0_fn, callback)
    if callback is not None:
        callback(0, levels[0], x)
    checked = False
    for i in progress(range(len(levels) - 1), desc="Euler (sigma)", disable=not progress_bar):
        sig, nxt = levels[i], levels[i + 1]
        denoised = x0_fn(x, torch.full((x.shape[0],), sig, dtype=torch.float64, device=x.device))
        if not checked:
            validation.output("x0_fn", denoised, like=x)
            checked = True
        x = denoised + (nxt / sig) * (x - denoised)
        if callback is not None:
            callback(i + 1, nxt, x)
    return x


# ---------------------------------------------------------------------------------- sigma grids
GRIDS = ("karras", "log", "leading", "trailing", "linspace")


def _count(name, n, low=1):
    return validation.integer(name, n, low=low)


def _ends(sigma_min, sigma_max):
    lo = validation.number("sigma_min", sigma_min, low=0, strict_low=True)
    hi = validation.number("sigma_max", sigma_max, low=0, strict_low=True)
    if not lo < hi:
        raise ValueError(f"sigma_min must be below sigma_max; got sigma_min={lo:g}, sigma_max={hi:g}")
    return lo, hi


def _with_zero(s: torch.Tensor) -> torch.Tensor:
    return torch.cat([s, s.new_zeros(1)])


def karras_sigmas(n_steps: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> torch.Tensor:
    r"""EDM's grid (Karras et al. 2022, eq. 5): :math:`\sigma_i = \big(\sigma_{\max}^{1/\rho} + \tfrac{i}{N-1}
    (\sigma_{\min}^{1/\rho} - \sigma_{\max}^{1/\rho})\big)^\rho`, ``i = 0..N-1``, then :math:`\sigma_N = 0`.

    :math:`\rho = 1` is uniform in :math:`\sigma`; :math:`\rho\to\infty` tends to :func:`log_sigmas`; EDM's
    :math:`\rho = 7` puts most steps at low noise. Float64 ``(n_steps + 1,)``, decreasing."""
    n = _count("n_steps", n_steps, low=1)
    lo, hi = _ends(sigma_min, sigma_max)
    rho = validation.number("rho", rho, low=0, strict_low=True)
    ramp = torch.linspace(0, 1, n, dtype=torch.float64) if n > 1 else torch.zeros(1, dtype=torch.float64)
    s = (hi ** (1 / rho) + ramp * (lo ** (1 / rho) - hi ** (1 / rho))) ** rho
    return _with_zero(s)


def log_sigmas(n_steps: int, sigma_min: float, sigma_max: float) -> torch.Tensor:
    r"""Uniform in :math:`\log\sigma`, i.e. uniform in the half log-SNR :math:`\lambda = -\log\sigma` (DPM-Solver's
    "logSNR" grid): :math:`\sigma_i = \sigma_{\max}(\sigma_{\min}/\sigma_{\max})^{i/(N-1)}`, then :math:`\sigma_N = 0`."""
    n = _count("n_steps", n_steps, low=1)
    lo, hi = _ends(sigma_min, sigma_max)
    ramp = torch.linspace(0, 1, n, dtype=torch.float64) if n > 1 else torch.zeros(1, dtype=torch.float64)
    return _with_zero(torch.exp(math.log(hi) + ramp * (math.log(lo) - math.log(hi))))


def grid(path, n_steps: int, kind: str = "karras", *, sigma_min=None, sigma_max=None, rho: float = 7.0) -> torch.Tensor:
    r"""A decreasing grid of ``n_steps + 1`` VE noise levels ending at 0, for a path of :mod:`tinydiff.denoisers`.

    - ``"karras"`` (:func:`karras_sigmas`) and ``"log"`` (:func:`log_sigmas`) span ``[sigma_min, sigma_max]``; on a
      :class:`~tinydiff.denoisers.DiscreteVP` path they default to the table's :math:`\sigma_1` and :math:`\sigma_T`
      (as diffusers does); other paths need both given.
    - ``"leading"``, ``"trailing"``, ``"linspace"``: the noise levels of DDIM's sub-sequences of timesteps
      (:func:`tinydiff.ddim.timesteps`, uniform in ``t``), on a discrete path only.
    """
    kind = validation.choice("kind", kind, GRIDS)
    n = _count("n_steps", n_steps, low=1)
    discrete = hasattr(path, "sched") and hasattr(path, "T")
    if kind in ("leading", "trailing", "linspace"):
        if not discrete:
            raise ValueError(f"kind={kind!r} spaces integer timesteps: it needs a DiscreteVP path; got {path!r}. "
                             "Use kind='karras' or 'log' with sigma_min and sigma_max.")
        from .ddim import timesteps

        return sigmas_of_timesteps(path, timesteps(path.T, n, kind))
    if discrete:
        sigma_min = float(path.sigma_ve(1)) if sigma_min is None else sigma_min
        sigma_max = float(path.sigma_ve(path.T)) if sigma_max is None else sigma_max
    elif sigma_min is None or sigma_max is None:
        raise ValueError(f"grid(kind={kind!r}) on {path!r} needs sigma_min and sigma_max (e.g. EDM's 0.002 and 80)")
    if kind == "karras":
        return karras_sigmas(n, sigma_min, sigma_max, rho)
    return log_sigmas(n, sigma_min, sigma_max)


# ---------------------------------------------------------------------------------- shared loop helpers
def _fns(x0_fn, callback, name="x0_fn"):
    """The user callables, checked once before a loop (their outputs are checked at the first call)."""
    if not callable(x0_fn):
        raise TypeError(f"{name} must be a callable {name}(x, sigma); got {validation.describe(x0_fn)}")
    validation.callback("callback", callback)


def _device(device):
    if device is None:
        return None
    if isinstance(device, int) and not isinstance(device, bool):
        raise ValueError(f"device must be a device name like 'cpu' or 'cuda' or a torch.device; got "
                         f"{validation.describe(device)}")
    try:
        return torch.device(device)
    except (TypeError, RuntimeError, ValueError):
        raise ValueError(f"device must be a device name like 'cpu' or 'cuda' or a torch.device; got "
                         f"{validation.describe(device)}") from None


def _start(sigmas, x):
    s = _grid(sigmas)
    return s.tolist(), validation.tensor("x", x, finite=True)


class _Calls:
    """Calls the denoiser with a per-sample sigma tensor and checks its output once (no host sync afterwards)."""

    def __init__(self, x0_fn):
        self.fn, self.checked, self.n = x0_fn, False, 0

    def __call__(self, x, sigma: float):
        out = self.fn(x, torch.full((x.shape[0],), sigma, dtype=torch.float64, device=x.device))
        if not self.checked:
            validation.output("x0_fn", out, like=x)
            self.checked = True
        self.n += 1
        return out

    def eps(self, x, sigma: float):
        r""":math:`\hat\varepsilon = (x - D(x,\sigma))/\sigma` in the VE variable (the slope :math:`dx/d\sigma`)."""
        return (x - self(x, sigma)) / sigma


def _loop(levels, desc, progress_bar):
    return progress(range(len(levels) - 1), desc=desc, disable=not progress_bar)


# ---------------------------------------------------------------------------------- Heun (EDM)
@torch.no_grad()
def heun(x0_fn, sigmas, x: torch.Tensor, *, callback=None, progress_bar: bool = True) -> torch.Tensor:
    r"""Heun's method (EDM, Karras et al. 2022, Algorithm 1 without churn) for :math:`dx/d\sigma = (x - D)/\sigma`:

    .. math:: \tilde x = x_i + (\sigma_{i+1}-\sigma_i)\,d_i,\quad
              x_{i+1} = x_i + (\sigma_{i+1}-\sigma_i)\,\tfrac12\big(d_i + d(\tilde x, \sigma_{i+1})\big),
              \qquad d(x,\sigma) = \frac{x - D(x,\sigma)}{\sigma}.

    A step to :math:`\sigma_{i+1} = 0` is a plain Euler step (the slope is undefined there), so a grid of ``N`` steps
    ending at 0 costs :math:`2N - 1` denoiser calls. Second order. Same as diffusers' ``HeunDiscreteScheduler``.
    """
    levels, x = _start(sigmas, x)
    D = _Calls(x0_fn)
    _fns(x0_fn, callback)
    if callback is not None:
        callback(0, levels[0], x)
    for i in _loop(levels, "Heun (sigma)", progress_bar):
        sig, nxt = levels[i], levels[i + 1]
        d = D.eps(x, sig)
        x_euler = x + (nxt - sig) * d
        x = x_euler if nxt == 0 else x + (nxt - sig) * 0.5 * (d + D.eps(x_euler, nxt))
        if callback is not None:
            callback(i + 1, nxt, x)
    return x


# ---------------------------------------------------------------------------------- DPM-Solver++ (log-SNR)
def _phi1(sig: float, nxt: float) -> tuple[float, float]:
    r"""``(h, 1 - e^{-h})`` for the step :math:`\sigma\to\sigma'` with :math:`h = \lambda' - \lambda = \log(\sigma/\sigma')`
    (``h = inf`` and :math:`\varphi_1 = 1` when :math:`\sigma' = 0`)."""
    if nxt == 0:
        return math.inf, 1.0
    h = math.log(sig / nxt)
    return h, -math.expm1(-h)


@torch.no_grad()
def dpmpp_1(x0_fn, sigmas, x: torch.Tensor, *, callback=None, progress_bar: bool = True) -> torch.Tensor:
    r"""DPM-Solver++(1) (Lu et al. 2022, the first-order exponential integrator in the half log-SNR
    :math:`\lambda = -\log\sigma`): the ODE :math:`dx/d\lambda = D(x, \lambda) - x` has the exact solution
    :math:`x_{\lambda'} = e^{-h}x_\lambda + \int_\lambda^{\lambda'} e^{-(\lambda'-u)}D\,du`, and freezing :math:`D` gives

    .. math:: x_{i+1} = e^{-h_i}x_i + (1 - e^{-h_i})\,D(x_i,\sigma_i), \qquad e^{-h_i} = \sigma_{i+1}/\sigma_i .

    Algebraically this is :func:`euler` and deterministic DDIM (the same numbers up to rounding)."""
    levels, x = _start(sigmas, x)
    D = _Calls(x0_fn)
    _fns(x0_fn, callback)
    if callback is not None:
        callback(0, levels[0], x)
    for i in _loop(levels, "DPM-Solver++(1)", progress_bar):
        sig, nxt = levels[i], levels[i + 1]
        _, phi = _phi1(sig, nxt)
        x = (nxt / sig) * x + phi * D(x, sig)
        if callback is not None:
            callback(i + 1, nxt, x)
    return x


def dpmpp_2m_step(x: torch.Tensor, d: torch.Tensor, d_prev: torch.Tensor, sigma_prev: float, sigma: float,
                  sigma_next: float) -> torch.Tensor:
    r"""One step of DPM-Solver++(2M) from :math:`\sigma` to :math:`\sigma'` = ``sigma_next`` (midpoint form, diffusers'
    default ``solver_type``), given :math:`D_i` = ``d`` at :math:`\sigma` and :math:`D_{i-1}` = ``d_prev`` at
    ``sigma_prev``:

    .. math:: x' = \frac{\sigma'}{\sigma}x + \varphi_1\Big(D_i + \frac{1}{2r}(D_i - D_{i-1})\Big),\qquad
              \varphi_1 = 1 - e^{-h},\ h = \log\frac{\sigma}{\sigma'},\ r = \log\frac{\sigma_{i-1}}{\sigma}\Big/h.
    """
    # Python numbers and tensor metadata only: this step runs inside dpmpp_2m's loop
    x = validation.tensor("x", x)
    for name, v in (("d", d), ("d_prev", d_prev)):
        v = validation.tensor(name, v)
        if tuple(v.shape) != tuple(x.shape):
            raise ValueError(f"{name} must have the shape of x, {tuple(x.shape)}; got {validation.describe(v)}")
    d, d_prev = validation.tensor("d", d), validation.tensor("d_prev", d_prev)
    sigma = validation.number("sigma", sigma, low=0, strict_low=True)
    sigma_prev = validation.number("sigma_prev", sigma_prev, low=sigma, strict_low=True, allow_inf=True)
    sigma_next = validation.number("sigma_next", sigma_next, low=0)
    if sigma_next >= sigma:
        raise ValueError(f"sigma_next must be < sigma = {sigma:g} (the grid decreases); got {sigma_next:g}")
    h, phi = _phi1(sigma, sigma_next)
    if sigma_next == 0:
        return d
    r = math.log(sigma_prev / sigma) / h
    return (sigma_next / sigma) * x + phi * (d + 0.5 * (d - d_prev) / r)


def _dpmpp_3m_term(h, phi, d0, d1, d2, h0, h1, exact_taylor):
    r"""The data term of DPM-Solver++(3M): :math:`\varphi_1 D_0 + c_1 \mathcal D_1 - c_2 \mathcal D_2` with
    divided differences :math:`\mathcal D_1 \approx hD'`, :math:`\mathcal D_2 \approx h^2D''/2` and
    :math:`c_1 = 1 - \varphi_1/h`, :math:`c_2 = (h - \varphi_1)/h^2 - \tfrac12`."""
    r0, r1 = h0 / h, h1 / h
    d1_0, d1_1 = (d0 - d1) / r0, (d1 - d2) / r1
    D1 = d1_0 + (r0 / (r0 + r1)) * (d1_0 - d1_1)
    D2 = (d1_0 - d1_1) / (r0 + r1)
    c1 = 1 - phi / h
    c2 = (h - phi) / h**2 - 0.5
    return phi * d0 + c1 * D1 - (2 if exact_taylor else 1) * c2 * D2


@torch.no_grad()
def dpmpp_2m(x0_fn, sigmas, x: torch.Tensor, *, callback=None, progress_bar: bool = True) -> torch.Tensor:
    r"""DPM-Solver++(2M) (Lu et al. 2022, Algorithm 2): one denoiser call per step; the slope of :math:`D` in
    :math:`\lambda` is taken from the previous step's :math:`D`,

    .. math:: x_{i+1} = e^{-h_i}x_i + (1-e^{-h_i})\Big(D_i + \frac{1}{2r_i}(D_i - D_{i-1})\Big),
              \qquad r_i = h_{i-1}/h_i,

    with a first-order step (:func:`dpmpp_1`) first and into :math:`\sigma = 0`. Second order in :math:`h`.
    Equal to diffusers' ``DPMSolverMultistepScheduler(solver_order=2, algorithm_type="dpmsolver++")``."""
    levels, x = _start(sigmas, x)
    D = _Calls(x0_fn)
    _fns(x0_fn, callback)
    if callback is not None:
        callback(0, levels[0], x)
    d_prev = None
    for i in _loop(levels, "DPM-Solver++(2M)", progress_bar):
        sig, nxt = levels[i], levels[i + 1]
        h, phi = _phi1(sig, nxt)
        d0 = D(x, sig)
        if d_prev is None or nxt == 0:
            x = (nxt / sig) * x + phi * d0
        else:
            x = dpmpp_2m_step(x, d0, d_prev, levels[i - 1], sig, nxt)
        d_prev = d0
        if callback is not None:
            callback(i + 1, nxt, x)
    return x


@torch.no_grad()
def dpmpp_3m(x0_fn, sigmas, x: torch.Tensor, *, exact_taylor: bool = False, lower_order_final: bool = True,
             callback=None, progress_bar: bool = True) -> torch.Tensor:
    r"""DPM-Solver++(3M): the multistep update with the first two divided differences of :math:`D` in
    :math:`\lambda` (from the two previous steps),

    .. math:: x_{i+1} = e^{-h}x_i + \varphi_1 D_i + c_1\mathcal D_1 - c_2\mathcal D_2,\qquad
              c_1 = 1 - \frac{\varphi_1}{h},\quad c_2 = \frac{h - \varphi_1}{h^2} - \frac12,

    after one first-order and one second-order (:func:`dpmpp_2m`) start step; the last step (into 0) is first
    order, and with ``lower_order_final`` (diffusers' default) so is the second-to-last made second order when the
    grid has fewer than 15 steps. With ``exact_taylor=False`` this is diffusers' ``solver_order=3`` (and the
    DPM-Solver++ reference code) to the last digit. Its :math:`\mathcal D_2 = (\mathcal D_{1,0}-\mathcal D_{1,1})/(r_0+r_1)`
    estimates :math:`h^2D''/2`, while the exact integral
    :math:`\int_0^h e^{-(h-u)}\tfrac{u^2}{2}D''du = -c_2h^2D''` needs :math:`-2c_2\mathcal D_2`: the published
    coefficient is half of that, which leaves an :math:`O(h^3)` local error (global order 2, measured in lesson 12).
    ``exact_taylor=True`` doubles it and gives third order."""
    exact_taylor = bool(exact_taylor)
    levels, x = _start(sigmas, x)
    D = _Calls(x0_fn)
    n = len(levels) - 1
    _fns(x0_fn, callback)
    if callback is not None:
        callback(0, levels[0], x)
    ds, hs = [], []  # previous D's and step sizes in lambda (most recent last)
    for i in _loop(levels, "DPM-Solver++(3M)", progress_bar):
        sig, nxt = levels[i], levels[i + 1]
        h, phi = _phi1(sig, nxt)
        d0 = D(x, sig)
        order = min(3, len(ds) + 1)
        if nxt == 0 or i == n - 1:
            order = 1
        elif lower_order_final and n < 15 and i == n - 2:
            order = min(order, 2)
        if order == 1:
            x = (nxt / sig) * x + phi * d0
        elif order == 2:
            x = dpmpp_2m_step(x, d0, ds[-1], levels[i - 1], sig, nxt)
        else:
            x = (nxt / sig) * x + _dpmpp_3m_term(h, phi, d0, ds[-1], ds[-2], hs[-1], hs[-2], exact_taylor)
        ds, hs = (ds + [d0])[-2:], (hs + [h])[-2:]
        if callback is not None:
            callback(i + 1, nxt, x)
    return x


# ---------------------------------------------------------------------------------- PLMS / PNDM
def _adams_bashforth(es):
    """The Adams–Bashforth combination of the last 1–4 slopes (oldest first), weights as in PNDM (eq. 12)."""
    if len(es) == 1:
        return es[-1]
    if len(es) == 2:
        return (3 * es[-1] - es[-2]) / 2
    if len(es) == 3:
        return (23 * es[-1] - 16 * es[-2] + 5 * es[-3]) / 12
    return (55 * es[-1] - 59 * es[-2] + 37 * es[-3] - 9 * es[-4]) / 24


@torch.no_grad()
def plms(x0_fn, sigmas, x: torch.Tensor, *, callback=None, progress_bar: bool = True) -> torch.Tensor:
    r"""PLMS (Liu et al. 2022, "pseudo linear multistep"), as diffusers' ``PNDMScheduler(skip_prk_steps=True)`` runs it.

    PNDM's *transfer* :math:`\phi(x_t, \varepsilon, t\to s)` is the deterministic DDIM step. In the VE variable it
    is an Euler step with slope :math:`\varepsilon`: :math:`x_s = x_t + (\sigma_s - \sigma_t)\,\varepsilon`
    (because :math:`\varepsilon = (x - D)/\sigma = dx/d\sigma`). PLMS feeds it the Adams–Bashforth combination of
    the last four :math:`\hat\varepsilon` (weights 55, −59, 37, −9 over 24, eq. 12), after a start: the first step
    averages :math:`\hat\varepsilon` at both ends (two calls, a Heun step), the next two use the 2- and 3-step
    combinations. The weights assume steps of equal length *in the timestep index*, whatever the grid.
    ``N`` steps cost ``N + 1`` calls.

    Where diffusers differs: its PNDM always transfers from ``k`` to ``k - T // N``, whatever its
    ``timestep_spacing``, so it equals this function on the ``"leading"`` grid (its default) only; with
    ``"linspace"`` or ``"trailing"`` it evaluates the model at timesteps it does not step to
    (``tests/test_solvers.py::test_diffusers_pndm_steps_by_t_over_n_whatever_its_spacing``)."""
    levels, x = _start(sigmas, x)
    D = _Calls(x0_fn)
    _fns(x0_fn, callback)
    if callback is not None:
        callback(0, levels[0], x)
    es = []
    for i in _loop(levels, "PLMS", progress_bar):
        sig, nxt = levels[i], levels[i + 1]
        e = D.eps(x, sig)
        if not es and nxt > 0:
            e_end = D.eps(x + (nxt - sig) * e, nxt)
            x = x + (nxt - sig) * 0.5 * (e + e_end)
            es = [e]
        else:
            es = (es + [e])[-4:]
            x = x + (nxt - sig) * _adams_bashforth(es)
        if callback is not None:
            callback(i + 1, nxt, x)
    return x


@torch.no_grad()
def pndm(x0_fn, sigmas, x: torch.Tensor, *, mid_sigmas=None, callback=None, progress_bar: bool = True) -> torch.Tensor:
    r"""PNDM (Liu et al. 2022, Algorithm 2 with the pseudo Runge–Kutta start): the first three steps are "pseudo"
    RK4 steps, each of four calls, every stage the transfer (DDIM = an Euler step in :math:`\sigma`) from the step's
    start,

    .. math:: e_1 = \varepsilon(x, \sigma),\ e_2 = \varepsilon(x + \Delta_{1/2}e_1, \sigma_{1/2}),\
              e_3 = \varepsilon(x + \Delta_{1/2}e_2, \sigma_{1/2}),\ e_4 = \varepsilon(x + \Delta e_3, \sigma'),\quad
              x' = x + \Delta\,\tfrac16(e_1 + 2e_2 + 2e_3 + e_4),

    with :math:`\Delta = \sigma'-\sigma`, :math:`\Delta_{1/2} = \sigma_{1/2}-\sigma`; then 4-step Adams–Bashforth on
    :math:`\hat\varepsilon` (as :func:`plms`). ``mid_sigmas[i]`` is the noise level of the half step of step
    ``i < 3`` (diffusers takes the timestep halfway, :math:`t - \lfloor\delta/2\rfloor`); by default the midpoint in
    :math:`\sigma`, which makes the start classical RK4. ``N >= 4`` steps cost ``N + 9`` calls. Equal to diffusers'
    ``PNDMScheduler(skip_prk_steps=False)``."""
    levels, x = _start(sigmas, x)
    if len(levels) < 5:
        raise ValueError(f"pndm needs at least 4 steps (3 Runge-Kutta steps start the 4-step method); got "
                         f"{len(levels) - 1}. Use plms for fewer.")
    if mid_sigmas is None:
        mids = [(levels[i] + levels[i + 1]) / 2 for i in range(3)]
    else:
        mids = validation.tensor("mid_sigmas", mid_sigmas, ndim=1).to(torch.float64).tolist()
        if len(mids) != 3 or not all(levels[i + 1] < m < levels[i] for i, m in enumerate(mids)):
            raise ValueError(f"mid_sigmas must hold 3 noise levels, each strictly inside its step "
                             f"(sigmas[i+1] < mid_sigmas[i] < sigmas[i]); got {mids}")
    D = _Calls(x0_fn)
    _fns(x0_fn, callback)
    if callback is not None:
        callback(0, levels[0], x)
    es = []
    for i in _loop(levels, "PNDM", progress_bar):
        sig, nxt = levels[i], levels[i + 1]
        e1 = D.eps(x, sig)
        if i < 3:
            mid = mids[i]
            e2 = D.eps(x + (mid - sig) * e1, mid)
            e3 = D.eps(x + (mid - sig) * e2, mid)
            e4 = D.eps(x + (nxt - sig) * e3, nxt)
            x = x + (nxt - sig) * (e1 + 2 * e2 + 2 * e3 + e4) / 6
            es.append(e1)
        else:
            es = (es + [e1])[-4:]
            x = x + (nxt - sig) * _adams_bashforth(es)
        if callback is not None:
            callback(i + 1, nxt, x)
    return x


# ---------------------------------------------------------------------------------- one entry point
SOLVERS = {"euler": euler, "heun": heun, "dpmpp_1": dpmpp_1, "dpmpp_2m": dpmpp_2m, "dpmpp_3m": dpmpp_3m,
           "plms": plms, "pndm": pndm}


def nfe(solver: str, n_steps: int) -> int:
    """The number of denoiser calls of ``solver`` on a grid of ``n_steps`` steps ending at 0: ``n`` for Euler and the
    DPM-Solver++ family, ``2n - 1`` for Heun, ``n + 1`` for PLMS, ``n + 9`` for PNDM."""
    solver = validation.choice("solver", solver, tuple(SOLVERS))
    n = _count("n_steps", n_steps)
    return {"heun": 2 * n - 1, "plms": n + 1, "pndm": n + 9}.get(solver, n)


@torch.no_grad()
def sample(denoiser, shape, n_steps: int | None = None, *, solver: str = "dpmpp_2m", spacing: str = "karras",
           sigmas=None, x_T: torch.Tensor | None = None, generator: torch.Generator | None = None,
           progress_bar: bool = True, callback=None, device=None, **solver_kwargs) -> torch.Tensor:
    r"""Sample with one of the ODE solvers of this lesson: ``solver`` in :data:`SOLVERS` on the grid
    ``grid(denoiser.path, n_steps, spacing)`` (or an explicit decreasing ``sigmas`` ending at 0).

    ``denoiser`` is a :class:`tinydiff.denoisers.Denoiser` (any path, any prediction), or a raw ``D(x, sigma)`` in the
    VE variable together with ``sigmas``. ``x_T`` is a point of the path at the first noise level (for a VP model
    :math:`x_T\sim\mathcal N(0, I)`, as in :func:`tinydiff.ddim.sample`); by default it is drawn on the CPU from
    ``generator`` with the variance :math:`\alpha^2+\sigma^2` of unit-variance data there, and moved. The solver runs
    in :math:`x/\alpha` from :math:`x_T/\alpha_T`; ``callback(i, sigma, x)`` sees that variable. Returns the last
    state, which is :math:`x_0` when the grid ends at 0. Runs on ``device`` (default: that of ``x_T`` or the model).
    """
    solver = validation.choice("solver", solver, tuple(SOLVERS))
    spacing = validation.choice("spacing", spacing, GRIDS)
    validation.callback("callback", callback)
    device = _device(device)
    path = getattr(denoiser, "path", None)
    D = denoiser.x0_sigma() if hasattr(denoiser, "x0_sigma") else denoiser
    if not callable(D):
        raise TypeError(f"denoiser must be a tinydiff.denoisers.Denoiser or a callable D(x, sigma); "
                        f"got {validation.describe(denoiser)}")
    if sigmas is None:
        if path is None:
            raise ValueError("a raw D(x, sigma) has no noise path: pass an explicit grid sigmas=...")
        if n_steps is None:
            raise ValueError("give n_steps (and a spacing) or an explicit grid sigmas=...")
        sigmas = grid(path, n_steps, spacing)
    elif n_steps is not None:
        raise ValueError("give either n_steps or sigmas, not both")
    sigmas = _grid(sigmas)
    shape = validation.shape("shape", shape)
    if x_T is not None:
        x_T = validation.tensor("x_T", x_T, finite=True)
    device = device if device is not None else device_of(denoiser, x_T)
    a0, s0 = 1.0, float(sigmas[0])
    if path is not None:
        t0 = path.t_from_sigma_ve(sigmas[:1])
        a0, s0 = float(path.alpha(t0)), float(path.sigma(t0))
    if x_T is None:
        x_T = start_noise(shape, generator=generator, device=device) * math.sqrt(a0**2 + s0**2)
    else:
        x_T = validation.tensor("x_T", x_T, finite=True)
        if tuple(x_T.shape) != shape:
            raise ValueError(f"x_T has shape {tuple(x_T.shape)} but shape={shape} was requested")
        x_T = x_T.to(device)
    return SOLVERS[solver](D, sigmas, x_T / a0, callback=callback, progress_bar=progress_bar, **solver_kwargs)


# ---------------------------------------------------------------------------------- measuring a solver
def ode_reference(x0_fn, sigma_max: float, sigma_min: float, x: torch.Tensor, *, rtol: float = 1e-10,
                  atol: float = 1e-10) -> torch.Tensor:
    r"""The probability-flow ODE solved to tolerance by scipy (DOP853) in :math:`u = \log\sigma`,
    :math:`dx/du = x - D(x, e^u)`, from ``sigma_max`` down to ``sigma_min``: the reference against which a solver's
    error is measured. Float64, on the CPU."""
    from scipy.integrate import solve_ivp

    lo, hi = _ends(sigma_min, sigma_max)
    _fns(x0_fn, None)
    rtol = validation.number("rtol", rtol, low=0, strict_low=True)
    atol = validation.number("atol", atol, low=0, strict_low=True)
    x = validation.tensor("x", x, finite=True).detach().to("cpu", torch.float64)
    shape = x.shape
    checked = []

    def rhs(u, y):
        y = torch.from_numpy(y).reshape(shape)
        s = torch.full((shape[0],), math.exp(u), dtype=torch.float64)
        out = x0_fn(y, s)
        if not checked:
            if isinstance(out, torch.Tensor) and out.is_floating_point():
                out = out.to(torch.float64)
            validation.output("x0_fn", out, like=y)
            checked.append(True)
        return (y - out.to(torch.float64)).reshape(-1).numpy()

    sol = solve_ivp(rhs, (math.log(hi), math.log(lo)), x.reshape(-1).numpy(), method="DOP853", rtol=rtol, atol=atol)
    if not sol.success:
        raise RuntimeError(f"scipy could not solve the ODE: {sol.message}")
    return torch.from_numpy(sol.y[:, -1].copy()).reshape(shape)


def order(n, err) -> float:
    r"""The order :math:`p` of a solver read off a log-log plot: the least-squares slope of :math:`\log` error against
    :math:`\log n` (``n`` steps or NFE), negated, so that error :math:`\approx C n^{-p}`."""
    def _seq(name, v):
        if isinstance(v, (list, tuple)):
            try:
                v = torch.as_tensor(v, dtype=torch.float64)
            except (TypeError, ValueError, RuntimeError):
                raise ValueError(f"{name} must be a sequence of numbers; got {validation.describe(v)}") from None
        return validation.tensor(name, v, ndim=1, finite=True).to(torch.float64)

    n, e = _seq("n", n), _seq("err", err)
    if not bool((n > 0).all()):
        raise ValueError("n must hold positive step counts")
    n = n.log()
    if n.shape != e.shape or n.numel() < 2 or not bool((e > 0).all()):
        raise ValueError("order needs two or more (n, error) pairs with positive errors")
    e = e.log()
    nc = n - n.mean()
    return float(-(nc * (e - e.mean())).sum() / (nc * nc).sum())


# ---------------------------------------------------------------------------------- Analytic-DPM
def eps_sq_mean(eps_fn, x0: torch.Tensor, sched, ts, *, generator: torch.Generator | None = None,
                repeats: int = 1) -> torch.Tensor:
    r"""Analytic-DPM's statistic :math:`\Gamma_t = \mathbb E_{q(x_t)}\|\hat\varepsilon(x_t, t)\|^2/d` for each ``t`` in
    ``ts``, by Monte Carlo over the data ``x0`` ``(N, ...)``: :math:`x_t = \sqrt{\bar\alpha_t}x_0 + \sqrt{1-\bar\alpha_t}
    \varepsilon` with fresh noise (``repeats`` draws per data point). For the exact :math:`\varepsilon^*`,
    :math:`\Gamma_t = (1-\bar\alpha_t)\,\mathbb E\|\nabla\log q_t\|^2/d \in [0, 1]`. Float64 ``(len(ts),)``."""
    x0 = validation.tensor("x0", x0, finite=True)
    reps = _count("repeats", repeats)
    sched = validation.schedule("sched", sched)
    _fns(eps_fn, None, "eps_fn")
    ts = validation.timesteps("ts", ts, sched.T).reshape(-1)
    out = torch.zeros(len(ts), dtype=torch.float64)
    for j, t in enumerate(ts.tolist()):
        ab = float(sched.alpha_bar[t])
        acc = 0.0
        for _ in range(reps):
            eps = noise_like(x0, generator)
            xt = math.sqrt(ab) * x0 + math.sqrt(1 - ab) * eps
            e = eps_fn(xt, torch.full((x0.shape[0],), t, dtype=torch.long, device=x0.device))
            if j == 0:
                validation.output("eps_fn", e, like=xt)
            acc += float(e.to(torch.float64).pow(2).mean())
        out[j] = acc / reps
    return out


def analytic_variance(sched, t, s, gamma, lambda2=None) -> torch.Tensor:
    r"""Analytic-DPM's optimal reverse variance (Bao et al. 2022, Theorem 1, with skipping) for a step ``t`` → ``s``:

    .. math:: \sigma^{*2}_{t\to s} = \lambda^2 + \Big(\sqrt{\tfrac{\bar\beta_t}{\alpha_{t|s}}}
              - \sqrt{\bar\beta_s - \lambda^2}\Big)^2 (1 - \Gamma_t), \qquad
              \alpha_{t|s} = \frac{\bar\alpha_t}{\bar\alpha_s},\ \bar\beta = 1 - \bar\alpha,

    where :math:`\Gamma_t = \mathbb E\|\varepsilon^*(x_t)\|^2/d` (:func:`eps_sq_mean`, clipped to its range
    ``[0, 1]``) and :math:`\lambda^2` the variance of the family :math:`p(x_s\mid x_t, x_0)` (default DDPM's
    :math:`\tilde\beta`, :func:`tinydiff.ddim.sigma` at :math:`\eta = 1`). Mind the paper's notation: there
    :math:`\alpha_n` is the *cumulative* product and the per-step factor is :math:`\alpha_n/\alpha_{n-1}`; here
    :math:`\alpha_{t|s}` is that per-step (per-skip) factor, never :math:`\bar\alpha_t`. Float64."""
    from .ddim import sigma as ddim_sigma

    sched = validation.schedule("sched", sched)
    t, s = validation.timesteps("t", t, sched.T), validation.timesteps("s", s, sched.T)
    if t.ndim != s.ndim or (t.ndim == 1 and t.shape != s.shape):
        raise ValueError(f"s must have the shape of t, {tuple(t.shape)}; got {tuple(s.shape)}")
    if lambda2 is not None:
        if isinstance(lambda2, (int, float)) and not isinstance(lambda2, bool):
            lambda2 = validation.number("lambda2", lambda2, low=0)
        else:
            lambda2 = validation.tensor("lambda2", lambda2)
    if isinstance(gamma, torch.Tensor) or hasattr(gamma, "__array__"):
        gamma = validation.tensor("gamma", gamma)
    else:
        gamma = validation.number("gamma", gamma)
    ab_t, ab_s = sched.alpha_bar[t], sched.alpha_bar[s]
    lam2 = ddim_sigma(t, s, sched, 1.0) ** 2 if lambda2 is None else torch.as_tensor(lambda2, dtype=torch.float64)
    g = torch.as_tensor(gamma, dtype=torch.float64).clamp(0, 1)
    gap = ((1 - ab_t) / (ab_t / ab_s)).sqrt() - (1 - ab_s - lam2).clamp_min(0).sqrt()
    return lam2 + gap**2 * (1 - g)


@torch.no_grad()
def analytic_ddpm_sample(eps_fn, shape, sched, n_steps: int, gamma, *, spacing: str = "leading",
                         x_T: torch.Tensor | None = None, generator: torch.Generator | None = None,
                         progress_bar: bool = True, callback=None, device=None) -> torch.Tensor:
    r"""Few-step DDPM with Analytic-DPM's variance: on :func:`tinydiff.ddim.timesteps` ``(T, n_steps, spacing)``,
    :math:`x_s = \kappa_t x_t + \lambda_t\hat x_0 + \sigma^*_{t\to s}z` — the mean of the DDPM (:math:`\eta = 1`)
    member of the family, the variance of :func:`analytic_variance` with ``gamma[i]`` = :math:`\Gamma` at the
    ``i``-th timestep (decreasing order). The final step into ``s = 0`` returns its mean. Noise is drawn like
    :func:`tinydiff.ddim.sample`, so ``gamma = 1`` (variance :math:`\lambda^2`) reproduces ``ddim.sample(eta=1)``."""
    from . import ddim

    sched = validation.schedule("sched", sched)
    _fns(eps_fn, callback, "eps_fn")
    device = _device(device)
    ts = ddim.timesteps(sched.T, n_steps, spacing)
    prevs = torch.cat([ts[1:], ts.new_zeros(1)])
    if gamma is None or isinstance(gamma, (str, bytes, complex, bool)):
        raise ValueError(f"gamma must hold one number per step ({len(ts)}); got {validation.describe(gamma)}")
    g = validation.tensor("gamma", torch.as_tensor(gamma, dtype=torch.float64).reshape(-1), ndim=1)
    if g.numel() != len(ts):
        raise ValueError(f"gamma must hold one value per step ({len(ts)}); got {g.numel()}")
    std = analytic_variance(sched, ts, prevs, g).sqrt().tolist()
    shape = validation.shape("shape", shape)
    device = device if device is not None else device_of(eps_fn, x_T)
    x = start_noise(shape, generator=generator, device=device, x_T=x_T)
    if callback is not None:
        callback(0, int(ts[0]), x)
    for i, (t, s) in enumerate(progress(list(zip(ts.tolist(), prevs.tolist())), desc="Analytic-DPM",
                                        disable=not progress_bar)):
        tt = torch.full((shape[0],), t, dtype=torch.long, device=device)
        eps = eps_fn(x, tt)
        if i == 0:
            validation.output("eps_fn", eps, like=x)
        mean = ddim.step(x, eps, t, s, sched, eta=1.0, noise=torch.zeros_like(x))
        x = mean + std[i] * noise_like(x, generator) if s > 0 else mean
        if callback is not None:
            callback(i + 1, s, x)
    return x
