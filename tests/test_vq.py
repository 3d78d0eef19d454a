"""Lesson 07: vector quantisation, the straight-through estimator, the VQ loss, EMA codebooks, codebook health."""

import math

import pytest
import torch
from scipy.stats import entropy

import tinydiff as td
from tinydiff import vq


def _quantizer(K=16, dim=4, seed=0, cls=vq.VectorQuantizer, **kw):
    g = torch.Generator().manual_seed(seed)
    q = cls(K, dim, **kw)
    q.reset_codes(torch.arange(K), torch.randn(K, dim, generator=g))
    return q


def _z(shape=(3, 4, 5, 6), seed=1):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


# ----------------------------------------------------------------------------------- quantisation
def test_nearest_code_matches_brute_force_loop():
    z, e = _z((50, 3)), _z((7, 3), seed=2)
    brute = torch.tensor([min(range(7), key=lambda j: float(((zi - e[j]) ** 2).sum())) for zi in z])
    assert torch.equal(vq.nearest_code(z, e), brute)
    torch.testing.assert_close(vq.squared_distances(z, e), torch.cdist(z, e) ** 2, atol=1e-5, rtol=1e-5)


def test_quantizer_picks_nearest_codes_and_quantize_looks_them_up():
    q, z = _quantizer(), _z()
    out = q(z)
    flat = z.permute(0, 2, 3, 1).reshape(-1, 4)
    assert out.indices.shape == (3, 5, 6) and out.indices.dtype == torch.long
    assert torch.equal(out.indices.reshape(-1), torch.cdist(flat, q.codebook).argmin(1))
    assert out.z_q.shape == z.shape
    torch.testing.assert_close(out.z_q, q.quantize(out.indices))  # forward value = looked-up codes e_k
    torch.testing.assert_close(out.z_q[1, :, 2, 3], q.codebook[out.indices[1, 2, 3]])


def test_straight_through_gradient_at_z_e_equals_gradient_at_z_q():
    q, z = _quantizer(), _z().requires_grad_(True)
    w = _z(seed=3)
    out = q(z)
    loss = (w * out.z_q.sin()).sum()  # any downstream function of z_q
    loss.backward()
    zq = out.z_q.detach().requires_grad_(True)
    (grad_at_zq,) = torch.autograd.grad((w * zq.sin()).sum(), zq)
    torch.testing.assert_close(z.grad, grad_at_zq)
    assert z.grad.abs().sum() > 0


def test_straight_through_probe_separates_right_and_wrong_answers():
    z_e, z_q, w = _z((4, 3)), _z((4, 3), seed=2), _z((4, 3), seed=3)
    value, grad = vq.straight_through_probe(vq.straight_through, z_e, z_q, w)
    torch.testing.assert_close(value, z_q)
    torch.testing.assert_close(grad, w)
    value, grad = vq.straight_through_probe(lambda a, b: b, z_e, z_q, w)  # forgot the trick: no gradient
    assert torch.equal(grad, torch.zeros_like(w))


def test_quantizer_ignores_autocast():
    """Under bf16 autocast (td.train.fit's AMP) the distances would be rounded and the argmin pick wrong codes."""
    q, z = _quantizer(K=64, dim=8), 3 * _z((8, 8, 16, 16))
    ref = q(z)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        amp = q(z)
    assert torch.equal(amp.indices, ref.indices)
    torch.testing.assert_close(amp.loss, ref.loss)
    ema = [_quantizer(K=64, dim=8, cls=vq.EMAVectorQuantizer).train() for _ in range(2)]
    ema[0](z)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ema[1](z)
    torch.testing.assert_close(ema[1].codebook, ema[0].codebook)  # the EMA sums are not rounded to bf16 either


# ------------------------------------------------------------------------------------------ losses
def test_quantizer_loss_is_codebook_plus_beta_commitment():
    q, z = _quantizer(beta=0.4), _z()
    out = q(z)
    e = q.quantize(out.indices)
    mse = ((z - e) ** 2).mean()
    torch.testing.assert_close(out.loss, (1 + 0.4) * mse)


def test_beta_placement_same_value_different_gradients():
    """Paper: dL/de_k = -(2/n) sum_{i->k}(z_i - e_k), dL/dz_i = (2 beta/n)(z_i - e_k); swapped: beta moves over."""
    beta, z = 0.25, _z((20, 3))
    codebook = _z((5, 3), seed=2)
    k = vq.nearest_code(z, codebook)
    n = z.numel()
    diff = z - codebook[k]
    onehot = torch.nn.functional.one_hot(k, 5).float()
    grads = {}
    for placement in ("paper", "swapped"):
        zz, cb = z.clone().requires_grad_(True), codebook.clone().requires_grad_(True)
        loss = vq.vq_loss(zz, cb[k], beta, placement=placement)
        loss.backward()
        grads[placement] = (loss.detach(), zz.grad, cb.grad)
    torch.testing.assert_close(grads["paper"][0], grads["swapped"][0])  # the same number ...
    torch.testing.assert_close(grads["paper"][0], (1 + beta) * (diff ** 2).mean())
    torch.testing.assert_close(grads["paper"][1], 2 * beta / n * diff)  # ... but different gradients
    torch.testing.assert_close(grads["paper"][2], -2 / n * onehot.t() @ diff)
    torch.testing.assert_close(grads["swapped"][1], 2 / n * diff)
    torch.testing.assert_close(grads["swapped"][2], -2 * beta / n * onehot.t() @ diff)


def test_swapped_placement_is_paper_loss_with_inverse_beta_rescaled():
    """beta*||sg(z)-e||^2 + ||z-sg(e)||^2 = beta * (paper loss with commitment weight 1/beta): values and gradients."""
    z, codebook = _z((12, 3)), _z((4, 3), seed=2)
    k = vq.nearest_code(z, codebook)
    out = []
    for placement, beta, scale in (("swapped", 0.25, 1.0), ("paper", 4.0, 0.25)):
        zz, cb = z.clone().requires_grad_(True), codebook.clone().requires_grad_(True)
        loss = scale * vq.vq_loss(zz, cb[k], beta, placement=placement)
        loss.backward()
        out.append((loss.detach(), zz.grad, cb.grad))
    for a, b in zip(*out):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("legacy", [False, True])
def test_matches_diffusers_vector_quantizer(legacy):
    """diffusers' legacy=False puts beta on the commitment term (the paper); legacy=True on the codebook term."""
    from diffusers.models.autoencoders.vae import VectorQuantizer as DiffusersVQ

    ours, z = _quantizer(K=32, dim=4), _z()
    theirs = DiffusersVQ(32, 4, 0.25, legacy=legacy, sane_index_shape=True)
    with torch.no_grad():
        theirs.embedding.weight.copy_(ours.codebook)
    z1, z2 = z.clone().requires_grad_(True), z.clone().requires_grad_(True)
    w = _z(seed=3)
    out = ours(z1)
    zq, loss, (_, _, idx) = theirs(z2)
    assert torch.equal(out.indices, idx)
    torch.testing.assert_close(out.z_q, zq, atol=0, rtol=0)
    placement = "swapped" if legacy else "paper"
    ours_loss = vq.vq_loss(z1, ours.quantize(out.indices), 0.25, placement=placement)
    torch.testing.assert_close(out.loss if not legacy else ours_loss, loss)
    (ours_loss + (w * out.z_q).sum()).backward()
    (loss + (w * zq).sum()).backward()
    torch.testing.assert_close(z1.grad, z2.grad)
    torch.testing.assert_close(ours.codebook.grad, theirs.embedding.weight.grad)
    if legacy:  # and the legacy objective is not the paper's: its codebook gradient is beta times smaller
        paper = _quantizer(K=32, dim=4)
        paper(z.clone()).loss.backward()
        torch.testing.assert_close(theirs.embedding.weight.grad, 0.25 * paper.codebook.grad)


# ------------------------------------------------------------------------------------------ EMA
def _ema_oracle(N, m, z, k, decay, eps):
    """The update written out code by code."""
    K = N.shape[0]
    N, m = N.clone(), m.clone()
    for j in range(K):
        sel = z[k == j]
        N[j] = decay * N[j] + (1 - decay) * sel.shape[0]
        m[j] = decay * m[j] + (1 - decay) * sel.sum(0)
    n = N.sum()
    return N, m, torch.stack([m[j] / ((N[j] + eps) / (n + K * eps) * n) for j in range(K)])


def test_ema_codebook_step_matches_code_by_code_oracle():
    z, k = _z((40, 3)), torch.randint(0, 6, (40,), generator=torch.Generator().manual_seed(0))
    k[k == 5] = 4  # code 5 unused
    N, m = torch.rand(6, generator=torch.Generator().manual_seed(1)) + 0.5, _z((6, 3), seed=2)
    for got, want in zip(vq.ema_codebook_step(N, m, z, k, 0.9, 0.1), _ema_oracle(N, m, z, k, 0.9, 0.1)):
        torch.testing.assert_close(got, want)


def test_ema_with_decay_near_zero_moves_used_codes_to_cluster_means():
    q, z = _quantizer(K=8, dim=4, cls=vq.EMAVectorQuantizer, decay=1e-7), _z((2, 4, 6, 6))
    before = q.codebook.clone()
    q.train()
    out = q(z)
    flat, k = z.permute(0, 2, 3, 1).reshape(-1, 4), out.indices.reshape(-1)
    used = k.unique()
    means = torch.stack([flat[k == j].mean(0) for j in used])
    torch.testing.assert_close(q.codebook[used], means, atol=1e-4, rtol=1e-4)
    assert not torch.allclose(before[used], means, atol=1e-2)
    q.eval()
    after = q.codebook.clone()
    q(z)
    assert torch.equal(q.codebook, after)  # eval mode leaves the codebook alone


def test_ema_laplace_smoothing_keeps_unused_codes_finite():
    z = _z((1, 2, 4, 4)).abs() + 5.0  # everything lands on the code nearest to (5, 5)
    for eps, finite in ((1e-5, True), (0.0, False)):
        q = vq.EMAVectorQuantizer(4, 2, decay=0.5, eps=eps).train()
        q.reset_codes(torch.arange(4), torch.tensor([[5.0, 5.0], [-3.0, 0.0], [0.0, -3.0], [-3.0, -3.0]]))
        always_finite = True
        for _ in range(200):  # 0.5**200 underflows: N_k and m_k of the unused codes reach exactly 0
            q(z)
            always_finite &= bool(torch.isfinite(q.codebook).all())
        assert always_finite == finite


def test_ema_quantizer_loss_is_beta_commitment_and_codebook_is_not_a_parameter():
    q, z = _quantizer(cls=vq.EMAVectorQuantizer, beta=0.3), _z()
    q.eval()
    out = q(z)
    torch.testing.assert_close(out.loss, 0.3 * ((z - q.quantize(out.indices)) ** 2).mean())
    assert list(q.parameters()) == [] and q.codebook.shape == (16, 4)


# --------------------------------------------------------------------------------- codebook health
def test_code_usage_and_perplexity_against_scipy_entropy():
    k = torch.tensor([[0, 0, 3], [3, 3, 1]])
    counts = vq.code_usage(k, 5)
    assert counts.tolist() == [2, 1, 0, 3, 0]
    torch.testing.assert_close(vq.perplexity(counts), torch.tensor(math.exp(entropy(counts.numpy()))))
    torch.testing.assert_close(vq.perplexity(torch.full((7,), 4)), torch.tensor(7.0))
    torch.testing.assert_close(vq.perplexity(torch.tensor([0, 9, 0])), torch.tensor(1.0))
    assert vq.dead_codes(counts).tolist() == [2, 4]
    assert vq.dead_codes(counts, threshold=2).tolist() == [1, 2, 4]
    q, z = _quantizer(), _z()
    out = q(z)
    torch.testing.assert_close(out.perplexity, vq.perplexity(vq.code_usage(out.indices, 16)))


@pytest.mark.parametrize("cls", [vq.VectorQuantizer, vq.EMAVectorQuantizer])
def test_restart_dead_codes_revives_every_dead_code(cls):
    q, z = _quantizer(K=16, dim=4, cls=cls), _z((2, 4, 5, 5))
    with torch.no_grad():
        q.reset_codes(torch.arange(8, 16), torch.full((8, 4), 100.0))  # codes 8..15 far away: dead
    q.eval()
    dead_before = vq.dead_codes(vq.code_usage(q(z).indices, 16))
    assert set(range(8, 16)) <= set(dead_before.tolist())
    moved = vq.restart_dead_codes(q, z, generator=torch.Generator().manual_seed(0))
    assert torch.equal(moved.sort().values, dead_before)
    flat = z.permute(0, 2, 3, 1).reshape(-1, 4)
    assert all(bool((flat == q.codebook[j]).all(1).any()) for j in moved)  # each sits on an encoder output
    assert vq.dead_codes(vq.code_usage(q(z).indices, 16)).numel() == 0
    if cls is vq.EMAVectorQuantizer:
        torch.testing.assert_close(q.embed_sum[moved], q.codebook[moved])
        assert (q.cluster_size[moved] == 1).all()


def test_compression_bits():
    c = vq.compression((1, 8, 8), f=2, num_codes=64)  # 4x4 indices of 6 bits vs 64 pixels of 8 bits
    assert (c.latent_bits, c.raw_bits, c.ratio) == (96.0, 512.0, 512 / 96)
    c = vq.compression((3, 256, 256), f=8, num_codes=16384)  # a 32x32 map of 14-bit indices
    assert c.latent_bits == 32 * 32 * 14 and c.raw_bits == 3 * 256 * 256 * 8
    assert vq.index_bits((7, 7), 512) == 49 * 9


# --------------------------------------------------------------------------------------------- VQ-VAE
def test_vqvae_shapes_and_decode_indices_round_trip():
    td.seed_everything(0)
    m = vq.VQVAE(in_channels=3, hidden=16, dim=8, num_codes=32, levels=2).eval()
    x = _z((2, 3, 16, 16)).clamp(-1, 1)
    assert m.f == 4 and m.latent_shape((16, 16)) == (4, 4)
    x_hat, out = m(x)
    assert x_hat.shape == x.shape and out.indices.shape == (2, 4, 4) and out.z_q.shape == (2, 8, 4, 4)
    torch.testing.assert_close(m.decode_indices(out.indices), x_hat)
    torch.testing.assert_close(vq.vqvae_loss(m, x), ((x_hat - x) ** 2).mean() + out.loss)


def test_vqvae_learns_digits_with_restarts():
    x = td.data.load_digits(8, return_labels=False)[:512]
    td.seed_everything(0)
    m = vq.VQVAE(hidden=16, dim=4, num_codes=16, levels=1)
    loss_fn = vq.make_vqvae_loss(restart_every=20)
    td.train.fit(m, loss_fn, x, steps=60, batch_size=64, lr=3e-3, ema_decay=None, progress_bar=False, device="cpu")
    with torch.no_grad():
        x_hat, _ = m(x)
    assert ((x_hat - x) ** 2).mean() < 0.5 * x.var()
    assert len(loss_fn.restarts) == 3


# ------------------------------------------------------------------------------------------ bad input
def test_bad_inputs_raise_helpful_errors():
    q = vq.VectorQuantizer(8, 4)
    with pytest.raises(ValueError, match="dim = 4"):
        q(torch.zeros(2, 3, 5, 5))
    with pytest.raises(ValueError, match=r"\(B, dim, H, W\)"):
        q(torch.zeros(2, 4, 5))
    with pytest.raises(ValueError, match="num_codes"):
        vq.VectorQuantizer(0, 4)
    with pytest.raises(ValueError, match="dim"):
        vq.VectorQuantizer(8, 0)
    with pytest.raises(ValueError, match="beta"):
        vq.VectorQuantizer(8, 4, beta=-0.1)
    for decay in (0.0, 1.0, -0.5, 1.5):
        with pytest.raises(ValueError, match="decay"):
            vq.EMAVectorQuantizer(8, 4, decay=decay)
    with pytest.raises(ValueError, match="eps"):
        vq.EMAVectorQuantizer(8, 4, eps=-1.0)
    with pytest.raises(ValueError, match="0..7"):
        q.quantize(torch.full((1, 2, 2), 8))
    with pytest.raises(ValueError, match="integer"):
        vq.code_usage(torch.zeros(3), 8)
    with pytest.raises(ValueError, match="placement"):
        vq.vq_loss(torch.zeros(2, 4), torch.zeros(2, 4), placement="legacy")
    with pytest.raises(ValueError, match="one count per code"):
        vq.restart_dead_codes(q, torch.zeros(1, 4, 2, 2), torch.zeros(5))
    with pytest.raises(ValueError, match="divisible by the downsampling factor"):
        vq.compression((1, 9, 9), f=2, num_codes=8)
    with pytest.raises(ValueError, match="all zero"):
        vq.perplexity(torch.zeros(4))


@pytest.mark.parametrize("call, match", [
    (lambda: td.vq.raw_bits((1, 8, 8), "3"), "bits_per_value must be an int"),
    (lambda: td.vq.raw_bits(None), "image_shape must be a tuple of positive ints"),
    (lambda: td.vq.compression((1, 8, 8), 2.5, 8), "f must be an int"),
    (lambda: td.vq.index_bits((4, 4), 0), "num_codes must be >= 1"),
    (lambda: td.vq.vq_loss(torch.zeros(2, 4), torch.zeros(2, 4), placement="legacy"), "placement must be one of"),
    (lambda: td.vq.vq_loss(torch.zeros(2, 4), torch.zeros(3, 4)), "z_e and e must have the same shape"),
    (lambda: td.vq.nearest_code(torch.zeros(2, 4), [[0.0] * 4]), "codebook must be a torch.Tensor"),
    (lambda: td.vq.VectorQuantizer(8, 4)(torch.zeros(2, 4, 2, 2) > 0), "z_e must hold numbers, not booleans"),
    (lambda: td.vq.VectorQuantizer(8, 4)(torch.zeros(0, 4, 2, 2)), "z_e must hold at least 1 sample"),
    (lambda: td.vq.VectorQuantizer(8, 4).reset_codes(torch.tensor([0, 9]), torch.zeros(2, 4)),
     "which must hold code indices in 0..7"),
    (lambda: td.vq.VectorQuantizer(8, 4).reset_codes(torch.tensor([0, 1]), torch.zeros(3, 4)), "vectors must have shape"),
    (lambda: td.vq.EMAVectorQuantizer(8, 4, decay="0.9"), "decay must be a real number"),
    (lambda: td.vq.VQVAE(levels=1.5), "levels must be an int"),
    (lambda: td.vq.make_vqvae_loss(seed=float("nan")), "seed must be an int"),
    (lambda: td.vq.vqvae_loss(td.vq.VQVAE(hidden=8, dim=4), torch.zeros(4)), "batch must be images"),
    (lambda: td.vq.straight_through_probe(lambda a, b: None, torch.zeros(2, 3), torch.zeros(2, 3), torch.ones(2, 3)),
     "fn returned None"),
])
def test_vq_refuses_bad_arguments_by_name(call, match):
    with pytest.raises((ValueError, TypeError), match=match):
        call()


def test_vqvae_runs_half_precision_batches_and_refuses_empty_ones():
    model = td.vq.VQVAE(hidden=8, dim=4, num_codes=8)
    x_hat, vq = model(torch.zeros(2, 1, 8, 8).half())
    assert x_hat.dtype == torch.float32 and torch.isfinite(vq.perplexity)
    with pytest.raises(ValueError, match="x must hold at least 1 sample"):
        model(torch.zeros(0, 1, 8, 8))  # its perplexity would be NaN
