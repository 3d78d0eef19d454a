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

import torch

from . import convert, validation
from .utils import check_same_shape, expand_to, noise_like, progress, sampler_start, table_on, wide_dtype

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
    "sample_coefs",
    "sample",
    "invert_step",
    "encode",
    "sweep",
]

SPACINGS = ("leading", "trailing", "linspace")


# ---------------------------------------------------------------------------------- input checks (once per call)
def _check_eta(eta) -> float:
    return validation.number("eta", eta, low=0)


def _check_n_steps(T: int, n) -> int:
    return validation.integer("n_steps (a sub-sequence of the T training steps)", n, low=1, high=T)


def _times(t, t_prev, sched, *, upward: bool = False, names=("t", "t_prev")):
    """Validate ``(t, t_prev)`` (ints or LongTensors of one shape), once, and return them broadcast as LongTensors."""
    sched = validation.schedule("sched", sched)
    t = validation.timesteps(names[0], t, sched.T, low=1)
    t_prev = validation.timesteps(f"{names[1]} (0 = the clean data, alpha_bar_0 = 1)", t_prev, sched.T, low=0)
    try:
        t, t_prev = torch.broadcast_tensors(t, t_prev.to(t.device))
    except RuntimeError:
        raise ValueError(f"{names[0]} and {names[1]} must be ints or tensors of one shape (B,); got shapes "
                         f"{tuple(t.shape)} and {tuple(t_prev.shape)}") from None
    if not upward and t.device.type != "meta" and bool((t_prev > t).any()):
        raise ValueError(
            "t_prev must not exceed t: a DDIM step goes from x_t down to x_{t_prev}. "
            "To go up (x_0 -> x_T), use tinydiff.ddim.invert_step / encode."
        )
    return t, t_prev


def _alpha_bars(t, t_prev, sched):
    ab = table_on(sched.alpha_bar, t.device)
    return ab[t], ab[t_prev]


def _check_sigma(sigma_t, like: torch.Tensor) -> torch.Tensor:
    if isinstance(sigma_t, torch.Tensor) or hasattr(sigma_t, "__array__"):
        s = validation.tensor("sigma_t", sigma_t, ndim=(0, 1))
        if s.ndim and like.ndim and s.shape[0] not in (1, like.shape[0]) or s.ndim and not like.ndim and s.shape[0] < 1:
            raise ValueError(f"sigma_t must be a number or a tensor of the shape of t, {tuple(like.shape)}; got "
                             f"{validation.describe(sigma_t)}")
    else:
        validation.number("sigma_t", sigma_t, allow_inf=True)  # inf is refused below, with the standard deviation
    s = torch.as_tensor(sigma_t, dtype=torch.float64).to(like.device, wide_dtype(like.device))
    if s.device.type != "meta" and (not bool(torch.isfinite(s).all()) or bool((s < 0).any())):
        raise ValueError(f"sigma_t must be finite and >= 0 (it is a standard deviation); got {validation.describe(sigma_t)}")
    return s.expand_as(like) if s.ndim == 0 else s


def _check_room(ab_prev, s, t, t_prev):
    """The marginal condition has a real kappa only where sigma^2 <= 1 - alpha_bar_(t_prev)."""
    room = 1 - ab_prev - s**2
    if room.device.type != "meta" and bool((room < -1e-12).any()):
        bad = int(torch.nonzero(room.reshape(-1) < -1e-12)[0]) if room.ndim else 0
        tb, pb = int(t.reshape(-1)[bad]), int(t_prev.reshape(-1)[bad])
        raise ValueError(
            f"sigma_t^2 exceeds 1 - alpha_bar_(t_prev) for t = {tb}, t_prev = {pb}: the marginal condition "
            "then has no real kappa_t. Use a smaller sigma_t (a smaller eta), at most sqrt(1 - alpha_bar_(t_prev))."
        )


# ---------------------------------------------------------------------------------- unchecked formulas
def _sigma(ab, ab_prev, eta: float):
    return eta * ((1 - ab_prev) / (1 - ab) * (1 - ab / ab_prev)).sqrt()


def _kappa(ab, ab_prev, s):
    return (1 - ab_prev - s**2).clamp_min(0).sqrt() / (1 - ab).sqrt()


def _lambda(ab, ab_prev, k):
    return ab_prev.sqrt() - ab.sqrt() * k


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
    T = validation.integer("T (the number of training steps)", T, low=1)
    n = _check_n_steps(T, n)
    spacing = validation.choice("spacing", spacing, SPACINGS)
    if spacing == "leading":
        k = torch.arange(n, dtype=torch.float64) * (T // n)
    elif spacing == "trailing":
        k = torch.round(T - torch.arange(n, dtype=torch.float64) * (T / n)) - 1
    else:
        k = torch.linspace(0, T - 1, n, dtype=torch.float64).round()
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
    t, t_prev = _times(t, t_prev, sched)
    return _sigma(*_alpha_bars(t, t_prev, sched), eta)


def sigma_beta(t, t_prev, sched) -> torch.Tensor:
    r"""The lecture's "larger covariance" choice :math:`\sigma_t^2 = \beta_t`; for a skip from ``t`` to
    :math:`s` = ``t_prev`` the matching :math:`\beta` is :math:`1 - \bar\alpha_t/\bar\alpha_s`.
    Returns :math:`\sigma_t`.

    It lies inside the family only where :math:`\beta_t \le 1 - \bar\alpha_s`; at ``t = 1`` it never does
    (:func:`kappa` then raises).
    """
    t, t_prev = _times(t, t_prev, sched)
    ab, ab_prev = _alpha_bars(t, t_prev, sched)
    return (1 - ab / ab_prev).sqrt()


def kappa(t, t_prev, sigma_t, sched) -> torch.Tensor:
    r""":math:`\kappa_t = \sqrt{1-\bar\alpha_s-\sigma_t^2}\,/\sqrt{1-\bar\alpha_t}`, :math:`s` = ``t_prev``:
    the weight of :math:`x_t` in the mean of :math:`p(x_s\mid x_t,x_0)`, from the variance half of the
    marginal condition :math:`\kappa_t^2(1-\bar\alpha_t) + \sigma_t^2 = 1-\bar\alpha_s`.

    Raises ``ValueError`` when :math:`\sigma_t^2 > 1-\bar\alpha_s` (no real solution).
    """
    t, t_prev = _times(t, t_prev, sched)
    s = _check_sigma(sigma_t, t)
    ab, ab_prev = _alpha_bars(t, t_prev, sched)
    _check_room(ab_prev, s, t, t_prev)
    return _kappa(ab, ab_prev, s)


def lambda_(t, t_prev, sigma_t, sched) -> torch.Tensor:
    r""":math:`\lambda_t = \sqrt{\bar\alpha_s} - \sqrt{\bar\alpha_t}\,\kappa_t`, :math:`s` = ``t_prev``: the weight of
    :math:`x_0`, from the mean half of the marginal condition
    :math:`\kappa_t\sqrt{\bar\alpha_t} + \lambda_t = \sqrt{\bar\alpha_s}`.
    (``lambda`` is a Python keyword, hence the underscore.)"""
    t, t_prev = _times(t, t_prev, sched)
    s = _check_sigma(sigma_t, t)
    ab, ab_prev = _alpha_bars(t, t_prev, sched)
    _check_room(ab_prev, s, t, t_prev)
    return _lambda(ab, ab_prev, _kappa(ab, ab_prev, s))


def marginal_coefs(t, t_prev, sigma_t, sched) -> tuple[torch.Tensor, torch.Tensor]:
    r"""The law of :math:`x_s` given :math:`x_0` implied by the family when :math:`x_t\sim q(x_t\mid x_0)`:
    :math:`x_s = (\kappa_t\sqrt{\bar\alpha_t}+\lambda_t)\,x_0 + \kappa_t\sqrt{1-\bar\alpha_t}\,\varepsilon
    + \sigma_t z`, so
    :math:`x_s\mid x_0 \sim \mathcal N(a\,x_0, v I)` with ``(a, v)`` returned. The marginal condition says
    :math:`a = \sqrt{\bar\alpha_s}` and :math:`v = 1 - \bar\alpha_s`."""
    t, t_prev = _times(t, t_prev, sched)
    s = _check_sigma(sigma_t, t)
    ab, ab_prev = _alpha_bars(t, t_prev, sched)
    _check_room(ab_prev, s, t, t_prev)
    k = _kappa(ab, ab_prev, s)
    lam = _lambda(ab, ab_prev, k)
    return k * ab.sqrt() + lam, k**2 * (1 - ab) + s**2


def family_sample(xt: torch.Tensor, x0: torch.Tensor, t, t_prev, sigma_t, sched, noise: torch.Tensor) -> torch.Tensor:
    r"""Draw :math:`x_s \sim p(x_s\mid x_t, x_0) = \mathcal N(\kappa_t x_t + \lambda_t x_0, \sigma_t^2 I)`,
    :math:`s` = ``t_prev``, with the given standard normal ``noise``."""
    xt, x0 = validation.tensor("xt", xt, ndim=tuple(range(1, 9))), validation.tensor("x0", x0)
    noise = validation.tensor("noise", noise)
    check_same_shape(xt=xt, x0=x0, noise=noise)
    t, t_prev = _times(t, t_prev, sched)
    if t.ndim and t.shape[0] not in (1, xt.shape[0]):
        raise ValueError(f"t and t_prev must be ints or have shape ({xt.shape[0]},) (the batch of xt); got "
                         f"{tuple(t.shape)}")
    t, t_prev = t.to(xt.device), t_prev.to(xt.device)
    s = _check_sigma(sigma_t, t)
    ab, ab_prev = _alpha_bars(t, t_prev, sched)
    _check_room(ab_prev, s, t, t_prev)
    return _family_sample(xt, x0, ab, ab_prev, s, noise)


def _family_sample(xt, x0, ab, ab_prev, s, noise):
    k = _kappa(ab, ab_prev, s)
    return expand_to(k, xt) * xt + expand_to(_lambda(ab, ab_prev, k), xt) * x0 + expand_to(s, xt) * noise


# ---------------------------------------------------------------------------------- sampling
def step(xt: torch.Tensor, eps: torch.Tensor, t, t_prev, sched, *, eta: float = 0.0, noise=None) -> torch.Tensor:
    r"""One DDIM step from ``t`` down to ``t_prev``: :math:`x_s = \kappa_t x_t + \lambda_t\hat x_0 + \sigma_t(\eta) z`
    with :math:`\hat x_0 = (x_t - \sqrt{1-\bar\alpha_t}\,\varepsilon)/\sqrt{\bar\alpha_t}` (DDIM eq. 12).

    ``t`` and ``t_prev`` are ints or LongTensors ``(B,)`` with ``0 <= t_prev <= t``; ``t_prev = 0`` is the
    final jump to :math:`x_0` (:math:`\bar\alpha_0 = 1`, where :math:`\sigma = 0` for every :math:`\eta`).
    ``noise`` is :math:`z`; it is drawn with ``torch.randn_like`` when not given.
    """
    xt, eps = validation.tensor("xt", xt, ndim=None), validation.tensor("eps", eps)
    check_same_shape(xt=xt, eps=eps)
    eta = _check_eta(eta)
    t, t_prev = _times(t, t_prev, sched)
    if t.ndim and t.shape[0] not in (1, xt.shape[0]):
        raise ValueError(f"t must be an int or have shape ({xt.shape[0]},); got {tuple(t.shape)}")
    t, t_prev = t.to(xt.device), t_prev.to(xt.device)
    ab, ab_prev = _alpha_bars(t, t_prev, sched)
    s = _sigma(ab, ab_prev, eta)
    _check_room(ab_prev, s, t, t_prev)
    noise = torch.randn_like(xt) if noise is None else validation.tensor("noise", noise)
    check_same_shape(xt=xt, noise=noise)
    return _family_sample(xt, convert.x0_from_eps(xt, eps, ab), ab, ab_prev, s, noise)


def sample_coefs(sched, n_steps: int, *, eta: float = 0.0, spacing: str = "leading"):
    r"""The per-step numbers of DDIM sampling, computed once in float64: ``(pairs, coefs)`` with ``pairs`` the
    list of ``(t, t_prev)`` and ``coefs`` the list of ``(a, b, sigma)`` such that the step of :func:`step` is
    :math:`x_s = a\,x_t + b\,\varepsilon_\theta + \sigma z`: substituting :math:`\hat x_0` into
    :math:`\kappa_t x_t + \lambda_t\hat x_0` gives :math:`a = \kappa_t + \lambda_t/\sqrt{\bar\alpha_t}`
    :math:`(=\sqrt{\bar\alpha_s/\bar\alpha_t})` and :math:`b = -\lambda_t\sqrt{1-\bar\alpha_t}/\sqrt{\bar\alpha_t}`.
    Raises ``ValueError`` if ``eta`` is too large for some step of the sequence."""
    sched = validation.schedule("sched", sched)
    eta = _check_eta(eta)
    ts = timesteps(sched.T, n_steps, spacing)
    prevs = torch.cat([ts[1:], ts.new_zeros(1)])
    ab, ab_prev = sched.alpha_bar[ts], sched.alpha_bar[prevs]
    s = _sigma(ab, ab_prev, eta)
    _check_room(ab_prev, s, ts, prevs)
    lam = _lambda(ab, ab_prev, _kappa(ab, ab_prev, s))
    a = _kappa(ab, ab_prev, s) + lam / ab.sqrt()
    b = -lam * (1 - ab).sqrt() / ab.sqrt()
    return list(zip(ts.tolist(), prevs.tolist())), list(zip(a.tolist(), b.tolist(), s.tolist()))


@torch.no_grad()
def sample(
    eps_fn,
    shape,
    sched,
    n_steps: int,
    *,
    x_T: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    progress_bar: bool = True,
    callback=None,
    device=None,
    eta: float = 0.0,
    spacing: str = "leading",
):
    r"""DDIM sampling on the sub-sequence :func:`timesteps` ``(T, n_steps, spacing)``: start from
    :math:`x_{\tau_S}\sim\mathcal N(0,I)` and apply :func:`step` from each :math:`\tau_i` to :math:`\tau_{i-1}`
    (and from :math:`\tau_1` to 0); returns :math:`x_0`.

    The one sampler signature (see :func:`tinydiff.ddpm.sample`): ``device=None`` runs where ``x_T`` or the model
    lives; ``callback(i, t, x)`` gets ``i = 0, t = tau_S`` for the start and ``i = 1..n_steps`` with the time
    reached (``tau_{S-i}``, 0 at the end) after each step. Noise is drawn on the CPU from ``generator`` in the order of
    :func:`tinydiff.ddpm.sample` (``x_T``, then one draw per step whose ``t_prev > 0``, only when ``eta > 0``) and
    moved to the device, so ``eta = 1``, ``n_steps = T`` reproduces DDPM's samples exactly and a seed gives the
    same samples on every device. ``eps_fn``'s output is checked at the first step; the loop reads the float64
    tables of :func:`sample_coefs` as Python numbers and makes no device->host transfer.
    """
    sched = validation.schedule("sched", sched)
    pairs, coefs = sample_coefs(sched, n_steps, eta=eta, spacing=spacing)  # fails early if eta is too large
    x, device = sampler_start(eps_fn, shape, x_T=x_T, generator=generator, device=device, callback=callback)
    B = x.shape[0]
    if callback is not None:
        callback(0, pairs[0][0], x)
    bar = progress(range(1, len(pairs) + 1), desc=f"DDIM sampling (eta={float(eta):g})", disable=not progress_bar)
    for i in bar:
        t, t_prev = pairs[i - 1]
        a, b, s = coefs[i - 1]
        eps = eps_fn(x, torch.full((B,), t, dtype=torch.long, device=device))
        if i == 1:
            validation.output("eps_fn", eps, like=x)
        x = torch.add(x * a, eps, alpha=b)
        if s > 0:
            x = x.add_(noise_like(x, generator), alpha=s)
        if callback is not None:
            callback(i, t_prev, x)
    return x


# ---------------------------------------------------------------------------------- inversion
def invert_step(xs: torch.Tensor, eps: torch.Tensor, s, t, sched) -> torch.Tensor:
    r"""One step of deterministic DDIM *upwards*, from ``s`` to ``t > s``:
    :math:`x_t = \sqrt{\bar\alpha_t}\,\hat x_0 + \sqrt{1-\bar\alpha_t}\,\varepsilon` with
    :math:`\hat x_0 = (x_s - \sqrt{1-\bar\alpha_s}\,\varepsilon)/\sqrt{\bar\alpha_s}` (``s = 0`` allowed).

    It is eq. 12 with :math:`\sigma = 0` run backwards, with :math:`\varepsilon` evaluated at the known
    point :math:`x_s` (and, in :func:`encode`, the label ``t``) instead of the unknown :math:`x_t`.
    """
    xs, eps = validation.tensor("xs", xs), validation.tensor("eps", eps)
    check_same_shape(xs=xs, eps=eps)
    t, s = _times(t, s, sched, upward=True, names=("t", "s"))
    if t.ndim and t.shape[0] not in (1, xs.shape[0]):
        raise ValueError(f"t and s must be ints or have shape ({xs.shape[0]},) (the batch of xs); got {tuple(t.shape)}")
    if t.device.type != "meta" and bool((s > t).any()):
        raise ValueError("invert_step goes upwards: it needs s <= t (use step to go down)")
    t, s = t.to(xs.device), s.to(xs.device)
    ab_t, ab_s = _alpha_bars(t, s, sched)
    x0_hat = convert.x0_from_eps(xs, eps, ab_s)
    ab = expand_to(ab_t, xs)
    return ab.sqrt() * x0_hat + (1 - ab).sqrt() * eps


@torch.no_grad()
def encode(eps_fn, x0: torch.Tensor, sched, n_steps: int, *, progress_bar: bool = True, callback=None, device=None,
           spacing: str = "leading"):
    r"""Deterministic DDIM inversion :math:`x_0 \to x_{\tau_S}`: :func:`invert_step` along
    ``0 < tau_1 < ... < tau_S`` (the grid of :func:`timesteps`, reversed), with
    :math:`\varepsilon = \varepsilon_\theta(x_{\tau_{i-1}}, \tau_i)` (diffusers' ``DDIMInverseScheduler`` convention).

    The sampler signature with the data ``x0`` as the start point (no generator: inversion draws no noise):
    ``callback(i, t, x)`` gets ``i = 0, t = 0`` for ``x0`` and ``i = 1..n_steps`` with ``t = tau_i`` after each
    step; ``device=None`` runs where the model lives (else where ``x0`` lives). Each step is
    :math:`x_t = \sqrt{\bar\alpha_t/\bar\alpha_s}\,x_s + (\sqrt{1-\bar\alpha_t} -
    \sqrt{\bar\alpha_t}\sqrt{1-\bar\alpha_s}/\sqrt{\bar\alpha_s})\,\varepsilon` on float64 numbers computed once.
    ``sample(eps_fn, x0.shape, sched, n_steps, eta=0, spacing=spacing, x_T=encode(...))`` decodes it back.
    """
    sched = validation.schedule("sched", sched)
    x0 = validation.tensor("x0", x0, finite=True)
    ts = timesteps(sched.T, n_steps, spacing).flip(0)
    grid = torch.cat([ts.new_zeros(1), ts])
    ab_s, ab_t = sched.alpha_bar[grid[:-1]], sched.alpha_bar[grid[1:]]
    a = (ab_t / ab_s).sqrt()
    b = (1 - ab_t).sqrt() - ab_t.sqrt() * (1 - ab_s).sqrt() / ab_s.sqrt()
    coefs = list(zip(a.tolist(), b.tolist()))
    x, device = sampler_start(eps_fn, None, x_T=x0, device=device, callback=callback, data_start=True)
    B, grid = x.shape[0], grid.tolist()
    if callback is not None:
        callback(0, 0, x)
    for i in progress(range(1, len(grid)), desc="DDIM inversion", disable=not progress_bar):
        eps = eps_fn(x, torch.full((B,), grid[i], dtype=torch.long, device=device))
        if i == 1:
            validation.output("eps_fn", eps, like=x)
        x = torch.add(x * coefs[i - 1][0], eps, alpha=coefs[i - 1][1])
        if callback is not None:
            callback(i, grid[i], x)
    return x


# ---------------------------------------------------------------------------------- the quality table
def sweep(eps_fn, shape, sched, steps, etas, quality, *, spacing: str = "leading", seed: int = 0, device=None,
          progress_bar: bool = True) -> dict:
    r"""The DDIM paper's Table 1 for any denoiser: ``quality(samples) -> float`` for every number of steps in
    ``steps`` and every :math:`\eta` in ``etas``. Each cell starts from the same seed. Returns
    ``{(n_steps, eta): value}``."""
    sched = validation.schedule("sched", sched)
    seed = validation.integer("seed", seed)
    if not callable(quality):
        raise TypeError(f"quality must be a callable quality(samples) -> float; got {validation.describe(quality)}")
    for name, value in (("steps", steps), ("etas", etas)):
        if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
            raise TypeError(f"{name} must be a sequence like (10, 50, 100); got {validation.describe(value)}")
    steps, etas = list(steps), [_check_eta(e) for e in etas]
    for n in steps:
        _check_n_steps(sched.T, n)
    cells = [(n, e) for e in etas for n in steps]
    out = {}
    for n, e in progress(cells, desc="DDIM sweep", disable=not progress_bar):
        g = torch.Generator().manual_seed(seed)
        value = quality(sample(eps_fn, shape, sched, n, eta=e, spacing=spacing, generator=g, device=device,
                               progress_bar=False))
        try:
            out[(n, e)] = float(value)
        except (TypeError, ValueError):
            hint = " (did it forget to `return`?)" if value is None else ""
            raise TypeError(f"quality must return a number; it returned {validation.describe(value)}{hint}") from None
    return out
