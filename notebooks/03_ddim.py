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
# # 03 · DDIM: the same model, fewer steps
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/tinydiff/tinydiff/blob/main/notebooks/03_ddim.ipynb)
#
# A DDPM samples with $T = 1000$ network calls. DDIM (Song, Meng & Ermon, 2020) keeps the *trained model*
# and changes only the sampler: the training loss only ever looked at the marginals $q(x_t\mid x_0)$, so any
# reverse process with the same marginals is just as compatible with it. Among those there is a
# deterministic one, and one that may skip most of the steps. This notebook follows the lecture's sections
# "Stochasticity" and "DDIM" (three slides): we derive the family of reverse steps, check on numbers that
# each member keeps the marginals, recover DDPM as one member, skip steps, run the sampler backwards as an
# encoder, and finally reproduce the DDIM paper's headline table (quality against number of steps and
# $\eta$) on an exact oracle and on digits.

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
import matplotlib.pyplot as plt
import torch

import tinydiff as td

cfg = td.profiles.choose(          # sizes for the active profile: quick (tests) / standard (CPU) / full (GPU)
    quick=dict(n_mc=50_000, n_table=2000, table_steps=(10, 50), floor_repeats=2,
               clf_steps=40, net_steps=100, net_hidden=128, net_depth=2, n_digits=64, digit_steps=(10, 50)),
    standard=dict(n_mc=200_000, n_table=2000, table_steps=(10, 20, 50, 100, 1000), floor_repeats=4,
                  clf_steps=300, net_steps=4000, net_hidden=384, net_depth=2, n_digits=600, digit_steps=(10, 20, 50, 100, 1000)),
    full=dict(n_mc=1_000_000, n_table=5000, table_steps=(10, 20, 50, 100, 1000), floor_repeats=8,
              clf_steps=1000, net_steps=30_000, net_hidden=512, net_depth=3, n_digits=600, digit_steps=(10, 20, 50, 100, 1000)),
)
dev = td.device()
g = td.seed_everything(0)
print(f"profile: {cfg.profile}, device: {dev}")

# %% [markdown]
# Two things are used throughout: DDPM's linear schedule with $T = 1000$, and the book's oracle, a Gaussian
# mixture whose noised marginals are known exactly. Its `eps_fn(sched)` is the *exact* noise predictor
# $\varepsilon^*(x_t, t) = -\sqrt{1-\bar\alpha_t}\,\nabla\log q_t(x_t)$, i.e. a perfectly trained network, so
# every difference between samplers below is the sampler's doing. Eight narrow components on a ring make
# the sampler's errors visible.

# %%
sched = td.NoiseSchedule.linear(T=1000)
ring = td.data.GaussianMixture.ring(8, radius=2.0, std=0.05)
eps_star = ring.eps_fn(sched)
print(sched, ring)

# %% [markdown]
# ## 1. Stochasticity: what a DDPM step really is
#
# Lesson 02's reverse step
# $x_{t-1} = \frac{1}{\sqrt{\alpha_t}}\big(x_t - \frac{\beta_t}{\sqrt{1-\bar\alpha_t}}\varepsilon_\theta\big) + \sigma_t z$
# is a *sample* from the forward posterior $q(x_{t-1}\mid x_t, x_0)$, with the unknown $x_0$ replaced by the network's guess
# $\hat x_0 = \big(x_t - \sqrt{1-\bar\alpha_t}\,\varepsilon_\theta(x_t,t)\big)/\sqrt{\bar\alpha_t}$.
# So a sampler needs exactly one ingredient: a conditional $p(x_{t-1}\mid x_t, x_0)$ to plug $\hat x_0$ into.
# Let us confirm the claim on numbers before we look for other such conditionals.

# %%
x0 = ring.sample(512, g)
t = torch.randint(2, sched.T + 1, (512,), generator=g)
xt = td.ddpm.q_sample(x0, t, torch.randn(512, 2, generator=g), sched)
eps_hat = eps_star(xt, t)
x0_hat = td.convert.x0_from_eps(xt, eps_hat, sched.alpha_bar[t])
posterior_mean, _ = td.ddpm.q_posterior(x0_hat, xt, t, sched)

# %%
# NBVAL_CHECK_OUTPUT
td.check("DDPM's model mean = mean of q(x_{t-1} | x_t, x0_hat)", td.ddpm.p_mean(xt, eps_hat, t, sched),
         posterior_mean, atol=1e-4)

# %% [markdown]
# ## 2. A whole family of reverse steps
#
# Training only used $q(x_t\mid x_0) = \mathcal N(\sqrt{\bar\alpha_t}x_0, (1-\bar\alpha_t)I)$, never the
# one-step $q(x_t\mid x_{t-1})$. So drop the Markov chain and ask for *any* Gaussian
#
# $$p(x_{t-1}\mid x_t, x_0) = \mathcal N\big(\kappa_t x_t + \lambda_t x_0,\ \sigma_t^2 I\big)$$
#
# that is consistent with the marginals (the lecture's condition $(**)$):
# $\int p(x_{t-1}\mid x_t,x_0)\,q(x_t\mid x_0)\,dx_t = q(x_{t-1}\mid x_0)$.
#
# **Solving for $\kappa_t, \lambda_t$.** Given $x_0$, write $x_t = \sqrt{\bar\alpha_t}x_0 + \sqrt{1-\bar\alpha_t}\,\varepsilon$
# and $x_{t-1} = \kappa_t x_t + \lambda_t x_0 + \sigma_t z$ with independent standard normals $\varepsilon, z$:
#
# $$x_{t-1} = (\kappa_t\sqrt{\bar\alpha_t} + \lambda_t)\,x_0 + \kappa_t\sqrt{1-\bar\alpha_t}\,\varepsilon + \sigma_t z .$$
#
# This is Gaussian with mean $(\kappa_t\sqrt{\bar\alpha_t}+\lambda_t)x_0$ and variance
# $\kappa_t^2(1-\bar\alpha_t) + \sigma_t^2$. Matching
# $q(x_{t-1}\mid x_0) = \mathcal N(\sqrt{\bar\alpha_{t-1}}x_0, (1-\bar\alpha_{t-1})I)$:
#
# $$\kappa_t^2(1-\bar\alpha_t) + \sigma_t^2 = 1-\bar\alpha_{t-1}
#   \;\Rightarrow\; \kappa_t = \frac{\sqrt{1-\bar\alpha_{t-1}-\sigma_t^2}}{\sqrt{1-\bar\alpha_t}},$$
#
# $$\kappa_t\sqrt{\bar\alpha_t} + \lambda_t = \sqrt{\bar\alpha_{t-1}}
#   \;\Rightarrow\; \lambda_t = \sqrt{\bar\alpha_{t-1}} - \sqrt{\bar\alpha_t}\,\kappa_t .$$
#
# (The lecture writes $\bar\beta_t = 1-\bar\alpha_t$.) Two equations, three unknowns: $\sigma_t$ is free, as long as
# $0 \le \sigma_t^2 \le 1-\bar\alpha_{t-1}$. Nothing used $t-1$: the same algebra works from $t$ to any
# earlier $s < t$, which is what makes skipping possible (§5). Here are the two coefficients by hand and
# in tinydiff, for one step and several arbitrary $\sigma_t$:

# %%
t_, s_ = 400, 399
ab_t, ab_s = sched.alpha_bar[t_], sched.alpha_bar[s_]
sigmas = torch.tensor([0.0, 0.2, 0.5, 0.8, 0.99], dtype=torch.float64) * (1 - ab_s).sqrt()  # up to the largest allowed
kappa_hand = (1 - ab_s - sigmas**2).sqrt() / (1 - ab_t).sqrt()
lambda_hand = ab_s.sqrt() - ab_t.sqrt() * kappa_hand
for s, k, lam in zip(sigmas, kappa_hand, lambda_hand):
    print(f"sigma = {s:.4f}: kappa = {k:.5f}, lambda = {lam:+.5f}")

# %%
# NBVAL_CHECK_OUTPUT
td.check("kappa_t by hand = td.ddim.kappa", kappa_hand, td.ddim.kappa(t_, s_, sigmas, sched), atol=1e-12)
td.check("lambda_t by hand = td.ddim.lambda_", lambda_hand, td.ddim.lambda_(t_, s_, sigmas, sched), atol=1e-12)
mean_coef, var = td.ddim.marginal_coefs(t_, s_, sigmas, sched)
td.check("consistency (true for any kappa, by the definition of lambda): kappa sqrt(ab_t) + lambda = sqrt(ab_{t-1})",
         mean_coef,
         ab_s.sqrt().expand(5), atol=1e-12)
td.check("marginal condition, variance: kappa^2 (1 - ab_t) + sigma^2 = 1 - ab_{t-1}", var,
         (1 - ab_s).expand(5), atol=1e-12)

# %% [markdown]
# **Exactly, for Gaussian data.** If $x_0\sim\mathcal N(m, c^2 I)$, then $x_{t-1}$ built from the family is
# a sum of three independent Gaussians, with mean $(\kappa_t\sqrt{\bar\alpha_t}+\lambda_t)m$ and variance
# $(\kappa_t\sqrt{\bar\alpha_t}+\lambda_t)^2c^2 + \kappa_t^2(1-\bar\alpha_t) + \sigma_t^2$. The true marginal
# is $\mathcal N(\sqrt{\bar\alpha_{t-1}}m,\ \bar\alpha_{t-1}c^2 + 1-\bar\alpha_{t-1})$. We check it on a
# *skip* ($t = 600 \to s = 350$) with three arbitrary $\sigma$:

# %%
m, c = 0.7, 1.9
t_, s_ = 600, 350
ab_t, ab_s = sched.alpha_bar[t_], sched.alpha_bar[s_]
sig = torch.tensor([0.0, 0.3, 0.95], dtype=torch.float64) * (1 - ab_s).sqrt()
k, lam = td.ddim.kappa(t_, s_, sig, sched), td.ddim.lambda_(t_, s_, sig, sched)
family_mean = (k * ab_t.sqrt() + lam) * m
family_var = (k * ab_t.sqrt() + lam) ** 2 * c**2 + k**2 * (1 - ab_t) + sig**2

# %%
# NBVAL_CHECK_OUTPUT
td.check("Gaussian data: mean of x_s from the family = sqrt(ab_s) m", family_mean, (ab_s.sqrt() * m).expand(3))
td.check("Gaussian data: variance of x_s from the family = ab_s c^2 + 1 - ab_s", family_var,
         (ab_s * c**2 + 1 - ab_s).expand(3))

# %% [markdown]
# **By Monte Carlo, for the mixture.** Draw $x_0$ from the ring, $x_t\sim q(x_t\mid x_0)$, then $x_s$ from
# the family with three different $\sigma$, and compare with fresh draws of $q(x_s)$: the exact moments of the
# noised mixture, and the mean log-density under the *exact* noised density (a likelihood check that also sees
# the shape, not only two moments). We take $t = 120 \to s = 60$, where the ring is still visible.

# %%
n_mc = cfg.n_mc
x0 = ring.sample(n_mc, g, dtype=torch.float64)
t_, s_ = 120, 60
ab_s = sched.alpha_bar[s_]
xt = td.ddpm.q_sample(x0, t_, torch.randn(n_mc, 2, generator=g, dtype=torch.float64), sched)
fresh = td.ddpm.q_sample(x0, s_, torch.randn(n_mc, 2, generator=g, dtype=torch.float64), sched)
a, sd = ab_s.sqrt(), (1 - ab_s).sqrt()
exact_mean = a * ring.mean()
exact_cov = ab_s * ring.covariance() + (1 - ab_s) * torch.eye(2, dtype=torch.float64)
lp_fresh = ring.log_prob(fresh, a, sd).mean().item()
family = {}
for frac in (0.0, 0.5, 1.0):
    sigma_s = frac * (1 - ab_s).sqrt()
    family[frac] = td.ddim.family_sample(xt, x0, t_, s_, sigma_s, sched,
                                         torch.randn(n_mc, 2, generator=g, dtype=torch.float64))
    e_mean, e_cov = td.metrics.gaussian_fit_error(family[frac], exact_mean, exact_cov)
    lp = ring.log_prob(family[frac], a, sd).mean().item()
    print(f"sigma = {frac:.1f} x max: |mean error| {e_mean:.4f}, |cov error| {e_cov:.4f}, "
          f"mean log q_s {lp:.4f} (fresh draws of q_s: {lp_fresh:.4f})")

# %%
# NBVAL_CHECK_OUTPUT
for frac, xs in family.items():
    e_mean, e_cov = td.metrics.gaussian_fit_error(xs, exact_mean, exact_cov)
    td.check_less(f"mixture, sigma = {frac} x max: moments of x_s match q(x_s)", max(e_mean, e_cov), 0.05)
    lp = ring.log_prob(xs, a, sd).mean().item()
    td.check_less(f"mixture, sigma = {frac} x max: mean log q_s(x_s) matches fresh draws", abs(lp - lp_fresh), 0.05)

# %%
fig, axes = plt.subplots(1, 4, figsize=(14, 3.6))
for ax, (frac, xs) in zip(axes, family.items()):
    td.plotting.scatter2d(xs[:3000], ax=ax, title=f"family, sigma = {frac:.1f} x max")
td.plotting.scatter2d(fresh[:3000], ax=axes[3], title="fresh draws of q(x_60)", c="C1")
plt.tight_layout()
plt.show()

# %% [markdown]
# Every $\sigma$ gives the same cloud. What differs is how much of $x_{t-1}$ comes from $x_t$
# ($\kappa_t$) and how much is fresh noise ($\sigma_t$): at $\sigma_t = 0$ the step is a deterministic
# function of $(x_t, x_0)$. (The lecture's remark: by Bayes, each member also defines a forward process
# $q(x_t\mid x_{t-1}, x_0)$, which is no longer Markov — hence "non-Markovian".)
#
# ## 3. The three choices of $\sigma_t$ and the $\eta$ knob
#
# The lecture lists three choices:
#
# | name | $\sigma_t^2$ | what it is |
# | --- | --- | --- |
# | DDPM | $\tilde\beta_t = \frac{1-\bar\alpha_{t-1}}{1-\bar\alpha_t}\beta_t$ | the posterior: DDPM's $\kappa_t, \lambda_t$ |
# | DDIM | $0$ | deterministic: an *implicit* model, $x_0$ a function of $x_T$ |
# | larger covariance | $\beta_t$ | DDPM's other variance; inside the family only where $\beta_t \le 1-\bar\alpha_{t-1}$ |
#
# (The third row is *not* the DDIM paper's $\hat\sigma$ sampler, although the two share $\sigma_t^2 = \beta_t$:
# $\hat\sigma$ keeps DDPM's posterior mean and adds the larger noise on top, so it leaves the family. §7 measures both.)
#
# The DDIM paper interpolates with one number, $\sigma_t(\eta) = \eta\,\sqrt{\tilde\beta_t}$ (for skips, with
# $\bar\alpha_{t-1}$ replaced by $\bar\alpha_s$): $\eta = 0$ is DDIM, $\eta = 1$ is DDPM, and
# $\sigma_t^2 = \beta_t$ is $\eta_t = \sqrt{(1-\bar\alpha_t)/(1-\bar\alpha_{t-1})} > 1$.

# %%
ts = torch.arange(1, sched.T + 1)
sig_ddpm = td.ddim.sigma(ts, ts - 1, sched, eta=1.0)
sig_beta = td.ddim.sigma_beta(ts, ts - 1, sched)
bound = (1 - sched.alpha_bar[ts - 1]).sqrt()
c0, ct = td.ddpm.posterior_mean_coefs(sched)
print("first t where beta_t fits inside the family:", int(ts[sig_beta <= bound][0]))
try:
    td.ddim.kappa(1, 0, sig_beta[0], sched)
except ValueError as err:
    print("sigma^2 = beta_1 at t = 1:", err)

# %%
# NBVAL_CHECK_OUTPUT
td.check("eta = 1: sigma_t^2 = DDPM's posterior variance tilde beta_t", sig_ddpm**2, sched.posterior_variance[1:],
         atol=1e-15)
td.check("eta = 1: kappa_t = DDPM's coefficient of x_t", td.ddim.kappa(ts, ts - 1, sig_ddpm, sched), ct[1:],
         atol=1e-12)
td.check("eta = 1: lambda_t = DDPM's coefficient of x_0", td.ddim.lambda_(ts, ts - 1, sig_ddpm, sched), c0[1:],
         atol=1e-12)
td.check("sigma_t^2 = beta_t is eta_t = sqrt((1 - ab_t) / (1 - ab_{t-1})) times DDPM's sigma_t", sig_beta[2:],
         ((1 - sched.alpha_bar[ts[2:]]) / (1 - sched.alpha_bar[ts[2:] - 1])).sqrt() * sig_ddpm[2:], atol=1e-12)

# %%
fig, ax = plt.subplots(figsize=(6, 3.6))
ax.plot(ts, bound, "k--", lw=1, label=r"largest allowed: $\sqrt{1-\bar\alpha_{t-1}}$")
ax.plot(ts, sig_beta, label=r"$\sigma_t^2=\beta_t$")
ax.plot(ts, sig_ddpm, label=r"$\sigma_t^2=\tilde\beta_t$ ($\eta=1$)")
ax.plot(ts, 0.5 * sig_ddpm, label=r"$\eta=0.5$")
ax.plot(ts, 0 * sig_ddpm, label=r"$\eta=0$ (DDIM)")
ax.set_xscale("log")
ax.set_xlabel("t")
ax.set_ylabel(r"$\sigma_t$")
ax.legend(fontsize=8)
ax.set_title("noise per step for each choice")
plt.show()

# %% [markdown]
# **$\eta = 1$ on the full sequence is DDPM, sample for sample.** With the same $x_T$ and the same noise draws
# (tinydiff draws them in the same order in both samplers), DDIM with $\eta=1$ and all $T$ steps must
# reproduce lesson 02's ancestral sampler to rounding error:

# %%
x_T = torch.randn(256, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
ddpm_samples = td.ddpm.sample(eps_star, (256, 2), sched, x_T=x_T, generator=torch.Generator().manual_seed(2))
ddim_eta1 = td.ddim.sample(eps_star, (256, 2), sched, sched.T, eta=1.0, x_T=x_T,
                           generator=torch.Generator().manual_seed(2))
print(f"largest difference: {(ddpm_samples - ddim_eta1).abs().max().item():.2e}")

# %%
# NBVAL_CHECK_OUTPUT
td.check("DDIM with eta = 1 on all T steps = DDPM ancestral sampling (same noise)", ddim_eta1, ddpm_samples,
         atol=1e-8)

# %% [markdown]
# ## 4. The DDIM update, written out
#
# Plugging $\hat x_0$ into the family and using $x_t = \sqrt{\bar\alpha_t}\hat x_0 + \sqrt{1-\bar\alpha_t}\,\varepsilon_\theta$
# gives the DDIM paper's eq. (12), which reads as three named parts:
#
# $$x_{s} = \underbrace{\sqrt{\bar\alpha_{s}}\,\hat x_0}_{\text{predicted } x_0}
#   + \underbrace{\sqrt{1-\bar\alpha_{s}-\sigma_t^2}\;\varepsilon_\theta(x_t,t)}_{\text{direction pointing to } x_t}
#   + \underbrace{\sigma_t z}_{\text{fresh noise}},\qquad
#   \sigma_t(\eta) = \eta\sqrt{\tfrac{1-\bar\alpha_s}{1-\bar\alpha_t}}\sqrt{1-\tfrac{\bar\alpha_t}{\bar\alpha_s}} .$$
#
# Here is a 10-step deterministic sampler written by hand in that form, against `td.ddim.sample` (which
# uses the $\kappa_t x_t + \lambda_t\hat x_0$ form: the two agree only if the algebra above is right).

# %% [markdown]
# ### The same thing in tinydiff

# %%
steps10 = td.ddim.timesteps(sched.T, 10, "leading")   # 901, 801, ..., 1
x = x_T.clone()
for t_int, s_int in zip(steps10.tolist(), steps10[1:].tolist() + [0]):
    eps = eps_star(x, torch.full((x.shape[0],), t_int))
    ab_t, ab_s = sched.alpha_bar[t_int], sched.alpha_bar[s_int]
    x0_pred = (x - (1 - ab_t).sqrt() * eps) / ab_t.sqrt()
    x = ab_s.sqrt() * x0_pred + (1 - ab_s).sqrt() * eps          # eta = 0: no noise
by_hand = x
in_tinydiff = td.ddim.sample(eps_star, x_T.shape, sched, 10, eta=0.0, x_T=x_T)

# %%
# NBVAL_CHECK_OUTPUT
td.check("10-step DDIM by hand = td.ddim.sample", by_hand, in_tinydiff, atol=1e-10)

# %% [markdown]
# The unit tests (`tests/test_ddim.py`) compare `td.ddim.step` with diffusers' `DDIMScheduler.step` for
# several $\eta$, all three spacings and both `set_alpha_to_one` settings, with the same $\varepsilon$ and
# `variance_noise`. Conventions to keep in mind when reading diffusers: its index $k$ is our $t-1$; its previous
# step is always $k - \lfloor T/n\rfloor$, whatever the spacing; and its last step uses $\bar\alpha = 1$
# (our $t_\text{prev} = 0$) only with `set_alpha_to_one=True`, otherwise its own $\bar\alpha$ at $k=0$.
#
# ## 5. Skipping steps
#
# Because the family works from any $t$ to any $s<t$, we may sample on a sub-sequence
# $\tau_S > \dots > \tau_1$ of $1..T$ and jump from $\tau_1$ straight to $x_0$ ($\bar\alpha_0 = 1$).
# How to choose $\tau$ is a convention; three are common (the names are diffusers'):

# %%
for spacing in td.ddim.SPACINGS:
    print(f"{spacing:9s}", td.ddim.timesteps(sched.T, 10, spacing).tolist())

# %% [markdown]
# `leading` (the DDIM paper's "linear" $\tau_i = ci$, diffusers' default) never visits $t = T$: with 10 steps
# it starts at $t = 901$ from pure noise, although $x_{901}$ is not quite pure noise. `trailing` starts at $T$.
# The skipped chain in pictures, on the oracle, for $\eta = 0$ and $\eta = 1$:

# %%
fig, axes = plt.subplots(1, 3, figsize=(12, 4))
x_start = torch.randn(400, 2, generator=torch.Generator().manual_seed(3))
for ax, eta in zip(axes[:2], (0.0, 1.0)):
    traj = td.utils.Trajectory()
    out = td.ddim.sample(eps_star, (400, 2), sched, 10, eta=eta, x_T=x_start, callback=traj,
                         generator=torch.Generator().manual_seed(4))
    td.plotting.trajectories2d(traj, ax=ax, n_show=40, title=f"10 steps, eta = {eta}")
td.plotting.scatter2d(td.ddim.sample(eps_star, (4000, 2), sched, 10, generator=torch.Generator().manual_seed(5)),
                      ax=axes[2], title="4000 samples, 10 steps, eta = 0")
plt.tight_layout()
plt.show()

# %% [markdown]
# With $\eta = 0$ each path is smooth: the sampler follows a deterministic flow from noise to data (lesson 04
# identifies it as a discretised probability-flow ODE). With $\eta = 1$ each jump re-injects noise, and with only
# ten jumps there is too little time to remove it: the samples end up spread around the modes.
#
# The three spacings at 10 steps, measured with the kernel MMD (next section explains the metric):

# %%
ref_small = ring.sample(cfg.n_table, torch.Generator().manual_seed(6))
for spacing in td.ddim.SPACINGS:
    xs = td.ddim.sample(eps_star, (cfg.n_table, 2), sched, 10, spacing=spacing, generator=torch.Generator().manual_seed(7))
    print(f"{spacing:9s} 10 steps, eta = 0: MMD^2 = {td.metrics.mmd_rbf(xs, ref_small, bandwidth=0.1):.5f}")

# %% [markdown]
# ## 6. Deterministic DDIM as an encoder
#
# With $\sigma = 0$ a step is a deterministic map
# $x_s = \sqrt{\bar\alpha_s}\hat x_0 + \sqrt{1-\bar\alpha_s}\,\varepsilon_\theta$.
# Running it *upwards* (from $s$ to $t > s$) maps data to noise:
# $x_t = \sqrt{\bar\alpha_t}\hat x_0(x_s) + \sqrt{1-\bar\alpha_t}\,\varepsilon_\theta$. The only approximation is
# that we must evaluate $\varepsilon_\theta$ at the point we have, $x_s$, instead of at the unknown $x_t$;
# the error this causes shrinks with the step size. `td.ddim.encode` does this along the same grid that
# `td.ddim.sample` uses to come back:

# %%
x0 = ring.sample(256, torch.Generator().manual_seed(8))
labels = ring.component_posterior(x0).argmax(1)
round_trip = {}
for n in (10, 50, 200):
    latent = td.ddim.encode(eps_star, x0, sched, n)
    back = td.ddim.sample(eps_star, x0.shape, sched, n, x_T=latent)
    round_trip[n] = (back - x0).norm(dim=1).mean().item()
    print(f"{n:4d} steps: mean |decode(encode(x0)) - x0| = {round_trip[n]:.4f}  (component std 0.05)")
latent = td.ddim.encode(eps_star, ring.sample(4000, torch.Generator().manual_seed(9)), sched, 200)
print("latent mean, covariance error vs N(0, I):", td.metrics.gaussian_fit_error(latent, torch.zeros(2), torch.eye(2)))

# %%
# NBVAL_CHECK_OUTPUT
td.check_less("round trip x0 -> x_T -> x0 with 200 steps: error below 0.02", round_trip[200], 0.02)
td.check_less("round-trip error shrinks with more steps (200 vs 10)", round_trip[200], round_trip[10] / 3)
e_mean, e_cov = td.metrics.gaussian_fit_error(latent, torch.zeros(2), torch.eye(2))
td.check_less("the encoder maps the data to ~N(0, I)", max(e_mean, e_cov), 0.15)

# %%
lat200 = td.ddim.encode(eps_star, x0, sched, 200)
fig, axes = plt.subplots(1, 2, figsize=(8, 4))
axes[0].scatter(x0[:, 0], x0[:, 1], c=labels, cmap="tab10", s=6)
axes[0].set_title("data x0 (colour = component)")
axes[1].scatter(lat200[:, 0], lat200[:, 1], c=labels, cmap="tab10", s=6)
axes[1].set_title("DDIM latent x_T = encode(x0)")
for ax in axes:
    ax.set_aspect("equal")
plt.tight_layout()
plt.show()

# %% [markdown]
# Each mode of the data becomes a wedge of the Gaussian: the deterministic sampler carves the noise space into
# regions, one per mode, and the encoder finds the region a data point came from. This is what makes DDIM
# latents usable for interpolation and image editing.
#
# ## 7. The DDIM paper's table, on the exact oracle
#
# The paper's Table 1 reports FID for $S \in \{10, 20, 50, 100, 1000\}$ steps and several $\eta$. Here the
# denoiser is exact, so the table measures the *sampler alone*. We measure the squared kernel MMD
# (`td.metrics.mmd_rbf`, Gaussian kernel of width 0.1, about two component widths) between the samples and fresh
# data. It is an unbiased estimate, so two samples of the same distribution give values scattered around 0:
# that scatter is the **noise floor**, and a cell within it is indistinguishable from exact sampling.

# %%
n_tab, bw = cfg.n_table, 0.1
ref = ring.sample(n_tab, torch.Generator().manual_seed(10))
floor = torch.tensor([td.metrics.mmd_rbf(ring.sample(n_tab, torch.Generator().manual_seed(100 + i)), ref,
                                         bandwidth=bw) for i in range(cfg.floor_repeats)])
etas = (0.0, 0.5, 1.0)
table = td.ddim.sweep(eps_star, (n_tab, 2), sched, cfg.table_steps, etas,
                      lambda xs: td.metrics.mmd_rbf(xs, ref, bandwidth=bw), seed=11)
print(f"noise floor (data vs data, {cfg.floor_repeats} draws): {floor.mean():.5f} +- {floor.std():.5f}")
print("MMD^2 x 1000   " + "".join(f"{n:>9d}" for n in cfg.table_steps))
for eta in etas:
    print(f"eta = {eta:<10}" + "".join(f"{1000 * table[(n, eta)]:9.3f}" for n in cfg.table_steps))

# %%
fig, ax = plt.subplots(figsize=(6, 4))
for eta in etas:
    ax.plot(cfg.table_steps, [table[(n, eta)] for n in cfg.table_steps], "o-", label=f"eta = {eta}")
ax.axhspan(float(floor.mean() - 2 * floor.std()), float(floor.mean() + 2 * floor.std()), color="grey", alpha=0.3,
           label="noise floor (+-2 sd)")
ax.set_xscale("log")
ax.set_xlabel("number of sampling steps S")
ax.set_ylabel("MMD^2 to fresh data")
ax.set_title("exact denoiser: quality vs steps")
ax.legend()
plt.show()

# %%
# NBVAL_CHECK_OUTPUT
td.check_less("oracle, 50 steps: deterministic DDIM (eta = 0) beats DDPM-like eta = 1",
              table[(50, 0.0)], table[(50, 1.0)])
td.check_less("oracle, eta = 0: 50 steps beat 10 steps", table[(50, 0.0)], table[(10, 0.0)])

# %% [markdown]
# **Two samplers with $\sigma_t^2 = \beta_t$.** For a jump $t\to s$ the matching $\beta$ is $1-\bar\alpha_t/\bar\alpha_s$.
# The *family member* (§3) uses it as its $\sigma_t^2$ (clipped to $1-\bar\alpha_s$ where it does not fit) and shrinks
# the direction term to $\sqrt{1-\bar\alpha_s-\sigma_t^2}\,\hat\varepsilon$, so its marginals stay right. The DDIM
# paper's $\hat\sigma$ row comes from a different sampler (in the authors' code, `ddpm_steps`): DDPM's posterior
# mean for the jump, $\tilde\mu(x_t, \hat x_0)$, *plus* noise of variance $1-\bar\alpha_t/\bar\alpha_s$ — the mean
# already carries the right spread, and the noise comes on top. Both by hand, at 10 steps, on the same oracle:

# %%
steps_b = td.ddim.timesteps(sched.T, 10).tolist() + [0]
x_fam = torch.randn(n_tab, 2, generator=torch.Generator().manual_seed(11), dtype=torch.float64)
x_hat = x_fam.clone()
g_b = torch.Generator().manual_seed(12)
for t_b, s_b in zip(steps_b[:-1], steps_b[1:]):
    ab_t, ab_s = sched.alpha_bar[t_b], sched.alpha_bar[s_b]
    beta_b = 1 - ab_t / ab_s
    z = torch.randn(n_tab, 2, generator=g_b, dtype=torch.float64)
    for which in ("family", "paper"):
        x = x_fam if which == "family" else x_hat
        e = eps_star(x, torch.full((n_tab,), t_b))
        x0_hat = (x - (1 - ab_t).sqrt() * e) / ab_t.sqrt()
        if which == "family":
            sig2 = torch.minimum(beta_b, 1 - ab_s)
            x_fam = ab_s.sqrt() * x0_hat + (1 - ab_s - sig2).sqrt() * e + sig2.sqrt() * z
        else:
            mean = ab_s.sqrt() * beta_b / (1 - ab_t) * x0_hat + (1 - beta_b).sqrt() * (1 - ab_s) / (1 - ab_t) * x
            x_hat = mean + (beta_b.sqrt() * z if s_b > 0 else 0.0)
mmd_beta = {"family member, sigma^2 = beta": td.metrics.mmd_rbf(x_fam, ref, bandwidth=bw),
            "DDIM paper's sigma-hat": td.metrics.mmd_rbf(x_hat, ref, bandwidth=bw)}
for k, v in mmd_beta.items():
    print(f"10 steps, {k:30s}: MMD^2 x 1000 = {1000 * v:.2f}   (eta = 1: {1000 * table[(10, 1.0)]:.2f})")

# %%
# NBVAL_CHECK_OUTPUT
td.check_less("10 steps: the paper's sigma-hat is more than 5x worse than the family member with sigma^2 = beta",
              5 * mmd_beta["family member, sigma^2 = beta"], mmd_beta["DDIM paper's sigma-hat"])

# %% [markdown]
# ## 8. The same table on digits, with a trained network
#
# Now a real model, trained with lesson 02's loss on the 8×8 digits and sampled with DDIM. To afford the whole
# table (3 × 1,180 network calls on 600 images) on a CPU, the network is tinydiff's residual MLP on the 64
# pixels, which is about ten times cheaper per call than the small UNet; the sampler does not care what the
# network is. Quality is measured like FID: a small classifier trained on the same digits gives features
# (`Classifier.features`, its pooled last layer), and the Fréchet distance between the Gaussian fits of the
# features of generated and real images (`td.metrics.frechet_distance`) is the score. The real digits are
# split: 1,197 images are the reference; the other 600 (or fewer in small profiles) give the noise floor, the
# score of a second set of real images. (They are not held out from training: the denoiser and the classifier
# were trained on all 1,797 digits. The floor measures the metric's own scatter between real sets, not
# generalisation.)

# %%
digits, labels = td.data.load_digits(8)
clf = td.models.Classifier(in_channels=1, num_classes=10, base_channels=16)
clf_fit = td.train.fit(clf, lambda m, b: torch.nn.functional.cross_entropy(m(b[0]), b[1]), (digits, labels),
                       steps=cfg.clf_steps, batch_size=128, lr=2e-3, ema_decay=None, desc="feature classifier",
                       shipped="03_feature_classifier")
clf = clf_fit.model.eval()
perm = torch.randperm(len(digits), generator=torch.Generator().manual_seed(12))
reference, held_out = digits[perm[600:]], digits[perm[:600]]
with torch.no_grad():
    acc = (clf(reference.to(dev)).argmax(1).cpu() == labels[perm[600:]]).float().mean().item()
    ref_feats = clf.features(reference.to(dev)).cpu()
    floor_fd = td.metrics.frechet_distance(clf.features(held_out[: cfg.n_digits].to(dev)).cpu(), ref_feats)
print(f"classifier accuracy {acc:.3f}; Fréchet distance of {min(cfg.n_digits, 600)} real digits (noise floor): "
      f"{floor_fd:.3f}")

# %%
net = td.models.MLPDenoiser(dim=64, hidden=cfg.net_hidden, depth=cfg.net_depth)
print(f"denoiser with {sum(p.numel() for p in net.parameters()):,} parameters")
net_fit = td.train.fit(net, lambda m, x: td.ddpm.loss(m, x, sched), digits.flatten(1), steps=cfg.net_steps,
                       batch_size=128, lr=1e-3, warmup=100, ema_decay=0.995, desc="DDPM loss (digits)",
                       shipped="03_ddpm_loss_digits")
eps_digits = net_fit.sampler_model

# %%
as_images = lambda xs: xs.reshape(-1, 1, 8, 8).clamp(-1, 1)
fd_to_real = lambda xs: td.metrics.frechet_distance(clf.features(as_images(xs)).detach().cpu(), ref_feats)
digit_table = td.ddim.sweep(eps_digits, (cfg.n_digits, 64), sched, cfg.digit_steps, etas, fd_to_real, seed=13)
print(f"Fréchet distance (noise floor {floor_fd:.3f})")
print("              " + "".join(f"{n:>9d}" for n in cfg.digit_steps))
for eta in etas:
    print(f"eta = {eta:<8}" + "".join(f"{digit_table[(n, eta)]:9.3f}" for n in cfg.digit_steps))

# %% [markdown]
# How much of a difference is real? The same cell (20 steps, $\eta = 1$) with three different seeds:

# %%
spread = [fd_to_real(td.ddim.sample(eps_digits, (cfg.n_digits, 64), sched, 20, eta=1.0,
                                    generator=torch.Generator().manual_seed(20 + k))) for k in range(3)]
print("20 steps, eta = 1, three seeds:", ", ".join(f"{v:.3f}" for v in spread),
      f"(scatter +-{(max(spread) - min(spread)) / 2:.3f})")

# %%
fig, axes = plt.subplots(1, 3, figsize=(14, 4.5))
for eta in etas:
    axes[0].plot(cfg.digit_steps, [digit_table[(n, eta)] for n in cfg.digit_steps], "o-", label=f"eta = {eta}")
axes[0].axhline(floor_fd, color="grey", ls="--", label="real digits (floor)")
axes[0].set_xscale("log")
axes[0].set_xlabel("number of sampling steps S")
axes[0].set_ylabel("Fréchet distance (classifier features)")
axes[0].set_title("digits: quality vs steps")
axes[0].legend()
x_T_img = torch.randn(32, 64, generator=torch.Generator().manual_seed(14))
for ax, eta in zip(axes[1:], (0.0, 1.0)):
    with torch.no_grad():
        xs = td.ddim.sample(eps_digits, x_T_img.shape, sched, 10, eta=eta, x_T=x_T_img)
    td.plotting.show_images(as_images(xs.cpu()), nrow=8, ax=ax, title=f"10 steps, eta = {eta} (same x_T)")
plt.tight_layout()
plt.show()

# %% [markdown]
# ## 9. What matches the paper, and what does not
#
# *Written for the numbers of the `standard` run stored in this notebook; other profiles and seeds move them.*
#
# **On the oracle** (a perfect denoiser, so only the sampler is measured):
# - As in the paper, deterministic DDIM ($\eta = 0$) is the best or tied-best row at every $S \le 100$, and
#   $\eta = 1$ is the worst; $\eta = 0.5$ sits in between. The gap is widest at 50–100 steps, where $\eta = 1$ has
#   2.5–4 times the MMD² of $\eta = 0$. With few large jumps, the fresh noise that $\eta > 0$ injects at each
#   step is not fully removed by the remaining steps, so the modes come out too wide.
# - At 10 steps every row is poor and the three are within 20% of each other: the jumps are too large for any
#   $\eta$. Here the choice of sub-sequence matters as much as $\eta$ (§5: `trailing` < `leading` < `linspace` at 10 steps).
# - At $S = 1000$ all three rows are inside the noise floor: with the exact denoiser no sampler error is left,
#   and $\eta = 1$ at $S = T$ is exactly DDPM (§3).
# - In the paper (CIFAR-10) the rows also converge at $S = 1000$, with $\eta = 0$ still slightly ahead of
#   $\eta = 1$; the best 1000-step number there belongs to $\hat\sigma$ (DDPM's posterior mean plus noise of
#   variance $\beta$, not a member of the family; §7), which is catastrophic at 10 steps — as it is here, while the
#   family member with the same $\sigma_t^2=\beta_t$ is close to $\eta = 1$. With a perfect denoiser every row
#   converges to the data, as it does here, so differences at $S = 1000$ can only come from the network's error.
#
# **On digits** (a small MLP trained for about a minute on a CPU):
# - Every cell is far above the noise floor (real digits' own score): the network's error dominates, so this
#   table is flatter and noisier than the oracle's. The seed-to-seed scatter printed above gives the
#   resolution; differences smaller than it mean nothing.
# - At few steps the paper's main result holds: $\eta = 0$ beats $\eta = 1$ by about 1.2 at $S = 10$ (roughly six
#   times the scatter) and by about 0.4 at $S = 20$ (about twice the scatter). By eye the grids are harder to
#   judge than the score: at this model size both are rough, and the $\eta = 1$ grid is speckled.
# - From 50 steps on the rows cross and the differences are comparable to the scatter, so we cannot rank the
#   $\eta$ there, nor confirm the paper's ordering at 1000 steps ($\eta = 0$ slightly ahead of $\eta = 1$).
# - As in the paper, DDIM with $\eta = 0$ saturates early: 50–100 steps are about as good as 1000.
#
# ## 10. Exercises

# %% [markdown]
# **Exercise 1.** Solve the marginal condition: return $(\kappa_t, \lambda_t)$ for a step from `t` to `t_prev`
# with standard deviation `sigma_t` (all float64 tensors; use `sched.alpha_bar`).

# %%
def my_kappa_lambda(t, t_prev, sigma_t, sched):
    # Your code here: return (kappa, lambda) of p(x_{t_prev} | x_t, x_0) = N(kappa x_t + lambda x_0, sigma_t^2 I).
    raise NotImplementedError


# %%
# NBVAL_CHECK_OUTPUT
def _cases(i):
    gen = torch.Generator().manual_seed(i)
    t = torch.randint(2, sched.T + 1, (6,), generator=gen)
    t_prev = (torch.rand(6, generator=gen) * t).long()
    room = (1 - sched.alpha_bar[t_prev]).sqrt()
    return t, t_prev, torch.rand(6, generator=gen, dtype=torch.float64) * room, sched


def _no_sqrt(t, s, sig, sc):
    k = (1 - sc.alpha_bar[s] - sig**2) / (1 - sc.alpha_bar[t])
    return k, sc.alpha_bar[s].sqrt() - sc.alpha_bar[t].sqrt() * k


def _sigma_not_squared(t, s, sig, sc):
    k = (1 - sc.alpha_bar[s] - sig).clamp_min(0).sqrt() / (1 - sc.alpha_bar[t]).sqrt()
    return k, sc.alpha_bar[s].sqrt() - sc.alpha_bar[t].sqrt() * k


td.exercises.check(my_kappa_lambda,
                   lambda t, s, sig, sc: (td.ddim.kappa(t, s, sig, sc), td.ddim.lambda_(t, s, sig, sc)), _cases,
                   mistakes={"kappa_t needs a square root: kappa_t^2 (1 - ab_t) + sigma_t^2 = 1 - ab_s": _no_sqrt,
                             "subtract sigma_t squared, not sigma_t": _sigma_not_squared})

# %% [markdown]
# **Exercise 2.** Write one DDIM step in the "predicted $x_0$ + direction + noise" form of §4, for any $\eta$
# (use `td.ddim.sigma(t, t_prev, sched, eta)` for $\sigma_t(\eta)$).

# %%
def my_ddim_step(xt, eps, t, t_prev, sched, eta, noise):
    # Your code here: return x_{t_prev}.
    raise NotImplementedError


# %%
# NBVAL_CHECK_OUTPUT
def _step_cases(i):
    gen = torch.Generator().manual_seed(10 + i)
    t = int(torch.randint(2, sched.T + 1, (1,), generator=gen))
    t_prev = int(torch.randint(0, t, (1,), generator=gen))
    xt, eps, z = (torch.randn(5, 2, generator=gen, dtype=torch.float64) for _ in range(3))
    return xt, eps, t, t_prev, sched, [0.0, 0.5, 1.0][i % 3], z


def _forgot_sigma_in_direction(xt, eps, t, s, sc, eta, z):
    ab_t, ab_s = sc.alpha_bar[t], sc.alpha_bar[s]
    x0p = (xt - (1 - ab_t).sqrt() * eps) / ab_t.sqrt()
    return ab_s.sqrt() * x0p + (1 - ab_s).sqrt() * eps + td.ddim.sigma(t, s, sc, eta) * z


td.exercises.check(my_ddim_step, lambda xt, eps, t, s, sc, eta, z: td.ddim.step(xt, eps, t, s, sc, eta=eta, noise=z),
                   _step_cases,
                   mistakes={"the direction term is sqrt(1 - ab_s - sigma_t^2) eps: the noise takes its share "
                             "of the variance": _forgot_sigma_in_direction})

# %% [markdown]
# **Exercise 3.** Return the `trailing` sub-sequence of `n` timesteps in `1..T` (decreasing, starting at `T`,
# spaced by $T/n$ and rounded).

# %%
def my_trailing(T, n):
    # Your code here: a decreasing LongTensor of n timesteps, the first one T.
    raise NotImplementedError


# %%
# NBVAL_CHECK_OUTPUT
td.exercises.check(my_trailing, lambda T, n: td.ddim.timesteps(T, n, "trailing"),
                   [(1000, 10), (1000, 3), (1000, 7), (100, 30), (50, 50)],
                   mistakes={"that is the 'leading' spacing (it starts at 1 + (n-1) T//n, not at T)":
                             lambda T, n: td.ddim.timesteps(T, n, "leading")})

# %% [markdown]
# **Exercise 3b (find the bug).** This deterministic DDIM step ($\eta = 0$) does not keep the marginals: run it
# with the exact $\varepsilon^*$ and the samples come out too spread. Find the bug (which $\bar\alpha$ belongs in
# the direction term of eq. 12?) and write `my_ddim_step_eta0(xt, eps, t, t_prev, sched)`.

# %%
def buggy_ddim_step_eta0(xt, eps, t, t_prev, sched):
    ab_t, ab_s = sched.alpha_bar[t], sched.alpha_bar[t_prev]
    x0_pred = (xt - (1 - ab_t).sqrt() * eps) / ab_t.sqrt()
    return ab_s.sqrt() * x0_pred + (1 - ab_t).sqrt() * eps


def my_ddim_step_eta0(xt, eps, t, t_prev, sched):
    # Your code here: the corrected buggy_ddim_step_eta0.
    raise NotImplementedError


# %%
# NBVAL_CHECK_OUTPUT
def _eta0_cases(i):
    gen = torch.Generator().manual_seed(30 + i)
    t = int(torch.randint(2, 1001, (1,), generator=gen))
    xt, eps = (torch.randn(5, 2, generator=gen, dtype=torch.float64) for _ in range(2))
    return xt, eps, t, int(torch.randint(0, t, (1,), generator=gen)), td.NoiseSchedule.linear(1000)


td.exercises.check(my_ddim_step_eta0, lambda xt, eps, t, s, sc: td.ddim.step(xt, eps, t, s, sc, eta=0.0), _eta0_cases,
                   mistakes={"that is the buggy version: the direction term is sqrt(1 - alpha_bar_s) eps, at the "
                             "target time s": buggy_ddim_step_eta0})

# %% [markdown]
# **Exercise 4 (open).** §7 ran two samplers with $\sigma_t^2 = \beta_t$ at 10 steps: the family member and the
# paper's $\hat\sigma$. (a) Compute the variance of $x_s$ given $x_0$ for each, for one jump $t\to s$, from the
# formulas in §7 (for $\hat\sigma$: the variance of $\tilde\mu(x_t,x_0)$ plus $1-\bar\alpha_t/\bar\alpha_s$) and compare
# both with $1-\bar\alpha_s$, the variance of $q(x_s\mid x_0)$. (b) Why does the excess of $\hat\sigma$ matter at 10
# steps and not at 1000? (c) Extend the §7 cell to 50 and 1000 steps and check your answer.
#
# ## Summary
#
# - Training a DDPM fixes only the marginals $q(x_t\mid x_0)$. Every
#   $p(x_{s}\mid x_t, x_0) = \mathcal N(\kappa_t x_t + \lambda_t x_0, \sigma_t^2 I)$ with
#   $\kappa_t = \sqrt{1-\bar\alpha_s-\sigma_t^2}/\sqrt{1-\bar\alpha_t}$,
#   $\lambda_t = \sqrt{\bar\alpha_s}-\sqrt{\bar\alpha_t}\kappa_t$ keeps them: `td.ddim.kappa`, `td.ddim.lambda_`.
# - $\sigma_t(\eta) = \eta\sqrt{\tilde\beta_t}$: $\eta = 1$ is DDPM (sample for sample), $\eta = 0$ is the deterministic DDIM.
# - The family works for any $s < t$, so we can sample on 10–50 of the 1000 steps (`td.ddim.timesteps`,
#   `td.ddim.sample`), and run the deterministic sampler backwards as an encoder (`td.ddim.encode`).
# - With few steps, $\eta = 0$ is best; more noise needs more steps to be removed.
#
# Next: lesson 04 shows that deterministic DDIM is a discretisation of the probability-flow ODE.
