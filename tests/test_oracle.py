"""The Gaussian-mixture oracle's fast formulas (eigenbasis / isotropic) against the textbook Cholesky formulas the
package used before, against torch.distributions and against autograd."""

import math

import pytest
import torch

import tinydiff as td


def _reference(gm, x, a, s):
    """The formulas written out with full (B, K, D, D) covariances and Cholesky solves (the former implementation)."""
    x = x.double()
    B = x.shape[0]
    a = torch.as_tensor(a, dtype=torch.float64).reshape(-1, 1, 1, 1) * torch.ones(B, 1, 1, 1, dtype=torch.float64)
    s = torch.as_tensor(s, dtype=torch.float64).reshape(-1, 1, 1, 1) * torch.ones(B, 1, 1, 1, dtype=torch.float64)
    C = a**2 * gm.covs.unsqueeze(0) + s**2 * torch.eye(gm.D, dtype=torch.float64)
    m = a[..., 0] * gm.means.unsqueeze(0)
    L = torch.linalg.cholesky(C)
    diff = x.unsqueeze(1) - m
    sol = torch.cholesky_solve(diff.unsqueeze(-1), L).squeeze(-1)
    logdet = 2 * torch.log(torch.diagonal(L, dim1=-2, dim2=-1)).sum(-1)
    lj = torch.log(gm.weights) - 0.5 * ((diff * sol).sum(-1) + logdet + gm.D * math.log(2 * math.pi))
    r = torch.softmax(lj, 1)
    score = -(r.unsqueeze(-1) * sol).sum(1)
    mk = gm.means.unsqueeze(0) + a[..., 0] * (gm.covs.unsqueeze(0) @ sol.unsqueeze(-1)).squeeze(-1)
    return torch.logsumexp(lj, 1), score, (r.unsqueeze(-1) * mk).sum(1)


def _full_cov_mixture(D=3, K=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(K, D, D, generator=g, dtype=torch.float64)
    covs = A @ A.transpose(-1, -2) / D + 0.1 * torch.eye(D, dtype=torch.float64)
    w = torch.rand(K, generator=g, dtype=torch.float64) + 0.2
    return td.data.GaussianMixture(w / w.sum(), torch.randn(K, D, generator=g, dtype=torch.float64) * 2, covs)


MIXTURES = {
    "ring (isotropic)": lambda: td.data.GaussianMixture.ring(),
    "full covariances": _full_cov_mixture,
    "diagonal": lambda: td.data.GaussianMixture([0.3, 0.7], [[0.0, 1.0], [2.0, -1.0]], [[0.5, 0.1], [0.2, 1.5]]),
    "isotropic D=64": lambda: td.data.GaussianMixture.isotropic(torch.randn(5, 64, generator=torch.Generator().manual_seed(3),
                                                                             dtype=torch.float64), 0.3),
}


@pytest.mark.parametrize("name", MIXTURES)
@pytest.mark.parametrize("per_sample", [False, True])
def test_fast_formulas_equal_the_cholesky_formulas(name, per_sample):
    gm = MIXTURES[name]()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(50, gm.D, generator=g, dtype=torch.float64) * 2
    if per_sample:
        ab = torch.rand(50, generator=g, dtype=torch.float64) * 0.98 + 0.01
        a, s = ab.sqrt(), (1 - ab).sqrt()
    else:
        a, s = 0.8, 0.6
    lp, score, pm = _reference(gm, x, a, s)
    torch.testing.assert_close(gm.log_prob(x, a, s), lp, rtol=0, atol=1e-10)
    torch.testing.assert_close(gm.score(x, a, s), score, rtol=0, atol=1e-10)
    torch.testing.assert_close(gm.posterior_mean(x, a, s), pm, rtol=0, atol=1e-10)


@pytest.mark.parametrize("name", ["ring (isotropic)", "full covariances"])
def test_log_prob_matches_torch_distributions_and_score_matches_autograd(name):
    gm = MIXTURES[name]()
    a, s = 0.7, 0.5
    cov = a**2 * gm.covs + s**2 * torch.eye(gm.D, dtype=torch.float64)
    comp = torch.distributions.MultivariateNormal(a * gm.means, covariance_matrix=cov)
    mix = torch.distributions.MixtureSameFamily(torch.distributions.Categorical(probs=gm.weights), comp)
    x = torch.randn(40, gm.D, dtype=torch.float64, requires_grad=True)
    ref = mix.log_prob(x)
    (grad,) = torch.autograd.grad(ref.sum(), x)
    torch.testing.assert_close(gm.log_prob(x.detach(), a, s), ref.detach(), rtol=0, atol=1e-10)
    torch.testing.assert_close(gm.score(x.detach(), a, s), grad, rtol=0, atol=1e-10)


def test_integer_points_are_promoted_not_truncated():
    gm = td.data.GaussianMixture([1.0], [[0.5, 0.5]], [1.0])
    got = gm.log_prob(torch.tensor([[1, 0], [0, 2]]))
    assert got.dtype == torch.float64
    torch.testing.assert_close(got, gm.log_prob(torch.tensor([[1.0, 0.0], [0.0, 2.0]], dtype=torch.float64)))


def test_oracle_runs_on_the_device_of_its_input_without_host_syncs():
    """On torch's meta device every op that reads a value back to the host fails: the formulas make none."""
    gm = MIXTURES["full covariances"]()
    x = torch.empty(8, gm.D, device="meta", dtype=torch.float64)
    for fn in (gm.log_prob, gm.score, gm.posterior_mean):
        assert fn(x, torch.full((8,), 0.5, device="meta", dtype=torch.float64), 0.8).device.type == "meta"
    ring = MIXTURES["ring (isotropic)"]()
    assert ring.score(torch.empty(8, 2, device="meta"), 0.5, 0.8).device.type == "meta"
