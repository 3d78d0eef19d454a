"""Solutions to the exercises of notebooks/07_vqvae.py."""

import torch


def my_nearest_code(z, codebook):
    d2 = (z**2).sum(1, keepdim=True) - 2 * z @ codebook.T + (codebook**2).sum(1)[None]  # ||z - e||^2
    return d2.argmin(1)


def my_straight_through(z_e, z_q):
    return z_e + (z_q - z_e).detach()  # value z_q, gradient of z_e


def my_perplexity(counts):
    p = counts.double() / counts.sum()
    return torch.exp(-torch.special.xlogy(p, p).sum())


def my_code_usage(indices, K):
    return torch.bincount(indices.flatten(), minlength=K)  # the bug: no minlength


def my_sample_codes(prior, u):
    n, h, w = u.shape
    k = torch.zeros(n, h * w, dtype=torch.long)
    for i in range(h * w):  # raster order: position i sees k_<i only
        probs = prior(k.reshape(n, h, w)).reshape(n, h * w, -1)[:, i].double().exp()
        cdf = probs.cumsum(-1)
        k[:, i] = (cdf <= u.reshape(n, -1)[:, i:i + 1].double() * cdf[:, -1:]).sum(-1)  # min{j: F(j) > u}
    return k.reshape(n, h, w)
