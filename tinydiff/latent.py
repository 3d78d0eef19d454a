r"""Latent diffusion (lesson 08): the glue between a first-stage autoencoder and the DDPM/DDIM code.

1. Encode once: :math:`z_0 = s\,\mathcal E(x)` with the **scale factor** :math:`s = 1/\mathrm{std}(\mathcal E(x))`
   (:func:`scale_factor`), so the latents have unit variance like the :math:`\mathcal N(0, I)` the noise
   schedule was designed for. Without it :math:`q(z_t\mid z_0)` has the signal-to-noise ratio
   :math:`\mathrm{Var}(z_0)\,\bar\alpha_t/(1-\bar\alpha_t)` (:func:`snr`) instead of :math:`\bar\alpha_t/(1-\bar\alpha_t)`.
2. Diffuse in latent space with the unchanged loss and samplers, then decode: :math:`x = \mathcal D(z_0/s)`.
3. Condition on a caption :math:`y` by cross-attention: :math:`\varepsilon_\theta(z_t, t, \tau_\theta(y))`
   (:class:`CaptionUNet`), trained with caption dropout (the empty caption) so that one network gives both
   :math:`\varepsilon(z_t, y)` and :math:`\varepsilon(z_t, \varnothing)` for classifier-free guidance (:func:`eps_fn`).

Also: helpers to look inside the model (identity-at-init of the transformer blocks, cross-attention maps)
and to measure the cost of a training step or a sampling step (the compute argument of latent diffusion).
"""

from __future__ import annotations

import contextlib
import copy
import time

import torch
from torch import nn

from . import ddpm, guidance, validation
from .models.attention import CrossAttention, SpatialTransformer
from .models.text import TextEncoder
from .models.unet import UNet
from .utils import eval_mode

__all__ = [
    "scale_factor",
    "encode",
    "decode",
    "snr",
    "CaptionUNet",
    "caption_unet",
    "drop_captions",
    "loss",
    "eps_fn",
    "guided_eps",
    "transformer_block_deltas",
    "store_cross_attention",
    "cross_attention_maps",
    "activation_bytes",
    "cost",
    "step_costs",
    "sample",
]


# ------------------------------------------------------------------------------------ scale factor
def _module(name: str, value, *attrs: str):
    """An ``nn.Module`` argument (with the given attributes), or a TypeError naming it."""
    if not isinstance(value, nn.Module) or not all(hasattr(value, a) for a in attrs):
        what = f"an nn.Module with {', '.join(attrs)}" if attrs else "an nn.Module"
        raise TypeError(f"{name} must be {what}; got {validation.describe(value)}")
    return value


def _tokens(name: str, value) -> torch.Tensor:
    """Caption token ids or their mask ``(B, M)``."""
    return validation.tensor(name, value, ndim=2, floating=False)


def _batch_size(batch_size) -> int:
    return validation.integer("batch_size", batch_size, low=1)


def scale_factor(z: torch.Tensor) -> float:
    r"""The LDM scale factor :math:`s = 1/\hat\sigma`, :math:`\hat\sigma` the standard deviation of *all*
    entries of a batch of latents :math:`\mathcal E(x)` (one number for the whole latent space)."""
    z = validation.tensor("z", z, finite=True).detach().double()
    if z.numel() < 2:
        raise ValueError("z must hold at least two latent entries to estimate their standard deviation")
    std = float(z.std())
    if not std > 0:
        raise ValueError("the latents have zero spread (a constant encoder?): the scale factor 1/std is undefined")
    return 1.0 / std


@torch.no_grad()
def encode(autoencoder, x: torch.Tensor, scale: float = 1.0, *, batch_size: int = 256) -> torch.Tensor:
    r""":math:`z_0 = s\,\mathcal E(x)` for images ``x`` ``(N, C, H, W)``, in batches (deterministic encoder; run in
    eval mode, the caller's train/eval mode is restored afterwards)."""
    _module("autoencoder", autoencoder, "encode")
    x = validation.tensor("x", x, ndim=4)
    validation.number("scale", scale)
    batch_size = _batch_size(batch_size)
    dev = next(autoencoder.parameters()).device
    with eval_mode(autoencoder):
        return torch.cat([autoencoder.encode(x[i:i + batch_size].to(dev)).cpu()
                          for i in range(0, x.shape[0], batch_size)]) * scale


@torch.no_grad()
def decode(autoencoder, z: torch.Tensor, scale: float = 1.0, *, batch_size: int = 256) -> torch.Tensor:
    r""":math:`x = \mathcal D(z_0/s)`, clamped to ``[-1, 1]``, in batches (in eval mode; the caller's mode is
    restored)."""
    _module("autoencoder", autoencoder, "decode")
    z = validation.tensor("z", z, ndim=4)
    validation.number("scale", scale, low=0, strict_low=True)
    batch_size = _batch_size(batch_size)
    dev = next(autoencoder.parameters()).device
    with eval_mode(autoencoder):
        return torch.cat([autoencoder.decode(z[i:i + batch_size].to(dev) / scale).clamp(-1, 1).cpu()
                          for i in range(0, z.shape[0], batch_size)])


def snr(sched, data_var: float = 1.0) -> torch.Tensor:
    r"""Signal-to-noise ratio of :math:`q(z_t\mid z_0)` for data of variance ``data_var`` per entry:
    :math:`\mathrm{SNR}(t) = \mathrm{Var}(z_0)\,\bar\alpha_t/(1-\bar\alpha_t)` (index 0 is ``inf``)."""
    data_var = validation.number("data_var", data_var, low=0, strict_low=True)
    return data_var * validation.schedule("sched", sched).snr()


# ------------------------------------------------------------------------------------ the conditional model
class CaptionUNet(nn.Module):
    r""":math:`\varepsilon_\theta(z_t, t, \tau_\theta(y))`: a text encoder and a UNet whose attention blocks
    cross-attend to its tokens, trained jointly (LDM eq. 3). ``forward(z, t, ids, mask)``."""

    def __init__(self, unet: UNet, text_encoder: TextEncoder):
        super().__init__()
        _module("unet", unet, "context_dim")
        _module("text_encoder", text_encoder, "dim")
        if unet.context_dim != text_encoder.dim:
            raise ValueError(f"the UNet's context_dim ({unet.context_dim}) must equal the text encoder's dim "
                             f"({text_encoder.dim})")
        self.unet, self.text = unet, text_encoder

    def forward(self, z: torch.Tensor, t, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        z, ids = validation.tensor("z", z, ndim=4), _tokens("ids", ids)
        if ids.shape[0] != z.shape[0]:
            raise ValueError(f"one caption per latent: z has batch {z.shape[0]}, ids has {ids.shape[0]}")
        return self.unet(z, t, context=self.text(ids, mask), context_mask=mask)


def caption_unet(vocab_size: int, latent_channels: int = 4, *, base_channels: int = 32, channel_mults=(1, 2),
                 attn_levels=(1,), text_dim: int = 64, text_layers: int = 2, heads: int = 4,
                 max_len: int = 8) -> CaptionUNet:
    """Build a :class:`CaptionUNet` from a :class:`tinydiff.models.UNet` and a :class:`tinydiff.models.TextEncoder`."""
    latent_channels = validation.integer("latent_channels", latent_channels, low=1)
    text_dim = validation.integer("text_dim", text_dim, low=1)
    text_layers = validation.integer("text_layers", text_layers, low=1)
    text = TextEncoder(vocab_size, text_dim, text_layers, heads, max_len)
    unet = UNet(latent_channels, base_channels=base_channels, channel_mults=channel_mults, attn_levels=attn_levels,
                context_dim=text_dim, heads=heads)
    return CaptionUNet(unet, text)


def drop_captions(ids: torch.Tensor, mask: torch.Tensor, p: float, null_ids: torch.Tensor, null_mask: torch.Tensor,
                  generator: torch.Generator | None = None):
    """Caption dropout for classifier-free guidance: replace each caption by the null (empty) caption with
    probability ``p``. ``null_ids``/``null_mask`` are ``(1, M)`` (e.g. ``tokenizer.encode("")``)."""
    p = validation.number("p (the caption-dropout probability, in [0, 1])", p, low=0, high=1)
    ids, mask = _tokens("ids", ids), _tokens("mask", mask)
    null_ids, null_mask = _tokens("null_ids", null_ids), _tokens("null_mask", null_mask)
    if mask.shape != ids.shape:
        raise ValueError(f"mask must have the shape of ids {tuple(ids.shape)}; got {tuple(mask.shape)}")
    if null_ids.shape != (1, ids.shape[1]) or null_mask.shape != null_ids.shape:
        raise ValueError(f"null_ids and null_mask must be (1, {ids.shape[1]}); got {tuple(null_ids.shape)}, "
                         f"{tuple(null_mask.shape)}")
    drop = (torch.rand(ids.shape[0], generator=generator) < p).to(ids.device)[:, None]
    return (torch.where(drop, null_ids.to(ids.device), ids), torch.where(drop, null_mask.to(mask.device), mask))


def loss(model: CaptionUNet, batch, sched, *, p_uncond: float = 0.1, null=None) -> torch.Tensor:
    r"""The conditional LDM loss :math:`\mathbb E\,\|\varepsilon - \varepsilon_\theta(z_t, t, \tau_\theta(y))\|^2`
    (``td.ddpm.loss``) on ``batch = (z0, ids, mask)``, with captions dropped to ``null = (null_ids, null_mask)``
    with probability ``p_uncond``."""
    if not isinstance(batch, (tuple, list)) or len(batch) != 3:
        raise TypeError(f"batch must be a tuple (z0, ids, mask); got {validation.describe(batch)}")
    z0, ids, mask = batch
    p_uncond = validation.number("p_uncond", p_uncond, low=0, high=1)
    if null is not None and (not isinstance(null, (tuple, list)) or len(null) != 2):
        raise TypeError(f"null must be the null caption (null_ids, null_mask), e.g. tokenizer.encode(''); got "
                        f"{validation.describe(null)}")
    if p_uncond > 0:
        if null is None:
            raise ValueError("caption dropout needs the null caption: pass null=tokenizer.encode('')")
        ids, mask = drop_captions(ids, mask, p_uncond, *null)
    return ddpm.loss(model, z0, sched, model_kwargs={"ids": ids, "mask": mask})


def guided_eps(eps_uncond: torch.Tensor, eps_cond: torch.Tensor, gamma: float) -> torch.Tensor:
    r"""Classifier-free guidance
    :math:`\tilde\varepsilon = (1+\gamma)\,\varepsilon(z_t, y) - \gamma\,\varepsilon(z_t, \varnothing)` (lesson 06's
    :func:`tinydiff.guidance.cfg`)."""
    return guidance.cfg(eps_uncond, eps_cond, gamma)


def eps_fn(model: CaptionUNet, ids: torch.Tensor, mask: torch.Tensor, *, gamma: float = 0.0, null=None):
    r"""A sampler-ready ``eps_fn(z, t)`` for the captions ``ids``/``mask`` ``(B, M)``: the conditional
    prediction, or with ``gamma > 0`` the guided one (:func:`guided_eps`; both branches in one batch).
    :math:`\tau_\theta(y)` is computed once, not at every step. The network runs in eval mode (dropout off)
    without changing the caller's model: its train/eval mode is restored after each call."""
    gamma = validation.number("gamma", gamma)
    if gamma and null is None:
        raise ValueError("guidance (gamma > 0) needs the null caption: pass null=tokenizer.encode('')")
    _module("model", model, "text", "unet")
    ids, mask = _tokens("ids", ids), _tokens("mask", mask)
    dev = next(model.parameters()).device
    ids, mask = ids.to(dev), mask.to(dev)
    with torch.no_grad(), eval_mode(model):
        ctx = model.text(ids, mask)
        if gamma:
            n_ids, n_mask = null[0].to(dev).expand_as(ids), null[1].to(dev).expand_as(mask)
            ctx = torch.cat([ctx, model.text(n_ids, n_mask)])
            mask = torch.cat([mask, n_mask])

    def unet(z, t):
        if not gamma:
            return model.unet(z, t, context=ctx, context_mask=mask)
        e = model.unet(torch.cat([z, z]), torch.cat([t, t]), context=ctx, context_mask=mask)
        eps_cond, eps_uncond = e.chunk(2)
        return guidance._cfg(eps_uncond, eps_cond, gamma)

    def fn(z, t):
        if z.shape[0] != ids.shape[0]:
            raise ValueError(f"eps_fn was built for {ids.shape[0]} captions; got a batch of {z.shape[0]} latents")
        if not model.training:
            return unet(z, t)
        with eval_mode(model):
            return unet(z, t)

    fn.device = dev  # samplers follow the model's device (utils.device_of)
    return fn


@torch.no_grad()
def sample(model: CaptionUNet, shape, sched, n_steps: int = 50, *, autoencoder, ids: torch.Tensor,
           mask: torch.Tensor, scale: float = 1.0, gamma: float = 0.0, null=None, x_T: torch.Tensor | None = None,
           generator=None, progress_bar: bool = True, callback=None, device=None) -> torch.Tensor:
    r"""Text-to-image: DDIM (lesson 03, ``eta = 0``) on latents of ``shape`` ``(B, c, h, w)`` for the ``B`` captions
    ``ids``/``mask``, guided with ``gamma`` (:func:`eps_fn`), then :math:`x = \mathcal D(z_0/s)` with the
    ``autoencoder``. Returns images ``(B, C, H, W)`` on the CPU; with ``autoencoder=None`` the latents
    :math:`z_0` themselves, on the sampler's device.

    The one sampler signature (:func:`tinydiff.ddim.sample`): ``callback(i, t, z)`` sees the latents, the device
    follows the model, noise is drawn on the CPU from ``generator``."""
    from . import ddim

    shape = validation.shape("shape", shape if x_T is None or shape is not None else tuple(x_T.shape))
    ids, mask = _tokens("ids", ids), _tokens("mask", mask)
    if shape[0] != ids.shape[0]:
        raise ValueError(f"shape {shape} must hold one latent per caption: ids has {ids.shape[0]} captions")
    scale = validation.number("scale", scale, low=0, strict_low=True)
    fn = eps_fn(model, ids, mask, gamma=gamma, null=null)
    z = ddim.sample(fn, shape, sched, n_steps, x_T=x_T, generator=generator, progress_bar=progress_bar,
                    callback=callback, device=device)
    return z if autoencoder is None else decode(autoencoder, z, scale)


# ------------------------------------------------------------------------------------ looking inside
@torch.no_grad()
def transformer_block_deltas(unet: UNet, *args, **kwargs) -> list[float]:
    """Run ``unet(*args, **kwargs)`` and return, for every :class:`SpatialTransformer` in it, the largest
    ``|block output - block input|``: all zeros when the blocks are the identity (at initialisation)."""
    deltas = []

    def hook(mod, inputs, output):
        deltas.append(float((output - inputs[0]).abs().max()))

    handles = [m.register_forward_hook(hook) for m in unet.modules() if isinstance(m, SpatialTransformer)]
    if not handles:
        raise ValueError("this UNet has no SpatialTransformer blocks (build it with attn_levels=...)")
    try:
        unet(*args, **kwargs)
    finally:
        for h in handles:
            h.remove()
    return deltas


def _cross_attention_modules(model: nn.Module) -> list[CrossAttention]:
    return [m for m in model.modules() if isinstance(m, CrossAttention) and m.context_dim is not None]


@contextlib.contextmanager
def store_cross_attention(model: nn.Module):
    """Inside ``with store_cross_attention(model) as layers:`` every cross-attention layer keeps its weights
    ``(B, heads, N, M)`` in ``layer.last_attention`` (``layers`` lists them, in forward order)."""
    layers = _cross_attention_modules(model)
    if not layers:
        raise ValueError("the model has no cross-attention layers (build its UNet with context_dim=...)")
    for m in layers:
        m.store_attention, m.last_attention = True, None
    try:
        yield layers
    finally:
        for m in layers:
            m.store_attention = False


@torch.no_grad()
def cross_attention_maps(model: CaptionUNet, z: torch.Tensor, t, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    r"""Where each word is looked at: the cross-attention weights :math:`\mathrm{softmax}(QK^\top/\sqrt d)` of every
    layer, averaged over heads and over the layers of the finest resolution that has them, reshaped to
    ``(B, M, h, w)`` (``M`` tokens; padded tokens get 0). Run in eval mode; the caller's mode is restored."""
    _module("model", model)
    z = validation.tensor("z", z, ndim=4)
    ids, mask = _tokens("ids", ids), _tokens("mask", mask)
    if mask.shape != ids.shape or ids.shape[0] != z.shape[0]:
        raise ValueError(f"ids and mask must have one shape (B, M) with B = {z.shape[0]} (the batch of z); got "
                         f"{tuple(ids.shape)} and {tuple(mask.shape)}")
    with eval_mode(model), store_cross_attention(model) as layers:
        model(z, t, ids, mask)
        maps = [m.last_attention.mean(1) for m in layers]  # (B, N, M) each
    n = max(a.shape[1] for a in maps)
    maps = torch.stack([a for a in maps if a.shape[1] == n]).mean(0)
    side = int(round(n**0.5))
    h = side
    w = n // h
    return maps.transpose(1, 2).reshape(z.shape[0], -1, h, w) * mask[..., None, None].to(maps.dtype)


# ------------------------------------------------------------------------------------ compute cost
def activation_bytes(model: nn.Module, fn) -> int:
    """Bytes of every tensor that a leaf module of ``model`` outputs while ``fn()`` runs: an estimate of the
    activations a training step keeps for the backward pass (functional ops and autograd's extras are not
    counted, so the true figure is somewhat larger)."""
    _module("model", model)
    if not callable(fn):
        raise TypeError(f"fn must be a callable fn() that runs the model; got {validation.describe(fn)}")
    total = 0

    def hook(mod, inputs, output):
        nonlocal total
        outs = output if isinstance(output, (tuple, list)) else (output,)
        total += sum(o.numel() * o.element_size() for o in outs if torch.is_tensor(o))

    handles = [m.register_forward_hook(hook) for m in model.modules() if not list(m.children())]
    try:
        fn()
    finally:
        for h in handles:
            h.remove()
    return total


def cost(fn, *, repeats: int = 3, device=None) -> dict:
    """Time and memory of ``fn()``: the median seconds over ``repeats`` calls (after one warm-up), measured
    as process CPU time on a CPU (robust to other programs sharing the machine) and as synchronised wall
    time on CUDA, where ``peak_bytes`` is ``torch.cuda.max_memory_allocated`` (None on a CPU)."""
    dev = torch.device(device) if device is not None else torch.device("cpu")
    cuda = dev.type == "cuda"
    fn()
    if cuda:
        torch.cuda.synchronize(dev)
        torch.cuda.reset_peak_memory_stats(dev)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter() if cuda else time.process_time()
        fn()
        if cuda:
            torch.cuda.synchronize(dev)
        times.append((time.perf_counter() if cuda else time.process_time()) - t0)
    times.sort()
    return {"seconds": times[len(times) // 2], "clock": "wall (CUDA)" if cuda else "CPU time",
            "peak_bytes": torch.cuda.max_memory_allocated(dev) if cuda else None}


def step_costs(model: CaptionUNet, x: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor, sched, *, null,
               n_steps: int, gamma: float = 3.0, decoder=None, repeats: int = 3) -> dict:
    r"""What one model costs on a batch ``x`` (pixels or latents) with captions ``ids``/``mask``: parameters,
    seconds per training step (loss, backward, AdamW), :func:`activation_bytes` of a training forward pass,
    ``peak_bytes`` on CUDA, and seconds per sample for ``n_steps`` guided steps (both CFG branches) plus one
    ``decoder`` pass when one is given (latent diffusion decodes once per sample, not once per step).

    Everything is measured on a deep copy of ``model`` (the training steps change the copy's weights, never the
    caller's, and the caller's train/eval mode is untouched)."""
    model = copy.deepcopy(model)
    dev = x.device
    ids, mask = ids.to(dev), mask.to(dev)
    opt = torch.optim.AdamW(model.parameters())
    batch = (x, ids, mask)

    def train_step():
        value = loss(model, batch, sched, p_uncond=0.15, null=null)
        opt.zero_grad()
        value.backward()
        opt.step()

    model.train()
    train = cost(train_step, repeats=repeats, device=dev)
    act = activation_bytes(model, lambda: loss(model, batch, sched, p_uncond=0.0))
    guided = eps_fn(model, ids, mask, gamma=gamma, null=null)
    t = torch.full((x.shape[0],), sched.T // 2, device=dev)
    with torch.no_grad():
        per_step = cost(lambda: guided(x, t), repeats=repeats, device=dev)["seconds"]
        dec = cost(lambda: decoder(x), repeats=repeats, device=dev)["seconds"] if decoder is not None else 0.0
    return {"params": sum(p.numel() for p in model.parameters()), "train_step_s": train["seconds"],
            "activation_bytes": act, "peak_bytes": train["peak_bytes"], "clock": train["clock"],
            "sample_s": (n_steps * per_step + dec) / x.shape[0]}
