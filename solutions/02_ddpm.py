"""Solutions to the exercises of notebooks/02_ddpm.py."""


def _per_sample(c, x):
    """A table entry per sample (B,) reshaped to broadcast over x's other dimensions, in x's dtype."""
    return c.to(x.dtype).reshape(-1, *([1] * (x.ndim - 1)))


def my_q_sample(x0, t, eps, sched):
    ab = sched.alpha_bar[t]
    return _per_sample(ab.sqrt(), x0) * x0 + _per_sample((1 - ab).sqrt(), x0) * eps


def my_posterior_mean(x0, xt, t, sched):
    ab, ab_prev = sched.alpha_bar[t], sched.alpha_bar[t - 1]
    c0 = ab_prev.sqrt() * sched.beta[t] / (1 - ab)
    ct = sched.alpha[t].sqrt() * (1 - ab_prev) / (1 - ab)
    return _per_sample(c0, x0) * x0 + _per_sample(ct, xt) * xt


def my_reverse_step(xt, eps, t, z, sched):
    mean = (xt - _per_sample(sched.beta[t] / (1 - sched.alpha_bar[t]).sqrt(), xt) * eps) / _per_sample(
        sched.alpha[t].sqrt(), xt)
    sigma = sched.posterior_variance[t].sqrt() * (t > 1)  # no noise at t = 1
    return mean + _per_sample(sigma, xt) * z


def my_posterior_variance(t, sched):
    return (1 - sched.alpha_bar[t - 1]) / (1 - sched.alpha_bar[t]) * sched.beta[t]  # the bug: alpha_bar[t] on top
