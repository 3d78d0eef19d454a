"""Distances between sets of samples, to *measure* whether a sampler reproduces a distribution.

Each distance is estimated from finite samples, so it has a noise floor: the value it takes between two
independent draws of the *same* distribution (:func:`noise_floor`). A sampler is convincing when its
distance to fresh data is close to that floor.
"""

from __future__ import annotations

import numpy as np
import torch

from tinydiff import validation

__all__ = [
    "sliced_wasserstein", "mmd_rbf", "frechet_distance", "noise_floor", "gaussian_fit_error", "within_class_spread",
    "knn_recall",
    "histogram_tv",
    "mmd_multiscale", "mode_weights", "mode_spread", "off_mode_fraction", "mixture_statistics", "MixtureCheck",
    "mixture_check",
]


def _points(name: str, x, *, min_batch: int = 1) -> torch.Tensor:
    """A sample set ``(n, ...)`` (numpy accepted) as a float64 ``(n, d)`` tensor: at least 2 dimensions and
    ``min_batch`` samples."""
    x = validation.tensor(name, x, min_batch=min_batch)
    if x.ndim < 2:
        raise ValueError(f"{name} must be a set of samples of shape (n, D) or (n, C, H, W); got {validation.describe(x)}")
    return x.flatten(1).double()


def _same_dim(x: torch.Tensor, y: torch.Tensor, names=("x", "y")) -> None:
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"{names[0]} and {names[1]} must have the same dimension; got {x.shape[1]} and {y.shape[1]}")


def _mixture(name: str, mixture):
    if not all(hasattr(mixture, k) for k in ("D", "K", "means", "covs", "weights")):
        raise TypeError(f"{name} must be a Gaussian mixture like td.data.GaussianMixture; got "
                        f"{validation.describe(mixture)}")
    return mixture


def sliced_wasserstein(x: torch.Tensor, y: torch.Tensor, *, n_projections: int = 256, generator=None) -> float:
    r"""Sliced 2-Wasserstein distance :math:`\big(\mathbb E_\theta W_2^2(\theta^\top X, \theta^\top Y)\big)^{1/2}`
    over random unit directions; in 1-D, :math:`W_2` compares sorted samples (quantiles)."""
    x, y = _points("x", x), _points("y", y)
    _same_dim(x, y)
    n_projections = validation.integer("n_projections", n_projections, low=1)
    generator = validation.generator("generator", generator)
    theta = torch.randn(x.shape[1], n_projections, generator=generator, dtype=torch.float64)
    theta = theta / theta.norm(dim=0, keepdim=True)
    px, _ = (x.cpu() @ theta).sort(0)
    py, _ = (y.cpu() @ theta).sort(0)
    n = min(px.shape[0], py.shape[0])
    q = (torch.arange(n, dtype=torch.float64) + 0.5) / n  # compare the two sets at n common quantile levels
    return float(((_quantiles(px, q) - _quantiles(py, q)) ** 2).mean().sqrt())


def _quantiles(sorted_x: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Linearly interpolated quantiles at levels ``q`` of each column of an already sorted ``(m, P)`` tensor."""
    m = sorted_x.shape[0]
    if m == q.shape[0]:
        return sorted_x
    pos = (q * m - 0.5).clamp(0, m - 1)
    lo = pos.floor().long()
    hi = (lo + 1).clamp(max=m - 1)
    w = (pos - lo)[:, None]
    return sorted_x[lo] * (1 - w) + sorted_x[hi] * w


def mmd_rbf(x: torch.Tensor, y: torch.Tensor, *, bandwidth: float | None = None) -> float:
    r"""Unbiased squared maximum mean discrepancy with a Gaussian kernel :math:`k(a,b)=e^{-\|a-b\|^2/2h^2}`
    (``h`` = median pairwise distance of the pooled samples unless given)."""
    x, y = _points("x", x, min_batch=2).cpu(), _points("y", y, min_batch=2).cpu()
    _same_dim(x, y)
    if bandwidth is not None:
        bandwidth = validation.number("bandwidth", bandwidth, low=0, strict_low=True)
    if bandwidth is None:
        z = torch.cat([x, y])[:1000]
        bandwidth = torch.cdist(z, z).median().item() or 1.0

    def k(a, b):
        return torch.exp(-torch.cdist(a, b) ** 2 / (2 * bandwidth**2))

    m, n = x.shape[0], y.shape[0]
    kxx, kyy, kxy = k(x, x), k(y, y), k(x, y)
    return float((kxx.sum() - kxx.trace()) / (m * (m - 1)) + (kyy.sum() - kyy.trace()) / (n * (n - 1)) - 2 * kxy.mean())


def frechet_distance(x: torch.Tensor, y: torch.Tensor) -> float:
    r"""Fréchet distance between Gaussian fits of two feature sets (the formula behind FID):
    :math:`\|\mu_x-\mu_y\|^2 + \mathrm{tr}\big(\Sigma_x + \Sigma_y - 2(\Sigma_x^{1/2}\Sigma_y\Sigma_x^{1/2})^{1/2}\big)`."""
    x, y = _points("x", x, min_batch=2).cpu(), _points("y", y, min_batch=2).cpu()
    _same_dim(x, y)
    mx, my = x.mean(0), y.mean(0)
    cx, cy = torch.cov(x.T).reshape(x.shape[1], -1), torch.cov(y.T).reshape(y.shape[1], -1)

    def sqrtm(c):
        w, v = torch.linalg.eigh(c)
        return (v * w.clamp_min(0).sqrt()) @ v.T

    sx = sqrtm(cx)
    cross = sqrtm(sx @ cy @ sx)
    return float(((mx - my) ** 2).sum() + torch.trace(cx + cy - 2 * cross))


def noise_floor(metric, sample_fn, n: int, *, repeats: int = 3, **kwargs) -> float:
    """Mean value of ``metric(sample_fn(n), sample_fn(n))`` over ``repeats`` pairs of independent draws."""
    if not callable(metric):
        raise TypeError(f"metric must be a callable metric(x, y) -> float; got {validation.describe(metric)}")
    if not callable(sample_fn):
        raise TypeError(f"sample_fn must be a callable sample_fn(n) -> samples; got {validation.describe(sample_fn)}")
    n = validation.integer("n", n, low=1)
    repeats = validation.integer("repeats", repeats, low=1)

    def draw():
        out = sample_fn(n)
        if out is None:
            raise TypeError("sample_fn returned None: did it forget to `return` its samples?")
        return torch.from_numpy(out) if isinstance(out, np.ndarray) else out

    def value():
        out = metric(draw(), draw(), **kwargs)
        if out is None:
            raise TypeError("metric returned None: did it forget to `return` its value?")
        return out

    return sum(value() for _ in range(repeats)) / repeats


def gaussian_fit_error(x: torch.Tensor, mean: torch.Tensor, cov: torch.Tensor) -> tuple[float, float]:
    """(‖sample mean − mean‖, ‖sample covariance − cov‖_F): a first, crude check of a sampler."""
    x = _points("x", x, min_batch=2).cpu()
    d = x.shape[1]
    mean = validation.tensor("mean", mean).double().cpu()
    cov = validation.tensor("cov", cov).double().cpu()
    if mean.numel() != d or mean.ndim > 1:
        raise ValueError(f"mean must have shape ({d},) for samples of dimension {d}; got {validation.describe(mean)}")
    if (d == 1 and cov.numel() != 1) or (d > 1 and tuple(cov.shape) != (d, d)):
        raise ValueError(f"cov must have shape ({d}, {d}) for samples of dimension {d}; got {validation.describe(cov)}")
    return float((x.mean(0) - mean).norm()), float((torch.cov(x.T) - cov).norm())


def within_class_spread(x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    r"""Diversity per class: the root-mean-square distance of each class's samples to their class mean,
    :math:`\sqrt{\mathrm{tr}\,\mathrm{Cov}(x\mid y)}`; returns ``(num_classes,)`` (NaN for a class with < 2 samples)."""
    x = _points("x", x)
    labels = validation.tensor("labels", labels, floating=False)
    if labels.is_floating_point() or labels.dtype == torch.bool:
        raise ValueError(f"labels must be integer class labels; got {validation.describe(labels)}")
    labels = labels.long()
    if labels.numel() and int(labels.min()) < 0:
        raise ValueError(f"labels must be class indices >= 0; got {int(labels.min())}")
    if labels.shape != (x.shape[0],):
        raise ValueError(f"labels must have shape ({x.shape[0]},); got {tuple(labels.shape)}")
    out = torch.full((int(labels.max()) + 1,), float("nan"), dtype=torch.float64)
    for k in range(out.numel()):
        xk = x[labels == k]
        if xk.shape[0] >= 2:
            out[k] = (xk - xk.mean(0)).pow(2).sum(1).mean().sqrt()
    return out


def knn_recall(real: torch.Tensor, fake: torch.Tensor, k: int = 3) -> float:
    r"""Recall of Kynkäänniemi et al. (2019): the fraction of real samples lying inside the generated manifold,
    i.e. within the distance from some generated sample to its ``k``-th nearest generated neighbour.
    A guided sampler that collapses onto a few typical samples loses recall (diversity)."""
    real, fake = _points("real", real), _points("fake", fake)
    _same_dim(real, fake, ("real", "fake"))
    k = validation.integer("k", k, low=1)
    if fake.shape[0] <= k:
        raise ValueError(f"knn_recall needs more than k={k} generated samples of the real samples' dimension")
    radius = torch.cdist(fake, fake).kthvalue(k + 1, dim=1).values  # +1: the distance to itself is 0
    return float((torch.cdist(real, fake) <= radius[None]).any(1).double().mean())


def histogram_tv(samples: torch.Tensor, edges: torch.Tensor, density) -> float:
    r"""Total-variation distance :math:`\tfrac12\sum_j |\hat P_j - P_j|` between the histogram of 1-D ``samples``
    over the bins ``edges`` and a density: ``density`` is a callable on points (integrated over each bin by the
    midpoint rule on 8 sub-points) or the bin probabilities ``(len(edges) - 1,)``. Everything outside the
    bins is one more cell of the partition."""
    edges = validation.tensor("edges", edges, ndim=1, finite=True).detach().double().cpu()
    if edges.numel() < 2 or not bool((edges.diff() > 0).all()):
        raise ValueError(f"edges must be at least 2 increasing bin edges; got {validation.describe(edges)}")
    s = validation.tensor("samples", samples).detach().double().flatten().cpu()
    if s.numel() == 0:
        raise ValueError("samples must hold at least one sample; got an empty tensor")
    counts = torch.histogram(s, bins=edges).hist
    hat = counts / s.numel()
    if callable(density):
        w = edges.diff()
        sub = (torch.arange(8, dtype=torch.float64) + 0.5) / 8
        pts = (edges[:-1, None] + w[:, None] * sub[None]).flatten()
        out = density(pts)
        if out is None:
            raise TypeError("density returned None: did it forget to `return` its values?")
        out = torch.as_tensor(out, dtype=torch.float64)
        if out.numel() != pts.numel():
            raise ValueError(f"density must return one value per point, shape ({pts.numel()},); got "
                             f"{validation.describe(out)}")
        P = out.reshape(-1, 8).mean(1) * w
    else:
        P = validation.tensor("density", density).double()
        if P.shape != hat.shape:
            raise ValueError(f"density (the bin probabilities) must have shape {tuple(hat.shape)}; got "
                             f"{tuple(P.shape)}")
    outside = abs((1.0 - float(hat.sum())) - (1.0 - float(P.sum())))  # the cell "outside the bins"
    return 0.5 * (float((hat - P).abs().sum()) + outside)


# ------------------------------------------------------------------------------------------------------------
# Calibrated checks against a Gaussian-mixture oracle: statistics that see the *modes*, each with its noise floor


def mmd_multiscale(x: torch.Tensor, y: torch.Tensor, bandwidths=(0.05, 0.1, 0.2, 0.4), *, max_n: int = 1000) -> float:
    r"""Sum over fixed bandwidths :math:`h` of the unbiased :math:`\mathrm{MMD}^2` with a Gaussian kernel
    :math:`e^{-\|a-b\|^2/2h^2}` (:func:`mmd_rbf`), on at most ``max_n`` samples of each set.

    A bandwidth near the width of a mode sees whether the modes are where they should be and as wide as
    they should be; the median-distance bandwidth of :func:`mmd_rbf` sees only the overall shape."""
    max_n = validation.integer("max_n", max_n, low=2)
    x, y = _points("x", x, min_batch=2)[:max_n].cpu(), _points("y", y, min_batch=2)[:max_n].cpu()
    _same_dim(x, y)
    try:
        bandwidths = [validation.number("bandwidths", h, low=0, strict_low=True) for h in bandwidths]
    except TypeError:
        raise ValueError(f"bandwidths must be a sequence of positive numbers; got "
                         f"{validation.describe(bandwidths)}") from None
    if not bandwidths:
        raise ValueError("bandwidths must hold at least one bandwidth; got an empty sequence")
    m, n = x.shape[0], y.shape[0]
    dxx, dyy, dxy = torch.cdist(x, x) ** 2, torch.cdist(y, y) ** 2, torch.cdist(x, y) ** 2  # once for all h
    total = 0.0
    for h in bandwidths:
        kxx, kyy, kxy = (torch.exp(-d / (2 * h**2)) for d in (dxx, dyy, dxy))
        total += float((kxx.sum() - m) / (m * (m - 1)) + (kyy.sum() - n) / (n * (n - 1)) - 2 * kxy.mean())
    return total


def _assign(x: torch.Tensor, mixture) -> tuple[torch.Tensor, torch.Tensor]:
    """Nearest component of each sample in the oracle's own metric, and the squared Mahalanobis distance to it."""
    mixture = _mixture("mixture", mixture)
    x = _points("x", x).cpu()
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"x must be finite; it holds NaN or inf ({validation.describe(x)})")
    if x.ndim != 2 or x.shape[1] != mixture.D:
        raise ValueError(f"samples must have shape (n, {mixture.D}) for this mixture; got {tuple(x.shape)}")
    prec = torch.linalg.inv(mixture.covs)  # (K, D, D)
    d = x[:, None, :] - mixture.means[None]  # (n, K, D)
    maha = torch.einsum("nki,kij,nkj->nk", d, prec, d)
    m, k = maha.min(1)
    return k, m


def mode_weights(x: torch.Tensor, mixture) -> torch.Tensor:
    """Fraction ``(K,)`` of the samples whose nearest component (in Mahalanobis distance) is component k."""
    k, _ = _assign(x, mixture)
    return torch.bincount(k, minlength=mixture.K).double() / k.numel()


def mode_spread(x: torch.Tensor, mixture) -> torch.Tensor:
    r"""Per component ``(K,)``: :math:`\sqrt{\overline{d_M^2}/D}`, the root-mean squared Mahalanobis distance of
    the samples assigned to component k to its mean, per dimension. Exact samples give about 1 (a little less:
    the tail that lands nearer another mode is counted there); modes too narrow give < 1, too wide > 1.
    NaN for a component with no samples."""
    k, m = _assign(x, mixture)
    out = torch.full((mixture.K,), float("nan"), dtype=torch.float64)
    for j in range(mixture.K):
        if (k == j).any():
            out[j] = (m[k == j].mean() / mixture.D).sqrt()
    return out


def off_mode_fraction(x: torch.Tensor, mixture, *, radius: float = 3.0) -> float:
    """Fraction of the samples farther than ``radius`` (Mahalanobis) from *every* component mean: samples that
    bridge modes or miss them. For exact 2-D samples and radius 3 it is about :math:`e^{-9/2}` = 1.1 %."""
    radius = validation.number("radius", radius, low=0)
    _, m = _assign(x, mixture)
    return float((m > radius**2).double().mean())


def mixture_statistics(x: torch.Tensor, mixture, ref: torch.Tensor, *, bandwidths=(0.05, 0.1, 0.2, 0.4)) -> dict:
    r"""The four scalar statistics that :func:`mixture_check` compares with their noise floors:

    - ``mmd``: :func:`mmd_multiscale` between ``x`` and the reference draw ``ref``;
    - ``weights``: total variation :math:`\tfrac12\sum_k|\hat w_k - w_k|` of :func:`mode_weights` vs the oracle's;
    - ``spread``: :math:`\max_k|\log s_k - \log s_k^{\rm data}|` of :func:`mode_spread` vs its expected value
      for exact samples (estimated once on a large oracle draw);
    - ``off_mode``: :func:`off_mode_fraction`.
    """
    x, ref = _points("x", x, min_batch=2), _points("ref", ref, min_batch=2)
    _mixture("mixture", mixture)
    for name, v in (("x", x), ("ref", ref)):
        if v.shape[1] != mixture.D:
            raise ValueError(f"{name} must have shape (n, {mixture.D}) for this mixture; got {tuple(v.shape)}")
    s = mode_spread(x, mixture)
    s_data = _spread_expected(mixture)
    dev = (s.log() - s_data.log()).abs()
    return {
        "mmd": mmd_multiscale(x, ref, bandwidths),
        "weights": 0.5 * float((mode_weights(x, mixture) - mixture.weights).abs().sum()),
        "spread": float("inf") if torch.isnan(dev).any() else float(dev.max()),
        "off_mode": off_mode_fraction(x, mixture),
    }


_SPREAD_CACHE: dict = {}
_FLOOR_CACHE: dict = {}


def _mixture_key(mixture) -> tuple:
    return (mixture.weights.numpy().tobytes(), mixture.means.numpy().tobytes(), mixture.covs.numpy().tobytes())


def _spread_expected(mixture, n: int = 200_000) -> torch.Tensor:
    key = _mixture_key(mixture)
    if key not in _SPREAD_CACHE:
        g = torch.Generator().manual_seed(12345)
        _SPREAD_CACHE[key] = mode_spread(mixture.sample(n, g, dtype=torch.float64), mixture)
    return _SPREAD_CACHE[key]


def _floor_statistics(mixture, n: int, repeats: int, seed: int, bandwidths) -> list:
    """The statistics of ``repeats`` pairs of independent oracle draws of size ``n`` (computed once per setting:
    they do not depend on the samples being checked)."""
    key = (_mixture_key(mixture), n, repeats, seed, tuple(float(h) for h in bandwidths))
    if key not in _FLOOR_CACHE:
        if len(_FLOOR_CACHE) > 64:
            _FLOOR_CACHE.clear()
        g = torch.Generator().manual_seed(seed)
        _FLOOR_CACHE[key] = [mixture_statistics(mixture.sample(n, g, dtype=torch.float64), mixture,
                                                mixture.sample(n, g, dtype=torch.float64), bandwidths=bandwidths)
                             for _ in range(repeats)]
    return _FLOOR_CACHE[key]


def _statistics(name, value, like=None) -> dict:
    """A dict of named real statistics (with the keys of ``like`` when given)."""
    if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
        raise TypeError(f"{name} must be a dict of named statistics like {{'mmd': 0.01, ...}}; got "
                        f"{validation.describe(value)}")
    if like is not None and set(value) != set(like):
        raise ValueError(f"{name} must have the statistics of stats, {sorted(like)}; got {sorted(value)}")
    return {k: validation.number(f"{name}[{k!r}]", v, allow_inf=True) for k, v in value.items()}


class MixtureCheck:
    """The verdict of :func:`mixture_check`: ``.stats`` (the samples' statistics), ``.floor_mean``, ``.floor_std``
    and ``.threshold`` (per statistic, from data-vs-data draws of the same size), ``.failed`` (the statistics above
    their threshold) and ``.passed``. ``str()`` gives a table; ``.ratio(name)`` is stat / threshold."""

    def __init__(self, stats, floor_mean, floor_std, threshold):
        stats = _statistics("stats", stats)
        floor_mean, floor_std = _statistics("floor_mean", floor_mean, stats), _statistics("floor_std", floor_std, stats)
        threshold = _statistics("threshold", threshold, stats)
        self.stats, self.floor_mean, self.floor_std, self.threshold = stats, floor_mean, floor_std, threshold
        self.failed = [k for k in stats if not stats[k] <= threshold[k]]
        self.passed = not self.failed

    def ratio(self, name: str) -> float:
        """``stats[name] / threshold[name]`` (above 1: the statistic failed)."""
        validation.choice("name", name, tuple(self.stats))
        return self.stats[name] / self.threshold[name]

    def __str__(self) -> str:
        rows = [f"{'statistic':10s} {'samples':>9s} {'floor':>9s} {'threshold':>9s}"]
        for k in self.stats:
            rows.append(f"{k:10s} {self.stats[k]:9.4f} {self.floor_mean[k]:9.4f} {self.threshold[k]:9.4f}"
                        f"{'' if k not in self.failed else '  <- above'}")
        return "\n".join(rows)

    __repr__ = __str__


def mixture_check(x: torch.Tensor, mixture, *, repeats: int = 20, z: float = 4.0, seed: int = 0,
                  bandwidths=(0.05, 0.1, 0.2, 0.4)) -> MixtureCheck:
    r"""Are ``x`` ``(n, D)`` samples of the Gaussian mixture ``mixture``? Computes :func:`mixture_statistics`
    for ``x`` against a fresh reference draw, and for ``repeats`` pairs of independent oracle draws of the
    *same* size ``n`` (the noise floor). Each statistic passes when it is at most floor mean + ``z`` floor
    standard deviations. All draws come from generators seeded from ``seed`` (deterministic); the floor does not
    depend on ``x`` and is computed once per (mixture, n, repeats, seed).

    At the book's sizes (n ≥ 1000 samples of an 8-mode ring) it rejects ε* scaled by 0.8 or 1.25, DDPM without
    its noise term and a ring without modes (``tests/test_metrics.py``)."""
    x = _points("x", x).detach().cpu()
    mixture = _mixture("mixture", mixture)
    repeats = validation.integer("repeats", repeats, low=2)
    z = validation.number("z", z, low=0)
    seed = validation.integer("seed", seed, low=0)
    n = x.shape[0]
    if n < 50:
        raise ValueError(f"x must hold at least 50 samples (mixture_check needs them for a useful noise floor); got {n}")
    ref = mixture.sample(n, torch.Generator().manual_seed(seed + 100_003), dtype=torch.float64)
    stats = mixture_statistics(x, mixture, ref, bandwidths=bandwidths)
    floors = _floor_statistics(mixture, n, repeats, seed, bandwidths)
    mean = {k: sum(f[k] for f in floors) / repeats for k in stats}
    std = {k: (sum((f[k] - mean[k]) ** 2 for f in floors) / (repeats - 1)) ** 0.5 for k in stats}
    threshold = {k: mean[k] + z * std[k] for k in stats}
    return MixtureCheck(stats, mean, std, threshold)
