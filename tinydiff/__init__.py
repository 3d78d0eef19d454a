"""tinydiff: the small package behind the notebook textbook on diffusion models.

One module per idea, roughly in the order of the book::

    profiles   quick / standard / full sizes          utils      device, seeding, input checks, progress
    schedules  beta_t, alpha_t, alpha_bar_t           convert    eps <-> x0 <-> score <-> v
    data       Gaussian-mixture oracle, toy sets      ddpm       forward process, loss, Algorithm 2, ELBO
    vae        VAE, ELBO, linear-Gaussian model       ddim       DDIM step, timesteps, sampler
    sde        VP-SDE, reverse SDE, PF-ODE, likelihood score     Tweedie, Langevin dynamics
    guidance   classifier and classifier-free guidance vq        vector quantisation (VQ-VAE)
    models     embeddings, MLP, UNet, classifier      attention  self/cross-attention blocks
    train      one training loop (EMA, checkpoints)   metrics    distances between sample sets
    plotting   figures                                exercises  the exercise checker
    checks     the check cells' assertions

Submodules are imported on first use (``td.ddim`` works without importing it first).
"""

import importlib

from .checks import check, check_less
from .schedules import NoiseSchedule
from .utils import device, seed_everything

__version__ = "0.1.0"

__all__ = ["NoiseSchedule", "device", "seed_everything", "check", "check_less"]


def __getattr__(name):
    """Import ``tinydiff.<name>`` lazily, so every lesson's module is reachable as ``td.<name>``."""
    if name.startswith("_"):
        raise AttributeError(name)
    try:
        module = importlib.import_module(f".{name}", __name__)
    except ModuleNotFoundError as exc:
        if exc.name == f"{__name__}.{name}":
            raise AttributeError(f"module 'tinydiff' has no attribute or submodule {name!r}") from None
        raise
    globals()[name] = module
    return module
