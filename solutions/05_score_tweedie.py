"""Solutions to the exercises of notebooks/05_score_tweedie.py."""

import math


def my_tweedie(xt, score, alpha_bar_t):
    return (xt + (1 - alpha_bar_t) * score) / math.sqrt(alpha_bar_t)


def my_langevin_step(x, score, step_size, noise):
    return x + 0.5 * step_size * score + math.sqrt(step_size) * noise
