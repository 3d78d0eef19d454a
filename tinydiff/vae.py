r"""The VAE and the ELBO (lesson 01).

For any distribution :math:`q(z)` over the latent,

.. math:: \log p(x) = \underbrace{\mathbb E_{q}\log p_\theta(x\mid z) - \mathrm{KL}(q(z)\,\|\,p(z))}_{\text{ELBO}(q)}
          + \mathrm{KL}(q(z)\,\|\,p(z\mid x)),

so the ELBO is a lower bound on :math:`\log p(x)`, tight exactly when :math:`q` is the true posterior.

This module has three parts:

- Gaussian helpers in the VAE's parameterisation (mean and *log-variance*): :func:`gaussian_kl_std_normal`,
  :func:`gaussian_kl`, :func:`diag_gaussian_log_prob`, :func:`reparameterize`, and the full-covariance
  :func:`gaussian_kl_full`, :func:`mvn_log_prob`. (:func:`tinydiff.ddpm.gaussian_kl` is the same KL for
  isotropic Gaussians given by their *variances*; lesson 02 uses that form.)
- :class:`LinearGaussianModel`, a latent-variable model where :math:`\log p(x)`, the posterior, the ELBO of
  any Gaussian :math:`q` and the KL gap are all exact, so the identity above can be checked to rounding error.
- :class:`VAE`, an MLP encoder :math:`q_\phi(z\mid x)` and decoder :math:`p_\theta(x\mid z)` trained by
  maximising the ELBO, with the importance-weighted bound (IWAE) :func:`iwae_bound` as a sharper estimate
  of :math:`\log p(x)`; and the two gradient estimators :func:`grad_reparam` and
  :func:`grad_score_function`.

Log-densities and KLs are in nats, one value per sample (summed over the event dimensions).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from . import validation as V
from .utils import check_same_shape

__all__ = [
    "gaussian_kl_std_normal",
    "gaussian_kl",
    "gaussian_kl_full",
    "diag_gaussian_log_prob",
    "mvn_log_prob",
    "reparameterize",
    "log_mean_exp",
    "iwae_bound",
    "LinearGaussianModel",
    "VAE",
    "grad_reparam",
    "grad_score_function",
]

LOG_2PI = math.log(2 * math.pi)


def _autocast_on(device_type: str) -> bool:
    """Whether autocast is active for this device type (False for types autocast does not know, e.g. meta)."""
    try:
        return torch.is_autocast_enabled(device_type)
    except RuntimeError:
        return False


# ---------------------------------------------------------------------------------- input checks
def _check_batched(name: str, x: torch.Tensor) -> None:
    if x.ndim < 2:
        raise ValueError(
            f"{name} must be batched, shape (B, m) (one row per sample); got shape {tuple(x.shape)}. "
            f"For a single vector use {name}[None]."
        )


def _tensors(**tensors) -> list[torch.Tensor]:
    """Each argument as a floating tensor (numpy converted, integers promoted; None, lists, bool, complex refused)."""
    return [V.tensor(name, value) for name, value in tensors.items()]


def _as64(name: str, value) -> torch.Tensor:
    """``value`` (a tensor, numpy array, number or nested list) as a float64 tensor, refusing None, strings,
    booleans and complex values by name."""
    if value is None or isinstance(value, (str, bytes, bool)):
        raise TypeError(f"{name} must be a tensor or an array of numbers; got {V.describe(value)}")
    if (isinstance(value, torch.Tensor) and (value.is_complex() or value.dtype == torch.bool)) or isinstance(value, complex):
        raise ValueError(f"{name} must hold real numbers; got {V.describe(value)}")
    try:
        return torch.as_tensor(value, dtype=torch.float64)
    except (TypeError, ValueError, RuntimeError):
        raise TypeError(f"{name} must be a tensor or an array of numbers; got {V.describe(value)}") from None


def _check_finite(**tensors: torch.Tensor) -> None:
    for name, t in tensors.items():
        if not bool(torch.isfinite(t).all()):
            raise ValueError(f"{name} contains NaN or inf; check the values you pass in")


def _check_positive(name: str, value) -> torch.Tensor:
    arg = name.split(" ")[0]
    if value is None or isinstance(value, (str, bytes, bool, complex)):
        raise TypeError(f"{arg} must be a positive real number; got {V.describe(value)}")
    try:
        v = torch.as_tensor(value)
    except (TypeError, ValueError, RuntimeError):
        raise TypeError(f"{arg} must be a positive real number; got {V.describe(value)}") from None
    if v.is_complex() or v.dtype == torch.bool:
        raise ValueError(f"{arg} must be a real number; got {V.describe(value)}")
    if not bool(torch.isfinite(v).all()) or bool((v <= 0).any()):
        raise ValueError(
            f"{name} must be positive and finite (a standard deviation or a variance); got {value!r}. "
            "If you hold a log-variance, pass exp(logvar) or use the logvar argument."
        )
    return v


def _check_count(name: str, k) -> int:
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"{name} must be a positive integer (at least 1 sample); got {k!r}")
    return k


# ---------------------------------------------------------------------------------- diagonal Gaussians
def gaussian_kl_std_normal(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    r""":math:`\mathrm{KL}(\mathcal N(\mu, \mathrm{diag}\,\sigma^2)\,\|\,\mathcal N(0, I))
    = \tfrac12\sum_j\big(\sigma_j^2 + \mu_j^2 - 1 - \log\sigma_j^2\big)`, with ``logvar`` :math:`=\log\sigma^2`.

    ``mu`` and ``logvar`` have shape ``(B, m)`` (or ``(B, ...)``); returns ``(B,)``, summed over the rest.
    """
    mu, logvar = _tensors(mu=mu, logvar=logvar)
    check_same_shape(mu=mu, logvar=logvar)
    _check_batched("mu", mu)
    kl = 0.5 * (logvar.exp() + mu.pow(2) - 1.0 - logvar)
    return kl.flatten(1).sum(1)


def gaussian_kl(mu1: torch.Tensor, logvar1: torch.Tensor, mu2: torch.Tensor, logvar2: torch.Tensor) -> torch.Tensor:
    r""":math:`\mathrm{KL}(\mathcal N(\mu_1, \mathrm{diag}\,\sigma_1^2)\,\|\,
    \mathcal N(\mu_2, \mathrm{diag}\,\sigma_2^2))
    = \tfrac12\sum_j\Big(\log\frac{\sigma_{2,j}^2}{\sigma_{1,j}^2}
    + \frac{\sigma_{1,j}^2 + (\mu_{1,j}-\mu_{2,j})^2}{\sigma_{2,j}^2} - 1\Big)`.

    Arguments are means and log-variances of shape ``(B, m)`` (the second pair may broadcast against the
    first); returns ``(B,)``. With ``mu2 = 0, logvar2 = 0`` it is :func:`gaussian_kl_std_normal`.
    """
    mu1, logvar1, mu2, logvar2 = _tensors(mu1=mu1, logvar1=logvar1, mu2=mu2, logvar2=logvar2)
    check_same_shape(mu1=mu1, logvar1=logvar1)
    _check_batched("mu1", mu1)
    try:
        mu2, logvar2 = torch.broadcast_to(mu2, mu1.shape), torch.broadcast_to(logvar2, mu1.shape)
    except RuntimeError:
        raise ValueError(
            f"mu2 {tuple(torch.as_tensor(mu2).shape)} and logvar2 {tuple(torch.as_tensor(logvar2).shape)} must "
            f"broadcast to the shape of mu1 {tuple(mu1.shape)}"
        ) from None
    kl = 0.5 * (logvar2 - logvar1 + (logvar1.exp() + (mu1 - mu2).pow(2)) * torch.exp(-logvar2) - 1.0)
    return kl.flatten(1).sum(1)


def diag_gaussian_log_prob(x: torch.Tensor, mu: torch.Tensor, logvar) -> torch.Tensor:
    r""":math:`\log\mathcal N(x;\mu,\mathrm{diag}\,\sigma^2) = -\tfrac12\sum_j\big(\log 2\pi + \log\sigma_j^2
    + (x_j-\mu_j)^2/\sigma_j^2\big)`, summed over the **last** dimension.

    ``x``, ``mu`` and ``logvar`` broadcast together (so ``x`` may carry extra leading sample dimensions,
    e.g. ``(K, B, m)`` against ``(B, m)``); returns the broadcast shape without its last dimension.
    """
    x, mu = _tensors(x=x, mu=mu)
    if not torch.is_tensor(logvar):
        logvar = torch.as_tensor(V.number("logvar", logvar, allow_inf=True), dtype=mu.dtype, device=mu.device)
    else:
        logvar = V.tensor("logvar", logvar)
    try:
        torch.broadcast_shapes(x.shape, mu.shape, logvar.shape)
    except RuntimeError:
        raise ValueError(f"x {tuple(x.shape)}, mu {tuple(mu.shape)} and logvar {tuple(logvar.shape)} must broadcast "
                         "together") from None
    if min(x.ndim, mu.ndim) < 1 or x.shape[-1] == 0:
        raise ValueError(f"x must have a last (feature) dimension of size >= 1; got {V.describe(x)}")
    return -0.5 * (LOG_2PI + logvar + (x - mu).pow(2) * torch.exp(-logvar)).sum(-1)


def reparameterize(mu: torch.Tensor, logvar: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    r"""The reparameterisation trick: :math:`z = \mu + \sigma\odot\varepsilon` with
    :math:`\sigma = \exp(\tfrac12\log\sigma^2)` and :math:`\varepsilon\sim\mathcal N(0, I)`.

    ``eps`` has the shape of ``mu`` or ``(S, *mu.shape)`` (S draws per sample); ``z`` has the shape of ``eps``.
    Gradients flow to ``mu`` and ``logvar`` through a deterministic function: that is the whole trick.
    """
    mu, logvar, eps = _tensors(mu=mu, logvar=logvar, eps=eps)
    check_same_shape(mu=mu, logvar=logvar)
    if tuple(eps.shape[-mu.ndim:]) != tuple(mu.shape) or eps.ndim not in (mu.ndim, mu.ndim + 1):
        raise ValueError(
            f"eps must have the shape of mu {tuple(mu.shape)} or (S, *mu.shape) for S draws; got {tuple(eps.shape)}"
        )
    return mu + torch.exp(0.5 * logvar) * eps


# ---------------------------------------------------------------------------------- full-covariance Gaussians
def _cholesky(name: str, cov: torch.Tensor) -> torch.Tensor:
    if cov.ndim < 2 or cov.shape[-1] != cov.shape[-2]:
        raise ValueError(f"{name} must be a square covariance (m, m) or a batch (B, m, m); got {tuple(cov.shape)}")
    if not torch.allclose(cov, cov.transpose(-1, -2), atol=1e-8, rtol=1e-6):
        raise ValueError(f"{name} must be symmetric (use (C + C.T) / 2)")
    L, info = torch.linalg.cholesky_ex(cov)
    if bool((info != 0).any()):
        raise ValueError(
            f"{name} is not positive definite (a covariance needs all eigenvalues > 0; a variance cannot be <= 0)"
        )
    return L


def _logdet(L: torch.Tensor) -> torch.Tensor:
    return 2.0 * torch.log(torch.diagonal(L, dim1=-2, dim2=-1)).sum(-1)


def mvn_log_prob(x: torch.Tensor, mean: torch.Tensor, cov: torch.Tensor) -> torch.Tensor:
    r""":math:`\log\mathcal N(x;\mu,\Sigma)
    = -\tfrac12\big(d\log 2\pi + \log\det\Sigma + (x-\mu)^\top\Sigma^{-1}(x-\mu)\big)`.

    ``x`` ``(..., d)`` broadcasts against ``mean`` ``(..., d)``; ``cov`` is ``(d, d)`` or ``(B, d, d)``
    matching a batch dimension just before ``d``. Computed with a Cholesky factor, in float64.
    """
    x, mean, cov = _tensors(x=x, mean=mean, cov=cov)
    if x.ndim < 1 or mean.shape[-1:] != x.shape[-1:]:
        raise ValueError(f"mean must end in the dimension of x, {tuple(x.shape[-1:])}; got {V.describe(mean)}")
    try:
        torch.broadcast_shapes(x.shape, mean.shape)
    except RuntimeError:
        raise ValueError(f"mean {tuple(mean.shape)} must broadcast against x {tuple(x.shape)}") from None
    L = _cholesky("cov", cov.double())
    if L.shape[-1] != x.shape[-1]:
        raise ValueError(f"cov must be ({x.shape[-1]}, {x.shape[-1]}) for x of dimension {x.shape[-1]}; got "
                         f"{tuple(cov.shape)}")
    diff = (x.double() - mean.double()).unsqueeze(-1)
    sol = torch.linalg.solve_triangular(L.expand(*diff.shape[:-2], *L.shape[-2:]), diff, upper=False)
    maha = sol.squeeze(-1).pow(2).sum(-1)
    return -0.5 * (x.shape[-1] * LOG_2PI + _logdet(L) + maha)


def gaussian_kl_full(mean1: torch.Tensor, cov1: torch.Tensor, mean2: torch.Tensor, cov2: torch.Tensor) -> torch.Tensor:
    r""":math:`\mathrm{KL}(\mathcal N(\mu_1,\Sigma_1)\,\|\,\mathcal N(\mu_2,\Sigma_2)) = \tfrac12\big(
    \mathrm{tr}(\Sigma_2^{-1}\Sigma_1) + (\mu_2-\mu_1)^\top\Sigma_2^{-1}(\mu_2-\mu_1) - m
    + \log\det\Sigma_2 - \log\det\Sigma_1\big)`.

    Means ``(B, m)``; covariances ``(m, m)`` or ``(B, m, m)``; returns ``(B,)`` in float64.
    """
    mean1, cov1, mean2, cov2 = _tensors(mean1=mean1, cov1=cov1, mean2=mean2, cov2=cov2)
    _check_batched("mean1", mean1)
    if mean1.ndim != 2 or mean1.shape[0] == 0:
        raise ValueError(f"mean1 must have shape (B, m) with B >= 1; got {V.describe(mean1)}")
    if mean2.shape[-1:] != mean1.shape[-1:] or mean2.ndim > 2 or (mean2.ndim == 2 and mean2.shape[0] not in (1, mean1.shape[0])):
        raise ValueError(f"mean2 must have shape ({mean1.shape[0]}, {mean1.shape[1]}) or ({mean1.shape[1]},); got "
                         f"{V.describe(mean2)}")
    L1, L2 = _cholesky("cov1", cov1.double()), _cholesky("cov2", cov2.double())
    m = mean1.shape[-1]
    B = mean1.shape[0]
    L1, L2 = L1.expand(B, m, m), L2.expand(B, m, m)
    A = torch.linalg.solve_triangular(L2, L1, upper=False)  # L2^{-1} L1, so tr(S2^{-1} S1) = ||A||_F^2
    diff = (mean2.double() - mean1.double()).expand(B, m).unsqueeze(-1)
    u = torch.linalg.solve_triangular(L2, diff, upper=False).squeeze(-1)
    return 0.5 * (A.pow(2).sum((-1, -2)) + u.pow(2).sum(-1) - m + _logdet(L2) - _logdet(L1))


# ---------------------------------------------------------------------------------- importance sampling
def log_mean_exp(log_w: torch.Tensor, dim: int = 0) -> torch.Tensor:
    r""":math:`\log\frac1K\sum_k e^{\ell_k}` along ``dim``, computed stably (``logsumexp`` minus ``log K``)."""
    log_w = V.tensor("log_w", log_w)
    return torch.logsumexp(log_w, dim=dim) - math.log(log_w.shape[dim])


def iwae_bound(log_w: torch.Tensor, K: int | None = None) -> torch.Tensor:
    r"""The importance-weighted bound :math:`\mathcal L_K = \log\frac1K\sum_{k=1}^K \frac{p(x,z_k)}{q(z_k\mid x)}`
    from log-weights ``log_w`` ``(N, B)`` (``N`` draws :math:`z_k\sim q` per sample).

    With ``K`` (a divisor of ``N``) the ``N`` draws are split into ``N/K`` disjoint blocks of ``K`` and the
    block bounds are averaged: an estimate of :math:`\mathbb E\,\mathcal L_K` that reuses the same draws for
    every ``K``. By Jensen's inequality these block averages never decrease when ``K`` doubles.
    ``K = 1`` is the plain Monte Carlo ELBO; as ``K`` grows, :math:`\mathcal L_K\uparrow\log p(x)`.
    Returns ``(B,)``.
    """
    log_w = V.tensor("log_w", log_w)
    if log_w.ndim != 2 or log_w.shape[0] == 0:
        raise ValueError(
            f"log_w must have shape (N, B): N importance samples for each of B inputs; got {tuple(log_w.shape)}"
        )
    N = log_w.shape[0]
    K = N if K is None else _check_count("K", K)
    if N % K:
        raise ValueError(f"K = {K} must divide the number of draws N = {N} (blocks of K draws); draw a multiple of K")
    return log_mean_exp(log_w.reshape(N // K, K, -1), dim=1).mean(0)


# ---------------------------------------------------------------------------------- the exact model
class LinearGaussianModel:
    r"""A latent-variable model in which every quantity of the ELBO is exact:

    .. math:: p(z) = \mathcal N(0, I_m),\qquad p(x\mid z) = \mathcal N(Wz + b,\ s^2 I_n).

    - marginal :math:`p(x) = \mathcal N(b,\ WW^\top + s^2 I_n)` (:meth:`log_prob`);
    - posterior :math:`p(z\mid x) = \mathcal N\big(\Sigma_{z|x}W^\top(x-b)/s^2,\ \Sigma_{z|x}\big)` with
      :math:`\Sigma_{z|x} = (I_m + W^\top W/s^2)^{-1}` (:meth:`posterior`);
    - for a Gaussian :math:`q = \mathcal N(\mu_q, \Sigma_q)`, :meth:`elbo` and :meth:`kl_to_posterior` in
      closed form, so :math:`\log p(x) = \mathrm{ELBO}(q) + \mathrm{KL}(q\,\|\,p(z\mid x))` holds to rounding.

    (Probabilistic PCA is this model.) All computations are in float64; ``x`` is ``(B, n)``, ``z`` ``(B, m)``,
    and Gaussian ``q``'s are given per input by a mean ``(B, m)`` and a covariance ``(m, m)`` or ``(B, m, m)``.
    """

    def __init__(self, W, b, s: float):
        W = _as64("W", W)
        if W.ndim != 2:
            raise ValueError(f"W must be a matrix (n, m): n data dimensions, m latent dimensions; got {tuple(W.shape)}")
        b = _as64("b", b).flatten()
        if b.shape != (W.shape[0],):
            raise ValueError(f"b must have shape ({W.shape[0]},) (one offset per data dimension); got {tuple(b.shape)}")
        _check_finite(W=W, b=b)
        self.s = float(_check_positive("s (the decoder's noise standard deviation)", s))
        self.W, self.b = W, b
        self.n, self.m = W.shape

    @classmethod
    def random(cls, n: int, m: int, s: float = 0.5, generator: torch.Generator | None = None) -> "LinearGaussianModel":
        """A model with ``W`` and ``b`` drawn from a standard normal (``generator`` makes it reproducible)."""
        _check_count("n", n)
        _check_count("m", m)
        W = torch.randn(n, m, generator=generator, dtype=torch.float64)
        b = torch.randn(n, generator=generator, dtype=torch.float64)
        return cls(W, b, s)

    def __repr__(self) -> str:
        return f"LinearGaussianModel(n={self.n}, m={self.m}, s={self.s:g})"

    # ------------------------------------------------------------------ checks
    def _x(self, x) -> torch.Tensor:
        x = _as64("x", x)
        if x.ndim != 2 or x.shape[1] != self.n:
            raise ValueError(f"x must have shape (B, {self.n}) for this model (n = {self.n}); got {tuple(x.shape)}")
        return x

    def _q(self, x, q_mean, q_cov):
        q_mean = _as64("q_mean", q_mean)
        if q_mean.shape != (x.shape[0], self.m):
            raise ValueError(f"q_mean must have shape ({x.shape[0]}, {self.m}): one latent mean per input; got "
                             f"{tuple(q_mean.shape)}")
        q_cov = _as64("q_cov", q_cov)
        if q_cov.shape not in ((self.m, self.m), (x.shape[0], self.m, self.m)):
            raise ValueError(f"q_cov must have shape ({self.m}, {self.m}) or ({x.shape[0]}, {self.m}, {self.m}); got "
                             f"{tuple(q_cov.shape)}")
        return q_mean, q_cov, _cholesky("q_cov", q_cov)

    # ------------------------------------------------------------------ exact quantities
    def marginal_cov(self) -> torch.Tensor:
        r""":math:`\mathrm{Cov}\,x = WW^\top + s^2 I_n`."""
        return self.W @ self.W.T + self.s**2 * torch.eye(self.n, dtype=torch.float64)

    def sample(self, n: int, generator: torch.Generator | None = None, *, return_latents: bool = False):
        r"""Ancestral sampling: :math:`z\sim\mathcal N(0,I)`, then :math:`x = Wz + b + s\,\varepsilon`.
        Returns ``x`` ``(n, self.n)``, or ``(x, z)`` with ``return_latents=True``."""
        _check_count("n", n)
        z = torch.randn(n, self.m, generator=generator, dtype=torch.float64)
        x = z @ self.W.T + self.b + self.s * torch.randn(n, self.n, generator=generator, dtype=torch.float64)
        return (x, z) if return_latents else x

    def log_prob(self, x) -> torch.Tensor:
        r"""Exact :math:`\log p(x) = \log\mathcal N(x;\,b,\,WW^\top + s^2I)`, ``(B,)``."""
        x = self._x(x)
        return mvn_log_prob(x, self.b.expand_as(x), self.marginal_cov())

    def log_prior(self, z) -> torch.Tensor:
        r""":math:`\log p(z) = \log\mathcal N(z; 0, I_m)`, over the last dimension of ``z``."""
        z = V.tensor("z", _as64("z", z))
        return diag_gaussian_log_prob(z, torch.zeros_like(z), 0.0)

    def log_likelihood(self, x, z) -> torch.Tensor:
        r""":math:`\log p(x\mid z) = \log\mathcal N(x; Wz+b, s^2 I_n)`. ``z`` is ``(B, m)`` or ``(K, B, m)``."""
        x = self._x(x)
        z = _as64("z", z)
        if z.shape[-2:] != (x.shape[0], self.m) or z.ndim not in (2, 3):
            raise ValueError(f"z must have shape ({x.shape[0]}, {self.m}) or (K, {x.shape[0]}, {self.m}); "
                             f"got {tuple(z.shape)}")
        return diag_gaussian_log_prob(x, z @ self.W.T + self.b, 2 * math.log(self.s))

    def log_joint(self, x, z) -> torch.Tensor:
        r""":math:`\log p(x, z) = \log p(z) + \log p(x\mid z)`; ``z`` is ``(B, m)`` or ``(K, B, m)``."""
        return self.log_prior(z) + self.log_likelihood(x, z)

    def posterior(self, x) -> tuple[torch.Tensor, torch.Tensor]:
        r"""Exact :math:`p(z\mid x) = \mathcal N(\mu_{z|x}, \Sigma_{z|x})` with
        :math:`\Sigma_{z|x} = (I + W^\top W/s^2)^{-1}`, :math:`\mu_{z|x} = \Sigma_{z|x}W^\top(x - b)/s^2`.

        Returns ``(mean (B, m), cov (B, m, m))`` (the covariance does not depend on ``x``; it is repeated so
        the pair can be passed straight to :meth:`elbo` as a ``q``)."""
        x = self._x(x)
        precision = torch.eye(self.m, dtype=torch.float64) + self.W.T @ self.W / self.s**2
        cov = torch.linalg.inv(precision)
        cov = 0.5 * (cov + cov.T)
        mean = (x - self.b) @ self.W @ cov.T / self.s**2
        return mean, cov.expand(x.shape[0], self.m, self.m).clone()

    def expected_log_likelihood(self, x, q_mean, q_cov) -> torch.Tensor:
        r""":math:`\mathbb E_{z\sim q}\log p(x\mid z) = -\tfrac n2\log(2\pi s^2)
        - \big(\|x - W\mu_q - b\|^2 + \mathrm{tr}(W\Sigma_qW^\top)\big)/(2s^2)` (exact), ``(B,)``."""
        x = self._x(x)
        q_mean, q_cov, _ = self._q(x, q_mean, q_cov)
        resid = x - q_mean @ self.W.T - self.b
        trace = torch.einsum("ij,...jk,ik->...", self.W, q_cov, self.W).expand(x.shape[0])
        return -0.5 * self.n * math.log(2 * math.pi * self.s**2) - (resid.pow(2).sum(-1) + trace) / (2 * self.s**2)

    def kl_to_prior(self, x, q_mean, q_cov) -> torch.Tensor:
        r""":math:`\mathrm{KL}(q\,\|\,p(z))` for :math:`q=\mathcal N(\mu_q,\Sigma_q)`, :math:`p(z)=\mathcal N(0,I)`;
        ``(B,)``."""
        x = self._x(x)
        q_mean, q_cov, _ = self._q(x, q_mean, q_cov)
        return gaussian_kl_full(q_mean, q_cov, torch.zeros_like(q_mean), torch.eye(self.m, dtype=torch.float64))

    def elbo(self, x, q_mean, q_cov) -> torch.Tensor:
        r"""Exact :math:`\mathrm{ELBO}(q) = \mathbb E_q\log p(x\mid z) - \mathrm{KL}(q\,\|\,p(z))` for a Gaussian
        :math:`q = \mathcal N(\mu_q,\Sigma_q)`, ``(B,)``."""
        return self.expected_log_likelihood(x, q_mean, q_cov) - self.kl_to_prior(x, q_mean, q_cov)

    def kl_to_posterior(self, x, q_mean, q_cov) -> torch.Tensor:
        r"""Exact :math:`\mathrm{KL}(q\,\|\,p(z\mid x))`, the gap :math:`\log p(x) - \mathrm{ELBO}(q)`, ``(B,)``."""
        x = self._x(x)
        q_mean, q_cov, _ = self._q(x, q_mean, q_cov)
        p_mean, p_cov = self.posterior(x)
        return gaussian_kl_full(q_mean, q_cov, p_mean, p_cov)

    # ------------------------------------------------------------------ Monte Carlo with a Gaussian q
    def sample_q(self, x, q_mean, q_cov, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        r"""``n`` draws :math:`z = \mu_q + L\varepsilon` from :math:`q` (:math:`LL^\top = \Sigma_q`),
        shape ``(n, B, m)``."""
        x = self._x(x)
        q_mean, _, L = self._q(x, q_mean, q_cov)
        _check_count("n", n)
        eps = torch.randn(n, x.shape[0], self.m, generator=generator, dtype=torch.float64)
        return q_mean + (L @ eps.unsqueeze(-1)).squeeze(-1)

    def log_weights(self, x, q_mean, q_cov, K: int, generator: torch.Generator | None = None) -> torch.Tensor:
        r"""Log importance weights :math:`\log p(x, z_k) - \log q(z_k)` for ``K`` draws :math:`z_k\sim q`,
        ``(K, B)``."""
        _check_count("K", K)
        z = self.sample_q(x, q_mean, q_cov, K, generator)
        q_mean = _as64("q_mean", q_mean)
        q_cov = _as64("q_cov", q_cov)
        return self.log_joint(x, z) - mvn_log_prob(z, q_mean, q_cov)

    def log_prob_is(self, x, q_mean, q_cov, K: int, generator: torch.Generator | None = None) -> torch.Tensor:
        r"""The importance-weighted bound :math:`\log\frac1K\sum_k p(x,z_k)/q(z_k)`, :math:`z_k\sim q`, ``(B,)``
        (one draw of the estimator; its mean increases towards :meth:`log_prob` as ``K`` grows)."""
        return iwae_bound(self.log_weights(x, q_mean, q_cov, K, generator))


# ---------------------------------------------------------------------------------- the VAE
def _mlp(sizes) -> nn.Sequential:
    layers = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(nn.SiLU())
    return nn.Sequential(*layers)


class VAE(nn.Module):
    r"""A variational autoencoder with MLP encoder and decoder.

    - Encoder :math:`q_\phi(z\mid x) = \mathcal N(\mu_\phi(x), \mathrm{diag}\,\sigma^2_\phi(x))`: an MLP maps
      the flattened ``x`` to :math:`(\mu, \log\sigma^2)` (:meth:`encode`).
    - Prior :math:`p(z) = \mathcal N(0, I_m)`.
    - Decoder :math:`p_\theta(x\mid z) = \mathcal N(\mathrm{dec}_\theta(z),\ s^2 I_n)` with one scalar variance
      :math:`s^2` shared by all pixels: learned (a parameter ``decoder_logvar``, initialised at
      ``log 0.5**2``) when ``decoder_std=None``, else fixed to ``decoder_std**2``. A learned :math:`s^2`
      makes the ELBO an honest bound on a continuous density of ``x``; a fixed one turns the reconstruction
      term into a weighted squared error.

    ``data_shape`` is the shape of one input, e.g. ``(1, 8, 8)`` for the digits; inputs are ``(B, *data_shape)``.
    All noise is drawn on the CPU (from ``generator`` if given) and moved to the model's device.
    """

    def __init__(self, data_shape=(1, 8, 8), latent_dim: int = 8, hidden: int = 256, depth: int = 2,
                 decoder_std: float | None = None):
        super().__init__()
        try:
            self.data_shape = V.shape("data_shape", data_shape)
        except ValueError:
            raise ValueError(f"data_shape must be the shape of one input, e.g. (1, 8, 8); got {data_shape!r}") from None
        if not self.data_shape or any(d < 1 for d in self.data_shape):
            raise ValueError(f"data_shape must be the shape of one input, e.g. (1, 8, 8); got {data_shape!r}")
        _check_count("latent_dim", latent_dim)
        _check_count("hidden", hidden)
        _check_count("depth", depth)
        self.latent_dim = latent_dim
        self.n = math.prod(self.data_shape)
        self.encoder = _mlp([self.n] + [hidden] * depth + [2 * latent_dim])
        self.decoder = _mlp([latent_dim] + [hidden] * depth + [self.n])
        if decoder_std is None:
            self.decoder_logvar = nn.Parameter(torch.tensor(2 * math.log(0.5)))
        else:
            std = float(_check_positive("decoder_std", decoder_std))
            self.register_buffer("decoder_logvar", torch.tensor(2 * math.log(std)))

    # ------------------------------------------------------------------ helpers
    def _input(self, name: str, x) -> torch.Tensor:
        """A floating tensor of the networks' dtype (numpy converted, integers promoted; under autocast any float)."""
        x = V.tensor(name, x)
        w = self.decoder_logvar
        if x.dtype != w.dtype and not _autocast_on(x.device.type):
            raise ValueError(f"{name} must have the VAE's dtype {w.dtype} (or run under autocast); got {V.describe(x)}")
        return x

    def _flat(self, x: torch.Tensor) -> torch.Tensor:
        x = self._input("x", x)
        if x.shape[0] == 0:
            raise ValueError(f"x must hold at least one input; got {V.describe(x)}")
        if x.ndim != len(self.data_shape) + 1 or tuple(x.shape[1:]) != self.data_shape:
            raise ValueError(f"x must have shape (B, {', '.join(map(str, self.data_shape))}) for this VAE; "
                             f"got {tuple(x.shape)}")
        return x.reshape(x.shape[0], self.n)

    @staticmethod
    def _at_least_float32(h: torch.Tensor) -> torch.Tensor:
        # under bfloat16 autocast (AMP on CUDA) the networks output bfloat16; the ELBO arithmetic is done in float32
        return h.to(torch.promote_types(h.dtype, torch.float32))

    def _randn(self, shape, generator, like: torch.Tensor) -> torch.Tensor:
        return torch.randn(shape, generator=generator, dtype=like.dtype).to(like.device)

    # ------------------------------------------------------------------ the two networks
    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        r"""The encoder :math:`q_\phi(z\mid x)`: returns ``(mu, logvar)``, each ``(B, latent_dim)``."""
        h = self._at_least_float32(self.encoder(self._flat(x)))
        mu, logvar = h.chunk(2, dim=-1)
        return mu, logvar

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        r"""The decoder mean :math:`\mathrm{dec}_\theta(z)`: ``z`` ``(..., latent_dim)`` -> ``(..., *data_shape)``."""
        z = self._input("z", z)
        if z.shape[-1] != self.latent_dim:
            raise ValueError(f"z must have latent_dim = {self.latent_dim} in its last dimension; got {tuple(z.shape)}")
        return self._at_least_float32(self.decoder(z)).reshape(*z.shape[:-1], *self.data_shape)

    def log_likelihood(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        r""":math:`\log p_\theta(x\mid z) = -\tfrac n2\log(2\pi s^2) - \|x - \mathrm{dec}_\theta(z)\|^2/(2s^2)`.

        ``z`` is ``(B, m)`` or ``(S, B, m)``; returns ``(B,)`` or ``(S, B)``."""
        x = self._flat(x)
        z = self._input("z", z)
        if z.ndim not in (2, 3) or tuple(z.shape[-2:]) != (x.shape[0], self.latent_dim):
            raise ValueError(f"z must have shape ({x.shape[0]}, {self.latent_dim}) or (S, {x.shape[0]}, "
                             f"{self.latent_dim}); got {V.describe(z)}")
        mean = self._at_least_float32(self.decoder(z))
        return diag_gaussian_log_prob(x, mean, self.decoder_logvar.expand(self.n))

    # ------------------------------------------------------------------ the ELBO
    def elbo(self, x: torch.Tensor, n_samples: int = 1, generator: torch.Generator | None = None) -> torch.Tensor:
        r"""Per-sample :math:`\mathrm{ELBO}(x) = \mathbb E_{q_\phi(z|x)}\log p_\theta(x\mid z)
        - \mathrm{KL}(q_\phi(z\mid x)\,\|\,p(z))`, ``(B,)``:
        the expectation by ``n_samples`` reparameterised draws, the KL in closed form.

        The draws are :math:`\varepsilon` of shape ``(n_samples, B, latent_dim)`` from ``generator``."""
        _check_count("n_samples", n_samples)
        mu, logvar = self.encode(x)
        eps = self._randn((n_samples, *mu.shape), generator, mu)
        z = reparameterize(mu, logvar, eps)
        return self.log_likelihood(x, z).mean(0) - gaussian_kl_std_normal(mu, logvar)

    def loss(self, x: torch.Tensor, n_samples: int = 1, generator: torch.Generator | None = None) -> torch.Tensor:
        r"""The training loss :math:`-\frac1B\sum_i\mathrm{ELBO}(x_i)` (nats per input)."""
        return -self.elbo(x, n_samples, generator).mean()

    # ------------------------------------------------------------------ generation
    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None, *, mean: bool = True) -> torch.Tensor:
        r"""Generate: :math:`z\sim\mathcal N(0,I)`, then the decoder mean :math:`\mathrm{dec}_\theta(z)`
        (``mean=True``, the usual picture) or a full draw :math:`x = \mathrm{dec}_\theta(z) + s\,\varepsilon`."""
        _check_count("n", n)
        ref = self.decoder_logvar
        z = self._randn((n, self.latent_dim), generator, ref)
        x = self.decode(z)
        if not mean:
            x = x + torch.exp(0.5 * ref) * self._randn(x.shape, generator, ref)
        return x

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        r"""Encode and decode through the posterior mean: :math:`\mathrm{dec}_\theta(\mu_\phi(x))`, shape of ``x``."""
        return self.decode(self.encode(x)[0])

    # ------------------------------------------------------------------ importance sampling
    @torch.no_grad()
    def log_weights(self, x: torch.Tensor, K: int, generator: torch.Generator | None = None,
                    chunk: int = 64) -> torch.Tensor:
        r"""Log importance weights :math:`\log p(z_k) + \log p_\theta(x\mid z_k) - \log q_\phi(z_k\mid x)`,
        :math:`z_k\sim q_\phi(\cdot\mid x)`, shape ``(K, B)`` (computed ``chunk`` draws at a time)."""
        _check_count("K", K)
        _check_count("chunk", chunk)
        mu, logvar = self.encode(x)
        out = []
        for start in range(0, K, chunk):
            k = min(chunk, K - start)
            z = reparameterize(mu, logvar, self._randn((k, *mu.shape), generator, mu))
            log_q = diag_gaussian_log_prob(z, mu, logvar)
            log_prior = diag_gaussian_log_prob(z, torch.zeros_like(z), 0.0)
            out.append(log_prior + self.log_likelihood(x, z) - log_q)
        return torch.cat(out)

    @torch.no_grad()
    def log_prob_is(self, x: torch.Tensor, K: int, generator: torch.Generator | None = None) -> torch.Tensor:
        r"""The importance-weighted (IWAE) estimate :math:`\log\frac1K\sum_{k=1}^K p_\theta(x,z_k)/q_\phi(z_k\mid x)`
        ``(B,)``: a lower bound on :math:`\log p_\theta(x)` in expectation, increasing with ``K``."""
        return iwae_bound(self.log_weights(x, K, generator))


# ---------------------------------------------------------------------------------- gradient estimators
def _draws(mu, sigma, n, generator):
    mu = _as64("mu", mu)
    if mu.ndim > 1:
        raise ValueError(f"mu must be a scalar or a vector (D,); got shape {tuple(mu.shape)}")
    sigma = _check_positive("sigma", _as64("sigma", sigma))
    _check_count("n", n)
    eps = torch.randn(n, *mu.shape, generator=generator, dtype=torch.float64)
    return mu, sigma, eps


def _values(f, z, n):
    if not callable(f):
        raise TypeError(f"f must be a callable f(z) -> values (n,); got {V.describe(f)}")
    out = f(z)
    if out is None:
        raise TypeError("f returned None: did it forget to `return` its values?")
    out = torch.as_tensor(out)
    if out.shape != (n,):
        raise ValueError(
            f"f must map the ({n}, ...) draws z to one value per draw, shape ({n},); got {tuple(out.shape)}"
        )
    return out


def grad_reparam(f, mu, sigma, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
    r"""Per-draw reparameterisation estimates of :math:`\nabla_\mu\,\mathbb E_{z\sim\mathcal N(\mu,\sigma^2)}f(z)`:
    with :math:`z_i = \mu + \sigma\varepsilon_i`, the estimate is
    :math:`\nabla_\mu f(\mu+\sigma\varepsilon_i) = f'(z_i)`.

    ``mu`` is a scalar or a vector ``(D,)``, ``sigma`` a positive scalar (or ``(D,)``); ``f`` maps draws ``(n,)``
    or ``(n, D)`` to values ``(n,)`` and must be differentiable in torch. Returns ``(n,)`` or ``(n, D)``;
    their mean is the estimate, their variance over ``n`` the estimator's variance.
    """
    mu, sigma, eps = _draws(mu, sigma, n, generator)
    mu_rep = mu.expand(eps.shape).clone().requires_grad_(True)  # one copy of mu per draw
    with torch.enable_grad():
        values = _values(f, mu_rep + sigma * eps, n)
        if not values.requires_grad:
            raise TypeError("f must return a differentiable torch function of z; its values carry no gradient "
                            "(a numpy array, a detached tensor?)")
        (grad,) = torch.autograd.grad(values.sum(), mu_rep)
    return grad.detach()


def grad_score_function(f, mu, sigma, n: int, generator: torch.Generator | None = None,
                        baseline: float = 0.0) -> torch.Tensor:
    r"""Per-draw score-function (REINFORCE) estimates of
    :math:`\nabla_\mu\,\mathbb E_{z\sim\mathcal N(\mu,\sigma^2)}f(z)`:
    :math:`(f(z_i) - c)\,\nabla_\mu\log\mathcal N(z_i;\mu,\sigma^2) = (f(z_i) - c)\,(z_i-\mu)/\sigma^2`.

    It needs only values of ``f`` (no derivative). The constant ``baseline`` :math:`c` keeps it unbiased
    (the score has mean zero) and can reduce its variance. Same shapes as :func:`grad_reparam`.
    """
    baseline = V.number("baseline", baseline)
    mu, sigma, eps = _draws(mu, sigma, n, generator)
    z = mu + sigma * eps
    with torch.no_grad():
        values = _values(f, z, n).double()
    score = (z - mu) / sigma**2
    return (values - baseline).reshape(n, *([1] * mu.ndim)) * score
