"""The Gaussian-mixture oracle and the data sets."""

import builtins

import pytest
import torch
from torch.distributions import Categorical, MixtureSameFamily, MultivariateNormal

import tinydiff as td
from tinydiff.data import GaussianMixture


def random_mixture(K=3, D=2, seed=0, labels=None):
    g = torch.Generator().manual_seed(seed)
    w = torch.rand(K, generator=g, dtype=torch.float64) + 0.2
    A = torch.randn(K, D, D, generator=g, dtype=torch.float64)
    covs = A @ A.transpose(-1, -2) * 0.3 + 0.1 * torch.eye(D, dtype=torch.float64)
    means = 2 * torch.randn(K, D, generator=g, dtype=torch.float64)
    return GaussianMixture(w / w.sum(), means, covs, labels=labels)


AS = [(1.0, 0.0), (0.8, 0.6), (0.1, 0.99), (torch.tensor([0.9, 0.5, 0.3, 0.95, 0.2]), torch.tensor([0.4, 0.8, 0.9, 0.3, 0.98]))]


@pytest.mark.parametrize("a,s", AS)
def test_log_prob_matches_torch_distributions(a, s):
    gm = random_mixture(K=4, D=3)
    x = torch.randn(5, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    a_t, s_t = torch.as_tensor(a, dtype=torch.float64), torch.as_tensor(s, dtype=torch.float64)
    for i in range(5):
        ai = a_t if a_t.ndim == 0 else a_t[i]
        si = s_t if s_t.ndim == 0 else s_t[i]
        cov = ai**2 * gm.covs + si**2 * torch.eye(3, dtype=torch.float64)
        ref = MixtureSameFamily(Categorical(gm.weights), MultivariateNormal(ai * gm.means, cov)).log_prob(x[i])
        torch.testing.assert_close(gm.log_prob(x, a, s)[i], ref)


@pytest.mark.parametrize("a,s", AS)
def test_score_is_the_gradient_of_log_prob(a, s):
    gm = random_mixture(K=3, D=2, seed=2)
    x = torch.randn(5, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(3)).requires_grad_(True)
    (grad,) = torch.autograd.grad(gm.log_prob(x, a, s).sum(), x)
    torch.testing.assert_close(gm.score(x.detach(), a, s), grad)


@pytest.mark.parametrize("a,s", AS[1:])
def test_tweedie_holds_exactly_for_the_oracle(a, s):
    gm = random_mixture(K=3, D=2, seed=4)
    x = 1.5 * torch.randn(5, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    a_, s_ = (torch.as_tensor(v, dtype=torch.float64).reshape(-1, 1) for v in (a, s))
    tweedie = (x + s_**2 * gm.score(x, a, s)) / a_
    torch.testing.assert_close(gm.posterior_mean(x, a, s), tweedie)


def test_posterior_mean_matches_monte_carlo():
    gm = random_mixture(K=3, D=2, seed=6)
    g = torch.Generator().manual_seed(7)
    a, s = 0.7, 0.7
    X = gm.sample(400_000, g, dtype=torch.float64)
    y = torch.tensor([[0.3, -0.5], [1.0, 1.0]], dtype=torch.float64)
    for i in range(2):  # E[X | y] = E_X[X N(y; aX, s^2)] / E_X[N(y; aX, s^2)]
        logw = -((y[i] - a * X) ** 2).sum(1) / (2 * s**2)
        w = torch.softmax(logw, 0)
        mc = (w[:, None] * X).sum(0)
        torch.testing.assert_close(gm.posterior_mean(y[i:i + 1], a, s)[0], mc, atol=0.03, rtol=0)


def test_sample_moments_match_mean_and_covariance():
    gm = random_mixture(K=3, D=2, seed=8)
    x = gm.sample(200_000, torch.Generator().manual_seed(9), dtype=torch.float64)
    torch.testing.assert_close(x.mean(0), gm.mean(), atol=0.03, rtol=0)
    torch.testing.assert_close(torch.cov(x.T), gm.covariance(), atol=0.06, rtol=0.02)


def test_class_posterior_is_bayes_rule():
    gm = random_mixture(K=4, D=2, seed=10, labels=[0, 1, 1, 2])
    x = torch.randn(6, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(11))
    a, s = 0.6, 0.8
    post = gm.class_posterior(x, a, s)
    prior = torch.stack([gm.weights[gm.labels == y].sum() for y in range(3)])
    joint = torch.stack([prior[y].log() + gm.conditional(y).log_prob(x, a, s) for y in range(3)], 1)
    torch.testing.assert_close(post, torch.softmax(joint, 1))
    torch.testing.assert_close(post.sum(1), torch.ones(6, dtype=torch.float64))


def test_eps_fn_is_minus_sqrt_one_minus_alpha_bar_times_score():
    gm = GaussianMixture.ring(4, radius=1.5, std=0.3)
    sched = td.NoiseSchedule.linear(T=100)
    x = torch.randn(8, 2, generator=torch.Generator().manual_seed(0))
    t = torch.arange(1, 101, 13)[:8]
    ab = sched.alpha_bar[t]
    want = -(1 - ab).sqrt()[:, None].float() * gm.score(x, ab.sqrt(), (1 - ab).sqrt())
    torch.testing.assert_close(gm.eps_fn(sched)(x, t), want)


def test_same_seed_same_samples():
    gm = random_mixture()
    a = gm.sample(10, torch.Generator().manual_seed(3))
    b = gm.sample(10, torch.Generator().manual_seed(3))
    assert torch.equal(a, b)


@pytest.mark.parametrize(
    "kwargs,msg",
    [
        (dict(weights=[0.5, 0.6], means=[[0, 0], [1, 1]], covs=[1.0, 1.0]), "sum to 1"),
        (dict(weights=[1.5, -0.5], means=[[0, 0], [1, 1]], covs=[1.0, 1.0]), "non-negative"),
        (dict(weights=[0.5, 0.5], means=[[0, 0], [1, 1]], covs=[[[1, 2], [2, 1]], [[1, 0], [0, 1]]]), "positive definite"),
        (dict(weights=[0.5, 0.5], means=[[0, 0], [1, 1]], covs=[[[1, 0.5], [0, 1]], [[1, 0], [0, 1]]]), "symmetric"),
        (dict(weights=[1.0], means=[[0, 0], [1, 1]], covs=[1.0, 1.0]), "weights must have shape"),
        (dict(weights=[0.5, 0.5], means=[0, 1], covs=[1.0, 1.0]), "means must have shape"),
    ],
)
def test_bad_mixtures_raise_clear_errors(kwargs, msg):
    with pytest.raises(ValueError, match=msg):
        GaussianMixture(**kwargs)


def test_bad_queries_raise_clear_errors():
    gm = random_mixture(D=2)
    with pytest.raises(ValueError, match=r"shape \(B, 2\)"):
        gm.log_prob(torch.zeros(3, 3))
    with pytest.raises(ValueError, match="a and s"):
        gm.score(torch.zeros(3, 2), torch.ones(4), 0.5)
    with pytest.raises(ValueError, match="no labels"):
        gm.class_posterior(torch.zeros(3, 2))
    with pytest.raises(ValueError, match="class y"):
        random_mixture(labels=[0, 1, 1]).conditional(5)


@pytest.mark.parametrize("name", sorted(td.data.TOY_2D))
def test_toy_sets_are_deterministic_and_sized(name):
    a = td.data.toy_2d(name, 500, torch.Generator().manual_seed(0))
    b = td.data.toy_2d(name, 500, torch.Generator().manual_seed(0))
    assert a.shape == (500, 2) and a.dtype == torch.float32 and torch.equal(a, b)
    assert a.abs().max() < 4


def test_toy_set_errors():
    with pytest.raises(ValueError, match="name must be one of 'checkerboard'"):
        td.data.toy_2d("spirals?", 10)
    with pytest.raises(ValueError, match="n must lie in 1.."):
        td.data.toy_2d("moons", 0)
    with pytest.raises(ValueError, match="n must be an int"):
        td.data.toy_2d("moons", float("inf"))
    with pytest.raises(TypeError, match="generator must be a torch.Generator"):
        td.data.toy_2d("moons", 4, generator=3)


@pytest.mark.parametrize("size", [8, 16])
def test_digits_are_offline_and_in_range(size):
    x, y = td.data.load_digits(size)
    assert x.shape == (1797, 1, size, size) and y.shape == (1797,)
    assert x.min() >= -1 and x.max() <= 1 and x.min() == -1
    assert set(y.tolist()) == set(range(10))


def test_mnist_without_torchvision_says_what_to_do(monkeypatch):
    real_import = builtins.__import__

    def no_torchvision(name, *args, **kwargs):
        if name.startswith("torchvision"):
            raise ImportError("no torchvision here")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_torchvision)
    with pytest.raises(RuntimeError, match="load_digits"):
        td.data.load_mnist()


def test_gaussian_mixture_bad_input_names_the_argument():
    import pytest

    from tinydiff.data import GaussianMixture

    gm = GaussianMixture.ring(3, radius=1.5, std=0.3, labels=[0, 1, 2])
    x = torch.zeros(4, 2)
    with pytest.raises(TypeError, match="weights"):
        GaussianMixture(None, [[0.0, 0.0]], [1.0])
    with pytest.raises(ValueError, match="covs"):
        GaussianMixture([1.0], [[0.0, 0.0]], [float("nan")])
    with pytest.raises(ValueError, match="std"):
        GaussianMixture.ring(3, std=0.0)
    with pytest.raises(ValueError, match="k"):
        GaussianMixture.ring(2.5)
    with pytest.raises(ValueError, match="a and s"):
        gm.score(x, 0.0, 0.0)
    with pytest.raises(ValueError, match="s must be a real"):
        gm.log_prob(x, 1.0, "0.5")
    with pytest.raises(ValueError, match="n"):
        gm.sample(0)
    with pytest.raises(ValueError, match="dtype"):
        gm.sample(4, dtype=torch.long)
    with pytest.raises(ValueError, match="y"):
        gm.conditional(None)
