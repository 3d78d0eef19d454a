"""Solutions to the exercises of notebooks/06_guidance.py."""

import math


def my_cfg_from_scale(eps_uncond, eps_cond, guidance_scale):
    # diffusers: eps_u + w (eps_c - eps_u), w = 1 + gamma
    return eps_uncond + guidance_scale * (eps_cond - eps_uncond)


def my_classifier_eps(eps, grad_log_py, alpha_bar_t, gamma):
    return eps - gamma * math.sqrt(1 - alpha_bar_t) * grad_log_py


def my_cfg(eps_uncond, eps_cond, gamma):
    # the bug: the weights 1 + gamma and -gamma were on the wrong predictions
    return (1 + gamma) * eps_cond - gamma * eps_uncond
