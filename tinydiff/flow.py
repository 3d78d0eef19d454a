r"""Flow matching and rectified flow (lesson 11): the linear path, conditional and marginal velocities, the
conditional flow-matching loss, the Euler sampler of the flow ODE, its bridge to DDIM, reflow, straightness,
and SD3's logit-normal and shifted timestep sampling.

**Convention (the one diffusers and SD3 use).** Time ``t`` runs in ``[0, 1]``; ``t = 0`` is the data and
``t = 1`` the noise:

.. math:: x_t = (1 - t)\,x_0 + t\,\varepsilon, \qquad \varepsilon\sim\mathcal N(0, I),

a noise path :math:`x_t = \alpha_t x_0 + \sigma_t\varepsilon` with :math:`\alpha_t = 1 - t`, :math:`\sigma_t = t`
(``tinydiff.denoisers.LinearPath``). The **conditional velocity** is the time derivative of one path,

.. math:: u_t(x_t\mid x_0, \varepsilon) = \frac{d x_t}{dt} = \varepsilon - x_0,

so the velocity points *from data to noise* and sampling integrates :math:`dx/dt = v(x, t)` from ``t = 1``
down to ``t = 0`` (``dt < 0``). The **marginal velocity** is its conditional mean,

.. math:: v^*(x, t) = \mathbb E[\varepsilon - x_0\mid x_t = x] = \frac{x - \mathbb E[x_0\mid x_t = x]}{t}
          = -\frac{x + t\,\nabla\log p_t(x)}{1 - t},

and it generates the same marginals :math:`p_t` as the conditional paths (the continuity equation). diffusers'
``FlowMatchEulerDiscreteScheduler`` names ``t`` "sigma" (it runs 1 → 0, ``scale_noise`` computes
:math:`\sigma\varepsilon + (1-\sigma)x_0`, and the network predicts :math:`\varepsilon - x_0`); its ``timestep`` is
:math:`1000\,\sigma`. Rectified flow (Liu et al.) writes the same line with time reversed
(:math:`X_t = tX_1 + (1-t)X_0`, :math:`X_0` noise) and the velocity :math:`X_1 - X_0` = data − noise, the negative of ours.

Velocity callables are ``velocity_fn(x, t) -> v`` with ``t`` a float tensor ``(B,)`` in ``[0, 1]`` (dtype and
device of ``x``); :func:`mixture_velocity_fn` gives the exact one of a :class:`tinydiff.data.GaussianMixture`.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from . import validation
from .utils import device_of, expand_to, progress, start_noise, table_on

__all__ = [
    "xt",
    "conditional_velocity",
    "x0_from_velocity",
    "eps_from_velocity",
    "velocity_from_x0",
    "velocity_from_score",
    "mixture_velocity",
    "mixture_velocity_fn",
    "cfm_loss",
    "reflow_loss",
    "fm_loss",
    "shift_time",
    "time_grid",
    "logit_normal_log_density",
    "sample_time",
    "step",
    "sample",
    "to_linear",
    "from_linear",
    "linear_times",
    "velocity_fn_from_eps_fn",
    "ode_pairs",
    "straightness",
    "TIME_SAMPLINGS",
]

TIME_SAMPLINGS = ("uniform", "logit_normal")


# ---------------------------------------------------------------------------------- input checks
def _t(t, x: torch.Tensor, name: str = "t") -> torch.Tensor:
    """``t`` (a number or a ``(B,)`` tensor in [0, 1]) as a tensor broadcastable against ``x``."""
    if isinstance(t, np.ndarray):
        t = torch.from_numpy(t)
    if t is None or isinstance(t, (bool, complex, str, bytes)):
        raise ValueError(f"{name} must hold continuous times in [0, 1]; got {validation.describe(t)}")
    try:
        t = torch.as_tensor(t, dtype=torch.float64 if not isinstance(t, torch.Tensor) else None)
    except (TypeError, ValueError, RuntimeError):
        raise ValueError(f"{name} must hold continuous times in [0, 1]; got {validation.describe(t)}") from None
    if t.ndim > 1 or (t.ndim == 1 and t.shape[0] not in (1, x.shape[0] if x.ndim else 1)):
        raise ValueError(f"{name} must be a number or have shape (B,) with B = {x.shape[0] if x.ndim else 1} (the batch "
                         f"of x); got {validation.describe(t)}")
    if t.dtype == torch.bool or not (t.is_floating_point() or t.dtype in (torch.int32, torch.int64)):
        raise ValueError(f"{name} must hold continuous times in [0, 1]; got {validation.describe(t)}")
    if t.numel() and (not bool(torch.isfinite(t).all()) or float(t.min()) < 0 or float(t.max()) > 1):
        raise ValueError(f"{name} must lie in [0, 1] (0 = data, 1 = noise); got values from "
                         f"{float(t.min()):.4g} to {float(t.max()):.4g}")
    return expand_to(t, x)


def _data(name, value):
    return validation.tensor(name, value)


def _same(name, value, like, like_name):
    value = validation.tensor(name, value)
    if tuple(value.shape) != tuple(like.shape):
        raise ValueError(f"{name} must have the shape of {like_name}, {tuple(like.shape)}; got {validation.describe(value)}")
    return value


def _model(name, model):
    if not callable(model):
        raise TypeError(f"{name} must be a callable {name}(x, t) (a network); got {validation.describe(model)}")
    return model


def _pred(name, out, like):
    """What a model returned in a loss: a tensor of ``like``'s shape (its dtype may differ under autocast)."""
    if out is None:
        raise TypeError(f"{name} returned None: did it forget to `return` its prediction?")
    if not isinstance(out, torch.Tensor):
        raise TypeError(f"{name} must return a torch.Tensor of shape {tuple(like.shape)}; it returned "
                        f"{validation.describe(out)}")
    if tuple(out.shape) != tuple(like.shape):
        raise ValueError(f"the {name} returned shape {tuple(out.shape)}, expected {tuple(like.shape)} (same as x0)")
    return out


def _device(device):
    if device is None:
        return None
    if isinstance(device, int) and not isinstance(device, bool):
        raise ValueError("device must be a device name like 'cpu' or 'cuda' or a torch.device; "
                         f"got {validation.describe(device)}")
    try:
        return torch.device(device)
    except (TypeError, RuntimeError, ValueError):
        raise ValueError(f"device must be a device name like 'cpu' or 'cuda' or a torch.device; got "
                         f"{validation.describe(device)}") from None


def _coef(name, c, x):
    if isinstance(c, np.ndarray):
        c = torch.from_numpy(c)
    if isinstance(c, torch.Tensor):
        if c.is_complex() or c.dtype == torch.bool:
            raise ValueError(f"{name} must be a real scalar or (B,) tensor; got {validation.describe(c)}")
        if c.ndim > 1 or (c.ndim == 1 and c.shape[0] not in (1, x.shape[0] if x.ndim else 1)):
            raise ValueError(f"{name} must be a scalar or have shape (B,) with B = {x.shape[0] if x.ndim else 1}; got "
                             f"{validation.describe(c)}")
        return c
    return validation.number(name, c)


# ---------------------------------------------------------------------------------- the path
def xt(x0: torch.Tensor, eps: torch.Tensor, t) -> torch.Tensor:
    r"""A point of the linear path :math:`x_t = (1 - t)\,x_0 + t\,\varepsilon` (diffusers' ``scale_noise``)."""
    x0 = _data("x0", x0)
    eps = _same("eps", eps, x0, "x0")
    t = _t(t, x0)
    return (1 - t) * x0 + t * eps


def conditional_velocity(x0: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    r"""The conditional velocity :math:`u_t(x_t\mid x_0,\varepsilon) = dx_t/dt = \varepsilon - x_0` (the same at every ``t``)."""
    x0 = _data("x0", x0)
    eps = _same("eps", eps, x0, "x0")
    return eps - x0


def x0_from_velocity(x: torch.Tensor, v: torch.Tensor, t) -> torch.Tensor:
    r""":math:`\hat x_0 = x_t - t\,v` (from :math:`x_t = (1-t)x_0 + t\varepsilon` and :math:`v = \varepsilon - x_0`)."""
    x = _data("x", x)
    v = _same("v", v, x, "x")
    return x - _t(t, x) * v


def eps_from_velocity(x: torch.Tensor, v: torch.Tensor, t) -> torch.Tensor:
    r""":math:`\hat\varepsilon = x_t + (1 - t)\,v`."""
    x = _data("x", x)
    v = _same("v", v, x, "x")
    return x + (1 - _t(t, x)) * v


def velocity_from_x0(x: torch.Tensor, x0: torch.Tensor, t) -> torch.Tensor:
    r""":math:`v = (x_t - \hat x_0)/t`; with :math:`\hat x_0 = \mathbb E[x_0\mid x_t]` this is the marginal velocity.
    Needs ``t > 0``."""
    x = _data("x", x)
    x0 = _same("x0", x0, x, "x")
    t = _t(t, x)
    if bool((t <= 0).any()):
        raise ValueError("velocity_from_x0 divides by t: every t must be > 0 (at t = 0 the velocity is "
                         "E[eps] - x = -x, see mixture_velocity)")
    return (x - x0) / t


def velocity_from_score(x: torch.Tensor, score: torch.Tensor, t) -> torch.Tensor:
    r""":math:`v = -(x + t\,\nabla\log p_t(x))/(1 - t)`: Tweedie's :math:`\hat x_0 = (x + t^2\nabla\log p_t)/(1-t)`
    put into :math:`(x - \hat x_0)/t`. Needs ``t < 1``."""
    x = _data("x", x)
    score = _same("score", score, x, "x")
    t = _t(t, x)
    if bool((t >= 1).any()):
        raise ValueError("velocity_from_score divides by 1 - t: every t must be < 1")
    return -(x + t * score) / (1 - t)


def mixture_velocity(gm, x: torch.Tensor, t) -> torch.Tensor:
    r"""The exact marginal velocity of a Gaussian mixture (the oracle ``gm``) on the linear path:

    .. math:: v^*(x, t) = \frac{x - \mathbb E[x_0\mid x_t = x]}{t},

    with the posterior mean of :math:`Y = (1-t)X + t\varepsilon` from :meth:`GaussianMixture.posterior_mean`
    (``a = 1 - t``, ``s = t``); at ``t = 0`` its limit :math:`\mathbb E[\varepsilon] - x = -x`. Computed in float64,
    returned in ``x``'s dtype."""
    if not callable(getattr(gm, "posterior_mean", None)):
        raise TypeError(f"gm must be a tinydiff.data.GaussianMixture; got {validation.describe(gm)}")
    x = _data("x", x)
    x64 = x.to(torch.float64)
    t = _t(t, x64)
    tb = t.expand(x.shape[0], *([1] * (x.ndim - 1))).reshape(-1)
    safe = torch.where(tb > 0, tb, torch.ones_like(tb))
    x0 = gm.posterior_mean(x64, 1 - tb, tb)
    v = (x64 - x0) / expand_to(safe, x64)
    v = torch.where(expand_to(tb > 0, x64).bool(), v, -x64)
    return v.to(x.dtype)


def mixture_velocity_fn(gm):
    """``velocity_fn(x, t)`` of the exact marginal velocity of ``gm`` (:func:`mixture_velocity`), for :func:`sample`."""

    def velocity_fn(x, t):
        return mixture_velocity(gm, x, t)

    return velocity_fn


# ---------------------------------------------------------------------------------- losses
def cfm_loss(model, x0: torch.Tensor, *, noise: torch.Tensor | None = None, t=None, time_sampling: str = "uniform",
             loc: float = 0.0, scale: float = 1.0, shift: float = 1.0, model_kwargs=None,
             reduction: str = "mean") -> torch.Tensor:
    r"""The conditional flow-matching loss
    :math:`\mathcal L_{\mathrm{CFM}} = \mathbb E_{t,x_0,\varepsilon}\,\|v_\theta(x_t, t) - (\varepsilon - x_0)\|^2`,
    summed over dimensions and averaged over the batch, :math:`x_t = (1-t)x_0 + t\varepsilon`.

    Its gradient equals that of the marginal loss :math:`\mathbb E_{t,x_t}\|v_\theta - v^*\|^2` (:func:`fm_loss`):
    the two differ by :math:`\mathbb E\|u - v^*\|^2`, which does not depend on :math:`\theta`.
    ``noise`` defaults to fresh :math:`\varepsilon\sim\mathcal N(0, I)`; passing coupled pairs ``(x0, noise)`` gives
    the reflow loss. ``t`` defaults to draws from :func:`sample_time` (``time_sampling``, ``loc``, ``scale``,
    ``shift``). ``model(x_t, t, **model_kwargs)`` is called with ``t`` a float tensor ``(B,)``.
    """
    validation.choice("reduction", reduction, ("mean", "none"))
    model = _model("model", model)
    x0 = validation.tensor("x0", x0, ndim=tuple(range(2, 6)))
    validation.choice("time_sampling", time_sampling, TIME_SAMPLINGS)
    if model_kwargs is not None and not isinstance(model_kwargs, dict):
        raise TypeError(f"model_kwargs must be a dict of keyword arguments or None; got {validation.describe(model_kwargs)}")
    B = x0.shape[0]
    if noise is None:
        noise = torch.randn_like(x0)
    else:
        noise = _same("noise", noise, x0, "x0")
    if t is None:
        t = sample_time(B, time_sampling, loc=loc, scale=scale, shift=shift, device=x0.device)
    t = torch.as_tensor(t).to(device=x0.device, dtype=x0.dtype)
    if t.ndim == 0:
        t = t.expand(B)
    if t.shape != (B,):
        raise ValueError(f"t must be a number or have shape ({B},); got {tuple(t.shape)}")
    try:
        out = model(xt(x0, noise, t), t, **(model_kwargs or {}))
    except (ValueError, TypeError) as exc:
        raise type(exc)(f"the model refused x_t made from x0 ({validation.describe(x0)}): {exc}") from exc
    pred = _pred("model", out, x0)
    per_sample = (pred - conditional_velocity(x0, noise)).pow(2).flatten(1).sum(1)
    return per_sample if reduction == "none" else per_sample.mean()


def reflow_loss(model, batch, **kwargs) -> torch.Tensor:
    r"""The loss of rectified flow's reflow step on coupled pairs ``batch = (x0, x1)`` from :func:`ode_pairs`:
    :func:`cfm_loss` with the noise fixed to the coupled :math:`x_1` (straight lines between the ODE's own pairs)."""
    if not isinstance(batch, (tuple, list)) or len(batch) != 2:
        raise ValueError("reflow_loss needs batch = (x0, x1), pairs from tinydiff.flow.ode_pairs")
    x0, x1 = batch
    return cfm_loss(model, x0, noise=x1, **kwargs)


def fm_loss(model, x: torch.Tensor, t: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    r"""The marginal flow-matching loss :math:`\mathbb E\,\|v_\theta(x_t, t) - v^*(x_t, t)\|^2` on given points
    ``x`` ``(B, ...)`` at times ``t`` ``(B,)`` with the exact marginal velocity ``target`` (e.g. :func:`mixture_velocity`).
    Not trainable in practice (:math:`v^*` is unknown); here to check that it has the gradient of :func:`cfm_loss`."""
    model = _model("model", model)
    x = _data("x", x)
    target = _same("target", target, x, "x")
    pred = _pred("model", model(x, t), x)
    return (pred - target).pow(2).flatten(1).sum(1).mean()


# ---------------------------------------------------------------------------------- time sampling and grids
def shift_time(t, shift: float) -> torch.Tensor:
    r"""SD3's timestep shift :math:`t' = \dfrac{\alpha t}{1 + (\alpha - 1)t}` (diffusers' ``shift``): for
    :math:`\alpha > 1` it spends more time at high noise. It is a shift of the log-SNR,
    :math:`\operatorname{logit} t' = \operatorname{logit} t + \log\alpha`, i.e.
    :math:`\lambda' = \lambda - 2\log\alpha` with :math:`\lambda = 2\log\frac{1-t}{t}`."""
    shift = validation.number("shift", shift, low=0, strict_low=True)
    if isinstance(t, np.ndarray):
        t = torch.from_numpy(t)
    if isinstance(t, torch.Tensor):
        if t.is_complex() or t.dtype == torch.bool:
            raise ValueError(f"t must hold times in [0, 1]; got {validation.describe(t)}")
    else:
        t = validation.number("t", t)
    t = torch.as_tensor(t, dtype=torch.float64 if not isinstance(t, torch.Tensor) else None)
    return shift * t / (1 + (shift - 1) * t)


def time_grid(n_steps: int, shift: float = 1.0) -> torch.Tensor:
    r"""The ``n_steps + 1`` decreasing times :math:`t_i = \mathrm{shift}(1 - i/n)`, ``i = 0..n``, from 1 (noise) to
    0 (data), float64. With ``shift`` this is the grid of diffusers' ``FlowMatchEulerDiscreteScheduler`` given
    ``sigmas = 1 - i/n`` (its default grid stops the evaluations at ``1/num_train_timesteps`` instead of ``1/n``)."""
    n_steps = validation.integer("n_steps", n_steps, low=1)
    return shift_time(1 - torch.arange(n_steps + 1, dtype=torch.float64) / n_steps, shift)


def logit_normal_log_density(t, loc: float = 0.0, scale: float = 1.0) -> torch.Tensor:
    r"""SD3's logit-normal density of the training time,
    :math:`\pi(t; m, s) = \dfrac{1}{s\sqrt{2\pi}}\,\dfrac{1}{t(1-t)}
    \exp\!\Big(-\dfrac{(\operatorname{logit} t - m)^2}{2s^2}\Big)`,
    as a log-density (float64), for ``t`` in (0, 1)."""
    loc = validation.number("loc", loc)
    scale = validation.number("scale", scale, low=0, strict_low=True)
    if isinstance(t, np.ndarray):
        t = torch.from_numpy(t)
    if isinstance(t, torch.Tensor):
        if not t.is_floating_point():
            raise ValueError(f"t must hold floating times in (0, 1); got {validation.describe(t)}")
    else:
        t = validation.number("t", t, low=0, strict_low=True, high=1)
    t = torch.as_tensor(t, dtype=torch.float64)
    if t.numel() and not bool(((t > 0) & (t < 1)).all()):
        raise ValueError(f"t must lie in (0, 1) (the logit-normal density is defined there); got {validation.describe(t)}")
    z = (torch.log(t) - torch.log1p(-t) - loc) / scale
    return -0.5 * z**2 - math.log(scale * math.sqrt(2 * math.pi)) - torch.log(t) - torch.log1p(-t)


def sample_time(n: int, kind: str = "uniform", *, loc: float = 0.0, scale: float = 1.0, shift: float = 1.0,
                generator: torch.Generator | None = None, device=None) -> torch.Tensor:
    r"""``n`` training times in (0, 1): ``"uniform"`` :math:`t\sim\mathcal U(0,1)` or ``"logit_normal"``
    :math:`t = \mathrm{sigmoid}(m + s\,z)`, :math:`z\sim\mathcal N(0,1)` (SD3's default: :math:`m = 0, s = 1`);
    then :func:`shift_time` by ``shift``. Drawn in float64 on the CPU from ``generator`` and moved to ``device``
    (float32 there)."""
    n = validation.integer("n", n, low=1)
    validation.choice("kind", kind, TIME_SAMPLINGS)
    loc = validation.number("loc", loc)
    scale = validation.number("scale", scale, low=0, strict_low=True)
    device = _device(device)
    if kind == "uniform":
        t = torch.rand(n, generator=generator, dtype=torch.float64)
    else:
        t = torch.sigmoid(loc + scale * torch.randn(n, generator=generator, dtype=torch.float64))
    t = shift_time(t, shift)
    return t.to(device=torch.device("cpu") if device is None else device, dtype=torch.float32)


# ---------------------------------------------------------------------------------- the sampler
def step(x: torch.Tensor, v: torch.Tensor, t, t_next) -> torch.Tensor:
    r"""One Euler step of the flow ODE :math:`dx/dt = v`: :math:`x_{t'} = x_t + (t' - t)\,v` (``t' < t`` when
    sampling; diffusers' ``prev_sample = sample + (sigma_next - sigma) * model_output``)."""
    x = _data("x", x)
    v = _same("v", v, x, "x")
    return x + (_t(t_next, x, "t_next") - _t(t, x)) * v


def _check_times(times) -> torch.Tensor:
    if times is None or isinstance(times, (str, bytes, bool)):
        raise ValueError(f"times must be at least 2 finite values in [0, 1]; got {validation.describe(times)}")
    try:
        times = torch.as_tensor(times, dtype=torch.float64).flatten().cpu()
    except (TypeError, ValueError, RuntimeError):
        raise ValueError(f"times must be at least 2 finite values in [0, 1]; got {validation.describe(times)}") from None
    if times.numel() < 2 or not bool(torch.isfinite(times).all()) or float(times.min()) < 0 or float(times.max()) > 1:
        raise ValueError("times must be at least 2 finite values in [0, 1]")
    if not bool((times[1:] < times[:-1]).all()):
        raise ValueError("times must decrease strictly (from noise, t near 1, to data, t = 0)")
    return times


@torch.no_grad()
def sample(velocity_fn, shape, n_steps: int | None = None, *, x_T: torch.Tensor | None = None,
           generator: torch.Generator | None = None, progress_bar: bool = True, callback=None, device=None,
           shift: float = 1.0, times=None) -> torch.Tensor:
    r"""Sample the flow ODE :math:`dx/dt = v(x, t)` with ``n_steps`` Euler steps (:func:`step`) from
    :math:`x_1\sim\mathcal N(0, I)` at ``t = 1`` down to ``t = 0`` on :func:`time_grid` ``(n_steps, shift)``, or on the
    decreasing ``times`` given (then ``n_steps = len(times) - 1``).

    ``callback(i, t, x)`` is called with ``i = 0`` at the start and ``i = 1..n_steps`` after each step (``t`` the
    time reached); ``td.utils.Trajectory()`` keeps them. Noise is drawn on the CPU from ``generator``; the
    sampler runs on ``device``, default the device of ``x_T`` or of ``velocity_fn``. ``velocity_fn(x, t)`` gets
    ``t`` as a tensor ``(B,)`` of ``x``'s dtype.
    """
    if times is None:
        if n_steps is None:
            raise ValueError("give n_steps (the number of Euler steps) or times (a decreasing grid)")
        times = time_grid(n_steps, shift)
    else:
        times = _check_times(times)
        if n_steps is not None and validation.integer("n_steps", n_steps, low=1) != times.numel() - 1:
            raise ValueError(f"n_steps = {n_steps} but times has {times.numel()} values (n_steps + 1 are needed)")
    shape = validation.shape("shape", shape)
    validation.callback("callback", callback)
    if not callable(velocity_fn):
        raise TypeError(f"velocity_fn must be a callable velocity_fn(x, t); got {validation.describe(velocity_fn)}")
    device = device_of(velocity_fn, x_T) if device is None else _device(device)
    x = start_noise(shape, generator=generator, device=device, x_T=x_T)
    if callback is not None:
        callback(0, float(times[0]), x)
    pairs = list(zip(times[:-1].tolist(), times[1:].tolist()))
    for i, (t, t_next) in enumerate(progress(pairs, desc="flow ODE (Euler)", disable=not progress_bar), start=1):
        v = velocity_fn(x, torch.full((shape[0],), t, dtype=x.dtype, device=device))
        if i == 1:
            validation.output("velocity_fn", v, like=x)
        x = x + (t_next - t) * v
        if callback is not None:
            callback(i, t_next, x)
    return x


# ---------------------------------------------------------------------------------- the bridge to DDIM / VP
def to_linear(x: torch.Tensor, alpha, sigma) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Any path :math:`x = \alpha x_0 + \sigma\varepsilon` (e.g. VP: :math:`\alpha=\sqrt{\bar\alpha_t}`,
    :math:`\sigma=\sqrt{1-\bar\alpha_t}`) is the linear path after a rescaling:

    .. math:: x_{\mathrm{fm}} = \frac{x}{\alpha + \sigma} = (1 - t)\,x_0 + t\,\varepsilon,
              \qquad t = \frac{\sigma}{\alpha + \sigma}.

    Both have the same signal-to-noise ratio :math:`\alpha/\sigma = (1-t)/t`. Returns ``(x_fm, t)``."""
    x = _data("x", x)
    a = torch.as_tensor(_coef("alpha", alpha, x), dtype=torch.float64)
    s = torch.as_tensor(_coef("sigma", sigma, x), dtype=torch.float64)
    return x / expand_to(a + s, x), s / (a + s)


def from_linear(x_fm: torch.Tensor, t, alpha, sigma) -> torch.Tensor:
    r"""The inverse of :func:`to_linear`: :math:`x = (\alpha + \sigma)\,x_{\mathrm{fm}}` (``t`` is only checked
    against :math:`\sigma/(\alpha+\sigma)`)."""
    x_fm = _data("x_fm", x_fm)
    a = torch.as_tensor(_coef("alpha", alpha, x_fm), dtype=torch.float64)
    s = torch.as_tensor(_coef("sigma", sigma, x_fm), dtype=torch.float64)
    if not torch.allclose(torch.as_tensor(_coef("t", t, x_fm), dtype=torch.float64), s / (a + s), atol=1e-9):
        raise ValueError("t does not equal sigma / (alpha + sigma): these are not the same noise level")
    return x_fm * expand_to(a + s, x_fm)


def linear_times(sched, ts) -> torch.Tensor:
    r"""The linear-path times :math:`t = \sigma/(\alpha+\sigma)` of discrete VP timesteps ``ts`` (ints in 0..T;
    ``0`` gives ``t = 0``): :math:`\alpha = \sqrt{\bar\alpha}`, :math:`\sigma = \sqrt{1-\bar\alpha}`. Float64."""
    sched = validation.schedule("sched", sched)
    ts = validation.timesteps("ts", ts, sched.T).cpu()
    if ts.numel() and (int(ts.min()) < 0 or int(ts.max()) > sched.T):
        raise ValueError(f"ts must lie in 0..T = 0..{sched.T}")
    ab = sched.alpha_bar[ts]
    a, s = ab.sqrt(), (1 - ab).sqrt()
    return s / (a + s)


def velocity_fn_from_eps_fn(eps_fn, sched):
    r"""Run a discrete-time VP :math:`\varepsilon`-network in the flow sampler: at a linear time ``t`` that is one of
    :func:`linear_times` ``(sched, k)``, :math:`x_{\mathrm{vp}} = (\alpha_k + \sigma_k)\,x`,
    :math:`\hat\varepsilon = \varepsilon_\theta(x_{\mathrm{vp}}, k)`,
    :math:`\hat x_0 = (x_{\mathrm{vp}} - \sigma_k\hat\varepsilon)/\alpha_k` and :math:`v = \hat\varepsilon - \hat x_0`.
    Times off the table raise ``ValueError`` (a discrete network knows only its ``T`` noise levels). Euler steps of
    this velocity on ``linear_times(sched, [tau_S, ..., 0])`` are DDIM (``eta = 0``) steps on ``tau``, step for step."""
    if not callable(eps_fn):
        raise TypeError(f"eps_fn must be a callable eps_fn(x, t); got {validation.describe(eps_fn)}")
    sched = validation.schedule("sched", sched)
    table = linear_times(sched, torch.arange(sched.T + 1))

    def velocity_fn(x, t):
        # the lookup runs on t's device; the value checks (a host read) only for CPU times, never on an accelerator
        t64 = t.detach().to(torch.float64).reshape(-1)
        tab = table_on(table, t64.device)
        k = torch.searchsorted(tab, t64).clamp(0, sched.T)
        k_lo = (k - 1).clamp_min(0)
        k = torch.where((tab[k_lo] - t64).abs() < (tab[k] - t64).abs(), k_lo, k)
        if t64.device.type == "cpu":
            if bool(((tab[k] - t64).abs() > 1e-6).any()):
                raise ValueError("velocity_fn_from_eps_fn: t is not one of the schedule's noise levels "
                                 "sigma/(alpha + sigma); sample on tinydiff.flow.linear_times(sched, timesteps)")
            if bool((k == 0).any()):
                raise ValueError("velocity_fn_from_eps_fn: t = 0 (clean data) has no noise to predict")
        ab = table_on(sched.alpha_bar, k.device)[k]
        a, s = ab.sqrt(), (1 - ab).sqrt()
        x_vp = x * expand_to(a + s, x)
        eps = eps_fn(x_vp, k.to(x.device))
        x0 = (x_vp - expand_to(s, x) * eps) / expand_to(a, x)
        return eps - x0

    return velocity_fn


# ---------------------------------------------------------------------------------- rectified flow
@torch.no_grad()
def ode_pairs(velocity_fn, n: int, shape_rest, n_steps: int, *, generator: torch.Generator | None = None,
              batch_size: int = 4096, device=None, progress_bar: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    r"""The coupling of rectified flow's reflow: ``n`` noises :math:`x_1\sim\mathcal N(0,I)` and the data points
    :math:`x_0 = \mathrm{ODE}(x_1)` the flow sends them to (:func:`sample`, ``n_steps`` Euler steps). Returns
    ``(x0, x1)`` on the CPU; train on them with :func:`reflow_loss`."""
    n = validation.integer("n", n, low=1)
    shape_rest = tuple(validation.shape("shape_rest", shape_rest))
    batch_size = validation.integer("batch_size", batch_size, low=1)
    device = _device(device)
    if not callable(velocity_fn):
        raise TypeError(f"velocity_fn must be a callable velocity_fn(x, t); got {validation.describe(velocity_fn)}")
    x0s, x1s = [], []
    for start in range(0, n, batch_size):
        b = min(batch_size, n - start)
        x1 = torch.randn((b, *shape_rest), generator=generator)
        dev = device_of(velocity_fn) if device is None else torch.device(device)
        x0 = sample(velocity_fn, x1.shape, n_steps, x_T=x1.to(dev), progress_bar=progress_bar)
        x0s.append(x0.cpu())
        x1s.append(x1)
    return torch.cat(x0s), torch.cat(x1s)


def straightness(traj: torch.Tensor, times) -> torch.Tensor:
    r"""Liu et al.'s straightness of ODE paths, :math:`S = \int_0^1\mathbb E\,\|(x_1 - x_0) - \dot x_t\|^2\,dt`
    (0 exactly when every path is a straight line run at constant speed), from a trajectory ``traj``
    ``(n+1, B, ...)`` at decreasing ``times`` ``(n+1,)`` from 1 to 0 (e.g. ``td.utils.Trajectory().stack()`` of
    :func:`sample`). :math:`\dot x` on each interval is the difference quotient (the Euler velocity), so
    :math:`S = \sum_i \Delta t_i\,\|v_i\|^2 - \|x_1 - x_0\|^2` exactly when the times run from 1 to 0. Returns the
    per-sample values ``(B,)`` (float64)."""
    times = _check_times(times)
    traj = validation.tensor("traj", traj, ndim=tuple(range(2, 7))).double().cpu()
    if traj.shape[0] != times.numel():
        raise ValueError(f"traj has {traj.shape[0]} states but times has {times.numel()} values")
    dt = times[:-1] - times[1:]  # > 0
    vel = (traj[:-1] - traj[1:]) / expand_to(dt, traj[1:])  # dx/dt on each interval
    chord = (traj[0] - traj[-1]) / (times[0] - times[-1])  # the straight line's velocity
    dev2 = (chord.unsqueeze(0) - vel).pow(2).flatten(2).sum(2)  # (n, B)
    return (dt[:, None] * dev2).sum(0)
