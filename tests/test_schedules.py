"""Lesson 02: the noise schedules (beta_t, alpha_t, alpha_bar_t), checked against diffusers' DDPMScheduler.

diffusers stores the T values beta_1..beta_T at its indices k = 0..T-1: its index k is our t = k + 1.
"""

import math

import pytest
import torch

import tinydiff as td
from tinydiff.schedules import alpha_bar_cumprod, alpha_bar_logcumsum

diffusers = pytest.importorskip("diffusers")


def _diffusers(kind, T):
    return diffusers.DDPMScheduler(num_train_timesteps=T, beta_schedule=kind)


@pytest.mark.parametrize("T", [10, 1000])
def test_linear_schedule_matches_diffusers(T):
    ours, ref = td.NoiseSchedule.linear(T), _diffusers("linear", T)
    assert ours.T == T and len(ours.beta) == len(ours.alpha_bar) == T + 1
    # index shift: our t = diffusers' k + 1 (diffusers works in float32)
    torch.testing.assert_close(ours.beta[1:], ref.betas.double(), rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(ours.alpha_bar[1:], ref.alphas_cumprod.double(), rtol=1e-5, atol=1e-7)
    assert ours.beta[1] == pytest.approx(1e-4) and ours.beta[T] == pytest.approx(0.02)


@pytest.mark.parametrize("T", [10, 1000])
def test_cosine_schedule_matches_diffusers(T):
    ours, ref = td.NoiseSchedule.cosine(T), _diffusers("squaredcos_cap_v2", T)
    torch.testing.assert_close(ours.beta[1:], ref.betas.double(), rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(ours.alpha_bar[1:], ref.alphas_cumprod.double(), rtol=1e-4, atol=1e-7)


def test_cosine_alpha_bar_is_the_squared_cosine():
    """Before the clip at max_beta (only the last step), alpha_bar_t = f(t)/f(0) with the squared cosine f."""
    T, s = 1000, 0.008
    sched = td.NoiseSchedule.cosine(T, s=s)
    u = torch.arange(T + 1, dtype=torch.float64) / T
    f = torch.cos((u + s) / (1 + s) * math.pi / 2) ** 2
    torch.testing.assert_close(sched.alpha_bar[:T], (f / f[0])[:T], rtol=1e-10, atol=1e-13)
    assert sched.beta[T] == pytest.approx(0.999)  # the clip is active at t = T


@pytest.mark.parametrize("make", [td.NoiseSchedule.linear, td.NoiseSchedule.cosine])
def test_index_zero_is_clean_data(make):
    sched = make(50)
    assert sched.beta[0] == 0 and sched.alpha_bar[0] == 1 and sched.alpha_bar_prev[0] == 1
    assert sched.beta.dtype == sched.alpha.dtype == sched.alpha_bar.dtype == torch.float64
    torch.testing.assert_close(sched.alpha, 1 - sched.beta)
    # alpha_bar_t / alpha_bar_{t-1} = alpha_t : the product, one factor at a time
    torch.testing.assert_close(sched.alpha_bar[1:] / sched.alpha_bar[:-1], sched.alpha[1:])
    torch.testing.assert_close(sched.alpha_bar_prev[1:], sched.alpha_bar[:-1])
    assert (sched.alpha_bar[1:] < sched.alpha_bar[:-1]).all()  # signal decays monotonically
    assert sched.posterior_variance[0] == 0 and sched.posterior_variance[1] == 0  # tilde beta_1 = 0
    assert torch.isinf(sched.snr()[0]) and (sched.snr()[1:].diff() < 0).all()


def test_log_cumsum_trick_equals_cumprod():
    """The lecture's alpha_bar = exp(cumsum(log alpha)) equals the running product; both equal the naive loop."""
    sched = td.NoiseSchedule.linear(1000)
    by_logs = alpha_bar_logcumsum(sched.alpha)
    torch.testing.assert_close(by_logs, alpha_bar_cumprod(sched.alpha), rtol=1e-12, atol=0)
    naive, prod = [], 1.0
    for a in sched.alpha.tolist():
        prod *= a
        naive.append(prod)
    torch.testing.assert_close(by_logs, torch.tensor(naive, dtype=torch.float64), rtol=1e-12, atol=0)
    torch.testing.assert_close(sched.alpha_bar, by_logs, rtol=1e-12, atol=0)


def test_alpha_bar_T_goes_to_zero():
    """q(x_T) approaches N(0, I): alpha_bar_T is small for the standard schedules (and smaller with more steps)."""
    assert td.NoiseSchedule.linear(1000).alpha_bar[-1] < 1e-4
    assert td.NoiseSchedule.cosine(1000).alpha_bar[-1] < 1e-8
    ab = [td.NoiseSchedule.linear(T).alpha_bar[-1].item() for T in (50, 200, 1000)]
    assert ab[0] > ab[1] > ab[2]


def test_custom_schedule_from_betas():
    beta = torch.tensor([0.0, 0.1, 0.2, 0.3], dtype=torch.float64)
    sched = td.NoiseSchedule(beta)
    assert sched.T == 3
    torch.testing.assert_close(sched.alpha_bar, torch.tensor([1.0, 0.9, 0.72, 0.504], dtype=torch.float64))


@pytest.mark.parametrize(
    "build, match",
    [
        (lambda: td.NoiseSchedule.linear(0), "T must lie in 1.."),
        (lambda: td.NoiseSchedule.linear(10.0), "T must be an int"),
        (lambda: td.NoiseSchedule.linear(True), "T must be an int"),
        (lambda: td.NoiseSchedule.linear(10, beta_start=0.0), "beta_start must be > 0"),
        (lambda: td.NoiseSchedule.linear(10, beta_end=1.5), r"beta_end must lie in \(0, 1\)"),
        (lambda: td.NoiseSchedule.linear(10, beta_start=0.1, beta_end=0.01), "must not exceed"),
        (lambda: td.NoiseSchedule.linear(10, beta_start=float("nan")), "beta_start must be a finite number"),
        (lambda: td.NoiseSchedule.linear(10, beta_start="0.001"), "beta_start must be a real number"),
        (lambda: td.NoiseSchedule.cosine(10, s=-0.1), "s must be >= 0"),
        (lambda: td.NoiseSchedule.cosine(10, s=float("inf")), "s must be a finite number"),
        (lambda: td.NoiseSchedule.cosine(10, max_beta=1.0), "max_beta"),
        (lambda: td.NoiseSchedule(None), "beta must be a tensor"),
        (lambda: td.NoiseSchedule(torch.tensor([0.0, 0.1j])), "beta must be real"),
        (lambda: td.NoiseSchedule.linear(10).check_t(None, 4), "t must hold integer timesteps"),
        (lambda: td.NoiseSchedule.linear(10).check_t(torch.tensor([1, 2]), 4), r"t must have shape \(4,\)"),
        (lambda: td.NoiseSchedule.linear(10).check_t(11, 4), "t must lie in 0..10"),
        (lambda: td.NoiseSchedule.linear(10).check_t(2.5, 4), "t must hold integer timesteps"),
        (lambda: td.schedules.alpha_bar_cumprod(torch.tensor([0.9, 1.5])), r"alpha must hold values .* in \(0, 1\]"),
        (lambda: td.schedules.alpha_bar_logcumsum([0.9, 0.8]), "alpha must be a torch.Tensor"),
        (lambda: td.NoiseSchedule(torch.tensor([0.1, 0.2])), r"beta\[0\] must be 0"),
        (lambda: td.NoiseSchedule(torch.tensor([0.0])), "T >= 1"),
        (lambda: td.NoiseSchedule(torch.tensor([0.0, 0.5, 1.0])), "strictly between 0 and 1"),
    ],
)
def test_bad_schedule_parameters_raise(build, match):
    with pytest.raises((ValueError, TypeError), match=match):
        build()


def test_check_t_rejects_out_of_range_and_float_timesteps():
    sched = td.NoiseSchedule.linear(10)
    assert sched.check_t(3, 4).tolist() == [3, 3, 3, 3]
    with pytest.raises(ValueError, match=r"0\.\.10"):
        sched.check_t(torch.tensor([0, 11]), 2)
    with pytest.raises(ValueError, match="integer"):
        sched.check_t(torch.tensor([0.5, 1.0]), 2)
    with pytest.raises(ValueError, match=r"1\.\.10"):
        sched.check_t(0, 2, low=1)
