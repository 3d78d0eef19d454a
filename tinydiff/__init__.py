"""tinydiff: the small package behind the notebook textbook on diffusion models.

One math module per lesson at the top level, shared tools beside them, networks and data in subpackages::

    profiles   quick / standard / full sizes          utils      device, seeding, progress, trajectories
    schedules  beta_t, alpha_t, alpha_bar_t           convert    eps <-> x0 <-> score <-> v <-> velocity
    denoisers  noise paths (alpha_t, sigma_t) and     validation the one layer of input checks
               the one denoiser interface
    ddpm       forward process, loss, Algorithm 2     vae        VAE, ELBO, linear-Gaussian model
    ddim       DDIM step, timesteps, sampler          sde        VP-SDE, reverse SDE, PF-ODE, likelihood
    score      Tweedie, Langevin dynamics             guidance   classifier and classifier-free guidance
    vq         vector quantisation (VQ-VAE)           latent     latent diffusion, captions, costs
    solvers    ODE solvers over x0(x, sigma)          train      one training loop (EMA, checkpoints)
    metrics    distances between sample sets          plotting   figures
    exercises  the exercise checker                   checks     the check cells' assertions

    models/    embeddings, mlp, unet, classifier, attention, text, autoencoders (``td.models.UNet``, ...)
    data/      mixture (the exact oracle), toy, digits, shapes (``td.data.GaussianMixture``, ...)

Submodules are imported on first use (``td.ddim`` works without importing it first).
"""

import importlib

from .checks import check, check_less
from .schedules import NoiseSchedule
from .utils import device, seed_everything

__version__ = "0.1.0"

__all__ = ["NoiseSchedule", "device", "seed_everything", "check", "check_less"]


# modules that moved into the subpackages (old name -> new home); kept so that older code still runs
_MOVED = {"attention": "models.attention", "text": "models.text", "autoencoder": "models.autoencoders",
          "shapes": "data.shapes"}


def __getattr__(name):
    """Import ``tinydiff.<name>`` lazily, so every lesson's module is reachable as ``td.<name>``."""
    if name.startswith("_"):
        raise AttributeError(name)
    if name in _MOVED:
        import warnings

        warnings.warn(f"tinydiff.{name} is now tinydiff.{_MOVED[name]}", DeprecationWarning, stacklevel=2)
        return importlib.import_module(f".{_MOVED[name]}", __name__)
    try:
        module = importlib.import_module(f".{name}", __name__)
    except ModuleNotFoundError as exc:
        if exc.name == f"{__name__}.{name}":
            raise AttributeError(f"module 'tinydiff' has no attribute or submodule {name!r}") from None
        raise
    globals()[name] = module
    return module
