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
# # 11 · Flow matching and rectified flow
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/tinydiff/tinydiff/blob/main/notebooks/11_flow_matching.ipynb)
#
# The lecture closes with a preview: flow matching and rectified flow, the way Stable Diffusion 3 (whose
# MM-DiT is lesson 09) and Flux are trained. The idea is almost embarrassingly simple: draw a straight line
# from a data point $x_0$ to a noise sample $\varepsilon$, ask a network for the *velocity* along it, and sample
# by integrating that velocity field backwards from noise. This notebook derives why that works, checks
# every step against the exact Gaussian-mixture oracle (whose velocity field is closed-form), shows that the
# Euler sampler of a flow model *is* DDIM after a change of variables, trains velocity models on 2-D data and
# on digits, and measures honestly what rectified flow's "reflow" buys: straighter paths and few-step samples,
# at a cost.

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

import tinydiff as td

cfg = td.profiles.choose(  # sizes for the active profile: quick (tests) / standard (CPU) / full (GPU)
    quick=dict(n=400, n_mc=100_000, n_grad=50_000, steps=300, reflow_steps=300, hidden=64, batch=256, n_pairs=2000,
               pair_steps=16, dig_hidden=64, dig_steps=500, dig_reflow_steps=300, dig_pairs=1000, n_dig=400, dig_lr=3e-3),
    standard=dict(n=2000, n_mc=400_000, n_grad=200_000, steps=1500, reflow_steps=1000, hidden=128, batch=256,
                  n_pairs=10000, pair_steps=32, dig_hidden=128, dig_steps=2000, dig_reflow_steps=1000, dig_pairs=4000,
                  n_dig=898, dig_lr=1e-3),
    full=dict(n=4000, n_mc=1_000_000, n_grad=1_000_000, steps=8000, reflow_steps=5000, hidden=256, batch=1024,
              n_pairs=50000, pair_steps=64, dig_hidden=256, dig_steps=20000, dig_reflow_steps=10000,
              dig_pairs=20000, n_dig=898, dig_lr=1e-3),
)
dev = td.device()
g = td.seed_everything(0)
print(f"profile {cfg.profile}, device {dev}")

# %% [markdown]
# ## 1 · A straight line from data to noise
#
# Take a data point $x_0\sim p_{\text{data}}$ and a noise sample $\varepsilon\sim\mathcal N(0,I)$ and join them by a
# straight line, run at constant speed in time $t\in[0,1]$:
#
# $$x_t = (1-t)\,x_0 + t\,\varepsilon,\qquad u_t(x_t\mid x_0,\varepsilon) = \frac{dx_t}{dt} = \varepsilon - x_0 .$$
#
# This is the noise path $x_t=\alpha_tx_0+\sigma_t\varepsilon$ of lessons 02–05 with $\alpha_t=1-t$, $\sigma_t=t$
# (`td.denoisers.LinearPath`): $t=0$ is the data, $t=1$ pure noise. $u$ is the **conditional velocity**: the
# velocity of one particle that knows where it started.
#
# **Sign conventions** — three are in use, and mixing them up is the most common bug in flow code:
#
# | | time | path | the network predicts |
# | --- | --- | --- | --- |
# | this book, SD3, diffusers (`FlowMatchEuler...`) | $t$ ("sigma"): 1 (noise) → 0 | $(1-t)x_0+t\varepsilon$ | $\varepsilon-x_0$ |
# | rectified flow (Liu et al. 2022) | $t$: 0 (noise) → 1 | $tX_1+(1-t)X_0$, $X_0$ noise | $X_1-X_0$ = data − noise |
# | flow matching (Lipman et al. 2023) | $t$: 0 (noise) → 1 | $tx_1+(1-(1-\sigma_{\min})t)x_0$ | $x_1-(1-\sigma_{\min})x_0$ |
#
# In both papers index 0 is the noise and index 1 the data, the opposite of ours.
# With our convention the velocity points from data to noise, so sampling integrates $dx/dt=v$ *downwards*,
# from $t=1$ to $t=0$. diffusers' `scale_noise` is our $x_t$ and its `timestep` is $1000\,t$.

# %%
from diffusers import FlowMatchEulerDiscreteScheduler

fm_sched = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000)
fm_sched.set_timesteps(sigmas=[0.9, 0.6, 0.3, 0.1])
x0_pts = torch.randn(4, 2, generator=g)
eps_pts = torch.randn(4, 2, generator=g)
ours = td.flow.xt(x0_pts, eps_pts, fm_sched.sigmas[:4])
theirs = fm_sched.scale_noise(x0_pts, fm_sched.timesteps[:4], eps_pts)
t_probe = torch.tensor(0.37, dtype=torch.float64)
_, dxdt = torch.func.jvp(lambda s: td.flow.xt(x0_pts.double(), eps_pts.double(), s), (t_probe,),
                         (torch.ones_like(t_probe),))
print("diffusers' timesteps for sigmas 0.9, 0.6, 0.3, 0.1:", fm_sched.timesteps[:4].tolist())

# %%
# NBVAL_CHECK_OUTPUT
td.check("x_t = (1 - t) x0 + t eps = diffusers' FlowMatchEulerDiscreteScheduler.scale_noise", ours, theirs, atol=1e-6)
td.check("dx_t/dt (forward-mode autodiff) = eps - x0", dxdt, td.flow.conditional_velocity(x0_pts, eps_pts).double(),
         atol=1e-12)

# %% [markdown]
# ## 2 · The marginal velocity, exactly
#
# A sampler cannot know which $x_0$ a point came from. Averaging the conditional velocities of all lines that
# pass through $x$ at time $t$ gives the **marginal velocity**
#
# $$v^*(x,t) = \mathbb E[\varepsilon - x_0\mid x_t = x].$$
#
# On the line through $x$, $\varepsilon = (x-(1-t)x_0)/t$, so $\varepsilon - x_0 = (x-x_0)/t$ and
#
# $$v^*(x,t) = \frac{x - \mathbb E[x_0\mid x_t=x]}{t} = -\frac{x + t\,\nabla\log p_t(x)}{1-t},$$
#
# where the second form is Tweedie's formula (lesson 05) on this path,
# $\mathbb E[x_0\mid x_t] = (x_t + \sigma_t^2\nabla\log p_t)/\alpha_t$. For the Gaussian mixture the posterior
# mean is closed-form (`td.data.GaussianMixture.posterior_mean` with $a=1-t$, $s=t$), so $v^*$ is exact:
# `td.flow.mixture_velocity`. Three independent checks:
#
# 1. against the score computed by **autograd of $\log p_t$** (the oracle's density, not its score formula);
# 2. against a **Monte Carlo** estimate of $\mathbb E[(x-x_0)/t\mid x_t=x]$: draw $x_0\sim p_{\text{data}}$, weight
#    each by the likelihood $\mathcal N(x;(1-t)x_0,t^2I)$ (self-normalised importance sampling);
# 3. the **continuity equation** $\partial_tp_t+\nabla\cdot(p_tv^*)=0$, i.e.
#    $\partial_t\log p_t+\nabla\cdot v^*+v^*\cdot\nabla\log p_t=0$: the marginal velocity moves the marginal
#    densities exactly as the noising does. This is *why* integrating $v^*$ from noise gives data.

# %%
ring = td.data.GaussianMixture.ring(8, radius=2.0, std=0.2)
gx = torch.Generator().manual_seed(1)
xq = 2.0 * torch.randn(32, 2, generator=gx, dtype=torch.float64)
tq = 0.05 + 0.9 * torch.rand(32, generator=gx, dtype=torch.float64)
v_exact = td.flow.mixture_velocity(ring, xq, tq)

# (1) autograd of log p_t
xr = xq.clone().requires_grad_(True)
score_ad, = torch.autograd.grad(ring.log_prob(xr, 1 - tq, tq).sum(), xr)
v_from_score = td.flow.velocity_from_score(xq, score_ad, tq)

# (2) Monte Carlo: self-normalised importance sampling over x0 ~ p_data
x0_mc = ring.sample(cfg.n_mc, gx, dtype=torch.float64)
z_max = 0.0
for i in range(6):
    ti = 0.3 + 0.1 * i
    xi = xq[i]
    w = torch.softmax(-((xi - (1 - ti) * x0_mc) ** 2).sum(1) / (2 * ti**2), 0)
    u = (xi - x0_mc) / ti
    est = (w[:, None] * u).sum(0)
    se = ((w[:, None] ** 2) * (u - est) ** 2).sum(0).sqrt()
    exact_i = td.flow.mixture_velocity(ring, xi[None], torch.tensor([ti], dtype=torch.float64))[0]
    z_max = max(z_max, float(((est - exact_i).abs() / se).max()))
print(f"Monte Carlo vs closed form: largest |difference| / standard error = {z_max:.2f}")

# (3) the continuity equation, every derivative by autograd
xr = xq.clone().requires_grad_(True)
tr = tq.clone().requires_grad_(True)
dlogp_dx, dlogp_dt = torch.autograd.grad(ring.log_prob(xr, 1 - tr, tr).sum(), (xr, tr))
xv = xq.clone().requires_grad_(True)
vv = td.flow.mixture_velocity(ring, xv, tq)
div_v = sum(torch.autograd.grad(vv[:, j].sum(), xv, retain_graph=True)[0][:, j] for j in range(2))
residual = dlogp_dt + div_v + (vv.detach() * dlogp_dx).sum(1)
print(f"continuity residual: max {residual.abs().max():.1e}, while |d log p / dt| reaches {dlogp_dt.abs().max():.2f}")

# %%
# NBVAL_CHECK_OUTPUT
td.check("v* = (x - E[x0|x_t])/t equals -(x + t grad log p_t)/(1 - t) with the score by autograd", v_exact, v_from_score,
         atol=1e-10)
td.check_less("v* = E[eps - x0 | x_t] by Monte Carlo (within 5 standard errors)", z_max, 5.0)
td.check_less("continuity equation d/dt log p_t + div v* + v*.grad log p_t = 0 (float64)", residual.abs().max(), 1e-9)
td.check("the same velocity through the one denoiser interface (td.denoisers.LinearPath)",
         ring.denoiser(td.denoisers.LinearPath()).velocity(xq, tq), v_exact, atol=1e-10)

# %% [markdown]
# The field changes character with $t$: near $t=1$ it is almost $x - \mathbb E[x_0]$ (every point is pushed
# towards the mixture's mean, because nothing about the mode is known yet); near $t=0$ it points at the nearest
# mode. Colour is the density $p_t$; arrows are $-v^*$, the direction a sample moves as $t$ decreases.

# %%
fig, axes = plt.subplots(1, 4, figsize=(14, 3.6))
for ax, t_show in zip(axes, (0.9, 0.6, 0.35, 0.1)):
    td.plotting.density2d(lambda p, t_show=t_show: ring.log_prob(p.double(), 1 - t_show, t_show), ax=ax, lim=3.2)
    td.plotting.vector_field(lambda p, t_show=t_show: -td.flow.mixture_velocity(
        ring, p.double(), torch.full((p.shape[0],), t_show, dtype=torch.float64)), ax=ax, lim=3.2, n=15, color="w")
    ax.set_title(f"t = {t_show}: $p_t$ and $-v^*$")
    plt.colorbar(ax.images[0], ax=ax, fraction=0.046, label="density $p_t(x)$")
plt.tight_layout()
plt.show()

# %% [markdown]
# ## 3 · The conditional flow-matching loss has the marginal gradient
#
# We would like to regress a network on the marginal velocity, $\mathcal L_{\text{FM}}(\theta)=\mathbb E_{t,x_t}
# \|v_\theta(x_t,t)-v^*(x_t,t)\|^2$, but $v^*$ is unknown for real data. The **conditional** loss uses the
# per-line velocity instead:
#
# $$\mathcal L_{\text{CFM}}(\theta) = \mathbb E_{t,x_0,\varepsilon}\,\|v_\theta(x_t,t) - (\varepsilon - x_0)\|^2 .$$
#
# Expanding both squares, $\mathbb E[v_\theta\cdot u\mid x_t] = v_\theta\cdot\mathbb E[u\mid x_t]=v_\theta\cdot v^*$, so
# $\mathcal L_{\text{CFM}} = \mathcal L_{\text{FM}} + \mathbb E\|u\|^2 - \mathbb E\|v^*\|^2$: the two differ by a
# constant that does not depend on $\theta$, their **gradients are equal**, and the minimiser of the CFM loss is
# $v^*$ — the same argument as denoising score matching (lesson 04). This is exactly what `td.flow.cfm_loss`
# computes; `td.flow.fm_loss` is the marginal loss, possible here only because the oracle knows $v^*$.
#
# A Monte Carlo check: for a model linear in its weights, $v_W(x,t)=\phi(x,t)W$ with fixed random features
# $\phi$, the per-sample gradients are $2\phi^\top(v_W-\text{target})$. Their difference between the two losses
# has mean zero; we compare its mean with the Monte Carlo covariance of that mean (Hotelling's $T^2$, which is
# $\chi^2$ with 26 degrees of freedom when the two gradients agree).

# %%
gg = torch.Generator().manual_seed(2)
R = torch.randn(3, 12, generator=gg, dtype=torch.float64)
c = torch.randn(12, generator=gg, dtype=torch.float64)
W = (0.3 * torch.randn(13, 2, generator=gg, dtype=torch.float64)).requires_grad_(True)
feat = lambda x, t: torch.cat([torch.tanh(torch.cat([x, t[:, None]], 1) @ R + c), torch.ones_like(x[:, :1])], 1)  # noqa: E731
model_lin = lambda x, t: feat(x, t) @ W  # noqa: E731
x0_g = ring.sample(cfg.n_grad, gg, dtype=torch.float64)
eps_g = torch.randn(cfg.n_grad, 2, generator=gg, dtype=torch.float64)
t_g = torch.rand(cfg.n_grad, generator=gg, dtype=torch.float64).clamp(1e-3, 1 - 1e-3)
xt_g = td.flow.xt(x0_g, eps_g, t_g)
v_star_g = td.flow.mixture_velocity(ring, xt_g, t_g)
grad_cfm, = torch.autograd.grad(td.flow.cfm_loss(model_lin, x0_g, noise=eps_g, t=t_g), W)
grad_fm, = torch.autograd.grad(td.flow.fm_loss(model_lin, xt_g, t_g, v_star_g), W)
with torch.no_grad():  # per-sample gradient differences, for the covariance of their mean
    phi = feat(xt_g, t_g)
    d = (2 * phi[:, :, None] * (v_star_g - td.flow.conditional_velocity(x0_g, eps_g))[:, None, :]).flatten(1)
    cov = torch.cov(d.T) / cfg.n_grad  # covariance of the Monte Carlo mean
    diff = (grad_cfm - grad_fm).flatten()
    hotelling = (diff @ torch.linalg.solve(cov, diff)).item()  # ~ chi^2 with 26 dof when the means agree
    # the same statistic for a wrong target, x0 - eps (the velocity of the other sign convention)
    wrong = (2 * phi[:, :, None] * (feat(xt_g, t_g) @ W - (x0_g - eps_g))[:, None, :]).flatten(1).mean(0)
    hotelling_wrong = ((wrong - grad_fm.flatten()) @ torch.linalg.solve(cov, wrong - grad_fm.flatten())).item()
se = cov.diagonal().sqrt()
print(f"|grad CFM| = {grad_cfm.norm():.3f}, |grad FM| = {grad_fm.norm():.3f}, |difference| = {diff.norm():.4f} "
      f"(standard error {se.norm():.4f}); Hotelling T^2 = {hotelling:.1f} on 26 dof; with the target x0 - eps: "
      f"{hotelling_wrong:.3g}")
with torch.no_grad():
    gap = (td.flow.cfm_loss(model_lin, x0_g, noise=eps_g, t=t_g) - td.flow.fm_loss(model_lin, xt_g, t_g, v_star_g)).item()
print(f"L_CFM - L_FM = {gap:.3f} (the theta-free constant E|u|^2 - E|v*|^2; L_CFM never reaches 0)")

# %%
# NBVAL_CHECK_OUTPUT
td.check_less("grad L_CFM = grad L_FM by Monte Carlo (Hotelling T^2 below chi^2_26's 99.9% point, 54)", hotelling, 54.0)
td.check_less("... and the check can fail: the target x0 - eps gives T^2 far above it", 54.0, hotelling_wrong)
td.check_less("... the gradient itself is > 20 standard errors", 20 * se.norm().item(), grad_fm.norm().item())

# %% [markdown]
# ## 4 · Sampling: Euler steps of the flow ODE
#
# With $v\approx v^*$, integrate $dx/dt = v(x,t)$ from $x_1\sim\mathcal N(0,I)$ at $t=1$ down to $t=0$. Euler's method
# on a decreasing grid $1=t_0>t_1>\dots>t_n=0$ is one line,
#
# $$x_{t_{i+1}} = x_{t_i} + (t_{i+1}-t_i)\,v(x_{t_i},t_i),$$
#
# and it is exactly diffusers' `FlowMatchEulerDiscreteScheduler.step` (`prev_sample = sample + (sigma_next -
# sigma) * model_output`). Here it is by hand, then the same thing in tinydiff, then diffusers with the oracle as
# its "model".

# %%
n_euler = 12
x_T = torch.randn(256, 2, generator=torch.Generator().manual_seed(3))
velocity = td.flow.mixture_velocity_fn(ring)
grid = torch.linspace(1, 0, n_euler + 1, dtype=torch.float64)
x = x_T.clone()
for i in range(n_euler):
    t_i = torch.full((x.shape[0],), grid[i].item())
    x = x + (grid[i + 1] - grid[i]).item() * velocity(x, t_i)
x_hand = x
x_pkg = td.flow.sample(velocity, x_T.shape, n_euler, x_T=x_T, progress_bar=False)
fm_sched.set_timesteps(sigmas=grid[:-1].tolist())
x = x_T.clone()
for k in fm_sched.timesteps:
    x = fm_sched.step(velocity(x, torch.full((x.shape[0],), float(k) / 1000)), k, x).prev_sample
x_diffusers = x

# %%
# NBVAL_CHECK_OUTPUT
td.check("hand-written Euler loop = td.flow.sample", x_hand, x_pkg, atol=1e-6)
td.check("td.flow.sample = diffusers' FlowMatchEulerDiscreteScheduler (no weights, the oracle's velocity)",
         x_pkg, x_diffusers, atol=2e-5)

# %% [markdown]
# The exact flow's paths are **curved**: a particle first heads for the mixture's mean and only later turns
# towards its mode. With one Euler step, every noise sample lands exactly on $x_1 - v^*(x_1,1) = \mathbb E[x_0]$,
# the centre of the ring; it takes several steps to follow the bend.

# %%
traj_exact = td.utils.Trajectory()
x_many = td.flow.sample(velocity, (cfg.n, 2), 64, generator=torch.Generator().manual_seed(4), callback=traj_exact,
                        progress_bar=False)
x_one = td.flow.sample(velocity, (cfg.n, 2), 1, generator=torch.Generator().manual_seed(4), progress_bar=False)
fig, ax = plt.subplots(1, 3, figsize=(11, 3.6))
td.plotting.trajectories2d(traj_exact.xs, ax=ax[0], n_show=40, title="exact flow: 64 Euler steps")
td.plotting.scatter2d(x_many, ax=ax[1], title="64 steps")
td.plotting.scatter2d(x_one, ax=ax[2], title="1 step: all at E[x0]")
plt.tight_layout()
plt.show()

# %%
# NBVAL_CHECK_OUTPUT
td.check("one Euler step of the exact flow sends every noise to E[x0]", x_one, ring.mean().float().expand_as(x_one),
         atol=1e-5)

# %% [markdown]
# ## 5 · The bridge: flow-matching Euler steps are DDIM steps
#
# Any noise path $x=\alpha x_0+\sigma\varepsilon$ becomes the straight line after a rescaling: divide by $\alpha+\sigma$,
#
# $$x_{\text{fm}} = \frac{x}{\alpha+\sigma} = (1-t)\,x_0 + t\,\varepsilon,\qquad t = \frac{\sigma}{\alpha+\sigma},$$
#
# a point of the linear path at the same signal-to-noise ratio $\alpha/\sigma=(1-t)/t$. For the VP model of lesson
# 02, $\alpha=\sqrt{\bar\alpha_\tau}$, $\sigma=\sqrt{1-\bar\alpha_\tau}$. Now take one deterministic DDIM step from
# $\tau$ to $\tau'$ (lesson 03, $\eta=0$): $x' = \alpha'\hat x_0+\sigma'\hat\varepsilon$. Divided by $\alpha'+\sigma'$
# it is $(1-t')\hat x_0+t'\hat\varepsilon$. One Euler step of the flow with $v=\hat\varepsilon-\hat x_0$ gives
#
# $$x_{\text{fm}} + (t'-t)(\hat\varepsilon-\hat x_0) = (1-t)\hat x_0 + t\hat\varepsilon + (t'-t)(\hat\varepsilon-\hat x_0)
#   = (1-t')\hat x_0 + t'\hat\varepsilon,$$
#
# the same point. So **Euler on a flow-matching model is DDIM** on the matched times, step for step — for any
# network, not only for the oracle — and the difference between "a flow model" and "a diffusion model" is the
# time grid and the loss weighting, not the sampler. Checked on the oracle in float64, with
# `td.flow.linear_times` for the times and `td.flow.to_linear` for the start:

# %%
sched = td.NoiseSchedule.linear(1000)
taus = td.ddim.timesteps(1000, 10, "trailing")
tau_grid = torch.cat([taus, taus.new_zeros(1)])
times = td.flow.linear_times(sched, tau_grid)
ab = sched.alpha_bar[tau_grid]
x_T64 = torch.randn(512, 2, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
ddim_states, x = [x_T64], x_T64
for tau, tau_prev in zip(tau_grid[:-1].tolist(), tau_grid[1:].tolist()):
    x = td.ddim.step(x, ring.eps_fn(sched)(x, torch.full((512,), tau)), tau, tau_prev, sched, eta=0.0)
    ddim_states.append(x)
traj_fm = td.utils.Trajectory()
td.flow.sample(velocity, x_T64.shape, times=times, x_T=td.flow.to_linear(x_T64, ab[0].sqrt(), (1 - ab[0]).sqrt())[0],
               callback=traj_fm, progress_bar=False)
gap_steps = max((f * (ab[i].sqrt() + (1 - ab[i]).sqrt()) - d).abs().max().item()
                for i, (f, d) in enumerate(zip(traj_fm.xs, ddim_states)))
print("DDIM timesteps:", tau_grid.tolist())
print("matched flow times t = s/(a+s):", [round(v, 4) for v in times.tolist()])
print(f"largest difference over all {len(ddim_states)} states: {gap_steps:.1e}")
x_T_net = torch.randn(16, 2, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
net_random = td.models.MLPDenoiser(dim=2, hidden=32, depth=2).double().eval()  # untrained: any eps-network will do
with torch.no_grad():
    ddim_net = td.ddim.sample(net_random, x_T_net.shape, sched, 10, spacing="trailing", x_T=x_T_net)
    flow_net = td.flow.sample(td.flow.velocity_fn_from_eps_fn(net_random, sched), x_T_net.shape, times=times,
                              x_T=td.flow.to_linear(x_T_net, ab[0].sqrt(), (1 - ab[0]).sqrt())[0], progress_bar=False)

# %%
# NBVAL_CHECK_OUTPUT
td.check_less("flow Euler on t = s/(a+s) = DDIM (eta = 0), every one of the 11 states (float64)", gap_steps, 1e-10)
td.check("... and for an untrained eps-network (the bridge is an identity of samplers)", flow_net, ddim_net,
         atol=1e-9, rtol=1e-12)

# %% [markdown]
# The matched times are far from uniform: the first four DDIM steps of the linear VP schedule stay above $t=0.92$,
# while its last step (from $\tau=100$ to 0) covers $t$ from 0.25 to 0 in one go. `tests/test_flow.py` also runs the two
# samplers *both from diffusers* (`DDIMScheduler` on $x$, `FlowMatchEulerDiscreteScheduler` on $x/(\alpha+\sigma)$ with
# `sigmas` $=\sigma/(\alpha+\sigma)$) and finds them equal to float32 precision, and shows that Euler in
# k-diffusion's $\sigma=\sigma_t/\alpha_t$ (`td.solvers.euler`, lesson 12) is the same third sampler.
#
# ## 6 · Training a velocity model on 2-D data
#
# `td.flow.cfm_loss` plugs into the book's one training loop. The network is the residual MLP of lesson 00,
# `td.models.MLPDenoiser`, with `time_scale=1000` because its time is now a float in $[0,1]$.

# %%
data_ring = ring.sample(50_000, torch.Generator().manual_seed(7))
net1 = td.models.MLPDenoiser(dim=2, hidden=cfg.hidden, depth=3, time_scale=1000.0)
fit1 = td.train.fit(net1, td.flow.cfm_loss, data_ring, steps=cfg.steps, batch_size=cfg.batch, lr=2e-3, seed=0,
                    desc="1-rectified flow (CFM)", shipped="11_1_rectified_flow_cfm")
rf1 = fit1.sampler_model
with torch.no_grad():
    xe = ring.sample(4000, torch.Generator().manual_seed(8), dtype=torch.float32).to(dev)
    te = 0.05 + 0.9 * torch.rand(4000, generator=torch.Generator().manual_seed(9)).to(dev)
    xte = td.flow.xt(xe, torch.randn(xe.shape, generator=torch.Generator().manual_seed(10)).to(dev), te)
    v_true = td.flow.mixture_velocity(ring, xte.cpu(), te.cpu())
    rel_err = ((rf1(xte, te).cpu() - v_true).pow(2).sum(1).mean() / (v_true - v_true.mean(0)).pow(2).sum(1).mean()).item()
print(f"final CFM loss {sum(fit1.losses[-100:]) / 100:.3f}; relative squared error of v_theta vs v* = {rel_err:.3f}")

# %%
# NBVAL_CHECK_OUTPUT
td.check_less("the learned velocity explains most of v* (relative squared error < 0.5)", rel_err, 0.5)

# %% [markdown]
# ## 7 · Rectified flow: reflow makes the paths straight
#
# The curved paths of §4 are the price of a random coupling: noise and data were paired independently, so lines
# cross, and the marginal velocity averages over the crossing lines. Liu et al.'s **reflow** re-pairs them with
# the flow itself: draw $x_1\sim\mathcal N(0,I)$, run the ODE to get $x_0=\text{ODE}(x_1)$
# (`td.flow.ode_pairs`), and train a new velocity on straight lines between *these* pairs
# (`td.flow.reflow_loss`). The new flow has the same marginals at $t=0$ and $t=1$ and paths that do not cross, so
# they are straighter. Their **straightness**
#
# $$S = \int_0^1\mathbb E\,\|(x_1-x_0) - \dot x_t\|^2\,dt\quad(=0\text{ exactly for straight paths at constant speed}),$$
#
# is measured by `td.flow.straightness` on a sampler trajectory. We reflow the trained network of §6 (its own
# pairs, as one would with real data), starting from its weights.

# %%
pairs = td.flow.ode_pairs(rf1, cfg.n_pairs, (2,), cfg.pair_steps, generator=torch.Generator().manual_seed(11))
net2 = td.models.MLPDenoiser(dim=2, hidden=cfg.hidden, depth=3, time_scale=1000.0)
net2.load_state_dict(rf1.state_dict())
fit2 = td.train.fit(net2, td.flow.reflow_loss, pairs, steps=cfg.reflow_steps, batch_size=cfg.batch, lr=1e-3, seed=1,
                    desc="2-rectified flow (reflow)", shipped="11_2_rectified_flow_reflow")
rf2 = fit2.sampler_model
S, trajs = {}, {}
grid64 = td.flow.time_grid(64)
for name, fn in (("exact v*", velocity), ("1-RF (trained)", rf1), ("2-RF (reflowed)", rf2)):
    trajs[name] = td.utils.Trajectory()
    td.flow.sample(fn, (1000, 2), 64, generator=torch.Generator().manual_seed(12), callback=trajs[name],
                   progress_bar=False)
    S[name] = td.flow.straightness(trajs[name].stack(), grid64).mean().item()
print("straightness S (0 = straight):", {k: round(v, 4) for k, v in S.items()})
fig, ax = plt.subplots(1, 3, figsize=(11, 3.6))
for a, name in zip(ax, S):
    td.plotting.trajectories2d(trajs[name].xs, ax=a, n_show=40, title=f"{name}: S = {S[name]:.3f}")
plt.tight_layout()
plt.show()

# %% [markdown]
# **Fewer steps for the same quality?** Sample quality is judged with `td.metrics.mixture_check` (lesson 00): four
# statistics that see the modes — a multiscale MMD, the mode weights, the per-mode spread and the fraction of
# samples off every mode — each against its data-vs-data noise floor at the same sample size, plus the mean
# log-density under the true mixture (higher is sharper; real data score $-H(p)$). A sampler "passes" when every
# statistic is below its floor's threshold.

# %%
ref_ring = ring.sample(cfg.n, torch.Generator().manual_seed(13), dtype=torch.float64)
floor = td.metrics.mixture_check(ring.sample(cfg.n, torch.Generator().manual_seed(14)), ring)
lp_data = ring.log_prob(ref_ring).mean().item()
step_counts = (1, 2, 4, 8, 16, 64)
table = {}
for name, fn in (("exact v*", velocity), ("1-RF (trained)", rf1), ("2-RF (reflowed)", rf2)):
    for n_s in step_counts:
        xs = td.flow.sample(fn, (cfg.n, 2), n_s, generator=torch.Generator().manual_seed(15), progress_bar=False).cpu()
        stats = td.metrics.mixture_statistics(xs, ring, ref_ring)
        table[name, n_s] = dict(stats, logp=ring.log_prob(xs.double()).mean().item(),
                                passed=all(stats[k] <= floor.threshold[k] for k in stats))
print(f"mean log p of real data: {lp_data:.2f};  thresholds: " + ", ".join(f"{k} {v:.4f}" for k, v in floor.threshold.items()))
print(f"{'sampler':16s} {'steps':>5s} {'mean log p':>10s} {'mmd':>8s} {'weights':>8s} {'spread':>8s} {'off-mode':>8s}  pass")
for (name, n_s), r in table.items():
    print(f"{name:16s} {n_s:5d} {r['logp']:10.2f} {r['mmd']:8.4f} {r['weights']:8.4f} {r['spread']:8.3f} "
          f"{r['off_mode']:8.3f}  {'yes' if r['passed'] else 'no'}")
fig, ax = plt.subplots(1, 2, figsize=(10, 3.4))
for name in S:
    ax[0].plot(step_counts, [table[name, n_s]["logp"] for n_s in step_counts], "o-", label=name)
    ax[1].plot(step_counts, [table[name, n_s]["off_mode"] for n_s in step_counts], "o-", label=name)
ax[0].axhline(lp_data, color="k", ls=":", label="real data")
ax[1].axhline(floor.threshold["off_mode"], color="k", ls=":", label="noise-floor threshold")
ax[0].set_ylim(max(-12, min(r["logp"] for r in table.values()) - 1), lp_data + 0.5)
for a, lab in zip(ax, ("mean log p of the samples (higher is better)", "fraction off every mode (lower is better)")):
    a.set_xscale("log", base=2)
    a.set_xlabel("Euler steps (network evaluations)")
    a.set_title(lab)
    a.legend(fontsize=8)
plt.tight_layout()
plt.show()

# %%
# NBVAL_CHECK_OUTPUT
td.check_less("reflow straightens the paths: S(2-RF) < S(1-RF) / 4", S["2-RF (reflowed)"], S["1-RF (trained)"] / 4)
td.check_less("one step of 2-RF is far sharper than one step of 1-RF (mean log p, by > 5 nats)",
              table["1-RF (trained)", 1]["logp"] + 5, table["2-RF (reflowed)", 1]["logp"])

# %% [markdown]
# Read the table, not only the checks. In the committed `standard` run reflow buys a great deal at 1–2 steps: one
# step of 2-RF (mean log p −2.32, 11 % off-mode) is about as good as four to eight steps of 1-RF (−2.92 and
# −2.25), where one step of 1-RF, like one step of the exact flow, lands near the ring's centre (−43). It is not
# free: 2-RF is a *distillation* of 1-RF (its pairs come from 1-RF's ODE solved with a few dozen steps), it inherits
# 1-RF's errors and adds its own fitting error, so at 64 steps it is slightly *worse* than the model it was
# distilled from (−2.15 vs −2.09). And no trained model passes the calibrated check at any step count: a small MLP
# trained for 1,500 steps leaves 7–11 % of its samples between the modes, where real data has about 1 %; only the
# exact velocity reaches the floor, at 64 steps. "Fewer steps for the same quality" holds for the few-step regime,
# relative to the model that was reflowed.
#
# ## 8 · Which times to train on: logit-normal and shifted sampling (SD3)
#
# `cfm_loss` draws $t\sim\mathcal U(0,1)$ by default. Stable Diffusion 3 found that images train better when the
# middle of the path gets more weight, and draws $t=\mathrm{sigmoid}(m+s\,z)$, $z\sim\mathcal N(0,1)$ — the
# **logit-normal** density
#
# $$\pi_{\text{ln}}(t;m,s)=\frac{1}{s\sqrt{2\pi}}\frac{1}{t(1-t)}\exp\Big(-\frac{(\operatorname{logit}t-m)^2}{2s^2}\Big).$$
#
# For larger images SD3 also **shifts** the times towards the noise, $t'=\alpha t/(1+(\alpha-1)t)$ (diffusers'
# `shift`). The shift is a shift of the log-SNR: $\operatorname{logit}t'=\operatorname{logit}t+\log\alpha$, so
# $\lambda' = 2\log\frac{1-t'}{t'} = \lambda - 2\log\alpha$ and a shifted logit-normal is again logit-normal, with
# $m+\log\alpha$. diffusers applies the same shift to the sampling grid.

# %%
t_grid = torch.linspace(0.002, 0.998, 400, dtype=torch.float64)
ln_ref = torch.distributions.TransformedDistribution(torch.distributions.Normal(torch.tensor(0.0, dtype=torch.float64),
                                                                                torch.tensor(1.0, dtype=torch.float64)),
                                                     [torch.distributions.SigmoidTransform()])
shift_sched = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0)
fig, ax = plt.subplots(1, 2, figsize=(10, 3.2))
for m_, s_ in ((0.0, 1.0), (0.0, 0.5), (math.log(3.0), 1.0)):
    ax[0].plot(t_grid, td.flow.logit_normal_log_density(t_grid, m_, s_).exp(), label=f"logit-normal m={m_:.2f}, s={s_}")
ax[0].axhline(1.0, color="k", ls=":", label="uniform")
ax[0].set_xlabel("t")
ax[0].set_title("training-time densities")
ax[0].legend(fontsize=8)
for sh in (1.0, 3.0):
    ax[1].plot(td.flow.time_grid(20, sh), "o-", ms=3, label=f"shift = {sh:g}")
ax[1].set_xlabel("sampling step i")
ax[1].set_ylabel("t_i")
ax[1].set_title("a 20-step sampling grid")
ax[1].legend()
plt.tight_layout()
plt.show()

# %%
# NBVAL_CHECK_OUTPUT
td.check("logit-normal log-density = torch.distributions (Normal pushed through a sigmoid)",
         td.flow.logit_normal_log_density(t_grid, 0.0, 1.0), ln_ref.log_prob(t_grid), atol=1e-10)
td.check("the shift adds log(shift) to logit t", torch.logit(td.flow.shift_time(t_grid, 3.0)),
         torch.logit(t_grid) + math.log(3.0), atol=1e-10)
td.check("shifted training grid = diffusers' FlowMatchEulerDiscreteScheduler(shift=3).sigmas", shift_sched.sigmas,
         td.flow.shift_time(torch.arange(1000, 0, -1, dtype=torch.float64) / 1000, 3.0), atol=1e-6)

# %% [markdown]
# What does it change here? We retrain §6's model with logit-normal times (same steps, same seed) and compare at
# a few sampler step counts. In the committed `standard` run the logit-normal model was a little better at every
# step count (64 steps: mean log p −1.86 vs −2.09, off-mode 5 % vs 7 %) — one seed and one model size, so read it
# as "small, and here in SD3's direction", not as a measured effect size. Spending fewer updates near $t=0$ and
# $t=1$, where the target $\varepsilon - x_0$ is nearly unpredictable or nearly trivial, is the argument; SD3's gains
# were measured on images at scale.

# %%
net_ln = td.models.MLPDenoiser(dim=2, hidden=cfg.hidden, depth=3, time_scale=1000.0)
fit_ln = td.train.fit(net_ln, lambda m, b: td.flow.cfm_loss(m, b, time_sampling="logit_normal"), data_ring,
                      steps=cfg.steps, batch_size=cfg.batch, lr=2e-3, seed=0, desc="1-RF, logit-normal times",
                      shipped="11_1_rf_logit_normal_times")
for name, fn in (("uniform t", rf1), ("logit-normal t", fit_ln.sampler_model)):
    row = []
    for n_s in (4, 16, 64):
        xs = td.flow.sample(fn, (cfg.n, 2), n_s, generator=torch.Generator().manual_seed(15), progress_bar=False).cpu()
        st = td.metrics.mixture_statistics(xs, ring, ref_ring)
        row.append(f"{n_s:3d} steps: log p {ring.log_prob(xs.double()).mean().item():6.2f}, off-mode {st['off_mode']:.3f}")
    print(f"{name:15s}", " | ".join(row))

# %% [markdown]
# ## 9 · Digits
#
# The same code on 8×8 digits (64 dimensions, flattened, in $[-1,1]$). Quality is the Fréchet distance in pixel
# space to held-out digits (the formula behind FID, without an Inception network), next to its floor: the
# distance between two disjoint halves of the real digits.

# %%
digits, _ = td.data.load_digits()
flat = digits.flatten(1)
perm = torch.randperm(flat.shape[0], generator=torch.Generator().manual_seed(16))
train_d, held_out = flat[perm[:898]], flat[perm[898:1796]]
fd_floor = td.metrics.frechet_distance(train_d, held_out)
dnet1 = td.models.MLPDenoiser(dim=64, hidden=cfg.dig_hidden, depth=3, time_scale=1000.0)
dfit1 = td.train.fit(dnet1, td.flow.cfm_loss, train_d, steps=cfg.dig_steps, batch_size=128, lr=cfg.dig_lr, seed=0,
                     desc="digits, 1-RF", shipped="11_digits_1_rf")
dpairs = td.flow.ode_pairs(dfit1.sampler_model, cfg.dig_pairs, (64,), cfg.pair_steps,
                           generator=torch.Generator().manual_seed(17))
dnet2 = td.models.MLPDenoiser(dim=64, hidden=cfg.dig_hidden, depth=3, time_scale=1000.0)
dnet2.load_state_dict(dfit1.sampler_model.state_dict())
dfit2 = td.train.fit(dnet2, td.flow.reflow_loss, dpairs, steps=cfg.dig_reflow_steps, batch_size=128, lr=cfg.dig_lr / 2,
                     seed=1,
                     desc="digits, reflow", shipped="11_digits_reflow")
fd, dig_samples = {}, {}
for name, fn in (("1-RF", dfit1.sampler_model), ("2-RF", dfit2.sampler_model)):
    for n_s in (1, 2, 4, 8, 32):
        xs = td.flow.sample(fn, (cfg.n_dig, 64), n_s, generator=torch.Generator().manual_seed(18), progress_bar=False)
        dig_samples[name, n_s] = xs.cpu()
        fd[name, n_s] = td.metrics.frechet_distance(xs.cpu(), held_out)
print(f"Fréchet distance to held-out digits (floor, real vs real: {fd_floor:.2f})")
for name in ("1-RF", "2-RF"):
    print(f"{name}: " + ", ".join(f"{n_s} steps {fd[name, n_s]:.2f}" for n_s in (1, 2, 4, 8, 32)))
fig, axes = plt.subplots(1, 4, figsize=(13, 3.6))
for ax, key in zip(axes, (("1-RF", 1), ("2-RF", 1), ("1-RF", 8), ("2-RF", 8))):
    td.plotting.show_images(dig_samples[key][:36].reshape(-1, 1, 8, 8).clamp(-1, 1), nrow=6, ax=ax,
                            title=f"{key[0]}, {key[1]} step{'s' if key[1] > 1 else ''}: FD {fd[key]:.2f}")
plt.tight_layout()
plt.show()

# %%
# NBVAL_CHECK_OUTPUT
td.check_less("digits: one step of 2-RF is closer to real digits than one step of 1-RF (Fréchet distance)",
              fd["2-RF", 1], fd["1-RF", 1])

# %% [markdown]
# In the committed `standard` run one step of the reflowed model (Fréchet distance 1.18) is as good as eight steps
# of the original (1.20), and digit-like where one step of 1-RF is a blurred average (10.3). At 32 steps the two
# are level (0.87 vs 0.85), both well above the real-vs-real floor (0.35): reflow did not make the model better,
# only cheaper to sample. Pixel-space Fréchet distance is a crude metric (it sees means and covariances only), so
# read it together with the pictures.
#
# ## Exercises
#
# **1. The marginal velocity from a denoiser.** Given $x_t$, the posterior mean $\hat x_0=\mathbb E[x_0\mid x_t]$ and
# $t$ (a tensor `(B,)`), return $v^*$ in this book's convention.

# %%
def my_velocity_from_x0(x, x0_hat, t):
    # Your code here: return the marginal velocity v*(x, t), shape (B, D).
    raise NotImplementedError


# %%
# NBVAL_CHECK_OUTPUT
def _vel_cases(i):
    gi = torch.Generator().manual_seed(30 + i)
    return torch.randn(6, 2, generator=gi), torch.randn(6, 2, generator=gi), 0.1 + 0.8 * torch.rand(6, generator=gi)


td.exercises.check(my_velocity_from_x0, td.flow.velocity_from_x0, _vel_cases,
                   mistakes={"the velocity points from data to noise: (x - x0_hat) / t, not (x0_hat - x) / t":
                             lambda x, x0, t: (x0 - x) / t[:, None],
                             "divide by t (the noise weight), not by 1 - t": lambda x, x0, t: (x - x0) / (1 - t[:, None]),
                             "that is rectified flow's velocity (data - noise) with t read as Liu's time (t = 1 is data)":
                             lambda x, x0, t: (x0 - x) / (1 - t[:, None])})

# %% [markdown]
# **2. The bridge.** Given a VP sample `x_vp` with coefficients $\alpha$, $\sigma$ (tensors `(B,)`), return the pair
# `(x_fm, t)`: the point of the linear path at the same signal-to-noise ratio, and its time.

# %%
def my_to_linear(x_vp, alpha, sigma):
    # Your code here: return (x_fm, t).
    raise NotImplementedError


# %%
# NBVAL_CHECK_OUTPUT
def _bridge_cases(i):
    gi = torch.Generator().manual_seed(40 + i)
    ab = torch.rand(5, generator=gi, dtype=torch.float64) * 0.98 + 0.01
    return torch.randn(5, 2, generator=gi, dtype=torch.float64), ab.sqrt(), (1 - ab).sqrt()


td.exercises.check(my_to_linear, td.flow.to_linear, _bridge_cases,
                   mistakes={"t is the noise share sigma / (alpha + sigma), not alpha / (alpha + sigma)":
                             lambda x, a, s: (x / (a + s)[:, None], a / (a + s)),
                             "divide x by alpha + sigma (not by sqrt(alpha^2 + sigma^2) = 1 on the VP path)":
                             lambda x, a, s: (x, s / (a + s))})

# %% [markdown]
# **3. Find the bug.** This flow sampler was ported from a rectified-flow code base and produces garbage with a
# model trained by `td.flow.cfm_loss`. Find the bug and write the corrected one-step update `my_flow_step`, which
# must agree with `td.flow.step`.
#
# ```python
# def ported_step(x, v, t, t_next):          # t > t_next, both floats in [0, 1]
#     return x + (t - t_next) * v            # "x_{t+dt} = x_t + dt * v"
# ```

# %%
def my_flow_step(x, v, t, t_next):
    # Your code here: one Euler step of dx/dt = v from time t to t_next (t_next < t).
    raise NotImplementedError


# %%
# NBVAL_CHECK_OUTPUT
def _step_cases(i):
    gi = torch.Generator().manual_seed(50 + i)
    t = 0.2 + 0.7 * torch.rand(1, generator=gi).item()
    return torch.randn(6, 2, generator=gi), torch.randn(6, 2, generator=gi), t, t - 0.15


td.exercises.check(my_flow_step, td.flow.step, _step_cases,
                   mistakes={"still the ported bug: with dx/dt = eps - x0 and t decreasing, dt = t_next - t < 0":
                             lambda x, v, t, tn: x + (t - tn) * v,
                             "the step is (t_next - t) times v, not t_next times v": lambda x, v, t, tn: x + tn * v})

# %% [markdown]
# **4. (open)** Reflow a second time (3-RF) on §7's ring. Does straightness keep falling? What happens to the
# 64-step quality? Then try reflow with pairs from the *exact* flow (`td.flow.mixture_velocity_fn(ring)`) instead
# of the trained one: how much of 2-RF's many-step loss was inherited from 1-RF?
#
# ## What was left out
#
# - **Other couplings.** Minibatch optimal-transport coupling (OT-CFM, Tong et al. 2023; Pooladian et al. 2023)
#   straightens paths *during* training, without a reflow stage.
# - **Other paths.** Stochastic interpolants (Albergo & Vanden-Eijnden) and the $\sigma_{\min}$ of Lipman et al.;
#   the VP path written as a flow (lesson 04's probability-flow ODE is one).
# - **Better solvers.** Heun, DPM-Solver and friends on the same ODE are lesson 12; here everything is Euler.
# - **One-step distillation** beyond reflow (InstaFlow, consistency models, later lessons), and SD3's
#   resolution-dependent shift, its "mode" sampling with heavy tails, and its loss weightings beyond the time density.
#
# ## Summary
#
# | idea | where in tinydiff |
# | --- | --- |
# | path $x_t=(1-t)x_0+t\varepsilon$, $u=\varepsilon-x_0$ | `td.flow.xt`, `td.flow.conditional_velocity`, `LinearPath` |
# | exact $v^*=(x-\mathbb E[x_0\mid x_t])/t$ | `td.flow.mixture_velocity`, `velocity_from_x0`, `velocity_from_score` |
# | conditional FM loss (= marginal gradient) | `td.flow.cfm_loss`, `td.flow.fm_loss` |
# | Euler sampler of the flow ODE | `td.flow.sample`, `td.flow.step`, `td.flow.time_grid` |
# | bridge to DDIM | `td.flow.to_linear`, `td.flow.linear_times`, `td.flow.velocity_fn_from_eps_fn` |
# | reflow, straightness | `td.flow.ode_pairs`, `td.flow.reflow_loss`, `td.flow.straightness` |
# | logit-normal and shifted times | `td.flow.sample_time`, `td.flow.logit_normal_log_density`, `td.flow.shift_time` |
#
# Next: lesson 12 solves the same ODE in fewer steps with higher-order solvers instead of straighter paths.
