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
# # 06 · Guidance: classifier guidance and classifier-free guidance
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/tinydiff/tinydiff/blob/main/notebooks/06_guidance.ipynb)
#
# A diffusion model samples $p(x)$. Usually we want $p(x \mid y)$: a digit of a given class, an image
# that fits a caption. The lecture's section "Guidance" shows two ways to inject the condition $y$:
# add the gradient of a classifier to the score (**classifier guidance**), or train one network that
# predicts the noise both with and without the label and extrapolate between the two
# (**classifier-free guidance**, CFG). Both come with a knob $\gamma$ that trades diversity for
# fidelity to the class.
#
# We first do everything *exactly*, on a Gaussian mixture whose components carry labels: the class
# posterior $p(y\mid x_t)$ and all scores are closed-form at every noise level, so every identity can be
# checked to machine precision, and one popular claim about CFG can be tested and found false. Then we
# learn the pieces: a noise-conditional classifier, a label-dropout network, and the
# fidelity–diversity trade-off on real digits.

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

G = td.guidance
cfg = td.profiles.choose(  # sizes for the active profile: quick (tests) / standard (CPU) / full (GPU)
    quick=dict(n_oracle=400, oracle_steps=50, clf2d_steps=200, n_learned=200,
               digit_steps=200, judge_steps=100, dclf_steps=100, per_class=4, digit_sampling_steps=25),
    standard=dict(n_oracle=2000, oracle_steps=250, clf2d_steps=1500, n_learned=1000,
                  digit_steps=3000, judge_steps=600, dclf_steps=1500, per_class=20, digit_sampling_steps=100),
    full=dict(n_oracle=20000, oracle_steps=1000, clf2d_steps=5000, n_learned=5000,
              digit_steps=20000, judge_steps=2000, dclf_steps=5000, per_class=100, digit_sampling_steps=1000),
)
dev = td.device()
g = td.seed_everything(0)
sched = td.NoiseSchedule.linear(T=1000)
print(f"profile: {cfg.profile}, device: {dev}, {sched}")

# %% [markdown]
# ## 1. A labelled oracle
#
# Four isotropic Gaussians in the plane, two per class: class 0 on the left, class 1 on the right, with
# enough overlap that a point near the middle could belong to either. Because noising a Gaussian mixture
# gives a Gaussian mixture, at every step $t$ we know exactly
#
# - the noised marginal and its score,
#   $p(x_t) = \sum_k \pi_k\,\mathcal N(x_t;\sqrt{\bar\alpha_t}\mu_k,\ \bar\alpha_t\Sigma_k + (1-\bar\alpha_t)I)$,
# - the class-conditional $p(x_t\mid y)$ (the same sum over the components of class $y$, renormalised),
# - the class posterior $p(y\mid x_t) = \pi_y\,p(x_t\mid y)/p(x_t)$ — the *perfect noisy classifier*.
#
# `gm.class_posterior(x, a, s)` sums the component responsibilities per class;
# `td.guidance.oracle_class_log_prob` computes $\log p(y\mid x_t)$ by Bayes' rule with log-sum-exps.
# Let us check that the two agree and that the posterior sums to one.

# %%
gm = td.data.GaussianMixture.isotropic([[-1.0, 0.5], [-1.0, -1.0], [1.0, 0.5], [1.0, -1.0]], std=0.6,
                                       labels=[0, 0, 1, 1])
x_probe = 2.0 * torch.randn(64, 2, generator=g, dtype=torch.float64)
t_probe = [1, 100, 300, 600]
post, bayes = [], []
for t in t_probe:
    ab = sched.alpha_bar[t]
    post.append(gm.class_posterior(x_probe, ab.sqrt(), (1 - ab).sqrt()))
    bayes.append(torch.stack([G.oracle_class_log_prob(gm, x_probe, ab, y).exp() for y in (0, 1)], 1))
post, bayes = torch.stack(post), torch.stack(bayes)

# %%
# NBVAL_CHECK_OUTPUT
td.check("p(y | x_t) sums to 1 over the classes", post.sum(-1), torch.ones_like(post.sum(-1)), atol=1e-12)
td.check("p(y | x_t): responsibilities summed per class = Bayes' rule pi_y p(x_t|y)/p(x_t)", post, bayes, atol=1e-10)

# %% [markdown]
# The picture: the data density, the class-0 density, and the posterior $p(y=0\mid x_t)$ at three noise
# levels. At small $t$ the classifier is sharp; as the noise grows the classes blur together and
# $p(y\mid x_t)$ flattens towards the prior $\pi_0 = 1/2$. A guidance gradient $\nabla\log p(y\mid x_t)$
# is therefore strong late in sampling (small $t$) and gentle early on.

# %%
fig, axes = plt.subplots(1, 5, figsize=(18, 3.3))
td.plotting.density2d(gm.log_prob, ax=axes[0], title="$p(x)$", colorbar=True, label="density")
td.plotting.density2d(gm.conditional(0).log_prob, ax=axes[1], title="$p(x\\mid y=0)$", colorbar=True, label="density")
for ax, t in zip(axes[2:], [10, 300, 600]):
    ab = sched.alpha_bar[t]
    td.plotting.density2d(lambda x, ab=ab: G.oracle_class_log_prob(gm, x, ab, 0), ax=ax,
                          title=f"$p(y=0\\mid x_t)$, t={t}", cmap="coolwarm", colorbar=True, vmin=0, vmax=1,
                          label="probability")
plt.tight_layout()
plt.show()

# %% [markdown]
# ## 2. Bayes' rule for scores, and classifier guidance
#
# Take the log of $p(x_t\mid y) = p(x_t)\,p(y\mid x_t)/p(y)$ and differentiate in $x_t$; $p(y)$ does not
# depend on $x_t$, so
#
# $$\nabla_{x_t}\log p(x_t\mid y) = \underbrace{\nabla_{x_t}\log p(x_t)}_{\text{unconditional score}}
#   + \underbrace{\nabla_{x_t}\log p(y\mid x_t)}_{\text{classifier gradient}}.$$
#
# With Tweedie's $\varepsilon = -\sqrt{1-\bar\alpha_t}\,\nabla\log p(x_t)$ (lesson 05) this becomes a rule for
# the noise prediction, and scaling the classifier term by a strength $\gamma$ gives **classifier guidance**:
#
# $$\hat\varepsilon(x_t, t) = \varepsilon_\theta(x_t, t) - \gamma\sqrt{1-\bar\alpha_t}\,\nabla_{x_t}\log p_\phi(y\mid x_t).$$
#
# $\gamma = 0$ samples $p(x)$, $\gamma = 1$ samples $p(x\mid y)$ (if the model and classifier are exact),
# $\gamma > 1$ sharpens the classifier: it guides towards $p(x)\,p(y\mid x)^\gamma$ at each noise level.
# Only the sampler changes; the diffusion model is untouched.
#
# The check: the closed-form scores (`gm.score`, an analytic formula) against the classifier gradient
# obtained by *autograd* of $\log p(y\mid x_t)$ (`td.guidance.oracle_class_grad`), at several $t$.

# %%
lhs, rhs, eps_cond, eps_guided = [], [], [], []
for t in t_probe:
    ab = sched.alpha_bar[t]
    a, s = ab.sqrt(), (1 - ab).sqrt()
    grad_y = G.oracle_class_grad(gm, x_probe, ab, 0)
    lhs.append(gm.conditional(0).score(x_probe, a, s))
    rhs.append(gm.score(x_probe, a, s) + grad_y)
    tt = torch.full((64,), t)
    eps_cond.append(gm.conditional(0).eps_fn(sched)(x_probe, tt))
    eps_guided.append(G.classifier_eps(gm.eps_fn(sched)(x_probe, tt), grad_y, ab, gamma=1.0))

# %%
# NBVAL_CHECK_OUTPUT
td.check("grad log p(x_t|y) = grad log p(x_t) + grad log p(y|x_t)", torch.stack(lhs), torch.stack(rhs), atol=1e-9)
td.check("classifier guidance with gamma=1 gives the exact conditional eps", torch.stack(eps_guided),
         torch.stack(eps_cond), atol=1e-9)

# %% [markdown]
# Now sample with the exact classifier for several $\gamma$ (all strengths in one batch: `gamma` may be a
# per-sample tensor). We measure two things on the samples: **class accuracy**, judged by the exact Bayes
# classifier $p(y\mid x_0)$ of the clean data, and **spread**, the root-mean-square distance of the samples
# to their mean. The sampler is DDIM with $\eta = 1$ (ancestral, DDPM-like; lesson 03) on
# `cfg.oracle_steps` steps; the guided $\varepsilon$ is an ordinary `eps_fn`, so any sampler takes it.

# %%
gammas_cg = [0.0, 1.0, 2.0, 4.0]
n = cfg.n_oracle
gamma_vec = torch.tensor(gammas_cg).repeat_interleave(n)
eps_cg = G.oracle_classifier_eps_fn(gm, sched, 0, gamma_vec)
x_cg = td.ddim.sample(eps_cg, (len(gamma_vec), 2), sched, cfg.oracle_steps, eta=1.0, generator=g, progress_bar=True)
acc_cg, spread_cg = [], []
for i, gam in enumerate(gammas_cg):
    xs = x_cg[i * n:(i + 1) * n]
    acc_cg.append((gm.class_posterior(xs).argmax(1) == 0).double().mean().item())
    spread_cg.append(td.metrics.within_class_spread(xs, torch.zeros(n, dtype=torch.long)).item())
    print(f"gamma = {gam:3.1f}: class accuracy {acc_cg[-1]:.3f}, spread {spread_cg[-1]:.3f}")
exact_acc = (gm.class_posterior(gm.sample_class(0, 20000, g)).argmax(1) == 0).double().mean().item()
print(f"for reference, exact samples of p(x | y=0): accuracy {exact_acc:.3f}")

# %%
# NBVAL_CHECK_OUTPUT
td.check_less("accuracy rises with gamma: 0 -> 1", acc_cg[0], acc_cg[1])
td.check_less("accuracy rises with gamma: 1 -> 4", acc_cg[1], acc_cg[3])
td.check_less("spread falls with gamma: 0 -> 4", spread_cg[3], spread_cg[0])

# %%
fig, axes = plt.subplots(1, len(gammas_cg), figsize=(13, 3.3), layout="constrained")
for i, (ax, gam) in enumerate(zip(axes, gammas_cg)):
    xs = x_cg[i * n:(i + 1) * n]
    td.plotting.scatter2d(xs, ax=ax, c=gm.class_posterior(xs)[:, 0], cmap="coolwarm", vmin=0, vmax=1,
                          title=f"classifier guidance, γ={gam:g}")
fig.colorbar(axes[0].collections[0], ax=axes, fraction=0.02, pad=0.02, label="$p(y=0\\mid x)$ of the sample")
plt.show()

# %% [markdown]
# With $\gamma = 0$ half the samples land in class 1 (the unconditional model knows nothing of $y$);
# $\gamma = 1$ reproduces the class-conditional accuracy printed above; larger $\gamma$ pushes samples away
# from the class boundary, so accuracy climbs towards 1 while the cloud shrinks (only slightly here: once the
# samples sit in class 0, extra guidance mostly trims the tail near the boundary).

# %% [markdown]
# ## 3. Classifier-free guidance: the algebra
#
# Classifier guidance needs a classifier of *noisy* inputs. CFG removes it. Apply the guidance rule to
# the conditional model and write the classifier gradient with Bayes' rule once more,
#
# $$\nabla\log p(y\mid x_t) = \nabla\log p(x_t\mid y) - \nabla\log p(x_t)
#   = -\frac{\varepsilon(x_t,y) - \varepsilon(x_t,\varnothing)}{\sqrt{1-\bar\alpha_t}},$$
#
# so that
#
# $$\begin{aligned}
# \hat\varepsilon &= \varepsilon_\theta(x_t,t,y) - \gamma\sqrt{1-\bar\alpha_t}\,\nabla\log p(y\mid x_t)
#   = \varepsilon_\theta(x_t,t,y) + \gamma\big(\varepsilon_\theta(x_t,t,y) - \varepsilon_\theta(x_t,t,\varnothing)\big)\\
#   &= (1+\gamma)\,\varepsilon_\theta(x_t,t,y) - \gamma\,\varepsilon_\theta(x_t,t,\varnothing),
# \end{aligned}$$
#
# where $\varepsilon(\cdot,\varnothing)$ is the unconditional prediction. So CFG with strength $\gamma$ is
# classifier guidance of the *unconditional* model with strength $1+\gamma$, using the implicit classifier
# the two predictions define.
#
# **Two conventions.** The lecture (and Ho & Salimans) write $\gamma$, with $\gamma = 0$ the plain conditional
# model. diffusers writes `guidance_scale` $w$ and computes
# $\varepsilon_\varnothing + w(\varepsilon_y - \varepsilon_\varnothing)$,
# so $w = 1 + \gamma$ and $w = 1$ is the conditional model ("guidance_scale=7.5" is $\gamma = 6.5$).
# We check both algebra steps on the oracle, and the convention against diffusers' own
# `ClassifierFreeGuidance` guider.

# %%
from diffusers.guiders import ClassifierFreeGuidance

gamma = 2.5
tt = torch.full((64,), 300)
eps_u = gm.eps_fn(sched)(x_probe, tt)
eps_c = gm.conditional(0).eps_fn(sched)(x_probe, tt)
grad_y = G.oracle_class_grad(gm, x_probe, sched.alpha_bar[300], 0)
w = G.guidance_scale_from_gamma(gamma)
guider = ClassifierFreeGuidance(guidance_scale=w)
guider_paper = ClassifierFreeGuidance(guidance_scale=gamma, use_original_formulation=True)
print(f"gamma = {gamma}  <->  diffusers guidance_scale w = {w}")

# %%
# NBVAL_CHECK_OUTPUT
td.check("classifier guidance of eps(x,y) = (1+gamma) eps(x,y) - gamma eps(x,0)",
         G.classifier_eps(eps_c, grad_y, sched.alpha_bar[300], gamma), G.cfg(eps_u, eps_c, gamma), atol=1e-9)
td.check("CFG(gamma) = classifier guidance of eps(x,0) with strength 1+gamma",
         G.classifier_eps(eps_u, grad_y, sched.alpha_bar[300], 1 + gamma), G.cfg(eps_u, eps_c, gamma), atol=1e-9)
td.check("lecture gamma = diffusers w - 1 (our two forms)", G.cfg_diffusers(eps_u, eps_c, w), G.cfg(eps_u, eps_c, gamma),
         atol=1e-12)
td.check("lecture gamma = diffusers ClassifierFreeGuidance(guidance_scale=1+gamma)",
         guider.forward(eps_c, eps_u).pred, G.cfg(eps_u, eps_c, gamma), atol=1e-12)
td.check("diffusers use_original_formulation=True takes gamma itself",
         guider_paper.forward(eps_c, eps_u).pred, G.cfg(eps_u, eps_c, gamma), atol=1e-12)

# %% [markdown]
# ## 4. What CFG does *not* sample
#
# It is tempting to read the guided score $(1+\gamma)\nabla\log p(x_t\mid y) - \gamma\nabla\log p(x_t)$ as
# the score of the **tilted density** $\tilde p_\gamma(x) \propto p(x\mid y)^{1+\gamma}\,p(x)^{-\gamma}$ (equivalently
# $p(x\mid y)\,p(y\mid x)^{\gamma}$) and conclude that CFG samples $\tilde p_\gamma$. It does not: the guided score at
# $t > 0$ is built from the *noised* densities, and the noised version of $\tilde p_\gamma$ is not
# $p_t(x\mid y)^{1+\gamma}p_t(x)^{-\gamma}$ (noising is a convolution, and convolution does not commute with
# powers). At $t = 0$ the two agree; along the way they do not, and the error is not undone.
#
# On the oracle we can measure this. The tilted density is known up to a constant on the plane, so its
# mean and covariance follow by quadrature on a 400×400 grid (`td.guidance.grid_moments`). CFG samples
# with the *exact* $\varepsilon$'s have no model error at all; we compare their moments with the
# quadrature and express the gap in Monte-Carlo standard errors. $\gamma = 0$ is the control: there CFG
# is the conditional model, the tilted density is $p(x\mid y)$, and the gap must be pure noise.

# %%
gammas_cfg = [0.0, 1.0, 3.0]
gamma_vec = torch.tensor(gammas_cfg).repeat_interleave(n)
x_cfg = td.ddim.sample(G.oracle_cfg_eps_fn(gm, sched, 0, gamma_vec), (len(gamma_vec), 2), sched, cfg.oracle_steps,
                       eta=1.0, generator=g, progress_bar=True).double()
z_mean, z_var = [], []
for i, gam in enumerate(gammas_cfg):
    xs = x_cfg[i * n:(i + 1) * n]
    m_tilt, C_tilt = G.grid_moments(G.tilted_log_density(gm, 0, gam), lim=6.0, n=400)
    m_cfg, C_cfg = xs.mean(0), torch.cov(xs.T)
    se_mean = (C_cfg.diagonal() / n).sqrt()  # standard error of the sample mean
    se_var = C_cfg.diagonal() * (2 / (n - 1)) ** 0.5  # of the sample variance (Gaussian approximation)
    z_mean.append(((m_cfg - m_tilt).abs() / se_mean).max().item())
    z_var.append(((C_cfg.diagonal() - C_tilt.diagonal()).abs() / se_var).max().item())
    print(f"gamma={gam:g}: mean CFG {m_cfg.numpy().round(3)} vs tilted {m_tilt.numpy().round(3)}; "
          f"var CFG {C_cfg.diagonal().numpy().round(3)} vs tilted {C_tilt.diagonal().numpy().round(3)}; "
          f"gap = {z_mean[-1]:.1f} s.e. (mean), {z_var[-1]:.1f} s.e. (variance)")

# %%
# NBVAL_CHECK_OUTPUT
td.check_less("gamma=0 (control): CFG mean within 4 standard errors of p(x|y)", z_mean[0], 4.0)
td.check_less("gamma=3: CFG mean is more than 6 standard errors away from the tilted density", 6.0, z_mean[2])
# the comparison is only as good as tilted_log_density itself: its gradient (autograd) must be the guided score
# score + (1 + gamma) grad log p(y|x), from the oracle's closed-form score and class gradient (independent code)
x_probe = gm.sample(256, g).double()
for gam in (1.0, 3.0):
    xg = x_probe.clone().requires_grad_(True)
    (grad_tilt,) = torch.autograd.grad(G.tilted_log_density(gm, 0, gam)(xg).sum(), xg)
    td.check(f"gamma={gam:g}: grad of tilted_log_density = score + (1 + gamma) grad log p(y|x)", grad_tilt,
             G.guided_score(gm.score(x_probe), G.oracle_class_grad(gm, x_probe, 1.0, 0), 1 + gam), atol=1e-9)

# %%
fig, axes = plt.subplots(1, 2, figsize=(8, 3.6))
for ax, i in zip(axes, [1, 2]):
    td.plotting.density2d(G.tilted_log_density(gm, 0, gammas_cfg[i]), ax=ax, lim=3.5, colorbar=True,
                          label="tilted density (unnormalised)")
    xs = x_cfg[i * n:(i + 1) * n][:600]
    ax.scatter(xs[:, 0], xs[:, 1], s=2, c="w", alpha=0.6)
    ax.set_title(f"γ={gammas_cfg[i]:g}: tilted density vs CFG samples", fontsize=9)
plt.tight_layout()
plt.show()

# %% [markdown]
# The CFG samples are pushed further left (away from class 1) and are narrower than the tilted density:
# guidance acts strongly at intermediate noise levels where the classes still overlap, and that push is
# never taken back. So "CFG samples $p(x\mid y)^{1+\gamma}p(x)^{-\gamma}$" is a heuristic, not a theorem;
# what is exact is only the one-step identity of §3. (Chidambaram et al., 2024, and Bradley & Nakkiran,
# 2024, analyse this gap.)

# %% [markdown]
# ## 5. A learned noise-conditional classifier (2-D)
#
# In practice $p(y\mid x_t)$ is a network $p_\phi(y\mid x_t, t)$ trained with cross-entropy on *noised* data:
# draw $t$, noise $x_0$ to $x_t$, predict $y$ (`td.guidance.classifier_loss`). A classifier trained on clean
# data only would be useless at large $t$. We train a small MLP classifier on labelled samples of the
# mixture, then compute its gradient with autograd (`td.guidance.classifier_grad`) and check it by
# central finite differences.

# %%
x_lab, comp = gm.sample(20000, g, return_components=True)
y_lab = gm.labels[comp]
clf2d = td.models.MLPClassifier(dim=2, num_classes=2)
res = td.train.fit(clf2d, lambda m, b: G.classifier_loss(m, b[0], b[1], sched), (x_lab, y_lab), steps=cfg.clf2d_steps,
                   batch_size=256, lr=2e-3, ema_decay=None, device="cpu", desc="2-D classifier", shipped="06_2_d_classifier")
print(f"final cross-entropy (mean of the last 100 steps): {sum(res.losses[-100:]) / len(res.losses[-100:]):.3f}")

# %%
clf64 = td.models.MLPClassifier(dim=2, num_classes=2).double()
clf64.load_state_dict(clf2d.state_dict())
x_fd, t_fd, h = x_probe[:16], torch.full((16,), 200), 1e-5


def log_p_phi(x):
    return torch.log_softmax(clf64(x, t_fd), 1)[:, 0]


fd = torch.stack([(log_p_phi(x_fd + h * e) - log_p_phi(x_fd - h * e)) / (2 * h) for e in torch.eye(2, dtype=torch.float64)], 1)
auto = G.classifier_grad(clf64, x_fd, t_fd, 0)

# %%
# NBVAL_CHECK_OUTPUT
td.check("classifier_grad (autograd) = central finite differences", auto, fd.detach(), atol=1e-6)

# %% [markdown]
# How close is the learned gradient to the exact one? (Printed, not asserted: it depends on training.)
# Then classifier guidance in both forms the literature uses, with the exact unconditional $\varepsilon$
# so that only the classifier is learned:
#
# - the **DDPM mean** form of Dhariwal & Nichol:
#   $x_{t-1}\sim\mathcal N(\mu_\theta + \gamma\sigma_t^2\nabla\log p_\phi,\ \sigma_t^2 I)$
#   (`td.guidance.guided_ddpm_sample`, which uses `td.guidance.guided_mean`);
# - the **guided-$\varepsilon$** form, usable by any sampler, here DDIM with $\eta=0$
#   (`td.guidance.classifier_guided_eps_fn`).
#
# The mean form shifts by $\gamma\sigma_t^2\nabla\log p_\phi$, the $\varepsilon$ form (in a DDPM step) by
# $\gamma\frac{\beta_t}{\sqrt{\alpha_t}}\nabla\log p_\phi$. With $\sigma_t^2 = \beta_t$ these agree to first order
# in $\beta_t$ (the ratio is $\sqrt{\alpha_t}$). With the default $\sigma_t^2 = \tilde\beta_t$ they do **not**: the
# ratio of the shifts is $\tilde\beta_t\sqrt{\alpha_t}/\beta_t = \sqrt{\alpha_t}(1-\bar\alpha_{t-1})/(1-\bar\alpha_t)$,
# close to 1 only at large $t$ and 0.455 at $t = 2$, so the two forms guide the last steps differently.
# Measured on the package's functions:

# %%
t_r = torch.tensor([2, 10, 100, 1000])
x_r, e_r, gr_r = (torch.randn(4, 2, generator=g, dtype=torch.float64) for _ in range(3))
var_r = sched.posterior_variance[t_r]
shift_mean = G.guided_mean(td.ddpm.p_mean(x_r, e_r, t_r, sched), var_r, gr_r, 1.0) - td.ddpm.p_mean(x_r, e_r, t_r, sched)
shift_eps = (td.ddpm.p_mean(x_r, G.classifier_eps(e_r, gr_r, sched.alpha_bar[t_r], 1.0), t_r, sched)
             - td.ddpm.p_mean(x_r, e_r, t_r, sched))
ratio_r = (shift_mean / shift_eps)[:, 0]
print("t:", t_r.tolist(), " shift of the mean form / shift of the eps form:", [f"{v:.3f}" for v in ratio_r.tolist()])

# %%
# NBVAL_CHECK_OUTPUT
td.check("mean-form / eps-form shift = sqrt(alpha_t) (1 - alpha_bar_{t-1}) / (1 - alpha_bar_t) (sigma^2 = tilde beta)",
         ratio_r, sched.alpha[t_r].sqrt() * (1 - sched.alpha_bar[t_r - 1]) / (1 - sched.alpha_bar[t_r]), atol=1e-9)
td.check_less("... which is far from 1 at t = 2 (below 0.5): not 'the same to first order'", ratio_r[0].item(), 0.5)

# %%
cos = []
for t in [50, 200, 500]:
    ab = sched.alpha_bar[t]
    xt = gm.sample(2000, g) * ab.sqrt().float() + (1 - ab).sqrt().float() * torch.randn(2000, 2, generator=g)
    exact = G.oracle_class_grad(gm, xt, ab, 0)
    learned = G.classifier_grad(clf2d, xt, torch.full((2000,), t), 0)
    cos.append(torch.nn.functional.cosine_similarity(exact, learned).median().item())
    print(f"t={t}: median cosine(learned, exact classifier gradient) = {cos[-1]:.3f}, "
          f"norm ratio = {(learned.norm(dim=1) / exact.norm(dim=1)).median():.2f}")

# %%
gamma_l, n_l = 3.0, cfg.n_learned
grad_learned = lambda x, t, y: G.classifier_grad(clf2d, x, t, y)
eps_uncond = gm.eps_fn(sched)
g_same = torch.Generator().manual_seed(1)
x_mean_form = G.guided_ddpm_sample(eps_uncond, (n_l, 2), sched, grad_fn=grad_learned, y=0, gamma=gamma_l,
                                   generator=g_same)
x_eps_form = td.ddim.sample(G.classifier_guided_eps_fn(eps_uncond, grad_learned, 0, gamma_l, sched), (n_l, 2), sched,
                            cfg.oracle_steps, eta=0.0, generator=g, progress_bar=True)
x_plain = td.ddim.sample(eps_uncond, (n_l, 2), sched, cfg.oracle_steps, eta=1.0, generator=g)
for name, xs in [("unguided", x_plain), ("mean form, γ=3", x_mean_form), ("ε form (DDIM), γ=3", x_eps_form)]:
    print(f"{name:20s}: class-0 accuracy {(gm.class_posterior(xs).argmax(1) == 0).double().mean():.3f}")

# %% [markdown]
# A sanity check of the mean form: with $\gamma = 0$ it must be Algorithm 2 itself, sample for sample (same
# noise). A 50-step schedule keeps it cheap; the identity holds for any schedule.

# %%
sched_short = td.NoiseSchedule.linear(T=50, beta_end=0.2)
grad_exact_short = lambda x, t, y: G.oracle_class_grad(gm, x, sched_short.alpha_bar[t.cpu()], y)
x_plain_short = td.ddpm.sample(gm.eps_fn(sched_short), (64, 2), sched_short, generator=torch.Generator().manual_seed(2))
x_gamma0 = G.guided_ddpm_sample(gm.eps_fn(sched_short), (64, 2), sched_short, grad_fn=grad_exact_short, y=0,
                                gamma=0.0, generator=torch.Generator().manual_seed(2))

# %%
# NBVAL_CHECK_OUTPUT
td.check("guided DDPM mean form with gamma=0 = plain DDPM (same noise)", x_gamma0, x_plain_short, atol=1e-5)

# %% [markdown]
# ## 6. Classifier-free guidance with one network (Algorithm 1)
#
# CFG trains a single network $\varepsilon_\theta(x_t, t, c)$ where the condition $c$ is the label, except
# that with probability $p_\text{uncond}$ it is replaced by a **null label** $\varnothing$ (Algorithm 1, line 3).
# tinydiff's `MLPDenoiser(num_classes=K)` and `UNet(num_classes=K)` reserve index $K$ for $\varnothing$;
# `td.guidance.drop_labels` does the replacement and `td.guidance.cfg_loss` is line 7. First, the dropout rate:

# %%
y_many = torch.randint(0, 10, (20000,), generator=g)
y_dropped = G.drop_labels(y_many, 0.2, null_label=10, generator=g)
rate = (y_dropped == 10).double().mean().item()
print(f"fraction of null labels: {rate:.4f} (p_uncond = 0.2)")

# %%
# NBVAL_CHECK_OUTPUT
td.check_less("null-label rate within 4 binomial standard errors of p_uncond", abs(rate - 0.2),
              4 * (0.2 * 0.8 / 20000) ** 0.5)
td.check("labels that are not dropped are unchanged", y_dropped[y_dropped != 10], y_many[y_dropped != 10], atol=0)

# %% [markdown]
# ## 7. The trade-off on digits
#
# Now the real thing, on scikit-learn's 8×8 digits (1,797 images). Three networks, each trained through
# `td.train.fit`:
#
# 1. the **CFG denoiser**: an `MLPDenoiser` on the 64 flattened pixels with a label embedding, trained with
#    $p_\text{uncond} = 0.2$ (an MLP is about ten times cheaper than a UNet here, and good enough for 8×8);
# 2. a **noise-conditional classifier** `Classifier(time_conditional=True)` for classifier guidance;
# 3. an independent **judge**: a plain `Classifier` trained on clean training images only, used to grade
#    the samples. Grading with the guidance classifier would reward adversarial pixels that fool it.
#
# The same CFG network also serves as the unconditional model for classifier guidance (label $\varnothing$).

# %%
x_dig, y_dig = td.data.load_digits()
perm = torch.randperm(len(x_dig), generator=g)
train_idx, test_idx = perm[:1400], perm[1400:]
x_flat = x_dig.flatten(1)
denoiser = td.models.MLPDenoiser(dim=64, hidden=256, depth=3, num_classes=10)
fit_cfg = td.train.fit(denoiser, lambda m, b: G.cfg_loss(m, b[0], b[1], sched, p_uncond=0.2),
                       (x_flat[train_idx], y_dig[train_idx]), steps=cfg.digit_steps, batch_size=128, lr=1e-3,
                       device=dev, desc="CFG denoiser", shipped="06_cfg_denoiser")
judge = td.models.Classifier(1, 10, base_channels=16)
td.train.fit(judge, lambda m, b: torch.nn.functional.cross_entropy(m(b[0]), b[1]), (x_dig[train_idx], y_dig[train_idx]),
             steps=cfg.judge_steps, batch_size=128, lr=2e-3, ema_decay=None, seed=1, device=dev, desc="judge", shipped="06_judge")
noisy_clf = td.models.Classifier(1, 10, base_channels=16, time_conditional=True)
td.train.fit(noisy_clf, lambda m, b: G.classifier_loss(m, b[0], b[1], sched), (x_dig[train_idx], y_dig[train_idx]),
             steps=cfg.dclf_steps, batch_size=128, lr=2e-3, ema_decay=None, seed=2, device=dev,
             desc="noisy classifier", shipped="06_noisy_classifier")
with torch.no_grad():
    judge_acc = (judge(x_dig[test_idx].to(dev)).argmax(1).cpu() == y_dig[test_idx]).double().mean().item()
print(f"judge accuracy on held-out real digits: {judge_acc:.3f}")

# %% [markdown]
# We sample 10 classes × `per_class` images for every $\gamma$, all strengths in one batch, with DDIM
# $\eta = 1$ (ancestral) on `digit_sampling_steps` steps. For each $\gamma$ we report the judge's
# **accuracy** and two diversity measures on the judge's penultimate features: the **within-class spread**
# (RMS distance to the class mean) and **recall** (Kynkäänniemi et al.: the fraction of real test digits
# of that class that fall inside the manifold spanned by the samples, $k=3$).

# %%
model = fit_cfg.sampler_model
per = cfg.per_class
gammas_dig = [0.0, 0.5, 1.0, 2.0, 4.0]
y_gen = torch.arange(10).repeat_interleave(per).repeat(len(gammas_dig))
gamma_gen = torch.tensor(gammas_dig).repeat_interleave(10 * per)
x_gen = td.ddim.sample(G.cfg_eps_fn(model, y_gen, gamma_gen), (len(y_gen), 64), sched,
                       cfg.digit_sampling_steps, eta=1.0, generator=g)
img_gen = x_gen.clamp(-1, 1).view(-1, 1, 8, 8).cpu()
x_test, y_test = x_dig[test_idx], y_dig[test_idx]
rows_cfg = G.tradeoff(judge, img_gen, y_gen, gammas_dig, x_test, y_test)
for r in rows_cfg:
    print(f"CFG γ={r['gamma']:4.1f}: accuracy {r['accuracy']:.3f}   spread {r['spread']:.3f}   recall {r['recall']:.3f}")
with torch.no_grad():
    feat_real = judge.features(x_test.to(dev)).cpu()
print(f"real test digits: spread {td.metrics.within_class_spread(feat_real, y_test).mean().item():.3f}")

# %% [markdown]
# Classifier guidance on the same digits, in the guided-$\varepsilon$ form: the unconditional prediction
# $\varepsilon_\theta(x_t, t, \varnothing)$ plus the gradient of the noisy classifier. Its $\gamma = 0$ is unconditional,
# so its accuracy starts near 10 %, and it needs larger strengths.

# %%
gammas_cgd = [0.0, 1.0, 3.0, 10.0]
y_gen2 = torch.arange(10).repeat_interleave(per).repeat(len(gammas_cgd))
gamma_gen2 = torch.tensor(gammas_cgd).repeat_interleave(10 * per)
eps_null = lambda x, t: model(x, t, torch.full((x.shape[0],), 10, device=x.device))
grad_digits = lambda x, t, y: G.classifier_grad(lambda u, s: noisy_clf(u.view(-1, 1, 8, 8), s), x, t, y)
x_gen2 = td.ddim.sample(G.classifier_guided_eps_fn(eps_null, grad_digits, y_gen2.to(dev), gamma_gen2.to(dev), sched),
                        (len(y_gen2), 64), sched, cfg.digit_sampling_steps, eta=1.0, generator=g)
img_gen2 = x_gen2.clamp(-1, 1).view(-1, 1, 8, 8).cpu()
rows_cg = G.tradeoff(judge, img_gen2, y_gen2, gammas_cgd, x_test, y_test)
for r in rows_cg:
    print(f"classifier guidance γ={r['gamma']:4.1f}: accuracy {r['accuracy']:.3f}   spread {r['spread']:.3f}   "
          f"recall {r['recall']:.3f}")

# %%
fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
for rows, name, mk in [(rows_cfg, "CFG", "o-"), (rows_cg, "classifier guidance", "s--")]:
    axes[0].plot([r["gamma"] for r in rows], [r["accuracy"] for r in rows], mk, label=name)
    axes[1].plot([r["recall"] for r in rows], [r["accuracy"] for r in rows], mk, label=name)
    for r in rows:
        axes[1].annotate(f"γ={r['gamma']:g}", (r["recall"], r["accuracy"]), fontsize=7, xytext=(3, 3),
                         textcoords="offset points")
axes[0].set(xlabel="γ", ylabel="judge accuracy", title="fidelity vs γ")
axes[1].set(xlabel="recall (diversity)", ylabel="judge accuracy (fidelity)", title="the trade-off")
axes[0].legend()
plt.tight_layout()
plt.show()

# %% [markdown]
# Read the numbers above rather than trusting the shape of the curve. With CFG the conditional model
# ($\gamma = 0$) is already accurate on this easy data set, so accuracy has little room to rise, while
# spread and recall drop quickly as $\gamma$ grows: the samples collapse onto a few "typical" digits per
# class. At the largest $\gamma$ the samples overshoot (saturated strokes, pixels beyond $[-1, 1]$ before
# clamping), which the judge's features see as a new kind of spread: strong guidance trades diversity
# for fidelity only up to a point. Classifier guidance climbs from chance (its $\gamma = 0$ is the
# unconditional model) to high accuracy as $\gamma$ grows, and its within-class spread falls steadily. Its
# recall is not monotone: at $\gamma = 0$ most samples "of class $y$" are other digits, so they cover class
# $y$'s real digits poorly; recall peaks near $\gamma = 1$ and then declines slowly. These are the curves of
# Dhariwal & Nichol (Fig. 4) and Ho & Salimans (Fig. 4), in miniature and with a weak model, so read the
# direction of the effect rather than its size.

# %% [markdown]
# ### Samples for each γ, and a slider
#
# One row of panels per $\gamma$; in each, one column per class $0, \dots, 9$ and the first two samples of that
# class. Below it, `td.guidance.gamma_browser` shows up to 10 samples per class for every $\gamma$ in one small
# strip (an overview: zoom in to read it) and, in a live notebook (Jupyter, Colab), a slider that selects among
# the same precomputed grids.

# %%
n_show = min(per, 2)
fig, axes = plt.subplots(len(gammas_dig), 1, figsize=(8, 0.9 * n_show * len(gammas_dig) + 0.6))
for ax, i, gam in zip(axes, range(len(gammas_dig)), gammas_dig):
    block = img_gen[i * 10 * per:(i + 1) * 10 * per].view(10, per, 1, 8, 8)[:, :n_show]
    td.plotting.show_images(block.transpose(0, 1).reshape(-1, 1, 8, 8), nrow=10, ax=ax)
    ax.set_title(f"CFG γ = {gam:g}  (diffusers w = {1 + gam:g}); columns: classes 0–9", fontsize=9)
plt.tight_layout()
plt.show()

# %%
by_gamma = {}
for i, gam in enumerate(gammas_dig):
    block = img_gen[i * 10 * per:(i + 1) * 10 * per].view(10, per, 1, 8, 8)[:, :min(per, 10)]
    by_gamma[gam] = block.transpose(0, 1).reshape(-1, 1, 8, 8)
fig, slider = G.gamma_browser(by_gamma, nrow=10)
plt.show()
slider

# %% [markdown]
# ## 8. The same thing in tinydiff
#
# The guidance formulas are one line each; here they are written by hand and compared with the package.

# %%
eps_hand_cfg = (1 + gamma) * eps_c - gamma * eps_u
ab300 = sched.alpha_bar[300]
eps_hand_cg = eps_u - gamma * (1 - ab300).sqrt() * grad_y
mean_any = torch.randn_like(eps_u)
var_any = sched.posterior_variance[300]

# %%
# NBVAL_CHECK_OUTPUT
td.check("hand-written CFG = td.guidance.cfg", eps_hand_cfg, G.cfg(eps_u, eps_c, gamma), atol=1e-12)
td.check("hand-written classifier guidance = td.guidance.classifier_eps", eps_hand_cg,
         G.classifier_eps(eps_u, grad_y, ab300, gamma), atol=1e-12)
td.check("hand-written guided mean = td.guidance.guided_mean", mean_any + gamma * var_any * grad_y,
         G.guided_mean(mean_any, var_any, grad_y, gamma), atol=1e-12)

# %% [markdown]
# ## Exercises
#
# **1.** Write CFG in diffusers' convention: given `eps_uncond`, `eps_cond` and diffusers'
# `guidance_scale` $w$, return the guided noise prediction.

# %%
def my_cfg_from_scale(eps_uncond, eps_cond, guidance_scale):
    # Your code here: return eps_uncond + ... (remember w = 1 + gamma).
    raise NotImplementedError


def ex_cases(i):
    gen = torch.Generator().manual_seed(i)
    return torch.randn(8, 2, generator=gen), torch.randn(8, 2, generator=gen), float(torch.rand(1, generator=gen) * 8)


# %%
# NBVAL_CHECK_OUTPUT
td.exercises.check(my_cfg_from_scale, G.cfg_diffusers, ex_cases,
                   mistakes={"you used w as the lecture's gamma: w = 1 + gamma": lambda u, c, w: G.cfg(u, c, w),
                             "the two predictions are swapped": lambda u, c, w: G.cfg_diffusers(c, u, w)})

# %% [markdown]
# **2.** Write classifier guidance on the noise prediction:
# $\hat\varepsilon = \varepsilon - \gamma\sqrt{1-\bar\alpha_t}\,\nabla\log p(y\mid x_t)$. Here `alpha_bar_t` is a
# Python float (use `math.sqrt`, or `** 0.5`) and `gamma` a number; `eps` and `grad_log_py` are tensors `(B, D)`.

# %%
def my_classifier_eps(eps, grad_log_py, alpha_bar_t, gamma):
    # Your code here.
    raise NotImplementedError


def ex_cases2(i):
    gen = torch.Generator().manual_seed(10 + i)
    ab = torch.rand(1, generator=gen, dtype=torch.float64).item()
    return torch.randn(8, 2, generator=gen), torch.randn(8, 2, generator=gen), ab, 1.0 + i


# %%
# NBVAL_CHECK_OUTPUT
td.exercises.check(my_classifier_eps, G.classifier_eps, ex_cases2,
                   mistakes={"the square root on 1 - alpha_bar is missing":
                             lambda e, gr, ab, gam: e - gam * (1 - ab) * gr,
                             "the sign is flipped: guidance must *lower* eps along the classifier gradient":
                             lambda e, gr, ab, gam: e + gam * (1 - ab) ** 0.5 * gr})

# %% [markdown]
# **3.** (Find the bug.) This CFG combination runs and is wrong: with $\gamma = 1$ it samples *away* from the class.
# Find the bug by writing out what $\gamma = 0$ should give (the conditional model) and write `my_cfg`.

# %%
def buggy_cfg(eps_uncond, eps_cond, gamma):
    return (1 + gamma) * eps_uncond - gamma * eps_cond


def my_cfg(eps_uncond, eps_cond, gamma):
    # Your code here: the lecture's CFG, (1 + gamma) eps(x, y) - gamma eps(x, null); gamma is a number.
    raise NotImplementedError


def ex_cases3(i):
    gen = torch.Generator().manual_seed(20 + i)
    return torch.randn(8, 2, generator=gen), torch.randn(8, 2, generator=gen), [1.0, 3.0, 0.5, 7.5, 0.0][i]


# %%
# NBVAL_CHECK_OUTPUT
td.exercises.check(my_cfg, G.cfg, ex_cases3,
                   mistakes={"that is the buggy version: the conditional prediction gets the weight 1 + gamma": buggy_cfg,
                             "that is diffusers' convention with w = gamma: the lecture's gamma is w - 1":
                                 lambda u, c, gam: u + gam * (c - u)})

# %% [markdown]
# **4.** (Think, then compute.) Using the oracle, sample CFG with $\gamma = -1$. Which distribution do you
# get, and why? Check your answer by comparing the class accuracy with §2's $\gamma = 0$ row.
#
# **5.** (Open.) Make the two classes overlap less (`std=0.3`) and repeat §4. Does the gap between CFG
# samples and the tilted density shrink or grow? Explain with the posterior pictures of §1.
#
# ## Summary
#
# - Bayes' rule for scores: conditional score = unconditional score + classifier gradient; in
#   $\varepsilon$ units, $\hat\varepsilon = \varepsilon - \gamma\sqrt{1-\bar\alpha_t}\nabla\log p(y\mid x_t)$.
# - CFG is the same rule with the classifier written as a difference of two predictions of one network:
#   $(1+\gamma)\varepsilon(x,y) - \gamma\varepsilon(x,\varnothing)$; diffusers' `guidance_scale` is $w = 1+\gamma$.
# - CFG samples are not samples of $p(x\mid y)^{1+\gamma}p(x)^{-\gamma}$; we measured the gap on an exact oracle.
# - Larger $\gamma$: higher fidelity, lower diversity — and, pushed too far, artefacts.
#
# | idea | tinydiff |
# | --- | --- |
# | classifier guidance on $\varepsilon$, the score, the DDPM mean | `td.guidance.classifier_eps`, `guided_score`, `guided_mean` |
# | a classifier's gradient $\nabla\log p_\phi(y\mid x_t)$; the oracle's | `td.guidance.classifier_grad`, `oracle_class_grad` |
# | guided `eps_fn` for any sampler | `td.guidance.classifier_guided_eps_fn`, `cfg_eps_fn_from` |
# | CFG in the lecture's $\gamma$ and in diffusers' $w = 1 + \gamma$ | `td.guidance.cfg`, `cfg_diffusers` |
# | caption/label dropout for CFG training | `td.guidance.drop_labels` |
# | exact guidance on the mixture oracle | `td.guidance.oracle_cfg_eps_fn`, `oracle_classifier_eps_fn` |
# | the tilted density CFG does *not* sample; its moments by quadrature | `td.guidance.tilted_log_density`, `grid_moments` |
# | the fidelity–diversity trade-off | `td.guidance.tradeoff`, `td.metrics.knn_recall` |
