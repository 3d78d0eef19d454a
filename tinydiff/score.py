r"""The score function, Tweedie's formula and Langevin dynamics (lesson 05).

The *score* of a density is :math:`\nabla_x\log p(x)`. For the noised marginal of diffusion,
:math:`x_t = \sqrt{\bar\alpha_t}\,x_0 + \sqrt{1-\bar\alpha_t}\,\varepsilon`, Tweedie's formula says

.. math:: \mathbb E[x_0\mid x_t] = \frac{x_t + (1-\bar\alpha_t)\,\nabla\log p(x_t)}{\sqrt{\bar\alpha_t}},
          \qquad \mathbb E[\varepsilon\mid x_t] = -\sqrt{1-\bar\alpha_t}\,\nabla\log p(x_t),

so an :math:`\varepsilon`-network is a score model in disguise (the conversions live in
:mod:`tinydiff.convert`; this module uses them and writes none of its own).

Langevin dynamics samples a density from its score alone:
:math:`x \leftarrow x + \tfrac{\delta}{2}\nabla\log p(x) + \sqrt{\delta}\,z`. Annealed Langevin dynamics
(Song & Ermon, 2019) runs it over decreasing noise levels :math:`\sigma_1 > \dots > \sigma_L` of the
*variance-exploding* (VE) view :math:`\tilde x = x_0 + \sigma\varepsilon`. The VE and the VP (DDPM) views
are the same family up to a rescaling: :math:`x_t = \sqrt{\bar\alpha_t}\,(x_0 + \sigma_t\varepsilon)` with

.. math:: \sigma_t^2 = \frac{1-\bar\alpha_t}{\bar\alpha_t}, \qquad
          \nabla\log p^{\mathrm{VE}}_{\sigma_t}(\tilde x)
          = \sqrt{\bar\alpha_t}\,\nabla\log p^{\mathrm{VP}}_t(\sqrt{\bar\alpha_t}\,\tilde x)
          = -\varepsilon^*(x_t, t)/\sigma_t .
"""

from __future__ import annotations

import math

import torch

from . import convert, validation
from .ddpm import _out, q_sample
from .utils import check_device, check_same_shape, device_of, noise_like, progress, sampler_start

__all__ = [
    "gaussian_score",
    "score_autograd",
    "tweedie_x0",
    "sigma_from_alpha_bar",
    "alpha_bar_from_sigma",
    "timesteps_for_sigmas",
    "ve_score_fn_from_eps_fn",
    "geometric_sigmas",
    "score_error_per_t",
    "langevin_step",
    "langevin",
    "annealed_langevin",
    "ula_gaussian_variance",
    "component_fractions",
    "total_variation",
]


# ---------------------------------------------------------------------------------------- helpers
def _check_float(name: str, x) -> torch.Tensor:
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise ValueError(f"{name} must be a floating-point torch.Tensor; got {validation.describe(x)}. "
                         f"Use torch.as_tensor(..., dtype=torch.float32).")
    return validation.tensor(name, x, ndim=tuple(range(1, 9)))


def _positive(name: str, value) -> float:
    return validation.number(f"{name} (a positive number)", value, low=0, strict_low=True)


def _count(name: str, value, low: int) -> int:
    return validation.integer(name, value, low=low)


_float64 = validation.reals  # a number, list or tensor of reals as float64, refused by name


def _alpha_bar(alpha_bar_t, name: str = "alpha_bar_t") -> torch.Tensor:
    ab = _float64(name, alpha_bar_t)
    if ab.numel() and (not torch.isfinite(ab).all() or (ab <= 0).any() or (ab > 1).any()):
        raise ValueError(
            f"{name} must lie in (0, 1] (alpha_bar_t = 0 is pure noise: x_t says nothing about x_0); "
            f"got values from {ab.min().item():.3g} to {ab.max().item():.3g}"
        )
    return ab


# ---------------------------------------------------------------------------------------- the score
def gaussian_score(x: torch.Tensor, mean, var) -> torch.Tensor:
    r"""Score of an isotropic Gaussian: :math:`\nabla_x\log\mathcal N(x;\mu,\sigma^2 I) = -(x-\mu)/\sigma^2`.

    ``mean`` broadcasts against ``x`` ``(B, D)``; ``var`` is the scalar :math:`\sigma^2 > 0`.
    """
    _check_float("x", x)
    var = _positive("var (the variance sigma^2)", var)
    mean = validation.broadcasts("mean", _float64("mean", mean), x)
    return -(x - mean.to(dtype=x.dtype, device=x.device)) / var


def score_autograd(log_prob_fn, x: torch.Tensor) -> torch.Tensor:
    r""":math:`\nabla_x\log p(x)` by automatic differentiation of ``log_prob_fn(x) -> (B,)``.

    The independent check of a closed-form score. Each sample's log-density depends on its own row of
    ``x`` only, so the gradient of the *sum* over the batch is the per-sample gradient.
    Works with gradients disabled around it (e.g. inside ``torch.no_grad()``).
    """
    _check_float("x", x)
    if not callable(log_prob_fn):
        raise TypeError(f"log_prob_fn must be a callable log_prob_fn(x) -> (B,); got {validation.describe(log_prob_fn)}")
    with torch.enable_grad():
        xg = x.detach().clone().requires_grad_(True)
        lp = log_prob_fn(xg)
        if not isinstance(lp, torch.Tensor) or tuple(lp.shape) != (x.shape[0],):
            shape = tuple(lp.shape) if isinstance(lp, torch.Tensor) else type(lp).__name__
            raise ValueError(
                f"log_prob_fn must return one log-density per sample, shape ({x.shape[0]},); got {shape}. "
                "Sum over the data dimensions inside log_prob_fn, not over the batch."
            )
        if not lp.requires_grad:
            raise ValueError("log_prob_fn's output does not depend on x through torch operations; "
                             "compute it with torch (not numpy, not .item()) so autograd can differentiate it")
        (grad,) = torch.autograd.grad(lp.sum(), xg)
    return grad


def tweedie_x0(xt: torch.Tensor, score: torch.Tensor, alpha_bar_t) -> torch.Tensor:
    r"""Tweedie's formula:
    :math:`\mathbb E[x_0\mid x_t] = \big(x_t + (1-\bar\alpha_t)\nabla\log p(x_t)\big)/\sqrt{\bar\alpha_t}`.

    ``alpha_bar_t`` is a scalar or a per-sample tensor ``(B,)`` in ``(0, 1]``. Written through
    :mod:`tinydiff.convert`: the score gives :math:`\varepsilon = -\sqrt{1-\bar\alpha_t}\,\nabla\log p`,
    and :math:`\hat x_0 = (x_t - \sqrt{1-\bar\alpha_t}\,\varepsilon)/\sqrt{\bar\alpha_t}`.
    """
    _check_float("xt", xt)
    score = validation.tensor("score", score)
    check_same_shape(xt=xt, score=score)
    ab = _alpha_bar(alpha_bar_t)
    return convert.x0_from_eps(xt, convert.eps_from_score(score, ab), ab)


# ---------------------------------------------------------------------------------------- VE <-> VP
def sigma_from_alpha_bar(alpha_bar) -> torch.Tensor:
    r"""The VE noise level of a VP step: :math:`\sigma_t = \sqrt{(1-\bar\alpha_t)/\bar\alpha_t}`
    (:math:`x_t/\sqrt{\bar\alpha_t} = x_0 + \sigma_t\varepsilon`). Returns float64."""
    ab = _alpha_bar(alpha_bar, "alpha_bar")
    return ((1 - ab) / ab).sqrt()


def alpha_bar_from_sigma(sigma) -> torch.Tensor:
    r"""The inverse map: :math:`\bar\alpha = 1/(1+\sigma^2)`. Returns float64."""
    s = _float64("sigma", sigma)
    if not torch.isfinite(s).all() or (s < 0).any():
        raise ValueError("sigma must be finite and >= 0")
    return 1 / (1 + s**2)


def timesteps_for_sigmas(sched, sigmas) -> torch.Tensor:
    r"""For each requested VE level :math:`\sigma`, the step ``t`` in ``1..T`` whose :math:`\sigma_t` is
    closest (in log scale). Returns a LongTensor; use ``sigma_from_alpha_bar(sched.alpha_bar[t])`` for
    the exact levels of those steps."""
    sched = validation.schedule("sched", sched)
    s = _float64("sigmas", sigmas).flatten()
    if not s.numel() or not torch.isfinite(s).all() or (s <= 0).any():
        raise ValueError("sigmas must be a non-empty list of positive, finite noise levels")
    table = sigma_from_alpha_bar(sched.alpha_bar[1:]).log()
    return (table[None, :] - s.log()[:, None]).abs().argmin(1) + 1


def ve_score_fn_from_eps_fn(eps_fn, sched, *, rtol: float = 1e-6):
    r"""Turn a VP denoiser ``eps_fn(x, t)`` into a VE score ``score_fn(x_tilde, sigma)`` for annealed Langevin:

    .. math:: \nabla\log p^{\mathrm{VE}}_{\sigma_t}(\tilde x) = \sqrt{\bar\alpha_t}\;
              \nabla\log p^{\mathrm{VP}}_t\big(\sqrt{\bar\alpha_t}\,\tilde x\big),\qquad
              \sigma_t^2 = (1-\bar\alpha_t)/\bar\alpha_t.

    ``sigma`` must be one of the schedule's levels :math:`\sigma_t` (pick them with :func:`timesteps_for_sigmas`);
    a discrete network knows no other noise level. The level table is built once (float64, on the host); a call
    looks ``sigma`` (a Python number) up there and touches the device only to run the network.
    """
    validation.schedule("sched", sched)
    table = sigma_from_alpha_bar(sched.alpha_bar[1:])
    sqrt_ab = sched.alpha_bar.sqrt().tolist()
    # sqrt(ab_t) * score_from_eps(eps, ab_t) = -eps * sqrt(ab_t) / sqrt(1 - ab_t) = -eps / sigma_t, one number per t
    # (from convert.score_from_eps on the float64 table, once), so a call multiplies by a Python float
    factor = (sched.alpha_bar[1:].sqrt() * convert.score_from_eps(torch.ones(sched.T, 1, dtype=torch.float64),
                                                                   sched.alpha_bar[1:])[:, 0]).tolist()

    def score_fn(x, sigma):
        sig = validation.number("sigma", sigma, low=0, strict_low=True)
        t_int = int((table - sig).abs().argmin()) + 1
        if abs(float(table[t_int - 1]) - sig) > rtol * sig:
            raise ValueError(
                f"sigma = {sig:.6g} is not a level of this schedule (nearest: sigma_{t_int} = "
                f"{float(table[t_int - 1]):.6g}); build the levels with timesteps_for_sigmas(sched, ...)"
            )
        t = torch.full((x.shape[0],), t_int, dtype=torch.long, device=x.device)
        return factor[t_int - 1] * eps_fn(sqrt_ab[t_int] * x, t)

    return score_fn


def geometric_sigmas(sigma_max: float, sigma_min: float, n: int) -> torch.Tensor:
    r"""``n`` noise levels :math:`\sigma_1 = \sigma_{\max} > \dots > \sigma_n = \sigma_{\min}` in geometric
    progression (constant ratio :math:`\sigma_{i}/\sigma_{i+1}`), as in Song & Ermon (2019). float64."""
    hi, lo = _positive("sigma_max", sigma_max), _positive("sigma_min", sigma_min)
    n = _count("n (the number of noise levels)", n, 1)
    if hi < lo or (n > 1 and hi == lo):
        raise ValueError(f"sigma_max ({hi}) must exceed sigma_min ({lo}): annealing goes from much noise to little")
    return torch.logspace(math.log10(hi), math.log10(lo), n, dtype=torch.float64)


# ---------------------------------------------------------------------------------------- learned scores
@torch.no_grad()
def score_error_per_t(eps_fn, mixture, sched, ts, n: int, generator: torch.Generator | None = None, *,
                      device=None) -> dict:
    r"""How far the score implied by an :math:`\varepsilon`-network is from the true score, at each ``t`` of ``ts``.

    For each ``t``: :math:`x_0\sim p_{\text{data}}` (the mixture), :math:`x_t\sim q(x_t\mid x_0)`,
    :math:`s_\theta = -\varepsilon_\theta(x_t,t)/\sqrt{1-\bar\alpha_t}` and :math:`s^* = \nabla\log q_t(x_t)` (exact).
    Returns a dict of float64 tensors, one entry per ``t``, each a mean over the ``n`` draws of a squared
    norm summed over dimensions:

    - ``score_mse`` (unweighted): :math:`\mathbb E\|s_\theta - s^*\|^2`;
    - ``eps_mse`` (weighted by :math:`\lambda_t = 1-\bar\alpha_t`):
      :math:`(1-\bar\alpha_t)\,\mathbb E\|s_\theta - s^*\|^2 = \mathbb E\|\varepsilon_\theta - \varepsilon^*\|^2`,
      the part of the :math:`\varepsilon`-loss that training can remove;
    - ``x0_mse`` (weighted by :math:`(1-\bar\alpha_t)^2/\bar\alpha_t`):
      :math:`\mathbb E\|\hat x_{0,\theta} - \mathbb E[x_0\mid x_t]\|^2`, the error of the Tweedie denoiser built
      from the network (it blows up as :math:`\bar\alpha_t\to 0`);
    - ``score_norm2``: :math:`\mathbb E\|s^*\|^2`, the scale to compare ``score_mse`` with;
    - ``t``: the timesteps.

    Noise is drawn on the CPU from ``generator``; the network runs on ``device`` (default: the model's device, else
    the CPU).
    """
    sched = validation.schedule("sched", sched)
    if not callable(eps_fn):
        raise TypeError(f"eps_fn must be a callable eps_fn(x, t); got {validation.describe(eps_fn)}")
    if not all(callable(getattr(mixture, k, None)) for k in ("sample", "score")):
        raise TypeError(f"mixture must be a td.data.GaussianMixture (with sample and score); got "
                        f"{validation.describe(mixture)}")
    try:
        ts = torch.as_tensor(ts).flatten()
    except (TypeError, ValueError, RuntimeError):
        ts = torch.empty(0)
    if ts.is_floating_point() or ts.dtype == torch.bool or not ts.numel():
        raise ValueError("ts must be a non-empty list of integer timesteps in 1..T")
    ts = sched.check_t(ts, ts.numel(), low=1)
    n = _count("n (samples per timestep)", n, 1)
    dev = device_of(eps_fn, fallback="cpu") if device is None else check_device("device", device)
    out = {k: torch.zeros(len(ts), dtype=torch.float64) for k in ("score_mse", "eps_mse", "x0_mse", "score_norm2")}
    for i, t_int in enumerate(ts.tolist()):
        x0 = mixture.sample(n, generator, dtype=torch.float64)
        eps = torch.randn(x0.shape, generator=generator, dtype=torch.float64)
        xt = q_sample(x0, t_int, eps, sched)
        ab = sched.alpha_bar[t_int]
        true = mixture.score(xt, ab.sqrt(), (1 - ab).sqrt())
        t = torch.full((n,), t_int, dtype=torch.long, device=dev)
        x_in = xt.float().to(dev)
        eps_hat = _out("eps_fn", eps_fn(x_in, t), x_in)
        model = convert.score_from_eps(eps_hat.double().cpu(), ab)
        err = (model - true).pow(2).sum(1).mean()
        out["score_mse"][i] = err
        out["eps_mse"][i] = (1 - ab) * err
        out["x0_mse"][i] = (1 - ab) ** 2 / ab * err
        out["score_norm2"][i] = true.pow(2).sum(1).mean()
    out["t"] = ts
    return out


# ---------------------------------------------------------------------------------------- Langevin
def langevin_step(x: torch.Tensor, score: torch.Tensor, step_size, noise: torch.Tensor) -> torch.Tensor:
    r"""One step of unadjusted Langevin dynamics: :math:`x + \tfrac{\delta}{2}\nabla\log p(x) + \sqrt{\delta}\,z`."""
    x, score = validation.tensor("x", x), validation.tensor("score", score)
    noise = validation.tensor("noise", noise)
    check_same_shape(x=x, score=score, noise=noise)
    delta = _positive("step_size (delta)", step_size)
    return x + 0.5 * delta * score + math.sqrt(delta) * noise


@torch.no_grad()
def langevin(score_fn, x: torch.Tensor, step_size: float, n_steps: int, *, generator: torch.Generator | None = None,
             progress_bar: bool = True, callback=None, device=None):
    r"""Unadjusted Langevin dynamics:
    ``n_steps`` of :math:`x \leftarrow x + \tfrac{\delta}{2}\nabla\log p(x) + \sqrt{\delta}\,z`.

    ``score_fn(x) -> score`` (shape of ``x``, checked at the first step); ``x`` holds the starting points
    ``(B, ...)``, one chain per row. For small :math:`\delta` and many steps the chains sample :math:`p` (the
    stationary law is biased by :math:`O(\delta)`; for a Gaussian see :func:`ula_gaussian_variance`).
    The sampler signature with the chains ``x`` as the start point: noise is drawn on the CPU from ``generator``
    and moved; ``device=None`` runs where the model in ``score_fn`` lives, else where ``x`` lives;
    ``callback(i, t, x)`` gets ``i = 0..n_steps`` with the Langevin time :math:`t = i\delta` (the update is
    Euler–Maruyama for :math:`dx = \tfrac12\nabla\log p\,dt + dw` with :math:`dt = \delta`).
    """
    x = validation.tensor("x", _check_float("x", x), finite=True)
    delta = _positive("step_size (delta)", step_size)
    n_steps = _count("n_steps", n_steps, 0)
    x, device = sampler_start(score_fn, None, x_T=x, generator=generator, device=device, callback=callback,
                              name="score_fn", data_start=True)
    half, root = 0.5 * delta, math.sqrt(delta)
    if callback is not None:
        callback(0, 0.0, x)
    for i in progress(range(1, n_steps + 1), desc="Langevin", disable=not progress_bar):
        score = score_fn(x)
        if i == 1:
            validation.output("score_fn", score, like=x)
        x = torch.add(x, score, alpha=half).add_(noise_like(x, generator), alpha=root)
        if callback is not None:
            callback(i, i * delta, x)
    return x


@torch.no_grad()
def annealed_langevin(score_fn, sigmas, x: torch.Tensor, *, steps_per_level: int, eps: float,
                      generator: torch.Generator | None = None, progress_bar: bool = True, callback=None,
                      device=None):
    r"""Annealed Langevin dynamics (Song & Ermon, 2019, Algorithm 1) in the VE view
    :math:`\tilde x = x_0 + \sigma\varepsilon`.

    For each level :math:`\sigma_i` (decreasing), take ``steps_per_level`` Langevin steps on
    :math:`p_{\sigma_i}` with step size :math:`\alpha_i = \epsilon\,\sigma_i^2/\sigma_L^2`:
    :math:`x \leftarrow x + \tfrac{\alpha_i}{2}\,s(x,\sigma_i) + \sqrt{\alpha_i}\,z`.
    ``score_fn(x, sigma) -> score`` with ``sigma`` a Python float (e.g. ``lambda x, s: mix.score(x, 1.0, s)``,
    or :func:`ve_score_fn_from_eps_fn` for a VP network). Start ``x`` from a wide distribution
    (e.g. :math:`\mathcal N(0, \sigma_1^2 I)`). The sampler signature with ``x`` as the start point (see
    :func:`langevin`): ``callback(i, sigma, x)`` gets ``i = 0`` with :math:`\sigma_1` and ``i = 1..L *
    steps_per_level`` with the level of that step; ``callback=td.utils.Trajectory(every=steps_per_level)`` keeps
    the start and the state after each level.
    """
    x = validation.tensor("x", _check_float("x", x), finite=True)
    sig = validation.tensor("sigmas", _float64("sigmas", sigmas), ndim=(0, 1)).reshape(-1)
    if not sig.numel() or not torch.isfinite(sig).all() or (sig <= 0).any():
        raise ValueError("sigmas must be a non-empty list of positive, finite noise levels")
    if sig.numel() > 1 and not (sig[1:] < sig[:-1]).all():
        raise ValueError("sigmas must be strictly decreasing (sigma_1 > ... > sigma_L): "
                         "anneal from much noise to little")
    steps = _count("steps_per_level", steps_per_level, 1)
    eps = _positive("eps (the step size at the last level)", eps)
    x, device = sampler_start(score_fn, None, x_T=x, generator=generator, device=device, callback=callback,
                              name="score_fn", data_start=True)
    levels = sig.tolist()
    sigma_L = levels[-1]
    if callback is not None:
        callback(0, levels[0], x)
    bar = progress(total=len(levels) * steps, desc="annealed Langevin", disable=not progress_bar)
    i = 0
    for sigma in levels:
        alpha = eps * sigma**2 / sigma_L**2
        half, root = 0.5 * alpha, math.sqrt(alpha)
        for _ in range(steps):
            i += 1
            score = score_fn(x, sigma)
            if i == 1:
                validation.output("score_fn", score, like=x)
            x = torch.add(x, score, alpha=half).add_(noise_like(x, generator), alpha=root)
            if callback is not None:
                callback(i, sigma, x)
            bar.update(1)
    bar.close()
    return x


def ula_gaussian_variance(var, step_size) -> float:
    r"""Stationary variance of unadjusted Langevin on :math:`\mathcal N(\mu,\sigma^2)` (per dimension):
    :math:`\sigma^2/(1 - \delta/(4\sigma^2))`.

    One step is :math:`x' = c\,x + (1-c)\mu + \sqrt\delta z` with :math:`c = 1-\delta/(2\sigma^2)`, so the
    stationary variance :math:`v` solves :math:`v = c^2 v + \delta`. It exceeds :math:`\sigma^2` by
    :math:`O(\delta)` (the discretisation bias) and exists only for :math:`\delta < 4\sigma^2`.
    """
    v, d = _positive("var", var), _positive("step_size", step_size)
    if d >= 4 * v:
        raise ValueError(f"Langevin on N(mu, {v:g}) diverges for step_size >= 4 var = {4 * v:g}; got {d:g}")
    return v / (1 - d / (4 * v))


# ---------------------------------------------------------------------------------------- measuring mode weights
def component_fractions(mixture, x: torch.Tensor) -> torch.Tensor:
    r"""The fraction of samples ``x`` ``(B, D)`` that fall in each component's basin (``(K,)`` float64):
    each sample goes to :math:`\arg\max_k p(k\mid x)`. Compare with ``mixture.weights``."""
    x = validation.tensor("x", _check_float("x", x), finite=True)  # a NaN sample would count as component 0
    if not callable(getattr(mixture, "component_posterior", None)):
        raise TypeError(f"mixture must be a td.data.GaussianMixture; got {validation.describe(mixture)}")
    k = mixture.component_posterior(x.double()).argmax(1)
    return torch.bincount(k.cpu(), minlength=mixture.K).double() / x.shape[0]


def total_variation(p, q) -> float:
    r"""Total-variation distance :math:`\tfrac12\sum_k |p_k - q_k|` between two probability vectors."""
    p, q = _float64("p", p), _float64("q", q)
    if p.shape != q.shape or p.ndim != 1:
        raise ValueError(f"p and q must be probability vectors of one length; "
                         f"got shapes {tuple(p.shape)}, {tuple(q.shape)}")
    return float(0.5 * (p - q).abs().sum())
