r"""DDIM (lesson 03): the non-Markovian family, its coefficients, skipping, the sampler and its inversion.

The lecture keeps DDPM's marginals :math:`q(x_t\mid x_0) = \mathcal N(\sqrt{\bar\alpha_t}x_0, (1-\bar\alpha_t)I)`
and asks for *every* Gaussian

.. math:: p(x_{s}\mid x_t, x_0) = \mathcal N(\kappa_t x_t + \lambda_t x_0,\ \sigma_t^2 I), \qquad s < t,

with :math:`\int p(x_s\mid x_t,x_0)\,q(x_t\mid x_0)\,dx_t = q(x_s\mid x_0)` (the marginal condition).
Matching the mean and the variance gives

.. math:: \kappa_t = \frac{\sqrt{1-\bar\alpha_s-\sigma_t^2}}{\sqrt{1-\bar\alpha_t}}, \qquad
          \lambda_t = \sqrt{\bar\alpha_s} - \sqrt{\bar\alpha_t}\,\kappa_t,

for any :math:`0 \le \sigma_t^2 \le 1-\bar\alpha_s`. The lecture has :math:`s = t-1`; skipping uses any
:math:`s < t` (``t_prev`` in the code). Sampling replaces :math:`x_0` by
:math:`\hat x_0 = (x_t - \sqrt{1-\bar\alpha_t}\,\varepsilon_\theta)/\sqrt{\bar\alpha_t}`, which is the same as

.. math:: x_s = \sqrt{\bar\alpha_s}\,\hat x_0 + \sqrt{1-\bar\alpha_s-\sigma_t^2}\,\varepsilon_\theta + \sigma_t z

(DDIM paper, eq. 12). With :math:`\sigma_t(\eta) = \eta\sqrt{\frac{1-\bar\alpha_s}{1-\bar\alpha_t}}
\sqrt{1-\frac{\bar\alpha_t}{\bar\alpha_s}}` (eq. 16), :math:`\eta = 1` is DDPM's posterior and
:math:`\eta = 0` the deterministic DDIM.

Index convention: our ``t`` runs over ``1..T`` and ``t_prev = 0`` is the clean data with
:math:`\bar\alpha_0 = 1`. diffusers' ``DDIMScheduler`` index ``k`` is our ``t = k + 1``; its last step
uses :math:`\bar\alpha = 1` (our ``t_prev = 0``) when ``set_alpha_to_one=True``, and its own
:math:`\bar\alpha` at ``k = 0`` (our ``t_prev = 1``) otherwise.
"""

from __future__ import annotations

import math

import torch

from . import convert
from .utils import check_same_shape, expand_to, noise_like, progress, start_noise

__all__ = [
    "SPACINGS",
    "timesteps",
    "sigma",
    "sigma_beta",
    "kappa",
    "lambda_",
    "marginal_coefs",
    "family_sample",
    "step",
    "sample",
    "invert_step",
    "encode",
    "sweep",
]

SPACINGS = ("leading", "trailing", "linspace")


# ---------------------------------------------------------------------------------- input checks
def _check_eta(eta) -> float:
    try:
        eta = float(eta)
    except (TypeError, ValueError):
        raise ValueError(f"eta must be a number >= 0 (0 = deterministic DDIM, 1 = DDPM); got {eta!r}") from None
    if not math.isfinite(eta) or eta < 0:
        raise ValueError(f"eta must be a finite number >= 0 (0 = deterministic DDIM, 1 = DDPM); got {eta}")
    return eta


def _check_n_steps(T: int, n) -> int:
    if isinstance(n, bool) or not isinstance(n, int):
        raise ValueError(f"the number of sampling steps must be an int; got {n!r}")
    if not 1 <= n <= T:
        raise ValueError(
            f"the number of sampling steps must lie in 1..T = 1..{T} (a sub-sequence of the {T} training "
            f"steps); got {n}"
        )
    return n


def _pair(t, t_prev, sched, *, upward: bool = False):
    """Validate ``(t, t_prev)`` (ints or LongTensors of one shape) and return them as LongTensors on the CPU."""
    t = torch.as_tensor(t)
    t_prev = torch.as_tensor(t_prev)
    for name, v in (("t", t), ("t_prev", t_prev)):
        if v.is_floating_point() or v.dtype == torch.bool:
            raise ValueError(f"{name} must hold integer timesteps; got dtype {v.dtype}")
    t, t_prev = torch.broadcast_tensors(t.long().cpu(), t_prev.long().cpu())
    if t.numel() and (int(t.min()) < 1 or int(t.max()) > sched.T):
        raise ValueError(f"t must lie in 1..T = 1..{sched.T}; got values from {int(t.min())} to {int(t.max())}")
    if t_prev.numel() and (int(t_prev.min()) < 0 or int(t_prev.max()) > sched.T):
        raise ValueError(f"t_prev must lie in 0..T = 0..{sched.T} (0 = the clean data, alpha_bar_0 = 1)")
    if not upward and bool((t_prev > t).any()):
        raise ValueError(
            "t_prev must not exceed t: a DDIM step goes from x_t down to x_{t_prev}. "
            "To go up (x_0 -> x_T), use tinydiff.ddim.invert_step / encode."
        )
    return t, t_prev


# ---------------------------------------------------------------------------------- timesteps
def timesteps(T: int, n: int, spacing: str = "leading") -> torch.Tensor:
    r"""The decreasing sub-sequence :math:`\tau_S > \dots > \tau_1` of ``n`` timesteps in ``1..T``.

    - ``"leading"``: :math:`t = 1 + i\lfloor T/n\rfloor`, ``i = 0..n-1`` (the DDIM paper's "linear" choice and
      diffusers' default; it never reaches ``T`` unless ``n = T``: with T=1000, n=10 it starts at 901).
    - ``"trailing"``: :math:`t = \mathrm{round}(T - i\,T/n)`, ``i = 0..n-1`` (always starts at ``T``).
    - ``"linspace"``: :math:`t = 1 + \mathrm{round}(\mathrm{linspace}(0, T-1, n))` (both ends included).

    These are diffusers' ``timestep_spacing`` options shifted by one (its ``k`` is our ``t - 1``,
    ``steps_offset = 0``). Returns a LongTensor ``(n,)``.
    """
    if isinstance(T, bool) or not isinstance(T, int) or T < 1:
        raise ValueError(f"T (the number of training steps) must be a positive int; got {T!r}")
    n = _check_n_steps(T, n)
    if spacing == "leading":
        k = torch.arange(n, dtype=torch.float64) * (T // n)
    elif spacing == "trailing":
        k = torch.round(T - torch.arange(n, dtype=torch.float64) * (T / n)) - 1
    elif spacing == "linspace":
        k = torch.linspace(0, T - 1, n, dtype=torch.float64).round()
    else:
        raise ValueError(f"unknown spacing {spacing!r}; choose one of {', '.join(SPACINGS)}")
    k = k.long().sort(descending=True).values
    return k + 1


# ---------------------------------------------------------------------------------- coefficients
def sigma(t, t_prev, sched, eta: float = 1.0) -> torch.Tensor:
    r"""The noise scale :math:`\sigma_t(\eta) = \eta\,\sqrt{\tfrac{1-\bar\alpha_{s}}{1-\bar\alpha_t}}
    \sqrt{1-\tfrac{\bar\alpha_t}{\bar\alpha_{s}}}` with :math:`s` = ``t_prev`` (DDIM eq. 16).

    :math:`\eta = 1` gives DDPM's posterior standard deviation :math:`\sqrt{\tilde\beta_t}` (for ``t_prev = t - 1``),
    :math:`\eta = 0` gives the deterministic DDIM. Float64, shaped like ``t`` (a scalar for ints).
    """
    eta = _check_eta(eta)
    t, t_prev = _pair(t, t_prev, sched)
    ab, ab_prev = sched.alpha_bar[t], sched.alpha_bar[t_prev]
    return eta * ((1 - ab_prev) / (1 - ab) * (1 - ab / ab_prev)).sqrt()


def sigma_beta(t, t_prev, sched) -> torch.Tensor:
    r"""The lecture's "larger covariance" choice :math:`\sigma_t^2 = \beta_t`; for a skip from ``t`` to
    :math:`s` = ``t_prev`` the matching :math:`\beta` is :math:`1 - \bar\alpha_t/\bar\alpha_s`.
    Returns :math:`\sigma_t`.

    It lies inside the family only where :math:`\beta_t \le 1 - \bar\alpha_s`; at ``t = 1`` it never does
    (:func:`kappa` then raises).
    """
    t, t_prev = _pair(t, t_prev, sched)
    return (1 - sched.alpha_bar[t] / sched.alpha_bar[t_prev]).sqrt()


def _sigma_table(sigma_t, t) -> torch.Tensor:
    s = torch.as_tensor(sigma_t, dtype=torch.float64).cpu()
    if not bool(torch.isfinite(s).all()) or bool((s < 0).any()):
        raise ValueError("sigma_t must be finite and >= 0 (it is a standard deviation)")
    return s.expand_as(t) if s.ndim == 0 else s


def kappa(t, t_prev, sigma_t, sched) -> torch.Tensor:
    r""":math:`\kappa_t = \sqrt{1-\bar\alpha_s-\sigma_t^2}\,/\sqrt{1-\bar\alpha_t}`, :math:`s` = ``t_prev``:
    the weight of :math:`x_t` in the mean of :math:`p(x_s\mid x_t,x_0)`, from the variance half of the
    marginal condition :math:`\kappa_t^2(1-\bar\alpha_t) + \sigma_t^2 = 1-\bar\alpha_s`.

    Raises ``ValueError`` when :math:`\sigma_t^2 > 1-\bar\alpha_s` (no real solution).
    """
    t, t_prev = _pair(t, t_prev, sched)
    s = _sigma_table(sigma_t, t)
    room = 1 - sched.alpha_bar[t_prev] - s**2
    if bool((room < -1e-12).any()):
        bad = int(torch.nonzero(room < -1e-12).flatten()[0]) if room.ndim else 0
        tb, sb = int(t.flatten()[bad]) if t.ndim else int(t), int(t_prev.flatten()[bad]) if t_prev.ndim else int(t_prev)
        raise ValueError(
            f"sigma_t^2 exceeds 1 - alpha_bar_(t_prev) for t = {tb}, t_prev = {sb}: the marginal condition "
            "then has no real kappa_t. Use a smaller sigma_t (a smaller eta), at most sqrt(1 - alpha_bar_(t_prev))."
        )
    return room.clamp_min(0).sqrt() / (1 - sched.alpha_bar[t]).sqrt()


def lambda_(t, t_prev, sigma_t, sched) -> torch.Tensor:
    r""":math:`\lambda_t = \sqrt{\bar\alpha_s} - \sqrt{\bar\alpha_t}\,\kappa_t`, :math:`s` = ``t_prev``: the weight of
    :math:`x_0`, from the mean half of the marginal condition
    :math:`\kappa_t\sqrt{\bar\alpha_t} + \lambda_t = \sqrt{\bar\alpha_s}`.
    (``lambda`` is a Python keyword, hence the underscore.)"""
    t, t_prev = _pair(t, t_prev, sched)
    return sched.alpha_bar[t_prev].sqrt() - sched.alpha_bar[t].sqrt() * kappa(t, t_prev, sigma_t, sched)


def marginal_coefs(t, t_prev, sigma_t, sched) -> tuple[torch.Tensor, torch.Tensor]:
    r"""The law of :math:`x_s` given :math:`x_0` implied by the family when :math:`x_t\sim q(x_t\mid x_0)`:
    :math:`x_s = (\kappa_t\sqrt{\bar\alpha_t}+\lambda_t)\,x_0 + \kappa_t\sqrt{1-\bar\alpha_t}\,\varepsilon
    + \sigma_t z`, so
    :math:`x_s\mid x_0 \sim \mathcal N(a\,x_0, v I)` with ``(a, v)`` returned. The marginal condition says
    :math:`a = \sqrt{\bar\alpha_s}` and :math:`v = 1 - \bar\alpha_s`."""
    t, t_prev = _pair(t, t_prev, sched)
    s = _sigma_table(sigma_t, t)
    k, lam = kappa(t, t_prev, s, sched), lambda_(t, t_prev, s, sched)
    ab = sched.alpha_bar[t]
    return k * ab.sqrt() + lam, k**2 * (1 - ab) + s**2


def family_sample(xt: torch.Tensor, x0: torch.Tensor, t, t_prev, sigma_t, sched, noise: torch.Tensor) -> torch.Tensor:
    r"""Draw :math:`x_s \sim p(x_s\mid x_t, x_0) = \mathcal N(\kappa_t x_t + \lambda_t x_0, \sigma_t^2 I)`,
    :math:`s` = ``t_prev``, with the given standard normal ``noise``."""
    check_same_shape(xt=xt, x0=x0, noise=noise)
    t, t_prev = _pair(t, t_prev, sched)
    s = _sigma_table(sigma_t, t)
    k, lam = kappa(t, t_prev, s, sched), lambda_(t, t_prev, s, sched)
    return expand_to(k, xt) * xt + expand_to(lam, xt) * x0 + expand_to(s, xt) * noise


# ---------------------------------------------------------------------------------- sampling
def step(xt: torch.Tensor, eps: torch.Tensor, t, t_prev, sched, *, eta: float = 0.0, noise=None) -> torch.Tensor:
    r"""One DDIM step from ``t`` down to ``t_prev``: :math:`x_s = \kappa_t x_t + \lambda_t\hat x_0 + \sigma_t(\eta) z`
    with :math:`\hat x_0 = (x_t - \sqrt{1-\bar\alpha_t}\,\varepsilon)/\sqrt{\bar\alpha_t}` (DDIM eq. 12).

    ``t`` and ``t_prev`` are ints or LongTensors ``(B,)`` with ``0 <= t_prev <= t``; ``t_prev = 0`` is the
    final jump to :math:`x_0` (:math:`\bar\alpha_0 = 1`, where :math:`\sigma = 0` for every :math:`\eta`).
    ``noise`` is :math:`z`; it is drawn with ``torch.randn_like`` only when needed (:math:`\sigma_t > 0`).
    """
    check_same_shape(xt=xt, eps=eps)
    t, t_prev = _pair(t, t_prev, sched)
    if t.ndim and t.shape[0] not in (1, xt.shape[0]):
        raise ValueError(f"t must be an int or have shape ({xt.shape[0]},); got {tuple(t.shape)}")
    s = sigma(t, t_prev, sched, eta)
    x0_hat = convert.x0_from_eps(xt, eps, sched.alpha_bar[t])
    if noise is None:
        noise = torch.randn_like(xt) if bool((s > 0).any()) else torch.zeros_like(xt)
    return family_sample(xt, x0_hat, t, t_prev, s, sched, noise)


@torch.no_grad()
def sample(
    eps_fn,
    shape,
    sched,
    n_steps: int,
    *,
    eta: float = 0.0,
    spacing: str = "leading",
    generator: torch.Generator | None = None,
    device=None,
    x_T: torch.Tensor | None = None,
    return_trajectory: bool = False,
    progress_bar: bool = False,
):
    r"""DDIM sampling on the sub-sequence :func:`timesteps` ``(T, n_steps, spacing)``: start from
    :math:`x_{\tau_S}\sim\mathcal N(0,I)` and apply :func:`step` from each :math:`\tau_i` to :math:`\tau_{i-1}`
    (and from :math:`\tau_1` to 0).

    Noise is drawn on the CPU from ``generator`` in the order of :func:`tinydiff.ddpm.sample` (``x_T``, then
    one draw per step whose ``t_prev > 0``, only when ``eta > 0``), so ``eta = 1``, ``n_steps = T`` reproduces
    DDPM's samples exactly. With ``return_trajectory=True`` returns ``(x0, [x_start, ..., x_0])``.
    """
    eta = _check_eta(eta)
    ts = timesteps(sched.T, n_steps, spacing)
    prevs = torch.cat([ts[1:], ts.new_zeros(1)])
    device = torch.device("cpu") if device is None else torch.device(device)
    shape = tuple(shape)
    # fail early, before any network call, if eta is too large for some step of this sequence
    kappa(ts, prevs, sigma(ts, prevs, sched, eta), sched)
    x = start_noise(shape, generator=generator, device=device, x_T=x_T)
    traj = [x.cpu()] if return_trajectory else None
    pairs = list(zip(ts.tolist(), prevs.tolist()))
    for t_int, p_int in progress(pairs, desc=f"DDIM sampling (eta={eta:g})", disable=not progress_bar):
        t = torch.full((shape[0],), t_int, dtype=torch.long, device=device)
        z = noise_like(x, generator) if eta > 0 and p_int > 0 else torch.zeros_like(x)
        x = step(x, eps_fn(x, t), t_int, p_int, sched, eta=eta, noise=z)
        if return_trajectory:
            traj.append(x.cpu())
    return (x, traj) if return_trajectory else x


# ---------------------------------------------------------------------------------- inversion
def invert_step(xs: torch.Tensor, eps: torch.Tensor, s, t, sched) -> torch.Tensor:
    r"""One step of deterministic DDIM *upwards*, from ``s`` to ``t > s``:
    :math:`x_t = \sqrt{\bar\alpha_t}\,\hat x_0 + \sqrt{1-\bar\alpha_t}\,\varepsilon` with
    :math:`\hat x_0 = (x_s - \sqrt{1-\bar\alpha_s}\,\varepsilon)/\sqrt{\bar\alpha_s}` (``s = 0`` allowed).

    It is eq. 12 with :math:`\sigma = 0` run backwards, with :math:`\varepsilon` evaluated at the known
    point :math:`x_s` (and, in :func:`encode`, the label ``t``) instead of the unknown :math:`x_t`.
    """
    check_same_shape(xs=xs, eps=eps)
    t, s = _pair(t, s, sched, upward=True)
    if bool((s > t).any()):
        raise ValueError("invert_step goes upwards: it needs s <= t (use step to go down)")
    x0_hat = convert.x0_from_eps(xs, eps, sched.alpha_bar[s])
    ab = expand_to(sched.alpha_bar[t], xs)
    return ab.sqrt() * x0_hat + (1 - ab).sqrt() * eps


@torch.no_grad()
def encode(eps_fn, x0: torch.Tensor, sched, n_steps: int, *, spacing: str = "leading", device=None,
           return_trajectory: bool = False, progress_bar: bool = False):
    r"""Deterministic DDIM inversion :math:`x_0 \to x_{\tau_S}`: :func:`invert_step` along
    ``0 < tau_1 < ... < tau_S`` (the grid of :func:`timesteps`, reversed), with
    :math:`\varepsilon = \varepsilon_\theta(x_{\tau_{i-1}}, \tau_i)` (diffusers' ``DDIMInverseScheduler`` convention).

    ``sample(eps_fn, x0.shape, sched, n_steps, eta=0, spacing=spacing, x_T=encode(...))`` decodes it back.
    With ``return_trajectory=True`` returns ``(x_top, [x_0, ..., x_top])``.
    """
    ts = timesteps(sched.T, n_steps, spacing).flip(0)
    grid = torch.cat([ts.new_zeros(1), ts]).tolist()
    device = x0.device if device is None else torch.device(device)
    x = x0.to(device)
    traj = [x.cpu()] if return_trajectory else None
    for s_int, t_int in progress(list(zip(grid[:-1], grid[1:])), desc="DDIM inversion", disable=not progress_bar):
        t = torch.full((x.shape[0],), t_int, dtype=torch.long, device=device)
        x = invert_step(x, eps_fn(x, t), s_int, t_int, sched)
        if return_trajectory:
            traj.append(x.cpu())
    return (x, traj) if return_trajectory else x


# ---------------------------------------------------------------------------------- the quality table
def sweep(eps_fn, shape, sched, steps, etas, quality, *, spacing: str = "leading", seed: int = 0, device=None,
          progress_bar: bool = True) -> dict:
    r"""The DDIM paper's Table 1 for any denoiser: ``quality(samples) -> float`` for every number of steps in
    ``steps`` and every :math:`\eta` in ``etas``. Each cell starts from the same seed. Returns
    ``{(n_steps, eta): value}``."""
    steps, etas = list(steps), [_check_eta(e) for e in etas]
    for n in steps:
        _check_n_steps(sched.T, n)
    cells = [(n, e) for e in etas for n in steps]
    out = {}
    for n, e in progress(cells, desc="DDIM sweep", disable=not progress_bar):
        g = torch.Generator().manual_seed(seed)
        out[(n, e)] = float(quality(sample(eps_fn, shape, sched, n, eta=e, spacing=spacing, generator=g,
                                           device=device)))
    return out
