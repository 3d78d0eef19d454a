# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 07 · VQ-VAE: discrete latents
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/tinydiff/tinydiff/blob/main/notebooks/07_vqvae.ipynb)
#
# A latent diffusion model (lecture: *Latent Diffusion Model*) does not diffuse pixels. It first trains an
# autoencoder that squeezes an image into a small grid of latents, and runs diffusion there. One of the two
# autoencoders of the LDM paper is a **VQ-VAE** (lecture: *VQ-VAE*, van den Oord et al. 2017): every latent
# vector is snapped to the nearest entry of a learned **codebook**, so an image becomes a small grid of
# integers. This notebook builds that quantiser piece by piece and checks each piece on numbers:
# the nearest-code map, the straight-through gradient, the loss of the paper (and a common variant that
# looks the same but is not), the EMA codebook, codebook health (usage, perplexity, dead codes and their
# restart), and how many bits an image costs. Then we train small VQ-VAEs on digits and on coloured shapes.

# %%
# Setup. On Google Colab this installs tinydiff and what the notebooks need (its `colab` extra), once: where
# tinydiff already imports (your machine, a second run) it does nothing. To install from somewhere else, set
# TINYDIFF_SOURCE before this cell, e.g. `%env TINYDIFF_SOURCE=/content/tinydiff-0.1.0-py3-none-any.whl`
# (a local wheel or folder, a wheel URL or a git URL).
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

if "google.colab" in sys.modules and importlib.util.find_spec("tinydiff") is None:
    source = os.environ.get("TINYDIFF_SOURCE", "git+https://github.com/tinydiff/tinydiff")  # pyproject [project.urls]
    if Path(source).exists():
        source = Path(source).resolve().as_uri()
    spec = f"tinydiff[colab] @ {source}"
    print(f"installing {spec} ...", flush=True)
    pip = subprocess.run([sys.executable, "-m", "pip", "install", "-q", spec], capture_output=True, text=True)
    importlib.invalidate_caches()
    if pip.returncode != 0:
        print("\n".join(pip.stderr.strip().splitlines()[-8:]))
        raise SystemExit(
            f"Could not install {spec} (pip's last lines are above). Instead: download the repository (zip) or "
            "a wheel where you can, upload it to Colab's Files panel and set TINYDIFF_SOURCE to its path, then "
            "run this cell again; or run the book on your machine (python3 tasks.py lab). README: Troubleshooting."
        )

# %%
import math

import matplotlib.pyplot as plt
import torch
import torch.nn.functional as F

import tinydiff as td

cfg = td.profiles.choose(          # sizes for the active profile: quick (tests) / standard (CPU) / full (GPU)
    quick=dict(steps=30, restart_every=10, shape_steps=30, n_shapes=256, hidden=16, prior_steps=100, judge_steps=60),
    standard=dict(steps=500, restart_every=100, shape_steps=500, n_shapes=2048, hidden=32, prior_steps=600,
                  judge_steps=300),
    full=dict(steps=3000, restart_every=200, shape_steps=3000, n_shapes=8192, hidden=64, prior_steps=2000,
              judge_steps=600),
)
dev = td.device()
g = td.seed_everything(0)
print(f"profile: {cfg.profile}, device: {dev}")

# %% [markdown]
# ## 1. Nearest-code quantisation
#
# The encoder produces a vector $z_e(x)\in\mathbb R^{d}$ at every position of its output grid. A codebook holds
# $K$ vectors $e_1,\dots,e_K\in\mathbb R^{d}$. Quantisation replaces $z_e$ by its nearest code:
#
# $$z_q(x) = e_k,\qquad k = \arg\min_j \lVert z_e(x) - e_j\rVert_2 .$$
#
# The squared distances to all codes at once come from expanding the square,
# $\lVert z - e_j\rVert^2 = \lVert z\rVert^2 - 2 z^\top e_j + \lVert e_j\rVert^2$: one matrix product instead of a
# $(N, K, d)$ tensor of differences. We try it in $d = 2$, where we can look at it: $K = 6$ codes, 400 encoder outputs.

# %%
codebook = torch.randn(6, 2, generator=g) * 1.5
z = torch.randn(400, 2, generator=g) * 1.5
d2_broadcast = ((z[:, None, :] - codebook[None, :, :]) ** 2).sum(-1)      # (N, K): the definition
d2_expanded = (z**2).sum(1, keepdim=True) - 2 * z @ codebook.T + (codebook**2).sum(1)   # the expansion
k = d2_broadcast.argmin(1)
z_q = codebook[k]
print("first ten indices:", k[:10].tolist())

# %%
# NBVAL_CHECK_OUTPUT
td.check("||z - e||^2 = ||z||^2 - 2 z.e + ||e||^2 for all (z, e) pairs", d2_expanded, d2_broadcast, atol=1e-4)
td.check("consistency (argmin by construction): no code is closer than the chosen one", (z - z_q).pow(2).sum(1),
         d2_broadcast.min(1).values, atol=1e-5)

# %% [markdown]
# Each code owns the region of space that is closer to it than to any other code: its *Voronoi cell*.
# The colours below are the indices $k$; the stars are the codes.

# %%
fig, ax = plt.subplots(figsize=(4.5, 4.5))
ax.scatter(z[:, 0], z[:, 1], c=k, cmap="tab10", s=8, vmin=0, vmax=9)
ax.scatter(codebook[:, 0], codebook[:, 1], c=range(6), cmap="tab10", vmin=0, vmax=9, marker="*", s=300,
           edgecolors="k")
ax.set_aspect("equal")
ax.set_title("z_e coloured by its nearest code k")
plt.show()

# %% [markdown]
# **The same thing in tinydiff.** `td.vq.nearest_code(z, codebook)` is the argmin above;
# `td.vq.VectorQuantizer(num_codes, dim)` wraps it as a module whose input is an image-shaped tensor
# $(B, d, H, W)$ (channels first, like every image in tinydiff). It returns a named tuple
# `VQOutput(z_q, loss, indices, perplexity)`. We lay our 400 points out as a $(1, 2, 20, 20)$ "image".

# %%
quantizer = td.vq.VectorQuantizer(num_codes=6, dim=2)
quantizer.reset_codes(torch.arange(6), codebook)
z_img = z.T.reshape(1, 2, 20, 20)
out = quantizer(z_img)
print(out._fields, "indices:", tuple(out.indices.shape), "z_q:", tuple(out.z_q.shape))

# %%
# NBVAL_CHECK_OUTPUT
td.check("td.vq.nearest_code = the hand-written argmin", td.vq.nearest_code(z, codebook), k, atol=0)
td.check("VectorQuantizer indices (B, H, W) = the same argmin", out.indices.reshape(-1), k, atol=0)
td.check("VectorQuantizer z_q = the chosen codes e_k", out.z_q.reshape(2, -1).T, z_q, atol=1e-6)
td.check("quantize(indices) looks the codes up again", quantizer.quantize(out.indices), out.z_q, atol=1e-6)

# %% [markdown]
# ## 2. The straight-through estimator
#
# $k = \arg\min_j\lVert z_e - e_j\rVert$ is piecewise constant in $z_e$: moving $z_e$ a little does not change
# $z_q$ at all (until it crosses a cell border), so $\partial z_q/\partial z_e = 0$ almost everywhere and no
# gradient of the reconstruction loss would ever reach the encoder. The VQ-VAE **copies the gradient** across
# the quantiser: the decoder is fed
#
# $$\tilde z_q = z_e + \mathrm{sg}(z_q - z_e),$$
#
# where $\mathrm{sg}$ (stop-gradient, `.detach()`) is the identity in the forward pass and has zero derivative.
# The value is $z_e + z_q - z_e = z_q$ (up to float rounding); the derivative with respect to $z_e$ is the identity. So whatever
# gradient $\nabla_{z_q} L$ the decoder sends back arrives unchanged at $z_e$. We check both halves with a toy
# "decoder" $L = \lVert A z_q - b\rVert^2$.

# %%
A, b = torch.randn(3, 2, generator=g), torch.randn(400, 3, generator=g)
z_e = z.clone().requires_grad_(True)
z_q_st = z_e + (z_q - z_e).detach()                    # the straight-through value
L = ((z_q_st @ A.T - b) ** 2).sum()
L.backward()

z_q_leaf = z_q.clone().requires_grad_(True)            # the gradient the decoder sends back to z_q
((z_q_leaf @ A.T - b) ** 2).sum().backward()
z_q_plain = codebook[td.vq.nearest_code(z_e, codebook)]   # quantising without the trick: argmin, then a lookup
print("is z_q without the trick connected to z_e in the autograd graph?", z_q_plain.requires_grad)

# %%
# NBVAL_CHECK_OUTPUT
td.check("straight-through value = z_q (up to float rounding)", z_q_st, z_q, atol=1e-6)
td.check("gradient at z_e = gradient at z_q (copied across)", z_e.grad, z_q_leaf.grad, atol=1e-5)
td.check("td.vq.straight_through is the same expression", td.vq.straight_through(z_e, z_q), z_q_st, atol=0)

# %% [markdown]
# The picture of the paper's Figure 1: the gradient computed at $z_q$ (red) is applied at $z_e$, and pushes the
# encoder output, which may carry it into another cell on the next pass.

# %%
fig, ax = plt.subplots(figsize=(4.5, 4.5))
show = torch.arange(0, 400, 25)
ax.scatter(codebook[:, 0], codebook[:, 1], c="k", marker="*", s=200)
ax.scatter(z[show, 0], z[show, 1], c="tab:blue", s=15, label="z_e")
step = -0.02 * z_e.grad[show]
ax.quiver(z[show, 0], z[show, 1], step[:, 0], step[:, 1], color="tab:red", angles="xy", scale_units="xy", scale=1,
          width=0.006, label="-grad at z_q, applied to z_e")
for i in show:
    ax.plot([z[i, 0], z_q[i, 0]], [z[i, 1], z_q[i, 1]], c="0.7", lw=0.6)
ax.set_aspect("equal")
ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.06), ncol=2)
plt.show()

# %% [markdown]
# ## 3. The loss of the paper, and where $\beta$ goes
#
# The reconstruction loss trains the decoder and (through the copied gradient) the encoder, but nothing in it
# moves the codes: $z_q$'s gradient never reaches $e_k$. Two more terms fix that (lecture, VQ-VAE slide):
#
# $$\mathcal L = \underbrace{\lVert x - D(\tilde z_q)\rVert^2}_{\text{reconstruction}}
#   + \underbrace{\lVert \mathrm{sg}(z_e) - e_k\rVert^2}_{\text{codebook: moves } e_k}
#   + \beta\,\underbrace{\lVert z_e - \mathrm{sg}(e_k)\rVert^2}_{\text{commitment: moves } z_e},\qquad \beta = 0.25 .$$
#
# The codebook term pulls each used code toward the encoder outputs assigned to it; the commitment term keeps
# the encoder from drifting away from its codes. In tinydiff the squared norms are **means** over all
# $n = B\cdot H\cdot W\cdot d$ entries (as in diffusers and Sonnet). Then, with $r_i = z_{e,i} - e_{k_i}$,
#
# $$\frac{\partial\mathcal L_{VQ}}{\partial e_j} = -\frac{2}{n}\sum_{i:\,k_i=j} r_i,\qquad
#   \frac{\partial\mathcal L_{VQ}}{\partial z_{e,i}} = \frac{2\beta}{n}\, r_i .$$
#
# Some libraries ship the variant with $\beta$ on the *other* term, $\beta\lVert\mathrm{sg}(z_e)-e\rVert^2 +
# \lVert z_e-\mathrm{sg}(e)\rVert^2$. Because $\mathrm{sg}$ does not change values, **both have the same value**
# $(1+\beta)\,\overline{r^2}$ — but the gradients trade places: the codebook moves $\beta$ times slower and the
# encoder $1/\beta = 4$ times harder than in the paper. A different objective that prints the same number. In
# fact the swapped loss is $\beta$ times the paper's loss with commitment weight $1/\beta = 4$: relative to the
# reconstruction term, the codes get a 4 times smaller gradient and the commitment pulls the encoder 4 times
# harder than the paper intended. Whether "smaller gradient" means "learn slower" depends on the optimiser: with
# plain SGD the step is proportional to the gradient, so the codes move $\beta$ times as far; Adam(W) — which this
# book trains with — divides each parameter's step by the running RMS of its own gradient, so a constant factor on
# the codebook's gradient cancels and the codes move just as far. (The encoder's extra pull still changes the
# balance of the other terms.) Measured after the checks below, with both optimisers.

# %%
z_e = z.clone().requires_grad_(True)
codes = codebook.clone().requires_grad_(True)
r = z - codebook[k]
n, beta = z.numel(), 0.25
grads = {}
for placement in ("paper", "swapped"):
    z_e.grad, codes.grad = None, None
    loss = td.vq.vq_loss(z_e, codes[k], beta, placement=placement)
    loss.backward()
    grads[placement] = (loss.item(), z_e.grad.clone(), codes.grad.clone())
    print(f"{placement:8s} loss = {loss.item():.6f}")
z_e.grad, codes.grad = None, None
rescaled = beta * td.vq.vq_loss(z_e, codes[k], 1 / beta, placement="paper")
rescaled.backward()
grads["beta * paper(1/beta)"] = (rescaled.item(), z_e.grad.clone(), codes.grad.clone())
onehot = F.one_hot(k, 6).float()

# %%
# NBVAL_CHECK_OUTPUT
td.check("paper loss = ||sg(z_e) - e||^2 + beta ||z_e - sg(e)||^2 = (1 + beta) mean r^2",
         grads["paper"][0], (1 + beta) * r.pow(2).mean(), atol=1e-6)
td.check("paper: dL/de_j = -(2/n) sum_{i->j} r_i", grads["paper"][2], -2 / n * onehot.T @ r, atol=1e-7)
td.check("paper: dL/dz_e = (2 beta / n) r", grads["paper"][1], 2 * beta / n * r, atol=1e-7)
td.check("swapped: the same value", grads["swapped"][0], grads["paper"][0], atol=1e-7)
td.check("swapped: codebook gradient beta times the paper's", grads["swapped"][2], beta * grads["paper"][2], atol=1e-8)
td.check("swapped: encoder gradient 1/beta times the paper's", grads["swapped"][1], grads["paper"][1] / beta, atol=1e-8)
for i, what in enumerate(["value", "encoder gradient", "codebook gradient"]):
    td.check(f"swapped(beta) = beta * paper(1/beta): {what}", grads["swapped"][i], grads["beta * paper(1/beta)"][i],
             atol=1e-8)

# %%
# How far do the codes move under each placement of beta? 20 steps of SGD and of AdamW on the codes and the z_e above
moved = {}
for opt_name, make_opt in [("SGD", lambda p: torch.optim.SGD(p, lr=0.01)), ("AdamW", lambda p: torch.optim.AdamW(p, lr=0.01))]:
    for placement in ("paper", "swapped"):
        e_p, z_p = codebook.clone().requires_grad_(True), z.clone().requires_grad_(True)
        opt = make_opt([e_p, z_p])
        for _ in range(20):
            codebook_term, commitment = (z_p.detach() - e_p[k]).pow(2).mean(), (z_p - e_p[k].detach()).pow(2).mean()
            loss = codebook_term + beta * commitment if placement == "paper" else beta * codebook_term + commitment
            opt.zero_grad()
            loss.backward()
            opt.step()
        moved[(opt_name, placement)] = (e_p.detach() - codebook).norm().item()
ratio_moved = {o: moved[(o, "swapped")] / moved[(o, "paper")] for o in ("SGD", "AdamW")}
print("distance the codes moved, swapped / paper:", {o: f"{v:.3f}" for o, v in ratio_moved.items()})

# %%
# NBVAL_CHECK_OUTPUT
td.check("SGD: with beta on the codebook term the codes move beta times as far", ratio_moved["SGD"], beta, rtol=0.05)
td.check("AdamW: they move as far as in the paper's loss (Adam cancels a constant gradient factor)",
         ratio_moved["AdamW"], 1.0, rtol=0.05)

# %% [markdown]
# ## 4. Cross-check against diffusers
#
# diffusers has a `VectorQuantizer` (in `diffusers.models.autoencoders.vae`). Reading its source: its loss is
# `beta * mean((z_q.detach() - z)**2) + mean((z_q - z.detach())**2)` when `legacy=False` — $\beta$ on the
# commitment term, the paper — and `mean((z_q.detach() - z)**2) + beta * mean((z_q - z.detach())**2)` when
# `legacy=True`, the default, which a comment there calls a bug kept for old checkpoints: $\beta$ on the codebook
# term, our `placement="swapped"`. We give both the same codebook and the same inputs, and compare indices,
# $z_q$, the loss and the gradients of the loss plus a random linear function of $z_q$ (a stand-in decoder).

# %%
from diffusers.models.autoencoders.vae import VectorQuantizer as DiffusersVQ

ours = td.vq.VectorQuantizer(num_codes=32, dim=4, beta=0.25)
ours.reset_codes(torch.arange(32), torch.randn(32, 4, generator=g))
z4 = torch.randn(2, 4, 6, 6, generator=g)
w = torch.randn(2, 4, 6, 6, generator=g)
results = {}
for legacy in (False, True):
    theirs = DiffusersVQ(32, 4, beta=0.25, legacy=legacy, sane_index_shape=True)
    with torch.no_grad():
        theirs.embedding.weight.copy_(ours.codebook)
    z_them = z4.clone().requires_grad_(True)
    zq_them, loss_them, (_, _, idx_them) = theirs(z_them)
    (loss_them + (w * zq_them).sum()).backward()
    results[legacy] = (idx_them, zq_them.detach(), loss_them.detach(), z_them.grad, theirs.embedding.weight.grad)

for placement in ("paper", "swapped"):
    ours.zero_grad()
    z_us = z4.clone().requires_grad_(True)
    o = ours(z_us)
    loss_us = td.vq.vq_loss(z_us, ours.quantize(o.indices), 0.25, placement=placement)
    (loss_us + (w * o.z_q).sum()).backward()
    results[placement] = (o.indices, o.z_q.detach(), loss_us.detach(), z_us.grad, ours.codebook.grad.clone(), o.loss)

# %%
# NBVAL_CHECK_OUTPUT
for legacy, placement in ((False, "paper"), (True, "swapped")):
    for i, what in enumerate(["indices", "z_q", "loss", "gradient at z_e", "gradient at the codebook"]):
        td.check(f"diffusers legacy={legacy} = ours ({placement}): {what}", results[placement][i], results[legacy][i],
                 atol=1e-6)
td.check("our module's loss is the paper's (legacy=False)", results["paper"][5], results[False][2], atol=1e-6)
td.check_less("legacy=True is another objective: its codebook gradient differs from legacy=False",
              1e-4, (results[True][4] - results[False][4]).abs().max())

# %% [markdown]
# ## 5. The EMA codebook
#
# Instead of the codebook term, the codes can follow the encoder outputs by **exponential moving averages**
# (paper, appendix A.1). With $n_j$ vectors assigned to code $j$ in a batch, and decay $\gamma$:
#
# $$N_j \leftarrow \gamma N_j + (1-\gamma)\,n_j,\qquad m_j \leftarrow \gamma m_j + (1-\gamma)\sum_{i:\,k_i = j} z_{e,i},
#   \qquad e_j = m_j / \tilde N_j ,$$
#
# $e_j$ is a running mean of the vectors that chose it — one step of $k$-means, smoothed over batches. An
# unused code has $n_j = 0$, so $N_j$ and $m_j$ both decay towards 0 and $m_j/N_j$ becomes $0/0$. **Laplace
# smoothing** of the counts, $\tilde N_j = \frac{N_j + \epsilon}{n + K\epsilon}\, n$ with $n = \sum_j N_j$, keeps
# $\tilde N_j \ge \epsilon n/(n + K\epsilon) > 0$. The loss is then only $\beta\lVert z_e - \mathrm{sg}(e)\rVert^2$.
# We write one update by hand and compare.

# %%
K, gamma, eps = 6, 0.9, 1e-5
N0, m0 = torch.ones(K), codebook.clone()           # the state of td.vq.EMAVectorQuantizer at creation
n_j = torch.bincount(k, minlength=K).float()
sum_j = torch.zeros(K, 2).index_add_(0, k, z)
N1 = gamma * N0 + (1 - gamma) * n_j
m1 = gamma * m0 + (1 - gamma) * sum_j
N_tilde = (N1 + eps) / (N1.sum() + K * eps) * N1.sum()
e1 = m1 / N_tilde[:, None]
N_td, m_td, e_td = td.vq.ema_codebook_step(N0, m0, z, k, gamma, eps)

# %% [markdown]
# Two limits make the update checkable. With $\gamma\to 0$ the state forgets everything at once: one step moves
# each used code exactly to the **mean of its assigned vectors**. And for a code nobody used for so long that
# $N_j$ and $m_j$ have underflowed to 0, $\epsilon > 0$ gives $0/\tilde N_j = 0$, while $\epsilon = 0$ gives NaN.

# %%
ema_q = td.vq.EMAVectorQuantizer(num_codes=K, dim=2, decay=1e-7).train()
ema_q.reset_codes(torch.arange(K), codebook)
ema_out = ema_q(z_img)                               # quantise with the old codes, then update them
used = torch.nonzero(n_j).flatten()
cluster_means = sum_j[used] / n_j[used, None]
dead_state = (torch.tensor([3.0, 0.0]), torch.tensor([[1.0, 2.0], [0.0, 0.0]]))  # code 1: N = m = 0
z_one = torch.tensor([[1.0, 2.0]])
_, _, e_smoothed = td.vq.ema_codebook_step(*dead_state, z_one, torch.tensor([0]), 0.99, 1e-5)
_, _, e_raw = td.vq.ema_codebook_step(*dead_state, z_one, torch.tensor([0]), 0.99, 0.0)
print("unused code with eps=1e-5:", e_smoothed[1].tolist(), "  with eps=0:", e_raw[1].tolist())

# %%
# NBVAL_CHECK_OUTPUT
td.check("hand-written EMA step = td.vq.ema_codebook_step (counts)", N_td, N1)
td.check("hand-written EMA step = td.vq.ema_codebook_step (sums)", m_td, m1)
td.check("hand-written EMA step = td.vq.ema_codebook_step (codes)", e_td, e1)
td.check("decay -> 0: each used code moves to the mean of its vectors", ema_q.codebook[used], cluster_means,
         atol=1e-4)
td.check("the EMA quantiser's loss is beta * commitment only", ema_out.loss,
         0.25 * (z_img - ema_out.z_q.detach()).pow(2).mean())
td.check("Laplace smoothing keeps an unused code finite", torch.isfinite(e_smoothed).all(), True)
td.check("without smoothing it is 0/0 = NaN", torch.isnan(e_raw[1]).all(), True)

# %% [markdown]
# ## 6. A VQ-VAE on digits
#
# `td.vq.VQVAE` is a small convolutional encoder (residual blocks from `td.models.ResBlock`) → quantiser → decoder.
# Its encoder has `levels` stride-2 convolutions, so the **downsampling factor** is $f = 2^{\text{levels}}$: an
# $8\times 8$ digit becomes a $4\times4$ map of indices with $f = 2$. The training loss is
# `td.vq.vqvae_loss`: reconstruction MSE plus the quantiser's loss. We train three versions with
# `td.train.fit`, identical except for how the codebook learns:
#
# 1. the codebook loss of the paper (§3),
# 2. the same, plus a **dead-code restart** every few hundred steps (§7 explains it),
# 3. the EMA codebook (§5).
#
# $K = 128$ codes of dimension $d = 8$, so there is room for codes to die.

# %%
x_digits = td.data.load_digits(8, return_labels=False)
K, dim = 128, 8
runs = {}
for name, ema, restart in [("codebook loss", False, None), ("+ restarts", False, cfg.restart_every),
                           ("EMA", True, None)]:
    td.seed_everything(0)
    model = td.vq.VQVAE(in_channels=1, hidden=cfg.hidden, dim=dim, num_codes=K, levels=1, ema=ema)
    loss_fn = td.vq.make_vqvae_loss(restart)
    slug = name.replace("+ ", "").replace(" ", "_").lower()
    td.train.fit(model, loss_fn, x_digits, steps=cfg.steps, batch_size=128, lr=2e-3, ema_decay=None, desc=name,
                 shipped=None if restart else f"07_vqvae_{slug}")  # a restart run's loss_fn keeps its counts: trained
    runs[name] = (model.eval(), loss_fn)

# %%
x_dev = x_digits.to(dev)
stats = {}
with torch.no_grad():
    for name, (model, loss_fn) in runs.items():
        x_hat, vq_out = model(x_dev)
        counts = td.vq.code_usage(vq_out.indices.cpu(), K)
        stats[name] = dict(mse=F.mse_loss(x_hat, x_dev).item(), perplexity=vq_out.perplexity.item(),
                           dead=len(td.vq.dead_codes(counts)), counts=counts, x_hat=x_hat.cpu())
        print(f"{name:14s} reconstruction MSE {stats[name]['mse']:.4f}   perplexity {stats[name]['perplexity']:6.1f}"
              f" of {K}   dead codes {stats[name]['dead']:3d}   restarts moved {loss_fn.restarts}")
mse_mean_image = (x_digits - x_digits.mean(0, keepdim=True)).pow(2).mean().item()  # predict the per-pixel mean image
print(f"MSE of the per-pixel mean image: {mse_mean_image:.4f} (of one constant, the variance of all values: "
      f"{x_digits.var().item():.4f})")

# %% [markdown]
# What the committed (standard-profile) run shows — the quick profile used by the tests trains far too briefly to
# mean anything: all three models reconstruct the digits well (MSE around 0.01, against 0.29 for the mean image),
# but they use their codebooks very differently. With the codebook loss alone about a third of the 128 codes are
# dead. Restarting dead codes brings nearly all of them back, raises the perplexity to roughly 100, and gives the
# lowest MSE. The EMA codebook, started from the same tiny codes (uniform in $\pm 1/K$), leaves even *more* codes
# dead: an EMA update moves only the codes that are chosen, so it cannot rescue a code that never is. That is why
# EMA codebooks are usually run together with restarts (and often initialised from encoder outputs).

# %% [markdown]
# The image is now stored as its index map. Decoding the indices (look the codes up, then decode) must give
# exactly the reconstruction of the forward pass, and the perplexity the module reports must be
# $\exp H$ of its code histogram.

# %%
model = runs["codebook loss"][0]
with torch.no_grad():
    vq_out = model.encode(x_dev)
    from_indices = model.decode_indices(vq_out.indices)
    from_forward = model(x_dev)[0]

# %%
# NBVAL_CHECK_OUTPUT
td.check("index map (1797, 4, 4) for 8x8 digits with f = 2", torch.tensor(vq_out.indices.shape),
         torch.tensor([1797, *model.latent_shape((8, 8))]), atol=0)
# (the two inputs differ by float rounding, z_e + (e - z_e) vs e; TF32 convolutions on a GPU can magnify that)
td.check("decode(quantize(indices)) = the forward reconstruction", from_indices, from_forward, atol=1e-3)
usage = torch.bincount(vq_out.indices.flatten().cpu(), minlength=K).double()  # counted here, not by td.vq
td.check("reported perplexity = exp H(code usage) (torch.distributions.Categorical's entropy)", vq_out.perplexity,
         torch.distributions.Categorical(probs=usage / usage.sum()).entropy().exp(), atol=1e-3, rtol=1e-4)
td.check_less("every VQ-VAE reconstructs better than the per-pixel mean image", max(s["mse"] for s in stats.values()),
              mse_mean_image)

# %%
fig, axes = plt.subplots(1, 4, figsize=(12, 3.4))
td.plotting.show_images(x_digits[:32], nrow=8, ax=axes[0], title="data")
for ax, (name, s) in zip(axes[1:], stats.items()):
    td.plotting.show_images(s["x_hat"][:32], nrow=8, ax=ax, title=f"{name}: MSE {s['mse']:.3f}")
plt.show()

# %% [markdown]
# ## 7. Codebook health: usage, perplexity, dead codes, restarts
#
# A code that no encoder output chooses gets no gradient from the codebook term (and no update from the EMA),
# so it stays unused forever: a **dead code**. Dead codes waste capacity. Three measurements tell the health of
# a codebook:
#
# - the **usage histogram** `td.vq.code_usage(indices, K)`;
# - the **perplexity** $\exp H(p) = \exp(-\sum_j p_j\log p_j)$ of that histogram, the effective number of codes in use
#   (1 if one code takes everything, $K$ if all are used equally);
# - the **dead codes** `td.vq.dead_codes(counts)`, those with zero (or fewer than a threshold) uses.
#
# The fix used by many implementations is a **restart**: move each dead code onto a randomly chosen encoder
# output, where it is sure to be used (`td.vq.restart_dead_codes`). Run 2 did that every
# `restart_every` steps with the usage counted since the last restart.

# %%
fig, axes = plt.subplots(1, 3, figsize=(12, 2.8), sharey=True)
for ax, (name, s) in zip(axes, stats.items()):
    ax.bar(range(K), s["counts"].sort(descending=True).values, width=1.0)
    ax.set_title(f"{name}: perplexity {s['perplexity']:.0f}, dead {s['dead']}", fontsize=9)
    ax.set_xlabel("codes, most used first")
    ax.set_yscale("log")
axes[0].set_ylabel("uses on the 1797 digits")
plt.show()

# %% [markdown]
# Now a restart by hand on run 1: count its dead codes on the whole data set, restart them onto encoder outputs
# of the data set, and count again. Each dead code is placed on a *distinct* encoder output, which it then
# matches exactly (distance 0), so right after the restart no code is dead on that data.

# %%
model = runs["codebook loss"][0]
with torch.no_grad():
    z_e_all = model.z_e(x_dev)
    dead_before = td.vq.dead_codes(td.vq.code_usage(model.quantizer(z_e_all).indices.cpu(), K))
    moved = td.vq.restart_dead_codes(model.quantizer, z_e_all, generator=torch.Generator().manual_seed(0))
    dead_after = td.vq.dead_codes(td.vq.code_usage(model.quantizer(z_e_all).indices.cpu(), K))
print(f"dead codes before: {len(dead_before)}, restarted: {len(moved)}, dead after: {len(dead_after)}")

# %%
# NBVAL_CHECK_OUTPUT
td.check("restart moves exactly the dead codes", moved.sort().values.cpu(), dead_before, atol=0)
td.check("no dead code right after a restart", len(dead_after), 0, atol=0)

# %% [markdown]
# ## 8. How many bits is an image?
#
# A VQ-VAE stores an image as an $h\times w$ map of integers in $0..K-1$, with $h = H/f$, $w = W/f$: that costs
# $h\,w\log_2 K$ bits. The raw image costs $C\,H\,W\cdot 8$ bits at 8 bits per value. The perplexity gives a
# better estimate of what an entropy coder would need if the indices were independent: $h\,w\log_2(\text{perplexity})$.

# %%
digits = td.vq.compression((1, 8, 8), f=2, num_codes=K)
ldm = td.vq.compression((3, 256, 256), f=8, num_codes=16384)   # the LDM paper's VQ-f8 on 256x256 images
print(f"digits 8x8, f=2, K={K}: {digits.latent_bits:.0f} bits vs {digits.raw_bits:.0f} raw -> {digits.ratio:.1f}x")
for name, s in stats.items():
    print(f"   {name:14s} entropy estimate {td.vq.index_bits((4, 4), s['perplexity']):6.1f} bits")
print(f"LDM 256x256 RGB, f=8, K=16384: {ldm.latent_bits:.0f} bits vs {ldm.raw_bits:.0f} raw -> {ldm.ratio:.0f}x")

# %%
# NBVAL_CHECK_OUTPUT
td.check("index bits = (number of indices) * log2 K", digits.latent_bits, vq_out.indices[0].numel() * math.log2(K))
td.check("raw bits = C H W * 8", digits.raw_bits, x_digits[0].numel() * 8)
td.check("LDM f=8: a 32x32 map of 14-bit indices", ldm.latent_bits, 32 * 32 * 14)

# %% [markdown]
# Two honest remarks. The 8×8 digits have only 17 grey levels, so "8 bits per pixel" overstates their raw size
# (they need $64\log_2 17 \approx 262$ bits). And the compression is lossy: the MSE above is what it costs.

# %% [markdown]
# ## 9. A learned prior over the codes: the VQ-VAE generates
#
# So far the VQ-VAE only compresses. To **generate**, it needs a distribution over index maps to sample from. During
# its training the paper takes the prior over the codes to be uniform, so the KL term of its ELBO is the constant
# $\log K$ and drops out of the loss; *after* training it fits an autoregressive prior to the codes of the training
# images (lecture: "the prior is learned"), samples index maps from it and decodes them. Read in raster order
# $k_1,\dots,k_{16}$, any distribution over $4\times4$ maps factorises exactly as
#
# $$p(k) = \prod_{i=1}^{hw} p(k_i \mid k_{<i}),$$
#
# and `td.vq.CodePrior` gives each conditional by a small causal transformer (the paper uses a PixelCNN). It is
# trained by maximum likelihood, i.e. on the mean negative log-likelihood per code, which divided by $\ln 2$ is the
# number of **bits per code** an entropy coder would need with this prior. Two baselines, `td.vq.PositionPrior`:
# the uniform prior ($\log_2 K = 7$ bits) and the per-position independent prior $\prod_i p_i(k_i)$ with $p_i$ the
# (smoothed) code frequencies at position $i$. We encode the digits with run 2 ("+ restarts"), keep 297 maps aside,
# and compare the three on them. (The VQ-VAE itself was trained on all 1,797 digits: "held out" means held out
# from the prior only.)

# %%
vqvae = runs["+ restarts"][0]
with torch.no_grad():
    codes = vqvae.encode(x_dev).indices.cpu()                     # (1797, 4, 4)
split = torch.randperm(len(codes), generator=torch.Generator().manual_seed(0))
train_idx, test_idx = split[:1500], split[1500:]
td.seed_everything(0)
prior = td.vq.CodePrior(K, vqvae.latent_shape((8, 8)), dim=64, layers=2, heads=4, dropout=0.1)
prior_fit = td.train.fit(prior, lambda m, k: m.loss(k), codes[train_idx], steps=cfg.prior_steps, batch_size=128,
                         lr=1e-3, weight_decay=0.01, ema_decay=0.99, desc="prior", shipped="07_code_prior")
prior = prior_fit.ema.eval()
uniform = td.vq.PositionPrior(K, (4, 4)).to(dev)
independent = td.vq.PositionPrior(K, (4, 4)).to(dev).fit_counts(codes[train_idx], alpha=0.5)
bits = {}
with torch.no_grad():
    for name, p in [("uniform", uniform), ("independent", independent), ("learned", prior)]:
        bits[name] = {part: p.loss(codes[idx]).item() / math.log(2) for part, idx in
                      [("train", train_idx), ("held-out", test_idx)]}
        print(f"{name:12s} prior: {bits[name]['train']:.2f} bits per code on its training maps, "
              f"{bits[name]['held-out']:.2f} held out")

# %%
# NBVAL_CHECK_OUTPUT
td.check("uniform prior: log2 K bits per code", bits["uniform"]["held-out"], math.log2(K), atol=1e-4)
td.check_less("held out, the independent prior beats the uniform one", bits["independent"]["held-out"],
              bits["uniform"]["held-out"])
td.check_less("held out, the learned prior beats the independent one", bits["learned"]["held-out"],
              bits["independent"]["held-out"])

# %% [markdown]
# In the committed standard run the learned prior needs about 4.4 bits per code on the held-out maps against 5.8 for
# the independent prior and 7 for the uniform one: the codes of a digit depend on each other, and the prior has
# learned some of that. It has also memorised: on its own training maps it needs about 3.6 bits, so some of what it
# learned does not carry over to new digits (1,500 maps of 16 codes from 128 are very little data). These numbers
# are the costs of the index maps alone; they say nothing yet about how the samples look.
#
# **Generation.** Sample 297 index maps from each prior and decode them with the VQ-VAE's decoder. To judge them with
# something that can fail, we train a small digit classifier (`td.models.Classifier`) on the 1,500 training digits
# and compare feature sets of its penultimate layer: the Fréchet distance (the formula of FID, in this classifier's
# feature space) between each set and the training digits. Its noise floor is the same distance for the 297 held-out
# *real* digits.

# %%
x_all, y_all = td.data.load_digits(8, return_labels=True)
td.seed_everything(0)
judge = td.models.Classifier(in_channels=1, num_classes=10, base_channels=16)
td.train.fit(judge, lambda m, b: F.cross_entropy(m(b[0]), b[1]), (x_all[train_idx], y_all[train_idx]),
             steps=cfg.judge_steps, batch_size=128, lr=2e-3, ema_decay=None, desc="judge", shipped="07_judge")
judge.eval()
gen = torch.Generator().manual_seed(1)
n_gen = len(test_idx)
with torch.no_grad():
    sets = {"real (held out)": x_all[test_idx].to(dev),
            "reconstructed": vqvae.decode_indices(codes[test_idx]),
            "learned prior": vqvae.decode_indices(prior.sample(n_gen, generator=gen)),
            "independent prior": vqvae.decode_indices(independent.sample(n_gen, generator=gen)),
            "uniform codes": vqvae.decode_indices(uniform.sample(n_gen, generator=gen))}
    accuracy = (judge(sets["real (held out)"]).argmax(1).cpu() == y_all[test_idx]).float().mean().item()
    train_features = judge.features(x_all[train_idx].to(dev)).cpu()
    judged = {}
    for name, images in sets.items():
        probs = judge(images).softmax(-1).cpu()
        judged[name] = dict(fd=td.metrics.frechet_distance(judge.features(images).cpu(), train_features),
                            confidence=probs.max(1).values.mean().item(),
                            classes=torch.bincount(probs.argmax(1), minlength=10))
print(f"judge: accuracy {accuracy:.3f} on the held-out real digits")
for name, j in judged.items():
    print(f"{name:18s} Fréchet distance to the training digits {j['fd']:6.2f}   mean confidence {j['confidence']:.3f}")

# %%
# NBVAL_CHECK_OUTPUT
td.check_less("learned-prior samples are nearer the real digits than independent-prior samples (Fréchet distance)",
              judged["learned prior"]["fd"], judged["independent prior"]["fd"])
td.check_less("learned-prior samples are nearer the real digits than decoded uniform codes (Fréchet distance)",
              judged["learned prior"]["fd"], judged["uniform codes"]["fd"])

# %%
fig, axes = plt.subplots(1, 5, figsize=(15, 3.6))
for ax, (name, images) in zip(axes, sets.items()):
    td.plotting.show_images(images[:25].cpu(), nrow=5, ax=ax, title=f"{name}\nFréchet {judged[name]['fd']:.2f}")
plt.show()
fig, ax = plt.subplots(figsize=(8, 2.8))
for i, (name, j) in enumerate(judged.items()):
    ax.bar(torch.arange(10) + (i - 2) * 0.16, j["classes"] / n_gen, width=0.16, label=name)
ax.set_xticks(range(10))
ax.set_xlabel("class the judge assigns")
ax.set_ylabel("fraction of the 297 images")
ax.legend(fontsize=7, ncol=5, loc="upper center", bbox_to_anchor=(0.5, -0.25))
plt.show()

# %% [markdown]
# What the standard run supports: the learned prior's samples are recognisably digits far more often than those of
# the independent prior (which pastes together pieces of different digits: each position is right on its own,
# the combination is not) or of uniform codes (noise); the check above would fail if they were not. They are **not**
# as good as real digits: their Fréchet distance (about 0.9) is several times the held-out floor (about 0.15; both
# baselines score about 5), some samples are smudged or ambiguous, and the judge is less confident on them (mean
# confidence about 0.93 against 0.99). The class histogram says the same: the judge calls about a quarter of the
# baselines' images "8" (its answer for blobs), while the learned prior's classes are spread like the real ones,
# though unevenly (a few classes up to about 45 % over or under their real share). A 16-code map, a tiny prior
# and 1,500 training maps are the reason; bigger priors on bigger grids (VQ-VAE-2, VQGAN's transformer) are how
# this scales. The quick profile trains everything far too briefly for the pictures to mean anything; it only
# runs the code.

# %% [markdown]
# ## 10. Coloured shapes
#
# The same model on RGB images: the procedural "shapes with captions" set of lesson 08 (`td.shapes`), 16×16,
# with $f = 4$ (two stride-2 levels): each image becomes a $4\times4$ map of indices. We use restarts.

# %%
shapes = td.data.shapes.make_shapes(cfg.n_shapes, size=16, seed=0).images
td.seed_everything(0)
shape_model = td.vq.VQVAE(in_channels=3, hidden=cfg.hidden, dim=dim, num_codes=K, levels=2)
shape_loss = td.vq.make_vqvae_loss(cfg.restart_every)
td.train.fit(shape_model, shape_loss, shapes, steps=cfg.shape_steps, batch_size=64, lr=2e-3, ema_decay=None,
             desc="shapes", shipped="07_vqvae_shapes")
shape_model.eval()
with torch.no_grad():
    s_hat, s_vq = shape_model(shapes.to(dev))
s_mse = F.mse_loss(s_hat, shapes.to(dev)).item()
s_bits = td.vq.compression((3, 16, 16), f=shape_model.f, num_codes=K)
print(f"shapes: MSE {s_mse:.4f} (data variance {shapes.var().item():.4f}), perplexity {s_vq.perplexity.item():.1f}, "
      f"{s_bits.latent_bits:.0f} bits vs {s_bits.raw_bits:.0f} raw ({s_bits.ratio:.0f}x)")
fig, axes = plt.subplots(1, 2, figsize=(12, 3.4))
td.plotting.show_images(shapes[:16], nrow=8, ax=axes[0], title="shapes")
td.plotting.show_images(s_hat[:16].cpu(), nrow=8, ax=axes[1], title="VQ-VAE, f=4")
plt.show()

# %% [markdown]
# In the standard run the shapes come back with their colour, kind and position intact from 112 bits each (the
# MSE is measured on the training images; these procedural images are simple, so this says little about
# generalisation). Edges are a little soft: a $4\times4$ grid of 128 codes cannot place every boundary exactly.
# Lesson 08 trains an autoencoder like this one and runs diffusion on its latents.

# %%
# NBVAL_CHECK_OUTPUT
td.check("a 16x16 RGB image becomes a 4x4 index map", torch.tensor(s_vq.indices.shape[1:]), torch.tensor([4, 4]),
         atol=0)

# %% [markdown]
# ## Exercises
#
# **Exercise 1 — nearest code.** Return the index of the nearest code for every row of `z` `(N, d)`, given a
# codebook `(K, d)`.

# %%
def my_nearest_code(z, codebook):
    # Your code here: return a LongTensor (N,) of indices k_i = argmin_j ||z_i - e_j||.
    raise NotImplementedError


# %%
# NBVAL_CHECK_OUTPUT
def nn_cases(i):
    gen = torch.Generator().manual_seed(100 + i)
    return torch.randn(50, 3, generator=gen), torch.randn(7, 3, generator=gen) * (1 + torch.arange(7.0))[:, None]


td.exercises.check(my_nearest_code, td.vq.nearest_code, nn_cases, mistakes={
    "argmax instead of argmin: that is the farthest code": lambda z, e: torch.cdist(z, e).argmax(1),
    "largest dot product z.e is not the nearest code unless all codes have the same length":
        lambda z, e: (z @ e.T).argmax(1),
})

# %% [markdown]
# **Exercise 2 — the straight-through trick.** Return a tensor whose *value* is `z_q` and whose gradient with
# respect to `z_e` is the identity. The checker looks at both (with `td.vq.straight_through_probe`).

# %%
def my_straight_through(z_e, z_q):
    # Your code here: one line, using .detach().
    raise NotImplementedError


# %%
# NBVAL_CHECK_OUTPUT
def st_cases(i):
    gen = torch.Generator().manual_seed(200 + i)
    return tuple(torch.randn(4, 3, generator=gen) for _ in range(3))


td.exercises.check(
    lambda z_e, z_q, w: td.vq.straight_through_probe(my_straight_through, z_e, z_q, w),
    lambda z_e, z_q, w: td.vq.straight_through_probe(td.vq.straight_through, z_e, z_q, w),
    st_cases, name="my_straight_through", mistakes={
        "returned z_q: right value, but no gradient reaches the encoder":
            lambda z_e, z_q, w: td.vq.straight_through_probe(lambda a, b: b, z_e, z_q, w),
        "detached the wrong part: z_q + (z_e - z_q).detach() has value z_e":
            lambda z_e, z_q, w: td.vq.straight_through_probe(lambda a, b: b + (a - b).detach(), z_e, z_q, w),
    })

# %% [markdown]
# **Exercise 3 — perplexity.** Given code counts `(K,)`, return $\exp(-\sum_j p_j\log p_j)$ with
# $p = \text{counts}/\sum\text{counts}$ (unused codes contribute 0).

# %%
def my_perplexity(counts):
    # Your code here: careful with p_j = 0 (0 * log 0 is taken to be 0).
    raise NotImplementedError


# %%
# NBVAL_CHECK_OUTPUT
def pp_cases(i):
    gen = torch.Generator().manual_seed(300 + i)
    counts = torch.randint(0, 20, (16,), generator=gen)
    counts[:i] = 0
    return (counts,)


td.exercises.check(my_perplexity, td.vq.perplexity, pp_cases, mistakes={
    "returned the entropy H, not exp(H)": lambda c: -torch.special.xlogy(c / c.sum(), c / c.sum()).sum(),
    "counted the codes in use instead": lambda c: (c > 0).sum().float(),
})

# %% [markdown]
# **Exercise 4 — find the bug.** This code histogram works on most batches and then crashes the perplexity
# plot with a shape error: on a batch where the last codes are unused it returns fewer than `K` counts. Find the
# bug and write `my_code_usage(indices, K)`, a LongTensor `(K,)`.

# %%
def buggy_code_usage(indices, K):
    return torch.bincount(indices.flatten())


def my_code_usage(indices, K):
    # Your code here: the corrected buggy_code_usage.
    raise NotImplementedError


# %%
# NBVAL_CHECK_OUTPUT
def usage_cases(i):
    gen = torch.Generator().manual_seed(400 + i)
    return torch.randint(0, 10 - i, (3, 4, 4), generator=gen), 16  # codes 10 - i .. 15 never used


td.exercises.check(my_code_usage, td.vq.code_usage, usage_cases,
                   mistakes={"that is the buggy version: bincount needs minlength=K to count the unused codes":
                             buggy_code_usage})

# %% [markdown]
# **Exercise 5 — the sampling loop (a whole piece).** Write ancestral sampling from a prior over index maps:
# given `prior` (a `td.vq.CodePrior`: `prior(k)` returns the log-conditionals $\log p(k_i = j\mid k_{<i})$ of a map
# `k` `(n, h, w)`, shape `(n, h, w, K)`) and uniforms `u` `(n, h, w)`, fill the map one position at a time in raster
# order: at position $i$, with $F_i(j) = \sum_{j' \le j} p(k_i = j'\mid k_{<i})$ the cumulative conditional, set
# $k_i = \min\{j : F_i(j) > u_i\}$ (the inverse CDF; the positions after $i$ may hold anything meanwhile, the
# conditionals at $i$ do not look at them). Return a LongTensor `(n, h, w)`.

# %%
def my_sample_codes(prior, u):
    # Your code here: a loop over the h*w positions; cumsum of the probabilities, then count how many are <= u.
    raise NotImplementedError


# %%
# NBVAL_CHECK_OUTPUT
def prior_cases(i):
    torch.manual_seed(500 + i)
    prior = td.vq.CodePrior(6, (2, 3), dim=16, layers=1, heads=2).eval()
    return prior, torch.rand(8, 2, 3, generator=torch.Generator().manual_seed(500 + i))


def no_loop(prior, u):  # every position from the conditionals of an all-zero map, computed once
    n, h, w = u.shape
    cdf = prior(torch.zeros(n, h, w, dtype=torch.long)).double().exp().cumsum(-1)
    return (cdf <= u[..., None].double() * cdf[..., -1:]).sum(-1)


def greedy(prior, u):  # the most likely code at each step instead of a draw
    k = torch.zeros(u.shape, dtype=torch.long)
    for i in range(u[0].numel()):
        k.view(len(k), -1)[:, i] = prior(k).reshape(len(k), -1, prior.num_codes)[:, i].argmax(-1)
    return k


with torch.no_grad():
    td.exercises.check(my_sample_codes, lambda prior, u: prior.sample(len(u), u=u), prior_cases, atol=0, rtol=0,
                       mistakes={"no loop: each conditional must see the codes already drawn before it": no_loop,
                                 "argmax is greedy decoding, not sampling: use u and the cumulative probabilities":
                                     greedy})

# %% [markdown]
# ## Summary
#
# - $z_q = e_k$ with $k = \arg\min_j\lVert z_e - e_j\rVert$; one matrix product gives all distances.
# - The straight-through value $z_e + \mathrm{sg}(z_q - z_e)$ equals $z_q$ and hands the decoder's gradient to the
#   encoder unchanged.
# - $\lVert\mathrm{sg}(z_e) - e\rVert^2 + \beta\lVert z_e - \mathrm{sg}(e)\rVert^2$ moves codes with weight 1 and the
#   encoder with weight $\beta$; the swapped variant (diffusers' `legacy=True`) has the same value and different
#   gradients (under SGD the codes move $\beta$ times as far; under Adam(W), as far). `legacy=False` matches the
#   paper exactly.
# - The EMA codebook is a running $k$-means step; Laplace smoothing keeps unused codes finite.
# - Dead codes are common; restarting them onto encoder outputs restores usage and perplexity.
# - A learned autoregressive prior $p(k) = \prod_i p(k_i\mid k_{<i})$ over the index maps (`td.vq.CodePrior`) codes
#   them in fewer bits than the independent or the uniform prior, and sampling it then decoding generates digits:
#   recognisable more often than from the baselines, not as good as real ones at this size.
# - An image becomes $h\,w\log_2K$ bits. Lesson 08 puts a diffusion model on the latents of an autoencoder — the
#   KL-regularised kind (continuous latents, as in Stable Diffusion), not these VQ indices.
