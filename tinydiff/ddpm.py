r"""DDPM (lesson 02): the forward process, its posterior, the loss, Algorithm 2 and the ELBO terms.

Notation: :math:`x_t = \sqrt{\bar\alpha_t}\,x_0 + \sqrt{1-\bar\alpha_t}\,\varepsilon` and

.. math:: q(x_{t-1}\mid x_t, x_0) = \mathcal N\Big(\tfrac{\sqrt{\bar\alpha_{t-1}}\beta_t}{1-\bar\alpha_t}x_0
          + \tfrac{\sqrt{\alpha_t}(1-\bar\alpha_{t-1})}{1-\bar\alpha_t}x_t,\;
          \tfrac{1-\bar\alpha_{t-1}}{1-\bar\alpha_t}\beta_t I\Big).

Every sampler takes a denoiser callable ``eps_fn(x, t) -> eps`` with ``t`` a LongTensor ``(B,)`` on the device of
``x``. Public functions validate their arguments once (:mod:`tinydiff.validation`); the sampling loop then runs on
coefficient tables computed once in float64 and read as Python numbers, with no host work per step.
"""

from __future__ import annotations

import math
import weakref

import torch

from . import convert, validation
from .utils import check_same_shape, expand_to, noise_like, progress, sampler_start, table_on

__all__ = [
    "q_sample",
    "q_step",
    "q_sample_steps",
    "q_posterior",
    "posterior_mean_coefs",
    "reverse_variance",
    "p_mean",
    "step",
    "sample_coefs",
    "sample",
    "loss",
    "loss_weight",
    "LOSS_TARGETS",
    "gaussian_kl",
    "gaussian_log_prob",
    "prior_kl",
    "denoising_kl",
    "reconstruction_log_prob",
    "elbo_terms",
]

VARIANCES = ("posterior", "beta")
LOSS_TARGETS = ("eps", "x0", "v")


def _check_var(var: str) -> str:
    return validation.choice("var", var, VARIANCES)  # 'posterior': sigma_t^2 = tilde beta_t, 'beta': beta_t


_TABLES = weakref.WeakKeyDictionary()


def _tables(sched) -> dict:
    r"""The coefficient tables of this module for ``sched``, computed once in float64 on the CPU (index ``t``):
    :math:`\sqrt{\bar\alpha_t}`, :math:`\sqrt{1-\bar\alpha_t}`, :math:`\sqrt{\alpha_t}`, :math:`\sqrt{1-\alpha_t}`,
    :math:`1/\sqrt{\alpha_t}`, :math:`\beta_t/\sqrt{1-\bar\alpha_t}` (0 at ``t = 0``), the posterior-mean pair and
    the two reverse standard deviations (0 at ``t = 1``). Computing them before the cast keeps float16 finite (in
    float16 :math:`\bar\alpha_1 = 0.9999` rounds to 1 and :math:`1-\bar\alpha_1` to 0)."""
    try:
        return _TABLES[sched]
    except (KeyError, TypeError):
        pass
    ab, alpha, beta = sched.alpha_bar, sched.alpha, sched.beta
    one_minus = (1 - ab).clamp_min(0)
    eps_coef = beta / one_minus.sqrt().clamp_min(1e-300)
    eps_coef[0] = 0.0
    c0, ct = posterior_mean_coefs(sched)
    past_one = (torch.arange(sched.T + 1) > 1).to(torch.float64)
    out = dict(sqrt_ab=ab.sqrt(), sqrt_1mab=one_minus.sqrt(), sqrt_alpha=alpha.sqrt(), sqrt_beta=beta.sqrt(),
               inv_sqrt_alpha=1 / alpha.sqrt(), eps_coef=eps_coef, c0=c0, ct=ct,
               var_posterior=sched.posterior_variance, var_beta=beta,
               sigma_posterior=sched.posterior_variance.sqrt() * past_one, sigma_beta=beta.sqrt() * past_one)
    try:
        _TABLES[sched] = out
    except TypeError:  # an object that cannot be weakly referenced: recompute next time
        pass
    return out


def _check_t(sched, t, batch: int, *, low: int = 0) -> torch.Tensor:
    """The schedule (a clear error for a number passed where a schedule belongs), then its timesteps."""
    return validation.schedule("sched", sched).check_t(t, batch, low=low)


def _x(name: str, value, min_ndim: int = 1) -> torch.Tensor:
    """A data tensor argument ``(B, ...)`` (numpy converted, integers promoted, complex and non-tensors refused);
    the ELBO terms sum over all but the batch dimension, so they take ``min_ndim=2``."""
    return validation.tensor(name, value, ndim=tuple(range(min_ndim, 9)))


def _fn(name: str, fn):
    if not callable(fn):
        raise TypeError(f"{name} must be a callable {name}(x, t); got {validation.describe(fn)}")
    return fn


def _out(fn_name: str, out, like: torch.Tensor) -> torch.Tensor:
    """What a user callable returned, checked for kind and shape only (an oracle may answer in float64, and the
    ELBO terms compute in float64 anyway)."""
    if out is None or not isinstance(out, torch.Tensor) or tuple(out.shape) != tuple(like.shape):
        return validation.output(fn_name, out, like=like, finite=False)  # raises the clear error
    return out


def _coef(sched, name: str, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """The table ``name`` of :func:`_tables` at ``t``, shaped to broadcast against ``x``: read from a copy cast once
    to ``x``'s device and dtype (so indexing with device timesteps makes no host copy and no float64 op there)."""
    return expand_to(table_on(_tables(sched)[name], x.device, x.dtype)[t], x)


# ---------------------------------------------------------------------------------- forward process
def q_sample(x0: torch.Tensor, t, eps: torch.Tensor, sched) -> torch.Tensor:
    r"""Sample :math:`q(x_t\mid x_0)`: :math:`x_t = \sqrt{\bar\alpha_t}\,x_0 + \sqrt{1-\bar\alpha_t}\,\varepsilon`.

    ``t`` is an int or a LongTensor ``(B,)`` with values in ``0..T`` (``t = 0`` returns ``x0``).
    """
    x0, eps = _x("x0", x0), _x("eps", eps)
    check_same_shape(x0=x0, eps=eps)
    t = _check_t(sched, t, x0.shape[0]).to(x0.device)
    return _coef(sched, "sqrt_ab", t, x0) * x0 + _coef(sched, "sqrt_1mab", t, x0) * eps


def q_step(x_prev: torch.Tensor, t, eps: torch.Tensor, sched) -> torch.Tensor:
    r"""One forward step :math:`x_t = \sqrt{\alpha_t}\,x_{t-1} + \sqrt{1-\alpha_t}\,\varepsilon_t`, ``t`` in ``1..T``
    (the transition :math:`q(x_t\mid x_{t-1}) = \mathcal N(\sqrt{\alpha_t}x_{t-1}, \beta_t I)`)."""
    x_prev, eps = _x("x_prev", x_prev), _x("eps", eps)
    check_same_shape(x_prev=x_prev, eps=eps)
    t = _check_t(sched, t, x_prev.shape[0], low=1).to(x_prev.device)
    return _coef(sched, "sqrt_alpha", t, x_prev) * x_prev + _coef(sched, "sqrt_beta", t, x_prev) * eps


def q_sample_steps(x0: torch.Tensor, t: int, sched, *, generator: torch.Generator | None = None):
    r"""Run ``t`` single forward steps :func:`q_step` from ``x0`` and return ``(x_t, eps_bar)``.

    ``eps_bar`` is the one standard normal that the ``t`` step noises add up to: unrolling the chain gives
    :math:`x_t = \sqrt{\bar\alpha_t}x_0 + \sum_{s=1}^t w_s\varepsilon_s` with
    :math:`w_s = \sqrt{\beta_s\bar\alpha_t/\bar\alpha_s}` and :math:`\sum_s w_s^2 = 1-\bar\alpha_t`, so
    :math:`\bar\varepsilon = \sum_s w_s\varepsilon_s/\sqrt{1-\bar\alpha_t}\sim\mathcal N(0, I)` and
    ``q_sample(x0, t, eps_bar, sched)`` equals ``x_t`` exactly (the closed form, coupled to the same noise).
    """
    sched = validation.schedule("sched", sched)
    x0 = _x("x0", x0)
    t = validation.integer("t (the number of forward steps)", t, low=1, high=sched.T)
    x = x0
    noise_sum = torch.zeros_like(x0, dtype=torch.float64)
    for s in range(1, t + 1):
        eps_s = noise_like(x0, generator)
        x = q_step(x, s, eps_s, sched)
        w_s = (sched.beta[s] * sched.alpha_bar[t] / sched.alpha_bar[s]).sqrt()
        noise_sum = noise_sum + w_s * eps_s.double()
    eps_bar = noise_sum / (1 - sched.alpha_bar[t]).sqrt()
    return x, eps_bar.to(x0.dtype)


def posterior_mean_coefs(sched) -> tuple[torch.Tensor, torch.Tensor]:
    r"""The two tables of the posterior mean, :math:`\tilde\mu_t = c^{(0)}_t x_0 + c^{(t)}_t x_t`:
    :math:`c^{(0)}_t = \sqrt{\bar\alpha_{t-1}}\beta_t/(1-\bar\alpha_t)` and
    :math:`c^{(t)}_t = \sqrt{\alpha_t}(1-\bar\alpha_{t-1})/(1-\bar\alpha_t)` (index 0 unused, set to 0)."""
    sched = validation.schedule("sched", sched)
    denom = (1 - sched.alpha_bar).clone()
    denom[0] = 1.0
    c0 = sched.alpha_bar_prev.sqrt() * sched.beta / denom
    ct = sched.alpha.sqrt() * (1 - sched.alpha_bar_prev) / denom
    c0[0] = ct[0] = 0.0
    return c0, ct


def q_posterior(x0: torch.Tensor, xt: torch.Tensor, t, sched) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Mean and variance of :math:`q(x_{t-1}\mid x_t, x_0)` for ``t`` in ``1..T``.

    Returns ``(mean, var)``; ``var`` is :math:`\tilde\beta_t` shaped ``(B, 1, ..., 1)`` to broadcast with ``mean``.
    """
    x0, xt = _x("x0", x0), _x("xt", xt)
    check_same_shape(x0=x0, xt=xt)
    t = _check_t(sched, t, x0.shape[0], low=1).to(x0.device)
    mean = _coef(sched, "c0", t, x0) * x0 + _coef(sched, "ct", t, xt) * xt
    return mean, _coef(sched, "var_posterior", t, x0)


# ---------------------------------------------------------------------------------- reverse process
def reverse_variance(sched, var: str = "posterior") -> torch.Tensor:
    r"""The table of :math:`\sigma_t^2` for Algorithm 2: ``"posterior"`` gives :math:`\tilde\beta_t`
    (the lower bound of DDPM's paper), ``"beta"`` gives :math:`\beta_t` (the upper bound)."""
    _check_var(var)
    sched = validation.schedule("sched", sched)
    return sched.posterior_variance if var == "posterior" else sched.beta


def p_mean(xt: torch.Tensor, eps: torch.Tensor, t, sched) -> torch.Tensor:
    r"""The model mean of Algorithm 2,
    :math:`\mu_\theta = \frac{1}{\sqrt{\alpha_t}}\big(x_t - \frac{\beta_t}{\sqrt{1-\bar\alpha_t}}\hat\varepsilon\big)`
    (the lecture writes :math:`1-\alpha_t` for :math:`\beta_t`).

    It equals :func:`q_posterior`'s mean with :math:`x_0` replaced by :math:`\hat x_0(x_t, \varepsilon_\theta)`.
    """
    xt, eps = _x("xt", xt), _x("eps", eps)
    check_same_shape(xt=xt, eps=eps)
    t = _check_t(sched, t, xt.shape[0], low=1).to(xt.device)
    return (xt - _coef(sched, "eps_coef", t, xt) * eps) * _coef(sched, "inv_sqrt_alpha", t, xt)


def step(xt: torch.Tensor, eps: torch.Tensor, t, sched, *, var: str = "posterior", noise=None,
         clip_x0: float | None = None) -> torch.Tensor:
    r"""One step of Algorithm 2: :math:`x_{t-1} = \mu_\theta(x_t, t) + \sigma_t z`, with ``z = 0`` at ``t = 1``.

    ``clip_x0=c`` (off by default) first clamps the predicted :math:`\hat x_0` to ``[-c, c]`` and uses the
    posterior mean :math:`\tilde\mu_t(x_t, \hat x_0)`, like diffusers' ``clip_sample=True``: for images in
    ``[-1, 1]`` it stops an imperfect :math:`\hat\varepsilon` from being amplified by the
    :math:`1/\sqrt{\alpha_t}` factors (their product over all steps is :math:`1/\sqrt{\bar\alpha_T}`).
    Without clipping, :math:`\tilde\mu_t(x_t, \hat x_0) = \mu_\theta` exactly. ``noise`` is :math:`z`
    (drawn with ``torch.randn_like`` when not given).
    """
    xt = validation.tensor("xt", xt)
    eps = validation.tensor("eps", eps)
    check_same_shape(xt=xt, eps=eps)
    var = _check_var(var)
    if clip_x0 is not None:
        clip_x0 = validation.number("clip_x0 (a bound like 1.0 for images in [-1, 1], or None)", clip_x0, low=0,
                                    strict_low=True)
    t = _check_t(sched, t, xt.shape[0], low=1).to(xt.device)
    noise = torch.randn_like(xt) if noise is None else validation.tensor("noise", noise)
    check_same_shape(xt=xt, noise=noise)
    if clip_x0 is None:
        mean = p_mean(xt, eps, t, sched)
    else:
        x0_hat = convert.x0_from_eps(xt, eps, table_on(sched.alpha_bar, t.device)[t]).clamp(-clip_x0, clip_x0)
        mean = q_posterior(x0_hat, xt, t, sched)[0]
    return mean + _coef(sched, f"sigma_{var}", t, xt) * noise


def sample_coefs(sched, var: str = "posterior", clip_x0: float | None = None) -> list[tuple[float, ...]]:
    r"""The per-step numbers of Algorithm 2, computed once in float64: for ``t = T..1`` the tuple
    ``(a, b, sigma)`` of :math:`x_{t-1} = a\,x_t - b\,\hat\varepsilon + \sigma z` with
    :math:`a = 1/\sqrt{\alpha_t}`, :math:`b = \beta_t/(\sqrt{1-\bar\alpha_t}\sqrt{\alpha_t})` (the mean
    :math:`\mu_\theta` of :func:`p_mean`) and :math:`\sigma = \sigma_t` (0 at ``t = 1``); with ``clip_x0`` the tuple
    ``(r, q, c0, ct, sigma)`` of :math:`\hat x_0 = \mathrm{clip}(r\,x_t - q\,\hat\varepsilon)`,
    :math:`x_{t-1} = c^{(0)}_t\hat x_0 + c^{(t)}_t x_t + \sigma z`."""
    var = _check_var(var)
    sched = validation.schedule("sched", sched)
    ts = torch.arange(sched.T, 0, -1)
    sig = reverse_variance(sched, var)[ts].sqrt() * (ts > 1)
    ab, alpha, beta = sched.alpha_bar[ts], sched.alpha[ts], sched.beta[ts]
    if clip_x0 is None:
        cols = (1 / alpha.sqrt(), beta / ((1 - ab).sqrt() * alpha.sqrt()), sig)
    else:
        c0, ct = posterior_mean_coefs(sched)
        cols = (1 / ab.sqrt(), (1 - ab).sqrt() / ab.sqrt(), c0[ts], ct[ts], sig)
    return list(zip(*(c.tolist() for c in cols)))


@torch.no_grad()
def sample(
    eps_fn,
    shape,
    sched,
    *,
    x_T: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    progress_bar: bool = True,
    callback=None,
    device=None,
    var: str = "posterior",
    clip_x0: float | None = None,
):
    r"""Algorithm 2 (ancestral sampling): start from :math:`x_T\sim\mathcal N(0,I)` and apply :func:`step` for
    t = T..1; returns :math:`x_0`.

    The one sampler signature of tinydiff (DDPM runs all ``T`` steps, so it takes no ``n_steps``):

    - ``x_T`` the start point (default: drawn), ``generator`` a CPU ``torch.Generator``: every noise is drawn on
      the CPU from it (``x_T``, then one draw per step with ``t > 1``) and moved to the device, so a seed gives
      the same samples on every device;
    - ``device=None`` runs where ``x_T`` or the model ``eps_fn`` lives (:func:`tinydiff.utils.device_of`), so a
      model trained on the GPU samples there unchanged;
    - ``callback(i, t, x)`` is called with ``i = 0`` and ``t = T`` for the start and with ``i = 1..T`` and
      ``t = T - i`` (the time reached) after each step; ``callback=td.utils.Trajectory()`` keeps the trajectory;
    - ``progress_bar`` shows a bar (``TINYDIFF_PROGRESS=0`` silences every bar).

    ``eps_fn``'s output is checked at the first step (shape, dtype, device, finite); the loop itself reads the
    float64 tables of :func:`sample_coefs` as Python numbers and makes no device->host transfer.
    ``clip_x0`` is passed to :func:`step` (off by default: plain Algorithm 2).
    """
    sched = validation.schedule("sched", sched)
    var = _check_var(var)
    if clip_x0 is not None:
        clip_x0 = validation.number("clip_x0 (a bound like 1.0 for images in [-1, 1], or None)", clip_x0, low=0,
                                    strict_low=True)
    x, device = sampler_start(eps_fn, shape, x_T=x_T, generator=generator, device=device, callback=callback)
    coefs = sample_coefs(sched, var, clip_x0)
    B, T = x.shape[0], sched.T
    if callback is not None:
        callback(0, T, x)
    for i in progress(range(1, T + 1), desc="DDPM sampling", disable=not progress_bar):
        t = T + 1 - i
        eps = eps_fn(x, torch.full((B,), t, dtype=torch.long, device=device))
        if i == 1:
            validation.output("eps_fn", eps, like=x)
        x = _step(x, eps, coefs[i - 1], clip_x0, noise_like(x, generator) if t > 1 else None)
        if callback is not None:
            callback(i, t - 1, x)
    return x


def _step(x, eps, coef, clip_x0, z):
    """The unchecked Algorithm-2 step on the numbers of :func:`sample_coefs` (``z`` None when sigma = 0)."""
    if clip_x0 is None:
        a, b, sig = coef
        out = torch.sub(x * a, eps, alpha=b)
    else:
        r, q, c0, ct, sig = coef
        x0 = torch.sub(x * r, eps, alpha=q).clamp_(-clip_x0, clip_x0)
        out = torch.add(x * ct, x0, alpha=c0)
    return out if z is None else out.add_(z, alpha=sig)


# ---------------------------------------------------------------------------------- training loss
def loss(model, x0: torch.Tensor, sched, *, target: str = "eps", t=None, eps=None, model_kwargs=None,
         reduction: str = "mean") -> torch.Tensor:
    r"""Algorithm 1's loss: :math:`\|\text{target} - \text{model}(x_t, t)\|^2` summed over dimensions and
    averaged over the batch, with :math:`x_t = \sqrt{\bar\alpha_t}x_0 + \sqrt{1-\bar\alpha_t}\varepsilon`,
    :math:`t\sim\mathcal U\{1..T\}` and :math:`\varepsilon\sim\mathcal N(0,I)` (unless ``t``/``eps`` are given).

    ``target`` picks what the network predicts:

    - ``"eps"``: the noise :math:`\varepsilon` (DDPM's :math:`L_\text{simple}`);
    - ``"x0"``: the clean data. Since :math:`x_0 - \hat x_0 = -\sqrt{(1-\bar\alpha_t)/\bar\alpha_t}\,
      (\varepsilon - \hat\varepsilon)`, this loss is the :math:`\varepsilon`-loss times
      :math:`(1-\bar\alpha_t)/\bar\alpha_t = 1/\mathrm{SNR}_t` (the lecture's weight); equivalently the
      :math:`\varepsilon`-loss is the :math:`x_0`-loss weighted by the SNR;
    - ``"v"``: :math:`v = \sqrt{\bar\alpha_t}\varepsilon - \sqrt{1-\bar\alpha_t}x_0` (Salimans & Ho); its loss
      is the :math:`\varepsilon`-loss times :math:`1/\bar\alpha_t`, i.e. the :math:`x_0`-loss times
      :math:`1+\mathrm{SNR}_t`.

    :func:`loss_weight` tabulates these factors. ``model(x_t, t, **model_kwargs)`` is called with ``t`` a
    LongTensor ``(B,)``. ``reduction="none"`` returns the per-sample losses ``(B,)`` instead of their mean.
    """
    if target not in LOSS_TARGETS:
        raise ValueError(f"target must be one of {LOSS_TARGETS}; got {target!r}")
    if reduction not in ("mean", "none"):
        raise ValueError(f"reduction must be 'mean' or 'none'; got {reduction!r}")
    # a batch of at least one sample; the name says what x0 is, since fit's `data` reaches here as x0
    x0 = validation.tensor("x0 (a batch of clean data, (B, ...))", x0, ndim=tuple(range(2, 9)))
    sched = validation.schedule("sched", sched)
    B = x0.shape[0]
    if t is None:
        t = torch.randint(1, sched.T + 1, (B,), device=x0.device)
    else:
        t = _check_t(sched, t, B, low=1).to(x0.device)
    if eps is None:
        eps = torch.randn_like(x0)
    else:
        eps = _x("eps", eps)
        check_same_shape(x0=x0, eps=eps)
    _fn("model", model)
    if model_kwargs is not None and not isinstance(model_kwargs, dict):
        raise TypeError(f"model_kwargs must be a dict of keyword arguments for the model, or None; got "
                        f"{validation.describe(model_kwargs)}")
    a, s = _coef(sched, "sqrt_ab", t, x0), _coef(sched, "sqrt_1mab", t, x0)
    xt = a * x0 + s * eps
    try:
        pred = model(xt, t, **(model_kwargs or {}))
    except (ValueError, TypeError) as exc:
        raise type(exc)(f"the model refused x_t made from x0 ({validation.describe(x0)}): {exc}") from exc
    if not isinstance(pred, torch.Tensor):
        hint = " (did it forget to `return`?)" if pred is None else ""
        raise TypeError(f"the model must return a torch.Tensor of the shape of x0, {tuple(x0.shape)}; it returned "
                        f"{validation.describe(pred)}{hint}")
    if pred.shape != x0.shape:
        raise ValueError(f"the model returned shape {tuple(pred.shape)}, expected {tuple(x0.shape)} (same as x0)")
    if target == "eps":
        goal = eps
    elif target == "x0":
        goal = x0
    else:
        goal = convert.v_from_eps(eps, x0, table_on(sched.alpha_bar, t.device)[t])
    per_sample = (goal - pred).pow(2).flatten(1).sum(1)
    return per_sample if reduction == "none" else per_sample.mean()


def loss_weight(sched, target: str) -> torch.Tensor:
    r"""The table :math:`w_t` (length ``T + 1``) with :math:`\|\text{target} - \widehat{\text{target}}\|^2 =
    w_t\,\|\varepsilon - \hat\varepsilon\|^2` when all predictions come from one :math:`\hat\varepsilon`:
    1 for ``"eps"``, :math:`(1-\bar\alpha_t)/\bar\alpha_t = 1/\mathrm{SNR}_t` for ``"x0"``,
    :math:`1/\bar\alpha_t` for ``"v"``."""
    if target not in LOSS_TARGETS:
        raise ValueError(f"target must be one of {LOSS_TARGETS}; got {target!r}")
    ab = validation.schedule("sched", sched).alpha_bar
    if target == "eps":
        return torch.ones_like(ab)
    return (1 - ab) / ab if target == "x0" else 1 / ab


# ---------------------------------------------------------------------------------- ELBO (eq. 47–58)
def gaussian_kl(mean1, var1, mean2, var2) -> torch.Tensor:
    r""":math:`\mathrm{KL}(\mathcal N(\mu_1, v_1 I)\,\|\,\mathcal N(\mu_2, v_2 I))
    = \tfrac12\sum_i\big(\log\tfrac{v_2}{v_1} + \tfrac{v_1}{v_2} - 1 + \tfrac{(\mu_1-\mu_2)^2}{v_2}\big)`,
    summed over all but the batch dimension.

    Computed in float64 with the variance part and the mean part kept apart: a denoising term is often a
    tiny :math:`(\mu_1-\mu_2)^2/v_2` next to :math:`v_1/v_2 = 1`, which float32 would round away.
    Returns float64 ``(B,)``.
    """
    mean1, mean2 = _x("mean1", mean1, 2).double(), _x("mean2", mean2, 2).double()
    try:
        mean1, mean2 = torch.broadcast_tensors(mean1, mean2)
    except RuntimeError:
        raise ValueError(f"mean1 and mean2 must broadcast to one shape; got {tuple(mean1.shape)} and "
                         f"{tuple(mean2.shape)}") from None
    var1, var2 = _var("var1", var1, mean1), _var("var2", var2, mean1)
    if (var1 <= 0).any() or (var2 <= 0).any():
        raise ValueError("both variances of a Gaussian KL must be > 0 (the posterior variance is 0 at t = 1: "
                         "use the reconstruction term there)")
    ratio = var1 / var2
    kl = 0.5 * ((ratio - 1.0 - torch.log(ratio)) + (mean1 - mean2) ** 2 / var2)
    return kl.flatten(1).sum(1)


def _var(name: str, var, like: torch.Tensor) -> torch.Tensor:
    """A variance: a number or a tensor that broadcasts to ``like``'s shape, as float64 expanded to it."""
    if isinstance(var, (int, float)) and not isinstance(var, bool):
        var = validation.number(name, var)
    else:
        var = validation.tensor(name, var)
    var = torch.as_tensor(var, dtype=torch.float64, device=like.device)
    try:
        return var.expand_as(like)
    except RuntimeError:
        raise ValueError(f"{name} must be a number or a tensor that broadcasts to shape {tuple(like.shape)}; got "
                         f"{validation.describe(var)}") from None


def gaussian_log_prob(x, mean, var) -> torch.Tensor:
    r""":math:`\log\mathcal N(x;\mu, v I)`, summed over all but the batch dimension (float64 ``(B,)``)."""
    x = _x("x", x, 2).double()
    mean = validation.broadcasts("mean", _x("mean", mean, 2).double(), x)
    var = _var("var", var, x)
    lp = -0.5 * (torch.log(2 * math.pi * var) + (x - mean) ** 2 / var)
    return lp.flatten(1).sum(1)


def prior_kl(x0: torch.Tensor, sched) -> torch.Tensor:
    r"""Prior matching term of eq. (58), :math:`\mathrm{KL}(q(x_T\mid x_0)\,\|\,\mathcal N(0, I))` per sample
    (nats, float64 ``(B,)``); no parameter touches it, it only says how far :math:`x_T` is from pure noise."""
    sched = validation.schedule("sched", sched)
    x0 = _x("x0", x0, 2)
    ab = expand_to(sched.alpha_bar[sched.T], x0)
    return gaussian_kl(ab.sqrt() * x0, 1 - ab, torch.zeros_like(x0), torch.ones_like(x0))


def denoising_kl(eps_fn, x0: torch.Tensor, t, sched, *, var: str = "posterior", eps=None,
                 generator: torch.Generator | None = None) -> torch.Tensor:
    r"""Denoising matching term of eq. (58), :math:`\mathrm{KL}(q(x_{t-1}\mid x_t,x_0)\,\|\,p_\theta(x_{t-1}\mid x_t))`,
    for one draw :math:`x_t\sim q(x_t\mid x_0)` (``t`` in ``2..T``), per sample, in nats (float64 ``(B,)``).

    :math:`p_\theta(x_{t-1}\mid x_t) = \mathcal N(\mu_\theta(x_t, t), \sigma_t^2 I)` with :func:`p_mean` and
    :func:`reverse_variance`. Averaging over draws gives the expectation in eq. (58)."""
    _fn("eps_fn", eps_fn)
    x0 = _x("x0", x0, 2)
    B = x0.shape[0]
    t = _check_t(sched, t, B, low=2).to(x0.device)
    if eps is None:
        eps = noise_like(x0, generator)
    else:
        eps = _x("eps", eps)
    xt = q_sample(x0, t, eps, sched)
    q_mean, q_var = q_posterior(x0, xt, t, sched)
    p_var = expand_to(table_on(reverse_variance(sched, var), x0.device)[t], x0.double())
    eps_hat = _out("eps_fn", eps_fn(xt, t), xt)
    return gaussian_kl(q_mean, q_var, p_mean(xt, eps_hat, t, sched), p_var)


def reconstruction_log_prob(eps_fn, x0: torch.Tensor, sched, *, eps=None,
                            generator: torch.Generator | None = None) -> torch.Tensor:
    r"""Reconstruction term :math:`\log p_\theta(x_0\mid x_1)` for one draw :math:`x_1\sim q(x_1\mid x_0)`.

    For continuous (2-D) data the decoder is Gaussian, :math:`\mathcal N(\mu_\theta(x_1, 1), \beta_1 I)`:
    at ``t = 1`` the posterior variance :math:`\tilde\beta_1` is 0, so both variance choices use :math:`\beta_1`
    (DDPM's paper instead uses a discrete decoder on 8-bit pixel bins; diffusers' ``fixed_large`` also
    uses :math:`\beta_1` there, but never adds that noise when sampling). At ``t = 1``,
    :math:`\mu_\theta(x_1, 1) = \hat x_0(x_1)` because :math:`\bar\alpha_0 = 1`. Returns float64 ``(B,)``.
    """
    _fn("eps_fn", eps_fn)
    sched = validation.schedule("sched", sched)
    x0 = _x("x0", x0, 2)
    B = x0.shape[0]
    t = torch.ones(B, dtype=torch.long, device=x0.device)
    if eps is None:
        eps = noise_like(x0, generator)
    else:
        eps = _x("eps", eps)
    x1 = q_sample(x0, t, eps, sched)
    eps_hat = _out("eps_fn", eps_fn(x1, t), x1)
    return gaussian_log_prob(x0, p_mean(x1, eps_hat, t, sched), sched.beta[1].item())


@torch.no_grad()
def elbo_terms(eps_fn, x0: torch.Tensor, sched, *, var: str = "posterior", progress_bar: bool = False,
               generator: torch.Generator | None = None) -> dict:
    r"""All terms of eq. (58) for each sample of ``x0``, one Monte-Carlo draw of :math:`x_t` per term.

    Returns a dict of float64 tensors (nats): ``reconstruction`` ``(B,)``, ``prior`` ``(B,)``,
    ``denoising`` ``(B, T-1)`` (column ``j`` is ``t = j + 2``) and
    ``elbo = reconstruction - prior - denoising.sum(1)`` ``(B,)``, a lower bound on :math:`\log p_\theta(x_0)`
    (in expectation over the draws). Noise comes from ``generator`` when given (reproducible).
    """
    _check_var(var)
    _fn("eps_fn", eps_fn)
    x0 = _x("x0", x0, 2)
    B = x0.shape[0]
    rec = reconstruction_log_prob(eps_fn, x0, sched, generator=generator)
    prior = prior_kl(x0, sched)
    den = torch.stack(
        [
            denoising_kl(eps_fn, x0, torch.full((B,), t, dtype=torch.long, device=x0.device), sched, var=var,
                         generator=generator)
            for t in progress(range(2, sched.T + 1), desc="ELBO terms", disable=not progress_bar)
        ],
        dim=1,
    )
    return {"reconstruction": rec, "prior": prior, "denoising": den, "elbo": rec - prior - den.sum(1)}
