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
# # 00 · A tour of the book
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/tinydiff/tinydiff/blob/main/notebooks/00_tour.ipynb)
#
# This book derives diffusion models one identity at a time, and checks every identity on concrete
# numbers. Each notebook imports `tinydiff`, a small package with real implementations that run on a
# laptop CPU at small size and on a GPU at full size. This tour shows how the pieces fit together, and
# ends with a first result: a diffusion model trained on 2-D data and sampled, in under a minute.

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

# %% [markdown]
# ## 1. Profiles and the device
#
# Every notebook states its sizes once, for three **profiles** chosen by the environment variable
# `TINYDIFF_PROFILE`:
#
# | profile | where | what it is for |
# | --- | --- | --- |
# | `quick` | the test suite, CI | each notebook in seconds; results may be crude |
# | `standard` | a laptop CPU (default without a GPU) | each notebook in a few minutes; results that make the point |
# | `full` | a GPU, e.g. Colab (default with CUDA) | bigger data and models, each notebook under 10 minutes |
#
# `td.profiles.choose` returns the settings of the active profile; `td.device()` is the one place that
# decides where tensors live (CUDA, Apple MPS or CPU). No notebook has its own `if` on either.
#
# **Shipped weights.** Every `td.train.fit` call in the book has a name (`shipped="00_tour_mlp"`). On a CPU the
# book loads the weights it recorded for that exact run (same model, data, settings and steps, checked by
# SHA-256) in a second instead of training for minutes; the losses, the weights and even the random state after
# training are the recorded ones, so every later cell computes what it would after training. To **train
# yourself**, run `td.weights.use("train")` (or set `TINYDIFF_WEIGHTS=train`) before the training cells; on a GPU,
# and in any profile other than `standard`, the book always trains. `td.weights.mode()` says which is active.

# %%
import matplotlib.pyplot as plt
import torch

import tinydiff as td

cfg = td.profiles.choose(
    quick=dict(train_steps=600, n_samples=1000),
    standard=dict(train_steps=4000, n_samples=4000),
    full=dict(train_steps=20000, n_samples=20000),
)
dev = td.device()
print(f"profile: {cfg.profile}, device: {dev}, weights: {td.weights.mode()}, "
      f"settings: train_steps={cfg.train_steps}, n_samples={cfg.n_samples}")

# %% [markdown]
# ## 2. Notation: one table for the text and the code
#
# | symbol | meaning | in code |
# | --- | --- | --- |
# | $t = 1, \dots, T$ | discrete diffusion step ($t = 0$ is the clean data) | `t` (a `LongTensor` of shape `(B,)`) |
# | $\beta_t,\ \alpha_t = 1 - \beta_t$ | noise added at step $t$ | `sched.beta[t]`, `sched.alpha[t]` |
# | $\bar\alpha_t = \prod_{s=1}^t \alpha_s$ | signal kept after $t$ steps | `sched.alpha_bar[t]` |
# | $x_0,\ x_t$ | clean data, noised data | `x0`, `xt` |
# | $\varepsilon \sim \mathcal N(0, I)$ | the noise | `eps` |
# | $\varepsilon_\theta(x_t, t)$ | a denoiser that predicts the noise | any callable `eps_fn(x, t)` |
# | $\nabla_x \log p_t(x)$ | the score | `score` |
# | $t \in [0, 1]$ | continuous time (lessons 04–05) | a float tensor `t` |
#
# Schedule tables have length $T + 1$ so that index $t$ *is* the lecture's $t$: `alpha_bar[0] == 1`,
# `beta[0] == 0`. Images live in $[-1, 1]$ with shape `(B, C, H, W)`; 2-D toy data has shape `(B, 2)`.

# %%
sched = td.NoiseSchedule.linear(T=1000)
print(sched)
print("alpha_bar at t = 0, 1, 500, 1000:", [round(sched.alpha_bar[t].item(), 5) for t in (0, 1, 500, 1000)])

# %% [markdown]
# ## 3. What a check cell looks like
#
# Each identity is computed twice — once as the formula says, once another way — and `td.check`
# asserts that both sides agree, printing one line. If the math or the code were wrong, the cell would
# stop with an `AssertionError` saying by how much the two sides differ. Here:
# $\bar\alpha_t = \prod_{s \le t} \alpha_s$, computed as the running product the package uses and as
# $\exp \sum_{s \le t} \log \alpha_s$ (the sum-of-logs form the lecture's code uses).

# %%
# NBVAL_CHECK_OUTPUT
td.check("alpha_bar_0 = 1 and beta_0 = 0 (index 0 is the clean data)",
         torch.stack([sched.alpha_bar[0], sched.beta[0]]), torch.tensor([1.0, 0.0]))
td.check("alpha_bar_t = exp(sum of log alpha_s)", sched.alpha_bar,
         torch.cumsum(torch.log(sched.alpha), 0).exp(), atol=1e-12)

# %% [markdown]
# A check that *fails* looks like this (we catch the error so that the tour goes on):

# %%
# NBVAL_CHECK_OUTPUT
try:
    td.check("alpha_bar_t = prod of beta_s (a wrong identity)", sched.alpha_bar, torch.cumprod(sched.beta, 0))
except AssertionError as err:
    print("caught:", str(err).split(",")[0])

# %% [markdown]
# ## 4. The same thing in tinydiff
#
# Every notebook writes a formula by hand first and then shows which package function does the same,
# so that later lessons can simply call it. The forward process of lesson 02 is
# $x_t = \sqrt{\bar\alpha_t}\,x_0 + \sqrt{1 - \bar\alpha_t}\,\varepsilon$:

# %%
# NBVAL_CHECK_OUTPUT
g = td.seed_everything(0)
x0 = torch.randn(5, 2, generator=g)
eps = torch.randn(5, 2, generator=g)
t = torch.tensor([1, 10, 100, 500, 1000])
ab = sched.alpha_bar[t].float()[:, None]
by_hand = ab.sqrt() * x0 + (1 - ab).sqrt() * eps
td.check("by hand = td.ddpm.q_sample", by_hand, td.ddpm.q_sample(x0, t, eps, sched))

# %% [markdown]
# ## 5. Exercises
#
# Exercises are stubs that raise `NotImplementedError`. The checker after each one runs your function
# against the reference on random cases: it says "not attempted" while the stub is untouched,
# "correct" when it matches, and gives a hint when your answer matches a known mistake.
#
# **Exercise.** Compute $\bar\alpha_t$ from the table $\beta$ (length $T+1$, `beta[0] == 0`).

# %%
def my_alpha_bar(beta):
    # Your code here: return the tensor alpha_bar with alpha_bar[t] = prod_{s <= t} (1 - beta[s]).
    raise NotImplementedError


# %%
# NBVAL_CHECK_OUTPUT
def random_betas(i):
    gen = torch.Generator().manual_seed(i)
    return (torch.cat([torch.zeros(1), 0.05 * torch.rand(20, generator=gen)]).double(),)


td.exercises.check(my_alpha_bar, lambda beta: torch.cumprod(1 - beta, 0), random_betas,
                   mistakes={"that is the product of the betas, not of alpha = 1 - beta": lambda b: torch.cumprod(b, 0),
                             "alpha_bar is a running product (cumprod), not one number": lambda b: torch.prod(1 - b)})

# %% [markdown]
# **Exercise 2 (find the bug).** This noising function runs, returns the right shape, and is wrong. Find the bug
# by comparing it with the formula of §4, then write the corrected version as `my_noised`. (Hint: what is the
# variance of $x_t$ for $x_0 = 0$? Compute it for the buggy version at $t = 500$.)

# %%
def buggy_noised(x0, t, eps, sched):
    ab = sched.alpha_bar[t].to(x0.dtype)[:, None]  # t: a LongTensor (B,), x0: (B, D)
    return ab.sqrt() * x0 + (1 - ab) * eps


def my_noised(x0, t, eps, sched):
    # Your code here: the corrected buggy_noised.
    raise NotImplementedError


# %%
# NBVAL_CHECK_OUTPUT
def noised_cases(i):
    gen = torch.Generator().manual_seed(30 + i)
    x0, eps = torch.randn(6, 2, generator=gen, dtype=torch.float64), torch.randn(6, 2, generator=gen, dtype=torch.float64)
    return x0, torch.randint(1, 1001, (6,), generator=gen), eps, td.NoiseSchedule.linear(1000)


td.exercises.check(my_noised, td.ddpm.q_sample, noised_cases,
                   mistakes={"that is the buggy version unchanged": buggy_noised,
                             "the square root belongs on 1 - alpha_bar_t, and the one on alpha_bar_t stays":
                                 lambda x0, t, eps, s: (s.alpha_bar[t][:, None] * x0
                                                        + (1 - s.alpha_bar[t][:, None]).sqrt() * eps)})

# %% [markdown]
# **Exercise 3 (a whole piece: Algorithm 1's loss).** Given a noise predictor `eps_fn(x_t, t)`, a batch `x0`
# `(B, D)`, its timesteps `t` `(B,)` and noises `eps` `(B, D)`, return DDPM's training loss: noise each `x0` to
# `x_t` (§4), predict the noise, and average over the batch the squared error *summed over the coordinates*
# (that is `td.ddpm.loss`'s convention).

# %%
def my_ddpm_loss(eps_fn, x0, t, eps, sched):
    # Your code here: a scalar tensor.
    raise NotImplementedError


# %%
# NBVAL_CHECK_OUTPUT
def loss_cases(i):
    gen = torch.Generator().manual_seed(40 + i)
    sched_i = td.NoiseSchedule.linear(1000)
    x0 = td.data.GaussianMixture.ring(8).sample(16, gen, dtype=torch.float64)
    net = lambda x, t: 0.5 * x + 0.001 * t[:, None]  # noqa: E731  (a stand-in predictor)
    return net, x0, torch.randint(1, 1001, (16,), generator=gen), torch.randn(16, 2, generator=gen, dtype=torch.float64), sched_i


def _xt(x0, t, eps, s):
    ab = s.alpha_bar[t][:, None]
    return ab.sqrt() * x0 + (1 - ab).sqrt() * eps


td.exercises.check(my_ddpm_loss, lambda f, x0, t, eps, s: td.ddpm.loss(f, x0, s, t=t, eps=eps), loss_cases,
                   mistakes={"the target is the noise eps, not the clean x0":
                                 lambda f, x0, t, eps, s: (f(_xt(x0, t, eps, s), t) - x0).pow(2).sum(1).mean(),
                             "sum over the coordinates and average over the batch (you averaged over both)":
                                 lambda f, x0, t, eps, s: (f(_xt(x0, t, eps, s), t) - eps).pow(2).mean(),
                             "the network sees the noised x_t, not the clean x0":
                                 lambda f, x0, t, eps, s: (f(x0, t) - eps).pow(2).sum(1).mean()})

# %% [markdown]
# ## 6. A first result: a diffusion model in under a minute
#
# The data: eight Gaussian blobs on a circle. Because it is a Gaussian mixture, `tinydiff` knows its
# noised densities *exactly* at every step (lessons 02–06 lean on this oracle). So we can sample it two
# ways with the same sampler, DDPM's Algorithm 2 (`td.ddpm.sample`):
#
# 1. with the **exact** noise predictor $\varepsilon^*(x_t, t) = -\sqrt{1-\bar\alpha_t}\,\nabla\log q_t(x_t)$ — no
#    training at all;
# 2. with a small **MLP** $\varepsilon_\theta$ trained on samples with Algorithm 1 (`td.ddpm.loss`, `td.train.fit`).
#
# The sampler only ever sees a callable `eps_fn(x, t)`; it cannot tell the two apart.

# %%
mixture = td.data.GaussianMixture.ring(k=8, radius=2.0, std=0.15)
model = td.models.MLPDenoiser(dim=2, hidden=128, depth=3)
result = td.train.fit(
    model,
    lambda net, x0: td.ddpm.loss(net, x0, sched),  # Algorithm 1: predict the noise
    lambda n, gen: mixture.sample(n, gen),  # fresh data every step
    steps=cfg.train_steps, batch_size=256, lr=2e-3, ema_decay=0.995, desc="training the MLP", shipped="00_tour_mlp",
)
plt.figure(figsize=(5, 2.5))
plt.plot(result.losses, lw=0.5)
plt.xlabel("step")
plt.ylabel("loss")
plt.yscale("log")
plt.title("training loss")
plt.show()

# %%
net = result.sampler_model.to(dev)
with torch.no_grad():
    exact = td.ddpm.sample(mixture.eps_fn(sched), (cfg.n_samples, 2), sched, generator=td.seed_everything(1))
    learned = td.ddpm.sample(net, (cfg.n_samples, 2), sched, generator=td.seed_everything(1))  # on net's device
data = mixture.sample(cfg.n_samples, td.seed_everything(2))

fig, axes = plt.subplots(1, 3, figsize=(12, 4))
td.plotting.scatter2d(data, axes[0], "data")
td.plotting.scatter2d(exact, axes[1], "DDPM with the exact ε (no training)")
td.plotting.scatter2d(learned.cpu(), axes[2], "DDPM with the trained MLP")
plt.show()

# %% [markdown]
# Pictures can flatter. We *measure* instead, with statistics that see the modes
# (`td.metrics.mixture_check`): a kernel distance (MMD) at fixed bandwidths of the size of a mode, the
# weight of each mode, the spread of each mode in units of its standard deviation, and the fraction of
# samples more than 3 standard deviations from every mode ("off-mode"). Each statistic has a **noise
# floor**: its value between two independent draws of the data itself, of the same size, which is not zero
# for finite samples. A statistic passes when it is within the floor's mean + 4 standard deviations
# (20 data-vs-data draws). A check is only a check if it can fail, so we also run it on a *wrong* sampler:
# the exact ε scaled by 0.8, which looks almost right in a scatter plot. (`tests/test_metrics.py` shows that
# at this size it also rejects ε scaled by 1.25, DDPM without its noise term, and a ring with no modes.)

# %%
with torch.no_grad():
    wrong = td.ddpm.sample(lambda x, t: 0.8 * mixture.eps_fn(sched)(x, t), (cfg.n_samples, 2), sched,
                           generator=td.seed_everything(1))
verdict = {name: td.metrics.mixture_check(x, mixture)
           for name, x in [("exact eps", exact), ("0.8 x exact eps", wrong), ("trained MLP", learned.cpu())]}
for name, v in verdict.items():
    print(f"--- {name}: {'at the noise floor' if v.passed else 'rejected on ' + ', '.join(v.failed)}\n{v}")

# %%
# NBVAL_CHECK_OUTPUT
td.check_less("DDPM with the exact eps reproduces the mixture: every statistic within its noise floor",
              len(verdict["exact eps"].failed), 1)
td.check_less("... and the check can fail: 0.8 x the exact eps is rejected", -len(verdict["0.8 x exact eps"].failed), 0)

# %% [markdown]
# The exact denoiser reproduces the data to within sampling noise: the sampler is right. The trained
# network is *not* there yet, and the table says where: too many of its samples lie between the modes
# (a small network smooths the sharp turns of ε* near the modes, and the sampler follows it there), and its
# modes are too wide. In `quick` (600 training steps) about half its samples are off-mode, in `standard`
# (4,000 steps) about a tenth (the data: 1 %); a 3-layer MLP trained for a few thousand steps does not
# reach the floor. Lessons 02 and 04 come back to this: the sampler is exact, the learned ε is not.
#
# ## Where next
#
# | | notebook | what you will check |
# | --- | --- | --- |
# | 01 | VAE and the ELBO | $\log p(x) = \text{ELBO} + \mathrm{KL}$, exactly, on a linear-Gaussian model |
# | 02 | DDPM | the forward process, its posterior, the ELBO terms, Algorithms 1 and 2 |
# | 03 | DDIM | a family of samplers with the same marginals; skipping steps |
# | 04 | SDEs and the probability-flow ODE | Fokker–Planck, reverse-time SDEs, exact likelihoods |
# | 05 | The score and Tweedie's formula | $\mathbb E[x_0 \mid x_t]$ from the score; Langevin dynamics |
# | 06 | Guidance | classifier and classifier-free guidance, and what CFG really samples |
# | 07 | VQ-VAE | quantisation, the straight-through estimator, codebook health |
# | 08 | Latent diffusion | autoencoders, the scale factor, cross-attention to captions |
