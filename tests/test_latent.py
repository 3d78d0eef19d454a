"""Latent diffusion (lesson 08): text encoder, autoencoders, scale factor, cross-attention, the glue."""

import math

import pytest
import torch

import tinydiff as td
from tinydiff.data.shapes import Tokenizer

TOK = Tokenizer()
CAPS = ["a red circle top left", "a green square bottom right", ""]


def tiny_model(seed=0, **kw):
    torch.manual_seed(seed)
    return td.latent.caption_unet(TOK.vocab_size, 4, base_channels=16, text_dim=16, text_layers=1, **kw)


# ------------------------------------------------------------------------------------ text encoder
def test_text_encoder_shapes_and_padding_is_ignored():
    torch.manual_seed(0)
    enc = td.models.TextEncoder(TOK.vocab_size, dim=16, layers=2, heads=2).eval()
    ids, mask = TOK.encode(CAPS)
    out = enc(ids, mask)
    assert out.shape == (3, TOK.max_len, 16)
    assert (out[~mask] == 0).all()
    changed = ids.clone()
    changed[~mask] = TOK.index["blue"]  # a real word where the padding was
    torch.testing.assert_close(enc(changed, mask), out, atol=1e-6, rtol=0)
    # the same change with the padding visible (mask all True) does change the real tokens' outputs
    full = torch.ones_like(mask)
    assert (enc(changed, full)[mask] - enc(ids, full)[mask]).abs().max() > 1e-3


def test_text_encoder_bad_input():
    enc = td.models.TextEncoder(TOK.vocab_size, dim=16, layers=1, heads=2)
    ids, mask = TOK.encode(CAPS)
    with pytest.raises(ValueError, match="LongTensor"):
        enc(ids.float(), mask)
    with pytest.raises(ValueError, match="0..12"):
        enc(ids + 100, mask)
    with pytest.raises(ValueError, match="at least one real token"):
        enc(ids, torch.zeros_like(mask))
    with pytest.raises(ValueError, match="divisible"):
        td.models.TextEncoder(10, dim=15, heads=2)


# ------------------------------------------------------------------------------------ autoencoders
@pytest.mark.parametrize("f", [2, 4, 8])
def test_kl_autoencoder_shapes_and_factor(f):
    ae = td.models.KLAutoencoder(3, latent_channels=4, f=f, base_channels=8)
    x = torch.randn(2, 3, 16, 16)
    z = ae.encode(x)
    assert z.shape == (2, 4, 16 // f, 16 // f) == (2, *ae.latent_shape((3, 16, 16)))
    assert ae.decode(z).shape == x.shape and ae(x).shape == x.shape
    assert torch.isfinite(ae.loss(x))


def test_kl_autoencoder_posterior_and_kl_term():
    torch.manual_seed(0)
    ae = td.models.KLAutoencoder(3, 2, f=2, base_channels=8)
    x = torch.randn(1, 3, 8, 8)
    mean, logvar = ae.moments(x)
    draws = torch.stack([ae.encode(x, sample=True, generator=torch.Generator().manual_seed(i)) for i in range(2000)])
    torch.testing.assert_close(draws.mean(0), mean, atol=0.1, rtol=0)
    torch.testing.assert_close(draws.var(0), logvar.exp(), atol=0.15, rtol=0.1)
    mu, lv = torch.randn(50), torch.randn(50)
    ref = torch.distributions.kl_divergence(torch.distributions.Normal(mu, (0.5 * lv).exp()),
                                            torch.distributions.Normal(0.0, 1.0))
    torch.testing.assert_close(td.models.kl_to_standard_normal(mu, lv), ref)


def test_vq_autoencoder_shapes_and_factor():
    torch.manual_seed(0)
    ae = td.models.VQAutoencoder(3, latent_channels=4, f=4, base_channels=8, num_codes=16)
    x = torch.randn(2, 3, 16, 16)
    z = ae.encode(x)
    assert z.shape == (2, 4, 4, 4)
    q = ae.quantize(z)
    # every quantised vector is the codebook row it was assigned (up to the rounding of z_e + (e - z_e))
    torch.testing.assert_close(q.z_q, ae.quantizer.quantize(q.indices), atol=1e-6, rtol=0)
    assert ae.decode(z).shape == x.shape and torch.isfinite(ae.loss(x))


def test_autoencoder_bad_input():
    with pytest.raises(ValueError, match="power of two"):
        td.models.KLAutoencoder(f=3)
    ae = td.models.KLAutoencoder(3, 4, f=4, base_channels=8)
    with pytest.raises(ValueError, match="divisible by f=4"):
        ae.encode(torch.randn(1, 3, 10, 10))
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        ae.encode(torch.randn(1, 1, 16, 16))
    with pytest.raises(ValueError, match=r"\(B, 4, h, w\)"):
        ae.decode(torch.randn(1, 3, 4, 4))


# ------------------------------------------------------------------------------------ scale factor, SNR
def test_scale_factor_makes_latents_unit_variance():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(64, 4, 8, 8, generator=g) * torch.tensor([5.0, 2.0, 1.0, 0.5])[:, None, None] + 3.0
    s = td.latent.scale_factor(z)
    assert abs((s * z).std().item() - 1.0) < 1e-6
    # one number for the whole latent space: the channels keep their relative scales
    per_channel = (s * z).std((0, 2, 3))
    torch.testing.assert_close(per_channel / per_channel[0], z.std((0, 2, 3)) / z.std((0, 2, 3))[0])
    ae = td.models.KLAutoencoder(3, 4, f=4, base_channels=8)
    x = td.data.shapes.make_shapes(32, 16, seed=0).images
    s = td.latent.scale_factor(td.latent.encode(ae, x))
    assert abs(td.latent.encode(ae, x, s).std().item() - 1.0) < 1e-5
    torch.testing.assert_close(td.latent.decode(ae, td.latent.encode(ae, x, s), s), ae(x).detach().clamp(-1, 1),
                               atol=1e-5, rtol=1e-4)
    with pytest.raises(ValueError, match="zero spread"):
        td.latent.scale_factor(torch.ones(10))


def test_snr_of_q_zt_given_z0_scales_with_the_data_variance():
    sched = td.NoiseSchedule.linear(100, 1e-3, 0.2)
    var = 6.0
    t = torch.tensor([5, 30, 70])
    got = td.latent.snr(sched, var)[t]
    # Monte Carlo: power of the signal part over power of the noise part of z_t
    g = torch.Generator().manual_seed(0)
    z0 = torch.randn(20000, 1, dtype=torch.float64, generator=g) * math.sqrt(var)
    for i, tt in enumerate(t.tolist()):
        ab = sched.alpha_bar[tt]
        signal = ab.sqrt() * z0
        noise = td.ddpm.q_sample(z0, tt, torch.randn(z0.shape, dtype=torch.float64, generator=g), sched) - signal
        assert abs(signal.var() / noise.var() / got[i] - 1) < 0.05
    torch.testing.assert_close(got, var * sched.alpha_bar[t] / (1 - sched.alpha_bar[t]))
    with pytest.raises(ValueError, match="data_var"):
        td.latent.snr(sched, 0.0)


# ------------------------------------------------------------------------------------ cross-attention
def test_cross_attention_matches_handwritten_softmax_qk_v():
    torch.manual_seed(0)
    heads, dh, N, M, dq, dc = 2, 8, 5, 4, 12, 6
    attn = td.models.CrossAttention(dq, dc, heads, dh)
    x, ctx = torch.randn(3, N, dq), torch.randn(3, M, dc)
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [1, 0, 0, 0]], dtype=torch.bool)
    Q, K, V = x @ attn.to_q.weight.T, ctx @ attn.to_k.weight.T, ctx @ attn.to_v.weight.T
    outs = []
    for h in range(heads):
        q, k, v = (A[..., h * dh:(h + 1) * dh] for A in (Q, K, V))
        logits = q @ k.transpose(1, 2) / math.sqrt(dh)
        logits = logits.masked_fill(~mask[:, None, :], float("-inf"))
        outs.append(torch.softmax(logits, dim=-1) @ v)
    want = attn.to_out(torch.cat(outs, -1))
    torch.testing.assert_close(attn(x, ctx, mask), want, atol=1e-5, rtol=1e-5)
    attn.store_attention = True  # the explicit path (for plots) gives the same numbers and keeps the weights
    torch.testing.assert_close(attn(x, ctx, mask), want, atol=1e-5, rtol=1e-5)
    w = attn.last_attention
    assert w.shape == (3, heads, N, M) and (w[1, :, :, 2:] == 0).all()
    torch.testing.assert_close(w.sum(-1), torch.ones(3, heads, N))


def test_spatial_transformer_is_the_identity_at_init_inside_the_unet():
    model = tiny_model()
    ids, mask = TOK.encode(CAPS)
    z, t = torch.randn(3, 4, 8, 8), torch.tensor([1, 50, 99])
    ctx = model.text(ids, mask)
    deltas = td.latent.transformer_block_deltas(model.unet, z, t, context=ctx, context_mask=mask)
    assert len(deltas) == 4 and max(deltas) == 0.0  # 2 down/up blocks at level 1 + 1 up + the middle one
    with torch.no_grad():  # the same check on a block whose output projection is not zero fails
        block = next(m for m in model.unet.modules() if isinstance(m, td.models.SpatialTransformer))
        block.proj_out.weight.normal_()
    assert max(td.latent.transformer_block_deltas(model.unet, z, t, context=ctx, context_mask=mask)) > 1e-3
    with pytest.raises(ValueError, match="no SpatialTransformer"):
        td.latent.transformer_block_deltas(td.models.UNet(4, base_channels=8), z, t)


def test_cross_attention_maps_are_distributions_over_real_tokens():
    model = tiny_model()
    ids, mask = TOK.encode(CAPS)
    maps = td.latent.cross_attention_maps(model, torch.randn(3, 4, 8, 8), torch.tensor([10, 10, 10]), ids, mask)
    assert maps.shape == (3, TOK.max_len, 4, 4)  # the finest level with attention is level 1: 8 / 2 = 4
    torch.testing.assert_close(maps.sum(1), torch.ones(3, 4, 4))
    assert (maps[~mask] == 0).all()
    assert all(not m.store_attention for m in model.modules() if isinstance(m, td.models.CrossAttention))


# ------------------------------------------------------------------------------------ the conditional model
def test_latent_eps_fn_shapes_and_guidance_combination():
    model = tiny_model()
    with torch.no_grad():  # make the output depend on the caption (the zero-init out-conv hides it)
        for p in model.unet.out.parameters():
            p.normal_(0, 0.1)
        for m in model.modules():
            if isinstance(m, td.models.SpatialTransformer):
                m.proj_out.weight.normal_(0, 0.1)
    ids, mask = TOK.encode(CAPS[:2])
    null = TOK.encode("")
    z, t = torch.randn(2, 4, 8, 8), torch.tensor([20, 80])
    with torch.no_grad():
        e_c = model(z, t, ids, mask)
        e_u = model(z, t, null[0].expand(2, -1), null[1].expand(2, -1))
    assert (e_c - e_u).abs().max() > 1e-3
    torch.testing.assert_close(td.latent.eps_fn(model, ids, mask)(z, t), e_c, atol=1e-5, rtol=1e-5)
    guided = td.latent.eps_fn(model, ids, mask, gamma=2.5, null=null)(z, t)
    assert guided.shape == z.shape
    torch.testing.assert_close(guided, 3.5 * e_c - 2.5 * e_u, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(td.latent.guided_eps(e_u, e_c, 0.0), e_c)
    x = td.ddpm.sample(td.latent.eps_fn(model, ids, mask, gamma=1.0, null=null), (2, 4, 8, 8),
                       td.NoiseSchedule.linear(5, 1e-3, 0.2), generator=torch.Generator().manual_seed(0))
    assert x.shape == (2, 4, 8, 8) and torch.isfinite(x).all()
    with pytest.raises(ValueError, match="built for 2 captions"):
        td.latent.eps_fn(model, ids, mask)(torch.randn(3, 4, 8, 8), torch.tensor([1, 1, 1]))
    with pytest.raises(ValueError, match="null caption"):
        td.latent.eps_fn(model, ids, mask, gamma=1.0)


def test_caption_dropout_and_joint_loss():
    ids, mask = TOK.encode(CAPS[:2] * 4)
    null = TOK.encode("")
    same = td.latent.drop_captions(ids, mask, 0.0, *null)
    assert torch.equal(same[0], ids) and torch.equal(same[1], mask)
    gone = td.latent.drop_captions(ids, mask, 1.0, *null)
    assert (gone[0] == null[0]).all() and (gone[1] == null[1]).all()
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        td.latent.drop_captions(ids, mask, 1.5, *null)
    # at 0 < p < 1 each caption is dropped with probability p (not p^2, not 1 - p): 20,000 captions, 5 s.e.
    many_ids, many_mask = ids.repeat(2500, 1), mask.repeat(2500, 1)
    dropped = td.latent.drop_captions(many_ids, many_mask, 0.3, *null, generator=torch.Generator().manual_seed(0))[0]
    frac = (dropped == null[0]).all(1).double().mean().item()
    assert abs(frac - 0.3) < 5 * math.sqrt(0.3 * 0.7 / len(many_ids)), frac
    model = tiny_model()
    sched = td.NoiseSchedule.linear(50, 1e-3, 0.2)
    loss = td.latent.loss(model, (torch.randn(8, 4, 8, 8), ids, mask), sched, p_uncond=0.5, null=null)
    loss.backward()
    # the joint loss reaches the UNet's (zero-initialised) output conv; that the gradient then reaches the text
    # encoder through cross-attention is checked by test_text_encoder_gets_gradient_once_the_unet_is_not_zero
    assert model.unet.out[-1].weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="null caption"):
        td.latent.loss(model, (torch.randn(8, 4, 8, 8), ids, mask), sched, p_uncond=0.1)
    with pytest.raises(ValueError, match="context_dim"):
        td.latent.CaptionUNet(td.models.UNet(4, base_channels=8, attn_levels=(0,), context_dim=8),
                              td.models.TextEncoder(TOK.vocab_size, dim=16, layers=1, heads=2))


def test_text_encoder_gets_gradient_once_the_unet_is_not_zero():
    model = tiny_model()
    with torch.no_grad():
        model.unet.out[-1].weight.normal_(0, 0.1)
        for m in model.modules():
            if isinstance(m, td.models.SpatialTransformer):
                m.proj_out.weight.normal_(0, 0.1)
    ids, mask = TOK.encode(CAPS[:2])
    td.latent.loss(model, (torch.randn(2, 4, 8, 8), ids, mask), td.NoiseSchedule.linear(50, 1e-3, 0.2),
                   p_uncond=0.0).backward()
    assert model.text.token.weight.grad.abs().sum() > 0


# ------------------------------------------------------------------------------------ compute cost
def test_cost_and_activation_bytes():
    unet = td.models.UNet(4, base_channels=8)
    big, small = torch.randn(2, 4, 32, 32), torch.randn(2, 4, 8, 8)
    t = torch.tensor([1, 2])
    a_big = td.latent.activation_bytes(unet, lambda: unet(big, t))
    a_small = td.latent.activation_bytes(unet, lambda: unet(small, t))
    assert a_small > 0 and a_big / a_small > 10  # activations grow with the number of pixels (16x here)
    first = unet.inp(small)
    assert a_small > first.numel() * 4
    c = td.latent.cost(lambda: unet(small, t), repeats=2)
    assert c["seconds"] >= 0 and c["peak_bytes"] is None and c["clock"] == "CPU time"


def test_step_costs_and_text_to_image_sample():
    torch.manual_seed(0)
    ids, mask = TOK.encode(CAPS[:2])
    null = TOK.encode("")
    sched = td.NoiseSchedule.linear(20, 1e-3, 0.2)
    ae = td.models.KLAutoencoder(3, 4, f=4, base_channels=8)
    pix = td.latent.caption_unet(TOK.vocab_size, 3, base_channels=8, text_dim=16, text_layers=1)
    lat = td.latent.caption_unet(TOK.vocab_size, 4, base_channels=8, text_dim=16, text_layers=1)
    c_pix = td.latent.step_costs(pix, torch.randn(2, 3, 16, 16), ids, mask, sched, null=null, n_steps=3, repeats=1)
    c_lat = td.latent.step_costs(lat, torch.randn(2, 4, 4, 4), ids, mask, sched, null=null, n_steps=3, repeats=1,
                                 decoder=ae.decode)
    assert abs(c_pix["params"] - c_lat["params"]) < 0.01 * c_pix["params"]  # same network, only in/out convs differ
    assert c_lat["activation_bytes"] < c_pix["activation_bytes"] / 4
    assert all(c[k] > 0 for c in (c_pix, c_lat) for k in ("train_step_s", "sample_s"))
    x = td.latent.sample(lat, (2, 4, 4, 4), sched, 3, autoencoder=ae, ids=ids, mask=mask, scale=0.5, gamma=2.0,
                         null=null, generator=torch.Generator().manual_seed(0))
    assert x.shape == (2, 3, 16, 16) and x.abs().max() <= 1


def test_step_costs_measures_a_copy_and_builders_keep_the_callers_mode():
    """step_costs trains a deep copy: the caller's weights and train/eval mode are untouched (it used to train the
    caller's model and leave it in eval); eps_fn, encode, decode and cross_attention_maps restore the mode too."""
    torch.manual_seed(0)
    ids, mask = TOK.encode(CAPS[:2])
    null = TOK.encode("")
    sched = td.NoiseSchedule.linear(20, 1e-3, 0.2)
    lat = td.latent.caption_unet(TOK.vocab_size, 4, base_channels=8, text_dim=16, text_layers=1)
    ae = td.models.KLAutoencoder(3, 4, f=4, base_channels=8)
    before = {k: v.clone() for k, v in lat.state_dict().items()}
    for mode in (True, False):
        lat.train(mode)
        ae.train(mode)
        td.latent.step_costs(lat, torch.randn(2, 4, 4, 4), ids, mask, sched, null=null, n_steps=2, repeats=1)
        assert all(torch.equal(v, before[k]) for k, v in lat.state_dict().items())
        fn = td.latent.eps_fn(lat, ids, mask, gamma=1.0, null=null)
        fn(torch.randn(2, 4, 4, 4), torch.full((2,), 5))
        td.latent.decode(ae, td.latent.encode(ae, torch.rand(2, 3, 16, 16) * 2 - 1))
        td.latent.cross_attention_maps(lat, torch.randn(2, 4, 4, 4), torch.full((2,), 5), ids, mask)
        assert all(m.training == mode for m in lat.modules()) and all(m.training == mode for m in ae.modules())
