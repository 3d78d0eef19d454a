"""Distances between sets of samples, to *measure* whether a sampler reproduces a distribution.

Each distance is estimated from finite samples, so it has a noise floor: the value it takes between two
independent draws of the *same* distribution (:func:`noise_floor`). A sampler is convincing when its
distance to fresh data is close to that floor.
"""

from __future__ import annotations

import torch

__all__ = [
    "sliced_wasserstein", "mmd_rbf", "frechet_distance", "noise_floor", "gaussian_fit_error", "within_class_spread",
    "knn_recall",
    "histogram_tv",
]


def sliced_wasserstein(x: torch.Tensor, y: torch.Tensor, *, n_projections: int = 256, generator=None) -> float:
    r"""Sliced 2-Wasserstein distance :math:`\big(\mathbb E_\theta W_2^2(\theta^\top X, \theta^\top Y)\big)^{1/2}`
    over random unit directions; in 1-D, :math:`W_2` compares sorted samples (quantiles)."""
    x, y = x.flatten(1).double(), y.flatten(1).double()
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"x and y must have the same dimension; got {x.shape[1]} and {y.shape[1]}")
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
    x, y = x.flatten(1).double().cpu(), y.flatten(1).double().cpu()
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
    x, y = x.flatten(1).double().cpu(), y.flatten(1).double().cpu()
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
    return sum(metric(sample_fn(n), sample_fn(n), **kwargs) for _ in range(repeats)) / repeats


def gaussian_fit_error(x: torch.Tensor, mean: torch.Tensor, cov: torch.Tensor) -> tuple[float, float]:
    """(‖sample mean − mean‖, ‖sample covariance − cov‖_F): a first, crude check of a sampler."""
    x = x.flatten(1).double().cpu()
    return float((x.mean(0) - mean.double()).norm()), float((torch.cov(x.T) - cov.double()).norm())


def within_class_spread(x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    r"""Diversity per class: the root-mean-square distance of each class's samples to their class mean,
    :math:`\sqrt{\mathrm{tr}\,\mathrm{Cov}(x\mid y)}`; returns ``(num_classes,)`` (NaN for a class with < 2 samples)."""
    x = x.flatten(1).double()
    labels = torch.as_tensor(labels).long()
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
    real, fake = real.flatten(1).double(), fake.flatten(1).double()
    if fake.shape[0] <= k or real.shape[1] != fake.shape[1]:
        raise ValueError(f"knn_recall needs more than k={k} generated samples of the real samples' dimension")
    radius = torch.cdist(fake, fake).kthvalue(k + 1, dim=1).values  # +1: the distance to itself is 0
    return float((torch.cdist(real, fake) <= radius[None]).any(1).double().mean())


def histogram_tv(samples: torch.Tensor, edges: torch.Tensor, density) -> float:
    r"""Total-variation distance :math:`\tfrac12\sum_j |\hat P_j - P_j|` between the histogram of 1-D ``samples``
    over the bins ``edges`` and a density: ``density`` is a callable on points (integrated over each bin by the
    midpoint rule on 8 sub-points) or the bin probabilities ``(len(edges) - 1,)``. Everything outside the
    bins is one more cell of the partition."""
    edges = torch.as_tensor(edges, dtype=torch.float64)
    s = torch.as_tensor(samples).detach().double().flatten().cpu()
    counts = torch.histogram(s, bins=edges).hist
    hat = counts / s.numel()
    if callable(density):
        w = edges.diff()
        sub = (torch.arange(8, dtype=torch.float64) + 0.5) / 8
        pts = (edges[:-1, None] + w[:, None] * sub[None]).flatten()
        P = torch.as_tensor(density(pts), dtype=torch.float64).reshape(-1, 8).mean(1) * w
    else:
        P = torch.as_tensor(density, dtype=torch.float64)
        if P.shape != hat.shape:
            raise ValueError(f"bin probabilities must have shape {tuple(hat.shape)}; got {tuple(P.shape)}")
    outside = abs((1.0 - float(hat.sum())) - (1.0 - float(P.sum())))  # the cell "outside the bins"
    return 0.5 * (float((hat - P).abs().sum()) + outside)
