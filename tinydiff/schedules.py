r"""Noise schedules of the discrete forward process (lesson 02).

The forward step is :math:`x_t = \sqrt{\alpha_t}\,x_{t-1} + \sqrt{1-\alpha_t}\,\varepsilon_t`, with
:math:`\beta_t = 1 - \alpha_t` and :math:`\bar\alpha_t = \prod_{s=1}^t \alpha_s`.

Convention (DESIGN.md): every table has length ``T + 1`` and index ``t`` is the lecture's ``t``;
index 0 is the clean data, so ``alpha_bar[0] == 1`` and ``beta[0] == 0``. diffusers stores the same
numbers without the leading entry: its index ``k`` is our ``t = k + 1``.
All tables are float64; cast them where they are used (:func:`tinydiff.utils.expand_to` does).
"""

from __future__ import annotations

import math

import torch

from . import validation as V

__all__ = ["NoiseSchedule", "alpha_bar_cumprod", "alpha_bar_logcumsum"]


def alpha_bar_cumprod(alpha: torch.Tensor) -> torch.Tensor:
    r""":math:`\bar\alpha_t = \prod_{s\le t} \alpha_s` by a running product."""
    return torch.cumprod(_alpha(alpha), dim=0)


def alpha_bar_logcumsum(alpha: torch.Tensor) -> torch.Tensor:
    r"""The lecture's trick: :math:`\bar\alpha_t = \exp\sum_{s\le t}\log\alpha_s` (a sum of logs, then exp).

    Equal to :func:`alpha_bar_cumprod` up to rounding (a few ulps in float64). A product of a thousand
    numbers slightly below 1 is harmless in float64; the log-sum form is the one that stays accurate when
    :math:`\bar\alpha_t` gets tiny or the schedule is given as log-SNRs.
    """
    return torch.cumsum(torch.log(_alpha(alpha)), dim=0).exp()


def _alpha(alpha):
    alpha = V.tensor("alpha", alpha, ndim=1)
    if not bool(((alpha > 0) & (alpha <= 1)).all()):
        raise ValueError(f"alpha must hold values alpha_t = 1 - beta_t in (0, 1]; got {V.describe(alpha)} with "
                         f"values from {alpha.min().item():.3g} to {alpha.max().item():.3g}")
    return alpha


class NoiseSchedule:
    r"""A discrete variance schedule :math:`\beta_1..\beta_T` and everything derived from it.

    Attributes (float64 tensors of length ``T + 1``; index 0 is the clean data):

    - ``beta``: :math:`\beta_t` (``beta[0] = 0``)
    - ``alpha``: :math:`\alpha_t = 1 - \beta_t`
    - ``alpha_bar``: :math:`\bar\alpha_t = \prod_{s=1}^t \alpha_s` (``alpha_bar[0] = 1``)
    - ``alpha_bar_prev``: :math:`\bar\alpha_{t-1}` (``alpha_bar_prev[0] = 1``)
    - ``posterior_variance``: :math:`\tilde\beta_t = \frac{1-\bar\alpha_{t-1}}{1-\bar\alpha_t}\beta_t`
      (``[0] = 0``)
    """

    def __init__(self, beta: torch.Tensor, *, name: str = "custom"):
        if not isinstance(name, str):
            raise ValueError(f"name must be a string; got {V.describe(name)}")
        beta = V.tensor("beta", beta if isinstance(beta, torch.Tensor) else _as_tensor("beta", beta),
                        min_batch=0).to(torch.float64).flatten()
        if beta.numel() < 2:
            raise ValueError("a schedule needs T >= 1: pass beta of length T + 1 with beta[0] == 0")
        if beta[0] != 0:
            raise ValueError(
                "beta[0] must be 0: index 0 is the clean data (pass torch.cat([zeros(1), betas]) "
                "if you have the T values beta_1..beta_T)"
            )
        b = beta[1:]
        if not torch.isfinite(b).all() or (b <= 0).any() or (b >= 1).any():
            raise ValueError(
                f"beta: every beta_t for t >= 1 must lie strictly between 0 and 1; got min {b.min().item():.3g}, "
                f"max {b.max().item():.3g}"
            )
        self.name = name
        self.T = beta.numel() - 1
        self.beta = beta
        self.alpha = 1.0 - beta
        self.alpha_bar = alpha_bar_cumprod(self.alpha)
        self.alpha_bar_prev = torch.cat([self.alpha_bar.new_ones(1), self.alpha_bar[:-1]])
        var = (1.0 - self.alpha_bar_prev) / (1.0 - self.alpha_bar).clamp_min(1e-300) * beta
        var[0] = 0.0
        self.posterior_variance = var

    # ----------------------------------------------------------------------------------------------
    @classmethod
    def linear(cls, T: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02) -> "NoiseSchedule":
        r"""DDPM's linear schedule: :math:`\beta_t` evenly spaced from ``beta_start`` (t=1) to ``beta_end`` (t=T)."""
        T = _check_T(T)
        beta_start = _open_unit("beta_start", beta_start)
        beta_end = _open_unit("beta_end", beta_end)
        if beta_start > beta_end:
            raise ValueError(f"beta_start ({beta_start}) must not exceed beta_end ({beta_end}): noise grows with t")
        beta = torch.linspace(beta_start, beta_end, T, dtype=torch.float64)
        return cls(torch.cat([beta.new_zeros(1), beta]), name=f"linear(T={T})")

    @classmethod
    def cosine(cls, T: int = 1000, s: float = 0.008, max_beta: float = 0.999) -> "NoiseSchedule":
        r"""Nichol & Dhariwal's cosine schedule: :math:`\bar\alpha_t = f(t)/f(0)`,
        :math:`f(t) = \cos^2\!\big(\frac{t/T + s}{1+s}\cdot\frac{\pi}{2}\big)`, with
        :math:`\beta_t = \min(1 - \bar\alpha_t/\bar\alpha_{t-1},\ \text{max\_beta})`."""
        T = _check_T(T)
        s = V.number("s", s, low=0.0)  # the offset; finite (s = inf would make every alpha_bar NaN)
        max_beta = _open_unit("max_beta", max_beta)

        def f(u):
            return torch.cos((u + s) / (1 + s) * math.pi / 2) ** 2

        u = torch.arange(T + 1, dtype=torch.float64) / T
        beta = (1 - f(u[1:]) / f(u[:-1])).clamp(max=max_beta)
        return cls(torch.cat([beta.new_zeros(1), beta]), name=f"cosine(T={T})")

    # ----------------------------------------------------------------------------------------------
    def check_t(self, t, batch: int, *, low: int = 0) -> torch.Tensor:
        """Validate timesteps for this schedule (``low..T``) and return a LongTensor ``(batch,)``."""
        batch = V.integer("batch", batch, low=0)
        low = V.integer("low", low, low=0, high=self.T)
        return V.timesteps("t", t, self.T, low=low, batch=batch)

    def snr(self) -> torch.Tensor:
        r"""Signal-to-noise ratio :math:`\bar\alpha_t / (1 - \bar\alpha_t)` (``inf`` at t = 0)."""
        return self.alpha_bar / (1.0 - self.alpha_bar)

    def __len__(self) -> int:
        return self.T + 1

    def __repr__(self) -> str:
        return (
            f"NoiseSchedule({self.name}: beta_1={self.beta[1].item():.3g}, beta_T={self.beta[-1].item():.3g}, "
            f"alpha_bar_T={self.alpha_bar[-1].item():.3g})"
        )


def _check_T(T) -> int:
    return V.integer("T", T, low=1)  # the number of diffusion steps


def _open_unit(name, value) -> float:
    value = V.number(name, value, low=0.0, strict_low=True)
    if value >= 1.0:
        raise ValueError(f"{name} must lie in (0, 1); got {value}")
    return value


def _as_tensor(name, value):
    if value is None or isinstance(value, (str, bytes)):
        raise TypeError(f"{name} must be a tensor of length T + 1; got {V.describe(value)}")
    try:
        return torch.as_tensor(value, dtype=torch.float64)
    except (TypeError, ValueError, RuntimeError):
        raise TypeError(f"{name} must be a tensor of length T + 1; got {V.describe(value)}") from None
