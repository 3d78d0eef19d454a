"""Networks and attention: shapes, the identity-at-init property, attention against its formula, errors."""

import math

import pytest
import torch

import tinydiff as td
from tinydiff.models import Classifier, CrossAttention, MLPDenoiser, SpatialTransformer, UNet, timestep_embedding


def test_timestep_embedding_formula():
    t = torch.tensor([0.0, 1.0, 10.0])
    emb = timestep_embedding(t, 8, max_period=10000.0)
    freqs = torch.tensor([10000.0 ** (-i / 4) for i in range(4)])
    want = torch.cat([torch.cos(t[:, None] * freqs), torch.sin(t[:, None] * freqs)], 1)
    torch.testing.assert_close(emb, want)
    with pytest.raises(ValueError, match="even"):
        timestep_embedding(t, 7)


def test_mlp_denoiser_shapes_labels_and_errors():
    m = MLPDenoiser(dim=3, hidden=16, depth=2, time_dim=8, num_classes=4)
    x, t = torch.randn(5, 3), torch.randint(0, 100, (5,))
    assert m(x, t).shape == (5, 3)
    torch.testing.assert_close(m(x, t), m(x, t, y=torch.full((5,), 4)))  # no label = the null label
    with pytest.raises(ValueError, match="class indices"):
        m(x, t, y=torch.full((5,), 9))
    with pytest.raises(ValueError, match=r"shape \(B, 3\)"):
        m(torch.randn(5, 2), t)
    with pytest.raises(ValueError, match="t must have shape"):
        m(x, torch.zeros(4))
    with pytest.raises(ValueError, match="without num_classes"):
        MLPDenoiser(dim=3)(x, t, y=torch.zeros(5, dtype=torch.long))


def test_unet_shapes_and_zero_output_at_init():
    net = UNet(in_channels=3, base_channels=16, channel_mults=(1, 2), attn_levels=(1,), num_classes=10)
    x = torch.randn(2, 3, 16, 16)
    out = net(x, torch.tensor([1, 500]), y=torch.tensor([3, 10]))
    assert out.shape == x.shape
    assert torch.count_nonzero(out) == 0  # the last conv starts at zero
    with pytest.raises(ValueError, match="divisible by 2"):
        net(torch.randn(2, 3, 15, 15), torch.tensor([1, 2]))
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        net(torch.randn(2, 1, 16, 16), torch.tensor([1, 2]))


def test_unet_moves_between_devices_and_dtypes_and_trains_with_fit():
    net = UNet(in_channels=1, base_channels=8, channel_mults=(1, 2), attn_levels=(1,))
    assert net.to("cpu") is net and next(net.double().parameters()).dtype == torch.float64  # nn.Module._apply intact
    out = net(torch.randn(2, 1, 8, 8, dtype=torch.float64), torch.tensor([1, 2]))
    assert out.dtype == torch.float64
    net.float()
    sched = td.NoiseSchedule.linear(T=20)
    res = td.train.fit(net, lambda m, x: td.ddpm.loss(m, x, sched), torch.randn(16, 1, 8, 8), steps=2, batch_size=4,
                       progress_bar=False, device="cpu")
    assert len(res.losses) == 2


def test_unet_learns_to_use_its_inputs():
    torch.manual_seed(0)
    net = UNet(in_channels=1, base_channels=8, channel_mults=(1, 2), num_classes=3)
    opt = torch.optim.Adam(net.parameters(), 1e-2)
    x, target = torch.randn(4, 1, 8, 8), torch.randn(4, 1, 8, 8)
    for _ in range(20):
        opt.zero_grad()
        (net(x, torch.tensor([1, 2, 3, 4]), torch.tensor([0, 1, 2, 0])) - target).pow(2).mean().backward()
        opt.step()
    a = net(x, torch.tensor([1, 1, 1, 1]), torch.tensor([0, 0, 0, 0]))
    assert not torch.allclose(a, net(x, torch.tensor([900] * 4), torch.tensor([0, 0, 0, 0])))  # depends on t
    assert not torch.allclose(a, net(x, torch.tensor([1, 1, 1, 1]), torch.tensor([1, 1, 1, 1])))  # and on y


def test_unet_with_context_cross_attends():
    net = UNet(in_channels=1, base_channels=16, channel_mults=(1, 2), attn_levels=(1,), context_dim=12)
    x, t = torch.randn(2, 1, 8, 8), torch.tensor([3, 4])
    with pytest.raises(ValueError, match="needs context"):
        net(x, t)
    assert net(x, t, context=torch.randn(2, 5, 12)).shape == x.shape
    with pytest.raises(ValueError, match="context must have shape"):
        net(x, t, context=torch.randn(2, 5, 7))


def test_spatial_transformer_is_the_identity_at_init():
    block = SpatialTransformer(16, context_dim=12, heads=2)
    x = torch.randn(2, 16, 4, 4)
    assert torch.equal(block(x, torch.randn(2, 3, 12)), x)
    with pytest.raises(ValueError, match="context"):
        block(x)


def test_cross_attention_is_softmax_qk_v():
    torch.manual_seed(0)
    attn = CrossAttention(query_dim=8, context_dim=6, heads=2, dim_head=4)
    x, ctx = torch.randn(3, 5, 8), torch.randn(3, 7, 6)
    mask = torch.ones(3, 7, dtype=torch.bool)
    mask[:, -2:] = False
    q = attn.to_q(x).view(3, 5, 2, 4).transpose(1, 2)
    k = attn.to_k(ctx).view(3, 7, 2, 4).transpose(1, 2)
    v = attn.to_v(ctx).view(3, 7, 2, 4).transpose(1, 2)
    logits = q @ k.transpose(-1, -2) / math.sqrt(4)
    logits = logits.masked_fill(~mask[:, None, None, :], float("-inf"))
    want = attn.to_out((logits.softmax(-1) @ v).transpose(1, 2).reshape(3, 5, 8))
    torch.testing.assert_close(attn(x, ctx, mask), want)
    attn.store_attention = True
    torch.testing.assert_close(attn(x, ctx, mask), want)  # the explicit path agrees with the fused kernel
    assert attn.last_attention.shape == (3, 2, 5, 7)
    assert torch.all(attn.last_attention[..., -2:] == 0)  # masked tokens get no attention
    with pytest.raises(ValueError, match=r"x must have shape"):
        attn(torch.randn(3, 5, 9), ctx)


def test_classifier_shapes_and_time_conditioning():
    clf = Classifier(in_channels=1, num_classes=10, base_channels=8, time_conditional=True)
    x = torch.randn(4, 1, 8, 8)
    assert clf(x, torch.tensor([1, 2, 3, 4])).shape == (4, 10)
    assert clf.features(x, torch.tensor([1, 2, 3, 4])).shape == (4, 16)
    with pytest.raises(ValueError, match="pass the timestep"):
        clf(x)
    assert Classifier(in_channels=3, num_classes=5, base_channels=8)(torch.randn(2, 3, 16, 16)).shape == (2, 5)


def test_networks_refuse_inputs_they_would_ignore_or_misread():
    import pytest

    unet = td.models.UNet(1, base_channels=8, channel_mults=(1,))
    x, t = torch.randn(2, 1, 8, 8), torch.tensor([3, 4])
    with pytest.raises(ValueError, match="without context_dim, so it cannot take context="):
        unet(x, t, context=torch.randn(2, 3, 8))
    with pytest.raises(ValueError, match="time_conditional=False, so it cannot take t"):
        td.models.Classifier(1, 3, base_channels=8)(x, t)
    with pytest.raises(ValueError, match="without context_dim"):
        td.models.SpatialTransformer(8)(torch.randn(2, 8, 4, 4), context=torch.randn(2, 3, 8))
    cross = td.models.UNet(1, base_channels=8, channel_mults=(1,), attn_levels=(0,), context_dim=6, heads=2)
    with pytest.raises(ValueError, match=r"context must have shape \(B, M, 6\)"):
        cross(x, t, context=torch.randn(2, 3, 5))
    with pytest.raises(ValueError, match="context must have batch size 2"):
        cross(x, t, context=torch.randn(3, 3, 6))
    with pytest.raises(ValueError, match="context_mask must be a bool"):
        cross(x, t, context=torch.randn(2, 3, 6), context_mask=torch.ones(2, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="x must be real"):
        unet(x.to(torch.complex64), t)
    with pytest.raises(ValueError, match="x must hold numbers, not booleans"):
        unet(x > 0, t)
    with pytest.raises(ValueError, match="t must hold real timesteps"):
        unet(x, torch.tensor([True, False]))
    with pytest.raises(TypeError, match="t must be timesteps"):
        unet(x, None)
    with pytest.raises(ValueError, match="x must hold at least 1 sample"):
        unet(x[:0], t[:0])
    mlp = td.models.MLPDenoiser(hidden=8, depth=1, time_dim=8, num_classes=3)
    with pytest.raises(ValueError, match="y must hold integer class indices"):
        mlp(torch.randn(2, 2), t, y=torch.tensor([0.5, 1.0]))
    # half- and double-precision and integer batches run through a float32 network in its dtype
    ref = mlp(torch.randn(2, 2, generator=torch.Generator().manual_seed(0)), t)
    half = mlp(torch.randn(2, 2, generator=torch.Generator().manual_seed(0)).half(), t)
    assert half.dtype == torch.float32 and torch.allclose(half, ref, atol=1e-2)
    assert mlp(torch.ones(2, 2, dtype=torch.long), t).dtype == torch.float32


@pytest.mark.parametrize("build, match", [
    (lambda: td.models.UNet(base_channels=8.0), "base_channels must be an int"),
    (lambda: td.models.UNet(channel_mults="12"), "channel_mults must be a tuple of ints"),
    (lambda: td.models.UNet(channel_mults=(1, 2), attn_levels=(2,)), "attn_levels must lie in 0..1"),
    (lambda: td.models.UNet(dropout=1.0), r"dropout must lie in \[0, 1\)"),
    (lambda: td.models.UNet(time_scale=float("nan")), "time_scale must be a finite number"),
    (lambda: td.models.MLPDenoiser(dim=-3), "dim must lie in 1.."),
    (lambda: td.models.MLPDenoiser(time_dim=7), "time_dim .* must be even"),
    (lambda: td.models.MLPDenoiser(hidden=None), "hidden must be an int"),
    (lambda: td.models.MLPClassifier(num_classes=1), "num_classes must lie in 2.."),
    (lambda: td.models.TextEncoder(10, dim="64"), "dim must be an int"),
    (lambda: td.models.KLAutoencoder(kl_weight=-1.0), "kl_weight must be >= 0"),
    (lambda: td.models.Encoder(1, 2, f=True), "downsampling factor f must be a power of two"),
    (lambda: td.models.group_norm(0), "channels must lie in 1.."),
    (lambda: td.models.timestep_embedding(torch.arange(3), 7), "dim .* must be even"),
    (lambda: td.models.timestep_embedding(torch.arange(3), 8, max_period=-1.0), "max_period must be > 1"),
    (lambda: td.models.timestep_embedding(torch.zeros(2, 3), 8), "t must be a number or a 1-d tensor"),
    (lambda: td.models.KLAutoencoder().latent_shape((8, 8)), r"image_shape must be \(C, H, W\)"),
])
def test_network_constructors_name_the_bad_argument(build, match):
    with pytest.raises((ValueError, TypeError), match=match):
        build()


def test_attention_checks_its_context_and_mask():
    attn = CrossAttention(8, context_dim=6, heads=2, dim_head=4)
    x, ctx = torch.randn(2, 5, 8), torch.randn(2, 3, 6)
    assert attn(x, ctx, torch.tensor([[True, True, False]] * 2)).shape == (2, 5, 8)
    with pytest.raises(ValueError, match=r"mask must be a bool \(B, M=3\)"):
        attn(x, ctx, torch.ones(2, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"mask must be a bool \(B, M=3\)"):
        attn(x, ctx, torch.ones(2, 3))
    with pytest.raises(ValueError, match="context must have batch size 2"):
        attn(x, ctx[:1])
    with pytest.raises(ValueError, match=r"x must have shape \(B, N, 8\)"):
        attn(torch.randn(2, 5, 7), ctx)
