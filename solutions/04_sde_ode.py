"""Solutions to the exercises of notebooks/04_sde_ode.py (the notebook's `sde` is the VP-SDE with beta in [0.1, 20])."""

import torch

import tinydiff as td

sde = td.sde.VPSDE(beta_min=0.1, beta_max=20.0)


def my_vp_marginal(t, beta_min, beta_max):
    B = beta_min * t + 0.5 * t**2 * (beta_max - beta_min)  # int_0^t beta(s) ds
    m = torch.exp(-0.5 * B)
    return m, (1 - m**2).sqrt()


def my_reverse_family_drift(x, t, score_value):
    beta = sde.beta(t).to(x.dtype)[:, None]  # g_t^2 = beta(t); sigma_t^2 = g_t^2 / 4
    return sde.drift(x, t) - 0.5 * (beta + beta / 4) * score_value


def my_hutchinson(fn, x, z):
    x = x.detach().requires_grad_(True)
    (jz,) = torch.autograd.grad((fn(x) * z).sum(), x)  # z^T J, one vector-Jacobian product
    return (jz * z).sum(1)


def my_pf_ode_drift(x, t, score_value):
    return sde.drift(x, t) - 0.5 * sde.beta(t).to(x.dtype)[:, None] * score_value  # the bug: no 1/2
