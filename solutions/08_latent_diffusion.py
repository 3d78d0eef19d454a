"""Solutions to the exercises of notebooks/08_latent_diffusion.py."""

import math


def my_scale_factor(z):
    return float(1 / z.double().std())  # population or sample std: both pass (they differ by 1e-4 here)


def my_attention(q, k, v, mask):
    logits = q @ k.transpose(1, 2) / math.sqrt(q.shape[-1])
    return logits.masked_fill(~mask[:, None, :], float("-inf")).softmax(-1) @ v


def my_scale_factor_population_std(z):
    """Also correct (the checker accepts both): numpy's default std, ddof = 0."""
    return float(1 / z.double().std(unbiased=False))


def my_attention_weights(q, k, mask):
    # the bug: mask is True at the real tokens, so the padding is ~mask
    logits = q @ k.transpose(1, 2) / math.sqrt(q.shape[-1])
    return logits.masked_fill(~mask[:, None, :], float("-inf")).softmax(-1)
