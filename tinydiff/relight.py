r"""IC-Light's objective (lesson 10): the vanilla loss, and the light-transport consistency loss **derived** for the
model's parameterisation and for how the three noisy inputs are coupled.

Light transport is linear in raw HDR, :math:`I_{L_1+L_2} = I_{L_1} + I_{L_2}`. In model space
:math:`x = 2I - 1` this is *affine*, :math:`x_{12} = x_1 + x_2 - b` with :math:`b = -1` the model-space black.
A diffusion model never outputs :math:`x_0` alone; with :math:`x_t = \alpha_t x_0 + \sigma_t\varepsilon` every
prediction is an affine function of :math:`(x_t, \hat x_0)`:

.. math::  \hat\varepsilon = (x_t - \alpha_t\hat x_0)/\sigma_t, \qquad
           \hat v = \alpha_t\hat\varepsilon - \sigma_t\hat x_0 = (\alpha_t x_t - (\alpha_t^2+\sigma_t^2)\hat x_0)/\sigma_t.

Write :math:`p = A\,x_t + B\,\hat x_0`. Then :math:`\hat x_0^{12} = \hat x_0^1 + \hat x_0^2 - b` gives, with
:math:`\Delta x_t = x_t^{12} - x_t^{1} - x_t^{2}`,

.. math::  p_{12} = p_1 + p_2 + o, \qquad o = A\,\Delta x_t - B\,b
           \quad\Big(o_\varepsilon = \frac{\Delta x_t + \alpha_t b}{\sigma_t},\;
           o_{x_0} = -b,\; o_v = \frac{\alpha_t\Delta x_t + (\alpha_t^2+\sigma_t^2)\,b}{\sigma_t}\Big).

The lecture's identity :math:`\varepsilon_{L_1+L_2} = \varepsilon_{L_1} + \varepsilon_{L_2}` drops :math:`o`.
Under each coupling of the three noisy inputs :math:`o_\varepsilon` is

- **shared noise** (:math:`x_t^k = \alpha_t x_0^k + \sigma_t\varepsilon`): :math:`o = -\varepsilon`;
- **shared** :math:`x_t` (one :math:`x_t` fed with three lights; the only one you can build from data, where
  :math:`I_{L_1}, I_{L_2}` are unknown): :math:`o = -(x_t - \alpha_t b)/\sigma_t`, large at small :math:`t`;
- **independent** noises: :math:`o = \Delta x_t/\sigma_t + \alpha_t b/\sigma_t`;

never 0, so the literal loss pulls the optimum away from the truth. The derived residual
:math:`r = p_{12} - p_1 - p_2 - o = B\,(\hat x_0^{12} - \hat x_0^1 - \hat x_0^2 + b)` is the :math:`x_0`-space
consistency weighted by :math:`B` (:math:`-\alpha_t/\sigma_t` for :math:`\varepsilon`); it vanishes at the
optimum for every parameterisation and coupling, on the object. Off the object (an unlit background) the
relation itself is false, hence the mask :math:`M`.

The math takes predictions (tensors) and callables; it never imports a network.
"""

from __future__ import annotations

import torch

from . import convert, validation
from .utils import expand_to

__all__ = [
    "BLACK", "PREDICTIONS", "COUPLINGS", "LAMBDA_VANILLA", "LAMBDA_CONSISTENCY", "coefficients", "couple",
    "offset", "literal_residual", "consistency_residual", "x0_residual", "phi_exact", "phi_inputs",
    "masked_mse", "vanilla_loss", "consistency_loss", "consistency_loss_latent", "joint_loss",
    "bayes_prediction", "relight_losses", "rms", "loss_fn", "relight", "psnr_ssim", "linearity_error",
    "photometric_stereo", "angular_error", "lpips",
]

BLACK = -1.0  #: model-space black b (x = 2I - 1 at I = 0)
PREDICTIONS = ("eps", "x0", "v")
COUPLINGS = ("shared_noise", "shared_xt", "independent")
LAMBDA_VANILLA = 1.0  #: the paper's default weight of the vanilla term
LAMBDA_CONSISTENCY = 0.1  #: the paper's default weight of the consistency term


def _coef(name: str, value, like=None) -> torch.Tensor:
    """``alpha_t`` / ``sigma_t``: a real number or a per-sample tensor ``(B,)`` (checked against ``like``'s batch),
    as a float64 tensor."""
    if value is None or isinstance(value, (str, bytes, bool, complex)):
        raise TypeError(f"{name} must be a real number or a per-sample tensor (B,); got {validation.describe(value)}")
    try:
        t = torch.as_tensor(value)
    except (TypeError, ValueError, RuntimeError):
        raise TypeError(f"{name} must be a real number or a per-sample tensor (B,); got "
                        f"{validation.describe(value)}") from None
    if t.is_complex() or t.dtype == torch.bool:
        raise ValueError(f"{name} must be real; got {validation.describe(value)}")
    if like is not None and t.ndim and (t.ndim != 1 or t.shape[0] not in (1, like.shape[0])):
        raise ValueError(f"{name} must be a number or have shape ({like.shape[0]},), one per sample; got "
                         f"{validation.describe(value)}")
    return t.to(torch.float64)


def _same(**tensors) -> list[torch.Tensor]:
    """Validate tensors that enter one elementwise formula: floating (numpy accepted), every one of the first's
    shape."""
    out, first = [], None
    for name, value in tensors.items():
        x = validation.tensor(name, value)
        if first is None:
            first = (name, x)
        elif x.shape != first[1].shape:
            raise ValueError(f"{name} must have the shape of {first[0]}, {tuple(first[1].shape)}; got "
                             f"{validation.describe(x)}")
        out.append(x)
    return out


def _callable(name, fn):
    if not callable(fn):
        raise TypeError(f"{name} must be a callable; got {validation.describe(fn)}")
    return fn


def _prediction(name, out, like) -> torch.Tensor:
    """What a model callable returned: a tensor of ``like``'s shape (its dtype may differ under autocast; no host
    sync)."""
    if out is None:
        raise TypeError(f"{name} returned None: did it forget to `return` its prediction?")
    if not isinstance(out, torch.Tensor):
        raise TypeError(f"{name} must return a torch.Tensor of shape {tuple(like.shape)}; it returned "
                        f"{validation.describe(out)}")
    if tuple(out.shape) != tuple(like.shape) or not out.is_floating_point():
        raise ValueError(f"{name} must return a floating tensor of the shape of x_t, {tuple(like.shape)}; it returned "
                         f"{validation.describe(out)}")
    return out


def _batched(name, value, B, *, ndim=None, floating=True):
    """A per-sample input (conditioning, lights, times): a tensor with ``B`` rows."""
    v = validation.tensor(name, value, ndim=ndim, floating=floating, batch=B)
    if not floating and (v.is_floating_point() or v.dtype == torch.bool):
        raise ValueError(f"{name} must be an integer tensor ({B},); got {validation.describe(v)}")
    return v


def _black(black) -> float:
    return validation.number("black", black)


def _ab(alpha, sigma, like):
    a = expand_to(_coef("alpha", alpha, like), like).to(like.dtype)
    s = expand_to(_coef("sigma", sigma, like), like).to(like.dtype)
    return a, s


def coefficients(prediction: str, alpha, sigma):
    r"""``(A, B)`` with :math:`p = A\,x_t + B\,\hat x_0` for ``prediction`` in ``eps``, ``x0``, ``v``:
    :math:`(1/\sigma, -\alpha/\sigma)`, :math:`(0, 1)`, :math:`(\alpha/\sigma, -(\alpha^2+\sigma^2)/\sigma)`."""
    validation.choice("prediction", prediction, PREDICTIONS)
    a, s = _coef("alpha", alpha), _coef("sigma", sigma)
    if prediction == "eps":
        return 1 / s, -a / s
    if prediction == "x0":
        return torch.zeros_like(a), torch.ones_like(a)
    return a / s, -(a * a + s * s) / s


def couple(coupling: str, x0_12, alpha, sigma, *, x0_1=None, x0_2=None, generator=None):
    r"""The three noisy inputs ``(xt_12, xt_1, xt_2)`` and their noises ``(eps_12, eps_1, eps_2)`` under a
    coupling: ``"shared_noise"`` (one :math:`\varepsilon`, three clean images: needs ``x0_1``, ``x0_2``),
    ``"shared_xt"`` (one :math:`x_t = \alpha x_0^{12} + \sigma\varepsilon` for all three; its implied noise for
    light :math:`k` is :math:`(x_t - \alpha x_0^k)/\sigma`, returned only for the merged light, the others None),
    ``"independent"`` (three noises; needs ``x0_1``, ``x0_2``). Noise is drawn on the CPU from ``generator``."""
    validation.choice("coupling", coupling, COUPLINGS)
    x0_12 = validation.tensor("x0_12", x0_12)
    a, s = _ab(alpha, sigma, x0_12)

    def noise():
        return torch.randn(x0_12.shape, generator=generator, dtype=x0_12.dtype).to(x0_12.device)

    if coupling == "shared_xt":
        eps = noise()
        xt = a * x0_12 + s * eps
        return (xt, xt, xt), (eps, None, None)
    if x0_1 is None or x0_2 is None:
        raise ValueError(f"coupling={coupling!r} needs the clean images x0_1 and x0_2 of the two partial lights "
                         "(only 'shared_xt' works without them)")
    x0_12, x0_1, x0_2 = _same(x0_12=x0_12, x0_1=x0_1, x0_2=x0_2)
    if coupling == "shared_noise":
        eps = noise()
        e = (eps, eps, eps)
    else:
        e = (noise(), noise(), noise())
    return tuple(a * x0 + s * n for x0, n in zip((x0_12, x0_1, x0_2), e)), e


def offset(prediction: str, xt_12, xt_1, xt_2, alpha, sigma, black: float = BLACK) -> torch.Tensor:
    r"""The offset term :math:`o = A\,(x_t^{12} - x_t^1 - x_t^2) - B\,b` of the derived identity
    :math:`p_{12} = p_1 + p_2 + o` (module docstring), computed from the inputs alone."""
    validation.choice("prediction", prediction, PREDICTIONS)
    xt_12, xt_1, xt_2 = _same(xt_12=xt_12, xt_1=xt_1, xt_2=xt_2)
    black = _black(black)
    dx = xt_12 - xt_1 - xt_2
    a, s = _ab(alpha, sigma, dx)
    x0 = torch.full_like(dx, -black)  # the x0 of the linear map at (dx, x0 = -b)
    return convert.prediction_from(prediction, x0, (dx - a * x0) / s, alpha, sigma).to(dx.dtype)


def literal_residual(p_12, p_1, p_2) -> torch.Tensor:
    r"""The lecture's identity as written, :math:`p_{12} - (p_1 + p_2)` (no offset)."""
    p_12, p_1, p_2 = _same(p_12=p_12, p_1=p_1, p_2=p_2)
    return p_12 - p_1 - p_2


def consistency_residual(prediction: str, p_12, p_1, p_2, xt_12, xt_1, xt_2, alpha, sigma,
                         black: float = BLACK) -> torch.Tensor:
    r"""The derived residual :math:`r = p_{12} - p_1 - p_2 - o` (0 at the optimum, on the object)."""
    p_12, p_1, p_2, xt_12 = _same(p_12=p_12, p_1=p_1, p_2=p_2, xt_12=xt_12)
    return p_12 - p_1 - p_2 - offset(prediction, xt_12, xt_1, xt_2, alpha, sigma, black)


def x0_residual(x0_12, x0_1, x0_2, black: float = BLACK) -> torch.Tensor:
    r"""The consistency in :math:`x_0` space, :math:`\hat x_0^{12} - \hat x_0^1 - \hat x_0^2 + b`; the residual of
    any parameterisation is :math:`B` times this (``coefficients``)."""
    x0_12, x0_1, x0_2 = _same(x0_12=x0_12, x0_1=x0_1, x0_2=x0_2)
    black = _black(black)
    return x0_12 - x0_1 - x0_2 + black


def phi_exact(prediction: str, p_1, p_2, xt_12, xt_1, xt_2, alpha, sigma, black: float = BLACK) -> torch.Tensor:
    r"""What the merging map :math:`\phi` of the latent-space loss must compute in image space:
    :math:`\phi(p_1, p_2) = p_1 + p_2 + o`. It needs the noisy inputs and :math:`t` (through :math:`o`), not just
    :math:`(p_1, p_2)`, except for ``x0`` (:math:`o = -b`)."""
    p_1, p_2, xt_12 = _same(p_1=p_1, p_2=p_2, xt_12=xt_12)
    return p_1 + p_2 + offset(prediction, xt_12, xt_1, xt_2, alpha, sigma, black)


def phi_inputs(p_1, p_2, xt_12, xt_1, xt_2, alpha, sigma) -> torch.Tensor:
    r"""The channels a learned :math:`\phi` needs to be able to represent the exact relation: the two
    predictions, the three noisy inputs and the maps :math:`\alpha_t`, :math:`\sigma_t`, :math:`\alpha_t/\sigma_t`,
    concatenated along the channels ``(B, 5C + 3, H, W)``."""
    p_1, p_2, xt_12, xt_1, xt_2 = _same(p_1=p_1, p_2=p_2, xt_12=xt_12, xt_1=xt_1, xt_2=xt_2)
    if p_1.ndim != 4:
        raise ValueError(f"p_1 must be a batch of images (B, C, H, W); got {validation.describe(p_1)}")
    a, s = _ab(alpha, sigma, p_1[:, :1])
    ones = torch.ones_like(p_1[:, :1])
    return torch.cat([p_1, p_2, xt_12, xt_1, xt_2, a * ones, s * ones, a / s * ones], 1)


def masked_mse(r: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    r""":math:`\|M\odot r\|^2` averaged over the elements (``mask`` ``(B, 1, H, W)`` broadcast over channels;
    None = no mask)."""
    r, mask = _residual_and_mask(r, mask)
    return (r if mask is None else mask * r).square().mean()


def _residual_and_mask(r, mask):
    r = validation.tensor("r", r, min_batch=1)
    if r.numel() == 0:
        raise ValueError(f"r must hold at least one value; got {validation.describe(r)}")
    if mask is not None:
        mask = validation.tensor("mask", mask, floating=False)
        if mask.is_complex():
            raise ValueError(f"mask must be real; got {validation.describe(mask)}")
        try:
            torch.broadcast_shapes(mask.shape, r.shape)
        except RuntimeError:
            raise ValueError(f"mask must broadcast against r {tuple(r.shape)} (e.g. (B, 1, H, W)); got "
                             f"{validation.describe(mask)}") from None
        if torch.broadcast_shapes(mask.shape, r.shape) != r.shape:
            raise ValueError(f"mask must broadcast to the shape of r, {tuple(r.shape)}; got {validation.describe(mask)}")
    return r, mask


def rms(r: torch.Tensor, mask: torch.Tensor | None = None) -> float:
    r"""Root mean square of ``r`` over the pixels where ``mask`` is 1 (all pixels without a mask)."""
    r, mask = _residual_and_mask(r, mask)
    if mask is None:
        return r.double().square().mean().sqrt().item()
    m = mask.expand_as(r).bool()
    return r[m].double().square().mean().sqrt().item()


def vanilla_loss(pred, target) -> torch.Tensor:
    r""":math:`\mathcal L_\text{vanilla} = \|\text{target} - \delta(x_t, t, L, I_d)\|^2` (mean over elements)."""
    pred, target = _same(pred=pred, target=target)
    return masked_mse(pred - target)


def consistency_loss(prediction: str, p_12, p_1, p_2, xt_12, xt_1, xt_2, alpha, sigma, *, mask=None,
                     black: float = BLACK) -> torch.Tensor:
    r"""Image-space :math:`\mathcal L_\text{consistency} = \|M\odot(p_{12} - p_1 - p_2 - o)\|^2`. ``p_12`` may be
    the model's prediction at :math:`L_1 + L_2` or the data's target at :math:`L` (then it is the lecture's
    :math:`\|M\odot(\varepsilon - \phi(\cdot,\cdot))\|^2` with the exact :math:`\phi`)."""
    return masked_mse(consistency_residual(prediction, p_12, p_1, p_2, xt_12, xt_1, xt_2, alpha, sigma, black), mask)


def consistency_loss_latent(phi, p_12, p_1, p_2, xt_12, xt_1, xt_2, alpha, sigma, *, mask=None) -> torch.Tensor:
    r"""Latent-space :math:`\mathcal L_\text{consistency} = \|M\odot(p_{12} - \phi(\ldots))\|^2` with a learned
    ``phi`` called on :func:`phi_inputs` (a latent space has no known sum, so :math:`\phi` is learned)."""
    _callable("phi", phi)
    p_12 = validation.tensor("p_12", p_12)
    merged = phi(phi_inputs(p_1, p_2, xt_12, xt_1, xt_2, alpha, sigma))
    validation.output("phi", merged, like=p_12)
    return masked_mse(p_12 - merged, mask)


def joint_loss(vanilla, consistency, *, lambda_vanilla: float = LAMBDA_VANILLA,
               lambda_consistency: float = LAMBDA_CONSISTENCY) -> torch.Tensor:
    r""":math:`\mathcal L = \lambda_\text{vanilla}\mathcal L_\text{vanilla} + \lambda_\text{consistency}
    \mathcal L_\text{consistency}` (defaults 1.0 and 0.1, the paper's)."""
    vanilla, consistency = validation.tensor("vanilla", vanilla), validation.tensor("consistency", consistency)
    lambda_vanilla = validation.number("lambda_vanilla", lambda_vanilla, low=0)
    lambda_consistency = validation.number("lambda_consistency", lambda_consistency, low=0)
    return lambda_vanilla * vanilla + lambda_consistency * consistency


def bayes_prediction(prediction: str, x0_star, xt, alpha, sigma) -> torch.Tensor:
    r"""The Bayes-optimal prediction when the clean image is a deterministic function :math:`x_0^\star(I_d, L)`
    of the conditioning: the posterior is a point mass, so :math:`\mathbb E[x_0\mid x_t, L, I_d] = x_0^\star`
    and :math:`\mathbb E[\varepsilon\mid x_t, L, I_d] = (x_t - \alpha_t x_0^\star)/\sigma_t`, written as
    ``prediction``."""
    validation.choice("prediction", prediction, PREDICTIONS)
    xt, x0_star = _same(xt=xt, x0_star=x0_star)
    a, s = _ab(alpha, sigma, xt)
    x0_star = x0_star.to(xt.dtype)
    return convert.prediction_from(prediction, x0_star, (xt - a * x0_star) / s, alpha, sigma).to(xt.dtype)


def relight_losses(model_fn, prediction: str, x0, cond, light, light_1, light_2, alpha_bar_t, t, *, mask=None,
                   generator=None, lambda_vanilla: float = LAMBDA_VANILLA,
                   lambda_consistency: float = LAMBDA_CONSISTENCY, black: float = BLACK) -> dict:
    r"""One training evaluation of the joint objective with the shared-:math:`x_t` coupling (buildable from data):
    :math:`x_t = \alpha_t x_0 + \sigma_t\varepsilon`, vanilla :math:`\|y - \delta(x_t, t, L, I_d)\|^2` with
    :math:`y` the ``prediction`` target, consistency :math:`\|M\odot(y - \delta_1 - \delta_2 - o)\|^2` with
    :math:`\delta_k = \delta(x_t, t, L_k, I_d)` and :math:`L = L_1 + L_2`. ``model_fn(x_t, t, cond, light)``;
    ``alpha_bar_t`` ``(B,)``; ``lambda_consistency = 0`` skips the two extra evaluations.
    Returns ``{"vanilla", "consistency", "loss"}``."""
    validation.choice("prediction", prediction, PREDICTIONS)
    _callable("model_fn", model_fn)
    x0 = validation.tensor("x0", x0, ndim=4)
    B = x0.shape[0]
    cond = _batched("cond", cond, B, ndim=4)
    light = _batched("light", light, B)
    light_1, light_2 = _batched("light_1", light_1, B), _batched("light_2", light_2, B)
    for name, v in (("light_1", light_1), ("light_2", light_2)):
        if v.shape != light.shape:
            raise ValueError(f"{name} must have the shape of light, {tuple(light.shape)}; got {validation.describe(v)}")
    t = _batched("t", t, B, ndim=1, floating=False)
    alpha_bar_t = validation.tensor("alpha_bar_t", alpha_bar_t, ndim=1, floating=False, batch=B)
    if not alpha_bar_t.is_floating_point():
        raise ValueError(f"alpha_bar_t must be a floating tensor ({B},) of values in (0, 1); got "
                         f"{validation.describe(alpha_bar_t)}")
    if alpha_bar_t.device.type == "cpu" and not bool(((alpha_bar_t > 0) & (alpha_bar_t < 1)).all()):
        raise ValueError("alpha_bar_t must lie in (0, 1) (t in 1..T of a schedule); got values from "
                         f"{float(alpha_bar_t.min()):g} to {float(alpha_bar_t.max()):g}")  # CPU only: no host sync
    a, s = alpha_bar_t.sqrt(), (1 - alpha_bar_t).sqrt()
    (xt, _, _), (eps, _, _) = couple("shared_xt", x0, a, s, generator=generator)
    target = convert.prediction_from(prediction, x0, eps, a, s).to(x0.dtype)
    vanilla = vanilla_loss(_prediction("model_fn", model_fn(xt, t, cond, light), xt), target)
    if lambda_consistency == 0:
        consistency = torch.zeros((), device=x0.device)
    else:
        both = model_fn(torch.cat([xt, xt]), torch.cat([t, t]), torch.cat([cond, cond]), torch.cat([light_1, light_2]))
        p_1, p_2 = _prediction("model_fn", both, torch.cat([xt, xt])).chunk(2)
        consistency = consistency_loss(prediction, target, p_1, p_2, xt, xt, xt, a, s, mask=mask, black=black)
    return {"vanilla": vanilla, "consistency": consistency,
            "loss": joint_loss(vanilla, consistency, lambda_vanilla=lambda_vanilla,
                               lambda_consistency=lambda_consistency)}


def loss_fn(sched, prediction: str = "x0", *, lambda_consistency: float = LAMBDA_CONSISTENCY, use_mask: bool = True,
            lambda_vanilla: float = LAMBDA_VANILLA):
    r"""A ``loss_fn(model, batch)`` for :func:`tinydiff.train.fit` over :class:`~tinydiff.data.relight.RelightBatches`:
    :math:`t \sim U\{1..T\}` and :func:`relight_losses`; with ``lambda_consistency = 0`` the vanilla objective.
    For equal compute the vanilla-only run should use a 3x larger batch (the consistency term costs two more
    evaluations per sample)."""
    validation.choice("prediction", prediction, PREDICTIONS)
    lambda_consistency = validation.number("lambda_consistency", lambda_consistency, low=0)

    def fn(model, batch):
        x0, cond, light, l1, l2, mask = batch
        t = torch.randint(1, sched.T + 1, (x0.shape[0],)).to(x0.device)
        ab = sched.alpha_bar.to(x0.device)[t]
        out = relight_losses(model, prediction, x0, cond, light, l1, l2, ab, t, mask=mask if use_mask else None,
                             lambda_vanilla=lambda_vanilla, lambda_consistency=lambda_consistency)
        return out["loss"]

    return fn


@torch.no_grad()
def relight(model_fn, cond, light, sched, n_steps: int = 10, *, prediction: str = "x0", generator=None):
    r"""Relight: DDIM (:math:`\eta = 0`, ``n_steps``) with the conditional denoiser ``model_fn(x_t, t, cond, light)``
    (of kind ``prediction``), from noise drawn on the CPU from ``generator``; returns :math:`\hat x_0` in model
    space. (In this world :math:`x_0` is a deterministic function of the conditioning, so the sampler mostly
    reads off the model's :math:`\hat x_0`; it is what IC-Light runs at inference.)"""
    from . import ddim

    validation.choice("prediction", prediction, PREDICTIONS)
    _callable("model_fn", model_fn)
    sched = validation.schedule("sched", sched)
    cond = validation.tensor("cond", cond, ndim=4)
    light = _batched("light", light, cond.shape[0])
    first = [True]

    def eps_fn(x, t):
        ab = sched.alpha_bar.to(x.device)[t]
        pred = model_fn(x, t, cond, light)
        if first[0]:  # the first step only: one check, as every sampler does
            first[0] = False
            validation.output("model_fn", _prediction("model_fn", pred, x).to(x.dtype), like=x)
        return convert.x0_eps_from(prediction, pred, x, ab.sqrt(), (1 - ab).sqrt())[1].to(x.dtype)

    shape = (cond.shape[0], 3, *cond.shape[-2:])
    return ddim.sample(eps_fn, shape, sched, n_steps, generator=generator, progress_bar=False,
                       device=cond.device).to(cond.dtype)


def psnr_ssim(pred, true) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Per-image PSNR (dB) and SSIM of display images ``(B, 3, H, W)`` in ``[0, 1]`` (scikit-image's
    ``peak_signal_noise_ratio`` and ``structural_similarity`` with ``data_range=1``; SSIM's window is the
    largest odd size up to 7 that fits)."""
    try:
        from skimage.metrics import peak_signal_noise_ratio, structural_similarity
    except ImportError as exc:
        raise ImportError("psnr_ssim needs scikit-image (in tinydiff's [dev] extra; Colab has it): "
                          "pip install scikit-image") from exc

    pred, true = _same(pred=pred, true=true)
    if pred.ndim != 4:
        raise ValueError(f"pred must be display images (B, 3, H, W); got {validation.describe(pred)}")
    p = pred.detach().double().cpu().clamp(0, 1).permute(0, 2, 3, 1).numpy()
    q = true.detach().double().cpu().clamp(0, 1).permute(0, 2, 3, 1).numpy()
    win = min(7, p.shape[1] - (1 - p.shape[1] % 2), p.shape[2] - (1 - p.shape[2] % 2))
    ps = [peak_signal_noise_ratio(b, a, data_range=1.0) for a, b in zip(p, q)]
    ss = [structural_similarity(b, a, data_range=1.0, channel_axis=-1, win_size=win) for a, b in zip(p, q)]
    return torch.tensor(ps), torch.tensor(ss)


def linearity_error(x_12, x_1, x_2, mask=None, black: float = BLACK) -> float:
    r"""RMS of the model-space transport residual :math:`x_{12} - x_1 - x_2 + b` of three relightings, on the
    mask (0 for a model whose relightings add like light)."""
    x_12, x_1, x_2 = _same(x_12=x_12, x_1=x_1, x_2=x_2)
    return rms(x0_residual(x_12, x_1, x_2, black), mask)


def photometric_stereo(images, light_vectors) -> torch.Tensor:
    r"""Normals from relightings by least squares: per pixel, the grey intensities :math:`I_k = a\,n\cdot s_k`
    under ``K`` lights with first moments ``light_vectors`` ``(K, 3)`` give :math:`g = a n` from
    :math:`\min_g \sum_k (s_k\cdot g - I_k)^2`; returns :math:`n = g/\|g\|` ``(B, 3, H, W)``.
    ``images`` ``(K, B, 3, H, W)`` linear HDR."""
    images = validation.tensor("images", images, ndim=5, finite=True)
    S = validation.tensor("light_vectors", light_vectors, ndim=2, finite=True).double()
    if S.shape != (images.shape[0], 3):
        raise ValueError(f"light_vectors must be ({images.shape[0]}, 3), one per relighting; got {tuple(S.shape)}")
    grey = images.double().mean(2)  # (K, B, H, W)
    K, B, H, W = grey.shape
    g = torch.linalg.lstsq(S, grey.reshape(K, -1)).solution  # (3, B*H*W)
    g = g.reshape(3, B, H, W).permute(1, 0, 2, 3)
    return torch.nn.functional.normalize(g, dim=1).to(images.dtype)


def angular_error(n_est, n_true, mask) -> torch.Tensor:
    r"""Per-pixel angle in degrees between unit normals, :math:`\arccos(n\cdot\hat n)`, on the mask (a 1-D tensor)."""
    n_est, n_true = _same(n_est=n_est, n_true=n_true)
    if n_est.ndim != 4 or n_est.shape[1] != 3:
        raise ValueError(f"n_est must be normal maps (B, 3, H, W); got {validation.describe(n_est)}")
    mask = validation.tensor("mask", mask, floating=False)
    want = (n_est.shape[0], 1, *n_est.shape[2:])
    if tuple(mask.shape) != want:
        raise ValueError(f"mask must be a mask (bool or 0/1) of shape {want}; got {validation.describe(mask)}")
    cos = (n_est.double() * n_true.double()).sum(1, keepdim=True).clamp(-1, 1)
    return torch.rad2deg(torch.arccos(cos))[mask.bool()]


def lpips(pred, true):
    r"""LPIPS (Zhang et al. 2018) of display images in ``[0, 1]``: distances between deep features of a pretrained
    AlexNet, weighted by linear layers fitted to human judgements. Computed only where the ``lpips`` package
    *and* its backbone's weights are already on this machine (nothing is ever downloaded); otherwise returns
    ``(None, reason)``. On success returns ``(per-image distances, "")``."""
    import importlib.util
    import os

    if importlib.util.find_spec("lpips") is None:
        return None, "the lpips package is not installed"
    hub = os.path.join(torch.hub.get_dir(), "checkpoints")
    if not os.path.isdir(hub) or not any(f.startswith("alexnet") for f in os.listdir(hub)):
        return None, f"AlexNet's weights are not in {hub} (they would be downloaded; this book never downloads)"
    import lpips as _lpips  # noqa: PLC0415

    net = _lpips.LPIPS(net="alex", verbose=False)
    with torch.no_grad():
        d = net(pred.float() * 2 - 1, true.float() * 2 - 1)
    return d.flatten(), ""
