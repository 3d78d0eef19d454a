"""Solutions to the exercises of notebooks/03_ddim.py."""

import torch

import tinydiff as td


def my_kappa_lambda(t, t_prev, sigma_t, sched):
    ab_t, ab_s = sched.alpha_bar[t], sched.alpha_bar[t_prev]
    kappa = (1 - ab_s - sigma_t**2).sqrt() / (1 - ab_t).sqrt()
    return kappa, ab_s.sqrt() - ab_t.sqrt() * kappa


def my_ddim_step(xt, eps, t, t_prev, sched, eta, noise):
    ab_t, ab_s = sched.alpha_bar[t], sched.alpha_bar[t_prev]
    sigma = td.ddim.sigma(t, t_prev, sched, eta)
    x0_pred = (xt - (1 - ab_t).sqrt() * eps) / ab_t.sqrt()
    return ab_s.sqrt() * x0_pred + (1 - ab_s - sigma**2).sqrt() * eps + sigma * noise


def my_trailing(T, n):
    # T, T - T/n, T - 2T/n, ... rounded: the last one near T/n
    return torch.round(torch.arange(T, 0, -T / n, dtype=torch.float64)[:n]).long()


def my_ddim_step_eta0(xt, eps, t, t_prev, sched):
    ab_t, ab_s = sched.alpha_bar[t], sched.alpha_bar[t_prev]
    x0_pred = (xt - (1 - ab_t).sqrt() * eps) / ab_t.sqrt()
    return ab_s.sqrt() * x0_pred + (1 - ab_s).sqrt() * eps  # the bug: 1 - ab_t in the direction term
