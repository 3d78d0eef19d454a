r"""Fast samplers (lesson 12): ODE solvers over the k-diffusion-style denoiser :math:`D(x, \sigma)`.

In the VE variable :math:`x = x_t/\alpha_t` at noise level :math:`\sigma = \sigma_t/\alpha_t` (any path of
:mod:`tinydiff.denoisers`, :meth:`~tinydiff.denoisers.Denoiser.x0_sigma`), the probability-flow ODE of every
diffusion model is the same equation,

.. math:: \frac{dx}{d\sigma} = \frac{x - D(x, \sigma)}{\sigma},

and its solvers step along a decreasing grid :math:`\sigma_0 > \sigma_1 > \dots > \sigma_N = 0`.
"""

from __future__ import annotations

import torch

from . import validation
from .utils import progress

__all__ = ["euler", "sigmas_of_timesteps"]


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
    ts = torch.as_tensor(ts)
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


