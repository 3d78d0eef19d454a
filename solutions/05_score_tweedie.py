"""Solutions to the exercises of notebooks/05_score_tweedie.py."""

import math


def my_tweedie(xt, score, alpha_bar_t):
    return (xt + (1 - alpha_bar_t) * score) / math.sqrt(alpha_bar_t)


def my_langevin_step(x, score, step_size, noise):
    return x + 0.5 * step_size * score + math.sqrt(step_size) * noise


def my_score_from_eps(eps, alpha_bar_t):
    # the bug was the sign: eps points from the data towards x_t, the score from x_t back towards the data
    return -eps / math.sqrt(1 - alpha_bar_t)
