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
# # 02 · DDPM: noising, the posterior, the loss, the sampler and the ELBO
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/tinydiff/tinydiff/blob/main/notebooks/02_ddpm.ipynb)
#
# A denoising diffusion probabilistic model (DDPM) destroys data with a fixed Markov chain that adds a
# little Gaussian noise at each of $T$ steps, and learns to run that chain backwards. This notebook follows
# the lecture's sections "Diffusion" and "DDPM" and checks every step on numbers: the forward process and
# its closed form $q(x_t\mid x_0)$, how close $x_T$ gets to pure noise, the posterior
# $q(x_{t-1}\mid x_t, x_0)$ (derived, then checked against Bayes' rule on a grid), the switch from
# predicting $x_0$ to predicting $\varepsilon$ and what it does to the loss weights, Algorithm 1 (training)
# on 2-D data and on handwritten digits, Algorithm 2 (sampling) with both choices of $\sigma_t^2$, and the
# ELBO of equations (47)–(58) computed term by term. Along the way we meet the most common DDPM bug and
# a check that catches it.

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
from IPython.display import display

import tinydiff as td

cfg = td.profiles.choose(  # sizes for the active profile: quick (tests) / standard (CPU) / full (GPU)
    quick=dict(n_mc=20_000, mlp_steps=200, n_2d=1000, n_elbo=32, ema=0.9, digit_steps=100, digit_width=8,
               n_digits=8),
    standard=dict(n_mc=200_000, mlp_steps=6000, n_2d=1500, n_elbo=300, ema=0.995, digit_steps=3000, digit_width=16,
                  n_digits=32),
    full=dict(n_mc=1_000_000, mlp_steps=20000, n_2d=8000, n_elbo=2000, ema=0.999, digit_steps=20000, digit_width=64,
              n_digits=64),
)
dev = td.device()
g = td.seed_everything(0)
print(f"profile {cfg.profile}, device {dev}")

# %% [markdown]
# ## 1. The noise schedule
#
# The forward process is a Markov chain $x_0\to x_1\to\dots\to x_T$. Step $t$ shrinks the signal by
# $\sqrt{\alpha_t}$ and adds noise of variance $\beta_t = 1-\alpha_t$:
#
# $$x_t = \sqrt{\alpha_t}\,x_{t-1} + \sqrt{1-\alpha_t}\,\varepsilon_t,\qquad \varepsilon_t\sim\mathcal N(0, I),
# \qquad\text{i.e.}\qquad q(x_t\mid x_{t-1}) = \mathcal N\big(\sqrt{\alpha_t}\,x_{t-1},\ \beta_t I\big).$$
#
# The numbers $\beta_1,\dots,\beta_T$ are the *schedule*. DDPM spaces them linearly from $10^{-4}$ to
# $0.02$ over $T=1000$ steps; Nichol & Dhariwal's *cosine* schedule instead prescribes
# $\bar\alpha_t = \prod_{s\le t}\alpha_s$ directly, as a squared cosine of $t/T$. In `tinydiff` every table
# has length $T+1$ and index $t$ is the lecture's $t$; index 0 is the clean data ($\beta_0=0$,
# $\bar\alpha_0 = 1$). (diffusers stores the same numbers without index 0: its $k$ is our $t=k+1$.)

# %%
lin = td.NoiseSchedule.linear(1000)
cos = td.NoiseSchedule.cosine(1000)
print(lin)
print(cos)

t_axis = torch.arange(1001)
fig, axes = plt.subplots(1, 3, figsize=(13, 3.2))
for sched, name in [(lin, "linear"), (cos, "cosine")]:
    axes[0].plot(t_axis[1:], sched.beta[1:], label=name)
    axes[1].plot(t_axis, sched.alpha_bar, label=name)
    axes[2].plot(t_axis[1:], sched.snr()[1:].log10(), label=name)
axes[0].set(title=r"$\beta_t$", xlabel="t", yscale="log")
axes[1].set(title=r"$\bar\alpha_t$ (signal kept)", xlabel="t")
axes[2].set(title=r"$\log_{10}\mathrm{SNR}_t = \log_{10}\bar\alpha_t/(1-\bar\alpha_t)$", xlabel="t")
for ax in axes:
    ax.legend()
plt.tight_layout()
plt.show()

# %% [markdown]
# The linear schedule throws most of the signal away in the first half; the cosine schedule removes it
# more evenly (its $\log\mathrm{SNR}$ is nearly a straight line through the middle). Its $\beta_T$ is
# clipped at $0.999$: without the clip, $\beta_T$ would be 1.
#
# **The cumulative-log trick.** The lecture computes $\bar\alpha_t$ as $\exp\sum_{s\le t}\log\alpha_s$: a
# sum of logarithms, exponentiated, instead of a running product. Both are the same number:

# %%
# NBVAL_CHECK_OUTPUT
alpha_bar_by_logs = torch.cumsum(torch.log(lin.alpha), dim=0).exp()
alpha_bar_by_product = torch.cumprod(lin.alpha, dim=0)
td.check("alpha_bar: exp(cumsum(log alpha)) = cumprod(alpha)", alpha_bar_by_logs, alpha_bar_by_product, atol=0, rtol=1e-12)
td.check("alpha_bar in the package is that product", lin.alpha_bar, alpha_bar_by_product, atol=0, rtol=1e-12)
td.check("alpha_bar_t / alpha_bar_(t-1) = alpha_t", lin.alpha_bar[1:] / lin.alpha_bar[:-1], lin.alpha[1:], atol=1e-12)

# %% [markdown]
# A detail worth knowing if you reuse the lecture's training snippet: it builds $T+1$ values of $\beta$
# starting at index 0 (so $\beta$ at index 0 is $\beta_1$, not 0), takes the cumulative sum of logs over
# *all* of them, and only then overwrites index 0 with 1. Every later $\bar\alpha_t$ therefore carries one
# extra factor $(1-\beta_1)$, and its $\beta$ grid is spaced over $T+1$ points instead of $T$. The effect
# is tiny for $\beta_1 = 10^{-4}$, but it is an off-by-one all the same:

# %%
b_lecture = 1e-4 + (0.02 - 1e-4) * torch.linspace(0, 1, 1001, dtype=torch.float64)
ab_lecture = torch.cumsum(torch.log(1 - b_lecture), dim=0).exp()
ab_lecture[0] = 1
rel = ((ab_lecture[1:] - lin.alpha_bar[1:]) / lin.alpha_bar[1:]).abs()
print(f"largest relative difference in alpha_bar_t, lecture snippet vs alpha_bar_t as defined: {rel.max():.2e} "
      f"(at t = {int(rel.argmax()) + 1}); at t = 1 it is {rel[0]:.1e} = beta_1")

# %% [markdown]
# ## 2. The forward process in closed form
#
# Unrolling two steps, $x_t = \sqrt{\alpha_t\alpha_{t-1}}\,x_{t-2} + \sqrt{\alpha_t(1-\alpha_{t-1})}\,
# \varepsilon_{t-1} + \sqrt{1-\alpha_t}\,\varepsilon_t$. The two noises are independent Gaussians, so their
# sum is one Gaussian with variance $\alpha_t(1-\alpha_{t-1}) + 1-\alpha_t = 1-\alpha_t\alpha_{t-1}$.
# Repeating this down to $x_0$:
#
# $$x_t = \sqrt{\bar\alpha_t}\,x_0 + \sqrt{1-\bar\alpha_t}\,\bar\varepsilon_t,\qquad
# q(x_t\mid x_0) = \mathcal N\big(\sqrt{\bar\alpha_t}\,x_0,\ (1-\bar\alpha_t) I\big).$$
#
# More precisely, after $t$ steps the noise is $\sum_{s=1}^t w_s\varepsilon_s$ with
# $w_s^2 = \beta_s\,\bar\alpha_t/\bar\alpha_s$ (step $s$'s noise, shrunk by all later steps), and
# $\sum_s w_s^2 = 1-\bar\alpha_t$. So we can check the closed form **exactly**, not only in distribution:
# run $t$ single steps, combine their noises into $\bar\varepsilon = \sum_s w_s\varepsilon_s/\sqrt{1-\bar\alpha_t}$,
# and the closed form with that $\bar\varepsilon$ must land on the same point.

# %%
t_check = 300
x0 = torch.randn(5, 2, generator=g, dtype=torch.float64)
x = x0.clone()
noise_sum = torch.zeros_like(x0)
for s in range(1, t_check + 1):  # t single forward steps, by hand
    eps_s = torch.randn(x0.shape, generator=g, dtype=torch.float64)
    x = lin.alpha[s].sqrt() * x + (1 - lin.alpha[s]).sqrt() * eps_s
    noise_sum += (lin.beta[s] * lin.alpha_bar[t_check] / lin.alpha_bar[s]).sqrt() * eps_s
eps_bar = noise_sum / (1 - lin.alpha_bar[t_check]).sqrt()
x_closed = lin.alpha_bar[t_check].sqrt() * x0 + (1 - lin.alpha_bar[t_check]).sqrt() * eps_bar
w2 = lin.beta[1:t_check + 1] * lin.alpha_bar[t_check] / lin.alpha_bar[1:t_check + 1]

# %%
# NBVAL_CHECK_OUTPUT
td.check("sum of squared noise weights = 1 - alpha_bar_t", w2.sum(), 1 - lin.alpha_bar[t_check], atol=1e-12)
td.check("300 single steps = closed form q(x_t | x_0) with the combined noise", x, x_closed, atol=1e-10)

# %% [markdown]
# And in distribution, with independent draws and no coupling at all: many particles pushed through 300
# single steps have the mean $\sqrt{\bar\alpha_t}\,x_0$ and the variance $1-\bar\alpha_t$ of the closed form,
# up to Monte-Carlo error (we require less than 5 standard errors).

# %%
n = cfg.n_mc
x_start = 1.5
x = torch.full((n, 1), x_start, dtype=torch.float64)
for s in range(1, t_check + 1):
    x = td.ddpm.q_step(x, s, torch.randn(n, 1, generator=g, dtype=torch.float64), lin)
ab = lin.alpha_bar[t_check].item()
z_mean = abs(x.mean().item() - math.sqrt(ab) * x_start) / math.sqrt((1 - ab) / n)
z_var = abs(x.var().item() - (1 - ab)) / ((1 - ab) * math.sqrt(2 / n))
print(f"{n} particles: mean {x.mean().item():.4f} (closed form {math.sqrt(ab) * x_start:.4f}), "
      f"variance {x.var().item():.4f} (closed form {1 - ab:.4f})")

# %%
# NBVAL_CHECK_OUTPUT
td.check_less("mean of 300 single steps vs closed form, in standard errors", z_mean, 5)
td.check_less("variance of 300 single steps vs closed form, in standard errors", z_var, 5)

# %% [markdown]
# **The same thing in tinydiff.** `td.ddpm.q_step` is one step, `td.ddpm.q_sample` the closed form, and
# `td.ddpm.q_sample_steps` runs the single steps and returns the combined noise, as above:

# %%
# NBVAL_CHECK_OUTPUT
t_vec = torch.full((5,), t_check)
td.check("td.ddpm.q_sample = the hand-written closed form", td.ddpm.q_sample(x0, t_vec, eps_bar, lin), x_closed)
xt_steps, eps_bar_pkg = td.ddpm.q_sample_steps(x0, t_check, lin, generator=torch.Generator().manual_seed(1))
td.check("td.ddpm.q_sample_steps: steps = closed form", td.ddpm.q_sample(x0, t_vec, eps_bar_pkg, lin), xt_steps,
         atol=1e-10)

# %% [markdown]
# Here is the forward process on a handwritten digit (the 8×8 digits of scikit-learn, scaled to
# $[-1, 1]$) and on a 2-D data set, a ring of eight Gaussians. By $t = 1000$ nothing of the data is left.

# %%
digits, labels = td.data.load_digits(8)
ts = [0, 50, 100, 200, 300, 500, 700, 1000]
one = digits[:1].repeat(len(ts), 1, 1, 1)
strip = td.ddpm.q_sample(one, torch.tensor(ts), torch.randn(one.shape, generator=g), lin)
gm = td.data.GaussianMixture.ring(8, radius=2.0, std=0.2)
pts = gm.sample(1000, g)
fig = plt.figure(figsize=(13, 4.2))
ax = fig.add_subplot(2, 1, 1)
td.plotting.show_images(strip, nrow=len(ts), ax=ax, title="q(x_t | x_0) at t = " + ", ".join(map(str, ts)))
for i, t in enumerate([0, 100, 300, 1000]):
    td.plotting.scatter2d(td.ddpm.q_sample(pts, t, torch.randn(pts.shape, generator=g), lin),
                          ax=fig.add_subplot(2, 4, 5 + i), title=f"t = {t}", lim=4)
plt.tight_layout()
plt.show()

# %% [markdown]
# ## 3. How close is $x_T$ to pure noise?
#
# Sampling starts from $x_T\sim\mathcal N(0,I)$, which is only right if $q(x_T)\approx\mathcal N(0,I)$.
# Since $q(x_T\mid x_0) = \mathcal N(\sqrt{\bar\alpha_T}x_0, (1-\bar\alpha_T)I)$, the mismatch per sample is the
# *prior matching* term of the ELBO (§8),
# $$\mathrm{KL}\big(q(x_T\mid x_0)\,\|\,\mathcal N(0,I)\big) = \tfrac12\sum_i\big(\bar\alpha_T x_{0,i}^2
# - \bar\alpha_T - \log(1-\bar\alpha_T)\big),$$
# and its average over the data bounds $\mathrm{KL}(q(x_T)\,\|\,\mathcal N(0,I))$ from above (KL is convex).
# Per dimension of the digits, for both schedules and several $T$ (our `linear(T)` keeps
# $\beta_1 = 10^{-4}$, $\beta_T = 0.02$, so fewer steps means less total noise):

# %%
x_digits = digits.flatten(1).double()
Ts = [10, 50, 100, 250, 500, 1000]
kl_table = {}
print(f"{'T':>6} {'linear: alpha_bar_T':>20} {'KL/dim':>10} {'cosine: alpha_bar_T':>20} {'KL/dim':>10}")
for T in Ts:
    row = []
    for make in (td.NoiseSchedule.linear, td.NoiseSchedule.cosine):
        s = make(T)
        kl = td.ddpm.prior_kl(x_digits, s).mean().item() / x_digits.shape[1]
        kl_table[(make.__name__, T)] = kl
        row += [s.alpha_bar[-1].item(), kl]
    print(f"{T:>6} {row[0]:>20.3g} {row[1]:>10.3g} {row[2]:>20.3g} {row[3]:>10.3g}")

# %% [markdown]
# With the linear schedule, $T=1000$ leaves $\bar\alpha_T\approx 4\times10^{-5}$ and a KL of about
# $10^{-5}$ nats per pixel: pure noise is an excellent start. With $T = 10$ or $50$ the same $\beta$ range
# leaves most of the image in $x_T$, and a sampler that starts from $\mathcal N(0,I)$ starts from the wrong
# place. The cosine schedule reaches noise for every $T$, because it fixes $\bar\alpha$ as a function of
# $t/T$.

# %%
# NBVAL_CHECK_OUTPUT
td.check_less("linear, T=1000: KL(q(x_T|x_0) || N(0,I)) per dimension below 1e-3 nats", kl_table[("linear", 1000)],
              1e-3)
td.check_less("linear, T=10: x_T is far from noise (KL/dim above 0.1 nats)", -kl_table[("linear", 10)], -0.1)
td.check_less("cosine: KL/dim below 1e-3 nats already at T=10", kl_table[("cosine", 10)], 1e-3)
td.check("the prior KL in the package = the formula above", td.ddpm.prior_kl(x_digits[:4], lin),
         0.5 * (lin.alpha_bar[-1] * x_digits[:4] ** 2 - lin.alpha_bar[-1] - torch.log(1 - lin.alpha_bar[-1])).sum(1))

# %% [markdown]
# ## 4. The posterior $q(x_{t-1}\mid x_t, x_0)$
#
# To run the chain backwards we would like $q(x_{t-1}\mid x_t)$; it needs the unknown data distribution.
# Conditioning on $x_0$ as well makes everything Gaussian and known. By Bayes' rule (the forward chain is
# Markov, so $q(x_t\mid x_{t-1}, x_0) = q(x_t\mid x_{t-1})$):
#
# $$q(x_{t-1}\mid x_t, x_0) = \frac{q(x_t\mid x_{t-1})\,q(x_{t-1}\mid x_0)}{q(x_t\mid x_0)}.$$
#
# As a function of $x_{t-1}$ the denominator is a constant, and the log of the numerator is, per coordinate,
#
# $$-\frac{(x_t-\sqrt{\alpha_t}\,x_{t-1})^2}{2\beta_t} - \frac{(x_{t-1}-\sqrt{\bar\alpha_{t-1}}\,x_0)^2}{2(1-\bar\alpha_{t-1})}
# = -\frac12\Big(\frac{\alpha_t}{\beta_t} + \frac{1}{1-\bar\alpha_{t-1}}\Big)x_{t-1}^2
# + \Big(\frac{\sqrt{\alpha_t}}{\beta_t}x_t + \frac{\sqrt{\bar\alpha_{t-1}}}{1-\bar\alpha_{t-1}}x_0\Big)x_{t-1} + \text{const}.$$
#
# A quadratic in $x_{t-1}$ is a Gaussian: the precision is the coefficient of $-\tfrac12 x_{t-1}^2$, and
# the mean is the linear coefficient divided by the precision. Using $\alpha_t(1-\bar\alpha_{t-1}) + \beta_t
# = 1-\bar\alpha_t$, the precision is $\frac{1-\bar\alpha_t}{\beta_t(1-\bar\alpha_{t-1})}$, so
#
# $$\tilde\beta_t = \frac{1-\bar\alpha_{t-1}}{1-\bar\alpha_t}\,\beta_t,\qquad
# \tilde\mu_t(x_t, x_0) = \frac{\sqrt{\bar\alpha_{t-1}}\,\beta_t}{1-\bar\alpha_t}\,x_0
# + \frac{\sqrt{\alpha_t}\,(1-\bar\alpha_{t-1})}{1-\bar\alpha_t}\,x_t.$$
#
# Now check it with no algebra at all: put $x_{t-1}$ on a fine 1-D grid, multiply the two Gaussian
# densities, normalise numerically, and take the mean and variance. The normaliser must also equal the
# closed-form $q(x_t\mid x_0)$ from §2.

# %%
bayes_rows = []
for x0_val, z, t in [(0.7, 0.6, 2), (-1.2, 1.5, 10), (0.5, -0.9, 500), (2.0, 1.0, 1000)]:
    ab_t, ab_prev, a_t = lin.alpha_bar[t].item(), lin.alpha_bar[t - 1].item(), lin.alpha[t].item()
    xt_val = math.sqrt(ab_t) * x0_val + math.sqrt(1 - ab_t) * z
    centre, width = math.sqrt(ab_prev) * x0_val, 12 * math.sqrt(max(1 - ab_prev, 1 - a_t))
    grid = torch.linspace(centre - width, centre + width, 400_001, dtype=torch.float64)
    dx = (grid[1] - grid[0]).item()
    log_lik = -((xt_val - math.sqrt(a_t) * grid) ** 2) / (2 * (1 - a_t)) - 0.5 * math.log(2 * math.pi * (1 - a_t))
    log_prior = -((grid - centre) ** 2) / (2 * (1 - ab_prev)) - 0.5 * math.log(2 * math.pi * (1 - ab_prev))
    joint = torch.exp(log_lik + log_prior)
    evidence = joint.sum().item() * dx
    post = joint / joint.sum()
    m_grid = (post * grid).sum().item()
    v_grid = (post * (grid - m_grid) ** 2).sum().item()
    mean, var = td.ddpm.q_posterior(torch.tensor([[x0_val]], dtype=torch.float64),
                                    torch.tensor([[xt_val]], dtype=torch.float64), t, lin)
    q_xt = math.exp(-((xt_val - math.sqrt(ab_t) * x0_val) ** 2) / (2 * (1 - ab_t))) / math.sqrt(2 * math.pi * (1 - ab_t))
    bayes_rows.append((t, mean.item(), m_grid, var.item(), v_grid, evidence, q_xt))
    print(f"t={t:4d}  mean {mean.item():+.6f} (grid {m_grid:+.6f})  var {var.item():.3e} (grid {v_grid:.3e})  "
          f"evidence {evidence:.5f} (q(x_t|x_0) {q_xt:.5f})")
rows = torch.tensor([r[1:] for r in bayes_rows], dtype=torch.float64)

# %%
# NBVAL_CHECK_OUTPUT
td.check("posterior mean = numerical Bayes on a grid", rows[:, 0], rows[:, 1], atol=1e-7, rtol=1e-6)
td.check("posterior variance tilde beta_t = numerical Bayes on a grid", rows[:, 2], rows[:, 3], atol=0, rtol=1e-4)
td.check("the normaliser is q(x_t | x_0)", rows[:, 4], rows[:, 5], atol=0, rtol=1e-6)

# %% [markdown]
# Note $\tilde\beta_1 = 0$: given $x_0$, the step from $x_1$ to $x_0$ is not random at all.
#
# ## 5. Predict $x_0$, or predict the noise? And what it does to the loss
#
# The reverse step we can actually use replaces the unknown $x_0$ in $\tilde\mu_t$ by a network's guess
# $\hat x_0(x_t)$. Because $x_t = \sqrt{\bar\alpha_t}x_0 + \sqrt{1-\bar\alpha_t}\,\varepsilon$, guessing
# $x_0$ and guessing the noise are the same thing:
# $\hat x_0 = (x_t - \sqrt{1-\bar\alpha_t}\,\hat\varepsilon)/\sqrt{\bar\alpha_t}$. Put into $\tilde\mu_t$, the
# $x_t$ terms combine and the model mean of Algorithm 2 appears:
#
# $$\mu_\theta(x_t, t) = \tilde\mu_t\big(x_t, \hat x_0(x_t)\big) = \frac{1}{\sqrt{\alpha_t}}\Big(x_t -
# \frac{\beta_t}{\sqrt{1-\bar\alpha_t}}\,\hat\varepsilon_\theta(x_t, t)\Big).$$
#
# The errors are proportional too: $x_0 - \hat x_0 = -\sqrt{(1-\bar\alpha_t)/\bar\alpha_t}\,(\varepsilon -
# \hat\varepsilon)$, so
#
# $$\|x_0-\hat x_0\|^2 = \frac{1-\bar\alpha_t}{\bar\alpha_t}\,\|\varepsilon-\hat\varepsilon\|^2
# = \frac{1}{\mathrm{SNR}_t}\,\|\varepsilon-\hat\varepsilon\|^2 .$$
#
# That is the lecture's weight. The $\varepsilon$-loss is thus the $x_0$-loss weighted by the SNR: it
# puts *less* weight on the noisiest steps than the $x_0$-loss does, and DDPM found that unweighted
# $\varepsilon$-prediction ("$L_\text{simple}$") trains better. A third target, $v = \sqrt{\bar\alpha_t}\,
# \varepsilon - \sqrt{1-\bar\alpha_t}\,x_0$, has $\|v-\hat v\|^2 = \|\varepsilon-\hat\varepsilon\|^2/\bar\alpha_t$,
# i.e. the $x_0$-loss weighted by $1+\mathrm{SNR}_t$. We check all of this on concrete numbers with an
# arbitrary predictor $\hat\varepsilon$:

# %%
B = 6
x0 = torch.randn(B, 3, generator=g, dtype=torch.float64)
eps = torch.randn(B, 3, generator=g, dtype=torch.float64)
t = torch.tensor([1, 10, 100, 400, 800, 1000])
ab = lin.alpha_bar[t][:, None]
xt = ab.sqrt() * x0 + (1 - ab).sqrt() * eps
eps_hat = torch.tanh(xt) + 0.1  # any guess of the noise
x0_hat = (xt - (1 - ab).sqrt() * eps_hat) / ab.sqrt()
v, v_hat = ab.sqrt() * eps - (1 - ab).sqrt() * x0, ab.sqrt() * eps_hat - (1 - ab).sqrt() * x0_hat
err_eps, err_x0, err_v = [(a - b).pow(2).sum(1) for a, b in [(eps, eps_hat), (x0, x0_hat), (v, v_hat)]]
mu_algorithm2 = (xt - lin.beta[t][:, None] / (1 - ab).sqrt() * eps_hat) / lin.alpha[t][:, None].sqrt()

# %%
# NBVAL_CHECK_OUTPUT
td.check("x0 from eps: round trip", td.convert.x0_from_eps(xt, eps, lin.alpha_bar[t]), x0)
td.check("v round trip: x0 and eps from (x_t, v)", torch.stack([td.convert.x0_from_v(xt, v, lin.alpha_bar[t]),
         td.convert.eps_from_v(xt, v, lin.alpha_bar[t])]), torch.stack([x0, eps]))
td.check("x0-loss = eps-loss / SNR_t", err_x0, err_eps / lin.snr()[t])
td.check("v-loss = eps-loss / alpha_bar_t = x0-loss (1 + SNR_t)", err_v, err_x0 * (1 + lin.snr()[t]))
td.check("td.ddpm.loss_weight tabulates these factors", torch.stack([err_x0, err_v]),
         torch.stack([td.ddpm.loss_weight(lin, "x0")[t], td.ddpm.loss_weight(lin, "v")[t]]) * err_eps)
td.check("mu_theta of Algorithm 2 = posterior mean at the predicted x0", mu_algorithm2,
         td.ddpm.q_posterior(x0_hat, xt, t, lin)[0])

# %%
fig, ax = plt.subplots(figsize=(5.5, 3.2))
for name, style in [("x0", "-"), ("v", "--")]:
    ax.plot(t_axis[1:], td.ddpm.loss_weight(lin, name)[1:], style, label=f"{name}-loss / eps-loss")
ax.axhline(1, color="k", lw=0.6)
ax.set(yscale="log", xlabel="t", title="loss weights relative to the eps-loss (linear, T=1000)")
ax.legend()
plt.show()

# %% [markdown]
# ## 6. Algorithm 1: training
#
# Algorithm 1 repeats: draw $x_0$ from the data, $t\sim\mathcal U\{1,\dots,T\}$ and
# $\varepsilon\sim\mathcal N(0,I)$, and take a gradient step on
# $\|\varepsilon - \varepsilon_\theta(\sqrt{\bar\alpha_t}x_0 + \sqrt{1-\bar\alpha_t}\varepsilon, t)\|^2$.
# That is `td.ddpm.loss`; `td.train.fit` runs the loop (AdamW, an exponential moving average (EMA) of the
# weights, a progress bar). The EMA's decay is set per profile: an average over the last ~$1/(1-d)$ steps
# must be short compared with the run, or it still remembers the untrained network (whose
# $\hat\varepsilon\approx 0$ makes Algorithm 2 blow up: each step divides by $\sqrt{\alpha_t}$, and the
# product of those factors is $1/\sqrt{\bar\alpha_T}\approx 157$).
#
# First on the 2-D ring of Gaussians: it is a mixture, so `gm.eps_fn(lin)` gives the
# *exact* $\varepsilon^*(x_t, t) = \mathbb E[\varepsilon\mid x_t]$, the best any network could learn.
# We compare the trained network against it.

# %%
mlp = td.models.MLPDenoiser(dim=2, hidden=128, depth=3)
fit_2d = td.train.fit(mlp, lambda m, x: td.ddpm.loss(m, x, lin), lambda b, gen: gm.sample(b, gen),
                      steps=cfg.mlp_steps, batch_size=256, lr=2e-3, ema_decay=cfg.ema, desc="Algorithm 1 (2-D)",
                      shipped="02_algorithm_1_2_d")
eps_net = fit_2d.sampler_model.cpu()
eps_exact = gm.eps_fn(lin)

# With the same (x_t, t, eps), the exact eps* has the lowest possible loss (in expectation):
x_eval = gm.sample(4000, g)
t_eval = torch.randint(1, 1001, (4000,), generator=g)
e_eval = torch.randn(x_eval.shape, generator=g)
with torch.no_grad():
    loss_net = td.ddpm.loss(eps_net, x_eval, lin, t=t_eval, eps=e_eval).item()
loss_exact = td.ddpm.loss(eps_exact, x_eval, lin, t=t_eval, eps=e_eval).item()
print(f"eps-loss on held-out draws: trained MLP {loss_net:.4f}, exact eps* {loss_exact:.4f} "
      f"(a network that predicts 0 would score {2.0:.1f})")
plt.figure(figsize=(5, 2.8))
plt.plot(torch.tensor(fit_2d.losses).unfold(0, 50, 50).mean(1) if len(fit_2d.losses) >= 50 else fit_2d.losses)
plt.axhline(loss_exact, color="k", ls="--", label="exact eps*")
plt.gca().set(xlabel="step / 50", ylabel="loss", title="training loss (2-D)")
plt.legend()
plt.show()

# %% [markdown]
# ## 7. Algorithm 2: sampling, and the choice of $\sigma_t^2$
#
# Start from $x_T\sim\mathcal N(0,I)$ and for $t=T,\dots,1$ set
# $x_{t-1} = \mu_\theta(x_t,t) + \sigma_t z$ with $z\sim\mathcal N(0,I)$, except $z = 0$ at $t=1$. DDPM
# tried two variances: $\sigma_t^2 = \tilde\beta_t$ (right if the data were a single point) and
# $\sigma_t^2 = \beta_t$ (right if the data were $\mathcal N(0,I)$); they gave similar samples. diffusers'
# `DDPMScheduler` calls them `variance_type="fixed_small"` and `"fixed_large"`; at its last step ($k=0$,
# our $t=1$) it adds no noise for either, exactly like Algorithm 2, so the two samplers agree step for step
# (the unit tests check this with shared noise). The one place the conventions differ is the likelihood:
# the original DDPM code replaces $\beta_1$ by $\tilde\beta_2$ as the $t=1$ variance of `fixed_large`, which
# changes the decoder term of §8 but never a sample. First we write the loop by hand, then compare with
# `td.ddpm.sample` using the same seed. Both run in float64, where the two computations differ only by the
# order of a few roundings: after 1000 steps they must agree to ~1e-12. (In float32 each step rounds at
# ~6e-8 relative, and a chain of 1000 steps accumulates differences of order 1e-4 that depend on the CPU
# and the thread count, so a float32 comparison would test the machine, not the formula.)

# %%
n_show = cfg.n_2d
gen = torch.Generator().manual_seed(7)
x = torch.randn(n_show, 2, generator=gen, dtype=torch.float64)
x_T = x.clone()
for t_int in range(lin.T, 0, -1):
    t_b = torch.full((n_show,), t_int)
    z = torch.randn(n_show, 2, generator=gen, dtype=torch.float64) if t_int > 1 else torch.zeros(n_show, 2)
    mean = (x - lin.beta[t_int] / (1 - lin.alpha_bar[t_int]).sqrt() * eps_exact(x, t_b)) / lin.alpha[t_int].sqrt()
    x = mean + lin.posterior_variance[t_int].sqrt() * z
x_by_hand = x
gen = torch.Generator().manual_seed(7)
torch.randn(n_show, 2, generator=gen, dtype=torch.float64)  # the package is handed x_T: skip its draw
x_pkg = td.ddpm.sample(eps_exact, (n_show, 2), lin, var="posterior", x_T=x_T, generator=gen)

# %%
# NBVAL_CHECK_OUTPUT
td.check("Algorithm 2 by hand = td.ddpm.sample (same seed, float64)", x_by_hand, x_pkg, atol=1e-10)

# %% [markdown]
# Now measure. A distance between two sample sets is never exactly 0 for finite samples; its value between
# two independent draws of the mixture is the **noise floor**. A sampler is as good as we can tell when it
# is at that floor. The sliced Wasserstein distance (printed below) compares 1-D projections and is lenient
# about modes: a ring with no modes at all is within 3× its floor. `td.metrics.mixture_check` uses statistics
# that see the modes — a kernel distance at fixed bandwidths of the size of a mode, each mode's weight and
# spread, and the fraction of samples more than 3 standard deviations from every mode — each compared with
# the mean + 4 standard deviations of its value over 20 pairs of data draws of the same size. At this size
# it rejects ε* scaled by 0.8 or 1.25, DDPM without its noise, and a ring with no modes
# (`tests/test_metrics.py::test_notebook_02_check_separates_right_from_wrong_at_quick_size`).

# %%
n2 = cfg.n_2d
ref = gm.sample(n2, torch.Generator().manual_seed(100))
g_floor = torch.Generator().manual_seed(101)
floor = td.metrics.noise_floor(td.metrics.sliced_wasserstein, lambda m: gm.sample(m, g_floor), n2, repeats=3,
                               generator=torch.Generator().manual_seed(0))
results, verdict = {}, {}
for name, fn in [("exact eps*", eps_exact), ("trained MLP", eps_net)]:
    for var in ("posterior", "beta"):
        with torch.no_grad():
            traj = td.utils.Trajectory()
            xs = td.ddpm.sample(fn, (n2, 2), lin, var=var, generator=torch.Generator().manual_seed(8), callback=traj)
        results[(name, var)] = xs
        d = td.metrics.sliced_wasserstein(xs, ref, generator=torch.Generator().manual_seed(0))
        verdict[(name, var)] = v = td.metrics.mixture_check(xs, gm)
        print(f"--- {name}, sigma^2 = {'tilde beta_t' if var == 'posterior' else 'beta_t'}: sliced W2 {d:.4f} "
              f"(floor {floor:.4f}); {'at the noise floor' if v.passed else 'rejected on ' + ', '.join(v.failed)}\n{v}")

# %%
# NBVAL_CHECK_OUTPUT
td.check_less("exact eps*, sigma^2 = tilde beta: every mode statistic within its noise floor",
              len(verdict[("exact eps*", "posterior")].failed), 1)
td.check_less("exact eps*, sigma^2 = beta: every mode statistic within its noise floor",
              len(verdict[("exact eps*", "beta")].failed), 1)

# %%
fig, axes = plt.subplots(1, 5, figsize=(16, 3.4))
td.plotting.scatter2d(ref, ax=axes[0], title="data")
for ax, key in zip(axes[1:], results):
    td.plotting.scatter2d(results[key], ax=ax, title=f"{key[0]}, var={key[1]}")
plt.tight_layout()
plt.show()

# %% [markdown]
# With the exact $\varepsilon^*$ both variance choices reproduce the mixture to within the noise floor:
# with $T=1000$ small steps the choice hardly matters. The trained MLP is printed next to it, and its table
# says where it falls short (typically: too many samples between the modes, modes too wide). That is
# training (a few thousand steps of a small MLP), not the sampler: the same sampler with the exact
# $\varepsilon^*$ is at the floor.
#
# **Why add noise at all?** ("sample a noise!?" in Algorithm 2.) Drop $\sigma_t z$ and each step moves
# $x_t$ to the *mean* of where $x_{t-1}$ could be. A mean is less spread out than the distribution it
# averages, and a thousand such steps compound: each mode of the mixture collapses to a tight cluster
# (here also pulled slightly inward), instead of being covered.

# %%
x = torch.randn(n2, 2, generator=torch.Generator().manual_seed(8))
for t_int in range(lin.T, 0, -1):
    x = td.ddpm.step(x, eps_exact(x, torch.full((n2,), t_int)), t_int, lin, noise=torch.zeros_like(x))
x_no_noise = x
d_no_noise = td.metrics.sliced_wasserstein(x_no_noise, ref, generator=torch.Generator().manual_seed(0))
spread = {}  # the spread of the points around the centre of their cluster (nearest mode), per coordinate
for name, xx in [("data", ref), ("with noise", results[("exact eps*", "posterior")]), ("no noise", x_no_noise),
                 ("trained MLP", results[("trained MLP", "posterior")])]:
    assign = torch.cdist(xx.double(), gm.means).argmin(1)
    centres = torch.stack([xx.double()[assign == k].mean(0) for k in range(gm.K)])
    spread[name] = (xx.double() - centres[assign]).pow(2).sum(1).mean().div(2).sqrt().item()
print(f"no noise (sigma_t = 0): sliced W2 {d_no_noise:.4f} = {d_no_noise / floor:.1f} x the noise floor, "
      f"mean radius {x_no_noise.norm(dim=1).mean():.3f} (data {ref.norm(dim=1).mean():.3f})")
print("spread around the cluster centres: " + ", ".join(f"{k} {v:.3f}" for k, v in spread.items()))
fig, axes = plt.subplots(1, 2, figsize=(7, 3.4))
td.plotting.scatter2d(results[("exact eps*", "posterior")], ax=axes[0], title="with sigma_t z")
td.plotting.scatter2d(x_no_noise, ax=axes[1], title="sigma_t = 0")
plt.show()

# %%
# NBVAL_CHECK_OUTPUT
td.check_less("without the noise z, each mode collapses (spread below half the data's)", spread["no noise"],
              0.5 * spread["data"])
td.check_less("with the noise z, the spread is within 20% of the data's", abs(spread["with noise"] / spread["data"] - 1),
              0.2)
td.check_less("... and the mode check rejects the samples drawn without the noise z",
              -len(td.metrics.mixture_check(x_no_noise, gm).failed), 0)

# %% [markdown]
# A denoising trajectory: the trained MLP's particles (the last run above, $\sigma_t^2=\beta_t$) from
# $x_{1000}$ to $x_0$ (set `TINYDIFF_ANIMATE=1` for an animation instead of the strip).

# %%
display(td.plotting.animate_frames(traj[::100], lambda fr, ax: td.plotting.scatter2d(fr, ax=ax, lim=4),
                                   n_static=11, labels=[f"t = {t}" for t in traj.ts[::100]]))
plt.close("all")

# %% [markdown]
# ## 8. The ELBO, term by term (equations 47–58)
#
# DDPM is a latent-variable model: $x_1,\dots,x_T$ are latents, the "encoder" $q(x_{1:T}\mid x_0)$ is
# the fixed forward chain and the "decoder" is the reverse chain $p_\theta$. As for the VAE (lesson 01),
# $\log p_\theta(x_0)\ge\mathbb E_q\big[\log p_\theta(x_{0:T})/q(x_{1:T}\mid x_0)\big]$ (47). Split off the
# $t=1$ factor (49), rewrite each forward factor with Bayes' rule *conditioned on $x_0$* (50–53)
#
# $$q(x_t\mid x_{t-1}) = q(x_t\mid x_{t-1},x_0) = \frac{q(x_{t-1}\mid x_t, x_0)\,q(x_t\mid x_0)}{q(x_{t-1}\mid x_0)},$$
#
# and the ratios $q(x_t\mid x_0)/q(x_{t-1}\mid x_0)$ telescope to $q(x_T\mid x_0)/q(x_1\mid x_0)$ (54–55).
# Each remaining log-ratio depends on only one or two of the latents, so its expectation is over their
# marginal (56–57), and the result is (58):
#
# $$\log p_\theta(x_0) \ge \underbrace{\mathbb E_{q(x_1\mid x_0)}\log p_\theta(x_0\mid x_1)}_{\text{reconstruction}}
# - \underbrace{\mathrm{KL}\big(q(x_T\mid x_0)\,\|\,p(x_T)\big)}_{\text{prior matching}}
# - \sum_{t=2}^T\underbrace{\mathbb E_{q(x_t\mid x_0)}\mathrm{KL}\big(q(x_{t-1}\mid x_t,x_0)\,\|\,
# p_\theta(x_{t-1}\mid x_t)\big)}_{\text{denoising matching}}.$$
#
# Every term is between Gaussians, hence closed form given $x_t$:
# $\mathrm{KL}(\mathcal N(\mu_1,v_1)\|\mathcal N(\mu_2,v_2)) = \tfrac12\big(\log\tfrac{v_2}{v_1} + \tfrac{v_1}{v_2} - 1 +
# \tfrac{(\mu_1-\mu_2)^2}{v_2}\big)$ per coordinate. With $p_\theta(x_{t-1}\mid x_t) = \mathcal N(\mu_\theta, \sigma_t^2 I)$
# and $\sigma_t^2 = \tilde\beta_t$, the mean part is
# $\frac{1}{2\tilde\beta_t}\|\tilde\mu_t - \mu_\theta\|^2 =
# \frac{\beta_t^2}{2\tilde\beta_t\alpha_t(1-\bar\alpha_t)}\|\varepsilon-\hat\varepsilon_\theta\|^2$:
# the $\varepsilon$-loss again, with a $t$-dependent weight that $L_\text{simple}$ drops.
# For continuous 2-D data the decoder $p_\theta(x_0\mid x_1)$ is a Gaussian $\mathcal N(\mu_\theta(x_1,1),\beta_1 I)$.
#
# First, the Gaussian KL on numbers, against a Monte-Carlo estimate of $\mathbb E_q[\log q - \log p]$:

# %%
m1, m2 = torch.tensor([[0.3, -1.0]]), torch.tensor([[0.1, -0.5]])
v1, v2 = 0.2, 0.5
kl_formula = td.ddpm.gaussian_kl(m1, v1, m2, v2)
xs = m1 + v1**0.5 * torch.randn(cfg.n_mc, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
log_ratio = td.ddpm.gaussian_log_prob(xs, m1.double(), v1) - td.ddpm.gaussian_log_prob(xs, m2.double(), v2)
kl_mc, kl_se = log_ratio.mean().item(), log_ratio.std().item() / math.sqrt(cfg.n_mc)
print(f"KL closed form {kl_formula.item():.5f}, Monte Carlo {kl_mc:.5f} ± {kl_se:.5f}")

# %%
# NBVAL_CHECK_OUTPUT
td.check_less("Gaussian KL: closed form vs Monte Carlo, in standard errors", abs(kl_formula.item() - kl_mc) / kl_se, 5)

# %% [markdown]
# Now all the terms for the trained 2-D model and for the exact $\varepsilon^*$, on held-out data, with both
# variance choices. For the mixture we also know the true $\mathbb E\log q(x_0)$, the best any model can
# reach, and the ELBO may not exceed it on average.

# %%
x_elbo = gm.sample(cfg.n_elbo, torch.Generator().manual_seed(200)).double()
log_q = gm.log_prob(x_elbo)  # the exact log-density of each held-out point
log_p_data = log_q.mean().item()
elbo = {}
for name, fn in [("exact eps*", eps_exact), ("trained MLP", lambda x, t: eps_net(x.float(), t).double())]:
    for var in ("posterior", "beta"):
        with torch.no_grad():
            elbo[(name, var)] = td.ddpm.elbo_terms(fn, x_elbo, lin, var=var, generator=torch.Generator().manual_seed(3),
                                                   progress_bar=True)
print(f"E log q(x0) of the data (exact): {log_p_data:.3f} nats; the gap log q(x0) - ELBO(x0) is averaged per point")
print(f"{'':12s} {'sigma^2':>9s} {'reconstr.':>10s} {'prior KL':>10s} {'sum denois.':>12s} {'ELBO':>8s} {'gap':>7s} "
      f"{'± s.e.':>7s}")
gap = {}
for (name, var), r in elbo.items():
    d = log_q - r["elbo"]
    gap[(name, var)] = (d.mean().item(), d.std().item() / math.sqrt(len(d)))
    print(f"{name:12s} {var:>9s} {r['reconstruction'].mean():10.3f} {r['prior'].mean():10.5f} "
          f"{r['denoising'].sum(1).mean():12.3f} {r['elbo'].mean():8.3f} {gap[(name, var)][0]:7.3f} "
          f"{gap[(name, var)][1]:7.3f}")

# %%
fig, ax = plt.subplots(figsize=(6.5, 3.4))
for (name, var), r in elbo.items():
    ax.plot(torch.arange(2, lin.T + 1), r["denoising"].mean(0), label=f"{name}, {var}", lw=1)
ax.set(xscale="log", yscale="log", xlabel="t", ylabel="nats",
       title="denoising matching terms E KL(q(x_{t-1}|x_t,x_0) || p(x_{t-1}|x_t))")
ax.legend(fontsize=8)
plt.show()

# %% [markdown]
# The closed-form sum (58) is one way to compute the ELBO. The definition (47) is another, and shares
# nothing with it: draw the *whole* forward chain $x_1,\dots,x_T\sim q(\cdot\mid x_0)$ one step at a time and
# average
# $\log p(x_T) + \sum_{t=1}^T\log p_\theta(x_{t-1}\mid x_t) - \sum_{t=1}^T\log q(x_t\mid x_{t-1})$, with the
# densities from `torch.distributions` and $\mu_\theta$ written out by hand. Both estimate the same number
# for each $x_0$, so their difference averages to 0 (the paired standard error is small: the same $x_0$).
# Then the gap $\mathbb E[\log q(x_0) - \text{ELBO}]$ is checked from *both* sides: it is $\ge 0$ (a bound),
# and for $\sigma_t^2=\beta_t$ it is small (the claim of the next cell's notes).

# %%
chain = {}
for var in ("posterior", "beta"):
    g_chain = torch.Generator().manual_seed(4)
    sig2 = lin.posterior_variance if var == "posterior" else lin.beta
    x_prev, log_w = x_elbo, torch.zeros(len(x_elbo), dtype=torch.float64)
    for t_int in range(1, lin.T + 1):
        x_t = lin.alpha[t_int].sqrt() * x_prev + lin.beta[t_int].sqrt() * torch.randn(
            x_prev.shape, generator=g_chain, dtype=torch.float64)
        mu = (x_t - lin.beta[t_int] / (1 - lin.alpha_bar[t_int]).sqrt() * eps_exact(x_t, torch.full((len(x_t),), t_int))
              ) / lin.alpha[t_int].sqrt()
        v_dec = lin.beta[1] if t_int == 1 else sig2[t_int]  # the decoder p(x0 | x1) has variance beta_1
        log_w += torch.distributions.Normal(mu, v_dec.sqrt()).log_prob(x_prev).sum(1)
        log_w -= torch.distributions.Normal(lin.alpha[t_int].sqrt() * x_prev, lin.beta[t_int].sqrt()).log_prob(x_t).sum(1)
        x_prev = x_t
    chain[var] = log_w + torch.distributions.Normal(0.0, 1.0).log_prob(x_prev).sum(1)
    d = elbo[("exact eps*", var)]["elbo"] - chain[var]
    g_c = log_q - chain[var]
    gap[("chain", var)] = (g_c.mean().item(), g_c.std().item() / math.sqrt(len(g_c)))
    print(f"sigma^2 = {var:9s}: ELBO closed form {elbo[('exact eps*', var)]['elbo'].mean():.3f}, whole chain "
          f"{chain[var].mean():.3f}, paired difference {d.mean():+.3f} ± {d.std() / math.sqrt(len(d)):.3f}; "
          f"gap (chain) {gap[('chain', var)][0]:.3f} ± {gap[('chain', var)][1]:.3f}")

# %%
# NBVAL_CHECK_OUTPUT
for var in ("posterior", "beta"):
    d = elbo[("exact eps*", var)]["elbo"] - chain[var]
    td.check_less(f"var={var}: closed-form sum (58) = Monte Carlo over the whole chain (47), within 4 s.e.",
                  abs(d.mean().item()) / (d.std().item() / math.sqrt(len(d))), 4)
    for how in ("exact eps*", "chain"):  # a lower bound: E[log q(x0) - ELBO] >= 0, up to Monte-Carlo error
        td.check_less(f"var={var}, {how}: E[log q(x0) - ELBO] is not below 0 (by 3 s.e.)",
                      -gap[(how, var)][0], 3 * gap[(how, var)][1])
for how in ("exact eps*", "chain"):  # ... and from above: with sigma^2 = beta_t the bound is nearly tight
    td.check_less(f"sigma^2 = beta, {how}: E[log q(x0) - ELBO] below 0.15 nats (+ 3 s.e.)",
                  gap[(how, "beta")][0], 0.15 + 3 * gap[(how, "beta")][1])
td.check_less("prior matching term below 1e-3 nats (T=1000, linear)", elbo[("exact eps*", "posterior")]["prior"].mean().item(),
              1e-3)
td.check_less("sigma^2 = beta gives the tighter bound for the exact eps* (chain, by 3 s.e.)",
              gap[("chain", "beta")][0] + 3 * gap[("chain", "posterior")][1], gap[("chain", "posterior")][0])

# %% [markdown]
# What the numbers say:
#
# - The **prior matching** term is negligible for $T=1000$ (§3), and no parameter can change it.
# - The **denoising** terms are largest at small $t$. With $\sigma_t^2 = \tilde\beta_t$ even the exact
#   $\varepsilon^*$ pays a lot there: $\tilde\beta_t$ is the reverse variance *given* $x_0$, but the true
#   reverse step $q(x_{t-1}\mid x_t)$ is also uncertain about $x_0$, so its variance is larger. With
#   $\sigma_t^2 = \beta_t$ the exact $\varepsilon^*$ gets close to the data's $\mathbb E\log q(x_0)$: for
#   smooth data and small $\beta_t$, $\beta_t$ is nearly the true reverse variance. (The unit tests check
#   this on Gaussian data, where the ELBO and $\log p_\theta$ are both closed-form.) Improved DDPM learns
#   $\sigma_t^2$ between the two for this reason.
# - The sampler in §7 did not care about this: sample quality and likelihood measure different things.
#
# ## 9. Algorithm 1 and 2 on handwritten digits
#
# The same loss and the same sampler on images: scikit-learn's $8\times8$ digits (1,797 real images in
# $[-1,1]$, shape `(B, 1, 8, 8)`). The noise predictor is now the lecture's: a small UNet
# (`td.models.UNet`: ResBlocks with GroupNorm, the sinusoidal time embedding added in every block, one
# downsampling to $4\times4$ and back, skip connections). Nothing in `td.ddpm` changes: it only sees a
# callable $(x_t, t)\mapsto\hat\varepsilon$ of the same shape as $x_t$.

# %%
digits_flat = digits.flatten(1)  # (1797, 64), for distances below
digit_net = td.models.UNet(in_channels=1, base_channels=cfg.digit_width, channel_mults=(1, 2))
print(f"UNet denoiser with {sum(p.numel() for p in digit_net.parameters()):,} parameters")
fit_digits = td.train.fit(digit_net, lambda m, x: td.ddpm.loss(m, x, lin), digits, steps=cfg.digit_steps,
                          batch_size=128, lr=1e-3, warmup=100, ema_decay=cfg.ema, desc="Algorithm 1 (digits)",
                          shipped="02_algorithm_1_digits")
digit_eps = fit_digits.sampler_model

# %%
samples = {}
for var in ("posterior", "beta"):
    with torch.no_grad():
        traj_digits = td.utils.Trajectory()
        xs = td.ddpm.sample(digit_eps, (cfg.n_digits, 1, 8, 8), lin, var=var,
                            generator=torch.Generator().manual_seed(11), callback=traj_digits)
    samples[var] = xs.cpu()
fig, axes = plt.subplots(1, 3, figsize=(13.5, 4.5))
td.plotting.show_images(digits[: cfg.n_digits], nrow=8, ax=axes[0], title="real digits")
for ax, (var, xs) in zip(axes[1:], samples.items()):
    label = "tilde beta_t" if var == "posterior" else "beta_t"
    td.plotting.show_images(xs, nrow=8, ax=ax, title=f"DDPM samples, sigma^2 = {label}")
plt.show()
for var, xs in samples.items():
    s_flat = xs.flatten(1)
    nn_dist = torch.cdist(s_flat, digits_flat).min(1).values.mean().item()
    print(f"sigma^2={var:9s}: pixel mean {s_flat.mean():+.3f} (data {digits_flat.mean():+.3f}), pixel std "
          f"{s_flat.std():.3f} (data {digits_flat.std():.3f}), mean distance to the nearest training digit "
          f"{nn_dist:.2f}")

# %% [markdown]
# The last sampling run ($\sigma_t^2 = \beta_t$) as a denoising strip, from $x_{1000}$ to $x_0$, four
# samples per frame (`TINYDIFF_ANIMATE=1` gives an animation):

# %%
frames = [f[:4] for f in traj_digits[::125]]
display(td.plotting.animate_frames(frames, lambda fr, ax: td.plotting.show_images(fr, nrow=2, ax=ax), n_static=9,
                                   labels=[f"t = {t}" for t in traj_digits.ts[::125]], ncols=5))
plt.close("all")

# %% [markdown]
# In the `standard` profile (3,000 training steps, about a minute and a half on a CPU) the samples are digit-like:
# many are recognisable, some are malformed, and they are noisier than the real digits; the `full` profile
# trains longer with a wider network. The numbers above (pixel statistics, distance to the nearest training
# image) are only a first sanity check; lesson 03 measures sample quality properly.
#
# ## 10. A famous bug, and the check that catches it
#
# The most common DDPM bug is to noise with $(1-\bar\alpha_t)\,\varepsilon$ instead of
# $\sqrt{1-\bar\alpha_t}\,\varepsilon$. Nothing crashes, the training loss goes down, and the samples come out
# wrong, because the network learned to undo a different forward process than the sampler assumes. Here
# is the buggy function (it lives in the notebook only as a specimen):

# %%
buggy_q_sample = lambda x0, t, eps, sched: (sched.alpha_bar[t].sqrt()[:, None] * x0
                                           + (1 - sched.alpha_bar[t])[:, None] * eps).to(x0.dtype)

# The variance of x_t for unit-variance data is alpha_bar_t * 1 + (noise variance); it should stay 1:
var_ok = lin.alpha_bar + (1 - lin.alpha_bar)
var_buggy = lin.alpha_bar + (1 - lin.alpha_bar) ** 2
plt.figure(figsize=(5, 3))
plt.plot(t_axis, var_ok, label="correct")
plt.plot(t_axis, var_buggy, label="missing square root")
plt.gca().set(xlabel="t", ylabel="Var[x_t] for unit-variance data", title="the bug shrinks the noise")
plt.legend()
plt.show()
print(f"the buggy x_t has variance {var_buggy.min():.3f} at its worst (t = {int(var_buggy.argmin())})")

# %% [markdown]
# The check of §2 (single steps = closed form, with coupled noise) catches it at once. We run it on the
# buggy function inside `try/except`:

# %%
# NBVAL_CHECK_OUTPUT
x0_bug = torch.randn(64, 2, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
xt_steps, eps_bar_bug = td.ddpm.q_sample_steps(x0_bug, 300, lin, generator=torch.Generator().manual_seed(6))
try:
    td.check("buggy q_sample: steps = closed form", buggy_q_sample(x0_bug, torch.full((64,), 300), eps_bar_bug, lin),
             xt_steps, atol=1e-6)
    print("the bug was NOT caught")
except AssertionError as err:
    print("caught the missing square root:", str(err).split(":")[0])
td.check("the correct q_sample passes the same check", td.ddpm.q_sample(x0_bug, 300, eps_bar_bug, lin), xt_steps,
         atol=1e-6)

# %% [markdown]
# ## Exercises
#
# **Exercise 1: the closed-form forward process.** Implement $q(x_t\mid x_0)$:
# `x_t = sqrt(alpha_bar_t) x0 + sqrt(1 - alpha_bar_t) eps`, for a batch with per-sample `t` (a LongTensor
# `(B,)`). Hints: index `sched.alpha_bar[t]` and reshape the result to broadcast over `x0`'s other
# dimensions (`td.utils.expand_to` does that); the schedule is float64, so cast to `x0.dtype`. Mind both
# square roots.

# %%
def my_q_sample(x0, t, eps, sched):
    # Your code here: return x_t.
    raise NotImplementedError


# %%
def q_sample_cases(i):
    gen = torch.Generator().manual_seed(i)
    x0 = torch.randn(4, 1, 3, 3, generator=gen)
    return x0, torch.randint(1, 1001, (4,), generator=gen), torch.randn(x0.shape, generator=gen), lin


def _expand(c, x):
    return td.utils.expand_to(c, x)


q_sample_mistakes = {
    "the noise must be scaled by sqrt(1 - alpha_bar_t), not (1 - alpha_bar_t): the famous missing square root":
        lambda x0, t, eps, s: _expand(s.alpha_bar[t].sqrt(), x0) * x0 + _expand(1 - s.alpha_bar[t], x0) * eps,
    "the signal must be scaled by sqrt(alpha_bar_t), not alpha_bar_t":
        lambda x0, t, eps, s: _expand(s.alpha_bar[t], x0) * x0 + _expand((1 - s.alpha_bar[t]).sqrt(), x0) * eps,
    "use the cumulative alpha_bar_t, not the single-step alpha_t":
        lambda x0, t, eps, s: _expand(s.alpha[t].sqrt(), x0) * x0 + _expand((1 - s.alpha[t]).sqrt(), x0) * eps,
}

# %%
# NBVAL_CHECK_OUTPUT
td.exercises.check(my_q_sample, td.ddpm.q_sample, q_sample_cases, mistakes=q_sample_mistakes)

# %% [markdown]
# **Exercise 2: the posterior mean.** Implement $\tilde\mu_t(x_t, x_0) = \frac{\sqrt{\bar\alpha_{t-1}}\beta_t}
# {1-\bar\alpha_t}x_0 + \frac{\sqrt{\alpha_t}(1-\bar\alpha_{t-1})}{1-\bar\alpha_t}x_t$ for `t` in `1..T`.
# Hints: $\bar\alpha_{t-1}$ is `sched.alpha_bar[t - 1]` (or `sched.alpha_bar_prev[t]`); which coefficient
# goes with $x_0$ and which with $x_t$? At $t=1$ your answer must be exactly $x_0$.

# %%
def my_posterior_mean(x0, xt, t, sched):
    # Your code here: return the mean of q(x_{t-1} | x_t, x_0).
    raise NotImplementedError


# %%
def posterior_cases(i):
    gen = torch.Generator().manual_seed(10 + i)
    x0 = torch.randn(5, 2, generator=gen)
    return x0, torch.randn(5, 2, generator=gen), torch.randint(1, 1001, (5,), generator=gen), lin


def _coefs(s, t, x, prev):
    ab, abp = s.alpha_bar[t], s.alpha_bar[t - 1] if prev else s.alpha_bar[t]
    ex = td.utils.expand_to  # this exercise's own helpers: each exercise cell runs on its own
    return ex(abp.sqrt() * s.beta[t] / (1 - ab), x), ex(s.alpha[t].sqrt() * (1 - abp) / (1 - ab), x)


posterior_mistakes = {
    "the coefficients are swapped: sqrt(alpha_bar_{t-1}) beta_t / (1 - alpha_bar_t) multiplies x0":
        lambda x0, xt, t, s: _coefs(s, t, x0, True)[1] * x0 + _coefs(s, t, x0, True)[0] * xt,
    "use alpha_bar_{t-1} (one step earlier) where the formula says so, not alpha_bar_t":
        lambda x0, xt, t, s: _coefs(s, t, x0, False)[0] * x0 + _coefs(s, t, x0, False)[1] * xt,
}

# %%
# NBVAL_CHECK_OUTPUT
td.exercises.check(my_posterior_mean, lambda *a: td.ddpm.q_posterior(*a)[0], posterior_cases,
                   mistakes=posterior_mistakes)

# %% [markdown]
# **Exercise 3: one step of Algorithm 2.** Given $x_t$, the predicted noise, $t$ and a noise draw $z$,
# return $x_{t-1} = \frac{1}{\sqrt{\alpha_t}}\big(x_t - \frac{\beta_t}{\sqrt{1-\bar\alpha_t}}\hat\varepsilon\big) + \sigma_t z$
# with $\sigma_t^2 = \tilde\beta_t$ (`sched.posterior_variance`). Since $\tilde\beta_1 = 0$, the step at $t = 1$ adds
# no noise by itself (so the checker cannot tell whether you also switch the noise off there; with
# $\sigma_t^2 = \beta_t$ you would have to). Hints: $\sigma_t$ is a standard deviation (a square root of the variance);
# the $\sqrt{\cdot}$ under $\beta_t$ is on $1-\bar\alpha_t$, while the prefactor $1/\sqrt{\alpha_t}$ uses the single-step
# $\alpha_t$, not $\bar\alpha_t$.

# %%
def my_reverse_step(xt, eps, t, z, sched):
    # Your code here: return x_{t-1}.
    raise NotImplementedError


# %%
def step_cases(i):
    gen = torch.Generator().manual_seed(20 + i)
    t = torch.randint(1, 1001, (6,), generator=gen)
    t[0] = 1
    xs = torch.randn(3, 6, 2, generator=gen)
    return xs[0], xs[1], t, xs[2], lin


def _mean_plus(xt, e, t, z, s, sd, mean_scale=None):
    """Algorithm 2's mean (td.ddpm.p_mean), optionally rescaled, plus sd[t] z: the pieces a student's wrong answer
    is made of (this exercise's own helper: each exercise cell runs on its own)."""
    ex = td.utils.expand_to
    mean = td.ddpm.p_mean(xt, e, t, s)
    return (mean if mean_scale is None else ex(mean_scale[t], xt) * mean) + ex(sd[t], xt) * z


step_mistakes = {
    "sigma_t is the square root of the variance: multiply z by sqrt(posterior_variance[t])":
        lambda xt, e, t, z, s: _mean_plus(xt, e, t, z, s, s.posterior_variance),
    "Algorithm 2 samples: add sigma_t z to the mean (for t > 1)":
        lambda xt, e, t, z, s: _mean_plus(xt, e, t, z, s, torch.zeros_like(s.beta)),
    "this exercise asks for sigma_t^2 = tilde beta_t (sched.posterior_variance), not beta_t":
        lambda xt, e, t, z, s: _mean_plus(xt, e, t, z, s, s.beta.sqrt()),
    "the prefactor is 1/sqrt(alpha_t) (the single step), not 1/sqrt(alpha_bar_t)":
        lambda xt, e, t, z, s: _mean_plus(xt, e, t, z, s, s.posterior_variance.sqrt(),
                                          mean_scale=(s.alpha / s.alpha_bar).sqrt()),
    "the noise coefficient is beta_t / sqrt(1 - alpha_bar_t): the square root is missing":
        lambda xt, e, t, z, s: _mean_plus(xt, e / td.utils.expand_to((1 - s.alpha_bar[t]).sqrt(), xt), t, z, s,
                                          s.posterior_variance.sqrt()),
}

# %%
# NBVAL_CHECK_OUTPUT
td.exercises.check(my_reverse_step, lambda xt, e, t, z, s: td.ddpm.step(xt, e, t, s, noise=z), step_cases,
                   mistakes=step_mistakes)

# %% [markdown]
# **Exercise 3b (find the bug).** This posterior variance makes Algorithm 2 add far too much noise at small $t$
# (compare its value at $t = 2$ with $\tilde\beta_2$ in §4). Find the bug and write `my_posterior_variance(t, sched)`
# for a LongTensor `t` in `1..T`.

# %%
def buggy_posterior_variance(t, sched):
    return (1 - sched.alpha_bar[t]) / (1 - sched.alpha_bar[t]) * sched.beta[t]


def my_posterior_variance(t, sched):
    # Your code here: the corrected buggy_posterior_variance.
    raise NotImplementedError


# %%
# NBVAL_CHECK_OUTPUT
def post_var_cases(i):
    t = torch.randint(1, 1001, (8,), generator=torch.Generator().manual_seed(60 + i))
    t[0] = 2
    return t, td.NoiseSchedule.linear(1000)


td.exercises.check(my_posterior_variance, lambda t, s: s.posterior_variance[t], post_var_cases, mistakes={
    "that is the buggy version: the numerator is 1 - alpha_bar_{t-1}, one step earlier": buggy_posterior_variance,
    "alpha_bar_{t-1} is sched.alpha_bar[t - 1], not alpha_bar[t + 1]":
        lambda t, s: (1 - s.alpha_bar[(t + 1).clamp(max=s.T)]) / (1 - s.alpha_bar[t]) * s.beta[t],
})

# %% [markdown]
# **Exercise 4 (open).** Train the 2-D model of §6 with `target="x0"` instead of `"eps"` (pass
# `lambda m, x: td.ddpm.loss(m, x, lin, target="x0")` to `td.train.fit`), sample with
# `td.convert.eps_fn_from_x0_fn(model, lin)`, and compare the sliced Wasserstein distance with §7. Which
# steps $t$ does the $x_0$-loss weight more (see the plot in §5)?
#
# **Exercise 5 (open).** Repeat §3 and §7 with `td.NoiseSchedule.linear(100)`. How far from noise is
# $x_T$, and what does that do to the samples of the exact $\varepsilon^*$?
#
# ## Summary
#
# | idea | tinydiff |
# | --- | --- |
# | schedule tables $\beta_t,\alpha_t,\bar\alpha_t,\tilde\beta_t$ | `td.NoiseSchedule.linear / cosine` |
# | $q(x_t\mid x_{t-1})$, $q(x_t\mid x_0)$ | `td.ddpm.q_step`, `td.ddpm.q_sample`, `td.ddpm.q_sample_steps` |
# | $q(x_{t-1}\mid x_t,x_0)$ | `td.ddpm.q_posterior` |
# | $x_0\leftrightarrow\varepsilon\leftrightarrow$ score $\leftrightarrow v$ | `td.convert` |
# | Algorithm 1 | `td.ddpm.loss` (+ `td.train.fit`), weights `td.ddpm.loss_weight` |
# | Algorithm 2 | `td.ddpm.p_mean`, `td.ddpm.step`, `td.ddpm.sample(var="posterior" / "beta")` |
# | ELBO (58) | `td.ddpm.elbo_terms`, `prior_kl`, `denoising_kl`, `reconstruction_log_prob` |
#
# Next: lesson 03 (DDIM) keeps the trained $\varepsilon_\theta$ and changes only the sampler.
