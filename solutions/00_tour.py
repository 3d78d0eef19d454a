"""Solutions to the exercises of notebooks/00_tour.py."""

import torch


def my_alpha_bar(beta):
    # alpha_bar[t] = prod_{s <= t} (1 - beta[s]): a running product
    return torch.cumprod(1 - beta, dim=0)


def my_noised(x0, t, eps, sched):
    # the bug: (1 - alpha_bar) scales the noise; its standard deviation is sqrt(1 - alpha_bar)
    ab = sched.alpha_bar[t].to(x0.dtype)[:, None]
    return ab.sqrt() * x0 + (1 - ab).sqrt() * eps


def my_ddpm_loss(eps_fn, x0, t, eps, sched):
    ab = sched.alpha_bar[t].to(x0.dtype)[:, None]
    xt = ab.sqrt() * x0 + (1 - ab).sqrt() * eps
    return (eps - eps_fn(xt, t)).pow(2).sum(1).mean()
