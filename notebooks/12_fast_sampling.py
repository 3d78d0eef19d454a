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
# # 12 · Fast sampling: solvers of the probability-flow ODE
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/tinydiff/tinydiff/blob/main/notebooks/12_fast_sampling.ipynb)
#
# A trained diffusion model is a denoiser; how many times we must call it to draw one sample is a question about
# *numerical analysis*, not about the model. Lesson 04 showed that deterministic sampling integrates the
# probability-flow ODE, and lesson 03 that DDIM can skip steps. Here we put the two together, following the
# lecture's "DDIM: accelerated generation", "Probability flow ODE: ODE accelerated solver" and the preview of later
# topics (optimal variance estimation, PNDM/PLMS, accelerated sampling). We write the ODE once for every model,
# see that DDIM is its first-order solver, and build the solvers people actually use — DPM-Solver++ (1, 2M, 3M),
# EDM's Heun, PLMS/PNDM — each checked against the diffusers scheduler that implements it. On the exact
# Gaussian-mixture oracle there is no network error at all, so we can *measure* each solver's order of accuracy
# off a log-log plot — and find that one of them is not the order its name says. We compare σ grids (Karras/EDM,
# log-SNR, DDIM's spacings), and end with Analytic-DPM: the optimal variance of a few-step DDPM, exact on Gaussian
# data.

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

import diffusers
import matplotlib.pyplot as plt
import torch

import tinydiff as td
from tinydiff import solvers

cfg = td.profiles.choose(  # sizes for the active profile: quick (tests) / standard (CPU) / full (GPU)
    quick=dict(n_order=64, n_dist=1000, n_gamma=2000, steps=[4, 8, 16, 32], n_analytic=1000),
    standard=dict(n_order=128, n_dist=2000, n_gamma=4000, steps=[4, 6, 8, 12, 16, 24, 32, 64], n_analytic=2000),
    full=dict(n_order=1024, n_dist=20000, n_gamma=50000, steps=[4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256],
              n_analytic=20000),
)
dev = td.device()
g = td.seed_everything(0)
print(f"profile {cfg.profile}, device {dev}")

# %% [markdown]
# ## 1. One ODE for every model
#
# Every path of the book is $x_t = \alpha_t x_0 + \sigma_t\varepsilon$ (`td.denoisers`). Divide by $\alpha_t$:
# $y = x_t/\alpha_t = x_0 + \sigma\,\varepsilon$ with the **VE noise level** $\sigma = \sigma_t/\alpha_t$ (for a VP
# model $\sigma = \sqrt{(1-\bar\alpha_t)/\bar\alpha_t}$). In these variables the probability-flow ODE of lesson 04 is
# the same for every model (Karras et al. 2022, eq. 4 with $s(t)=1$):
#
# $$\frac{dy}{d\sigma} = -\sigma\,\nabla_y\log p(y;\sigma) = \frac{y - D(y,\sigma)}{\sigma} = \hat\varepsilon(y,\sigma),$$
#
# where $D(y,\sigma) = \mathbb E[x_0\mid y]$ is the denoiser (Tweedie). A model that predicts $\varepsilon$, $x_0$,
# $v$ or a velocity on any path gives $D$ through `Denoiser.x0_sigma()`. For the 8-mode ring the exact $D$ is the
# mixture's posterior mean. A solver is a rule for stepping along a decreasing grid
# $\sigma_0 > \sigma_1 > \dots > \sigma_N = 0$.

# %%
sched = td.NoiseSchedule.linear(1000)
path = td.denoisers.DiscreteVP(sched)
ring = td.data.GaussianMixture.ring(8, radius=2.0, std=0.2)
oracle_vp = ring.denoiser(path)                 # the exact denoiser of a DDPM on the table t = 1..T
oracle_ve = ring.denoiser(td.denoisers.VE())    # the same oracle at any sigma (no table)
D = oracle_ve.x0_sigma()                        # D(y, sigma)
sigma_min, sigma_max = float(path.sigma_ve(1)), float(path.sigma_ve(sched.T))
print(f"sigma_VE runs from {sigma_min:.4f} (t = 1) to {sigma_max:.1f} (t = T)")

# %% [markdown]
# **DDIM is Euler's method in σ.** The Euler step is $y' = y + (\sigma'-\sigma)\,\hat\varepsilon
# = D + \frac{\sigma'}{\sigma}(y - D)$. Multiply by $\alpha' = 1/\sqrt{1+\sigma'^2}$ and write
# $\hat x_0 = D$: it is $x' = \sqrt{\bar\alpha'}\hat x_0 + \sqrt{1-\bar\alpha'}\,\hat\varepsilon$, the deterministic DDIM
# step (lesson 03, eq. 12 with $\sigma_t = 0$). So on DDIM's own grid of timesteps the two samplers agree number
# for number:

# %%
x_T = torch.randn(512, 2, generator=g, dtype=torch.float64)
grid10 = solvers.grid(path, 10, "trailing")
y_T = x_T * math.sqrt(1 + float(grid10[0]) ** 2)  # y = x_T / alpha_T
ddim_x0 = td.ddim.sample(oracle_vp.eps_fn(), x_T.shape, sched, 10, eta=0.0, spacing="trailing", x_T=x_T,
                         progress_bar=False)
euler_x0 = solvers.euler(oracle_vp.x0_sigma(), grid10, y_T, progress_bar=False)

# %%
# NBVAL_CHECK_OUTPUT
td.check("deterministic DDIM (10 trailing steps) = Euler in sigma on the same grid", euler_x0, ddim_x0, atol=1e-10)

# %% [markdown]
# ## 2. Log-SNR and DPM-Solver++
#
# The ODE has a linear part. In the half log-SNR $\lambda = -\log\sigma$ (so $d\sigma = -\sigma\,d\lambda$) it reads
# $dy/d\lambda = D - y$, and variation of constants solves the linear part exactly:
#
# $$y(\lambda') = e^{-h}\,y(\lambda) + \int_\lambda^{\lambda'} e^{-(\lambda'-u)}\,D\big(y(u), u\big)\,du,\qquad
#   h = \lambda'-\lambda = \log\frac{\sigma}{\sigma'} .$$
#
# Only $D$ is approximated. **DPM-Solver++(1)** freezes it: $y' = e^{-h}y + (1-e^{-h})D$ — again DDIM, since
# $e^{-h} = \sigma'/\sigma$. **DPM-Solver++(2M)** uses the previous step's $D_{i-1}$ for the slope in $\lambda$,
# $D(u) \approx D_i + (u-\lambda_i)\frac{D_i - D_{i-1}}{h_{i-1}}$, at no extra call:
#
# $$y_{i+1} = e^{-h_i}y_i + (1-e^{-h_i})\Big(D_i + \frac{1}{2r_i}(D_i - D_{i-1})\Big),\qquad r_i = h_{i-1}/h_i .$$
#
# **DPM-Solver++(3M)** adds a second divided difference from $D_{i-2}$. Each is one call per step; the first
# steps (and the step into $\sigma = 0$, where $h = \infty$) fall back to lower order. diffusers'
# `DPMSolverMultistepScheduler` implements all three in the VP variable $x$ (its $\alpha_t,\sigma_t$ are ours, and
# its index $k$ is our $t - 1$). We run it with the oracle as the "model" (no weights) and compare step for step;
# we give it our float64 $\bar\alpha$ table (it would build a float32 one) and feed it our $\hat\varepsilon$.

# %%
results = {}
for order, solver in ((1, solvers.dpmpp_1), (2, solvers.dpmpp_2m), (3, solvers.dpmpp_3m)):
    ds = diffusers.DPMSolverMultistepScheduler(num_train_timesteps=1000, beta_schedule="linear", beta_start=1e-4,
                                               beta_end=0.02, algorithm_type="dpmsolver++", solver_order=order,
                                               final_sigmas_type="zero", use_karras_sigmas=True)
    ds.alphas_cumprod = sched.alpha_bar[1:].clone()
    ds.set_timesteps(12)
    x = x_T.clone()
    for i, k in enumerate(ds.timesteps):
        s = float(ds.sigmas[i])
        y = x * math.sqrt(1 + s**2)
        x = ds.step((y - D(y, s)) / s, k, x).prev_sample
    ours = solver(D, ds.sigmas.double(), x_T * math.sqrt(1 + float(ds.sigmas[0]) ** 2), progress_bar=False)
    results[order] = (ours, x)
    print(f"order {order}: max |ours - diffusers| = {(ours - x).abs().max():.2e} (diffusers steps in float32)")

# %%
# NBVAL_CHECK_OUTPUT
for order in (1, 2, 3):
    td.check(f"DPM-Solver++({'1' if order == 1 else f'{order}M'}) = diffusers DPMSolverMultistepScheduler "
             f"(solver_order={order})", results[order][0], results[order][1], atol=1e-4)
td.check("DPM-Solver++(1) = Euler in sigma (the same step written two ways)",
         solvers.dpmpp_1(D, grid10, y_T, progress_bar=False), solvers.euler(D, grid10, y_T, progress_bar=False),
         atol=1e-12)

# %% [markdown]
# ## 3. Heun in σ (EDM)
#
# Karras et al. (2022) argue that in $(y, \sigma)$ the trajectories are nearly straight, so a plain
# second-order Runge–Kutta method does well. EDM's Algorithm 1 (without "churn") is Heun's method:
#
# $$\tilde y = y_i + (\sigma_{i+1}-\sigma_i)\,d_i,\qquad
#   y_{i+1} = y_i + (\sigma_{i+1}-\sigma_i)\,\tfrac12\big(d_i + d(\tilde y,\sigma_{i+1})\big),\qquad
#   d = \frac{y - D(y,\sigma)}{\sigma},$$
#
# with a plain Euler step into $\sigma_N = 0$, where $d$ is undefined: $N$ steps cost $2N - 1$ calls. diffusers'
# `HeunDiscreteScheduler` stores the grid with every inner σ twice (one entry per call).

# %%
ds = diffusers.HeunDiscreteScheduler(num_train_timesteps=1000, beta_schedule="linear", beta_start=1e-4,
                                     beta_end=0.02, use_karras_sigmas=True)
ds.alphas_cumprod = sched.alpha_bar[1:].clone()
ds.set_timesteps(10)
y = x_T * math.sqrt(1 + float(ds.sigmas[0]) ** 2)
y_start, n_calls = y.clone(), 0
for k in ds.timesteps:
    s = float(ds.sigmas[ds.step_index or 0])
    y = ds.step((y - D(y, s)) / s, k, y).prev_sample
    n_calls += 1
heun_grid = torch.cat([ds.sigmas[:1], ds.sigmas[1:-1:2], torch.zeros(1)]).double()
print(f"diffusers' grid has {len(ds.sigmas)} entries for 10 steps; {n_calls} calls "
      f"(td.solvers.nfe('heun', 10) = {solvers.nfe('heun', 10)})")

# %%
# NBVAL_CHECK_OUTPUT
td.check("Heun in sigma (EDM Algorithm 1) = diffusers HeunDiscreteScheduler",
         solvers.heun(D, heun_grid, y_start, progress_bar=False), y, atol=1e-4)
td.check("Heun makes 2N - 1 denoiser calls for N steps", n_calls, solvers.nfe("heun", 10), atol=0)

# %% [markdown]
# ## 4. PLMS and PNDM: a DDIM step as the transfer
#
# Liu et al. (2022) keep DDIM's step as a *transfer* $\phi(x_t, \hat\varepsilon, t\to s)$ (their eq. 9) and only
# improve the $\hat\varepsilon$ fed into it: a 4-step Adams–Bashforth combination
# $\hat\varepsilon' = \frac1{24}(55\varepsilon_i - 59\varepsilon_{i-1} + 37\varepsilon_{i-2} - 9\varepsilon_{i-3})$
# (PLMS), started by three pseudo Runge–Kutta steps (PNDM) or, as diffusers' `skip_prk_steps=True` does, by one
# Heun-like step and the 2- and 3-step combinations. In the variable $y$ the transfer is simply an Euler step with
# slope $\hat\varepsilon$: $y_s = y_t + (\sigma_s - \sigma_t)\,\hat\varepsilon$. So PLMS is Adams–Bashforth on
# $dy/d\sigma = \hat\varepsilon$ — but with the weights of *equal steps in t*, which a grid uniform in $t$ is not in σ.
# (One difference from diffusers to know: its `PNDMScheduler` always steps from $k$ to $k-\lfloor T/N\rfloor$, so
# it is PLMS on its own timesteps only for its default `leading` spacing, the one we compare with.)

# %%
pndm = diffusers.PNDMScheduler(num_train_timesteps=1000, beta_schedule="linear", beta_start=1e-4, beta_end=0.02)
pndm.alphas_cumprod = sched.alpha_bar[1:].clone()
eps_any = torch.randn(512, 2, generator=g, dtype=torch.float64)
t_, s_ = 700, 500
transfer = pndm._get_prev_sample(x_T, t_ - 1, s_ - 1, eps_any)  # diffusers' eq. (9), its k = our t - 1
ddim_step = td.ddim.step(x_T, eps_any, t_, s_, sched, eta=0.0)
euler_in_y = (x_T / path.alpha(t_) + (path.sigma_ve(s_) - path.sigma_ve(t_)) * eps_any) * path.alpha(s_)

# %%
# NBVAL_CHECK_OUTPUT
td.check("PNDM's transfer (eq. 9, diffusers) = the DDIM step", transfer, ddim_step, atol=1e-12)
td.check("the DDIM step = an Euler step y_s = y_t + (sigma_s - sigma_t) eps in y = x / alpha", euler_in_y, ddim_step,
         atol=1e-12)

# %%
plms_out = {}
for skip_prk in (True, False):
    ds = diffusers.PNDMScheduler(num_train_timesteps=1000, beta_schedule="linear", beta_start=1e-4, beta_end=0.02,
                                 skip_prk_steps=skip_prk, set_alpha_to_one=True)
    ds.alphas_cumprod = sched.alpha_bar[1:].clone()
    ds.final_alpha_cumprod = torch.tensor(1.0, dtype=torch.float64)
    ds.set_timesteps(10)
    x = x_T.clone()
    for k in ds.timesteps:
        s = float(path.sigma_ve(int(k) + 1))
        x = ds.step((x * math.sqrt(1 + s**2) - D(x * math.sqrt(1 + s**2), s)) / s, k, x).prev_sample
    plms_out[skip_prk] = (x, len(ds.timesteps))
lead10 = solvers.grid(path, 10, "leading")  # diffusers' PNDM default spacing (steps_offset = 0)
y_lead = x_T * math.sqrt(1 + float(lead10[0]) ** 2)
halves = path.sigma_ve(td.ddim.timesteps(1000, 10, "leading")[:3] - 1000 // 10 // 2)  # diffusers' half steps

# %%
# NBVAL_CHECK_OUTPUT
td.check("PLMS = diffusers PNDMScheduler(skip_prk_steps=True)", solvers.plms(D, lead10, y_lead, progress_bar=False),
         plms_out[True][0], atol=1e-10)
td.check("PNDM (pseudo Runge-Kutta start) = diffusers PNDMScheduler(skip_prk_steps=False)",
         solvers.pndm(D, lead10, y_lead, mid_sigmas=halves, progress_bar=False), plms_out[False][0], atol=1e-10)
td.check("calls: PLMS N + 1, PNDM N + 9", torch.tensor([plms_out[True][1], plms_out[False][1]]),
         torch.tensor([solvers.nfe("plms", 10), solvers.nfe("pndm", 10)]), atol=0)

# %% [markdown]
# ## 5. σ grids
#
# A solver is only as good as its grid. Four families, all ending with a jump to $\sigma = 0$:
#
# - DDIM's spacings of timesteps (`leading`, `trailing`, `linspace`; lesson 03): uniform in $t$;
# - uniform in $\log\sigma$, i.e. in $\lambda$ (DPM-Solver's "logSNR" grid);
# - Karras/EDM:
#   $\sigma_i = \big(\sigma_{\max}^{1/\rho} + \tfrac{i}{N-1}(\sigma_{\min}^{1/\rho}-\sigma_{\max}^{1/\rho})\big)^\rho$,
#   $\rho = 7$, which crowds the steps at low noise ($\rho = 1$: uniform in σ; $\rho\to\infty$: the log grid).

# %%
grids = {kind: solvers.grid(path, 10, kind) for kind in solvers.GRIDS}
fig, ax = plt.subplots(figsize=(7, 3.6))
for kind, s in grids.items():
    ax.semilogy(range(10), s[:-1], "o-", label=kind)
ax.set_xlabel("step i"), ax.set_ylabel(r"$\sigma_i$ (VE)"), ax.set_title("10-step grids (the final 0 not shown)")
ax.legend()
plt.show()

# %%
ds = diffusers.EulerDiscreteScheduler(num_train_timesteps=1000, beta_schedule="linear", beta_start=1e-4,
                                      beta_end=0.02, use_karras_sigmas=True)
ds.alphas_cumprod = sched.alpha_bar[1:].clone()
ds.set_timesteps(10)
ramp = torch.linspace(0, 1, 10, dtype=torch.float64)
by_hand = (sigma_max ** (1 / 7) + ramp * (sigma_min ** (1 / 7) - sigma_max ** (1 / 7))) ** 7

# %%
# NBVAL_CHECK_OUTPUT
td.check("Karras grid by hand = td.solvers.karras_sigmas", grids["karras"][:-1], by_hand, atol=0, rtol=1e-13)
td.check("Karras grid = diffusers use_karras_sigmas=True (float32)", grids["karras"], ds.sigmas.double(), atol=0,
         rtol=2e-7)
td.check("log grid: equal steps in lambda = -log sigma", (-grids["log"][:-1].log()).diff(),
         torch.full((9,), math.log(sigma_max / sigma_min) / 9, dtype=torch.float64), atol=1e-12)

# %% [markdown]
# ## 6. Error against the number of denoiser calls, and the order of each solver
#
# The exact oracle removes the network from the picture: every difference below is the solver's. The reference
# is the same ODE solved by scipy (DOP853 at $10^{-12}$ tolerance) from the same start — and, as a check on the
# reference, 1000 Heun steps. To measure the order cleanly we integrate from $\sigma = 80$ to $\sigma = 0.05$ on grids
# uniform in $\lambda$ (so that the step size is one number, $h = \log(80/0.05)/N$) and fit the slope of
# $\log(\text{error})$ against $\log N$: error $\approx C N^{-p}$.

# %%
s_hi, s_lo = 80.0, 0.05
y0 = torch.randn(cfg.n_order, 2, generator=g, dtype=torch.float64) * math.sqrt(1 + s_hi**2)
reference = solvers.ode_reference(D, s_hi, s_lo, y0, rtol=1e-12, atol=1e-12)
heun1000 = solvers.heun(D, solvers.log_sigmas(1001, s_lo, s_hi)[:-1], y0, progress_bar=False)
ref_gap = (heun1000 - reference).norm(dim=1).mean().item()
print(f"1000 Heun steps vs scipy: mean distance {ref_gap:.1e}")
methods = {"euler": {}, "heun": {}, "dpmpp_2m": {}, "dpmpp_3m": {}, "dpmpp_3m (exact Taylor)": {"exact_taylor": True},
           "plms": {}}
errors = {}
order_steps = [16, 32, 64, 128]
for name, kw in methods.items():
    fn = solvers.SOLVERS[name.split()[0]]
    errors[name] = [(fn(D, solvers.log_sigmas(n + 1, s_lo, s_hi)[:-1], y0, progress_bar=False, **kw) - reference)
                    .norm(dim=1).mean().item() for n in order_steps]
orders = {name: solvers.order(order_steps[1:], e[1:]) for name, e in errors.items()}
for name, p in orders.items():
    print(f"{name:24s} error at N = {order_steps}: {', '.join(f'{e:.1e}' for e in errors[name])}   order {p:.2f}")

# %%
fig, ax = plt.subplots(figsize=(7, 4.5))
for name, e in errors.items():
    nfe = [solvers.nfe(name.split()[0], n) + (name.split()[0] == "heun") for n in order_steps]  # no jump to 0 here
    ax.loglog(nfe, e, "o-", label=f"{name} (p = {orders[name]:.2f})")
ax.set_xlabel("denoiser calls"), ax.set_ylabel("mean distance to the exact ODE solution")
ax.set_title(r"$\sigma$: 80 $\to$ 0.05, grid uniform in $\lambda$ (exact oracle)")
ax.legend(fontsize=8)
plt.show()

# %% [markdown]
# Euler and DPM-Solver++(1) are first order, Heun and 2M second. PLMS, nominally fourth order, measures about 2:
# its Adams–Bashforth weights assume steps of equal length in the variable it integrates, and these are equal in
# $\lambda$, not in $\sigma$. And **DPM-Solver++(3M) as published measures order 2, not 3.** Its second divided
# difference $\mathcal D_2 = (\mathcal D_{1,0}-\mathcal D_{1,1})/(r_0+r_1)$ estimates $h^2D''/2$, but it is
# weighted by $\tfrac12 - (h - \varphi_1)/h^2 \approx h/6$, while the exact integral of the quadratic term,
# $\int_0^h e^{-(h-u)}\tfrac{u^2}{2}du\,D'' \approx \tfrac{h^3}{6}D''$, needs twice that weight. The missing half is
# an $O(h^3)$ local error, hence global order 2. `exact_taylor=True` doubles the weight and recovers order 3.
# (At 10–20 steps the published 3M is still better than 2M: its error constant is smaller.)

# %%
# NBVAL_CHECK_OUTPUT
td.check_less("1000 Heun steps agree with scipy's solution (within 1e-4)", ref_gap, 1e-4)
for name, (lo, hi) in {"euler": (0.9, 1.15), "heun": (1.85, 2.35), "dpmpp_2m": (1.85, 2.2),
                       "dpmpp_3m": (1.8, 2.45), "dpmpp_3m (exact Taylor)": (2.7, 3.6), "plms": (1.6, 2.4)}.items():
    td.check_less(f"measured order of {name} lies in ({lo}, {hi})", abs(orders[name] - (lo + hi) / 2), (hi - lo) / 2)

# %% [markdown]
# **Against the exact mixture.** Error along one trajectory is what the order measures; what we care about is the
# distribution of the samples. With `td.solvers.sample` (one entry point: a denoiser, a shape, `n_steps`, a
# `solver`, a `spacing`) we draw from each solver on EDM's grid and measure the sliced Wasserstein distance to fresh
# draws of the ring; its noise floor is the distance between two independent draws of the ring.

# %%
ring_ref = ring.sample(cfg.n_dist, torch.Generator().manual_seed(1))
sw = {}
floor = td.metrics.sliced_wasserstein(ring.sample(cfg.n_dist, torch.Generator().manual_seed(2)), ring_ref,
                                      n_projections=64, generator=torch.Generator().manual_seed(0))
for name in ("euler", "heun", "dpmpp_2m", "dpmpp_3m", "plms"):
    sw[name] = {}
    for n in cfg.steps:
        x = solvers.sample(oracle_vp, (cfg.n_dist, 2), n, solver=name, spacing="karras", progress_bar=False,
                           generator=torch.Generator().manual_seed(3))
        sw[name][solvers.nfe(name, n)] = td.metrics.sliced_wasserstein(x.float(), ring_ref, n_projections=64,
                                                                        generator=torch.Generator().manual_seed(0))
fig, ax = plt.subplots(figsize=(7, 4))
for name, d in sw.items():
    ax.semilogx(list(d), list(d.values()), "o-", label=name)
ax.axhline(floor, color="k", ls="--", label="noise floor (ring vs ring)")
ax.set_xlabel("denoiser calls"), ax.set_ylabel("sliced Wasserstein to the ring"), ax.set_ylim(0, 4 * floor)
ax.legend(fontsize=8)
plt.show()
for name, d in sw.items():
    print(f"{name:9s}", "  ".join(f"{k}:{v:.3f}" for k, v in d.items()))

# %% [markdown]
# Every solver reaches the noise floor within a few dozen calls; below that the ranking is *not* the ranking of the
# orders. Heun with 4 steps (7 calls) is far off: its last corrector evaluates the slope
# $(y - D(y,\sigma_{i+1}))/\sigma_{i+1}$ at $\sigma_{i+1} = 0.01$ after a step from $\sigma_i\approx 1.2$, a slope of
# order $1/\sigma_{i+1}$ applied over the whole step — an overshoot, the price of a big step ratio at low noise. An
# order is an asymptotic statement; with few steps the constants and the stability of the method decide.

# %% [markdown]
# **Grids, measured.** At a fixed budget of 12 steps, how far from the exact sample does each grid land? The exact
# sample of a start $x_T$ is the ODE solved by scipy from $t = T$ ($\sigma_{\max} = 157$) down to $\sigma = 0.002$,
# then $D(\cdot, 0.002)$. Each grid starts from its own $\sigma_0$ with the same $x_T$, as a sampler does: `leading`
# never visits $t = T$ (it starts at $t = 901$), so it pays for a wrong start as well as for its steps, and a grid
# whose last level is large (`trailing` ends at $t = 84$, $\sigma\approx 0.3$) pays for jumping to a posterior mean
# $D(\cdot, \sigma_{N-1})$ from a noisy point. (We use the oracle on the VE path, defined at every σ.)

# %%
x_T12 = torch.randn(cfg.n_order, 2, generator=g, dtype=torch.float64)
exact_sample = D(solvers.ode_reference(D, sigma_max, 0.002, x_T12 * math.sqrt(1 + sigma_max**2), rtol=1e-10,
                                       atol=1e-10), 0.002)
grid_err = {}
for kind in solvers.GRIDS:
    s = solvers.grid(path, 12, kind)
    y_start = x_T12 * math.sqrt(1 + float(s[0]) ** 2)
    grid_err[kind] = {name: (solvers.SOLVERS[name](D, s, y_start, progress_bar=False) - exact_sample)
                      .norm(dim=1).mean().item() for name in ("euler", "heun", "dpmpp_2m", "dpmpp_3m")}
print(f"{'grid':9s} {'lowest sigma':>12s} {'euler':>8s} {'heun':>8s} {'dpmpp_2m':>9s} {'dpmpp_3m':>9s}"
      "   (mean distance to the exact sample, 12 steps)")
for kind, e in grid_err.items():
    low = float(solvers.grid(path, 12, kind)[-2])
    print(f"{kind:9s} {low:12.4f} {e['euler']:8.4f} {e['heun']:8.4f} {e['dpmpp_2m']:9.4f} {e['dpmpp_3m']:9.4f}")

# %% [markdown]
# Read the table by columns. The one-step methods (Euler, Heun) do well on DDIM's grids; the multistep DPM-Solvers
# do badly on `leading` and `linspace` and best on the log grid. A multistep method extrapolates $D$ from the
# previous step, with weight $1/r = h_i/h_{i-1}$: on a grid uniform in $t$ the steps in $\lambda$ grow wildly
# towards the end (the last step, from $t = 84$ to $t = 1$, is several times the one before), so the extrapolation
# is amplified exactly where the modes sharpen. Grids uniform in $\lambda$ keep $r = 1$.
#
# On a discrete model the Karras and log grids ask for noise levels between table entries: `DiscreteVP` then
# evaluates the network at the nearest $t$ (diffusers rounds the timestep too) while the solver steps with the exact
# σ, a small inconsistency that the oracle on the VE path does not have.

# %% [markdown]
# ## 7. The same thing in tinydiff
#
# Heun by hand, four lines in a loop, against `td.solvers.heun` and the one entry point `td.solvers.sample`:

# %%
s_grid = solvers.grid(path, 8, "karras")
y_hand = x_T * math.sqrt(1 + float(s_grid[0]) ** 2)
for s_now, s_next in zip(s_grid[:-1].tolist(), s_grid[1:].tolist()):
    d_now = (y_hand - D(y_hand, s_now)) / s_now
    y_try = y_hand + (s_next - s_now) * d_now
    y_hand = y_try if s_next == 0 else y_hand + (s_next - s_now) * 0.5 * (d_now + (y_try - D(y_try, s_next)) / s_next)

# %%
# NBVAL_CHECK_OUTPUT
td.check("Heun by hand = td.solvers.heun", y_hand,
         solvers.heun(D, s_grid, x_T * math.sqrt(1 + float(s_grid[0]) ** 2), progress_bar=False), atol=1e-12)
td.check("td.solvers.sample(denoiser, shape, 8, solver='heun') starts from x_T / alpha_T", y_hand,
         solvers.sample(oracle_ve, x_T.shape, sigmas=s_grid, solver="heun",
                        x_T=x_T * math.sqrt(1 + float(s_grid[0]) ** 2), progress_bar=False), atol=1e-12)

# %% [markdown]
# ## 8. Analytic-DPM: the optimal variance of a few-step DDPM
#
# The ODE solvers are deterministic. A stochastic few-step sampler (DDPM with skipping, $\eta = 1$ in lesson 03)
# has a variance to choose. Bao et al. (2022) show that among Gaussian reverse steps
# $p(x_s\mid x_t) = \mathcal N(\mu, \sigma^2 I)$ of the family $q_\lambda(x_s\mid x_t, x_0)$ (variance $\lambda^2$), the
# KL-optimal one has the posterior mean of lesson 03 and the variance
#
# $$\sigma^{*2}_{t\to s} = \lambda^2 + \Big(\sqrt{\tfrac{\bar\beta_t}{\alpha_{t|s}}} - \sqrt{\bar\beta_s-\lambda^2}\Big)^2
#   \big(1-\Gamma_t\big),\qquad \Gamma_t = \frac{\mathbb E_{q(x_t)}\|\varepsilon^*(x_t)\|^2}{d},\quad
#   \alpha_{t|s} = \frac{\bar\alpha_t}{\bar\alpha_s},\ \bar\beta = 1-\bar\alpha .$$
#
# Where it comes from: given $x_t$, $x_s$ is $\kappa x_t + \lambda_{x_0}x_0 + \lambda z$, so its variance is
# $\lambda^2 + \lambda_{x_0}^2\,\mathrm{Var}(x_0\mid x_t)$, and Tweedie's second moment gives
# $\mathbb E\,\mathrm{tr}\,\mathrm{Var}(x_0\mid x_t)/d = \frac{\bar\beta_t}{\bar\alpha_t}(1-\Gamma_t)$. One scalar per
# timestep, $\Gamma_t$, estimated once by Monte Carlo with the model. **The trap:** the paper writes $\alpha_n$ for
# what we call $\bar\alpha_t$ (the cumulative product); the $\alpha_n$ under the square root here is the
# *per-step* factor $\alpha_{t|s} = \bar\alpha_t/\bar\alpha_s$. Using the cumulative one gives another number.
#
# **Exactly, on Gaussian data.** For $x_0\sim\mathcal N(0, c^2I)$ everything is Gaussian: $\Gamma_t = \bar\beta_t/v_t$
# with $v_t = \bar\alpha_tc^2 + \bar\beta_t$, and the true reverse step $q(x_{t-1}\mid x_t)$ is Gaussian with variance
# $v_{t-1} - \alpha_t v_{t-1}^2/v_t$ (condition the joint Gaussian of two neighbours). The optimal variance must be
# exactly this:

# %%
c2 = torch.tensor(0.5, dtype=torch.float64)
t_all = torch.arange(1, sched.T + 1)
ab, ab_prev = sched.alpha_bar[t_all], sched.alpha_bar[t_all - 1]
v, v_prev = ab * c2 + 1 - ab, ab_prev * c2 + 1 - ab_prev
exact_reverse_var = v_prev - sched.alpha[t_all] * v_prev**2 / v
gamma_gauss = (1 - ab) / v
analytic = solvers.analytic_variance(sched, t_all, t_all - 1, gamma_gauss)
trap = (sched.posterior_variance[t_all] + (((1 - ab) / ab).sqrt()
        - (1 - ab_prev - sched.posterior_variance[t_all]).sqrt()) ** 2 * (1 - gamma_gauss))

# %%
# NBVAL_CHECK_OUTPUT
td.check("Analytic-DPM sigma*^2 = exact Var(x_{t-1} | x_t) for Gaussian data, all t", analytic, exact_reverse_var,
         atol=1e-15, rtol=1e-9)
td.check_less("the cumulative-alpha trap misses it by more than 1 % somewhere",
              -((trap - exact_reverse_var).abs() / exact_reverse_var).max().item(), -0.01)

# %% [markdown]
# $\Gamma_t$ by Monte Carlo: draw data, noise it, average $\|\varepsilon^*\|^2/d$. For a Gaussian we know the answer,
# so this also checks the estimator (its standard error is $\Gamma_t/\sqrt{N}$ here: $\|\varepsilon^*\|^2/d$ is
# $\Gamma_t$ times a $\chi^2_2/2$ variable in 2-D).

# %%
gauss = td.data.GaussianMixture(torch.ones(1), torch.zeros(1, 2), c2.reshape(1))
ts_check = torch.tensor([1000, 700, 300, 50, 5])
gamma_mc = solvers.eps_sq_mean(gauss.eps_fn(sched), gauss.sample(cfg.n_gamma, g, dtype=torch.float64), sched, ts_check,
                               generator=g)
print("Gamma_t by Monte Carlo:", [f"{x:.4f}" for x in gamma_mc.tolist()])
print("Gamma_t exact:         ", [f"{x:.4f}" for x in gamma_gauss[ts_check - 1].tolist()])

# %%
# NBVAL_CHECK_OUTPUT
td.check_less("Monte Carlo Gamma_t within 5 standard errors of the exact value",
              ((gamma_mc - gamma_gauss[ts_check - 1]).abs() / (gamma_gauss[ts_check - 1] / math.sqrt(cfg.n_gamma)))
              .max().item(), 5.0)

# %% [markdown]
# **Its effect on few-step DDPM.** On the ring, with the exact $\varepsilon^*$: DDPM with $S$ skipped steps uses
# $\lambda^2 = \tilde\beta$ as its variance; Analytic-DPM adds the second term. With few steps DDPM's samples are
# too narrow — the estimate $\hat x_0$ is a posterior *mean*, and the missing spread of $x_0\mid x_t$ is exactly
# what the second term puts back.

# %%
rows = []
ring_ref2 = ring.sample(cfg.n_analytic, torch.Generator().manual_seed(11))
mmd_floor = td.metrics.mmd_rbf(ring.sample(cfg.n_analytic, torch.Generator().manual_seed(12)), ring_ref2)
for n in (5, 10, 20):
    ts_n = td.ddim.timesteps(sched.T, n, "leading")
    gamma_n = solvers.eps_sq_mean(ring.eps_fn(sched), ring.sample(cfg.n_gamma, g), sched, ts_n, generator=g)
    opt = solvers.analytic_ddpm_sample(ring.eps_fn(sched), (cfg.n_analytic, 2), sched, n, gamma_n,
                                       generator=torch.Generator().manual_seed(13), progress_bar=False)
    ddpm = td.ddim.sample(ring.eps_fn(sched), (cfg.n_analytic, 2), sched, n, eta=1.0,
                          generator=torch.Generator().manual_seed(13), progress_bar=False)
    rows.append((n, td.metrics.mmd_rbf(ddpm, ring_ref2), td.metrics.mmd_rbf(opt, ring_ref2), ddpm.std().item(),
                 opt.std().item()))
print(f"data std {ring_ref2.std().item():.3f}; MMD noise floor {mmd_floor:.5f}")
print(f"{'steps':>5s} {'MMD DDPM':>9s} {'MMD Analytic':>12s} {'std DDPM':>9s} {'std Analytic':>12s}")
for n, m1, m2, s1, s2 in rows:
    print(f"{n:5d} {m1:9.5f} {m2:12.5f} {s1:9.3f} {s2:12.3f}")

# %%
fig, axes = plt.subplots(1, 2, figsize=(9, 4.4))
td.plotting.scatter2d(ddpm, ax=axes[0], title=f"DDPM ($\\eta$ = 1), {n} steps")
td.plotting.scatter2d(opt, ax=axes[1], title=f"Analytic-DPM, {n} steps")
plt.show()

# %% [markdown]
# ## 9. Exercises
#
# **Exercise 1.** The Karras/EDM grid: `n` noise levels from `sigma_max` down to `sigma_min` with exponent `rho`,
# then a final 0 (float64, length `n + 1`).

# %%
def my_karras_sigmas(n, sigma_min, sigma_max, rho):
    # Your code here.
    raise NotImplementedError


# %%
# NBVAL_CHECK_OUTPUT
def _grid_cases(i):
    gen = torch.Generator().manual_seed(i)
    lo = float(torch.rand(1, generator=gen)) * 0.1 + 0.001
    return 3 + 4 * i, lo, 10 + 50 * float(torch.rand(1, generator=gen)), [7.0, 3.0, 1.0, 7.0, 5.0][i]


def _no_final_zero(n, lo, hi, rho):
    return solvers.karras_sigmas(n, lo, hi, rho)[:-1]


def _reversed_ramp(n, lo, hi, rho):
    return torch.cat([solvers.karras_sigmas(n, lo, hi, rho)[:-1].flip(0), torch.zeros(1, dtype=torch.float64)])


td.exercises.check(my_karras_sigmas, solvers.karras_sigmas, _grid_cases,
                   mistakes={"the grid ends with sigma_N = 0 (the jump to the clean data)": _no_final_zero,
                             "start at sigma_max: the ramp runs from sigma_max^(1/rho) to sigma_min^(1/rho)":
                             _reversed_ramp})

# %% [markdown]
# **Exercise 2.** One DPM-Solver++(2M) step from `sigma` to `sigma_next` (> 0), given the denoiser's outputs `d` at
# `sigma` and `d_prev` at the previous level `sigma_prev` (§2's formula).

# %%
def my_dpmpp_2m_step(x, d, d_prev, sigma_prev, sigma, sigma_next):
    # Your code here.
    raise NotImplementedError


# %%
# NBVAL_CHECK_OUTPUT
def _step_cases(i):
    gen = torch.Generator().manual_seed(20 + i)
    x, d, d_prev = (torch.randn(6, 2, generator=gen, dtype=torch.float64) for _ in range(3))
    s_prev = 5 + 10 * float(torch.rand(1, generator=gen))
    s = s_prev * (0.2 + 0.6 * float(torch.rand(1, generator=gen)))
    return x, d, d_prev, s_prev, s, s * (0.1 + 0.8 * float(torch.rand(1, generator=gen)))


def _first_order(x, d, d_prev, sp, s, sn):
    return (sn / s) * x + (1 - sn / s) * d


def _r_upside_down(x, d, d_prev, sp, s, sn):
    h = math.log(s / sn)
    r = h / math.log(sp / s)
    return (sn / s) * x + (1 - sn / s) * (d + 0.5 * (d - d_prev) / r)


td.exercises.check(my_dpmpp_2m_step, solvers.dpmpp_2m_step, _step_cases,
                   mistakes={"that is DPM-Solver++(1): add the slope term (D_i - D_{i-1}) / (2 r)": _first_order,
                             "r is the previous step over this one: r = h_{i-1} / h_i": _r_upside_down})

# %% [markdown]
# **Exercise 3 (find the bug).** This Analytic-DPM variance looks right and is wrong. Copy it into
# `my_analytic_variance`, find the bug and fix it. (Hint: which $\alpha$ belongs under the square root?)
#
# ```python
# def buggy_analytic_variance(sched, t, s, gamma):
#     ab_t, ab_s = sched.alpha_bar[t], sched.alpha_bar[s]
#     lam2 = (1 - ab_s) / (1 - ab_t) * (1 - ab_t / ab_s)
#     return lam2 + (((1 - ab_t) / ab_t).sqrt() - (1 - ab_s - lam2).sqrt()) ** 2 * (1 - gamma)
# ```

# %%
def my_analytic_variance(sched, t, s, gamma):
    # Your code here: the fixed version.
    raise NotImplementedError


# %%
# NBVAL_CHECK_OUTPUT
def _var_cases(i):
    gen = torch.Generator().manual_seed(30 + i)
    t = torch.randint(2, sched.T + 1, (8,), generator=gen)
    s = (torch.rand(8, generator=gen) * (t - 1)).long() + 1
    return sched, t, s, torch.rand(8, generator=gen, dtype=torch.float64)


def _buggy(sc, t, s, gamma):
    ab_t, ab_s = sc.alpha_bar[t], sc.alpha_bar[s]
    lam2 = (1 - ab_s) / (1 - ab_t) * (1 - ab_t / ab_s)
    return lam2 + (((1 - ab_t) / ab_t).sqrt() - (1 - ab_s - lam2).sqrt()) ** 2 * (1 - gamma)


td.exercises.check(my_analytic_variance, solvers.analytic_variance, _var_cases,
                   mistakes={"still the bug: the paper's alpha_n is cumulative; under the root goes the per-step "
                             "alpha_{t|s} = ab_t / ab_s": _buggy})

# %% [markdown]
# **Exercise 4 (open).** PLMS's weights are those of Adams–Bashforth for *equal* steps. On a grid uniform in σ
# (`solvers.karras_sigmas(n, 0.5, 5.0, rho=1)`) they are the right ones: measure the order of `plms` and `pndm`
# there for N from 32 to 256 (we found about 3.0, 3.5, 3.75 between successive N, the same for both, rising
# towards 4). A one-step start with an $O(h^3)$ local error, like PLMS's Heun-like first step, should cap the global
# order at 3 in the limit: why does it not show at these N? (Hint: how large is the error constant of that one step
# at $\sigma = 5$, compared with the steps at low noise?)
#
# ## Closing notes: what was left out
#
# - Stochastic solvers: EDM's churn, DPM-Solver++(2M) SDE, and the SDE samplers of lesson 04 at few steps.
# - Singlestep DPM-Solver (2S, 3S), UniPC, DEIS and iPNDM; diffusers' `lower_order_final` heuristic is kept only
#   as an option of `dpmpp_3m` (default on, as in diffusers).
# - Analytic-DPM's clipping of $\sigma^{*2}$ from the data range and its NPR/SN-DPM successors; we clip $\Gamma_t$
#   to its theoretical range $[0, 1]$ only. The likelihood (NLL bound) gains of the paper are not measured here.
# - Trained networks: every measurement uses the exact oracle; with a network the error has a second part (the
#   network's), which no solver removes. Distillation and consistency models, which change the model rather than
#   the solver, come later.
