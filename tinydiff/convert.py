r"""Conversions between the things a denoiser can predict: :math:`\varepsilon`, :math:`x_0`, the score, and :math:`v`.

All follow from :math:`x_t = \sqrt{\bar\alpha_t}\,x_0 + \sqrt{1-\bar\alpha_t}\,\varepsilon` (lesson 02) and
Tweedie's formula :math:`\nabla\log p(x_t) = -\varepsilon/\sqrt{1-\bar\alpha_t}` (lesson 05), where
:math:`\varepsilon` stands for the *expected* noise :math:`\mathbb E[\varepsilon\mid x_t]` when it is a prediction.
``alpha_bar_t`` is a scalar or a per-sample tensor ``(B,)``; it must lie in ``(0, 1)`` for the divisions
to make sense (``t = 0`` has no noise, so there is nothing to convert).
This module is the only place these formulas are written; every sampler and loss uses it.
"""

from __future__ import annotations

import torch

from .utils import expand_to

__all__ = [
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


def _coefs(alpha_bar_t, x):
    ab = expand_to(torch.as_tensor(alpha_bar_t, dtype=torch.float64), x)
    return ab.sqrt(), (1 - ab).sqrt()


def x0_from_eps(xt: torch.Tensor, eps: torch.Tensor, alpha_bar_t) -> torch.Tensor:
    r""":math:`\hat x_0 = (x_t - \sqrt{1-\bar\alpha_t}\,\varepsilon) / \sqrt{\bar\alpha_t}`."""
    a, s = _coefs(alpha_bar_t, xt)
    return (xt - s * eps) / a


def eps_from_x0(xt: torch.Tensor, x0: torch.Tensor, alpha_bar_t) -> torch.Tensor:
    r""":math:`\varepsilon = (x_t - \sqrt{\bar\alpha_t}\,x_0) / \sqrt{1-\bar\alpha_t}`."""
    a, s = _coefs(alpha_bar_t, xt)
    return (xt - a * x0) / s


def score_from_eps(eps: torch.Tensor, alpha_bar_t) -> torch.Tensor:
    r""":math:`\nabla\log p(x_t) = -\varepsilon / \sqrt{1-\bar\alpha_t}`."""
    _, s = _coefs(alpha_bar_t, eps)
    return -eps / s


def eps_from_score(score: torch.Tensor, alpha_bar_t) -> torch.Tensor:
    r""":math:`\varepsilon = -\sqrt{1-\bar\alpha_t}\,\nabla\log p(x_t)`."""
    _, s = _coefs(alpha_bar_t, score)
    return -s * score


def v_from_eps(eps: torch.Tensor, x0: torch.Tensor, alpha_bar_t) -> torch.Tensor:
    r"""The v-target of Salimans & Ho: :math:`v = \sqrt{\bar\alpha_t}\,\varepsilon - \sqrt{1-\bar\alpha_t}\,x_0`."""
    a, s = _coefs(alpha_bar_t, eps)
    return a * eps - s * x0


def x0_from_v(xt: torch.Tensor, v: torch.Tensor, alpha_bar_t) -> torch.Tensor:
    r""":math:`x_0 = \sqrt{\bar\alpha_t}\,x_t - \sqrt{1-\bar\alpha_t}\,v`."""
    a, s = _coefs(alpha_bar_t, xt)
    return a * xt - s * v


def eps_from_v(xt: torch.Tensor, v: torch.Tensor, alpha_bar_t) -> torch.Tensor:
    r""":math:`\varepsilon = \sqrt{1-\bar\alpha_t}\,x_t + \sqrt{\bar\alpha_t}\,v`."""
    a, s = _coefs(alpha_bar_t, xt)
    return s * xt + a * v


# -- the same conversions for callables (x, t) -> prediction, t a LongTensor of discrete timesteps --

def eps_fn_from_score_fn(score_fn, sched):
    """Turn ``score_fn(x, t)`` into ``eps_fn(x, t)`` for the discrete schedule ``sched``."""

    def eps_fn(x, t):
        return eps_from_score(score_fn(x, t), sched.alpha_bar[t.cpu()])

    return eps_fn


def score_fn_from_eps_fn(eps_fn, sched):
    """Turn ``eps_fn(x, t)`` into ``score_fn(x, t)`` for the discrete schedule ``sched``."""

    def score_fn(x, t):
        return score_from_eps(eps_fn(x, t), sched.alpha_bar[t.cpu()])

    return score_fn


def x0_fn_from_eps_fn(eps_fn, sched):
    """Turn ``eps_fn(x, t)`` into the denoiser ``x0_fn(x, t)`` (the estimate of :math:`x_0`)."""

    def x0_fn(x, t):
        return x0_from_eps(x, eps_fn(x, t), sched.alpha_bar[t.cpu()])

    return x0_fn


def eps_fn_from_x0_fn(x0_fn, sched):
    """Turn a denoiser ``x0_fn(x, t)`` (a network trained with ``target="x0"``) into ``eps_fn(x, t)``."""

    def eps_fn(x, t):
        return eps_from_x0(x, x0_fn(x, t), sched.alpha_bar[t.cpu()])

    return eps_fn


def eps_fn_from_v_fn(v_fn, sched):
    """Turn ``v_fn(x, t)`` (a network trained with ``target="v"``) into ``eps_fn(x, t)``."""

    def eps_fn(x, t):
        return eps_from_v(x, v_fn(x, t), sched.alpha_bar[t.cpu()])

    return eps_fn
