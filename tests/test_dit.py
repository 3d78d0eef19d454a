"""DiT (lesson 09): patches, positions, adaLN, the zero initialisation, the four conditioning variants, and
agreement with diffusers' DiTTransformer2DModel (random weights, ported from ours)."""

import numpy as np
import pytest
import torch

import tinydiff as td
from tinydiff.models import dit as D


def _random_weights(model, std=0.1, seed=0):
    """Overwrite every parameter with noise, so that no check passes because something happens to be zero."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * std)
    return model


def _inputs(B=5, C=1, size=8, seed=1, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, C, size, size, generator=g, dtype=dtype)
    t = torch.tensor([0, 10, 500, 999, 3][:B])
    y = torch.tensor([0, 3, 9, 10, 2][:B])  # 10 is the null label
    return x, t, y


# ------------------------------------------------------------------------------------------ patches
def test_patchify_unpatchify_are_inverse_and_token_order_is_row_major():
    x = torch.randn(3, 2, 8, 12)
    for p in (1, 2, 4):
        tok = D.patchify(x, p)
        assert tok.shape == (3, (8 // p) * (12 // p), p * p * 2)
        torch.testing.assert_close(D.unpatchify(tok, p, 8 // p, 12 // p), x, atol=0, rtol=0)
        z = torch.randn_like(tok)
        torch.testing.assert_close(D.patchify(D.unpatchify(z, p, 8 // p, 12 // p), p), z, atol=0, rtol=0)
    # token n = i*(W/p) + j holds patch (i, j), its numbers ordered (row in patch, column in patch, channel)
    p, w = 2, 6
    tok = D.patchify(x, p)
    for i, j in [(0, 0), (0, 5), (2, 1), (3, 5)]:
        patch = x[:, :, i * p:(i + 1) * p, j * p:(j + 1) * p]  # (B, C, p, q)
        torch.testing.assert_close(tok[:, i * w + j], patch.permute(0, 2, 3, 1).reshape(3, -1), atol=0, rtol=0)
    with pytest.raises(ValueError, match="divisible by the patch size"):
        D.patchify(x, 5)
    with pytest.raises(ValueError, match="tokens"):
        D.unpatchify(tok, p, 5)


def test_patch_embedding_conv_is_a_linear_map_of_each_patch():
    m = _random_weights(D.DiT(input_size=8, patch_size=2, in_channels=3, hidden_size=16, depth=1, heads=2)).double()
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    conv = m.x_embedder(x).flatten(2).transpose(1, 2)
    W = m.x_embedder.weight.permute(0, 2, 3, 1).reshape(16, -1)  # (D, p, q, C) to match patchify's layout
    torch.testing.assert_close(conv, D.patchify(x, 2) @ W.T + m.x_embedder.bias, atol=1e-12, rtol=0)


def test_pos_embed_2d_matches_mae_and_diffusers_conventions():
    from diffusers.models.embeddings import get_2d_sincos_pos_embed

    dim, h = 16, 4
    pe = D.pos_embed_2d(dim, h)
    ref = get_2d_sincos_pos_embed(dim, h, base_size=h)  # base_size = grid size: positions 0..h-1
    torch.testing.assert_close(pe, ref.double(), atol=1e-12, rtol=0)

    # MAE's numpy code (the convention DiT copies), written out: grid = meshgrid(grid_w, grid_h), and its
    # "emb_h" is computed from grid[0] (the column index)
    def one_d(d, pos):
        omega = 1.0 / 10000 ** (np.arange(d // 2, dtype=np.float64) / (d / 2.0))
        out = np.einsum("m,d->md", pos.reshape(-1), omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    grid = np.stack(np.meshgrid(np.arange(h, dtype=np.float64), np.arange(h, dtype=np.float64)), 0)
    mae = np.concatenate([one_d(dim // 2, grid[0]), one_d(dim // 2, grid[1])], axis=1)
    torch.testing.assert_close(pe, torch.from_numpy(mae), atol=1e-12, rtol=0)
    # first half: the column only; second half: the row only
    rows, cols = torch.arange(h * h) // h, torch.arange(h * h) % h
    assert torch.equal(pe[cols == 1, : dim // 2], pe[cols == 1, : dim // 2][:1].expand(h, -1))
    assert torch.equal(pe[rows == 2, dim // 2:], pe[rows == 2, dim // 2:][:1].expand(h, -1))
    with pytest.raises(ValueError, match="divisible by 4"):
        D.pos_embed_2d(6, 2)


# ------------------------------------------------------------------------------------------ adaLN
def test_adaln_formula_equals_layernorm_without_affine_plus_modulation():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(4, 7, 12, generator=g, dtype=torch.float64) * 3 + 1
    shift, scale = torch.randn(4, 12, generator=g, dtype=torch.float64), torch.randn(4, 12, generator=g, dtype=torch.float64)
    mean = x.mean(-1, keepdim=True)
    var = ((x - mean) ** 2).mean(-1, keepdim=True)  # biased variance, as LayerNorm
    by_formula = (x - mean) / torch.sqrt(var + 1e-6) * (1 + scale[:, None]) + shift[:, None]
    torch.testing.assert_close(D.adaln(x, shift, scale), by_formula, atol=1e-12, rtol=0)
    ln = torch.nn.LayerNorm(12, elementwise_affine=False, eps=1e-6)
    torch.testing.assert_close(D.modulate(ln(x), shift, scale), by_formula, atol=1e-12, rtol=0)
    torch.testing.assert_close(D.modulate(x, torch.zeros_like(shift), torch.zeros_like(scale)), x, atol=0, rtol=0)


def test_dit_block_equals_its_equations():
    blk = _random_weights(D.DiTBlock(32, 4, cond="adaln_zero"), std=0.2).double()
    g = torch.Generator().manual_seed(5)
    x, c = torch.randn(3, 16, 32, generator=g, dtype=torch.float64), torch.randn(3, 32, generator=g, dtype=torch.float64)
    mod = torch.nn.functional.silu(c) @ blk.adaLN_modulation[1].weight.T + blk.adaLN_modulation[1].bias
    b1, g1, a1, b2, g2, a2 = mod.chunk(6, dim=1)
    h = x + a1[:, None] * blk.attn(D.adaln(x, b1, g1))
    h = h + a2[:, None] * blk.mlp(D.adaln(h, b2, g2))
    torch.testing.assert_close(blk(x, c), h, atol=1e-12, rtol=0)
    # the attention inside is softmax(QK^T / sqrt(d)) V over the heads
    z = torch.randn(2, 5, 32, generator=g, dtype=torch.float64)
    q, k, v = blk.attn.qkv(z).chunk(3, -1)
    heads = [(q[..., 8 * i:8 * i + 8] @ k[..., 8 * i:8 * i + 8].transpose(1, 2) / 8 ** 0.5).softmax(-1)
             @ v[..., 8 * i:8 * i + 8] for i in range(4)]
    torch.testing.assert_close(blk.attn(z), blk.attn.proj(torch.cat(heads, -1)), atol=1e-12, rtol=0)


# ------------------------------------------------------------------------------------------ initialisation
@pytest.mark.parametrize("cond", D.CONDITIONING)
def test_output_is_exactly_zero_at_init(cond):
    m = D.DiT(input_size=8, patch_size=2, hidden_size=32, depth=2, heads=4, cond=cond)
    x, t, y = _inputs(dtype=torch.float32)
    out = m(x, t, y)
    assert out.shape == x.shape
    assert torch.equal(out, torch.zeros_like(out))


def test_every_adaln_zero_block_is_the_identity_at_init_and_the_others_are_not():
    x, t, y = _inputs(dtype=torch.float32)
    for cond in D.CONDITIONING:
        m = D.DiT(input_size=8, patch_size=2, hidden_size=32, depth=3, heads=4, cond=cond)
        changes = []
        hooks = [b.register_forward_hook(lambda mod, inp, out, changes=changes: changes.append(
                 float((out - inp[0]).abs().max()))) for b in m.blocks]
        with torch.no_grad():
            m(x, t, y)
        for hk in hooks:
            hk.remove()
        if cond == "adaln_zero":
            assert changes == [0.0, 0.0, 0.0]
        else:
            assert min(changes) > 1e-3


def test_zero_init_still_learns_the_final_layer_gets_a_gradient_first():
    m = D.DiT(input_size=8, patch_size=2, hidden_size=32, depth=2, heads=4, cond="adaln_zero")
    x, t, y = _inputs(dtype=torch.float32)
    target = torch.randn_like(x)
    ((m(x, t, y) - target) ** 2).mean().backward()
    grads = {n: p.grad.abs().max().item() if p.grad is not None else 0.0 for n, p in m.named_parameters()}
    assert grads["final_layer.linear.weight"] > 1e-4 and grads["final_layer.linear.bias"] > 1e-4
    others = [v for n, v in grads.items() if not n.startswith("final_layer.linear")]
    assert max(others) == 0.0  # everything behind the zero output layer waits for it to move
    torch.optim.SGD(m.parameters(), lr=0.1).step()
    m.zero_grad()
    ((m(x, t, y) - target) ** 2).mean().backward()
    gate_grad = max(b.adaLN_modulation[1].weight.grad.abs().max().item() for b in m.blocks)
    assert gate_grad > 1e-6  # after one step the gates (and through them every block) receive gradient


# ------------------------------------------------------------------------------------------ diffusers
def test_port_into_diffusers_dit_matches_outputs():
    m = _random_weights(D.DiT(input_size=8, patch_size=2, in_channels=2, hidden_size=32, depth=2, heads=4,
                              num_classes=10, learn_sigma=True), std=0.1).double()
    x, t, y = _inputs(C=2)
    ref = D.dit_to_diffusers(m)
    with torch.no_grad():
        ours = torch.cat(m(x, t, y, return_sigma=True), dim=1)
        theirs = ref(x, timestep=t, class_labels=y).sample
        torch.testing.assert_close(theirs, ours, atol=1e-10, rtol=0)
        off = D.dit_to_diffusers(m, match_paper=False)
        assert (off(x, timestep=t, class_labels=y).sample - ours).abs().max() > 1e-4  # the defaults are not the paper


def test_diffusers_differs_from_the_paper_in_the_timestep_frequencies_and_mlp_norm_eps():
    from diffusers.models.embeddings import get_timestep_embedding

    t = torch.tensor([0, 1, 10, 999])
    paper = td.models.timestep_embedding(t, 256)
    torch.testing.assert_close(get_timestep_embedding(t, 256, flip_sin_to_cos=True, downscale_freq_shift=0), paper,
                               atol=1e-6, rtol=0)
    assert (get_timestep_embedding(t, 256, flip_sin_to_cos=True, downscale_freq_shift=1) - paper).abs().max() > 0.1
    ref = D.dit_to_diffusers(D.DiT(input_size=4, patch_size=2, hidden_size=16, depth=1, heads=2), match_paper=False)
    assert ref.transformer_blocks[0].norm3.eps == 1e-5
    assert ref.transformer_blocks[0].norm1.emb.time_proj.downscale_freq_shift == 1
    with pytest.raises(ValueError, match="adaLN-Zero"):
        D.dit_to_diffusers(D.DiT(input_size=4, patch_size=2, hidden_size=16, depth=1, heads=2, cond="adaln"))


# ------------------------------------------------------------------------------------------ a denoiser
def test_dit_is_a_denoiser_for_samplers_guidance_and_fit():
    sched = td.NoiseSchedule.linear(T=100)
    m = D.DiT.from_preset("tiny/2", input_size=8, num_classes=10)
    assert (m.depth, m.hidden_size, m.heads, m.patch_size) == (4, 64, 4, 2)
    x0 = torch.randn(16, 1, 8, 8).clamp(-1, 1)
    labels = torch.randint(0, 10, (16,))
    res = td.train.fit(m, lambda mod, b: td.guidance.cfg_loss(mod, b[0], b[1], sched, p_uncond=0.2), (x0, labels),
                       steps=3, batch_size=8, progress_bar=False, device="cpu")
    assert len(res.losses) == 3 and all(np.isfinite(res.losses))
    eps_fn = td.guidance.cfg_eps_fn(res.sampler_model, torch.arange(4), 2.0)
    out = td.ddim.sample(eps_fn, (4, 1, 8, 8), sched, 5, generator=torch.Generator().manual_seed(0))
    assert out.shape == (4, 1, 8, 8) and torch.isfinite(out).all()
    torch.testing.assert_close(m(x0[:3], 5), m(x0[:3], torch.full((3,), 5)))  # a scalar t is broadcast
    torch.testing.assert_close(m(x0[:3], 5), m(x0[:3], 5, torch.full((3,), 10)))  # y=None is the null label


def test_learned_sigma_channels_and_predictions():
    m = D.DiT(input_size=8, patch_size=4, in_channels=3, hidden_size=16, depth=1, heads=2, learn_sigma=True,
              prediction="v")
    x = torch.randn(2, 3, 8, 8)
    pred, var = m(x, torch.tensor([1, 2]), return_sigma=True)
    assert pred.shape == var.shape == x.shape and m.out_channels == 6 and m.prediction == "v"
    assert m(x, torch.tensor([1, 2])).shape == x.shape


def test_bad_inputs_raise_value_errors_naming_the_argument():
    with pytest.raises(ValueError, match="cond must be one of"):
        D.DiT(cond="film")
    with pytest.raises(ValueError, match="prediction"):
        D.DiT(prediction="score")
    with pytest.raises(ValueError, match="divisible by patch_size"):
        D.DiT(input_size=8, patch_size=3)
    with pytest.raises(ValueError, match="size in"):
        D.DiT.from_preset("XXL/2")
    m = D.DiT(input_size=8, patch_size=2, hidden_size=16, depth=1, heads=2)
    with pytest.raises(ValueError, match=r"x must have shape \(B, 1, 8, 8\)"):
        m(torch.randn(2, 1, 16, 16), torch.tensor([1, 2]))
    with pytest.raises(ValueError, match="t must have shape"):
        m(torch.randn(2, 1, 8, 8), torch.tensor([1, 2, 3]))
    with pytest.raises(ValueError, match="y must be"):
        m(torch.randn(2, 1, 8, 8), torch.tensor([1, 2]), torch.tensor([0, 11]))
    with pytest.raises(ValueError, match="no labels"):
        D.DiT(input_size=8, patch_size=2, hidden_size=16, depth=1, heads=2, num_classes=None)(
            torch.randn(2, 1, 8, 8), torch.tensor([1, 2]), torch.tensor([0, 1]))


# ------------------------------------------------------------------------------------------ cost
@pytest.mark.parametrize("cond", D.CONDITIONING)
def test_param_count_and_flops_match_the_module_and_torch_flop_counter(cond):
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    m = D.DiT(input_size=8, patch_size=2, hidden_size=32, depth=2, heads=4, cond=cond, learn_sigma=True)
    assert D.param_count(m) == sum(p.numel() for p in m.parameters())
    x, t, y = _inputs(B=3, dtype=torch.float32)
    # the math backend spells attention as two bmm's, which the counter sees (the fused CPU kernel it skips)
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        m(x, t, y)
    assert counter.get_total_flops() == 3 * D.flops(m)


def test_dit_xl2_costs_what_the_paper_says():
    with torch.device("meta"):  # no memory, no arithmetic: shapes only
        m = D.DiT.from_preset("XL/2", input_size=32, in_channels=4, num_classes=1000, learn_sigma=True)
    assert round(D.flops(m) / 2e9, 1) == 118.6  # DiT Table 4 counts multiply-adds
    assert round(D.param_count(m) / 1e6) == 675


def test_dit_trains_under_bf16_autocast_and_on_latents():
    # the autocast path that fit takes on CUDA, exercised on the CPU; and lesson 08's 4-channel latents
    sched = td.NoiseSchedule.linear(T=100)
    m = D.DiT(input_size=8, patch_size=2, in_channels=4, hidden_size=32, depth=2, heads=4, num_classes=None)
    z0 = torch.randn(16, 4, 8, 8)
    res = td.train.fit(m, lambda mod, b: td.ddpm.loss(mod, b, sched), z0, steps=3, batch_size=8, amp=True,
                       progress_bar=False, device="cpu")
    assert all(np.isfinite(res.losses))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = m(z0[:2], torch.tensor([3, 50]))
    assert out.dtype == torch.bfloat16 and out.shape == (2, 4, 8, 8)


def test_a_v_predicting_dit_plugs_into_the_denoiser_interface():
    sched = td.NoiseSchedule.linear(T=100)
    m = _random_weights(D.DiT(input_size=8, patch_size=2, hidden_size=16, depth=1, heads=2, prediction="v"), std=0.05)
    den = td.denoisers.Denoiser(lambda x, t: m(x, t, torch.full((x.shape[0],), 3)), td.denoisers.DiscreteVP(sched),
                                m.prediction)
    x, t = torch.randn(4, 1, 8, 8), torch.tensor([5, 20, 50, 90])
    ab = sched.alpha_bar[t].float().view(-1, 1, 1, 1)
    v = m(x, t, torch.full((4,), 3))
    # eps from v: eps = sqrt(ab) v + sqrt(1 - ab) x_t  (x_t = sqrt(ab) x0 + sqrt(1-ab) eps, v = sqrt(ab) eps - sqrt(1-ab) x0)
    torch.testing.assert_close(den.eps(x, t), ab.sqrt() * v + (1 - ab).sqrt() * x, atol=1e-5, rtol=1e-5)
    out = td.ddim.sample(den, (4, 1, 8, 8), sched, 5, generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(out).all()


def test_bad_arguments_are_refused_by_name():
    from tinydiff.models import dit, mmdit

    with pytest.raises(ValueError, match="heads must lie in 1"):
        dit.Attention(8, 0)
    with pytest.raises(ValueError, match="mlp_ratio must be > 0"):
        dit.DiTBlock(8, 2, mlp_ratio=-1.0)
    with pytest.raises(ValueError, match="depth must be an int"):
        dit.DiT(depth=2.5)
    with pytest.raises(ValueError, match="shift must have shape"):
        dit.modulate(torch.zeros(2, 3, 4), torch.zeros(3, 4), torch.zeros(2, 4))
    with pytest.raises(ValueError, match="eps must be >= 0"):
        dit.adaln(torch.zeros(2, 3, 4), torch.zeros(2, 4), torch.zeros(2, 4), eps=-1.0)
    with pytest.raises(ValueError, match="h must be an int"):
        dit.pos_embed_2d(8, 2.5)
    model = dit.DiT(input_size=4, patch_size=2, hidden_size=8, depth=1, heads=2, num_classes=3)
    with pytest.raises(ValueError, match="x must be a floating tensor of the model's dtype"):
        model(torch.zeros(2, 1, 4, 4, dtype=torch.float16), torch.ones(2, dtype=torch.long))
    with pytest.raises(TypeError, match="t must be timesteps"):
        model(torch.zeros(2, 1, 4, 4), None)
    with pytest.raises(ValueError, match="weight must be None or a tensor of shape"):
        mmdit.rms_norm(torch.zeros(2, 4), torch.ones(3))
    with pytest.raises(ValueError, match="text_layers must"):
        mmdit.MMDiT(vocab_size=10, text_layers=0)
