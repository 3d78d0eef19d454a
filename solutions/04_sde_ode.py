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


def my_heun_sampler(score_fn, x_T, n_steps):
    ts = torch.linspace(1.0, 1e-3, n_steps + 1, dtype=torch.float64).tolist()

    def v(x, t):  # the PF-ODE velocity f_t(x) - g_t^2 / 2 * score
        tt = torch.full((x.shape[0],), t, dtype=x.dtype)
        return -0.5 * (0.1 + t * (20.0 - 0.1)) * (x + score_fn(x, tt))

    x = x_T
    for i in range(n_steps):
        h = ts[i + 1] - ts[i]  # negative: time runs backwards
        v0 = v(x, ts[i])
        v1 = v(x + h * v0, ts[i + 1])  # Euler's guess, then the slope at the new point and time
        x = x + 0.5 * h * (v0 + v1)
    return x
