"""Lesson 10 (IC-Light): the linear light-transport world, the consistency loss derived per parameterisation and
coupling, checked exactly on the Bayes-optimal denoiser, and the zero-initialised input widening."""

import math

import pytest
import torch

import tinydiff as td
from tinydiff.data import relight as world


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


# ---------------------------------------------------------------------------------------------- the world

def test_front_half_solid_angles_sum_to_two_pi():
    for res in (4, 16, 33):
        dirs, d_omega = world.front_half_directions(res)
        torch.testing.assert_close(d_omega.sum(), torch.tensor(2 * math.pi, dtype=torch.float64), atol=1e-12, rtol=0)
        torch.testing.assert_close(dirs.norm(dim=1), torch.ones(res * res, dtype=torch.float64), atol=1e-14, rtol=0)
        assert (dirs[:, 2] > 0).all()  # every direction faces the camera


def test_irradiance_of_a_uniform_front_sky_matches_the_view_factor_formula():
    """Under radiance 1 over the hemisphere z > 0 a plane tilted by beta receives pi (1 + cos beta) / 2
    (the sky-view factor, an independent closed form); the midpoint sum converges to it as the map grows."""
    beta = torch.linspace(0, 1.4, 8, dtype=torch.float64)
    n = torch.stack([beta.sin(), torch.zeros_like(beta), beta.cos()], 0)[None, :, :, None]  # (1, 3, 8, 1)
    want = math.pi * (1 + beta.cos()) / 2
    errors = []
    for res in (8, 32, 256):
        e = world.irradiance(n, torch.ones(1, 3, res, res, dtype=torch.float64))[0, 0, :, 0]
        errors.append((e - want).abs().max().item())
    # the cell sum converges (not monotonically: the clamp's kink crosses cells): 3e-2, 5e-4, 3e-5
    assert errors[0] > 1e-2 and errors[1] < 1e-3 and errors[2] < 5e-5


def test_single_direction_light_gives_clamped_cosine():
    res = 8
    dirs, d_omega = world.front_half_directions(res)
    k = 19
    light = torch.zeros(1, 3, res, res, dtype=torch.float64)
    light.view(1, 3, -1)[:, :, k] = 2.0
    n = torch.nn.functional.normalize(torch.randn(1, 3, 5, 5, generator=_gen(1), dtype=torch.float64), dim=1)
    e = world.irradiance(n, light)
    want = 2.0 * (n.permute(0, 2, 3, 1) @ dirs[k]).clamp_min(0) * d_omega[k]
    torch.testing.assert_close(e[:, 0], want, atol=1e-14, rtol=0)


def test_render_is_linear_in_the_light_only_on_the_object():
    g = _gen(2)
    obj = world.make_objects(40, 16, generator=g, dtype=torch.float64)
    l1 = world.random_lights(40, 16, generator=g, dtype=torch.float64)
    l2 = world.random_lights(40, 16, n_sources=(1, 3), generator=g, dtype=torch.float64)
    black = world.render(obj, l1 + l2, background=False) - world.render(obj, l1, background=False) \
        - world.render(obj, l2, background=False)
    assert black.abs().max() < 1e-14  # float64 rounding of a sum of <= 256 terms of size ~1
    full = world.render(obj, l1 + l2) - world.render(obj, l1) - world.render(obj, l2)
    m = obj.mask.expand_as(full).bool()
    assert full[m].abs().max() < 1e-14
    torch.testing.assert_close(full[~m], -torch.full_like(full[~m], world.GREY))  # the unlit background: B - 2B


def test_what_breaks_linearity_tone_map_and_the_affine_map():
    g = _gen(3)
    obj = world.make_objects(20, 16, generator=g, dtype=torch.float64)
    l1, l2 = (world.random_lights(20, 16, generator=g, dtype=torch.float64) for _ in range(2))
    i1, i2, i12 = (world.render(obj, L, background=False) for L in (l1, l2, l1 + l2))
    x1, x2, x12 = map(world.to_model, (i1, i2, i12))
    torch.testing.assert_close(x12 - x1 - x2, torch.ones_like(x12), atol=1e-13, rtol=0)  # the affine offset, exactly
    torch.testing.assert_close(world.merge(x1, x2), x12, atol=1e-13, rtol=0)
    d1, d2, d12 = (world.tone_map(i) for i in (i1, i2, i12))
    m = obj.mask.expand_as(d1).bool()
    assert (d12 - d1 - d2)[m].abs().mean() > 0.2  # the display image is far from additive


def test_split_light_is_an_exact_partition():
    light = world.random_lights(30, 16, n_sources=(1, 3), generator=_gen(4))
    l1, l2, m = world.split_light(light, generator=_gen(5))
    assert torch.equal(l1 + l2, light)
    assert set(m.unique().tolist()) <= {0.0, 1.0} and 0 < m.mean() < 1
    assert torch.equal(l1 * l2, torch.zeros_like(l1))


def test_condition_is_exactly_zero_off_the_object_and_light_features_are_linear():
    obj = world.make_objects(10, 16, generator=_gen(6), background="random")
    c = world.condition(obj, with_background=True)
    assert c.shape == (10, 7, 16, 16)
    off = (obj.mask == 0).expand(-1, 3, -1, -1)
    assert torch.equal(c[:, :3][off], torch.zeros_like(c[:, :3][off]))
    assert torch.equal(world.to_model(torch.tensor(world.GREY)), torch.tensor(0.0))  # grey is exactly 0
    l1, l2 = (world.random_lights(10, 16, generator=_gen(7 + i), dtype=torch.float64) for i in range(2))
    f = world.light_features
    torch.testing.assert_close(f(l1 + l2), f(l1) + f(l2), atol=1e-14, rtol=0)
    _, d_omega = world.front_half_directions(16)
    torch.testing.assert_close(f(l1).sum(1), (l1 * d_omega.reshape(16, 16)).sum((1, 2, 3)), atol=1e-12, rtol=0)


def test_world_rejects_bad_input():
    with pytest.raises(ValueError, match="light"):
        world.irradiance(torch.zeros(2, 3, 4, 4), torch.zeros(2, 3, 4, 5))
    with pytest.raises(ValueError, match="background"):
        world.make_objects(2, 8, background="blue")
    with pytest.raises(ValueError, match="n"):
        world.random_lights(0)
