r"""Continuous time (lesson 04): the VP-SDE, the reverse SDE, Fokker–Planck, the probability-flow ODE,
exact likelihoods, predictor–corrector sampling and denoising score matching.

Notation (lecture "SDE" and "SDE and ODE 大一统"), with continuous time ``t`` in ``[0, 1]``:

- forward SDE :math:`dx = f_t(x)\,dt + g_t\,dw`; for the VP-SDE :math:`f_t(x) = -\tfrac12\beta(t)x`,
  :math:`g_t = \sqrt{\beta(t)}`, :math:`\beta(t) = \beta_{\min} + t(\beta_{\max} - \beta_{\min})`;
- its marginal given :math:`x_0`: :math:`x_t = m(t)\,x_0 + s(t)\,\varepsilon`, with
  :math:`m(t) = e^{-\frac12\int_0^t\beta}` (``mean_coef``) and :math:`s(t) = \sqrt{1 - m(t)^2}` (``std``);
- the family with the same marginals, for any :math:`\sigma_t \ge 0`:
  forward :math:`dx = (f_t - \tfrac12(g_t^2 - \sigma_t^2)\nabla\log p_t)\,dt + \sigma_t\,dw`,
  reverse :math:`dx = (f_t - \tfrac12(g_t^2 + \sigma_t^2)\nabla\log p_t)\,dt + \sigma_t\,d\bar w`.
  :math:`\sigma_t = g_t` gives the forward / reverse SDE, :math:`\sigma_t = 0` the probability-flow ODE.

**Mapping to the discrete schedule** (lesson 02). A discrete step ``t = 1..T`` covers the interval
:math:`((t-1)/T, t/T]`, so continuous time is ``t / T`` and

.. math:: \beta^{\text{discrete}}_t \approx \beta(t/T)/T, \qquad \bar\alpha_t \approx m(t/T)^2,

with errors of order :math:`1/T` (:meth:`VPSDE.discrete_schedule`, and its inverse :meth:`VPSDE.from_discrete`).
DDPM's linear schedule (:math:`10^{-4}..0.02`, ``T = 1000``) is, up to :math:`O(1/T)`, the VP-SDE with
:math:`\beta_{\min}=0.1`, :math:`\beta_{\max}=20`.

Every sampler takes a continuous-time score callable ``score_fn(x, t) -> score`` with ``t`` a float
tensor ``(B,)`` in ``[0, 1]`` (dtype and device of ``x``). :func:`mixture_score_fn` makes the exact one of
a :class:`tinydiff.data.GaussianMixture`; :func:`continuous_score_fn` wraps a continuous-time
:math:`\varepsilon`-network (the discrete-time wrapper is :func:`tinydiff.convert.score_fn_from_eps_fn`).

The samplers share tinydiff's one signature, ``sample_*(score_fn, shape, sde, n_steps, *, x_T=None,
generator=None, progress_bar=True, callback=None, device=None, ...)``: ``callback(i, t, x)`` gets ``i = 0`` and
``t = 1`` for the start and ``i = 1..n_steps`` with the time reached after each step; the device follows ``x_T``
or the model; noise is drawn on the CPU from ``generator`` and moved. The step coefficients are computed once in
float64 as Python numbers, and ``score_fn``'s output is checked (shape, dtype, device, finite) at the first step.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from scipy.integrate import solve_ivp
from scipy.linalg import solve_banded

from . import convert, validation
from .schedules import NoiseSchedule
from .utils import expand_to, noise_like, progress, sampler_start

__all__ = [
    "VPSDE",
    "check_time",
    "mixture_score_fn",
    "continuous_score_fn",
    "family_drift",
    "pf_ode_drift",
    "reverse_sde_drift",
    "simulate_forward",
    "sample_reverse_family",
    "sample_reverse_sde",
    "sample_ode_euler",
    "sample_ode_heun",
    "sample_ode_scipy",
    "langevin_correct",
    "sample_pc",
    "divergence_exact",
    "divergence_hutchinson",
    "log_likelihood",
    "fokker_planck_1d",
    "fokker_planck_residual",
    "fokker_planck_sides",
    "hutchinson_variance",
    "dsm_loss",
]


# ---------------------------------------------------------------------------------- input checks
def _callable(name: str, fn, signature: str):
    if not callable(fn):
        raise TypeError(f"{name} must be a callable {signature}; got {validation.describe(fn)}")
    return fn


def _returned(name: str, out, batch: int, shape=None) -> torch.Tensor:
    """What a user callable returned: a tensor with the batch ``batch`` (and the shape ``shape`` if given)."""
    if out is None:
        raise TypeError(f"{name} returned None: did it forget to `return`?")
    if not isinstance(out, torch.Tensor):
        raise TypeError(f"{name} must return a torch.Tensor; it returned {validation.describe(out)}")
    if out.ndim == 0 or out.shape[0] != batch or (shape is not None and tuple(out.shape) != tuple(shape)):
        want = tuple(shape) if shape is not None else f"({batch}, ...)"
        raise ValueError(f"{name} returned shape {tuple(out.shape)}; it must return shape {want}")
    return out


def _float64(name: str, value) -> torch.Tensor:
    if value is None or isinstance(value, (str, bytes)) or (isinstance(value, torch.Tensor) and value.is_complex()):
        raise ValueError(f"{name} must be a tensor of real numbers; got {validation.describe(value)}")
    try:
        return torch.as_tensor(value, dtype=torch.float64)
    except (TypeError, ValueError, RuntimeError):
        raise ValueError(f"{name} must be a tensor of real numbers; got {validation.describe(value)}") from None


# ---------------------------------------------------------------------------------- time and the SDE
def check_time(t, *, batch: int | None = None, name: str = "t") -> torch.Tensor:
    """Validate continuous times and return them as a float64 tensor (a scalar or ``(batch,)``).

    Raises ``ValueError`` if a value is outside ``[0, 1]`` (or not finite), or the shape does not match.
    """
    if t is None or isinstance(t, (bool, complex, str)):
        raise ValueError(f"{name} must be a float (or a float tensor) of continuous times in [0, 1]; "
                         f"got {validation.describe(t)}")
    if not isinstance(t, torch.Tensor):
        t = validation.tensor(name, torch.as_tensor(t, dtype=torch.float64), ndim=None)  # Python floats stay exact
    if t.dtype == torch.bool or t.is_complex() or not (t.is_floating_point() or t.dtype in (torch.int32, torch.int64)):
        raise ValueError(f"{name} must be a float (or a float tensor) of continuous times in [0, 1]; got dtype {t.dtype}")
    t = t.detach().to(torch.float64)
    if t.numel() and t.device.type != "meta" and not bool(((t >= 0.0) & (t <= 1.0)).all()):  # NaN fails both
        num = t[~t.isnan()]
        got = f"values from {float(num.min()):.4g} to {float(num.max()):.4g}" if num.numel() else "only NaN"
        raise ValueError(f"{name} must lie in [0, 1] (continuous time; a discrete step k of T is t = k / T); got "
                         f"{got}{' and NaN' if num.numel() < t.numel() and num.numel() else ''}")
    if batch is not None:
        if t.ndim == 0:
            t = t.expand(batch)
        if t.shape != (batch,):
            raise ValueError(f"{name} must be a scalar or have shape ({batch},) to match the batch; got {tuple(t.shape)}")
    return t


class VPSDE:
    r"""The variance-preserving SDE :math:`dx = -\tfrac12\beta(t)\,x\,dt + \sqrt{\beta(t)}\,dw`, ``t`` in ``[0, 1]``,
    with the linear rate :math:`\beta(t) = \beta_{\min} + t(\beta_{\max} - \beta_{\min})`.

    Methods take ``t`` as a float or a tensor of floats in ``[0, 1]`` and return float64 tensors
    (``drift`` returns the dtype of ``x``).
    """

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0):
        beta_min = validation.number("beta_min", beta_min, low=0, strict_low=True)
        beta_max = validation.number("beta_max", beta_max, low=0, strict_low=True)
        if beta_min > beta_max:
            raise ValueError(
                f"beta_min ({beta_min}) must not exceed beta_max ({beta_max}): the noise rate grows with t. "
                "Swap the two arguments."
            )
        self.beta_min, self.beta_max = beta_min, beta_max

    def beta(self, t) -> torch.Tensor:
        r""":math:`\beta(t) = \beta_{\min} + t(\beta_{\max} - \beta_{\min})`."""
        return self._beta(check_time(t))

    def beta_integral(self, t) -> torch.Tensor:
        r""":math:`B(t) = \int_0^t \beta(u)\,du = \beta_{\min}t + \tfrac12 t^2(\beta_{\max} - \beta_{\min})`."""
        return self._beta_integral(check_time(t))

    # the same formulas unchecked, on floats or tensors of any dtype and device (the samplers' inner loops)
    def _beta(self, t):
        return self.beta_min + t * (self.beta_max - self.beta_min)

    def _beta_integral(self, t):
        return self.beta_min * t + 0.5 * t**2 * (self.beta_max - self.beta_min)

    def _marginal(self, t):
        B = self._beta_integral(t)
        if isinstance(B, torch.Tensor):
            return torch.exp(-0.5 * B), (-torch.expm1(-B)).sqrt()
        return math.exp(-0.5 * B), math.sqrt(-math.expm1(-B))

    def drift(self, x: torch.Tensor, t) -> torch.Tensor:
        r"""The drift :math:`f_t(x) = -\tfrac12\beta(t)\,x` (``t`` a scalar or ``(B,)``)."""
        x = validation.tensor("x", x, ndim=tuple(range(1, 9)))
        t = check_time(t, batch=x.shape[0])
        return -0.5 * expand_to(self.beta(t), x) * x

    def diffusion(self, t) -> torch.Tensor:
        r"""The diffusion coefficient :math:`g_t = \sqrt{\beta(t)}`."""
        return self.beta(t).sqrt()

    def marginal(self, t) -> tuple[torch.Tensor, torch.Tensor]:
        r"""``(mean_coef, std)`` of :math:`p(x_t\mid x_0) = \mathcal N(m(t)x_0, s(t)^2 I)`:
        :math:`m(t) = e^{-B(t)/2}`, :math:`s(t) = \sqrt{1 - e^{-B(t)}}`."""
        B = self.beta_integral(t)
        return torch.exp(-0.5 * B), (-torch.expm1(-B)).sqrt()

    # ------------------------------------------------------------------ the discrete schedule, both ways
    def discrete_schedule(self, T: int = 1000) -> NoiseSchedule:
        r"""The discrete schedule of this SDE: :math:`\beta^{\text{discrete}}_t = \beta(t/T)/T`, ``t = 1..T``.

        One step of :math:`x_t = \sqrt{1-\beta_t}x_{t-1} + \sqrt{\beta_t}\varepsilon` is, to first order in
        :math:`\Delta t = 1/T`, the Euler–Maruyama step :math:`x + f\Delta t + g\sqrt{\Delta t}\,\varepsilon`;
        so :math:`\bar\alpha_t \approx m(t/T)^2` with an error of order :math:`1/T`.
        """
        T = validation.integer("T (the number of discrete steps)", T, low=1)
        if self.beta_max / T >= 1:
            raise ValueError(f"T = {T} is too small: beta(1)/T = {self.beta_max / T:.3g} must be < 1; use T > {self.beta_max:g}")
        t = torch.arange(1, T + 1, dtype=torch.float64) / T
        return NoiseSchedule(torch.cat([torch.zeros(1, dtype=torch.float64), self.beta(t) / T]), name=f"VPSDE(T={T})")

    @classmethod
    def from_discrete(cls, sched: NoiseSchedule, *, rtol: float = 1e-6) -> "VPSDE":
        r"""The VP-SDE of a *linear* discrete schedule, the exact inverse of :meth:`discrete_schedule`:
        :math:`\beta(t/T) = T\beta_t` at ``t = 1`` and ``t = T`` fixes the line :math:`\beta(\cdot)`.

        DDPM's :math:`10^{-4}..0.02` with ``T = 1000`` gives :math:`\beta_{\min}\approx 0.080`,
        :math:`\beta_{\max} = 20`; the customary rounding to :math:`(0.1, 20)` (:math:`T\beta_1, T\beta_T`) differs
        by :math:`O(1/T)`. Raises ``ValueError`` for a schedule that is not linear in ``t``.
        """
        sched = validation.schedule("sched", sched)
        rtol = validation.number("rtol", rtol, low=0)
        b = sched.beta[1:]
        T = sched.T
        if T < 2:
            raise ValueError("from_discrete needs a schedule with T >= 2 steps")
        lin = torch.linspace(float(b[0]), float(b[-1]), T, dtype=torch.float64)
        if not torch.allclose(b, lin, rtol=rtol, atol=0.0):
            raise ValueError(
                f"from_discrete maps only linear schedules to the linear VP-SDE; {sched.name} is not linear "
                "(for the cosine schedule use its alpha_bar directly)"
            )
        beta_lo, beta_hi = T * float(b[0]), T * float(b[-1])  # beta(1/T) and beta(1)
        slope = (beta_hi - beta_lo) / (1.0 - 1.0 / T)
        beta_min = beta_lo - slope / T
        if beta_min <= 0:
            raise ValueError(f"this schedule extrapolates to beta(0) = {beta_min:.3g} <= 0: no VP-SDE matches it")
        return cls(beta_min, beta_hi)

    def __repr__(self) -> str:
        return f"VPSDE(beta_min={self.beta_min:g}, beta_max={self.beta_max:g})"


# ---------------------------------------------------------------------------------- score callables
def _time_of(t, x: torch.Tensor) -> torch.Tensor:
    """``t`` as a float64 tensor ``(B,)`` on ``x``'s device for the score callables. On the CPU the values are
    range-checked (:func:`check_time`); on an accelerator (a sampler's call) only dtype and shape are, since reading
    the values would cost a device->host sync at every step."""
    if not isinstance(t, torch.Tensor) or t.device.type == "cpu":
        return check_time(t, batch=x.shape[0]).to(x.device)
    if not t.is_floating_point():
        raise ValueError(f"t must be a float tensor of continuous times in [0, 1]; got {validation.describe(t)}")
    if t.ndim == 0:
        t = t.expand(x.shape[0])
    if t.shape != (x.shape[0],):
        raise ValueError(f"t must be a scalar or have shape ({x.shape[0]},) to match the batch; got {tuple(t.shape)}")
    return t.to(device=x.device, dtype=torch.float64)


def mixture_score_fn(mixture, sde: VPSDE):
    r"""The exact score :math:`\nabla\log p_t(x)` of the VP-SDE marginal of a Gaussian mixture, as ``score_fn(x, t)``:
    :math:`p_t` is the law of :math:`m(t)X + s(t)\varepsilon`, closed-form (:class:`tinydiff.data.GaussianMixture`).
    :math:`m(t), s(t)` are computed on ``x``'s device (per sample), so a sampler's loop stays free of host work."""
    validation.sde("sde", sde)

    def score_fn(x, t):
        m, s = sde._marginal(_time_of(t, x))
        return mixture.score(x, m, s)

    return score_fn


def continuous_score_fn(eps_fn, sde: VPSDE):
    r"""Turn a continuous-time :math:`\varepsilon`-predictor ``eps_fn(x, t)`` (``t`` in ``[0, 1]``) into
    ``score_fn(x, t)``: :math:`\nabla\log p_t(x) = -\varepsilon/s(t)` (the conversion of
    :func:`tinydiff.convert.score_from_eps` with :math:`\bar\alpha = m(t)^2`). Not to be confused with
    :func:`tinydiff.convert.score_fn_from_eps_fn`, which wraps a *discrete*-time network (``t`` in ``0..T``)."""
    validation.sde("sde", sde)

    def score_fn(x, t):
        m, _ = sde._marginal(_time_of(t, x))
        return convert.score_from_eps(eps_fn(x, t), m**2)

    return score_fn


# ---------------------------------------------------------------------------------- drifts
def _sigma2_t(sigma, sde: VPSDE, t: torch.Tensor) -> torch.Tensor:
    """:math:`\\sigma_t^2` as a float64 tensor like ``t``: ``sigma`` is a float c (then :math:`\\sigma_t = c\\,g_t`,
    so :math:`\\sigma_t^2 = c^2\\beta(t)` exactly) or a callable ``sigma(t)``."""
    if callable(sigma):
        out = _float64("sigma(t) (the value sigma returned)", sigma(t))
        if (out < 0).any() or not torch.isfinite(out).all():
            raise ValueError("sigma(t) must return finite values >= 0")
        out = out**2
    else:
        c = validation.number("sigma (a multiple of g_t, or a callable sigma(t))", sigma, allow_inf=True)
        if not math.isfinite(c) or c < 0:
            raise ValueError(f"sigma must be >= 0 (a multiple of g_t) or a callable sigma(t); got {sigma}")
        out = c**2 * sde.beta(t)
    return out.expand_as(t) if out.ndim == 0 else out


def family_drift(score_fn, sde: VPSDE, x: torch.Tensor, t, sigma=1.0, *, reverse: bool = False) -> torch.Tensor:
    r"""Drift of the lecture's family with the same marginals (``t`` a scalar or ``(B,)``):

    forward :math:`f_t(x) - \tfrac12(g_t^2 - \sigma_t^2)\nabla\log p_t(x)`, reverse
    :math:`f_t(x) - \tfrac12(g_t^2 + \sigma_t^2)\nabla\log p_t(x)`. ``sigma`` is a float c
    (:math:`\sigma_t = c\,g_t`) or a callable ``sigma(t)``. The forward drift with :math:`\sigma = g` needs no
    score (``score_fn`` may be ``None``).
    """
    sde = validation.sde("sde", sde)
    x = validation.tensor("x", x, ndim=tuple(range(1, 9)))
    t = check_time(t, batch=x.shape[0])
    g2 = sde.beta(t)
    s2 = _sigma2_t(sigma, sde, t)
    coef = (g2 + s2) if reverse else (g2 - s2)
    drift = sde.drift(x, t)
    if not reverse and bool((coef == 0).all()):
        return drift
    if score_fn is None:
        raise ValueError("this member of the family needs the score: pass score_fn(x, t)")
    _callable("score_fn", score_fn, "score_fn(x, t)")
    score = validation.output("score_fn", score_fn(x, t.to(x.dtype).to(x.device)), like=x)
    return drift - 0.5 * expand_to(coef, x) * score


def pf_ode_drift(score_fn, sde: VPSDE, x: torch.Tensor, t) -> torch.Tensor:
    r"""The probability-flow ODE's velocity :math:`v(x, t) = f_t(x) - \tfrac12 g_t^2\nabla\log p_t(x)` (:math:`\sigma=0`)."""
    return family_drift(score_fn, sde, x, t, 0.0)


def reverse_sde_drift(score_fn, sde: VPSDE, x: torch.Tensor, t) -> torch.Tensor:
    r"""The reverse-time SDE's drift :math:`f_t(x) - g_t^2\nabla\log p_t(x)` (run with :math:`dt < 0`)."""
    return family_drift(score_fn, sde, x, t, 1.0, reverse=True)


# ---------------------------------------------------------------------------------- simulation helpers
def _check_n_steps(n_steps) -> int:
    return validation.integer("n_steps (the number of time steps)", n_steps, low=1)


def _check_t_min(t_min) -> float:
    t_min = validation.number("t_min", t_min)
    if not 0.0 <= t_min < 1.0:
        raise ValueError(f"t_min must lie in [0, 1): sampling runs from t = 1 down to t_min; got {t_min}")
    return t_min


def _shape_sde(shape, sde):
    """``(shape, sde)``, also from the order of earlier versions, ``sample_*(score_fn, sde, shape)``."""
    if sde is None or (not hasattr(sde, "marginal") and hasattr(shape, "marginal")):
        shape, sde = sde, shape
    return shape, validation.sde("sde", sde)


def _sigma_table(sigma, sde: VPSDE, ts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    r"""``(sigma_t, sigma_t^2)`` on the float64 grid ``ts``, computed once: ``sigma`` is a float c
    (:math:`\sigma_t = c\,g_t`, so :math:`\sigma_t^2 = c^2\beta(t)` exactly) or a callable ``sigma(t)`` (called
    once, on the whole grid)."""
    if callable(sigma):
        out = sigma(ts)
        out = validation.tensor("sigma(t)", out if isinstance(out, torch.Tensor) else torch.as_tensor(out, dtype=torch.float64))
        out = out.to(torch.float64).cpu()
        if out.ndim == 0:
            out = out.expand_as(ts)
        if out.shape != ts.shape or not bool(torch.isfinite(out).all()) or bool((out < 0).any()):
            raise ValueError(f"sigma(t) must return finite values >= 0, one per time of t {tuple(ts.shape)}; "
                             f"got {validation.describe(out)}")
        return out, out**2
    c = validation.number("sigma (a multiple c of g_t, or a callable sigma(t))", sigma, low=0)
    return c * sde._beta(ts).sqrt(), c**2 * sde._beta(ts)


def _score_at(score_fn, x, t: float, first: bool):
    """``score_fn(x, t)`` with ``t`` a ``(B,)`` tensor of ``x``'s dtype and device; checked on the first call."""
    out = score_fn(x, torch.full((x.shape[0],), t, dtype=x.dtype, device=x.device))
    return validation.output("score_fn", out, like=x) if first else out


def _run(x, n_steps, step, times, callback, desc, progress_bar):
    """The shared loop: ``x = step(i, x)`` for ``i = 1..n_steps`` with ``callback(i, times[i], x)``."""
    if callback is not None:
        callback(0, times[0], x)
    for i in progress(range(1, n_steps + 1), desc=desc, disable=not progress_bar):
        x = step(i, x)
        if callback is not None:
            callback(i, times[i], x)
    return x


@torch.no_grad()
def simulate_forward(score_fn, x0: torch.Tensor, sde: VPSDE, n_steps: int = 100, *, generator=None,
                     progress_bar: bool = True, callback=None, device=None, t_end: float = 1.0, t_start: float = 0.0,
                     sigma=1.0):
    r"""Euler–Maruyama for the forward family :math:`dx = (f - \tfrac12(g^2-\sigma^2)\nabla\log p)\,dt + \sigma\,dw`
    from ``t_start`` to ``t_end``: :math:`x \leftarrow x + \text{drift}\,\Delta t + \sigma_t\sqrt{\Delta t}\,z`.

    The sampler signature with the data ``x0`` as the start point. ``sigma=1`` (:math:`\sigma_t = g_t`) is the plain
    forward SDE and needs no score (pass ``score_fn=None``); any other ``sigma`` (a float c for :math:`c\,g_t`, or
    a callable) needs ``score_fn``; ``sigma=0`` is the forward PF-ODE. ``callback(i, t, x)`` gets ``t_start`` at
    ``i = 0`` and the time reached after each step. Each step is
    :math:`x \leftarrow (1 - \tfrac12\beta\Delta t)\,x - \tfrac12(\beta - \sigma^2)\Delta t\,s_\theta + \sigma\sqrt{\Delta t}\,z`
    with the numbers computed once in float64.
    """
    sde = validation.sde("sde", sde)
    n_steps = _check_n_steps(n_steps)
    t_start, t_end = float(check_time(t_start, name="t_start")), float(check_time(t_end, name="t_end"))
    if t_end <= t_start:
        raise ValueError(f"t_end ({t_end}) must be after t_start ({t_start}) for the forward process")
    ts = torch.linspace(t_start, t_end, n_steps + 1, dtype=torch.float64)
    t0, dt = ts[:-1], ts[1:] - ts[:-1]
    sig, sig2 = _sigma_table(sigma, sde, t0)
    beta = sde._beta(t0)
    a, b, c = (1 - 0.5 * beta * dt).tolist(), (0.5 * (beta - sig2) * dt).tolist(), (sig * dt.sqrt()).tolist()
    needs_score = any(v != 0 for v in b)
    if needs_score and score_fn is None:
        raise ValueError("this member of the family needs the score (sigma != 1): pass score_fn(x, t)")
    x0 = validation.tensor("x0", x0, finite=True)
    x, device = sampler_start(score_fn if score_fn is not None else (lambda x, t: x), None, x_T=x0,
                              generator=generator, device=device, callback=callback, name="score_fn",
                              data_start=True)
    x = x.clone()
    times, t_list = ts.tolist(), t0.tolist()

    def step(i, x):
        out = x * a[i - 1]
        if needs_score:
            out = out.sub_(_score_at(score_fn, x, t_list[i - 1], i == 1), alpha=b[i - 1])
        return out.add_(noise_like(x, generator), alpha=c[i - 1]) if c[i - 1] > 0 else out

    return _run(x, n_steps, step, times, callback, "forward SDE", progress_bar)


@torch.no_grad()
def sample_reverse_family(score_fn, shape=None, sde: VPSDE = None, n_steps: int = 500, *, x_T=None, generator=None,
                          progress_bar: bool = True, callback=None, device=None, sigma=1.0, t_min: float = 1e-3,
                          desc: str = "reverse SDE"):
    r"""Euler–Maruyama for the reverse family from ``t = 1`` to ``t_min`` on a uniform grid of ``n_steps`` steps:

    .. math:: x \leftarrow x - \big(f_t(x) - \tfrac12(g_t^2+\sigma_t^2)\nabla\log p_t(x)\big)\Delta t
              + \sigma_t\sqrt{\Delta t}\,z,

    i.e. :math:`x \leftarrow (1 + \tfrac12\beta\Delta t)\,x + \tfrac12(\beta + \sigma_t^2)\Delta t\,s_\theta
    + \sigma_t\sqrt{\Delta t}\,z` with the numbers computed once in float64.
    ``sigma=1`` (:math:`\sigma_t = g_t`) is the reverse SDE, ``sigma=0`` the PF-ODE with Euler's method.
    One score evaluation per step. The one sampler signature (module docstring); ``shape`` may be ``None`` when
    ``x_T`` is given, and the order ``(score_fn, sde, shape)`` of earlier versions is accepted too.
    """
    shape, sde = _shape_sde(shape, sde)
    n_steps, t_min = _check_n_steps(n_steps), _check_t_min(t_min)
    ts = torch.linspace(1.0, t_min, n_steps + 1, dtype=torch.float64)
    t0, dt = ts[:-1], ts[:-1] - ts[1:]
    sig, sig2 = _sigma_table(sigma, sde, t0)
    beta = sde._beta(t0)
    a, b, c = (1 + 0.5 * beta * dt).tolist(), (0.5 * (beta + sig2) * dt).tolist(), (sig * dt.sqrt()).tolist()
    x, device = sampler_start(score_fn, shape, x_T=x_T, generator=generator, device=device, callback=callback,
                              name="score_fn")
    t_list = t0.tolist()

    def step(i, x):
        out = torch.add(x * a[i - 1], _score_at(score_fn, x, t_list[i - 1], i == 1), alpha=b[i - 1])
        return out.add_(noise_like(x, generator), alpha=c[i - 1]) if c[i - 1] > 0 else out

    return _run(x, n_steps, step, ts.tolist(), callback, desc, progress_bar)


def sample_reverse_sde(score_fn, shape=None, sde: VPSDE = None, n_steps: int = 500, **kwargs):
    r"""The reverse-time SDE :math:`dx = [f_t(x) - g_t^2\nabla\log p_t(x)]\,dt + g_t\,d\bar w` by Euler–Maruyama
    (``n_steps`` score evaluations). Keyword arguments as :func:`sample_reverse_family`."""
    return sample_reverse_family(score_fn, shape, sde, n_steps, sigma=1.0, **kwargs)


def sample_ode_euler(score_fn, shape=None, sde: VPSDE = None, n_steps: int = 100, **kwargs):
    r"""The probability-flow ODE :math:`dx/dt = f_t(x) - \tfrac12 g_t^2\nabla\log p_t(x)` by Euler's method from
    ``t = 1`` to ``t_min`` (NFE = ``n_steps``). Keyword arguments as :func:`sample_reverse_family`."""
    kwargs.setdefault("desc", "PF-ODE Euler")
    return sample_reverse_family(score_fn, shape, sde, n_steps, sigma=0.0, **kwargs)


@torch.no_grad()
def sample_ode_heun(score_fn, shape=None, sde: VPSDE = None, n_steps: int = 50, *, x_T=None, generator=None,
                    progress_bar: bool = True, callback=None, device=None, t_min: float = 1e-3):
    r"""The probability-flow ODE by Heun's method (explicit trapezoid, second order), NFE = ``2 * n_steps``:
    :math:`\tilde x = x + h\,v(x, t)`, :math:`x \leftarrow x + \tfrac h2\,(v(x, t) + v(\tilde x, t + h))`, :math:`h < 0`,
    with :math:`v(x, t) = -\tfrac12\beta(t)\,(x + s_\theta(x, t))`. The one sampler signature (module docstring;
    the start point is drawn from ``generator``, the steps draw no noise)."""
    shape, sde = _shape_sde(shape, sde)
    n_steps, t_min = _check_n_steps(n_steps), _check_t_min(t_min)
    ts = torch.linspace(1.0, t_min, n_steps + 1, dtype=torch.float64)
    times = ts.tolist()
    beta = sde._beta(ts).tolist()
    x, device = sampler_start(score_fn, shape, x_T=x_T, generator=generator, device=device, callback=callback,
                              name="score_fn")

    def v(x, k, first=False):  # the PF-ODE velocity at grid time k
        return torch.add(x, _score_at(score_fn, x, times[k], first)).mul_(-0.5 * beta[k])

    def step(i, x):
        h = times[i] - times[i - 1]
        v0 = v(x, i - 1, i == 1)
        v1 = v(torch.add(x, v0, alpha=h), i)
        return torch.add(x, v0.add_(v1), alpha=0.5 * h)

    return _run(x, n_steps, step, times, callback, "PF-ODE Heun", progress_bar)


@torch.no_grad()
def sample_ode_scipy(score_fn, shape=None, sde: VPSDE = None, *, x_T=None, generator=None, progress_bar: bool = True,
                     callback=None, device=None, t_min: float = 1e-3, t_max: float = 1.0, rtol: float = 1e-5,
                     atol: float = 1e-5, method: str = "RK45", return_nfe: bool = False):
    r"""The probability-flow ODE from ``t_max`` to ``t_min`` with scipy's adaptive ``solve_ivp`` (RK45 by default),
    in float64. With tight tolerances it is the reference solution for the fixed-step solvers.

    Also integrates forward when ``t_max < t_min`` (the ODE is its own inverse: encode data into noise).
    Returns ``x`` (dtype of ``x_T``), or ``(x, nfe)`` with ``return_nfe=True``. The sampler signature without
    ``n_steps`` (scipy picks the steps): the state moves to the host at every evaluation (scipy works there), and
    ``callback(i, t, x)`` is called twice, at ``i = 0`` (``t_max``) and ``i = 1`` (``t_min``).
    """
    shape, sde = _shape_sde(shape, sde)
    t_min = float(check_time(t_min, name="t_min"))
    t_max = float(check_time(t_max, name="t_max"))
    rtol = validation.number("rtol", rtol, low=0, strict_low=True)
    atol = validation.number("atol", atol, low=0, strict_low=True)
    x, device = sampler_start(score_fn, shape, x_T=x_T, generator=generator, device=device, callback=callback,
                              name="score_fn")
    dtype, dev, shp = x.dtype, x.device, x.shape
    validation.output("score_fn", score_fn(x, torch.full((shp[0],), t_max, dtype=dtype, device=dev)), like=x)
    if callback is not None:
        callback(0, t_max, x)
    bar = progress(total=100, desc="PF-ODE (scipy)", disable=not progress_bar)

    def fun(t, y):
        xt = torch.from_numpy(y).reshape(shp).to(dev)
        bar.update(max(0, int(100 * (t_max - t) / (t_max - t_min)) - bar.n) if t_max != t_min else 0)
        return pf_ode_drift(score_fn, sde, xt, _tvec(min(max(t, 0.0), 1.0), xt)).cpu().numpy().ravel()

    y0 = x.detach().to(torch.float64).cpu().numpy().ravel()
    sol = solve_ivp(fun, (t_max, t_min), y0, method=method, rtol=rtol, atol=atol)
    bar.close()
    if not sol.success:
        raise RuntimeError(f"solve_ivp failed: {sol.message}")
    out = torch.from_numpy(sol.y[:, -1]).reshape(shp).to(dtype).to(dev)
    if callback is not None:
        callback(1, t_min, out)
    return (out, sol.nfev) if return_nfe else out


def _tvec(t: float, x: torch.Tensor) -> torch.Tensor:
    return torch.full((x.shape[0],), float(t), dtype=torch.float64)


# ---------------------------------------------------------------------------------- predictor–corrector
@torch.no_grad()
def langevin_correct(score_fn, sde: VPSDE, x: torch.Tensor, t, *, snr: float = 0.1, n_steps: int = 1,
                     generator=None) -> torch.Tensor:
    r"""Langevin MCMC at fixed ``t`` (the corrector): :math:`x \leftarrow x + \epsilon\nabla\log p_t(x) + \sqrt{2\epsilon}\,z`,
    which leaves :math:`p_t` invariant as :math:`\epsilon\to0`. Step size :math:`\epsilon_t = 2\,(r\,s(t))^2` with
    :math:`r` = ``snr``: the step is ``snr`` times the noise scale :math:`s(t)` of :math:`p_t`."""
    sde = validation.sde("sde", sde)
    _callable("score_fn", score_fn, "score_fn(x, t)")
    snr = validation.number("snr (the Langevin step relative to the noise scale)", snr, low=0, strict_low=True)
    n_steps = validation.integer("n_steps", n_steps, low=0)
    x = validation.tensor("x", x, finite=True)
    t = check_time(t, batch=x.shape[0])
    eps = expand_to(2.0 * (snr * sde._marginal(t)[1]) ** 2, x)
    tt = t.to(x.dtype).to(x.device)
    for k in range(n_steps):
        score = score_fn(x, tt)
        if k == 0:
            validation.output("score_fn", score, like=x)
        x = x + eps * score + (2 * eps).sqrt() * noise_like(x, generator)
    return x


@torch.no_grad()
def sample_pc(score_fn, shape=None, sde: VPSDE = None, n_steps: int = 100, *, x_T=None, generator=None,
              progress_bar: bool = True, callback=None, device=None, corrector_steps: int = 1, snr: float = 0.1,
              t_min: float = 1e-3):
    r"""Predictor–corrector sampling: each of ``n_steps`` reverse-SDE Euler–Maruyama steps (the predictor) is followed
    by ``corrector_steps`` Langevin steps at the new time (:func:`langevin_correct`).
    NFE = ``n_steps * (1 + corrector_steps)``. The one sampler signature (module docstring); ``callback`` sees the
    state after each predictor + corrector step."""
    shape, sde = _shape_sde(shape, sde)
    n_steps, t_min = _check_n_steps(n_steps), _check_t_min(t_min)
    corrector_steps = validation.integer("corrector_steps", corrector_steps, low=0)
    snr = validation.number("snr (the Langevin step relative to the noise scale)", snr, low=0, strict_low=True)
    ts = torch.linspace(1.0, t_min, n_steps + 1, dtype=torch.float64)
    t0, dt = ts[:-1], ts[:-1] - ts[1:]
    beta = sde._beta(t0)
    a, b, c = (1 + 0.5 * beta * dt).tolist(), (beta * dt).tolist(), (beta * dt).sqrt().tolist()
    lv = (2.0 * (snr * sde._marginal(ts[1:])[1]) ** 2).tolist()  # the corrector's step at the time reached
    x, device = sampler_start(score_fn, shape, x_T=x_T, generator=generator, device=device, callback=callback,
                              name="score_fn")
    times = ts.tolist()

    def step(i, x):
        x = torch.add(x * a[i - 1], _score_at(score_fn, x, times[i - 1], i == 1), alpha=b[i - 1])
        x = x.add_(noise_like(x, generator), alpha=c[i - 1])
        e = lv[i - 1]
        for _ in range(corrector_steps):
            x = torch.add(x, _score_at(score_fn, x, times[i], False), alpha=e).add_(noise_like(x, generator),
                                                                                      alpha=math.sqrt(2 * e))
        return x

    return _run(x, n_steps, step, times, callback, "predictor-corrector", progress_bar)


# ---------------------------------------------------------------------------------- likelihood
def divergence_exact(fn, x: torch.Tensor) -> torch.Tensor:
    r""":math:`\nabla\cdot v(x) = \sum_i \partial v_i/\partial x_i` per sample, by one backward pass per dimension
    (``fn`` maps ``(B, ...)`` to ``(B, ...)`` sample-wise). Returns ``(B,)``."""
    _callable("fn", fn, "fn(x) -> (B, ...)")
    x = validation.tensor("x", x, ndim=tuple(range(2, 9)))
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        v = _returned("fn", fn(x), x.shape[0]).flatten(1)
        div = torch.zeros(x.shape[0], dtype=v.dtype, device=x.device)
        for i in range(v.shape[1]):
            (gi,) = torch.autograd.grad(v[:, i].sum(), x, retain_graph=i + 1 < v.shape[1])
            div = div + gi.flatten(1)[:, i]
    return div.detach()


def divergence_hutchinson(fn, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    r"""Hutchinson's estimator :math:`z^\top (\partial v/\partial x)\,z` of the divergence, one vector–Jacobian
    product; unbiased when :math:`\mathbb E[zz^\top] = I` (Rademacher or Gaussian ``z``, shaped like ``x``)."""
    _callable("fn", fn, "fn(x) -> (B, ...)")
    x = validation.tensor("x", x, ndim=tuple(range(1, 9)))
    z = validation.tensor("z", z)
    if z.shape != x.shape:
        raise ValueError(f"the probe z must have the shape of x {tuple(x.shape)}; got {tuple(z.shape)}")
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        v = _returned("fn", fn(x), x.shape[0], x.shape)
        (vjp,) = torch.autograd.grad((v * z).sum(), x)
    return (vjp * z).flatten(1).sum(1).detach()


def hutchinson_variance(jacobian: torch.Tensor, probe: str = "rademacher") -> torch.Tensor:
    r"""The variance of one Hutchinson estimate :math:`z^\top J z` of :math:`\operatorname{tr} J` (``jacobian``
    ``(D, D)`` or ``(B, D, D)``; returns a scalar or ``(B,)``). With :math:`S = \tfrac12(J + J^\top)`
    (:math:`z^\top Jz = z^\top Sz`):

    - Gaussian :math:`z\sim\mathcal N(0, I)`: :math:`\operatorname{Var} = 2\|S\|_F^2 = 2\sum_{ij}S_{ij}^2`;
    - Rademacher :math:`z_i = \pm1`: :math:`\operatorname{Var} = 2\sum_{i\ne j}S_{ij}^2` (the diagonal is exact,
      since :math:`z_i^2 = 1`), the smallest variance of any probe with :math:`\mathbb E[zz^\top] = I`.
    """
    J = validation.tensor("jacobian", jacobian, ndim=(2, 3), finite=True)
    if J.shape[-1] != J.shape[-2]:
        raise ValueError(f"jacobian must be square, (D, D) or (B, D, D); got shape {tuple(J.shape)}")
    probe = validation.choice("probe", probe, ("rademacher", "gaussian"))
    S = 0.5 * (J + J.transpose(-1, -2))
    total = 2 * S.pow(2).sum((-1, -2))
    if probe == "gaussian":
        return total
    return total - 2 * torch.diagonal(S, dim1=-2, dim2=-1).pow(2).sum(-1)


def _standard_normal_logp(x: torch.Tensor) -> torch.Tensor:
    d = x[0].numel()
    return -0.5 * (x.flatten(1) ** 2).sum(1) - 0.5 * d * math.log(2 * math.pi)


def log_likelihood(x: torch.Tensor, score_fn, sde: VPSDE, *, exact_trace: bool = False, rtol: float = 1e-5,
                   atol: float = 1e-5, t_min: float = 1e-5, method: str = "RK45", probe: str = "rademacher",
                   generator=None, prior_logp=None, progress_bar: bool = False) -> torch.Tensor:
    r""":math:`\log p(x)` in nats per sample ``(B,)`` through the probability-flow ODE and the instantaneous change
    of variables :math:`\tfrac{d}{dt}\log p_t(x_t) = -\nabla\cdot v(x_t, t)`:

    .. math:: \log p_{t_{\min}}(x) = \log p_1(x_1) + \int_{t_{\min}}^1 \nabla\cdot v(x_t, t)\,dt,

    integrated forward from ``x`` at ``t_min`` to ``t = 1`` with scipy's ``solve_ivp`` (float64 state).
    ``exact_trace`` computes the divergence with one backward pass per dimension; otherwise Hutchinson's
    estimator with one fixed probe (``"rademacher"`` or ``"gaussian"``) for the whole solve, which is unbiased.
    The prior :math:`p_1` is :math:`\mathcal N(0, I)` unless ``prior_logp(x1) -> (B,)`` is given.
    """
    x = validation.tensor("x", x)
    if x.ndim < 2:
        raise ValueError(f"x must have shape (B, ...) with a batch dimension; got {tuple(x.shape)}")
    _callable("score_fn", score_fn, "score_fn(x, t)")
    if prior_logp is not None:
        _callable("prior_logp", prior_logp, "prior_logp(x1) -> (B,), or None for N(0, I)")
    probe = validation.choice("probe", probe, ("rademacher", "gaussian"))
    t_min = _check_t_min(t_min)
    rtol = validation.number("rtol", rtol, low=0, strict_low=True)
    atol = validation.number("atol", atol, low=0, strict_low=True)
    x = validation.tensor("x", x, finite=True)
    sde = validation.sde("sde", sde)
    dtype, dev, shp = x.dtype, x.device, x.shape
    B, n = shp[0], x[0].numel()
    if exact_trace:
        z = None
    elif probe == "gaussian":
        z = torch.randn(shp, generator=generator, dtype=dtype).to(dev)
    else:
        z = (torch.randint(0, 2, shp, generator=generator) * 2 - 1).to(dtype).to(dev)
    bar = progress(total=100, desc="log-likelihood ODE", disable=not progress_bar)

    def fun(t, y):
        xt = torch.from_numpy(y[: B * n]).reshape(shp).to(dtype).to(dev)
        tt = _tvec(min(max(t, 0.0), 1.0), xt)
        v_fn = lambda u: pf_ode_drift(score_fn, sde, u, tt)  # noqa: E731
        div = divergence_exact(v_fn, xt) if z is None else divergence_hutchinson(v_fn, xt, z)
        with torch.no_grad():
            v = v_fn(xt)
        bar.update(max(0, int(100 * (t - t_min) / (1 - t_min)) - bar.n))
        return np.concatenate([v.double().cpu().numpy().ravel(), div.double().cpu().numpy()])

    y0 = np.concatenate([x.detach().double().cpu().numpy().ravel(), np.zeros(B)])
    sol = solve_ivp(fun, (t_min, 1.0), y0, method=method, rtol=rtol, atol=atol)
    bar.close()
    if not sol.success:
        raise RuntimeError(f"solve_ivp failed: {sol.message}")
    x1 = torch.from_numpy(sol.y[: B * n, -1]).reshape(shp)
    integral = torch.from_numpy(sol.y[B * n:, -1])
    prior = _standard_normal_logp(x1) if prior_logp is None else torch.as_tensor(prior_logp(x1), dtype=torch.float64)
    return prior.cpu() + integral


# ---------------------------------------------------------------------------------- Fokker–Planck
def _fp_matrix(grid: torch.Tensor, sde: VPSDE, t: float) -> np.ndarray:
    """Banded (3, N) form of the finite-volume Fokker–Planck operator A(t): dp/dt = A p, zero flux at the ends.

    Flux through the face between cells i and i+1: F = f(x_face) (p_i + p_{i+1})/2 - g^2/2 (p_{i+1} - p_i)/dx.
    """
    x = grid.double()
    dx = float(x[1] - x[0])
    faces = 0.5 * (x[1:] + x[:-1])
    f = sde.drift(faces[:, None], t)[:, 0].numpy()
    D = 0.5 * float(sde.beta(t))
    # face j (between cells j and j+1) carries F_j = a_j p_j + b_j p_{j+1}
    a = 0.5 * f + D / dx
    b = 0.5 * f - D / dx
    N = x.numel()
    # dp_i/dt = -(F_i - F_{i-1}) / dx, with F_{-1} = F_{N-1} = 0 (closed ends)
    ab = np.zeros((3, N))
    ab[1, :-1] -= a / dx         # p_i through -F_i
    ab[1, 1:] += b / dx          # p_i through +F_{i-1} (p_i is the right cell of face i-1)
    ab[0, 1:] = -b / dx          # upper diagonal: p_{i+1} through -F_i
    ab[2, :-1] = a / dx          # lower diagonal: p_{i-1} through +F_{i-1}
    return ab


def fokker_planck_1d(p0, grid: torch.Tensor, sde: VPSDE, *, t_end: float, steps: int = 200, t_start: float = 0.0,
                     progress_bar: bool = False) -> torch.Tensor:
    r"""Solve the 1-D Fokker–Planck equation :math:`\partial_t p = -\partial_x(f_t p) + \tfrac12 g_t^2\,\partial_x^2 p`
    on a uniform ``grid`` (cell centres) from ``t_start`` to ``t_end``.

    Finite volumes (mass is conserved exactly, zero flux through the two ends) in space, Crank–Nicolson in
    time (second order, unconditionally stable), one tridiagonal solve per step. ``p0`` is the density on the
    grid at ``t_start``. Returns the density at ``t_end`` (float64, same shape as ``grid``).
    """
    steps = validation.integer("steps", steps, low=1)
    sde = validation.sde("sde", sde)
    grid = _float64("grid", grid)
    if grid.ndim != 1 or grid.numel() < 3 or not bool((grid.diff() > 0).all()):
        raise ValueError("grid must be a 1-D increasing tensor of at least 3 cell centres")
    if not torch.allclose(grid.diff(), grid.diff()[0].expand(grid.numel() - 1), rtol=1e-6):
        raise ValueError("grid must be uniform (use torch.linspace)")
    p = _float64("p0", p0).cpu().numpy().copy()
    if p.shape != tuple(grid.shape):
        raise ValueError(f"p0 must have the shape of grid {tuple(grid.shape)}; got {p.shape}")
    if not np.isfinite(p).all():
        raise ValueError("p0 must be finite (a density on the grid); it holds NaN or inf")
    t0 = float(check_time(t_start, name="t_start"))
    t1 = float(check_time(t_end, name="t_end"))
    if t1 <= t0:
        raise ValueError(f"t_end ({t1}) must be after t_start ({t0}): the Fokker–Planck equation runs forward in time")
    ts = np.linspace(t0, t1, steps + 1)
    for i in progress(range(steps), desc="Fokker-Planck", disable=not progress_bar):
        dt = ts[i + 1] - ts[i]
        A = _fp_matrix(grid, sde, 0.5 * (ts[i] + ts[i + 1]))
        rhs = p + 0.5 * dt * _banded_matvec(A, p)
        lhs = -0.5 * dt * A
        lhs[1] += 1.0
        p = solve_banded((1, 1), lhs, rhs)
    return torch.from_numpy(p)


def _banded_matvec(ab: np.ndarray, p: np.ndarray) -> np.ndarray:
    out = ab[1] * p
    out[:-1] += ab[0, 1:] * p[1:]
    out[1:] += ab[2, :-1] * p[:-1]
    return out


def fokker_planck_sides(log_prob_fn, drift_fn, diffusion_sq, x: torch.Tensor, t: float, *, reverse: bool = False,
                        dt: float = 1e-4):
    r"""Both sides of the Fokker–Planck equation of a process with drift :math:`b` and diffusion :math:`\sigma`, for a
    candidate density :math:`p_t(x) = e^{\text{log\_prob\_fn}(x, t)}`; returns ``(lhs, rhs)``, each ``(B,)``.

    - ``reverse=False``: :math:`dx = b_t(x)\,dt + \sigma_t\,dw` forward in time, whose density obeys
      :math:`\partial_t p_t = -\nabla\cdot(b_t p_t) + \tfrac12\sigma_t^2\Delta p_t`; ``lhs`` :math:`=\partial_t p_t`.
    - ``reverse=True``: :math:`dx = b_t(x)\,dt + \sigma_t\,d\bar w` run backwards (:math:`dt<0`), as the reverse SDE
      is written. In the time :math:`\tau = -t` that runs forward it has drift :math:`-b` and the same diffusion, so
      its Fokker–Planck equation is :math:`-\partial_t p_t = \nabla\cdot(b_t p_t) + \tfrac12\sigma_t^2\Delta p_t`;
      ``lhs`` :math:`=-\partial_t p_t`. Anderson's reverse SDE, :math:`b = f - g^2\nabla\log p_t`, :math:`\sigma = g`,
      satisfies it for the :math:`p_t` of the forward SDE (:func:`reverse_sde_drift`).

    ``drift_fn(x, t) -> (B, D)`` with ``t`` a float (it may call a score: it is differentiated by autograd);
    ``diffusion_sq`` is :math:`\sigma_t^2 \ge 0` at ``t`` (a float). :math:`\partial_t p` is a central difference
    with step ``dt``; the divergence and the Laplacian are exact (autograd, float64).
    """
    _callable("log_prob_fn", log_prob_fn, "log_prob_fn(x, t) -> (B,)")
    _callable("drift_fn", drift_fn, "drift_fn(x, t) -> (B, D)")
    diffusion_sq = validation.number("diffusion_sq (sigma_t^2 at t)", diffusion_sq, low=0)
    x = validation.tensor("x", x, ndim=tuple(range(2, 9)))
    dt = validation.number("dt", dt, low=0, strict_low=True)
    t = float(check_time(t))
    if not dt < t < 1 - dt:
        raise ValueError(f"t must lie in (dt, 1 - dt) for the central difference; got t={t}, dt={dt}")
    x = x.detach().double()
    with torch.no_grad():
        lp_plus = _returned("log_prob_fn", log_prob_fn(x, t + dt), x.shape[0], (x.shape[0],))
        lp_minus = _returned("log_prob_fn", log_prob_fn(x, t - dt), x.shape[0], (x.shape[0],))
        dp_dt = (lp_plus.exp() - lp_minus.exp()) / (2 * dt)
    p_fn = lambda u: log_prob_fn(u, t).exp()  # noqa: E731

    def flux(u):
        b = _returned("drift_fn", drift_fn(u, t), u.shape[0], u.shape)
        return b * expand_to(p_fn(u), b)

    flux_div = divergence_exact(flux, x)
    laplacian = divergence_exact(lambda u: _grad(p_fn, u, create_graph=True), x)
    if reverse:
        return -dp_dt, flux_div + 0.5 * diffusion_sq * laplacian
    return dp_dt, -flux_div + 0.5 * diffusion_sq * laplacian


def fokker_planck_residual(log_prob_fn, sde: VPSDE, x: torch.Tensor, t: float, *, dt: float = 1e-4):
    r"""Both sides of the forward SDE's Fokker–Planck equation for a candidate density
    :math:`p_t(x) = e^{\text{log\_prob\_fn}(x, t)}`:

    returns ``(lhs, rhs)`` with ``lhs`` :math:`=\partial_t p` (central difference in ``t``) and ``rhs``
    :math:`=-\nabla\cdot(f_t p) + \tfrac12 g_t^2\,\Delta p` (autograd in float64), each ``(B,)``.
    :func:`fokker_planck_sides` with the drift :math:`f_t` and diffusion :math:`g_t` of ``sde``.
    """
    sde = validation.sde("sde", sde)
    t_ = float(check_time(t))
    return fokker_planck_sides(log_prob_fn, sde.drift, float(sde.beta(t_)), x, t_, dt=dt)


def _grad(fn, u, create_graph=False):
    with torch.enable_grad():
        if not u.requires_grad:
            u = u.requires_grad_(True)
        (g,) = torch.autograd.grad(fn(u).sum(), u, create_graph=create_graph)
    return g


# ---------------------------------------------------------------------------------- training
def dsm_loss(score_fn, x0: torch.Tensor, sde: VPSDE, *, t=None, eps=None, t_min: float = 1e-5,
             generator=None) -> torch.Tensor:
    r"""Denoising score matching for continuous time, weighted by :math:`\lambda(t) = s(t)^2`:

    .. math:: \mathbb E_{t, x_0, \varepsilon}\, s(t)^2\,\big\|s_\theta(x_t, t) - \nabla_{x_t}\log p(x_t\mid x_0)\big\|^2,
              \qquad \nabla_{x_t}\log p(x_t\mid x_0) = -\varepsilon/s(t),

    with :math:`x_t = m(t)x_0 + s(t)\varepsilon` and :math:`t\sim\mathcal U(t_{\min}, 1)`. The sum runs over
    dimensions, the mean over the batch. With :math:`s_\theta = -\varepsilon_\theta/s(t)` it is exactly DDPM's
    :math:`\|\varepsilon - \varepsilon_\theta\|^2`. Its minimiser over all functions is the true score.
    """
    x0 = validation.tensor("x0", x0, ndim=tuple(range(2, 9)))  # a batch of at least one sample
    sde = validation.sde("sde", sde)
    B = x0.shape[0]
    t_min = _check_t_min(t_min)
    if t is None:
        t = t_min + (1 - t_min) * torch.rand(B, generator=generator, dtype=torch.float64)
    t = check_time(t, batch=B)
    _callable("score_fn", score_fn, "score_fn(x, t)")
    if eps is None:
        eps = torch.randn(x0.shape, generator=generator, dtype=x0.dtype).to(x0.device)
    eps = validation.tensor("eps", eps)
    if eps.shape != x0.shape:
        raise ValueError(f"eps must have the shape of x0 {tuple(x0.shape)}; got {tuple(eps.shape)}")
    m, s = sde.marginal(t)
    if bool((s == 0).any()):
        raise ValueError("t = 0 has no noise (s(0) = 0): the DSM target -eps/s is undefined; use t >= t_min > 0")
    xt = expand_to(m, x0) * x0 + expand_to(s, x0) * eps
    score = _returned("score_fn", score_fn(xt, t.to(x0.dtype).to(x0.device)), B)
    if score.shape != x0.shape:
        raise ValueError(f"score_fn returned shape {tuple(score.shape)}, expected {tuple(x0.shape)} (same as x0)")
    resid = expand_to(s, x0) * score + eps  # s(t) * (score - (-eps / s(t)))
    return resid.pow(2).flatten(1).sum(1).mean()
