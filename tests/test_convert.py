"""Lesson 02: x0 <-> eps <-> score <-> v, for tensors and for denoiser callables."""

import pytest
import torch

import tinydiff as td
from tinydiff import convert

SCHED = td.NoiseSchedule.linear(100)


def _batch(seed=0, B=6, D=3):
    g = torch.Generator().manual_seed(seed)
    x0 = torch.randn(B, D, generator=g, dtype=torch.float64) * 2 + 0.5
    eps = torch.randn(B, D, generator=g, dtype=torch.float64)
    t = torch.randint(1, SCHED.T + 1, (B,), generator=g)
    ab = SCHED.alpha_bar[t]
    xt = ab.sqrt()[:, None] * x0 + (1 - ab).sqrt()[:, None] * eps  # written out, not via q_sample
    return x0, eps, t, ab, xt


def test_x0_eps_round_trip():
    x0, eps, t, ab, xt = _batch()
    torch.testing.assert_close(convert.x0_from_eps(xt, eps, ab), x0)
    torch.testing.assert_close(convert.eps_from_x0(xt, x0, ab), eps)


def test_score_eps_round_trip_and_gaussian_score():
    """score = -eps / sqrt(1 - alpha_bar): for x_t | x_0 the conditional score is exactly that."""
    x0, eps, t, ab, xt = _batch(1)
    score = convert.score_from_eps(eps, ab)
    cond_score = -(xt - ab.sqrt()[:, None] * x0) / (1 - ab)[:, None]  # grad log N(x_t; sqrt(ab) x0, (1-ab) I)
    torch.testing.assert_close(score, cond_score)
    torch.testing.assert_close(convert.eps_from_score(score, ab), eps)


def test_v_round_trips():
    x0, eps, t, ab, xt = _batch(2)
    v = convert.v_from_eps(eps, x0, ab)
    torch.testing.assert_close(convert.x0_from_v(xt, v, ab), x0)
    torch.testing.assert_close(convert.eps_from_v(xt, v, ab), eps)
    # (x_t, v) is a rotation of (x0, eps) by the angle phi with cos(phi) = sqrt(alpha_bar): norms are kept
    torch.testing.assert_close(xt.pow(2) + v.pow(2), x0.pow(2) + eps.pow(2))


def test_conversions_accept_a_scalar_alpha_bar():
    x0, eps, _, _, _ = _batch(3)
    ab = 0.3
    xt = ab**0.5 * x0 + (1 - ab) ** 0.5 * eps
    torch.testing.assert_close(convert.x0_from_eps(xt, eps, ab), x0)
    torch.testing.assert_close(convert.eps_from_v(xt, convert.v_from_eps(eps, x0, ab), ab), eps)


def test_fn_conversions_agree_with_the_mixture_oracle():
    """The exact eps of a Gaussian mixture, converted to a score and a denoiser, matches the mixture's own
    score and posterior mean E[x0 | x_t] (Tweedie) -- independent closed forms."""
    gm = td.data.GaussianMixture.ring(4, radius=2.0, std=0.3)
    x = torch.randn(32, 2, generator=torch.Generator().manual_seed(4), dtype=torch.float64) * 2
    t = torch.randint(1, SCHED.T + 1, (32,), generator=torch.Generator().manual_seed(5))
    ab = SCHED.alpha_bar[t]
    eps_fn = gm.eps_fn(SCHED)
    score_fn = convert.score_fn_from_eps_fn(eps_fn, SCHED)
    torch.testing.assert_close(score_fn(x, t), gm.score(x, ab.sqrt(), (1 - ab).sqrt()))
    x0_fn = convert.x0_fn_from_eps_fn(eps_fn, SCHED)
    torch.testing.assert_close(x0_fn(x, t), gm.posterior_mean(x, ab.sqrt(), (1 - ab).sqrt()))
    torch.testing.assert_close(convert.eps_fn_from_score_fn(score_fn, SCHED)(x, t), eps_fn(x, t))
    torch.testing.assert_close(convert.eps_fn_from_x0_fn(x0_fn, SCHED)(x, t), eps_fn(x, t))
    v_fn = lambda x_, t_: convert.v_from_eps(eps_fn(x_, t_), x0_fn(x_, t_), SCHED.alpha_bar[t_])
    torch.testing.assert_close(convert.eps_fn_from_v_fn(v_fn, SCHED)(x, t), eps_fn(x, t))


def test_bad_alpha_bar_shape_raises():
    x0, eps, _, _, xt = _batch()
    with pytest.raises(ValueError, match="shape"):
        convert.x0_from_eps(xt, eps, torch.full((5,), 0.5))


def test_bad_input_names_the_argument():
    import pytest

    xt, eps, ab = torch.randn(4, 2), torch.randn(4, 2), torch.full((4,), 0.5)
    with pytest.raises(TypeError, match="xt"):
        td.convert.x0_from_eps(None, eps, ab)
    with pytest.raises(ValueError, match="eps"):
        td.convert.x0_from_eps(xt, eps[:3], ab)
    with pytest.raises(ValueError, match="alpha_bar_t"):
        td.convert.x0_from_eps(xt, eps, torch.ones(4, dtype=torch.long))
    with pytest.raises(ValueError, match="alpha_bar_t"):
        td.convert.eps_from_x0(xt, eps, torch.full((5,), 0.5))
    with pytest.raises(ValueError, match="alpha_bar_t"):
        td.convert.score_from_eps(eps, 1.5)
    with pytest.raises(ValueError, match="sigma"):
        td.convert.x0_eps_from("eps", eps, xt, 0.8, None)
