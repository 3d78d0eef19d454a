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
# # 05 · The score function and Tweedie's formula
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/tinydiff/tinydiff/blob/main/notebooks/05_score_tweedie.ipynb)
#
# A DDPM network is trained to predict the noise $\varepsilon$ that was added to an image. This lesson shows
# that it is secretly learning something else: the **score** $\nabla_x\log p(x_t)$, the direction in which the
# noised data density grows fastest. The bridge is **Tweedie's formula**,
# $\mathbb E[x_0\mid x_t] = \big(x_t + (1-\bar\alpha_t)\nabla\log p(x_t)\big)/\sqrt{\bar\alpha_t}$, which we
# derive step by step and check on a Gaussian mixture whose score is known exactly. Then we look at how well a
# trained $\varepsilon$-network knows the score (badly at small $t$, for reasons we measure), and we sample with
# the score alone: Langevin dynamics, which gets the mode weights wrong, and annealed Langevin dynamics
# (Song & Ermon, 2019), which gets them right. This follows the lecture's sections *Score Function* and
# *Score Function Tweedie's Formula 补充*.

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
from functools import partial

import matplotlib.pyplot as plt
import torch

import tinydiff as td

cfg = td.profiles.choose(          # sizes for the active profile: quick (tests) / standard (CPU) / full (GPU)
    quick=dict(n_mc=20_000, n_pairs=20_000, train_steps=600, n_err=500, n_chains=600, levels=8,
               steps_per_level=40, plain_steps=320),
    standard=dict(n_mc=200_000, n_pairs=200_000, train_steps=4000, n_err=4000, n_chains=4000, levels=12,
                  steps_per_level=100, plain_steps=1200),
    full=dict(n_mc=1_000_000, n_pairs=1_000_000, train_steps=20_000, n_err=20_000, n_chains=20_000, levels=16,
              steps_per_level=200, plain_steps=3200),
)
dev = td.device()
g = td.seed_everything(0)
sched = td.NoiseSchedule.linear(1000)
print(cfg, dev, sched, sep="\n")

# %% [markdown]
# ## 1 · What a score is
#
# The score of a density $p$ is the vector field $s(x) = \nabla_x\log p(x)$. Two facts make it useful:
#
# * it points **uphill**, towards where the data is more likely;
# * it does not care about the normalising constant: if $p = \tilde p/Z$, then
#   $\nabla\log p = \nabla\log\tilde p - \nabla\log Z = \nabla\log\tilde p$, because $Z$ does not depend on $x$.
#
# For an isotropic Gaussian, $\log\mathcal N(x;\mu,\sigma^2 I) = -\|x-\mu\|^2/(2\sigma^2) + \text{const}$, so
#
# $$\nabla_x\log\mathcal N(x;\mu,\sigma^2 I) = -\frac{x-\mu}{\sigma^2}.$$
#
# The score of a narrow Gaussian is *large*: at one standard deviation from the mean its length is $1/\sigma$.
# We check the closed form against automatic differentiation of the log-density
# (`td.score.score_autograd`, which differentiates any `log_prob_fn(x) -> (B,)`).

# %%
mu, var = torch.tensor([1.0, -0.5], dtype=torch.float64), 0.3
x = torch.randn(6, 2, generator=g, dtype=torch.float64)
normal = torch.distributions.Normal(mu, math.sqrt(var))
by_hand = -(x - mu) / var
by_autograd = td.score.score_autograd(lambda z: normal.log_prob(z).sum(1), x)
print(torch.cat([by_hand, by_autograd], 1)[:3])

# %%
# NBVAL_CHECK_OUTPUT
td.check("score of N(mu, sigma^2 I): -(x - mu)/sigma^2 = autograd of log N", by_hand, by_autograd, atol=1e-10)
td.check("td.score.gaussian_score = the closed form", td.score.gaussian_score(x, mu, var), by_hand, atol=1e-12)

# %% [markdown]
# Our data for the whole lesson is a **Gaussian mixture**: eight narrow components ($\sigma = 0.15$) on a circle of
# radius 2, with **unequal weights** $w_k \propto k$ (so $w_1 = 1/36$, $w_8 = 8/36$). The unequal weights matter in
# §6, where a sampler has to reproduce them. `td.data.GaussianMixture` knows the exact density, score and posterior
# mean of $a X + s\varepsilon$ for any $a, s$; with $a = \sqrt{\bar\alpha_t}$, $s = \sqrt{1-\bar\alpha_t}$ that is
# the noised marginal $q_t$ of diffusion at step $t$. First, its closed-form score against autograd, at several $t$.

# %%
ring = td.data.GaussianMixture.ring(8, radius=2.0, std=0.15)
w = torch.arange(1, 9, dtype=torch.float64)
mix = td.data.GaussianMixture.isotropic(ring.means, 0.15, weights=w / w.sum())


def noise_coefs(t):
    """(a, s) = (sqrt(alpha_bar_t), sqrt(1 - alpha_bar_t)): the law of x_t is mix noised with these."""
    ab = sched.alpha_bar[t]
    return ab.sqrt(), (1 - ab).sqrt()


xs = 2.5 * torch.randn(64, 2, generator=g, dtype=torch.float64)
worst = 0.0
for t in [1, 10, 100, 300, 1000]:
    a, s = noise_coefs(t)
    auto = td.score.score_autograd(partial(mix.log_prob, a=a, s=s), xs)
    worst = max(worst, ((auto - mix.score(xs, a, s)).abs() / (1 + auto.abs())).max().item())
print(f"largest relative difference closed form vs autograd over 5 timesteps: {worst:.2e}")

# %%
# NBVAL_CHECK_OUTPUT
td.check_less("mixture score (closed form) = autograd of its log-density, t in {1, 10, 100, 300, 1000}", worst, 1e-9)

# %% [markdown]
# A picture: the noised density $q_t$ and its score field (arrows shortened to fit). At $t = 1$ the density is eight
# sharp bumps and the score points into the nearest one; by $t = 300$ the bumps have merged and the field points
# at the middle; at $t = 1000$, $q_T \approx \mathcal N(0, I)$ and the score is almost exactly $-x$.

# %%
fig, axes = plt.subplots(1, 4, figsize=(14, 3.6))
for ax, t in zip(axes, [1, 100, 300, 1000]):
    a, s = noise_coefs(t)
    td.plotting.density2d(partial(mix.log_prob, a=a, s=s), ax=ax, lim=3.2)
    td.plotting.vector_field(partial(mix.score, a=a, s=s), ax=ax, lim=3.2, n=17, color="w")
    ax.set_title(f"q_t and its score, t = {t}")
fig.tight_layout()

# %% [markdown]
# ## 2 · Tweedie's formula, step by step
#
# Fix a step $t$ and write $a = \sqrt{\bar\alpha_t}$, $s^2 = 1-\bar\alpha_t$. The forward process gives
#
# $$x_t = a\,x_0 + s\,\varepsilon,\qquad p(x_t\mid x_0) = \mathcal N(x_t;\,a x_0,\, s^2 I)
#   = \frac{1}{(2\pi s^2)^{d/2}}\exp\Big(-\frac{\|x_t - a x_0\|^2}{2 s^2}\Big).$$
#
# **Question.** Given a noisy $x_t$, what is our best guess (in mean square) of the clean $x_0$? It is the posterior
# mean $\mathbb E[x_0\mid x_t] = \int x_0\,p(x_0\mid x_t)\,dx_0 = \frac{1}{p(x_t)}\int x_0\,p(x_t\mid x_0)p(x_0)\,dx_0$
# (Bayes). Tweedie's formula evaluates that integral with a derivative. Four steps, each checked on numbers.
#
# **Step 1: the marginal is an average.**
#
# $$p(x_t) = \int p(x_t\mid x_0)\,p(x_0)\,dx_0 = \mathbb E_{x_0\sim p}\big[p(x_t\mid x_0)\big].$$
#
# We can estimate the right-hand side by Monte Carlo, averaging the Gaussian $p(x_t\mid x_0^{(i)})$ over samples
# $x_0^{(i)}$ of the data, and compare with the mixture's exact $\log p(x_t)$ at a few points $x_t$.

# %%
t_demo = 300
a, s = noise_coefs(t_demo)
x0_mc = mix.sample(cfg.n_mc, g, dtype=torch.float64)                             # x0^(i) ~ p(x0)
xt_pts = mix.sample(5, g, dtype=torch.float64) * a + s * torch.randn(5, 2, generator=g, dtype=torch.float64)

log_lik = td.ddpm.gaussian_log_prob(xt_pts[:, None, :].expand(-1, cfg.n_mc, -1).reshape(-1, 2),
                                    (a * x0_mc).repeat(5, 1), s**2).reshape(5, cfg.n_mc)   # log p(x_t | x0^(i))
log_p_mc = torch.logsumexp(log_lik, 1) - math.log(cfg.n_mc)                       # log of the average
log_p_exact = mix.log_prob(xt_pts, a, s)
weights = torch.softmax(log_lik, 1)                                               # p(x0^(i) | x_t), normalised
ess = 1 / (weights**2).sum(1)                                                     # effective sample size
tol_mc = 5 / ess.min().sqrt().item()                                              # five Monte-Carlo standard errors
print("log p(x_t) Monte Carlo:", log_p_mc.numpy().round(4))
print("log p(x_t) exact      :", log_p_exact.numpy().round(4))
print(f"effective sample sizes {ess.numpy().round(0)}; tolerance {tol_mc:.3f}")

# %%
# NBVAL_CHECK_OUTPUT
td.check("step 1: p(x_t) = E_{x0 ~ p}[p(x_t | x0)] (Monte Carlo vs exact)", log_p_mc, log_p_exact, atol=tol_mc, rtol=0)

# %% [markdown]
# **Step 2: differentiate the Gaussian.** Only $p(x_t\mid x_0)$ depends on $x_t$, and
#
# $$\nabla_{x_t}\,p(x_t\mid x_0) = -\frac{x_t - a x_0}{s^2}\;p(x_t\mid x_0)
#   \quad\Longleftrightarrow\quad \nabla_{x_t}\log p(x_t\mid x_0) = -\frac{x_t - a x_0}{s^2},$$
#
# the score of a Gaussian from §1, with mean $a x_0$ and variance $s^2$.

# %%
x0_one = x0_mc[:1].expand(5, -1)
grad_auto = td.score.score_autograd(lambda z: td.ddpm.gaussian_log_prob(z, a * x0_one, s**2), xt_pts)

# %%
# NBVAL_CHECK_OUTPUT
td.check("step 2: grad log p(x_t | x0) = -(x_t - sqrt(abar) x0) / (1 - abar)", grad_auto,
         -(xt_pts - a * x0_one) / s**2, atol=1e-10)

# %% [markdown]
# **Step 3: differentiate under the integral and divide by $p(x_t)$.**
#
# $$\nabla\log p(x_t) = \frac{\nabla p(x_t)}{p(x_t)} = \frac{1}{p(x_t)}\int -\frac{x_t - a x_0}{s^2}\,p(x_t\mid x_0)p(x_0)\,dx_0
#   = -\frac{1}{s^2}\int (x_t - a x_0)\,p(x_0\mid x_t)\,dx_0 = -\frac{x_t - a\,\mathbb E[x_0\mid x_t]}{s^2}.$$
#
# The middle step is Bayes again: $p(x_t\mid x_0)p(x_0)/p(x_t) = p(x_0\mid x_t)$. So the score is a *posterior
# average* of the Gaussian scores of step 2. With our samples $x_0^{(i)}$, the posterior weights are the
# normalised $p(x_t\mid x_0^{(i)})$ from step 1 (self-normalised importance sampling), and we can estimate both the
# score and $\mathbb E[x_0\mid x_t]$ without any formula for the mixture.

# %%
post_mean_mc = weights @ x0_mc                                                    # sum_i w_i x0^(i)
score_mc = -(xt_pts - a * post_mean_mc) / s**2                                    # posterior average of step 2
score_exact = mix.score(xt_pts, a, s)
print("score, Monte Carlo:\n", score_mc.numpy().round(3), "\nscore, exact:\n", score_exact.numpy().round(3))
tol_score = tol_mc * 3 * a.item() / s.item() ** 2   # a / s^2 times the error of a posterior mean (spread <~ 3)

# %%
# NBVAL_CHECK_OUTPUT
td.check("step 3: grad log p(x_t) = posterior average of -(x_t - a x0)/s^2 (Monte Carlo vs exact)", score_mc,
         score_exact, atol=tol_score, rtol=0)

# %% [markdown]
# **Step 4: solve for the posterior mean.** Multiply step 3 by $s^2$ and rearrange:
#
# $$a\,\mathbb E[x_0\mid x_t] = x_t + s^2\,\nabla\log p(x_t)
#   \qquad\Longrightarrow\qquad
#   \boxed{\;\mathbb E[x_0\mid x_t] = \frac{x_t + (1-\bar\alpha_t)\,\nabla\log p(x_t)}{\sqrt{\bar\alpha_t}}\;}$$
#
# This is Tweedie's formula (the lecture's eq. 133). It needs **only the score of the noised marginal**, not the
# data distribution. We check it against the mixture's exact posterior mean (computed by conditioning each
# Gaussian component, no score involved) at every $t$ from 1 to $T$ at once, and against the Monte-Carlo estimate.

# %%
ts_all = torch.arange(1, sched.T + 1)
x0_b = mix.sample(sched.T, g, dtype=torch.float64)
ab_b = sched.alpha_bar[ts_all]
xt_b = td.ddpm.q_sample(x0_b, ts_all, torch.randn(sched.T, 2, generator=g, dtype=torch.float64), sched)
tweedie_by_hand = (xt_b + (1 - ab_b)[:, None] * mix.score(xt_b, ab_b.sqrt(), (1 - ab_b).sqrt())) / ab_b.sqrt()[:, None]
exact_post_mean = mix.posterior_mean(xt_b, ab_b.sqrt(), (1 - ab_b).sqrt())
tweedie_demo = (xt_pts + s**2 * score_exact) / a

# %%
# NBVAL_CHECK_OUTPUT
td.check("Tweedie: (x_t + (1-abar) score)/sqrt(abar) = exact E[x0|x_t], one x_t at each t = 1..T",
         tweedie_by_hand, exact_post_mean, atol=1e-8, rtol=1e-8)
td.check("Tweedie = Monte-Carlo posterior mean (importance weights)", tweedie_demo, post_mean_mc, atol=3 * tol_mc, rtol=0)

# %% [markdown]
# ### The same thing by binning
#
# Importance weights are one way to get $\mathbb E[x_0\mid x_t]$ from samples. A more naive one: draw many pairs
# $(x_0, x_t)$, cut the $x_t$ axis into bins, and average the $x_0$ that landed in each bin. We do it on a 1-D
# mixture, so the whole conditional mean is one curve. To compare without a bin-width bias we average Tweedie's
# $\mathbb E[x_0\mid x_t]$ over the *same* $x_t$ in each bin (the tower rule: the average of $x_0$ over a bin equals
# the average of $\mathbb E[x_0\mid x_t]$ over it), and measure the difference in standard errors.

# %%
mix1 = td.data.GaussianMixture([0.3, 0.5, 0.2], [[-2.0], [0.5], [2.5]], [0.09, 0.36, 0.0625])
x0_1 = mix1.sample(cfg.n_pairs, g, dtype=torch.float64)
xt_1 = a * x0_1 + s * torch.randn(cfg.n_pairs, 1, generator=g, dtype=torch.float64)
tw_1 = td.score.tweedie_x0(xt_1, mix1.score(xt_1, a, s), sched.alpha_bar[t_demo])
edges = torch.linspace(-3, 3, 41, dtype=torch.float64)
bin_of = torch.bucketize(xt_1[:, 0], edges) - 1
z_scores, centres, bin_x0, bin_tw = [], [], [], []
for b in range(40):
    sel = bin_of == b
    if sel.sum() < 100:
        continue
    m0, mt = x0_1[sel, 0].mean(), tw_1[sel, 0].mean()
    se = (x0_1[sel, 0] - tw_1[sel, 0]).std() / sel.sum().sqrt()   # x0 - E[x0|x_t] has mean 0 in every bin
    z_scores.append(((m0 - mt) / se).abs().item())
    centres.append(((edges[b] + edges[b + 1]) / 2).item())
    bin_x0.append(m0.item())
    bin_tw.append(mt.item())
print(f"{len(z_scores)} bins with >= 100 pairs; largest |z| = {max(z_scores):.2f}")

# %%
# NBVAL_CHECK_OUTPUT
td.check_less("binned average of x0 = binned average of Tweedie's E[x0|x_t] (largest |z| over bins < 4.5)",
              max(z_scores), 4.5)

# %%
grid = torch.linspace(-3, 3, 300, dtype=torch.float64)[:, None]
fig, ax = plt.subplots(figsize=(6, 4))
ax.scatter(xt_1[:3000, 0], x0_1[:3000, 0], s=2, alpha=0.2, label="pairs (x_t, x0)")
ax.plot(grid[:, 0], td.score.tweedie_x0(grid, mix1.score(grid, a, s), sched.alpha_bar[t_demo])[:, 0], "k",
        label="Tweedie: (x_t + (1-abar) score)/sqrt(abar)")
ax.plot(grid[:, 0], grid[:, 0] / a, "k:", label="naive rescaling x_t / sqrt(abar)")
ax.plot(centres, bin_x0, "o", color="C3", ms=4, label="average x0 per bin of x_t")
ax.set_xlabel("x_t")
ax.set_ylabel("x0")
ax.set_ylim(-4, 4)
ax.set_title(f"E[x0 | x_t] at t = {t_demo} (abar = {sched.alpha_bar[t_demo]:.2f})")
ax.legend(fontsize=7)

# %% [markdown]
# The naive guess $x_t/\sqrt{\bar\alpha_t}$ undoes the shrinking but keeps all the noise. Tweedie's curve is
# flat near each mode (any $x_t$ near a mode is "probably that mode") and steep between modes: the score term
# $(1-\bar\alpha_t)\nabla\log p$ pulls each $x_t$ towards where the data is.
#
# ## 3 · The noise is the score, rescaled
#
# Since $\varepsilon = (x_t - a x_0)/s$, its posterior mean follows from Tweedie:
#
# $$\mathbb E[\varepsilon\mid x_t] = \frac{x_t - a\,\mathbb E[x_0\mid x_t]}{s}
#   = \frac{x_t - \big(x_t + s^2\nabla\log p(x_t)\big)}{s}
#   \qquad\Longrightarrow\qquad \boxed{\;\varepsilon^*(x_t) = -\sqrt{1-\bar\alpha_t}\;\nabla\log p(x_t)\;}$$
#
# This is the lecture's conclusion (the two expressions for $x_0$ in eq. 149 agree). A network trained to predict
# $\varepsilon$ in mean square learns $\mathbb E[\varepsilon\mid x_t]$, so it learns the score up to the known
# factor $-\sqrt{1-\bar\alpha_t}$. We check the identity with autograd on the exact log-density, and against the
# Monte-Carlo posterior mean of $\varepsilon$ (no score involved).

# %%
t_b = torch.full((5,), t_demo, dtype=torch.long)
score_auto = td.score.score_autograd(lambda z: mix.log_prob(z, a, s), xt_pts)
eps_from_autograd = -s * score_auto
# Monte Carlo: E[eps | x_t] = sum_i w_i (x_t - a x0^(i)) / s = (x_t - a sum_i w_i x0^(i)) / s
eps_mc = (xt_pts - a * (weights @ x0_mc)) / s
print("E[eps|x_t] via -s * autograd score:\n", eps_from_autograd.numpy().round(3))

# %%
# NBVAL_CHECK_OUTPUT
td.check("consistency: the oracle's eps_fn (closed-form score) = -sqrt(1-abar) x autograd of its log p(x_t)",
         eps_from_autograd, mix.eps_fn(sched)(xt_pts, t_b), atol=1e-9)
td.check("eps* = Monte-Carlo E[eps | x_t]", eps_from_autograd, eps_mc, atol=3 * tol_mc * a.item() / s.item(), rtol=0)
td.check("eq. 149: x0 from eps* = the exact posterior mean E[x0 | x_t] (responsibility-weighted, per component)",
         td.convert.x0_from_eps(xt_pts, eps_from_autograd, a**2), mix.posterior_mean(xt_pts, a, s), atol=1e-9)

# %% [markdown]
# ## 4 · The same thing in tinydiff
#
# `td.score.tweedie_x0(xt, score, alpha_bar_t)` is Tweedie's formula; it is written through `td.convert`
# (score → $\varepsilon$ → $x_0$), the one place where these conversions live. For a network that predicts
# $\varepsilon$, `td.convert.x0_fn_from_eps_fn` is the same denoiser as a callable.

# %%
score_b = mix.score(xt_b, ab_b.sqrt(), (1 - ab_b).sqrt())

# %%
# NBVAL_CHECK_OUTPUT
td.check("td.score.tweedie_x0 = the hand-written formula", td.score.tweedie_x0(xt_b, score_b, ab_b), tweedie_by_hand,
         atol=1e-10)
td.check("td.convert.x0_fn_from_eps_fn(exact eps) = Tweedie",
         td.convert.x0_fn_from_eps_fn(mix.eps_fn(sched), sched)(xt_b, ts_all), tweedie_by_hand, atol=1e-8)

# %% [markdown]
# ### Exercise 1 · Tweedie's denoiser
# Write $\mathbb E[x_0\mid x_t]$ from $x_t$, the score and $\bar\alpha_t$ (a Python float). Use plain tensor
# arithmetic, not `td`.

# %%
def my_tweedie(xt, score, alpha_bar_t):
    # Your code here: return (x_t + (1 - alpha_bar_t) * score) / sqrt(alpha_bar_t) -- but write it yourself.
    raise NotImplementedError


# %%
# NBVAL_CHECK_OUTPUT
gen_ex = torch.Generator().manual_seed(1)
tweedie_cases = [(torch.randn(4, 2, generator=gen_ex, dtype=torch.float64),
                  torch.randn(4, 2, generator=gen_ex, dtype=torch.float64), ab)
                 for ab in (0.9, 0.5, 0.1, 0.02, 0.999)]
td.exercises.check(my_tweedie, td.score.tweedie_x0, tweedie_cases, mistakes={
    "divide by sqrt(alpha_bar), not alpha_bar": lambda x, sc, ab: (x + (1 - ab) * sc) / ab,
    "the score is multiplied by the variance 1 - alpha_bar, not its square root":
        lambda x, sc, ab: (x + math.sqrt(1 - ab) * sc) / math.sqrt(ab),
    "the score term is added: it pulls x_t towards the data": lambda x, sc, ab: (x - (1 - ab) * sc) / math.sqrt(ab),
})

# %% [markdown]
# ## 5 · The score inside a trained ε-network
#
# **Why training on $\varepsilon$ learns the score.** At a fixed $t$, split the $\varepsilon$-loss around
# $\varepsilon^* = \mathbb E[\varepsilon\mid x_t]$:
#
# $$\mathbb E\|\varepsilon_\theta(x_t) - \varepsilon\|^2
#   = \underbrace{\mathbb E\|\varepsilon_\theta(x_t) - \varepsilon^*(x_t)\|^2}_{(1-\bar\alpha_t)
#     \,\mathbb E\|s_\theta - \nabla\log p\|^2}
#   + \underbrace{\mathbb E\|\varepsilon^*(x_t) - \varepsilon\|^2}_{\text{does not depend on }\theta}$$
#
# (the cross term vanishes because $\mathbb E[\varepsilon^* - \varepsilon\mid x_t] = 0$). Minimising the DDPM loss
# is therefore minimising a *weighted score error*, with weight $\lambda_t = 1-\bar\alpha_t$ (this is *denoising
# score matching*, Vincent 2011). We train `td.models.MLPDenoiser` with `td.ddpm.loss` on fresh mixture samples,
# then check the split by Monte Carlo.

# %%
model = td.models.MLPDenoiser(dim=2, hidden=128, depth=3)
fit = td.train.fit(model, lambda m, x0: td.ddpm.loss(m, x0, sched), lambda n, gen: mix.sample(n, gen),
                   steps=cfg.train_steps, batch_size=256, lr=2e-3, warmup=100, seed=0, desc="eps-network",
                   shipped="05_eps_network")
net = fit.sampler_model.eval()


def net_eps(x, t):
    """The trained eps-network as a callable on any device (inputs move to dev, outputs come back)."""
    with torch.no_grad():
        return net(x.float().to(dev), t.to(dev)).to(x.device, x.dtype)


print(f"final training loss (mean of the last 100 steps): {sum(fit.losses[-100:]) / len(fit.losses[-100:]):.4f}")

# %%
t_chk = 50
a50, s50 = noise_coefs(t_chk)
x0_c = mix.sample(cfg.n_err, g, dtype=torch.float64)
eps_c = torch.randn(cfg.n_err, 2, generator=g, dtype=torch.float64)
xt_c = a50 * x0_c + s50 * eps_c
tt = torch.full((cfg.n_err,), t_chk, dtype=torch.long)
e_theta, e_star = net_eps(xt_c, tt), mix.eps_fn(sched)(xt_c, tt)
loss_total = (e_theta - eps_c).pow(2).sum(1)
loss_model = (e_theta - e_star).pow(2).sum(1)
loss_floor = (e_star - eps_c).pow(2).sum(1)
cross = 2 * ((e_theta - e_star) * (e_star - eps_c)).sum(1)
print(f"t = {t_chk}: eps-loss {loss_total.mean():.4f} = model part {loss_model.mean():.4f} "
      f"+ irreducible part {loss_floor.mean():.4f} + cross term {cross.mean():+.4f}")

# %%
# NBVAL_CHECK_OUTPUT
td.check("algebra (true for any three vectors): eps-loss = model part + irreducible part + cross term",
         loss_total, loss_model + loss_floor + cross, atol=1e-9)
td.check_less("the cross term averages to zero (|mean| < 5 standard errors)",
              cross.mean().abs() / (cross.std() / math.sqrt(cfg.n_err)), 5.0)

# %% [markdown]
# **The learned field.** Below, the true score (top) and the score implied by the network,
# $s_\theta = -\varepsilon_\theta/\sqrt{1-\bar\alpha_t}$ (bottom), at a small, a middle and a large $t$.

# %%
net_score = td.convert.score_fn_from_eps_fn(net_eps, sched)    # s_theta(x, t) = -eps_theta(x, t) / sqrt(1 - abar_t)
fig, axes = plt.subplots(2, 3, figsize=(11, 7.2))
for j, t in enumerate([5, 100, 700]):
    a_t, s_t = noise_coefs(t)
    fields = {"true score": partial(mix.score, a=a_t, s=s_t), "network": partial(net_score, t=torch.tensor(t))}
    for i, (who, field) in enumerate(fields.items()):
        td.plotting.density2d(partial(mix.log_prob, a=a_t, s=s_t), ax=axes[i, j], lim=3.2, cmap="Greys")
        td.plotting.vector_field(field, ax=axes[i, j], lim=3.2, n=17, color="C0" if i == 0 else "C3")
        axes[i, j].set_title(f"{who}, t = {t}")
fig.tight_layout()

# %% [markdown]
# **The error as a number per $t$.** `td.score.score_error_per_t` draws $x_0$ from the mixture and
# $x_t\sim q(x_t\mid x_0)$, and reports three views of the same error:
# the unweighted $\mathbb E\|s_\theta - s^*\|^2$, the $\varepsilon$-space error
# $(1-\bar\alpha_t)\,\mathbb E\|s_\theta-s^*\|^2$ (what the loss sees), and the error of the network's Tweedie
# denoiser, $\mathbb E\|\hat x_{0,\theta} - \mathbb E[x_0\mid x_t]\|^2
# = \frac{(1-\bar\alpha_t)^2}{\bar\alpha_t}\mathbb E\|s_\theta - s^*\|^2$.
# We also compute how much of the variance of $x_0$ the *exact* posterior mean explains,
# $R^2_t = 1 - \mathbb E\|x_0 - \mathbb E[x_0\mid x_t]\|^2 / \mathbb E\|x_0 - \mathbb E x_0\|^2$.

# %%
ts_err = torch.unique(torch.logspace(0, 3, 16).round().long())
err = td.score.score_error_per_t(net_eps, mix, sched, ts_err, cfg.n_err, g)
untrained = td.models.MLPDenoiser(dim=2, hidden=128, depth=3).eval()
err0 = td.score.score_error_per_t(lambda x, t: untrained(x.float(), t).double(), mix, sched, ts_err, cfg.n_err, g)

x0_r = mix.sample(cfg.n_err, g, dtype=torch.float64)
total_var = (x0_r - mix.mean()).pow(2).sum(1).mean()
r2 = []
for t in ts_err.tolist():
    a_t, s_t = noise_coefs(t)
    xt_r = a_t * x0_r + s_t * torch.randn(x0_r.shape, generator=g, dtype=torch.float64)
    r2.append(1 - ((x0_r - mix.posterior_mean(xt_r, a_t, s_t)).pow(2).sum(1).mean() / total_var).item())
r2 = torch.tensor(r2)

print("   t   |s*|^2   score err  rel.err   eps err   x0 err    R^2")
for i, t in enumerate(ts_err.tolist()):
    print(f"{t:5d} {err['score_norm2'][i]:8.3g} {err['score_mse'][i]:10.3g} {err['score_mse'][i] / err['score_norm2'][i]:8.3g}"
          f" {err['eps_mse'][i]:9.3g} {err['x0_mse'][i]:8.3g} {r2[i]:7.3f}")

# %%
fig, axes = plt.subplots(1, 3, figsize=(14, 3.6))
t_np = ts_err.numpy()
axes[0].loglog(t_np, err["score_mse"], "o-", label="E|s_theta - s*|^2 (trained)")
axes[0].loglog(t_np, err0["score_mse"], "x:", label="same, untrained network")
axes[0].loglog(t_np, err["score_norm2"], "k--", label="E|s*|^2 (size of the score)")
axes[0].set_title("unweighted score error")
axes[1].semilogx(t_np, err["eps_mse"], "o-", label="E|eps_theta - eps*|^2 = (1-abar) x score error")
axes[1].set_title("the same error in eps units (what the loss sees)")
axes[2].loglog(t_np, err["x0_mse"], "o-", label="E|x0_theta - E[x0|x_t]|^2")
axes[2].loglog(t_np, total_var.expand(len(t_np)), "k--", label="Var(x0)")
ax2 = axes[2].twinx()
ax2.semilogx(t_np, r2, "s-", color="C2", label="R^2 of the exact E[x0|x_t]")
ax2.set_ylim(-0.05, 1.05)
axes[2].set_title("the network's Tweedie denoiser")
axes[0].set_ylabel(r"$\mathbb{E}\,\|s_\theta - s^*\|^2$")
axes[1].set_ylabel(r"$\mathbb{E}\,\|\varepsilon_\theta - \varepsilon^*\|^2$")
axes[2].set_ylabel(r"squared error of $\hat x_0$")
ax2.set_ylabel(r"$R^2_t$", color="C2")
for ax in axes[:2]:
    ax.legend(fontsize=7, loc="best", framealpha=0.6)
for ax in axes:
    ax.set_xlabel("t")
axes[2].legend(fontsize=7, loc="lower right", framealpha=0.6)
ax2.legend(fontsize=7, loc="center right", framealpha=0.6)
fig.tight_layout()

# %% [markdown]
# What the numbers say (read them off the table above; they are from this run):
#
# * **Small $t$: the score is huge and sharp.** Near the data, $q_t$ is eight bumps of width $\approx 0.15$, so
#   $\|s^*\|^2 \approx d/\sigma^2 \approx 90$, and it flips direction over a distance of one bump. The loss sees
#   the error only through the factor $1-\bar\alpha_t$ (about $10^{-4}$ at $t=1$): an $\varepsilon$-error that
#   looks small (0.05 at $t = 1$ in our standard run) is, at the first few steps, a score error *larger than the
#   score itself* (the relative error column), because the $\varepsilon$ target itself is tiny there: $x_1$ barely
#   reveals the noise, $\mathbb E\|\varepsilon^*\|^2 = (1-\bar\alpha_1)\,\mathbb E\|s^*\|^2 \approx 0.009$ against 2 at
#   $t = T$ (checked below with its closed form for separated bumps). Note also the bump of the $\varepsilon$-error around
#   $t\approx 50$–$100$: that is where the modes merge and the field is hardest to represent. Small $t$ is where
#   DDPM samplers take their last, small steps, and where a learned score is least trustworthy.
# * **Small $t$: little data in low-density regions.** Training points $x_t$ sit on the bumps; between them the
#   network has almost never seen an example, and the loss never asks it to be right there. The cell below
#   measures the error on points drawn from $q_t$ versus points spread uniformly over the square (most of which
#   lie between modes). In $\varepsilon$ units (what the loss controls) the difference is large; the *relative*
#   score error differs much less, because between modes the score is long and points roughly at the nearest
#   bump, which is easy to get approximately right.
# * **Large $t$: the score is easy, but says little about $x_0$.** Here $q_t\approx\mathcal N(0, I)$ and
#   $s^*\approx -x$: a linear field the network learns almost perfectly (small relative error). But $R^2_t \to 0$:
#   $x_t$ carries almost no information about $x_0$, so $\mathbb E[x_0\mid x_t]$ is close to the data mean for
#   every $x_t$. Worse, the network's Tweedie estimate divides by $\sqrt{\bar\alpha_t}$: its $x_0$-error is the
#   $\varepsilon$-error times $(1-\bar\alpha_t)/\bar\alpha_t \approx 2.5\cdot 10^4$ at $t=T$, far larger than the
#   spread of the data. A predicted $x_0$ at large $t$ is not an image; samplers that use it (DDIM, lesson 03)
#   multiply it by $\sqrt{\bar\alpha_{t-1}}$, which is just as small, and many implementations clip it.

# %%
t_low = 10
a_l, s_l = noise_coefs(t_low)
x_on = mix.sample(cfg.n_err, g, dtype=torch.float64) * a_l + s_l * torch.randn(cfg.n_err, 2, generator=g,
                                                                               dtype=torch.float64)
x_off = 6 * torch.rand(cfg.n_err, 2, generator=g, dtype=torch.float64) - 3
tl = torch.full((cfg.n_err,), t_low)
rel_on = ((net_score(x_on, tl) - mix.score(x_on, a_l, s_l)).norm(dim=1) / mix.score(x_on, a_l, s_l).norm(dim=1)).median()
rel_off = ((net_score(x_off, tl) - mix.score(x_off, a_l, s_l)).norm(dim=1) / mix.score(x_off, a_l, s_l).norm(dim=1)).median()
eps_on = (net_eps(x_on, tl) - mix.eps_fn(sched)(x_on, tl)).pow(2).sum(1).mean()
eps_off = (net_eps(x_off, tl) - mix.eps_fn(sched)(x_off, tl)).pow(2).sum(1).mean()
lp_off = mix.log_prob(x_off, a_l, s_l)
x_big = 2.5 * torch.randn(cfg.n_err, 2, generator=g, dtype=torch.float64)
aT, sT = noise_coefs(sched.T)
rel_gauss = (mix.score(x_big, aT, sT) + x_big).pow(2).sum() / x_big.pow(2).sum()
print(f"t = {t_low}: median relative score error on typical x_t: {rel_on:.3f}; on uniform points: {rel_off:.3f}")
print(f"t = {t_low}: eps-space error on typical x_t: {eps_on:.3f}; on uniform points: {eps_off:.3f}")
print(f"t = T: true score vs -x, relative squared difference: {rel_gauss:.2e}")
# the relative score error E|s_theta - s*|^2 / E|s*|^2 at t = 1 and t = T on fresh draws, with its standard error
# (a ratio of two means: delta method)
rel, rel_se, eps_star2, eps_star2_se = {}, {}, {}, {}
for t_r in (1, sched.T):
    a_r, s_r = noise_coefs(t_r)
    x0_r2 = mix.sample(cfg.n_err, g, dtype=torch.float64)
    xt_r2 = a_r * x0_r2 + s_r * torch.randn(x0_r2.shape, generator=g, dtype=torch.float64)
    true_r = mix.score(xt_r2, a_r, s_r)
    num = (net_score(xt_r2, torch.full((cfg.n_err,), t_r)) - true_r).pow(2).sum(1)
    den = true_r.pow(2).sum(1)
    rel[t_r] = (num.mean() / den.mean()).item()
    rel_se[t_r] = ((num - rel[t_r] * den).std() / den.mean() / math.sqrt(cfg.n_err)).item()
    eps_star2[t_r] = (s_r**2 * den.mean()).item()  # E|eps*|^2 = (1 - abar_t) E|s*|^2: the size of the eps target
    eps_star2_se[t_r] = (s_r**2 * den.std() / math.sqrt(cfg.n_err)).item()
print(f"relative score error at t = 1: {rel[1]:.3g} +- {rel_se[1]:.2g}; at t = T: {rel[sched.T]:.2g} +- "
      f"{rel_se[sched.T]:.1g} (untrained network at t = T: {err0['score_mse'][-1] / err0['score_norm2'][-1]:.2f})")
# the target's size: near the data q_1 is eight bumps of variance 0.15^2 + (1 - abar_1) per axis, so
# E|eps*|^2 = (1 - abar_1) E|s*|^2 ~ 2 (1 - abar_1)/(0.15^2 + 1 - abar_1) (closed form for separated bumps)
eps_star2_1 = 2 * (1 - sched.alpha_bar[1]).item() / (0.15**2 + (1 - sched.alpha_bar[1]).item())
print(f"E|eps*|^2 at t = 1: {eps_star2[1]:.4f} (separated-bumps formula {eps_star2_1:.4f}); at t = T: "
      f"{eps_star2[sched.T]:.3f}")

# %%
# NBVAL_CHECK_OUTPUT
td.check_less("training lowers the eps-space score error (mean over t, trained < 3/4 of untrained)",
              err["eps_mse"].mean(), 0.75 * err0["eps_mse"].mean())
td.check_less("at t = T the true score is -x to within 1%", rel_gauss, 0.01)
td.check_less("R^2 of E[x0 | x_t] at t = T is below 0.01: x_T says almost nothing about x0", r2[-1], 0.01)
td.check_less("at t = 1 the network's score error is larger than the score itself (relative error - 4 s.e. > 1)",
              1.0, rel[1] - 4 * rel_se[1])
td.check_less("at t = T it is under 5 % of the score (relative error + 4 s.e.; an untrained network gives ~1)",
              rel[sched.T] + 4 * rel_se[sched.T], 0.05)
td.check("the eps target at t = 1 is tiny: E|eps*|^2 = 2(1-abar_1)/(0.15^2 + 1-abar_1) within 4 s.e.",
         torch.tensor(eps_star2[1]), torch.tensor(eps_star2_1), atol=4 * eps_star2_se[1], rtol=0)
td.check_less("at small t the network's eps-space error is larger between modes than on the data", eps_on, eps_off)

# %% [markdown]
# ## 6 · Sampling with the score: Langevin dynamics
#
# If we know $\nabla\log p$ but cannot sample $p$, we can run **(unadjusted) Langevin dynamics**: start anywhere and
# repeat
#
# $$x \leftarrow x + \frac{\delta}{2}\,\nabla\log p(x) + \sqrt{\delta}\,z,\qquad z\sim\mathcal N(0, I).$$
#
# The drift climbs the density, the noise keeps it from collapsing onto the modes. As $\delta\to 0$ and the number
# of steps $\to\infty$ the chain samples $p$. For finite $\delta$ there is a bias we can compute exactly for a
# Gaussian $\mathcal N(\mu, \sigma^2)$: one step is $x' = c\,x + (1-c)\mu + \sqrt{\delta} z$ with
# $c = 1 - \delta/(2\sigma^2)$, so the stationary variance solves $v = c^2 v + \delta$:
#
# $$v = \frac{\delta}{1 - c^2} = \frac{\sigma^2}{1 - \delta/(4\sigma^2)}\quad(\text{finite only for }\delta < 4\sigma^2),$$
#
# slightly larger than $\sigma^2$ (`td.score.ula_gaussian_variance`). First write one step yourself.
#
# ### Exercise 2 · One Langevin step

# %%
def my_langevin_step(x, score, step_size, noise):
    # Your code here: return x moved by half a step along the score, plus sqrt(step_size) times the noise.
    raise NotImplementedError


# %%
# NBVAL_CHECK_OUTPUT
gen_lv = torch.Generator().manual_seed(2)  # this exercise's own generator: each exercise cell runs on its own
langevin_cases = [(torch.randn(5, 2, generator=gen_lv), torch.randn(5, 2, generator=gen_lv),
                   delta, torch.randn(5, 2, generator=gen_lv)) for delta in (0.5, 0.1, 0.01, 1e-4, 2.0)]
td.exercises.check(my_langevin_step, td.score.langevin_step, langevin_cases, mistakes={
    "the drift is delta/2 times the score, not delta times it": lambda x, sc, d, z: x + d * sc + math.sqrt(d) * z,
    "the noise is sqrt(delta) z, not sqrt(2 delta) z (that pairs with a drift of delta)":
        lambda x, sc, d, z: x + 0.5 * d * sc + math.sqrt(2 * d) * z,
    "the noise is scaled by sqrt(delta), not delta": lambda x, sc, d, z: x + 0.5 * d * sc + d * z,
})

# %% [markdown]
# Now the package version, `td.score.langevin`, on a Gaussian with a deliberately large step ($\delta = \sigma^2$,
# so the bias is a visible 33 %): the chains' mean and variance should match $\mu$ and the formula for $v$.

# %%
mu_g, var_g, delta_g = torch.tensor([1.0, -2.0], dtype=torch.float64), 0.5, 0.5
n_lv = 40_000  # in every profile: cheap (2-D, 60 steps), and enough to tell v from its first-order approximation
chains = td.score.langevin(lambda z: td.score.gaussian_score(z, mu_g, var_g),
                           torch.zeros(n_lv, 2, dtype=torch.float64), delta_g, 60, generator=g)
v_pred = td.score.ula_gaussian_variance(var_g, delta_g)
z_mean = ((chains.mean(0) - mu_g) / math.sqrt(v_pred / n_lv)).abs().max()
z_var = ((chains.var(0) - v_pred) / (v_pred * math.sqrt(2 / n_lv))).abs().max()
v_first = var_g + delta_g / 4  # the first-order expansion of v in delta: 0.625 instead of 0.667
z_first = ((chains.var(0) - v_first) / (v_first * math.sqrt(2 / n_lv))).abs().min()
print(f"sample mean {chains.mean(0).numpy().round(3)} (mu = {mu_g.numpy()}), sample variance "
      f"{chains.var(0).numpy().round(3)} (predicted {v_pred:.3f}, sigma^2 = {var_g})")

# %%
# NBVAL_CHECK_OUTPUT
td.check_less("Langevin on N(mu, sigma^2): stationary mean = mu (|z| < 5)", z_mean, 5.0)
td.check_less("Langevin on N(mu, sigma^2): stationary variance = sigma^2 / (1 - delta/(4 sigma^2)) (|z| < 5)",
              z_var, 5.0)
td.check_less("... and not its first-order approximation sigma^2 + delta/4 (|z| > 5 in both coordinates)",
              -z_first, -5.0)

# %% [markdown]
# ### Plain Langevin cannot move mass between distant modes
#
# On our mixture the modes are $\approx 1.5$ apart and $0.15$ wide. A chain in one bump would have to climb
# through a valley where the density is $e^{-13}$ times smaller to reach the next one; with a step small enough to
# resolve a bump ($\delta = 0.1\sigma^2$) that essentially never happens. So each chain ends in the bump whose
# basin it *started* in, and the mode weights come from the starting distribution, not from $p$: here every mode
# gets about $1/8$, while the true weights run from $1/36$ to $8/36$. We measure the total-variation distance
# between the fraction of chains in each mode (`td.score.component_fractions`) and the true weights, next to its
# noise floor (the same distance for exact samples of the same size).

# %%
sigma_max, sigma_min = 4.0, 0.02
start = sigma_max * torch.randn(cfg.n_chains, 2, generator=g, dtype=torch.float64)
plain = td.score.langevin(lambda z: mix.score(z), start, 0.1 * 0.15**2, cfg.plain_steps, generator=g)
exact = mix.sample(cfg.n_chains, g, dtype=torch.float64)
tv_plain = td.score.total_variation(td.score.component_fractions(mix, plain), mix.weights)
tv_floor = sum(td.score.total_variation(td.score.component_fractions(mix, mix.sample(cfg.n_chains, g)), mix.weights)
               for _ in range(5)) / 5
print(f"TV(mode fractions, true weights): plain Langevin {tv_plain:.3f}; noise floor {tv_floor:.3f}")

# %% [markdown]
# ## 7 · Annealed Langevin dynamics
#
# Song & Ermon's fix (2019): run Langevin on a sequence of **noised** versions of the data,
# $p_{\sigma}(\tilde x) = \int p(x)\,\mathcal N(\tilde x; x, \sigma^2 I)\,dx$, from a large $\sigma_1$ (where all
# modes overlap and mass moves freely between them) down to a small $\sigma_L$ (where $p_{\sigma_L}\approx p$).
# Each level starts from the previous level's samples, which already have roughly the right mode weights. The step
# at level $i$ is $\alpha_i = \epsilon\,\sigma_i^2/\sigma_L^2$, i.e. a fixed fraction of that level's variance.
# This is the *variance-exploding* (VE) view, $\tilde x = x_0 + \sigma\varepsilon$; for the mixture its score is
# `mix.score(x, 1.0, sigma)`.

# %%
sigmas = td.score.geometric_sigmas(sigma_max, sigma_min, cfg.levels)
levels = td.utils.Trajectory(every=cfg.steps_per_level)  # the start and the state after each level
annealed = td.score.annealed_langevin(lambda z, sig: mix.score(z, 1.0, sig), sigmas, start,
                                      steps_per_level=cfg.steps_per_level, eps=0.3 * sigma_min**2,
                                      generator=g, callback=levels)
frac_annealed = td.score.component_fractions(mix, annealed)
tv_annealed = td.score.total_variation(frac_annealed, mix.weights)
sw = td.metrics.sliced_wasserstein(annealed, exact, generator=g)
sw_plain = td.metrics.sliced_wasserstein(plain, exact, generator=g)
sw_floor = td.metrics.noise_floor(td.metrics.sliced_wasserstein, lambda n: mix.sample(n, g), cfg.n_chains, generator=g)
print(f"noise levels: {sigmas.numpy().round(3)}")
print(f"TV(mode fractions, true weights): annealed {tv_annealed:.3f}, plain {tv_plain:.3f}, noise floor {tv_floor:.3f}")
print(f"sliced Wasserstein to exact samples: annealed {sw:.3f}, plain {sw_plain:.3f}, noise floor {sw_floor:.3f}")

# %%
# NBVAL_CHECK_OUTPUT
td.check_less("plain Langevin gets the mode weights wrong (TV > 3x its noise floor)", 3 * tv_floor, tv_plain)
td.check_less("annealed Langevin gets them right (TV < half of plain Langevin's)", tv_annealed, 0.5 * tv_plain)
td.check_less("annealed samples are closer to the mixture than plain ones (sliced W2)", sw, sw_plain)

# %%
fig, axes = plt.subplots(1, 4, figsize=(15, 3.6))
td.plotting.scatter2d(exact[:2000], ax=axes[0], title="exact samples", lim=3)
td.plotting.scatter2d(plain[:2000], ax=axes[1], title="plain Langevin", lim=3, color="C3")
td.plotting.scatter2d(annealed[:2000], ax=axes[2], title="annealed Langevin", lim=3, color="C2")
k = torch.arange(1, 9)
axes[3].bar(k - 0.27, mix.weights, 0.27, label="true weights", color="k")
axes[3].bar(k, td.score.component_fractions(mix, plain), 0.27, label="plain", color="C3")
axes[3].bar(k + 0.27, frac_annealed, 0.27, label="annealed", color="C2")
axes[3].set_xlabel("mode k")
axes[3].set_title("fraction of samples per mode")
axes[3].legend(fontsize=7)
fig.tight_layout()

# %%
show = [0, 1, cfg.levels // 3, cfg.levels // 2, 2 * cfg.levels // 3, cfg.levels]
fig, axes = plt.subplots(1, len(show), figsize=(2.6 * len(show), 2.8))
for ax, i in zip(axes, show):
    td.plotting.scatter2d(levels[i][:1500], ax=ax, lim=4.5, s=1)
    ax.set_title("start" if i == 0 else f"after sigma = {sigmas[i - 1]:.2f}", fontsize=8)
fig.tight_layout()

# %% [markdown]
# The strip above shows how it works: at $\sigma = 4$ the chains fill one wide blob, around $\sigma\approx 0.4$ a
# ring forms and mass flows along it, and by $\sigma \approx 0.14$ the modes are separated with their weights
# already fixed. Annealing is not exact either: the weights are settled at the intermediate levels where the
# modes start to separate, and a finite number of steps per level equilibrates them only approximately. In our
# standard-profile run the annealed TV sat at its noise floor; in trials with a smaller step
# ($\epsilon = 0.1\,\sigma_L^2$ instead of $0.3\,\sigma_L^2$) it was about twice the floor. Try fewer steps per
# level and watch it rise.
#
# ## 8 · The VE view and the VP schedule are the same thing
#
# DDPM's $x_t = \sqrt{\bar\alpha_t}x_0 + \sqrt{1-\bar\alpha_t}\varepsilon$ is a rescaled VE variable:
#
# $$\frac{x_t}{\sqrt{\bar\alpha_t}} = x_0 + \sigma_t\,\varepsilon,\qquad
#   \sigma_t^2 = \frac{1-\bar\alpha_t}{\bar\alpha_t}\quad\Big(\bar\alpha_t = \frac{1}{1+\sigma_t^2}\Big).$$
#
# Densities change under the rescaling $\tilde x = x_t/\sqrt{\bar\alpha_t}$ by a constant factor, so the scores are
# related by the chain rule, and with §3:
#
# $$\nabla\log p^{\rm VE}_{\sigma_t}(\tilde x) = \sqrt{\bar\alpha_t}\,\nabla\log p^{\rm VP}_t(\sqrt{\bar\alpha_t}\,\tilde x)
#   = -\frac{\varepsilon^*(x_t, t)}{\sigma_t}.$$
#
# The linear schedule spans $\sigma_1 = 0.01$ to $\sigma_T \approx 157$. We check the map on the mixture (VE score
# with $a = 1, s = \sigma_t$ versus the rescaled VP score), then run annealed Langevin **with the trained DDPM
# network** as the score model, at the noise levels of the schedule nearest to a geometric ladder
# (`td.score.timesteps_for_sigmas`, `td.score.ve_score_fn_from_eps_fn`).

# %%
t_map = torch.tensor([1, 10, 100, 300, 700, 1000])
sig_map = td.score.sigma_from_alpha_bar(sched.alpha_bar[t_map])
ve_exact = td.score.ve_score_fn_from_eps_fn(mix.eps_fn(sched), sched)
y = 3 * torch.randn(50, 2, generator=g, dtype=torch.float64)
ve_lhs = torch.stack([mix.score(y, 1.0, sig) for sig in sig_map.tolist()])
ve_rhs = torch.stack([ve_exact(y, sig) for sig in sig_map.tolist()])
print("sigma_t at t =", t_map.tolist(), ":", sig_map.numpy().round(3))

# %%
# NBVAL_CHECK_OUTPUT
td.check("sigma_t^2 = (1 - abar_t)/abar_t and abar_t = 1/(1 + sigma_t^2)", td.score.alpha_bar_from_sigma(sig_map),
         sched.alpha_bar[t_map], atol=1e-12)
td.check("VE score at sigma_t = sqrt(abar_t) x VP score at sqrt(abar_t) x", ve_lhs, ve_rhs, atol=1e-8, rtol=1e-6)

# %%
ts_ladder = torch.unique(td.score.timesteps_for_sigmas(sched, td.score.geometric_sigmas(sigma_max, 0.05, cfg.levels)))
sig_ladder = td.score.sigma_from_alpha_bar(sched.alpha_bar[ts_ladder]).flip(0)
from_net = td.score.annealed_langevin(td.score.ve_score_fn_from_eps_fn(net_eps, sched), sig_ladder, start,
                                      steps_per_level=cfg.steps_per_level, eps=0.3 * sig_ladder[-1].item()**2,
                                      generator=g)
ddpm_net = td.ddpm.sample(net, (cfg.n_chains, 2), sched, generator=g).cpu().double()  # runs on net's device


def report(name, x):
    tv = td.score.total_variation(td.score.component_fractions(mix, x), mix.weights)
    print(f"{name:38s} TV {tv:.3f}   sliced W2 {td.metrics.sliced_wasserstein(x, exact, generator=g):.3f}")


print(f"levels t = {ts_ladder.flip(0).tolist()}")
report("annealed Langevin, exact score", annealed)
report("annealed Langevin, trained network", from_net)
report("DDPM Algorithm 2, same trained network", ddpm_net)
print(f"noise floors: TV {tv_floor:.3f}, sliced W2 {sw_floor:.3f}")
fig, axes = plt.subplots(1, 3, figsize=(11, 3.6))
td.plotting.scatter2d(annealed[:2000], ax=axes[0], title="annealed, exact score", lim=3, color="C2")
td.plotting.scatter2d(from_net[:2000], ax=axes[1], title="annealed, network's score", lim=3, color="C1")
td.plotting.scatter2d(ddpm_net[:2000], ax=axes[2], title="DDPM sampler, same network", lim=3, color="C4")
fig.tight_layout()

# %% [markdown]
# The same network that DDPM's Algorithm 2 uses drives a score-based sampler without retraining: only the
# bookkeeping between $\varepsilon$, the score and $\sigma$ changes. Read the printed numbers honestly, though.
# In our standard-profile run, annealed Langevin with the *network's* score was clearly worse than with the exact
# score: the two lightest modes (weights $1/36$ and $2/36$, on the right) were starved, a TV of about 0.08 against
# 0.014. DDPM's own sampler with the very same network got the weights right (TV at the noise floor), though it
# leaves a visible haze of samples between the modes. Langevin runs many steps at each level, so it converges to the
# stationary law of *whatever field it is given*: the network's errors at intermediate $t$ (a relative error of
# about 10 % around $t\approx 20$–$100$ in the table of §5), which DDPM's sampler passes through once, are
# applied a hundred times per level and accumulate. We also stopped the ladder at $\sigma = 0.05$ rather than
# $0.02$, because the learned score is worst at the smallest noise levels.
#
# **Towards the SDE view (lesson 04).** Annealed Langevin alternates "lower the noise level" with "a few Langevin
# steps at that level". Let the levels become continuous and you get the reverse-time SDE, whose drift contains
# exactly this score; the Langevin steps survive as the *corrector* of Song et al.'s predictor–corrector samplers
# (2021). Tweedie's formula is what lets one network serve all of them: $\varepsilon$-prediction, score and
# denoiser are three names for one function.
#
# ### Exercise 3 · Find the bug
# A colleague converts a trained network's noise prediction into a score with the function below, and finds that
# Langevin dynamics driven by it runs *away* from the data. Find the bug (what should the score be at a point to
# the right of a single Gaussian mode?) and write the corrected `my_score_from_eps`.

# %%
def buggy_score_from_eps(eps, alpha_bar_t):
    return eps / (1 - alpha_bar_t) ** 0.5


def my_score_from_eps(eps, alpha_bar_t):
    # Your code here: the corrected buggy_score_from_eps (alpha_bar_t is a Python float).
    raise NotImplementedError


# %%
# NBVAL_CHECK_OUTPUT
gen_sc = torch.Generator().manual_seed(3)  # this exercise's own generator
score_cases = [(torch.randn(6, 2, generator=gen_sc, dtype=torch.float64), ab) for ab in (0.9, 0.5, 0.1, 0.01, 0.999)]
td.exercises.check(my_score_from_eps, td.convert.score_from_eps, score_cases, mistakes={
    "that is the buggy version: the score points against the noise, grad log p = -eps / sqrt(1 - alpha_bar)":
        buggy_score_from_eps,
    "divide by the standard deviation sqrt(1 - alpha_bar), not the variance": lambda e, ab: -e / (1 - ab),
})

# %% [markdown]
# ## Summary
#
# * The score $\nabla\log p$ ignores normalising constants; for $\mathcal N(\mu,\sigma^2 I)$ it is $-(x-\mu)/\sigma^2$.
# * Tweedie: $\mathbb E[x_0\mid x_t] = \big(x_t + (1-\bar\alpha_t)\nabla\log p(x_t)\big)/\sqrt{\bar\alpha_t}$, from
#   differentiating $p(x_t) = \int p(x_t\mid x_0)p(x_0)dx_0$; and $\varepsilon^* = -\sqrt{1-\bar\alpha_t}\nabla\log p(x_t)$.
# * The DDPM loss is a score-matching loss weighted by $1-\bar\alpha_t$; the learned score is poor at small $t$
#   (huge, sharp, little data between modes) and uninformative about $x_0$ at large $t$.
# * Langevin dynamics samples from a score but does not move mass between separated modes; annealing over noise
#   levels (VE view, $\sigma_t^2 = (1-\bar\alpha_t)/\bar\alpha_t$) fixes the mode weights.
#
# | idea | tinydiff |
# | --- | --- |
# | the score of a Gaussian; any score by autograd | `td.score.gaussian_score`, `td.score.score_autograd` |
# | Tweedie's $\mathbb E[x_0\mid x_t]$ | `td.score.tweedie_x0` |
# | $\varepsilon\leftrightarrow$ score | `td.convert.eps_from_score`, `td.convert.score_from_eps` |
# | a network's score error per $t$, three units | `td.score.score_error_per_t` |
# | Langevin: a step, a chain, its stationary variance | `td.score.langevin_step`, `langevin`, `ula_gaussian_variance` |
# | annealed Langevin; mode weights of samples | `td.score.annealed_langevin`, `geometric_sigmas`, `component_fractions` |
# | VE $\leftrightarrow$ VP | `td.score.sigma_from_alpha_bar`, `alpha_bar_from_sigma`, `ve_score_fn_from_eps_fn` |
#
# **Try next:** train the network longer and watch which $t$ improve; run plain Langevin for 10× more steps and
# see whether the weights move; make the modes wider (std 0.4) and see plain Langevin succeed.
