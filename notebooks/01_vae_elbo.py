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
# # 01 · The VAE and the ELBO
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/tinydiff/tinydiff/blob/main/notebooks/01_vae_elbo.ipynb)
#
# A diffusion model is trained by maximising a lower bound on the log-likelihood, as a variational autoencoder
# is — with one difference that lesson 02 makes precise: its "encoder", the forward noising process, is fixed and
# has no parameters, so only the decoder is learned. This lesson builds that bound, the **evidence lower bound
# (ELBO)**, from scratch and checks every step on numbers. We first use a small latent-variable model in which
# *everything* is exact (the likelihood, the posterior, the ELBO of any Gaussian guess), so the identity
#
# $$\log p(x) = \underbrace{\mathbb E_{q(z)}\log p_\theta(x\mid z) - \mathrm{KL}\big(q(z)\,\|\,p(z)\big)}_{\text{ELBO}(q)}
# \;+\; \mathrm{KL}\big(q(z)\,\|\,p(z\mid x)\big)$$
#
# can be verified to the last digit. Then we meet the **reparameterisation trick** (and why it beats the
# score-function gradient), train a real VAE on handwritten digits, and sharpen the bound with **importance
# sampling**. It follows the lecture section "VAE and ELBO".

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

cfg = td.profiles.choose(          # sizes for the active profile: quick (tests) / standard (CPU) / full (GPU)
    quick=dict(n_mc=20_000, n_grad=20_000, vae_steps=150, k_exact=4096, k_vae=64),
    standard=dict(n_mc=400_000, n_grad=200_000, vae_steps=3000, k_exact=2**16, k_vae=1024),
    full=dict(n_mc=1_000_000, n_grad=1_000_000, vae_steps=20_000, k_exact=2**18, k_vae=4096),
)
dev = td.device()
g = td.seed_everything(0)
F64 = torch.float64
print(f"profile {cfg.profile}, device {dev}")

# %% [markdown]
# ## 1 · A latent-variable model where everything is exact
#
# A VAE has a prior $p(z)=\mathcal N(0, I_m)$ over a latent $z\in\mathbb R^m$ and a decoder $p_\theta(x\mid z)$
# over data $x\in\mathbb R^n$. Generating is easy (draw $z$, then $x$); the likelihood
# $p_\theta(x) = \int p(z)\,p_\theta(x\mid z)\,dz$ and the posterior $p(z\mid x) = p(x\mid z)p(z)/p(x)$ are not.
#
# If the decoder is **linear-Gaussian**, $p(x\mid z)=\mathcal N(Wz+b,\ s^2 I_n)$, both are Gaussian and known:
#
# $$p(x) = \mathcal N\big(b,\ WW^\top + s^2 I\big),\qquad
# p(z\mid x) = \mathcal N\big(\Sigma_{z|x}W^\top(x-b)/s^2,\ \Sigma_{z|x}\big),\quad \Sigma_{z|x}=(I + W^\top W/s^2)^{-1}.$$
#
# (This is probabilistic PCA.) `td.vae.LinearGaussianModel` implements it. Before trusting its formulas, we check
# them against Bayes' rule done by brute force: with a one-dimensional latent we can evaluate
# $p(x\mid z)\,p(z)$ on a fine grid of $z$, sum it to get $p(x)$, and normalise it to get $p(z\mid x)$.

# %%
lg1 = td.vae.LinearGaussianModel.random(n=2, m=1, s=0.6, generator=g)   # 1-D latent, 2-D data
x1 = lg1.sample(1, g)
z_grid = torch.linspace(-6, 6, 4001, dtype=F64)[:, None]                 # (G, 1)
dz = float(z_grid[1] - z_grid[0])
log_joint = lg1.log_joint(x1.expand(len(z_grid), -1), z_grid)            # log p(x, z) on the grid
log_px_grid = torch.logsumexp(log_joint, 0) + math.log(dz)               # log of the Riemann sum of p(x, z)
post_grid = torch.softmax(log_joint, 0)                                  # p(z | x) on the grid (weights)
post_mean_grid = post_grid @ z_grid[:, 0]
post_var_grid = post_grid @ (z_grid[:, 0] - post_mean_grid) ** 2
mean1, cov1 = lg1.posterior(x1)
print(f"log p(x): closed form {lg1.log_prob(x1).item():.6f}, grid {log_px_grid.item():.6f}")
print(f"posterior mean {mean1.item():.6f} (grid {post_mean_grid.item():.6f}), "
      f"variance {cov1.item():.6f} (grid {post_var_grid.item():.6f})")

# %%
# NBVAL_CHECK_OUTPUT
td.check("log p(x) in closed form = log of the integral of p(x|z) p(z) over a grid", lg1.log_prob(x1)[0],
         log_px_grid, atol=1e-6)
td.check("posterior mean = Bayes' rule on a grid", mean1[0, 0], post_mean_grid, atol=1e-6)
td.check("posterior variance = Bayes' rule on a grid", cov1[0, 0, 0], post_var_grid, atol=1e-6)

# %%
fig, ax = plt.subplots(figsize=(6, 3))
zz = z_grid[:, 0]
ax.plot(zz, torch.exp(lg1.log_prior(z_grid)), label="prior p(z)")
lik = torch.exp(lg1.log_likelihood(x1.expand(len(zz), -1), z_grid))
ax.plot(zz, lik / (lik.sum() * dz), label="likelihood p(x|z), rescaled")
ax.plot(zz, post_grid / dz, "--", label="posterior p(z|x)")
ax.set_xlabel("z")
ax.set_xlim(-4, 4)
ax.legend(fontsize=8)
ax.set_title("Bayes' rule: posterior ∝ likelihood × prior")
plt.show()

# %% [markdown]
# ## 2 · log p(x) = ELBO(q) + KL(q ‖ p(z|x)), for *any* q
#
# Take any density $q(z)$. Because $p(x) = p(x,z)/p(z\mid x)$ for every $z$,
#
# $$\log p(x) = \mathbb E_q\Big[\log\frac{p(x,z)}{q(z)}\Big] + \mathbb E_q\Big[\log\frac{q(z)}{p(z\mid x)}\Big]
# = \mathrm{ELBO}(q) + \mathrm{KL}\big(q\,\|\,p(z\mid x)\big),$$
#
# and splitting $p(x,z) = p(x\mid z)p(z)$ gives the form the lecture writes:
# $\mathrm{ELBO}(q) = \mathbb E_q\log p(x\mid z) - \mathrm{KL}(q\,\|\,p(z))$. The KL is never negative, so the ELBO is a
# **lower bound** on the evidence $\log p(x)$.
#
# For a Gaussian $q = \mathcal N(\mu_q, \Sigma_q)$ on the linear-Gaussian model every term has a closed form:
# $\mathbb E_q\log p(x\mid z) = -\tfrac n2\log(2\pi s^2) - \big(\|x - W\mu_q - b\|^2 + \mathrm{tr}(W\Sigma_qW^\top)\big)/2s^2$
# and both KLs are between Gaussians. So we can check the identity exactly, for a completely arbitrary $q$.

# %%
lg = td.vae.LinearGaussianModel.random(n=5, m=3, s=0.7, generator=g)   # the model of the rest of the lesson
x = lg.sample(4, g)                                                     # four data points
q_mean = 2 * torch.randn(4, 3, generator=g, dtype=F64)                  # an arbitrary Gaussian q per data point
A = torch.randn(4, 3, 3, generator=g, dtype=F64)
q_cov = A @ A.transpose(-1, -2) + 0.1 * torch.eye(3, dtype=F64)

log_p = lg.log_prob(x)
elbo_q = lg.elbo(x, q_mean, q_cov)
gap_q = lg.kl_to_posterior(x, q_mean, q_cov)
for i in range(4):
    print(f"x_{i}: log p(x) = {log_p[i]:9.4f}   ELBO(q) = {elbo_q[i]:9.4f}   KL(q || p(z|x)) = {gap_q[i]:8.4f}")

# %%
# NBVAL_CHECK_OUTPUT
td.check("log p(x) = ELBO(q) + KL(q || p(z|x)) for a random Gaussian q (exact)", elbo_q + gap_q, log_p, atol=1e-9)
td.check_less("ELBO(q) < log p(x): the gap KL(q || p(z|x)) is positive", -gap_q.min(), 0.0)

# %% [markdown]
# **When is the bound tight?** Exactly when $q$ *is* the posterior. This is the E-step of the EM algorithm: with the
# posterior in hand, maximising the ELBO over $\theta$ maximises $\log p_\theta(x)$ itself. A VAE cannot compute
# $p(z\mid x)$, so it learns an encoder $q_\phi(z\mid x)$ to approximate it; here we can plug in the exact one.

# %%
post_mean, post_cov = lg.posterior(x)
print("KL(p(z|x) || p(z|x)) =", lg.kl_to_posterior(x, post_mean, post_cov).tolist())

# %%
# NBVAL_CHECK_OUTPUT
td.check("q = p(z|x): the KL gap is zero", lg.kl_to_posterior(x, post_mean, post_cov), torch.zeros(4, dtype=F64),
         atol=1e-10)
td.check("q = p(z|x): ELBO = log p(x) (the bound is tight, as in EM)", lg.elbo(x, post_mean, post_cov), log_p,
         atol=1e-9)

# %% [markdown]
# A picture of the same fact on the 1-D-latent model of §1: slide the mean of $q$ and change its width. The ELBO moves,
# $\log p(x)$ does not, and the distance between them is exactly the KL to the posterior. The ELBO touches
# $\log p(x)$ only at the posterior mean with the posterior variance.

# %%
mus = torch.linspace(-3, 3, 121, dtype=F64)
var_post = cov1[0, 0, 0]
elbo_mu = torch.stack([lg1.elbo(x1, m.reshape(1, 1), var_post.reshape(1, 1)) for m in mus])[:, 0]
kl_mu = torch.stack([lg1.kl_to_posterior(x1, m.reshape(1, 1), var_post.reshape(1, 1)) for m in mus])[:, 0]
scales = torch.logspace(-1.5, 1.5, 121, dtype=F64)
elbo_var = torch.stack([lg1.elbo(x1, mean1, (c * var_post).reshape(1, 1)) for c in scales])[:, 0]
fig, axs = plt.subplots(1, 2, figsize=(10, 3.2))
axs[0].plot(mus, elbo_mu, label="ELBO(q)")
axs[0].plot(mus, elbo_mu + kl_mu, "k--", label="ELBO(q) + KL(q || p(z|x))")
axs[0].axhline(lg1.log_prob(x1).item(), color="C3", lw=0.8, label="log p(x)")
axs[0].axvline(mean1.item(), color="gray", lw=0.5)
axs[0].set_xlabel("mean of q (variance = posterior variance)")
axs[0].set_ylim(elbo_mu.max().item() - 8, elbo_mu.max().item() + 1)
axs[0].legend(fontsize=8)
axs[1].semilogx(scales, elbo_var, label="ELBO(q)")
axs[1].axhline(lg1.log_prob(x1).item(), color="C3", lw=0.8, label="log p(x)")
axs[1].axvline(1.0, color="gray", lw=0.5)
axs[1].set_xlabel("variance of q / posterior variance (mean = posterior mean)")
axs[1].legend(fontsize=8)
plt.tight_layout()
plt.show()

# %%
# NBVAL_CHECK_OUTPUT
td.check("along the sweep, ELBO + KL(q || p(z|x)) stays equal to log p(x)", elbo_mu + kl_mu,
         lg1.log_prob(x1).expand(len(mus)), atol=1e-9)
td.check("the best q of the sweep is centred at the posterior mean", mus[elbo_mu.argmax()], mean1[0, 0],
         atol=float(mus[1] - mus[0]))

# %% [markdown]
# ## 3 · The two faces of the ELBO, by Monte Carlo
#
# In a VAE nothing is closed-form except the KL to the prior, so the ELBO is *estimated* with samples $z\sim q$:
#
# $$\mathrm{ELBO}(q) = \mathbb E_{z\sim q}\Big[\log\frac{p(x,z)}{q(z)}\Big] = \mathbb E_{z\sim q}\big[\log p(x\mid z)\big]
# - \mathrm{KL}\big(q\,\|\,p(z)\big).$$
#
# On the exact model we can see both Monte Carlo estimates land on the closed form, within their standard error
# (the spread of the samples over $\sqrt N$).

# %%
z = lg.sample_q(x, q_mean, q_cov, cfg.n_mc, g)                           # (N, 4, 3): N draws from each q
log_lik = lg.log_likelihood(x, z)                                        # log p(x | z), (N, 4)
log_ratio = lg.log_joint(x, z) - td.vae.mvn_log_prob(z, q_mean, q_cov)   # log p(x, z) - log q(z)
mc_lik, se_lik = log_lik.mean(0), log_lik.std(0) / math.sqrt(cfg.n_mc)
mc_elbo, se_elbo = log_ratio.mean(0), log_ratio.std(0) / math.sqrt(cfg.n_mc)
exact_lik = lg.expected_log_likelihood(x, q_mean, q_cov)
for i in range(4):
    print(f"x_{i}: E_q log p(x|z) = {exact_lik[i]:9.4f} exact, {mc_lik[i]:9.4f} ± {se_lik[i]:.4f} MC;   "
          f"ELBO = {elbo_q[i]:9.4f} exact, {mc_elbo[i]:9.4f} ± {se_elbo[i]:.4f} MC")

# %%
# NBVAL_CHECK_OUTPUT
td.check_less("Monte Carlo E_q log p(x|z) is within 4 standard errors of the closed form",
              ((mc_lik - exact_lik).abs() / se_lik).max(), 4.0)
td.check_less("Monte Carlo E_q log[p(x,z)/q(z)] is within 4 standard errors of the closed-form ELBO",
              ((mc_elbo - elbo_q).abs() / se_elbo).max(), 4.0)
td.check("E_q log p(x|z) - KL(q || p(z)) = ELBO(q) (closed forms)", exact_lik - lg.kl_to_prior(x, q_mean, q_cov),
         elbo_q, atol=1e-10)

# %% [markdown]
# ### The Gaussian KL in closed form
#
# A VAE's encoder outputs a diagonal Gaussian $q_\phi(z\mid x)=\mathcal N(\mu, \mathrm{diag}\,\sigma^2)$, as a mean and
# a **log-variance** $\log\sigma^2$ (any real number is a valid log-variance, so the network needs no constraint).
# Its KL to the prior $\mathcal N(0, I)$ is a sum over the latent dimensions:
#
# $$\mathrm{KL}\big(\mathcal N(\mu,\mathrm{diag}\,\sigma^2)\,\|\,\mathcal N(0,I)\big)
# = \tfrac12\sum_{j=1}^m\big(\sigma_j^2 + \mu_j^2 - 1 - \log\sigma_j^2\big).$$
#
# Here it is by hand, next to the package's function, and against a Monte Carlo estimate of
# $\mathbb E_q[\log q(z) - \log p(z)]$.

# %%
mu = torch.tensor([[0.5, -1.0, 2.0]], dtype=F64)
logvar = torch.tensor([[-1.0, 0.3, -2.5]], dtype=F64)
kl_by_hand = 0.5 * (logvar.exp() + mu**2 - 1 - logvar).sum(1)
kl_td = td.vae.gaussian_kl_std_normal(mu, logvar)                   # the same thing in tinydiff
eps = torch.randn(cfg.n_mc, 1, 3, generator=g, dtype=F64)
zq = td.vae.reparameterize(mu, logvar, eps)                         # draws from q (see §4)
integrand = td.vae.diag_gaussian_log_prob(zq, mu, logvar) - td.vae.diag_gaussian_log_prob(zq, 0 * mu, 0.0)
kl_mc, kl_se = integrand.mean(), integrand.std() / math.sqrt(cfg.n_mc)
print(f"KL by hand {kl_by_hand.item():.6f}, tinydiff {kl_td.item():.6f}, Monte Carlo {kl_mc:.4f} ± {kl_se:.4f}")

# %%
# NBVAL_CHECK_OUTPUT
td.check("the KL written by hand = td.vae.gaussian_kl_std_normal", kl_by_hand, kl_td, atol=1e-12)
td.check_less("closed-form Gaussian KL within 4 standard errors of Monte Carlo", (kl_mc - kl_td).abs() / kl_se, 4.0)
td.check("general diagonal KL to N(0, I) = the special case",
         td.vae.gaussian_kl(mu, logvar, torch.zeros_like(mu), torch.zeros_like(logvar)), kl_td, atol=1e-12)

# %% [markdown]
# ## 4 · The reparameterisation trick, and why it matters
#
# To train the encoder we need the gradient of $\mathbb E_{z\sim q_\phi}[f(z)]$ with respect to $q$'s parameters, but
# the parameters sit in the distribution we sample from. Two unbiased ways out, shown for
# $q=\mathcal N(\mu,\sigma^2)$ and the derivative in $\mu$:
#
# * **Reparameterisation.** Write $z = \mu + \sigma\varepsilon$ with $\varepsilon\sim\mathcal N(0,1)$: the randomness no
#   longer depends on $\mu$, so $\nabla_\mu\mathbb E[f(z)] = \mathbb E[f'(\mu+\sigma\varepsilon)]$. In code this is
#   `z = mu + torch.exp(0.5 * logvar) * eps`, and autograd does the rest.
# * **Score function (REINFORCE).** $\nabla_\mu\mathbb E[f(z)] = \mathbb E\big[f(z)\,\nabla_\mu\log q(z)\big]
#   = \mathbb E\big[f(z)\,(z-\mu)/\sigma^2\big]$. It needs only *values* of $f$, but it is noisy.
#
# Both are unbiased; their variances are very different. For $f(z) = z^2$ everything is known:
# $\nabla_\mu\mathbb E[z^2] = 2\mu$; the reparameterised estimate $2z$ has variance $4\sigma^2$; the score-function
# estimate has variance $(\mu^4 + 18\mu^2\sigma^2 + 15\sigma^4)/\sigma^2 - 4\mu^2$, which **explodes as $\sigma\to0$**.

# %%
f = lambda z: z**2
mu0, sigma0 = 0.7, 0.5
g_rep = td.vae.grad_reparam(f, mu0, sigma0, cfg.n_grad, g)          # one estimate per draw, (n,)
g_sf = td.vae.grad_score_function(f, mu0, sigma0, cfg.n_grad, g)
for name, est in [("reparameterisation", g_rep), ("score function", g_sf)]:
    print(f"{name:19s}: mean {est.mean():.4f} ± {est.std() / math.sqrt(cfg.n_grad):.4f}  (exact {2 * mu0:.4f}), "
          f"variance {est.var():.3f}")
var_sf_theory = (mu0**4 + 18 * mu0**2 * sigma0**2 + 15 * sigma0**4) / sigma0**2 - 4 * mu0**2
print(f"theory: variances {4 * sigma0**2:.3f} and {var_sf_theory:.3f}")

# %%
# NBVAL_CHECK_OUTPUT
for name, est in [("reparameterisation", g_rep), ("score-function", g_sf)]:
    td.check_less(f"the {name} gradient is unbiased (within 4 standard errors of 2 mu)",
                  (est.mean() - 2 * mu0).abs() / (est.std() / math.sqrt(cfg.n_grad)), 4.0)
td.check("the reparameterisation variance is 4 sigma^2", g_rep.var(), 4 * sigma0**2, atol=0, rtol=0.05)

# %%
sigmas = torch.logspace(-1.5, 0.5, 9, dtype=F64)
n_sweep = 200_000  # in every profile (scalar draws are cheap): enough to tell Var g from E[g^2] = Var g + (2 mu)^2
var_rep = torch.stack([td.vae.grad_reparam(f, mu0, s, n_sweep, g).var() for s in sigmas])
draws_sf = [td.vae.grad_score_function(f, mu0, s, n_sweep, g) for s in sigmas]
var_sf = torch.stack([d.var() for d in draws_sf])
se_var_sf = torch.stack([(d - d.mean()).pow(2).std() / math.sqrt(n_sweep) for d in draws_sf])  # s.e. of each variance
theory_sf = (mu0**4 + 18 * mu0**2 * sigmas**2 + 15 * sigmas**4) / sigmas**2 - 4 * mu0**2
fig, ax = plt.subplots(figsize=(5.5, 3.5))
ax.loglog(sigmas, var_rep, "o", label="reparameterisation (measured)")
ax.loglog(sigmas, 4 * sigmas**2, "C0-", lw=0.8, label=r"theory $4\sigma^2$")
ax.loglog(sigmas, var_sf, "s", color="C1", label="score function (measured)")
ax.loglog(sigmas, theory_sf, "C1-", lw=0.8, label="theory")
ax.set_xlabel(r"$\sigma$")
ax.set_ylabel("variance of one gradient estimate")
ax.set_title(r"$\nabla_\mu\,\mathbb{E}[z^2]$, $z\sim\mathcal{N}(0.7, \sigma^2)$")
ax.legend(fontsize=8)
plt.show()
print("variance ratio score-function / reparameterisation:", [f"{r:.0f}" for r in (var_sf / var_rep).tolist()])

# %%
# NBVAL_CHECK_OUTPUT
td.check_less("measured score-function variances follow the formula (every sigma within 4.5 standard errors)",
              ((var_sf - theory_sf).abs() / se_var_sf).max(), 4.5)
td.check_less("... and they are not E[g^2] = the formula + (2 mu)^2 (rejected by > 6 standard errors at some sigma)",
              -((var_sf - theory_sf - 4 * mu0**2).abs() / se_var_sf).max(), -6.0)
td.check_less("the reparameterisation estimator has the smaller variance at every sigma",
              (var_rep / var_sf).max(), 1.0)

# %% [markdown]
# The gap is a factor of several hundred for the small $\sigma$ a trained encoder ends up with: that is why VAEs (and,
# later, diffusion models) are trained through reparameterised noise. A constant *baseline* $c$ subtracted from $f$
# keeps the score-function estimator unbiased (the score has mean zero) and helps, but it cannot remove the $1/\sigma^2$.

# %%
g_sf_base = td.vae.grad_score_function(f, mu0, sigma0, cfg.n_grad, g, baseline=mu0**2 + sigma0**2)
print(f"score function with baseline E[f]: mean {g_sf_base.mean():.4f}, variance {g_sf_base.var():.3f} "
      f"(without: {g_sf.var():.3f})")

# %% [markdown]
# ## 5 · A VAE on handwritten digits
#
# Now neither the posterior nor $\log p(x)$ is available, and the lecture's recipe takes over: an encoder network
# gives $q_\phi(z\mid x) = \mathcal N(\mu_\phi(x), \mathrm{diag}\,\sigma^2_\phi(x))$, a decoder network gives
# $p_\theta(x\mid z)=\mathcal N(\mathrm{dec}_\theta(z), s^2 I)$ with one learned scalar variance $s^2$, and both are
# trained together by maximising
#
# $$\mathrm{ELBO}(x) = \mathbb E_{q_\phi(z|x)}\log p_\theta(x\mid z) - \mathrm{KL}\big(q_\phi(z\mid x)\,\|\,p(z)\big),$$
#
# the expectation by one reparameterised sample, the KL in closed form. Raising the ELBO either raises
# $\log p_\theta(x)$ or shrinks the gap $\mathrm{KL}(q_\phi\,\|\,p(z\mid x))$; both are welcome.
#
# The data are scikit-learn's 1,797 digits (8×8 pixels, scaled to $[-1, 1]$); we hold out 297 to measure
# generalisation. First, the ELBO of an untrained VAE written out by hand, next to `VAE.elbo` with the same noise.

# %%
digits, _ = td.data.load_digits()
perm = torch.randperm(len(digits), generator=g)
x_train, x_test = digits[perm[:1500]], digits[perm[1500:]]
torch.manual_seed(0)
vae = td.vae.VAE(data_shape=(1, 8, 8), latent_dim=8, hidden=128).to(dev)
print(f"{sum(p.numel() for p in vae.parameters()):,} parameters")

xb = x_train[:16].to(dev)
with torch.no_grad():
    mu_b, logvar_b = vae.encode(xb)                                                   # q_phi(z | x)
    eps_b = torch.randn((1, *mu_b.shape), generator=torch.Generator().manual_seed(7)).to(dev)
    z_b = mu_b + torch.exp(0.5 * logvar_b) * eps_b                                     # reparameterised draw
    s2 = vae.decoder_logvar.exp()
    rec = (-0.5 * (math.log(2 * math.pi) + s2.log()) * 64
           - ((xb.flatten(1) - vae.decode(z_b).flatten(2)) ** 2).sum(-1) / (2 * s2))[0]  # log p(x | z)
    kl = 0.5 * (logvar_b.exp() + mu_b**2 - 1 - logvar_b).sum(1)                     # KL(q || p(z))
    elbo_by_hand = rec - kl
    elbo_td = vae.elbo(xb, generator=torch.Generator().manual_seed(7))                 # the same thing in tinydiff

# %%
# NBVAL_CHECK_OUTPUT
td.check("ELBO by hand (reconstruction - KL) = VAE.elbo", elbo_by_hand, elbo_td, atol=1e-3, rtol=1e-5)

# %% [markdown]
# Training goes through the book's one training loop, `td.train.fit`, with the loss $-\frac1B\sum_i\mathrm{ELBO}(x_i)$
# (in nats per image).

# %%
result = td.train.fit(vae, lambda model, batch: model.loss(batch), x_train, steps=cfg.vae_steps, batch_size=128,
                      lr=1e-3, ema_decay=None, desc="VAE on digits", shipped="01_vae_on_digits")
losses = torch.tensor(result.losses)
with torch.no_grad():
    elbo_train = vae.elbo(x_train.to(dev), n_samples=8, generator=g).mean().item()
    elbo_test = vae.elbo(x_test.to(dev), n_samples=8, generator=g).mean().item()
print(f"ELBO per image: train {elbo_train:.2f} nats, held-out {elbo_test:.2f} nats; "
      f"decoder std s = {vae.decoder_logvar.mul(0.5).exp().item():.3f}")

fig, ax = plt.subplots(figsize=(5.5, 3))
ax.plot(losses, lw=0.5, alpha=0.5, label="per step")
w = min(50, len(losses))
ax.plot(range(w - 1, len(losses)), losses.unfold(0, w, 1).mean(1), label=f"running mean of {w}")
ax.set_xlabel("step")
ax.set_ylabel("−ELBO (nats per image)")
ax.legend(fontsize=8)
plt.show()

# %%
# NBVAL_CHECK_OUTPUT
first, last = losses[:20].mean(), losses[-min(100, len(losses)):].mean()
td.check_less("training lowered -ELBO by more than 30 nats per image", last - first, -30.0)

# %% [markdown]
# The ELBO is a log-*density* of continuous pixels, so it can be positive. In the standard profile the held-out ELBO
# is clearly below the training one: 1,500 images are few for ~50,000 weights, and the VAE overfits (a wider network
# trained longer overfits more: with `hidden=256` and 4,000 steps we measured a gap of about 30 nats).
# Reconstructions $\mathrm{dec}_\theta(\mu_\phi(x))$ of held-out digits, and new samples $\mathrm{dec}_\theta(z)$
# with $z\sim\mathcal N(0, I)$:

# %%
fig, axs = plt.subplots(1, 3, figsize=(10, 3.6))
td.plotting.show_images(x_test[:16], nrow=4, ax=axs[0], title="held-out digits")
td.plotting.show_images(vae.reconstruct(x_test[:16].to(dev)), nrow=4, ax=axs[1], title="reconstructions")
td.plotting.show_images(vae.sample(16, g), nrow=4, ax=axs[2], title="samples (decoder means)")
plt.show()

# %% [markdown]
# Reconstructions are sharp-ish; samples are blurrier and some are not clearly any digit. That is the classic VAE
# trade-off: the decoder's Gaussian noise model explains fine detail as noise, and the prior has regions the encoder
# never uses. Diffusion models (next lessons) keep the ELBO but replace the single latent step by many small ones.
#
# ## 6 · A tighter bound: importance sampling (IWAE)
#
# Since $p(x) = \mathbb E_{z\sim q}\big[p(x,z)/q(z)\big]$ for *any* $q$ (with $q>0$ where $p(x,z)>0$), averaging $K$
# importance weights and then taking the log gives
#
# $$\mathcal L_K = \log\frac1K\sum_{k=1}^K\frac{p(x,z_k)}{q(z_k)},\qquad z_k\sim q,\qquad
# \mathbb E\,\mathcal L_1 = \mathrm{ELBO}(q) \le \mathbb E\,\mathcal L_K \le \mathbb E\,\mathcal L_{2K} \le \log p(x),$$
#
# with $\mathbb E\,\mathcal L_K \to \log p(x)$ as $K\to\infty$ (Burda et al., 2016). The outer inequalities are
# Jensen's: the log of an average is at least the average of the logs. We draw $N$ weights once and, for each $K$,
# average $\mathcal L_K$ over the $N/K$ disjoint blocks of $K$ (`td.vae.iwae_bound(log_w, K)`). By the same Jensen
# step, this estimate can only grow when $K$ doubles.
#
# On the exact model we use a deliberately imperfect $q$: the posterior, shifted by half a standard deviation and
# 1.5 times too wide.

# %%
shift = 0.5 * torch.diagonal(post_cov, dim1=-2, dim2=-1).sqrt()
q_is_mean, q_is_cov = post_mean + shift, 1.5 * post_cov
x_is = x[:3]
log_w = lg.log_weights(x_is, q_is_mean[:3], q_is_cov[:3], cfg.k_exact, g)          # (N, 3)
Ks = [4**j for j in range(int(math.log(cfg.k_exact, 4)) + 1)]
bounds = torch.stack([td.vae.iwae_bound(log_w, K) for K in Ks])                    # (len(Ks), 3)
elbo_is = lg.elbo(x_is, q_is_mean[:3], q_is_cov[:3])
se_L1 = log_w.std(0) / math.sqrt(cfg.k_exact)                    # standard error of L_1, the mean of the log-weights
L_all = bounds[-1]
se_all = (log_w - L_all).exp().std(0) / math.sqrt(cfg.k_exact)   # delta method: std of w / mean(w), over sqrt(N)
for K, b in zip(Ks, bounds):
    print(f"K = {K:6d}: L_K - log p(x) = {(b - log_p[:3]).tolist()}")
print("ELBO(q) - log p(x) =", (elbo_is - log_p[:3]).tolist())
print("standard error of L_N:", se_all.tolist())

# %% [markdown]
# The ELBO gap is the same for the three points because the posterior covariance, and so this $q$'s mismatch, does not
# depend on $x$. The bound climbs from the ELBO to $\log p(x)$ within a few dozen samples. At large $K$ the printed
# values wander around 0 by about the standard error of the estimate: $\mathbb E\,\mathcal L_K\le\log p(x)$ holds for
# the *expectation*; one estimate from finitely many draws may land a little above.

# %%
# NBVAL_CHECK_OUTPUT
td.check_less("L_1 (K = 1) is the ELBO: within 4 standard errors of the closed form",
              ((bounds[0] - elbo_is).abs() / se_L1).max(), 4.0)
td.check_less("consistency (Jensen on nested blocks, true for every draw): the block-averaged bound grows with K",
              (bounds[:-1] - bounds[1:]).max(), 0.0)
td.check_less("with all N draws, L_N is within 4 standard errors of the exact log p(x)",
              ((L_all - log_p[:3]).abs() / se_all).max(), 4.0)

# %%
fig, ax = plt.subplots(figsize=(5.5, 3.3))
for i in range(3):
    ax.semilogx(Ks, bounds[:, i] - log_p[i], "o-", label=f"x_{i}")
ax.axhline(0.0, color="k", lw=0.8, label="log p(x) (exact)")
ax.set_xlabel("K (importance samples)")
ax.set_ylabel(r"$\mathcal{L}_K - \log p(x)$ (nats)")
ax.set_title("IWAE bound on the exact model")
ax.legend(fontsize=8)
plt.show()

# %% [markdown]
# The same estimator on the trained VAE, with its encoder as $q$. Here $\log p_\theta(x)$ is unknown; the curve shows
# how much the ELBO underestimates it. (For a VAE the gap $\mathcal L_\infty - \mathcal L_1$ is the KL between the
# encoder and the true posterior: the price of *amortised*, Gaussian inference.)

# %%
log_w_vae = vae.log_weights(x_test.to(dev), cfg.k_vae, g).cpu()                    # (N, 297)
Ks_vae = [4**j for j in range(int(math.log(cfg.k_vae, 4)) + 1)]
bounds_vae = torch.stack([td.vae.iwae_bound(log_w_vae, K).mean() for K in Ks_vae])
for K, b in zip(Ks_vae, bounds_vae):
    print(f"K = {K:5d}: mean held-out bound {b:.3f} nats per image")
fig, ax = plt.subplots(figsize=(5.5, 3))
ax.semilogx(Ks_vae, bounds_vae, "o-")
ax.set_xlabel("K")
ax.set_ylabel("mean held-out $\\mathcal{L}_K$ (nats)")
ax.set_title("IWAE bound of the trained VAE")
plt.show()

# %%
# NBVAL_CHECK_OUTPUT
td.check_less("consistency (Jensen on nested blocks, true for every draw): the VAE's block-averaged bound grows with K",
              (bounds_vae[:-1] - bounds_vae[1:]).max(), 0.0)

# %% [markdown]
# ## 7 · Exercises
#
# **Exercise 1: the closed-form KL.** Return $\mathrm{KL}(\mathcal N(\mu,\mathrm{diag}\,\sigma^2)\,\|\,\mathcal N(0,I))$
# per row, given `mu` and `logvar` $=\log\sigma^2$ of shape `(B, m)`. Mind the last axis: the result is `(B,)`.

# %%
def my_kl_std_normal(mu, logvar):
    # Your code here: return a tensor of shape (B,).
    raise NotImplementedError


# %%
def kl_cases(i):
    gi = torch.Generator().manual_seed(100 + i)
    return (torch.randn(4, 3, generator=gi, dtype=F64), torch.randn(4, 3, generator=gi, dtype=F64))


kl_mistakes = {
    "logvar is log sigma^2, not sigma: sigma^2 = exp(logvar)":
        lambda m, lv: 0.5 * (lv**2 + m**2 - 1 - torch.log(lv**2)).sum(1),
    "a factor 1/2 is missing in front of the sum": lambda m, lv: (lv.exp() + m**2 - 1 - lv).sum(1),
    "the -1 per dimension is missing": lambda m, lv: 0.5 * (lv.exp() + m**2 - lv).sum(1),
    "the sign of log sigma^2 is flipped": lambda m, lv: 0.5 * (lv.exp() + m**2 - 1 + lv).sum(1),
    "sum over the latent dimensions, do not average": lambda m, lv: 0.5 * (lv.exp() + m**2 - 1 - lv).mean(1),
}

# %%
# NBVAL_CHECK_OUTPUT
td.exercises.check(my_kl_std_normal, td.vae.gaussian_kl_std_normal, kl_cases, mistakes=kl_mistakes)


# %% [markdown]
# **Exercise 2: the reparameterisation.** Return $z = \mu + \sigma\odot\varepsilon$ from `mu`, `logvar` and standard
# normal noise `eps`, all of the same shape.

# %%
def my_reparameterize(mu, logvar, eps):
    # Your code here.
    raise NotImplementedError


# %%
def rep_cases(i):
    gi = torch.Generator().manual_seed(200 + i)
    return tuple(torch.randn(5, 2, generator=gi, dtype=F64) for _ in range(3))


rep_mistakes = {
    "exp(logvar) is the variance; scale eps by the standard deviation exp(logvar / 2)":
        lambda m, lv, e: m + lv.exp() * e,
    "logvar is a log: sigma = exp(logvar / 2), not logvar / 2": lambda m, lv, e: m + 0.5 * lv * e,
    "sigma = exp(logvar / 2), not exp(logvar) / 2": lambda m, lv, e: m + 0.5 * lv.exp() * e,
    "the mean mu is missing": lambda m, lv, e: (0.5 * lv).exp() * e,
}

# %%
# NBVAL_CHECK_OUTPUT
td.exercises.check(my_reparameterize, td.vae.reparameterize, rep_cases, mistakes=rep_mistakes)


# %% [markdown]
# **Exercise 3: the importance-weighted bound.** Given log-weights `log_w` of shape `(K, B)` (K draws for each of B
# inputs), return $\log\frac1K\sum_k e^{\texttt{log\_w}_k}$ per input, shape `(B,)`. The test cases have
# log-weights near $-800$, as for real images: `exp` of them is exactly zero in floating point.

# %%
def my_iwae(log_w):
    # Your code here.
    raise NotImplementedError


# %%
def iwae_cases(i):
    gi = torch.Generator().manual_seed(300 + i)
    return (-800 + 3 * torch.randn(16, 4, generator=gi, dtype=F64),)  # realistic log-weights: exp(-800) == 0.0


iwae_mistakes = {
    "exp(-800) underflows to 0 in floating point, so log(mean(exp(.))) is -inf: use torch.logsumexp":
        lambda lw: lw.exp().mean(0).log(),
    "the 1/K is missing: subtract log K after the logsumexp": lambda lw: torch.logsumexp(lw, 0),
    "that is the mean of the log-weights (the ELBO, K = 1): average the weights, then take the log":
        lambda lw: lw.mean(0),
    "average over the K draws (dim 0), not over the batch": lambda lw: torch.logsumexp(lw, 1) - math.log(lw.shape[1]),
}

# %%
# NBVAL_CHECK_OUTPUT
td.exercises.check(my_iwae, td.vae.iwae_bound, iwae_cases, mistakes=iwae_mistakes)

# %% [markdown]
# **Exercise 4 (find the bug).** A colleague's Monte-Carlo ELBO, from `K` draws $z_k\sim q(z\mid x)$ with the three
# log-densities given as `(K, B)` tensors, comes out *above* the exact $\log p(x)$ on the linear-Gaussian model —
# which a lower bound cannot do on average. Find the bug (write the ELBO as an expectation under $q$) and write
# `my_elbo_mc(log_px_given_z, log_pz, log_qz)`, returning `(B,)`.

# %%
def buggy_elbo_mc(log_px_given_z, log_pz, log_qz):
    return (log_px_given_z + log_pz + log_qz).mean(0)


def my_elbo_mc(log_px_given_z, log_pz, log_qz):
    # Your code here: the corrected buggy_elbo_mc.
    raise NotImplementedError


# %%
# NBVAL_CHECK_OUTPUT
def elbo_mc_cases(i):
    gi = torch.Generator().manual_seed(400 + i)
    return tuple(-5 + torch.randn(32, 3, generator=gi, dtype=torch.float64) for _ in range(3))


td.exercises.check(my_elbo_mc, lambda lx, lz, lq: (lx + lz - lq).mean(0), elbo_mc_cases, mistakes={
    "that is the buggy version: the ELBO is E_q[log p(x|z) + log p(z) - log q(z|x)], log q enters with a minus":
        buggy_elbo_mc,
    "average over the K draws (dim 0), not over the batch": lambda lx, lz, lq: (lx + lz - lq).mean(1),
})

# %% [markdown]
# ## Summary
#
# * $\log p(x) = \mathrm{ELBO}(q) + \mathrm{KL}(q\,\|\,p(z\mid x))$ holds for every $q$; on the linear-Gaussian model we
#   checked it exactly, and saw the bound become tight when $q$ is the posterior (EM's E-step).
# * $\mathrm{ELBO} = \mathbb E_q\log p(x\mid z) - \mathrm{KL}(q\,\|\,p(z))$: a Monte Carlo reconstruction term and a
#   closed-form KL (`td.vae.gaussian_kl_std_normal`).
# * The reparameterisation $z=\mu+\sigma\varepsilon$ (`td.vae.reparameterize`) gives gradients with far lower variance
#   than the score function, especially for small $\sigma$.
# * A VAE (`td.vae.VAE`) trains by maximising the ELBO; the importance-weighted bound (`VAE.log_prob_is`) is a tighter
#   estimate of $\log p(x)$ that increases with $K$.
#
# Next: lesson 02 turns the single latent $z$ into a chain $x_1,\dots,x_T$ of noisier and noisier copies of $x_0$
# whose "encoder" is fixed, and the same ELBO becomes the DDPM loss.
