"""Solutions to the exercises of notebooks/00_tour.py."""

import torch


def my_alpha_bar(beta):
    # alpha_bar[t] = prod_{s <= t} (1 - beta[s]): a running product
    return torch.cumprod(1 - beta, dim=0)
