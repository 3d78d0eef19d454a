r"""Conversions between the things a denoiser can predict: :math:`\varepsilon`, :math:`x_0`, the score, :math:`v`,
and the flow velocity :math:`u`.

Every noising path of the book has the form :math:`x_t = \alpha_t x_0 + \sigma_t\varepsilon`
(:mod:`tinydiff.denoisers`: discrete and continuous VP, VE, the flow-matching line). Given :math:`x_t` and any one
prediction, the pair :math:`(\hat x_0, \hat\varepsilon)` follows by solving that line (and, for the velocity
:math:`u = \dot\alpha_t x_0 + \dot\sigma_t\varepsilon`, its time derivative). These two functions are the only place
the formulas are written:

- :func:`x0_eps_from` — a prediction of any kind -> :math:`(\hat x_0, \hat\varepsilon)`;
- :func:`prediction_from` — :math:`(x_0, \varepsilon)` -> the target of any kind (training losses).

The ``*_from_*`` functions below are the variance-preserving special case :math:`\alpha_t = \sqrt{\bar\alpha_t}`,
:math:`\sigma_t = \sqrt{1-\bar\alpha_t}` of lessons 02–06, written in :math:`\bar\alpha_t` as the lessons write them.
:math:`\varepsilon` stands for the *expected* noise :math:`\mathbb E[\varepsilon\mid x_t]` when it is a prediction,
and the score is Tweedie's :math:`\nabla\log p(x_t) = -\mathbb E[\varepsilon\mid x_t]/\sigma_t` (lesson 05).
``alpha_bar_t`` is a scalar or a per-sample tensor ``(B,)`` in ``(0, 1)``.
"""

from __future__ import annotations

import numpy as np
import torch

from . import validation
from .utils import expand_to, table_on, wide_dtype

__all__ = [
    "PREDICTIONS",
    "x0_eps_from",
    "prediction_from",
    "x0_from_eps",
    "eps_from_x0",
    "score_from_eps",
    "eps_from_score",
    "v_from_eps",
    "x0_from_v",
    "eps_from_v",
    "eps_fn_from_score_fn",
    "score_fn_from_eps_fn",
    "x0_fn_from_eps_fn",
    "eps_fn_from_x0_fn",
    "eps_fn_from_v_fn",
]

PREDICTIONS = ("eps", "x0", "v", "score", "velocity")


def _check_prediction(prediction):
    if not isinstance(prediction, str) or prediction not in PREDICTIONS:
        raise ValueError(f"prediction must be one of {', '.join(map(repr, PREDICTIONS))}; got {prediction!r}")


# Checks on metadata only (type, dtype, shape): these functions run inside sampler loops, so they make no host sync.
def _data(name, value):
    return validation.tensor(name, value)


def _like(name, value, x, x_name):
    """``value`` (a tensor) must broadcast to the shape of ``x``."""
    value = validation.tensor(name, value)
    try:
        ok = tuple(torch.broadcast_shapes(value.shape, x.shape)) == tuple(x.shape)
    except RuntimeError:
        ok = False
    if not ok:
        raise ValueError(f"{name} must have the shape of {x_name} {tuple(x.shape)}; got {validation.describe(value)}")
    return value


def _coef(name, c, x, *, unit=False):
    """A scalar or per-sample ``(B,)`` coefficient for ``x`` (``unit``: a Python number must lie in [0, 1])."""
    if isinstance(c, np.ndarray):
        c = torch.from_numpy(c)
    if isinstance(c, torch.Tensor):
        if not c.is_floating_point():
            raise ValueError(f"{name} must be a floating scalar or (B,) tensor; got {validation.describe(c)}")
        if c.ndim > 1 or (c.ndim == 1 and c.shape[0] not in (1, x.shape[0] if x.ndim else 1)):
            raise ValueError(f"{name} must be a scalar or have shape (B,) with B = {x.shape[0] if x.ndim else 1} "
                             f"(the batch of x); got {validation.describe(c)}")
        return c
    return validation.number(name, c, low=0 if unit else None, high=1 if unit else None)


def x0_eps_from(prediction: str, pred: torch.Tensor, x: torch.Tensor, alpha, sigma, d_alpha=None, d_sigma=None):
    r"""The pair :math:`(\hat x_0, \hat\varepsilon)` implied by a prediction ``pred`` at :math:`x_t` = ``x`` on the path
    :math:`x_t = \alpha_t x_0 + \sigma_t\varepsilon` (``alpha``, ``sigma``: scalars or ``(B,)``):

    - ``"eps"``: :math:`\hat x_0 = (x_t - \sigma_t\hat\varepsilon)/\alpha_t`;
    - ``"x0"``: :math:`\hat\varepsilon = (x_t - \alpha_t\hat x_0)/\sigma_t`;
    - ``"score"`` :math:`s`: :math:`\hat\varepsilon = -\sigma_t s` (Tweedie);
    - ``"v"`` (Salimans & Ho, :math:`v = \alpha_t\varepsilon - \sigma_t x_0`):
      :math:`\hat x_0 = (\alpha_t x_t - \sigma_t v)/(\alpha_t^2+\sigma_t^2)`,
      :math:`\hat\varepsilon = (\sigma_t x_t + \alpha_t v)/(\alpha_t^2+\sigma_t^2)`;
    - ``"velocity"`` :math:`u = \dot\alpha_t x_0 + \dot\sigma_t\varepsilon` (needs ``d_alpha``, ``d_sigma``): with
      :math:`\Delta = \alpha_t\dot\sigma_t - \sigma_t\dot\alpha_t`,
      :math:`\hat x_0 = (\dot\sigma_t x_t - \sigma_t u)/\Delta`, :math:`\hat\varepsilon = (\alpha_t u - \dot\alpha_t x_t)/\Delta`.
    """
    _check_prediction(prediction)
    x = _data("x", x)
    pred = _like("pred", pred, x, "x")
    alpha, sigma = _coef("alpha", alpha, x), _coef("sigma", sigma, x)
    a, s = expand_to(_f64(alpha), x), expand_to(_f64(sigma), x)
    if prediction == "eps":
        return (x - s * pred) / a, pred
    if prediction == "x0":
        return pred, (x - a * pred) / s
    if prediction == "score":
        eps = -s * pred
        return (x - s * eps) / a, eps
    if prediction == "v":
        n = a * a + s * s
        return (a * x - s * pred) / n, (s * x + a * pred) / n
    da, ds = _derivatives(d_alpha, d_sigma, x)
    det = a * ds - s * da
    return (ds * x - s * pred) / det, (a * pred - da * x) / det


def prediction_from(prediction: str, x0: torch.Tensor, eps: torch.Tensor, alpha, sigma, d_alpha=None, d_sigma=None):
    r"""The target of kind ``prediction`` for a clean :math:`x_0` and its noise :math:`\varepsilon` on the path
    :math:`x_t = \alpha_t x_0 + \sigma_t\varepsilon`: ``"eps"`` :math:`\varepsilon`, ``"x0"`` :math:`x_0`,
    ``"score"`` :math:`-\varepsilon/\sigma_t`, ``"v"`` :math:`\alpha_t\varepsilon - \sigma_t x_0`,
    ``"velocity"`` :math:`\dot\alpha_t x_0 + \dot\sigma_t\varepsilon` (the exact inverse of :func:`x0_eps_from`)."""
    _check_prediction(prediction)
    x0 = _data("x0", x0)
    eps = _like("eps", eps, x0, "x0")
    alpha, sigma = _coef("alpha", alpha, x0), _coef("sigma", sigma, x0)
    a, s = expand_to(_f64(alpha), x0), expand_to(_f64(sigma), x0)
    if prediction == "eps":
        return eps
    if prediction == "x0":
        return x0
    if prediction == "score":
        return -eps / s
    if prediction == "v":
        return a * eps - s * x0
    da, ds = _derivatives(d_alpha, d_sigma, x0)
    return da * x0 + ds * eps


def _f64(c):
    """``c`` in float64 (float32 on a device without float64, e.g. MPS)."""
    if isinstance(c, torch.Tensor):
        return c.to(wide_dtype(c.device))
    return torch.as_tensor(c, dtype=torch.float64)


def _derivatives(d_alpha, d_sigma, x):
    if d_alpha is None or d_sigma is None:
        raise ValueError("prediction='velocity' needs the path's time derivatives d_alpha and d_sigma "
                         "(tinydiff.denoisers paths provide them)")
    return expand_to(_f64(_coef("d_alpha", d_alpha, x)), x), expand_to(_f64(_coef("d_sigma", d_sigma, x)), x)


def _vp(alpha_bar_t):
    """(alpha_t, sigma_t) = (sqrt(alpha_bar_t), sqrt(1 - alpha_bar_t)) in float64."""
    ab = _f64(alpha_bar_t)
    return ab.sqrt(), (1 - ab).sqrt()


def _coefs(alpha_bar_t, x):
    a, s = _vp(alpha_bar_t)
    return expand_to(a, x), expand_to(s, x)


def x0_from_eps(xt: torch.Tensor, eps: torch.Tensor, alpha_bar_t) -> torch.Tensor:
    r""":math:`\hat x_0 = (x_t - \sqrt{1-\bar\alpha_t}\,\varepsilon) / \sqrt{\bar\alpha_t}`."""
    xt = _data("xt", xt)
    return x0_eps_from("eps", _like("eps", eps, xt, "xt"), xt, *_vp(_coef("alpha_bar_t", alpha_bar_t, xt, unit=True)))[0]


def eps_from_x0(xt: torch.Tensor, x0: torch.Tensor, alpha_bar_t) -> torch.Tensor:
    r""":math:`\varepsilon = (x_t - \sqrt{\bar\alpha_t}\,x_0) / \sqrt{1-\bar\alpha_t}`."""
    xt = _data("xt", xt)
    return x0_eps_from("x0", _like("x0", x0, xt, "xt"), xt, *_vp(_coef("alpha_bar_t", alpha_bar_t, xt, unit=True)))[1]


def score_from_eps(eps: torch.Tensor, alpha_bar_t) -> torch.Tensor:
    r""":math:`\nabla\log p(x_t) = -\varepsilon / \sqrt{1-\bar\alpha_t}`."""
    eps = _data("eps", eps)
    _, s = _coefs(_coef("alpha_bar_t", alpha_bar_t, eps, unit=True), eps)
    return -eps / s


def eps_from_score(score: torch.Tensor, alpha_bar_t) -> torch.Tensor:
    r""":math:`\varepsilon = -\sqrt{1-\bar\alpha_t}\,\nabla\log p(x_t)`."""
    score = _data("score", score)
    _, s = _coefs(_coef("alpha_bar_t", alpha_bar_t, score, unit=True), score)
    return -s * score


def v_from_eps(eps: torch.Tensor, x0: torch.Tensor, alpha_bar_t) -> torch.Tensor:
    r"""The v-target of Salimans & Ho: :math:`v = \sqrt{\bar\alpha_t}\,\varepsilon - \sqrt{1-\bar\alpha_t}\,x_0`."""
    eps = _data("eps", eps)
    x0 = _like("x0", x0, eps, "eps")
    a, s = _coefs(_coef("alpha_bar_t", alpha_bar_t, eps, unit=True), eps)
    return a * eps - s * x0


def x0_from_v(xt: torch.Tensor, v: torch.Tensor, alpha_bar_t) -> torch.Tensor:
    r""":math:`x_0 = \sqrt{\bar\alpha_t}\,x_t - \sqrt{1-\bar\alpha_t}\,v`."""
    xt = _data("xt", xt)
    v = _like("v", v, xt, "xt")
    a, s = _coefs(_coef("alpha_bar_t", alpha_bar_t, xt, unit=True), xt)
    return a * xt - s * v


def eps_from_v(xt: torch.Tensor, v: torch.Tensor, alpha_bar_t) -> torch.Tensor:
    r""":math:`\varepsilon = \sqrt{1-\bar\alpha_t}\,x_t + \sqrt{\bar\alpha_t}\,v`."""
    xt = _data("xt", xt)
    v = _like("v", v, xt, "xt")
    a, s = _coefs(_coef("alpha_bar_t", alpha_bar_t, xt, unit=True), xt)
    return s * xt + a * v


# -- the same conversions for callables (x, t) -> prediction, t a LongTensor of discrete timesteps --

def eps_fn_from_score_fn(score_fn, sched):
    """Turn ``score_fn(x, t)`` into ``eps_fn(x, t)`` for the discrete schedule ``sched``."""

    def eps_fn(x, t):
        return eps_from_score(score_fn(x, t), table_on(sched.alpha_bar, t.device)[t])

    return eps_fn


def score_fn_from_eps_fn(eps_fn, sched):
    """Turn ``eps_fn(x, t)`` into ``score_fn(x, t)`` for the discrete schedule ``sched``."""

    def score_fn(x, t):
        return score_from_eps(eps_fn(x, t), table_on(sched.alpha_bar, t.device)[t])

    return score_fn


def x0_fn_from_eps_fn(eps_fn, sched):
    """Turn ``eps_fn(x, t)`` into the denoiser ``x0_fn(x, t)`` (the estimate of :math:`x_0`)."""

    def x0_fn(x, t):
        return x0_from_eps(x, eps_fn(x, t), table_on(sched.alpha_bar, t.device)[t])

    return x0_fn


def eps_fn_from_x0_fn(x0_fn, sched):
    """Turn a denoiser ``x0_fn(x, t)`` (a network trained with ``target="x0"``) into ``eps_fn(x, t)``."""

    def eps_fn(x, t):
        return eps_from_x0(x, x0_fn(x, t), table_on(sched.alpha_bar, t.device)[t])

    return eps_fn


def eps_fn_from_v_fn(v_fn, sched):
    """Turn ``v_fn(x, t)`` (a network trained with ``target="v"``) into ``eps_fn(x, t)``."""

    def eps_fn(x, t):
        return eps_from_v(x, v_fn(x, t), table_on(sched.alpha_bar, t.device)[t])

    return eps_fn
