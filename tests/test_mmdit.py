"""MM-DiT (lesson 09): the joint-attention block against its formula and against diffusers' JointTransformerBlock
(random weights, ported from ours), identity at initialisation, and the small caption-conditional model."""

import math

import pytest
import torch

import tinydiff as td
from tinydiff.models import mmdit as MM


def _random_weights(module, std=0.1, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * std)
    return module


def _streams(B=3, N=16, M=5, D=32, seed=1):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(B, N, D, generator=g, dtype=torch.float64), torch.randn(B, M, D, generator=g, dtype=torch.float64),
            torch.randn(B, D, generator=g, dtype=torch.float64))


def test_rms_norm_formula_and_torch():
    x = torch.randn(4, 6, 10, dtype=torch.float64) * 3
    w = torch.randn(10, dtype=torch.float64)
    want = x / torch.sqrt((x ** 2).mean(-1, keepdim=True) + 1e-6) * w
    torch.testing.assert_close(MM.rms_norm(x, w), want, atol=1e-12, rtol=0)
    ref = torch.nn.RMSNorm(10, eps=1e-6).double()
    with torch.no_grad():
        ref.weight.copy_(w)
    torch.testing.assert_close(MM.rms_norm(x, w), ref(x), atol=1e-12, rtol=0)


@pytest.mark.parametrize("qk_norm", [False, True])
def test_joint_attention_is_one_softmax_over_the_concatenated_sequence(qk_norm):
    a = _random_weights(MM.JointAttention(32, 4, qk_norm=qk_norm)).double()
    x, c, _ = _streams()
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]], dtype=torch.bool)
    out_x, out_c = a(x, c, mask)
    # by hand: project each stream with its own weights, one softmax over all N + M keys, padding masked
    qx, kx, vx = a.qkv_x(x).chunk(3, -1)
    qc, kc, vc = a.qkv_c(c).chunk(3, -1)
    heads = []
    for h in range(4):
        s = slice(8 * h, 8 * (h + 1))
        q, k = torch.cat([qx[..., s], qc[..., s]], 1), torch.cat([kx[..., s], kc[..., s]], 1)
        if qk_norm:
            q = torch.cat([MM.rms_norm(qx[..., s], a.norm_q_x.weight), MM.rms_norm(qc[..., s], a.norm_q_c.weight)], 1)
            k = torch.cat([MM.rms_norm(kx[..., s], a.norm_k_x.weight), MM.rms_norm(kc[..., s], a.norm_k_c.weight)], 1)
        v = torch.cat([vx[..., s], vc[..., s]], 1)
        logits = q @ k.transpose(1, 2) / math.sqrt(8)
        keep = torch.cat([torch.ones(3, 16, dtype=torch.bool), mask], 1)
        heads.append(logits.masked_fill(~keep[:, None, :], float("-inf")).softmax(-1) @ v)
    joint = torch.cat(heads, -1)
    torch.testing.assert_close(out_x, a.proj_x(joint[:, :16]), atol=1e-12, rtol=0)
    torch.testing.assert_close(out_c, a.proj_c(joint[:, 16:]), atol=1e-12, rtol=0)


@pytest.mark.parametrize("context_pre_only,qk_norm", [(False, False), (False, True), (True, True)])
def test_joint_block_matches_diffusers_joint_transformer_block(context_pre_only, qk_norm):
    blk = _random_weights(MM.JointBlock(32, 4, qk_norm=qk_norm, context_pre_only=context_pre_only)).double()
    ref = MM.joint_block_to_diffusers(blk)
    x, c, vec = _streams()
    with torch.no_grad():
        ox, oc = blk(x, c, vec)
        rc, rx = ref(hidden_states=x, encoder_hidden_states=c, temb=vec)
    # float64 throughout, except that diffusers' RMSNorm takes the mean of q^2 in float32 (relative error ~6e-8
    # on the normalised q and k): hence 1e-7 with QK-norm and 1e-10 without
    atol = 1e-7 if qk_norm else 1e-10
    torch.testing.assert_close(rx, ox, atol=atol, rtol=0)
    if context_pre_only:
        assert oc is None and rc is None
    else:
        torch.testing.assert_close(rc, oc, atol=atol, rtol=0)
    assert (ox - x).abs().max() > 1e-2  # random weights: the block does something


def test_mmdit_is_the_identity_per_block_and_outputs_zero_at_init():
    tok = td.data.shapes.Tokenizer(max_len=8)
    m = MM.MMDiT(input_size=8, patch_size=2, in_channels=4, hidden_size=32, depth=3, heads=4, vocab_size=tok.vocab_size)
    ids, mask = tok.encode(["a red circle top left", "a blue square bottom right", ""])
    x = torch.randn(3, 4, 8, 8)
    changes = []
    hooks = [b.register_forward_hook(lambda mod, inp, out: changes.append(
        max(float((out[0] - inp[0]).abs().max()), 0.0 if out[1] is None else float((out[1] - inp[1]).abs().max()))))
        for b in m.blocks]
    with torch.no_grad():
        out = m(x, torch.tensor([1, 500, 999]), ids, mask)
    for hk in hooks:
        hk.remove()
    assert changes == [0.0, 0.0, 0.0] and torch.equal(out, torch.zeros_like(out))
    assert m.blocks[-1].context_pre_only and not m.blocks[0].context_pre_only


def test_padding_tokens_do_not_change_the_output_and_captions_do():
    tok = td.data.shapes.Tokenizer(max_len=8)
    m = _random_weights(MM.MMDiT(input_size=8, patch_size=2, in_channels=4, hidden_size=32, depth=2, heads=4,
                                 vocab_size=tok.vocab_size), std=0.05).eval()
    ids, mask = tok.encode(["a red circle top left", "a blue square bottom right"])
    x, t = torch.randn(2, 4, 8, 8), torch.tensor([10, 600])
    other = ids.clone()
    other[~mask] = tok.index["blue"]
    with torch.no_grad():
        out = m(x, t, ids, mask)
        torch.testing.assert_close(m(x, t, other, mask), out, atol=1e-6, rtol=0)
        assert (m(x, t, ids.flip(0), mask.flip(0)) - out).abs().max() > 1e-4


def test_mmdit_trains_with_the_latent_loss_and_samples_with_guidance():
    tok = td.data.shapes.Tokenizer(max_len=8)
    sched = td.NoiseSchedule.linear(T=100)
    data = td.data.shapes.make_shapes(16, 16, seed=0)
    ids, mask = tok.encode(data.captions)
    m = MM.MMDiT(input_size=16, patch_size=4, in_channels=3, hidden_size=32, depth=2, heads=4,
                 vocab_size=tok.vocab_size)
    null = tok.encode("")
    res = td.train.fit(m, lambda mod, b: td.latent.loss(mod, b, sched, p_uncond=0.2, null=null),
                       (data.images, ids, mask), steps=3, batch_size=8, progress_bar=False, device="cpu")
    assert len(res.losses) == 3
    fn = MM.eps_fn(res.sampler_model, ids[:4], mask[:4], gamma=2.0, null=null)
    out = td.ddim.sample(fn, (4, 3, 16, 16), sched, 4, generator=torch.Generator().manual_seed(0))
    assert out.shape == (4, 3, 16, 16) and torch.isfinite(out).all()
    with pytest.raises(ValueError, match="null"):
        MM.eps_fn(res.sampler_model, ids[:4], mask[:4], gamma=2.0)
    with pytest.raises(ValueError, match="ids and mask"):
        m(torch.randn(2, 3, 16, 16), torch.tensor([1, 2]), ids[:3], mask[:3])
    with pytest.raises(ValueError, match="divisible"):
        MM.MMDiT(input_size=10, patch_size=4, vocab_size=5)


def test_mmdit_guided_eps_fn_is_cfg_of_two_calls():
    tok = td.data.shapes.Tokenizer(max_len=8)
    m = _random_weights(MM.MMDiT(input_size=8, patch_size=2, in_channels=3, hidden_size=32, depth=2, heads=4,
                                 vocab_size=tok.vocab_size), std=0.05).eval()
    ids, mask = tok.encode(["a red circle top left", "a green square top right"])
    null = tok.encode("")
    x, t = torch.randn(2, 3, 8, 8), torch.tensor([100, 700])
    with torch.no_grad():
        cond = m(x, t, ids, mask)
        uncond = m(x, t, null[0].expand_as(ids), null[1].expand_as(mask))
    guided = MM.eps_fn(m, ids, mask, gamma=1.5, null=null)(x, t)
    torch.testing.assert_close(guided, 2.5 * cond - 1.5 * uncond, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(MM.eps_fn(m, ids, mask)(x, t), cond, atol=1e-6, rtol=0)
