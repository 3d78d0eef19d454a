"""Lesson 10 (IC-Light): the linear light-transport world, the consistency loss derived per parameterisation and
coupling, checked exactly on the Bayes-optimal denoiser, and the zero-initialised input widening."""

import math
import warnings

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


# ---------------------------------------------------------------------------------------------- the objective

from tinydiff import relight as rl  # noqa: E402

EPS64 = torch.finfo(torch.float64).eps


def _scene(n=32, seed=10):
    g = _gen(seed)
    obj = world.make_objects(n, 16, generator=g, dtype=torch.float64)
    light = world.random_lights(n, 16, n_sources=(1, 3), generator=g, dtype=torch.float64)
    l1, l2, _ = world.split_light(light, generator=g)
    x12, x1, x2 = (world.to_model(world.render(obj, L)) for L in (light, l1, l2))
    return obj, (x12, x1, x2), g


def _coefs(t):
    ab = td.NoiseSchedule.linear(1000).alpha_bar[t]
    return ab.sqrt(), (1 - ab).sqrt()


def test_black_level_is_the_same_in_the_world_and_the_objective():
    assert rl.BLACK == world.BLACK == world.to_model(torch.tensor(0.0)).item()


@pytest.mark.parametrize("prediction", rl.PREDICTIONS)
def test_offset_matches_the_hand_derived_formulas(prediction):
    """o = A dx - B b against the formulas written out per parameterisation (not through convert)."""
    g = _gen(11)
    xt = [torch.randn(4, 3, 5, 5, generator=g, dtype=torch.float64) for _ in range(3)]
    a, s = _coefs(torch.tensor([5, 200, 600, 990]))
    dx = xt[0] - xt[1] - xt[2]
    A, S, b = a[:, None, None, None], s[:, None, None, None], rl.BLACK
    want = {"eps": (dx + A * b) / S, "x0": torch.full_like(dx, -b),
            "v": (A * dx + (A * A + S * S) * b) / S}[prediction]
    torch.testing.assert_close(rl.offset(prediction, *xt, a, s), want, atol=1e-12, rtol=1e-12)
    ca, cb = rl.coefficients(prediction, A, S)
    torch.testing.assert_close(ca * dx - cb * b, want, atol=1e-12, rtol=1e-12)


@pytest.mark.parametrize("t", [10, 100, 500, 900])
@pytest.mark.parametrize("coupling", rl.COUPLINGS)
@pytest.mark.parametrize("prediction", rl.PREDICTIONS)
def test_derived_identity_is_exact_at_the_bayes_optimum_and_the_literal_one_fails(prediction, coupling, t):
    obj, (x12, x1, x2), g = _scene()
    a, s = _coefs(t)
    xts, noises = rl.couple(coupling, x12, a, s, x0_1=x1, x0_2=x2, generator=g)
    p = [rl.bayes_prediction(prediction, x0, xt, a, s) for x0, xt in zip((x12, x1, x2), xts)]
    m = obj.mask
    r = rl.consistency_residual(prediction, *p, *xts, a, s)
    scale = max(q.abs().max().item() for q in p)
    assert (m * r).abs().max() < 64 * EPS64 * (1 + scale)  # float64 rounding of a few terms of size <= scale
    assert rl.rms(r, 1 - m) > 0.01  # off the object the relation is false (unlit background): M is needed
    lit = rl.literal_residual(*p)
    if prediction == "x0":
        torch.testing.assert_close(m * lit, m.expand_as(lit) * 1.0, atol=1e-12, rtol=0)  # the affine offset -b = 1 exactly
    elif prediction == "eps":
        o = rl.offset("eps", *xts, a, s)
        torch.testing.assert_close(m * lit, m * o, atol=64 * EPS64 * (1 + scale), rtol=0)
        if coupling == "shared_noise":
            torch.testing.assert_close(m * lit, -m * noises[0], atol=64 * EPS64 * (1 + scale), rtol=0)
        expected = {"shared_noise": 1.0, "independent": math.sqrt(3)}.get(coupling)
        got = rl.rms(lit, m)
        if expected is not None:  # rms of -eps or of eps_12 - eps_1 - eps_2 (~ 3000 pixels: 3 % scatter)
            assert abs(got - expected) < 0.1 * expected
        else:  # shared x_t: (alpha b - x_t) / sigma grows like alpha / sigma at small t
            assert got > 0.9 and (t > 100 or got > 4)


def test_residual_of_any_parameterisation_is_B_times_the_x0_residual():
    g = _gen(12)
    a, s = _coefs(torch.tensor([30, 300, 700]))
    xts = [torch.randn(3, 3, 4, 4, generator=g, dtype=torch.float64) for _ in range(3)]
    x0s = [torch.randn(3, 3, 4, 4, generator=g, dtype=torch.float64) for _ in range(3)]  # not consistent at all
    for prediction in rl.PREDICTIONS:
        p = [rl.bayes_prediction(prediction, x0, xt, a, s) for x0, xt in zip(x0s, xts)]
        _, B = rl.coefficients(prediction, a[:, None, None, None], s[:, None, None, None])
        torch.testing.assert_close(rl.consistency_residual(prediction, *p, *xts, a, s), B * rl.x0_residual(*x0s),
                                   atol=1e-11, rtol=1e-11)


def test_bayes_prediction_agrees_with_convert_and_is_unbiased_for_the_training_target():
    g = _gen(13)
    a, s = _coefs(torch.tensor([50, 400]))
    x0 = torch.randn(2, 3, 4, 4, generator=g, dtype=torch.float64)
    eps = torch.randn(2, 3, 4, 4, generator=g, dtype=torch.float64)
    xt = a[:, None, None, None] * x0 + s[:, None, None, None] * eps
    torch.testing.assert_close(rl.bayes_prediction("eps", x0, xt, a, s), eps, atol=1e-12, rtol=0)
    v = rl.bayes_prediction("v", x0, xt, a, s)
    x0_back, eps_back = td.convert.x0_eps_from("v", v, xt, a, s)
    torch.testing.assert_close(x0_back, x0, atol=1e-12, rtol=0)
    torch.testing.assert_close(eps_back, eps, atol=1e-12, rtol=0)


def test_losses_vanish_at_the_optimum_with_the_mask_and_the_literal_loss_does_not():
    obj, (x12, x1, x2), g = _scene(seed=14)
    a, s = _coefs(200)
    xts, (eps, _, _) = rl.couple("shared_xt", x12, a, s, generator=g)
    p1, p2 = (rl.bayes_prediction("eps", x0, xts[0], a, s) for x0 in (x1, x2))
    # the data target at L is the true noise (the lecture's || eps - phi(...) ||^2)
    assert rl.consistency_loss("eps", eps, p1, p2, *xts, a, s, mask=obj.mask) < 1e-25
    assert rl.consistency_loss("eps", eps, p1, p2, *xts, a, s) > 0.1  # without M the background breaks it
    assert rl.rms(rl.literal_residual(eps, p1, p2), obj.mask) > 1.0  # the slide's identity as a loss
    phi = lambda z: rl.phi_exact("eps", z[:, :3], z[:, 3:6], z[:, 6:9], z[:, 9:12], z[:, 12:15], a, s)  # noqa: E731
    assert rl.consistency_loss_latent(phi, eps, p1, p2, *xts, a, s, mask=obj.mask) < 1e-25
    assert rl.joint_loss(torch.tensor(2.0), torch.tensor(10.0)) == 2.0 + 0.1 * 10.0


def test_relight_losses_at_the_optimum_and_its_gradient_flows():
    obj, (x12, x1, x2), g = _scene(n=8, seed=15)
    sched = td.NoiseSchedule.linear(1000)
    t = torch.randint(1, 1001, (8,), generator=g)
    g1, g2 = _gen(99), _gen(99)
    l12 = world.random_lights(8, 16, generator=g, dtype=torch.float64)
    l1, l2, _ = world.split_light(l12, generator=g)
    truth = {id(L): world.to_model(world.render(obj, L)) for L in (l12, l1, l2)}

    def oracle(xt, tt, cond, light):  # Bayes-optimal x0 predictor: looks the scene up by its light
        out = torch.cat([truth[id(l12)], truth[id(l1)], truth[id(l2)]])
        keys = torch.cat([l12, l1, l2]).flatten(1)
        return out[torch.cdist(light.flatten(1), keys).argmin(1)]

    cond = world.condition(obj)
    out = rl.relight_losses(oracle, "x0", truth[id(l12)], cond, l12, l1, l2, sched.alpha_bar[t], t,
                            mask=obj.mask, generator=g1)
    assert out["vanilla"] < 1e-28 and out["consistency"] < 1e-28
    nomask = rl.relight_losses(oracle, "x0", truth[id(l12)], cond, l12, l1, l2, sched.alpha_bar[t], t, generator=g2)
    assert nomask["consistency"] > 0.1


def test_objective_rejects_bad_input():
    x = torch.zeros(2, 3, 4, 4)
    with pytest.raises(ValueError, match="prediction"):
        rl.offset("score", x, x, x, 0.5, 0.5)
    with pytest.raises(ValueError, match="coupling"):
        rl.couple("shared", x, 0.5, 0.5)
    with pytest.raises(ValueError, match="x0_1"):
        rl.couple("independent", x, 0.5, 0.5)


# ---------------------------------------------------------------------------------------------- the model

from tinydiff.models.relight import PhiNet, RelightUNet, widen_input, widen_input_conv  # noqa: E402


def _randomise(model, seed=0):
    """Give every parameter random values (a UNet's output conv starts at zero, which would hide any bug)."""
    g = _gen(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(0.3 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return model


def _close_exact(a, b):
    """Widening adds 0 * c terms: exact in real arithmetic, so in float64 only the summation order may differ."""
    torch.testing.assert_close(a, b, atol=1e-12 * (1 + b.abs().max().item()), rtol=0)


def test_widen_input_conv_keeps_the_output_for_any_new_channels():
    conv = nn_conv = torch.nn.Conv2d(3, 8, 3, padding=1).double()
    wide = widen_input_conv(conv, 5)
    assert wide.in_channels == 8 and wide.weight.dtype == torch.float64
    g = _gen(20)
    x = torch.randn(2, 3, 6, 6, generator=g, dtype=torch.float64)
    c = torch.randn(2, 5, 6, 6, generator=g, dtype=torch.float64)
    _close_exact(wide(torch.cat([x, c], 1)), nn_conv(x))
    assert torch.equal(wide.weight[:, 3:], torch.zeros_like(wide.weight[:, 3:]))
    with pytest.raises(ValueError, match="extra_channels"):
        widen_input_conv(conv, 0)


def test_widened_unet_equals_the_base_unet_exactly():
    base = _randomise(td.models.UNet(3, base_channels=16, channel_mults=(1, 2)).double())
    g = _gen(21)
    x = torch.randn(3, 3, 8, 8, generator=g, dtype=torch.float64)
    t = torch.tensor([1, 400, 999])
    before = base(x, t)
    wide = widen_input(base, 4)
    assert wide.in_channels == 7
    _close_exact(wide(torch.cat([x, torch.randn(3, 4, 8, 8, generator=g, dtype=torch.float64)], 1), t), before)


def test_widened_dit_equals_the_base_dit_exactly():
    dit = pytest.importorskip("tinydiff.models.dit")
    base = _randomise(dit.DiT(input_size=8, patch_size=2, in_channels=3, hidden_size=32, depth=2, heads=2,
                              num_classes=None).double())
    g = _gen(22)
    x = torch.randn(2, 3, 8, 8, generator=g, dtype=torch.float64)
    t = torch.tensor([3, 700])
    before = base(x, t)
    widen_input(base, 4)
    _close_exact(base(torch.cat([x, torch.randn(2, 4, 8, 8, generator=g, dtype=torch.float64)], 1), t), before)
    with pytest.raises(ValueError, match="learn_sigma"):
        widen_input(dit.DiT(input_size=8, in_channels=3, hidden_size=32, depth=1, heads=2, learn_sigma=True), 4)


def test_relight_unet_from_base_computes_the_base_model_until_trained():
    base = _randomise(td.models.UNet(3, base_channels=16, channel_mults=(1, 2)).double())
    g = _gen(23)
    x = torch.randn(2, 3, 16, 16, generator=g, dtype=torch.float64)
    t = torch.tensor([10, 800])
    before = base(x, t)
    model = RelightUNet.from_base(base, cond_channels=4)
    obj = world.make_objects(2, 16, generator=g, dtype=torch.float64)
    light = world.random_lights(2, 16, generator=g, dtype=torch.float64)
    _close_exact(model(x, t, world.condition(obj), light), before)
    # once the light MLP's last layer is non-zero the light does change the output
    with torch.no_grad():
        model.unet.embed.light[-1].weight.normal_(generator=g)
    assert (model(x, t, world.condition(obj), light) - before).abs().max() > 1e-3


def test_background_variant_equals_the_foreground_model_at_init_and_for_zero_filled_backgrounds():
    fg = _randomise(RelightUNet(base_channels=16).double(), seed=24)
    g = _gen(25)
    obj = world.make_objects(2, 16, generator=g, background="random", dtype=torch.float64)
    light = world.random_lights(2, 16, generator=g, dtype=torch.float64)
    x = torch.randn(2, 3, 16, 16, generator=g, dtype=torch.float64)
    t = torch.tensor([5, 500])
    cond_fg = world.condition(obj)
    want = fg(x, t, cond_fg, light)
    bg = fg.add_background(3)
    cond_bg = world.condition(obj, with_background=True)
    _close_exact(bg(x, t, cond_bg, light), want)  # any background: its weights are zero
    with torch.no_grad():
        bg.unet.inp.weight[:, -3:].normal_(generator=g)  # "trained" background weights
    zero_filled = torch.cat([cond_fg, torch.zeros(2, 3, 16, 16, dtype=torch.float64)], 1)
    _close_exact(bg(x, t, zero_filled, light), want)  # a zero-filled background still adds nothing
    assert (bg(x, t, cond_bg, light) - want).abs().max() > 1e-3
    with pytest.raises(ValueError, match="cond"):
        bg(x, t, cond_fg, light)


def test_phi_net_shapes_and_learned_phi_loss_runs():
    phi = PhiNet(3, hidden=8)
    g = _gen(26)
    z = [torch.randn(2, 3, 4, 4, generator=g) for _ in range(6)]
    a, s = _coefs(torch.tensor([100, 500]))
    loss = rl.consistency_loss_latent(phi, z[0], *z[1:3], *z[3:6], a.float(), s.float())
    loss.backward()
    assert phi.net[0].weight.grad is not None and phi.net[0].in_channels == 18


# ---------------------------------------------------------------------------------------------- training and metrics

def test_relight_batches_render_the_truth_and_split_exactly():
    obj = world.make_objects(20, 16, generator=_gen(30))
    x0, cond, light, l1, l2, mask = world.RelightBatches(obj)(8, _gen(31))
    assert torch.equal(l1 + l2, light) and x0.shape == (8, 3, 16, 16) and cond.shape == (8, 4, 16, 16)
    idx = torch.randint(0, 20, (8,), generator=_gen(31))  # the same draw as inside
    torch.testing.assert_close(x0, world.to_model(world.render(obj[idx], light)), atol=1e-6, rtol=0)
    assert torch.equal(mask, obj.mask[idx])


def test_loss_fn_trains_an_x0_model_and_vanilla_skips_the_extra_evaluations():
    sched = td.NoiseSchedule.linear(1000)
    obj = world.make_objects(16, 16, generator=_gen(32))
    calls = []
    torch.manual_seed(0)
    net = RelightUNet(base_channels=8)
    counting = lambda x, t, c, L: (calls.append(x.shape[0]), net(x, t, c, L))[1]  # noqa: E731
    batch = world.RelightBatches(obj)(4, _gen(33))
    rl.loss_fn(sched, lambda_consistency=0.0)(counting, batch)
    assert calls == [4]
    rl.loss_fn(sched)(counting, batch)
    assert calls == [4, 4, 8]  # vanilla, then L1 and L2 in one batch
    res = td.train.fit(net, rl.loss_fn(sched), world.RelightBatches(obj), steps=30, batch_size=8, lr=3e-3,
                       progress_bar=False, device="cpu", ema_decay=None)
    assert sum(res.losses[-5:]) / 5 < 0.8 * sum(res.losses[:5]) / 5  # 0.08 -> 0.05 in 30 steps
    out = rl.relight(res.model, world.condition(obj[:4]), world.random_lights(4, generator=_gen(34)), sched, 3,
                     generator=_gen(35))
    assert out.shape == (4, 3, 16, 16) and torch.isfinite(out).all()


def test_psnr_matches_its_formula_and_ssim_of_identical_images_is_one():
    g = _gen(36)
    a = torch.rand(3, 3, 16, 16, generator=g, dtype=torch.float64)
    b = (a + 0.05 * torch.randn(3, 3, 16, 16, generator=g, dtype=torch.float64)).clamp(0, 1)
    p, s = rl.psnr_ssim(b, a)
    torch.testing.assert_close(p, 10 * torch.log10(1 / (a - b).square().mean((1, 2, 3))), atol=1e-9, rtol=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # skimage divides by a zero error: PSNR = inf
        p2, s2 = rl.psnr_ssim(a, a)
    assert torch.isinf(p2).all() and torch.allclose(s2, torch.ones(3, dtype=torch.float64))
    assert (s < 1).all() and (s > 0).all()


def test_linearity_error_is_zero_for_true_renders_and_photometric_stereo_is_exact_without_clamping():
    obj, (x12, x1, x2), _ = _scene(seed=37)
    assert rl.linearity_error(x12, x1, x2, obj.mask) < 1e-13
    assert rl.linearity_error(x12, x1, x2) > 0.1  # the background
    dirs = torch.nn.functional.normalize(torch.tensor([[0.0, 0, 1], [0.3, 0, 1], [-0.3, 0, 1], [0, 0.3, 1],
                                                       [0, -0.3, 1]], dtype=torch.float64), dim=1)
    lights = world.lobe_lights(dirs, 16, kappa=400.0, dtype=torch.float64)
    _, d_omega = world.front_half_directions(16)
    torch.testing.assert_close((lights * d_omega.reshape(16, 16)).sum((2, 3)), torch.ones(5, 3, dtype=torch.float64))
    imgs = torch.stack([world.render(obj, Lk[None].expand(len(obj), -1, -1, -1), background=False) for Lk in lights])
    front = obj.mask.bool() & (obj.normals[:, 2:3] > 0.8)
    err = rl.angular_error(rl.photometric_stereo(imgs, world.light_vector(lights)), obj.normals, front)
    assert err.max() < 1e-5  # degrees; arccos near 1 turns 1e-16 into ~1e-6 deg
    wide = world.lobe_lights(dirs, 16, kappa=4.0, dtype=torch.float64)  # broad lobes reach behind the surfaces
    imgs = torch.stack([world.render(obj, Lk[None].expand(len(obj), -1, -1, -1), background=False) for Lk in wide])
    assert rl.angular_error(rl.photometric_stereo(imgs, world.light_vector(wide)), obj.normals, obj.mask).max() > 1


def test_lpips_is_skipped_with_a_reason_when_unavailable():
    d, why = rl.lpips(torch.rand(2, 3, 16, 16), torch.rand(2, 3, 16, 16))
    assert (d is None and why) or (d is not None and d.shape == (2,))


def test_a_learned_phi_that_sees_the_noisy_input_learns_the_merge():
    """PhiNet on phi_inputs (shared x_t, Bayes-optimal eps, t in 200..800) gets the latent-form loss far below the
    literal slide's, and below a phi that is shown only (p1, p2) (measured 0.0016 vs 0.0077 vs 0.25)."""
    g = _gen(40)
    sched = td.NoiseSchedule.linear(1000)
    obj = world.make_objects(64, 8, generator=g)
    light = world.random_lights(64, 8, n_sources=(1, 3), generator=g)
    l1, l2, _ = world.split_light(light, generator=g)
    x12, x1, x2 = (world.to_model(world.render(obj, L)) for L in (light, l1, l2))

    def draw():
        ab = sched.alpha_bar[torch.randint(200, 801, (64,), generator=g)].float()
        a, s = ab.sqrt(), (1 - ab).sqrt()
        (xt, _, _), _ = rl.couple("shared_xt", x12, a, s, generator=g)
        return [rl.bayes_prediction("eps", x0, xt, a, s) for x0 in (x12, x1, x2)], xt, a, s

    final = {}
    for only_p in (False, True):
        torch.manual_seed(0)
        phi = PhiNet(3, 32)
        f = (lambda z: phi(torch.cat([z[:, :6], torch.zeros_like(z[:, 6:])], 1))) if only_p else phi  # noqa: B023
        opt = torch.optim.Adam(phi.parameters(), 3e-3)
        for _ in range(300):
            p, xt, a, s = draw()
            loss = rl.consistency_loss_latent(f, *p, xt, xt, xt, a, s, mask=obj.mask)
            opt.zero_grad()
            loss.backward()
            opt.step()
        with torch.no_grad():
            p, xt, a, s = draw()
            final[only_p] = rl.consistency_loss_latent(f, *p, xt, xt, xt, a, s, mask=obj.mask).item()
            literal = rl.masked_mse(rl.literal_residual(*p), obj.mask).item()
    assert final[False] < 0.02 * literal and final[False] < 0.5 * final[True]


def test_bad_input_is_refused_by_name():
    from tinydiff import relight as R
    from tinydiff.data import relight as DR

    x = torch.zeros(2, 3, 8, 8)
    with pytest.raises(ValueError, match="xt_2 must have the shape of xt_12"):
        R.offset("eps", x, x, x[:1], 0.5, 0.8)
    with pytest.raises(ValueError, match="alpha must be a number or have shape"):
        R.offset("eps", x, x, x, torch.ones(3), 0.8)
    with pytest.raises(TypeError, match="sigma must be a real number"):
        R.coefficients("eps", 0.5, None)
    with pytest.raises(ValueError, match="black must be a finite number"):
        R.x0_residual(x, x, x, black=float("nan"))
    with pytest.raises(ValueError, match="mask must broadcast"):
        R.masked_mse(x, torch.ones(2, 1, 4, 4))
    with pytest.raises(ValueError, match="r must hold at least one"):
        R.rms(x[:, :0])
    with pytest.raises(ValueError, match="lambda_vanilla must be >= 0"):
        R.joint_loss(torch.tensor(1.0), torch.tensor(1.0), lambda_vanilla=-1.0)
    with pytest.raises(ValueError, match="dtype must be a floating torch dtype"):
        DR.make_objects(2, dtype=torch.int64)
    with pytest.raises(ValueError, match="n_sources must be an int or a range"):
        DR.random_lights(2, n_sources=(3, 1))
    with pytest.raises(TypeError, match="objects must be an Objects"):
        DR.render(None, torch.zeros(1, 3, 4, 4))
    with pytest.raises(ValueError, match="size must lie in 1"):
        DR.light_features(torch.zeros(1, 3, 4, 4), size=0)
    with pytest.raises(ValueError, match="light_cells must"):
        td.models.relight.RelightUNet(light_cells=1.5)
