"""Solutions to the exercises of notebooks/01_vae_elbo.py."""

import math

import torch


def my_kl_std_normal(mu, logvar):
    # KL(N(mu, diag sigma^2) || N(0, I)) = 1/2 sum_j (sigma_j^2 + mu_j^2 - 1 - log sigma_j^2), per row
    return 0.5 * (logvar.exp() + mu**2 - 1 - logvar).sum(dim=1)


def my_reparameterize(mu, logvar, eps):
    # z = mu + sigma * eps with sigma = exp(logvar / 2)
    return mu + torch.exp(0.5 * logvar) * eps


def my_iwae(log_w):
    # log (1/K) sum_k exp(log_w_k), over the K draws (dim 0), without underflow
    return torch.logsumexp(log_w, dim=0) - math.log(log_w.shape[0])


def my_elbo_mc(log_px_given_z, log_pz, log_qz):
    return (log_px_given_z + log_pz - log_qz).mean(0)  # the bug: + log q
