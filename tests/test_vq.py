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


# ------------------------------------------------------------------------- the learned prior over the codes
# The oracle: index maps whose raster sequence k_1, ..., k_9 is a first-order Markov chain with a known start
# distribution and transition matrix. Its entropy is closed-form,
#   H(k) = H(pi0) + sum_{i=1}^{N-1} sum_a p_i(a) H(P[a, :]),   p_i = pi0 P^(i-1),
# and so are its marginals p_i and its pair probabilities p(k_i = a, k_{i+1} = b) = p_i(a) P[a, b].
CHAIN_K, CHAIN_HW = 4, (3, 3)
CHAIN_N = CHAIN_HW[0] * CHAIN_HW[1]
CHAIN_P = torch.tensor([[0.70, 0.10, 0.10, 0.10],
                        [0.05, 0.15, 0.75, 0.05],
                        [0.10, 0.05, 0.05, 0.80],
                        [0.60, 0.20, 0.10, 0.10]], dtype=torch.float64)
CHAIN_PI0 = torch.tensor([0.4, 0.3, 0.2, 0.1], dtype=torch.float64)


def _chain_marginals():
    marg = [CHAIN_PI0]
    for _ in range(CHAIN_N - 1):
        marg.append(marg[-1] @ CHAIN_P)
    return marg


def _row_entropy(p):
    return -torch.special.xlogy(p, p).sum(-1)


def _chain_entropy_rate():
    """Exact H(k) / N in nats per code."""
    marg = _chain_marginals()
    h = _row_entropy(CHAIN_PI0) + sum((marg[i] * _row_entropy(CHAIN_P)).sum() for i in range(CHAIN_N - 1))
    return float(h) / CHAIN_N


def _chain_sample(n, seed):
    gen = torch.Generator().manual_seed(seed)
    k = torch.empty(n, CHAIN_N, dtype=torch.long)
    k[:, 0] = torch.multinomial(CHAIN_PI0, n, replacement=True, generator=gen)
    for i in range(1, CHAIN_N):
        k[:, i] = torch.multinomial(CHAIN_P[k[:, i - 1]], 1, generator=gen)[:, 0]
    return k.reshape(n, *CHAIN_HW)


def _chain_log_prob(indices):
    k = indices.reshape(indices.shape[0], -1)
    lp = CHAIN_PI0.log()[k[:, 0]]
    for i in range(1, CHAIN_N):
        lp = lp + CHAIN_P.log()[k[:, i - 1], k[:, i]]
    return lp


def _chain_pvalues(samples):
    """Chi-square p-values of the first code's frequencies against pi0 and of each neighbour pair (k_i, k_{i+1})'s
    16 frequencies against p_i(a) P[a, b]. Each test uses one value (or pair) per sample, so its counts are
    multinomial; the 9 tests share samples, so they are combined by Bonferroni (min p against alpha / 9)."""
    from scipy.stats import chisquare

    k, M, marg = samples.reshape(samples.shape[0], -1), samples.shape[0], _chain_marginals()
    out = [chisquare(torch.bincount(k[:, 0], minlength=CHAIN_K).double().numpy(), (M * CHAIN_PI0).numpy()).pvalue]
    for i in range(CHAIN_N - 1):
        observed = torch.bincount(k[:, i] * CHAIN_K + k[:, i + 1], minlength=CHAIN_K**2).double()
        expected = (marg[i][:, None] * CHAIN_P).reshape(-1) * M
        out.append(chisquare(observed.numpy(), expected.numpy()).pvalue)
    return out


CHAIN_ALPHA = 0.01 / CHAIN_N  # family-wise level 1 % over the 9 tests


@pytest.fixture(scope="module")
def chain_prior():
    """A CodePrior trained on 20,000 chain maps (its EMA weights: the pair test below sees a KL of 0.001 per code)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny model: on a busy 2-core machine two threads spend their time waiting
    try:
        torch.manual_seed(0)
        prior = vq.CodePrior(CHAIN_K, CHAIN_HW, dim=32, layers=2, heads=2, dropout=0.0)
        res = td.train.fit(prior, lambda m, k: m.loss(k), _chain_sample(20000, seed=0), steps=400, batch_size=256,
                           lr=3e-3, ema_decay=0.99, progress_bar=False, device="cpu")
    finally:
        torch.set_num_threads(threads)
    return res.ema.eval()


def test_code_prior_nll_is_within_a_two_sided_band_of_the_chain_entropy_rate(chain_prior):
    """Held-out NLL (nats per code) vs the exact entropy rate 0.9497: a model cannot beat the truth on fresh data
    beyond the estimate's noise (std 0.0044 per code on 4000 maps), and a trained model should come within
    KL < 0.01 of it (measured: 0.0003). So the band is [H - 0.015, H + 0.025]: 3.4 std below, 3.4 std + 0.01
    above. The per-position independent prior (its NLL is sum_i H(p_i) / N = 1.248) and the uniform one
    (log 4 = 1.386) are far outside, and a prior that peeks at k_i (no causal mask, or no shift) lands far below."""
    test = _chain_sample(4000, seed=1)
    rate = _chain_entropy_rate()
    with torch.no_grad():
        nll = chain_prior.loss(test).item()
        truth = (-_chain_log_prob(test) / CHAIN_N).mean().item()  # the true model on the same maps
        independent = vq.PositionPrior(CHAIN_K, CHAIN_HW).fit_counts(_chain_sample(4000, seed=0)).loss(test).item()
        uniform = vq.PositionPrior(CHAIN_K, CHAIN_HW).loss(test).item()
    marg = _chain_marginals()
    assert abs(independent - sum(float(_row_entropy(m)) for m in marg) / CHAIN_N) < 0.015
    assert uniform == pytest.approx(math.log(CHAIN_K), abs=1e-6)
    for name, value, ok in [("trained", nll, True), ("independent", independent, False), ("uniform", uniform, False)]:
        inside = rate - 0.015 <= value <= rate + 0.025
        assert inside == ok, f"{name} prior: NLL {value:.4f} nats/code vs entropy rate {rate:.4f}"
    # paired with the truth on the same maps (an estimate of the KL per code, noise far below the band's)
    assert -0.003 <= nll - truth <= 0.005, (nll, truth)


def test_code_prior_samples_have_the_chains_pair_frequencies(chain_prior):
    """Chi-square of the samples' first-code and neighbour-pair frequencies against the chain (2000 maps):
    accepted for the trained prior, rejected for the per-position independent prior (right marginals, no
    dependence) and for the uniform prior."""
    gen = lambda: torch.Generator().manual_seed(3)  # noqa: E731
    trained = chain_prior.sample(2000, generator=gen())
    assert trained.shape == (2000, *CHAIN_HW) and trained.dtype == torch.long
    assert min(_chain_pvalues(trained)) > CHAIN_ALPHA
    assert min(_chain_pvalues(_chain_sample(2000, seed=4))) > CHAIN_ALPHA  # the truth passes too
    independent = vq.PositionPrior(CHAIN_K, CHAIN_HW).fit_counts(_chain_sample(4000, seed=0))
    assert min(_chain_pvalues(independent.sample(2000, generator=gen()))) < 1e-6
    assert min(_chain_pvalues(vq.PositionPrior(CHAIN_K, CHAIN_HW).sample(2000, generator=gen()))) < 1e-6


def test_code_prior_is_causal_in_raster_order():
    """Changing code j changes no conditional at positions <= j (raster order), and changes those after it."""
    torch.manual_seed(0)
    prior = vq.CodePrior(6, (3, 4), dim=16, layers=2, heads=2).eval()
    k = torch.randint(0, 6, (5, 3, 4), generator=torch.Generator().manual_seed(0))
    base = prior(k).reshape(5, 12, 6)
    for j in (0, 5, 11):
        changed = k.clone().reshape(5, 12)
        changed[:, j] = (changed[:, j] + 1) % 6
        out = prior(changed.reshape(5, 3, 4)).reshape(5, 12, 6)
        torch.testing.assert_close(out[:, : j + 1], base[:, : j + 1], atol=1e-6, rtol=0)
        if j < 11:
            assert (out[:, j + 1:] - base[:, j + 1:]).abs().max() > 1e-4
    torch.testing.assert_close(base.exp().sum(-1), torch.ones(5, 12))  # each conditional is a distribution


def test_code_prior_log_prob_is_the_sum_of_its_conditionals():
    """log p(k) = sum_i log p(k_i | k_<i), checked with the chain rule written out by hand: p(k_i | k_<i) read off
    the model's conditionals one position at a time; and loss = -mean log p / (h w)."""
    torch.manual_seed(0)
    prior = vq.CodePrior(5, (2, 3), dim=16, layers=1, heads=2).eval()
    k = torch.randint(0, 5, (4, 2, 3), generator=torch.Generator().manual_seed(1))
    cond = prior(k).reshape(4, 6, 5)
    flat = k.reshape(4, 6)
    by_hand = sum(cond[torch.arange(4), i, flat[:, i]] for i in range(6))
    torch.testing.assert_close(prior.log_prob(k), by_hand)
    torch.testing.assert_close(prior.loss(k), -by_hand.mean() / 6)
    # and p sums to 1 over all 5^6 maps of a smaller grid
    small = vq.CodePrior(3, (1, 3), dim=8, layers=1, heads=2).eval()
    every = torch.cartesian_prod(*[torch.arange(3)] * 3).reshape(27, 1, 3)
    torch.testing.assert_close(small.log_prob(every).exp().sum(), torch.tensor(1.0))


def test_position_prior_is_smoothed_counts():
    k = torch.tensor([[[0, 1]], [[0, 2]], [[1, 2]]])  # 3 maps of shape (1, 2), K = 3
    prior = vq.PositionPrior(3, (1, 2))
    torch.testing.assert_close(prior.log_prob(k), torch.full((3,), 2 * -math.log(3)))  # built uniform
    prior.fit_counts(k, alpha=1.0)
    p0 = torch.tensor([3.0, 2.0, 1.0]) / 6  # position 0: counts (2, 1, 0) + 1, over 3 + 3
    p1 = torch.tensor([1.0, 2.0, 3.0]) / 6  # position 1: counts (0, 1, 2) + 1
    torch.testing.assert_close(prior(k)[0, 0], torch.stack([p0.log(), p1.log()]))
    torch.testing.assert_close(prior.log_prob(k[:1]), (p0[0] * p1[1]).log()[None])


def test_code_prior_sampling_is_seeded_greedy_at_low_temperature_and_on_the_models_device():
    torch.manual_seed(0)
    prior = vq.CodePrior(7, (2, 2), dim=16, layers=1, heads=2)
    a = prior.sample(6, generator=torch.Generator().manual_seed(0))
    b = prior.sample(6, generator=torch.Generator().manual_seed(0))
    c = prior.sample(6, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.shape == (6, 2, 2) and a.dtype == torch.long and 0 <= a.min() and a.max() < 7
    assert prior.training  # sampling switches dropout off and restores the mode
    # tau -> 0 is greedy decoding: every sample is the argmax path, built here position by position
    greedy = prior.sample(3, generator=torch.Generator().manual_seed(2), temperature=1e-4)
    path = torch.zeros(1, 4, dtype=torch.long)
    prior.eval()
    for i in range(4):
        path[0, i] = prior(path.reshape(1, 2, 2)).reshape(1, 4, 7)[0, i].argmax()
    assert torch.equal(greedy, path.reshape(1, 2, 2).expand(3, 2, 2))
    # given uniforms: k_i = min{j : F_i(j) > u_i}, the inverse CDF written out on the model's conditionals
    u = torch.rand(4, 2, 2, generator=torch.Generator().manual_seed(5))
    given = prior.sample(4, u=u)
    cond = prior(given).reshape(4, 4, 7).double().exp()
    for b in range(4):
        for i in range(4):
            cdf = cond[b, i].cumsum(0)
            assert int(given.reshape(4, 4)[b, i]) == int((cdf <= u.reshape(4, 4)[b, i] * cdf[-1]).sum())
    meta = vq.CodePrior(7, (2, 2), dim=16, layers=1, heads=2).to("meta")  # no host sync in the loop
    assert meta.sample(3, generator=torch.Generator().manual_seed(0)).device.type == "meta"


def test_code_prior_trains_on_vqvae_codes_with_fit_and_decodes():
    """The lesson's pipeline at toy size: encode, train the prior with td.train.fit, sample, decode."""
    x = td.data.load_digits(8, return_labels=False)[:64]
    torch.manual_seed(0)
    model = vq.VQVAE(hidden=8, dim=4, num_codes=8, levels=1).eval()
    with torch.no_grad():
        codes = model.encode(x).indices
    prior = vq.CodePrior(8, model.latent_shape((8, 8)), dim=16, layers=1, heads=2)
    res = td.train.fit(prior, lambda m, k: m.loss(k), codes, steps=30, batch_size=32, lr=3e-3, ema_decay=None,
                       progress_bar=False, device="cpu")
    assert res.losses[-1] < res.losses[0]
    with torch.no_grad():
        images = model.decode_indices(prior.sample(4, generator=torch.Generator().manual_seed(0)))
    assert images.shape == (4, 1, 8, 8)


@pytest.mark.parametrize("call, match", [
    (lambda p: p.log_prob(torch.zeros(2, 2, 2)), "indices must be integer code indices"),
    (lambda p: p.log_prob(torch.zeros(2, 2, 2, dtype=torch.bool)), "indices must be integer code indices"),
    (lambda p: p.log_prob(torch.full((2, 2, 2), 7)), r"indices must lie in 0..6"),
    (lambda p: p.log_prob(torch.full((2, 2, 2), -1)), r"indices must lie in 0..6"),
    (lambda p: p.loss(torch.zeros(2, 3, 2, dtype=torch.long)), r"indices must be index maps of shape \(B, 2, 2\)"),
    (lambda p: p(torch.zeros(4, dtype=torch.long)), r"indices must be index maps of shape \(B, 2, 2\)"),
    (lambda p: p.log_prob([[0, 1], [1, 0]]), "indices must be a torch.Tensor"),
    (lambda p: p.sample(0), r"n must lie in 1\.\.inf"),
    (lambda p: p.sample(2.0), "n must be an int"),
    (lambda p: p.sample(2, temperature=0.0), "temperature must be > 0"),
    (lambda p: p.sample(2, generator=3), "generator must be a torch.Generator"),
    (lambda p: p.sample(2, device="meta"), r"device must be the prior's device \(cpu\)"),
    (lambda p: p.sample(2, device="nonsense"), "device must be a torch device"),
    (lambda p: p.sample(2, u=torch.rand(3, 2, 2)), r"u must have shape \(n, h, w\) = \(2, 2, 2\)"),
    (lambda p: p.sample(1, u=torch.ones(1, 2, 2)), r"u must hold uniforms in \[0, 1\)"),
    (lambda p: vq.CodePrior(7, (2, 2, 2)), r"shape must be the \(h, w\) of the index map"),
    (lambda p: vq.CodePrior(7, (2, 0)), "shape must be a tuple of positive ints"),
    (lambda p: vq.CodePrior(0, (2, 2)), r"num_codes must lie in 1\.\.inf"),
    (lambda p: vq.CodePrior(7, (2, 2), dim=30, heads=4), "dim must be divisible by heads"),
    (lambda p: vq.CodePrior(7, (2, 2), dropout=1.0), "dropout must lie in"),
    (lambda p: vq.PositionPrior(7, (2, 2)).fit_counts(torch.zeros(3, 2, 2, dtype=torch.long), alpha=0.0),
     "alpha must be > 0"),
])
def test_code_prior_refuses_bad_arguments_by_name(call, match):
    prior = vq.CodePrior(7, (2, 2), dim=16, layers=1, heads=2)
    with pytest.raises((ValueError, TypeError), match=match):
        call(prior)
