r"""The exact Gaussian-mixture oracle of the book.

The :class:`GaussianMixture` is the book's *oracle*. For :math:`Y = aX + s\varepsilon` with
:math:`X\sim\sum_k w_k\mathcal N(\mu_k,\Sigma_k)` and :math:`\varepsilon\sim\mathcal N(0,I)`, the law of
:math:`Y` is again a mixture, :math:`\sum_k w_k\mathcal N(a\mu_k, a^2\Sigma_k + s^2 I)`, so its density,
score and posterior mean :math:`\mathbb E[X\mid Y]` are closed-form. With :math:`a=\sqrt{\bar\alpha_t}`,
:math:`s=\sqrt{1-\bar\alpha_t}` that is the exact noised marginal of diffusion at step ``t``.
"""

from __future__ import annotations

import math

import torch

from .. import convert, validation
from ..utils import table_on

__all__ = ["GaussianMixture"]


class GaussianMixture:
    """A mixture of Gaussians in ``D`` dimensions with exact noised marginals (see the module docstring).

    Args:
        weights: ``(K,)`` non-negative, summing to 1.
        means: ``(K, D)``.
        covs: ``(K, D, D)`` symmetric positive definite, or ``(K, D)`` diagonals, or ``(K,)`` isotropic variances.
        labels: optional ``(K,)`` integer class of each component (for guidance, lesson 06).

    All computations are done in float64; results come back in the dtype of the input ``x``.
    """

    def __init__(self, weights, means, covs, labels=None):
        w = _float64("weights", weights).flatten()
        mu = _float64("means", means)
        if mu.ndim != 2:
            raise ValueError(f"means must have shape (K, D); got {tuple(mu.shape)}")
        K, D = mu.shape
        if w.shape != (K,):
            raise ValueError(f"weights must have shape ({K},) to match the {K} means; got {tuple(w.shape)}")
        if (w < 0).any() or not torch.isfinite(w).all():
            raise ValueError("mixture weights must be finite and non-negative")
        if abs(w.sum().item() - 1.0) > 1e-6:
            raise ValueError(f"mixture weights must sum to 1; they sum to {w.sum().item():.6g} (divide by their sum)")
        cov = _float64("covs", covs)
        if cov.shape == (K,):
            cov = cov[:, None, None] * torch.eye(D, dtype=torch.float64)
        elif cov.shape == (K, D):
            cov = torch.diag_embed(cov)
        if cov.shape != (K, D, D):
            raise ValueError(f"covs must have shape (K, D, D), (K, D) or (K,) with K={K}, D={D}; got {tuple(cov.shape)}")
        if not torch.isfinite(cov).all():
            raise ValueError("covs must be finite; they hold NaN or inf")
        if not torch.isfinite(mu).all():
            raise ValueError("means must be finite; they hold NaN or inf")
        if not torch.allclose(cov, cov.transpose(-1, -2), atol=1e-10):
            raise ValueError("covs: every covariance must be symmetric")
        _, info = torch.linalg.cholesky_ex(cov)
        if (info != 0).any():
            bad = int(torch.nonzero(info)[0])
            raise ValueError(f"covs: covariance of component {bad} is not positive definite (check its eigenvalues)")
        self.weights, self.means, self.covs = w, mu, cov
        self.K, self.D = K, D
        if labels is not None:
            labels = torch.as_tensor(labels, dtype=torch.long).flatten()
            if labels.shape != (K,) or (labels < 0).any():
                raise ValueError(f"labels must be {K} non-negative integers, one per component")
        self.labels = labels
        self.num_classes = None if labels is None else int(labels.max()) + 1

    # -------------------------------------------------------------------------------- constructors
    @classmethod
    def ring(cls, k: int = 8, radius: float = 2.0, std: float = 0.2, labels=None) -> "GaussianMixture":
        """``k`` equal-weight isotropic components evenly spaced on a circle (2-D)."""
        k = validation.integer("k", k, low=1)
        radius = validation.number("radius", radius)
        std = validation.number("std", std, low=0, strict_low=True)
        ang = torch.arange(k, dtype=torch.float64) * (2 * math.pi / k)
        means = radius * torch.stack([ang.cos(), ang.sin()], dim=1)
        return cls(torch.full((k,), 1.0 / k, dtype=torch.float64), means, torch.full((k,), std**2), labels=labels)

    @classmethod
    def isotropic(cls, means, std: float, weights=None, labels=None) -> "GaussianMixture":
        """Components of a common standard deviation ``std``; equal weights unless given."""
        means = _float64("means", means)
        std = validation.number("std", std, low=0, strict_low=True)
        if means.ndim != 2:
            raise ValueError(f"means must have shape (K, D); got {tuple(means.shape)}")
        K = means.shape[0]
        w = torch.full((K,), 1.0 / K, dtype=torch.float64) if weights is None else weights
        return cls(w, means, torch.full((K,), float(std) ** 2), labels=labels)

    # -------------------------------------------------------------------------------- sampling
    def sample(self, n: int, generator: torch.Generator | None = None, *, return_components: bool = False,
               dtype=torch.float32):
        """Draw ``n`` samples ``(n, D)``; with ``return_components`` also the component index of each."""
        n = validation.integer("n", n, low=1)
        _check_dtype(dtype)
        comp = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        z = torch.randn(n, self.D, generator=generator, dtype=torch.float64)
        L = torch.linalg.cholesky(self.covs)
        x = self.means[comp] + (L[comp] @ z.unsqueeze(-1)).squeeze(-1)
        x = x.to(dtype)
        return (x, comp) if return_components else x

    def sample_class(self, y: int, n: int, generator=None, dtype=torch.float32):
        """Draw ``n`` samples from the class-conditional mixture :math:`p(x\\mid y)`."""
        n = validation.integer("n", n, low=1)
        _check_dtype(dtype)
        return self.conditional(y).sample(n, generator, dtype=dtype)

    # -------------------------------------------------------------------------------- exact quantities
    # Every component of Y = aX + s eps is N(a mu_k, C_k) with C_k = a^2 Sigma_k + s^2 I. Writing
    # Sigma_k = Q_k diag(lambda_k) Q_k^T once (at construction), C_k = Q_k diag(a^2 lambda_k + s^2) Q_k^T for every
    # (a, s): its inverse and log-determinant are diagonal in the eigenbasis, so no (B, K, D, D) array is ever formed
    # and per-sample (a, s) cost the same as one. Isotropic components (Sigma_k = v_k I) skip the rotation entirely.
    def _basis(self, device):
        cache = self.__dict__.setdefault("_basis_cache", {})
        if device not in cache:
            lam, Q = torch.linalg.eigh(self.covs)  # (K, D), (K, D, D), float64
            iso = bool(torch.allclose(self.covs, self.covs.diagonal(dim1=-2, dim2=-1).mean(-1)[:, None, None]
                                      * torch.eye(self.D, dtype=torch.float64), rtol=0, atol=0))
            cache[device] = dict(lam=lam.to(device), Q=Q.to(device), mu=self.means.to(device),
                                 logw=torch.log(self.weights).to(device), iso=iso,
                                 v=self.covs.diagonal(dim1=-2, dim2=-1).mean(-1).to(device))
        return cache[device]

    def _as(self, x, a, s):
        x = _as_points(x, self.D)
        B = x.shape[0]
        # metadata checks only (no host sync): score / posterior_mean run inside samplers' loops via eps_fn
        if not isinstance(a, torch.Tensor) and not isinstance(s, torch.Tensor):
            a, s = validation.number("a", a), validation.number("s", s)
            if a == 0 and s == 0:
                raise ValueError("a and s must not both be 0 (Y = aX + s eps would be the constant 0)")
        a, s = _coef("a", a), _coef("s", s)
        a = torch.as_tensor(a, dtype=torch.float64, device=x.device)
        s = torch.as_tensor(s, dtype=torch.float64, device=x.device)
        if a.ndim not in (0, 1) or s.ndim not in (0, 1) or (a.ndim == 1 and a.shape[0] != B) or (s.ndim == 1 and s.shape[0] != B):
            raise ValueError(f"a and s must be scalars or tensors of shape ({B},); got {tuple(a.shape)}, {tuple(s.shape)}")
        return x, x.to(torch.float64), a.reshape(-1, 1), s.reshape(-1, 1)  # a, s: (1 or B, 1)

    def _terms(self, x, a, s):
        """``(x, x64, a, s, basis, log w_k + log N_k (B, K), c)``: c is (B|1, K) (isotropic) or (B|1, K, D) (eigenbasis)."""
        x, x64, a, s = self._as(x, a, s)
        bs = self._basis(x.device)
        mu = bs["mu"]
        if bs["iso"]:
            c = a**2 * bs["v"] + s**2  # (B|1, K)
            d2 = ((x64 * x64).sum(1, keepdim=True) - 2 * a * (x64 @ mu.T) + a**2 * (mu * mu).sum(1)).clamp_min(0)
            logN = -0.5 * (d2 / c + self.D * torch.log(2 * math.pi * c))
            return x, x64, a, s, bs, bs["logw"] + logN, c
        diff = x64.unsqueeze(1) - a.unsqueeze(-1) * mu  # (B, K, D)
        y = torch.einsum("kde,bkd->bke", bs["Q"], diff)  # Q_k^T (x - a mu_k)
        c = a.unsqueeze(-1) ** 2 * bs["lam"] + s.unsqueeze(-1) ** 2  # (B|1, K, D): eigenvalues of C_k
        logN = -0.5 * ((y * y / c).sum(-1) + torch.log(c).sum(-1) + self.D * math.log(2 * math.pi))
        bs = dict(bs, y=y)
        return x, x64, a, s, bs, bs["logw"] + logN, c

    def log_prob(self, x: torch.Tensor, a=1.0, s=0.0) -> torch.Tensor:
        r""":math:`\log p(y)` of :math:`Y = aX + s\varepsilon` at ``x`` ``(B, D)``; returns ``(B,)``."""
        x, _, _, _, _, lj, _ = self._terms(x, a, s)
        return torch.logsumexp(lj, dim=1).to(x.dtype)

    def component_posterior(self, x: torch.Tensor, a=1.0, s=0.0) -> torch.Tensor:
        r"""Responsibilities :math:`p(k\mid y)` ``(B, K)`` of each component for :math:`Y = aX + s\varepsilon`."""
        x, _, _, _, _, lj, _ = self._terms(x, a, s)
        return torch.softmax(lj, dim=1).to(x.dtype)

    def score(self, x: torch.Tensor, a=1.0, s=0.0) -> torch.Tensor:
        r""":math:`\nabla_y\log p(y) = -\sum_k p(k\mid y)\,C_k^{-1}(y - a\mu_k)`, :math:`C_k = a^2\Sigma_k + s^2 I`."""
        x, x64, a, s, bs, lj, c = self._terms(x, a, s)
        r = torch.softmax(lj, dim=1)
        if bs["iso"]:
            rc = r / c  # (B, K)
            return (-x64 * rc.sum(1, keepdim=True) + a * (rc @ bs["mu"])).to(x.dtype)
        sol = torch.einsum("kde,bke->bkd", bs["Q"], bs["y"] / c)  # C_k^{-1}(x - a mu_k)
        return -(r.unsqueeze(-1) * sol).sum(1).to(x.dtype)

    def posterior_mean(self, x: torch.Tensor, a=1.0, s=0.0) -> torch.Tensor:
        r"""Tweedie's target, the posterior mean
        :math:`\mathbb E[X\mid Y=y] = \sum_k p(k\mid y)\,\big(\mu_k + a\Sigma_k C_k^{-1}(y - a\mu_k)\big)`."""
        x, x64, a, s, bs, lj, c = self._terms(x, a, s)
        r = torch.softmax(lj, dim=1)
        if bs["iso"]:
            g = a * bs["v"] / c  # (B, K): the gain a v_k / c_k of component k
            return ((r * (1 - a * g)) @ bs["mu"] + x64 * (r * g).sum(1, keepdim=True)).to(x.dtype)
        gain = a.unsqueeze(-1) * bs["lam"] / c  # Sigma_k C_k^{-1} in the eigenbasis
        mk = bs["mu"] + torch.einsum("kde,bke->bkd", bs["Q"], gain * bs["y"])
        return (r.unsqueeze(-1) * mk).sum(1).to(x.dtype)

    def denoiser(self, path):
        r"""The exact denoiser on a noise path (:mod:`tinydiff.denoisers`): :math:`\hat x_0 = \mathbb E[X\mid x_t]` with
        :math:`x_t = \alpha_t X + \sigma_t\varepsilon`. Works for every path and every sampler."""
        from ..denoisers import Denoiser

        def x0(x, t):
            return self.posterior_mean(x, path.alpha(t), path.sigma(t))

        return Denoiser(x0, path, "x0")

    # -------------------------------------------------------------------------------- classes
    def _require_labels(self):
        if self.labels is None:
            raise ValueError("this mixture has no labels: build it with labels=[class of each component]")

    def class_posterior(self, x: torch.Tensor, a=1.0, s=0.0) -> torch.Tensor:
        r""":math:`p(y\mid x_t)` ``(B, num_classes)``: the responsibilities summed over each class's components."""
        self._require_labels()
        r = self.component_posterior(x, a, s)
        onehot = torch.nn.functional.one_hot(self.labels, self.num_classes).to(r.dtype).to(r.device)
        return r @ onehot

    def conditional(self, y: int) -> "GaussianMixture":
        r"""The class-conditional mixture :math:`p(x\mid y)` (components of class ``y``, weights renormalised)."""
        self._require_labels()
        if isinstance(y, torch.Tensor) and y.numel() == 1 and not (y.is_floating_point() or y.is_complex()
                                                                   or y.dtype == torch.bool):
            y = int(y)
        else:
            y = validation.integer("y", y)
        if not 0 <= y < self.num_classes:
            raise ValueError(f"class y must be in 0..{self.num_classes - 1}; got {y}")
        keep = self.labels == y
        w = self.weights[keep]
        return GaussianMixture(w / w.sum(), self.means[keep], self.covs[keep], labels=self.labels[keep])

    # -------------------------------------------------------------------------------- diffusion view
    def eps_fn(self, sched):
        r"""The exact :math:`\varepsilon`-denoiser for schedule ``sched``:
        :math:`\varepsilon^*(x_t, t) = -\sqrt{1-\bar\alpha_t}\,\nabla\log q_t(x_t)` (usable by any sampler)."""

        def eps(x, t):
            ab = table_on(sched.alpha_bar, t.device)[t]
            return convert.eps_from_score(self.score(x, ab.sqrt(), (1 - ab).sqrt()), ab)

        return eps

    def mean(self) -> torch.Tensor:
        """The mixture mean ``(D,)`` (float64)."""
        return self.weights @ self.means

    def covariance(self) -> torch.Tensor:
        """The mixture covariance ``(D, D)`` (float64): within-component plus between-component spread."""
        m = self.mean()
        d = self.means - m
        return (self.weights[:, None, None] * (self.covs + d[:, :, None] * d[:, None, :])).sum(0)

    def __repr__(self) -> str:
        return f"GaussianMixture(K={self.K}, D={self.D}{'' if self.labels is None else f', classes={self.num_classes}'})"


# ------------------------------------------------------------------------------------ 2-D toy sets


def _float64(name, value):
    """``value`` (a tensor, numpy array or nested list of numbers) as a float64 tensor, refused by name."""
    if value is None or isinstance(value, (str, bytes)):
        raise TypeError(f"{name} must be a tensor (or a list of numbers); got {validation.describe(value)}")
    if isinstance(value, torch.Tensor) and (value.is_complex() or value.dtype == torch.bool):
        raise ValueError(f"{name} must hold real numbers; got {validation.describe(value)}")
    try:
        return torch.as_tensor(value, dtype=torch.float64)
    except (TypeError, ValueError, RuntimeError):
        raise TypeError(f"{name} must be a tensor (or a list of numbers); got {validation.describe(value)}") from None


def _coef(name, c):
    """A scalar or per-sample coefficient (Python number or tensor): checked on metadata only."""
    if isinstance(c, torch.Tensor):
        if c.is_complex() or c.dtype == torch.bool:
            raise ValueError(f"{name} must be a real scalar or (B,) tensor; got {validation.describe(c)}")
        return c
    if hasattr(c, "__array__") and not isinstance(c, (bool, complex)):
        return c  # numpy scalars and arrays, converted by torch.as_tensor as before
    return validation.number(name, c)


def _check_dtype(dtype):
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ValueError(f"dtype must be a floating torch.dtype like torch.float32; got {validation.describe(dtype)}")


def _as_points(x, D: int) -> torch.Tensor:
    """``x`` as a floating ``(B, D)`` tensor: numpy accepted, integers promoted to float64 (never truncated)."""
    if not isinstance(x, torch.Tensor):
        try:
            x = torch.as_tensor(x)
        except (TypeError, ValueError, RuntimeError):
            raise TypeError(f"x must be a tensor of shape (B, {D}); got {type(x).__name__}") from None
    if x.is_complex() or x.dtype == torch.bool:
        raise ValueError(f"x must be a real floating tensor; got dtype {x.dtype}")
    if not x.is_floating_point():
        x = x.to(torch.float64)
    if x.ndim != 2 or x.shape[1] != D:
        raise ValueError(f"x must have shape (B, {D}) for this {D}-D mixture; got {tuple(x.shape)}")
    return x
