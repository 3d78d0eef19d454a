r"""The relighting denoiser of lesson 10 and IC-Light's input-widening trick.

**Widening.** IC-Light starts from a trained text-to-image UNet and concatenates the conditioning (the encoded
foreground, and for the background model also the background) to the noisy input along the channels, so the
first convolution must read more channels: 4 -> 8 or 12. The new input channels get **zero weights** (the old
ones and the bias are copied), so at the start of training the widened model computes exactly what the base
model computed, whatever the new channels hold (ControlNet's "zero convolution" idea). A channel that is 0 adds
nothing through such a conv ever after, which is why an absent background is filled with zeros and why a grey
(127 -> 0) background means "no information". :func:`widen_input_conv` does it for one conv,
:func:`widen_input` for a whole :class:`~tinydiff.models.UNet` or :class:`~tinydiff.models.dit.DiT`.

**The light.** The environment map enters through a linear summary (:func:`tinydiff.data.relight.light_features`)
and a small MLP added to the time embedding; its last layer starts at zero too, so attaching the light to a
base model also leaves its output unchanged.

**The model.** :class:`RelightUNet` ``(x_t, t, I_d, L) -> prediction``: the UNet on
``[x_t | I_d]`` (3 + 4 channels: albedo with a grey-0 background and the mask; +3 with
:meth:`~RelightUNet.add_background`) with the light in the embedding.
"""

from __future__ import annotations

import torch
from torch import nn

from .. import validation
from ..data.relight import light_features
from .unet import UNet

__all__ = ["widen_input_conv", "widen_input", "LightEmbedding", "RelightUNet", "PhiNet"]

_INPUT_CONV = {"UNet": "inp", "DiT": "x_embedder"}  # where each model family keeps its first convolution


def widen_input_conv(conv: nn.Conv2d, extra_channels: int) -> nn.Conv2d:
    r"""A copy of ``conv`` that reads ``extra_channels`` more input channels (appended after the old ones):
    :math:`W' = [W \mid 0]`, same bias, kernel, stride, padding, dtype and device. For any input
    :math:`[x \mid c]`: :math:`W' * [x \mid c] + b = W * x + b`."""
    if not isinstance(conv, nn.Conv2d):
        raise ValueError(f"conv must be an nn.Conv2d; got {type(conv).__name__}")
    extra = validation.integer("extra_channels", extra_channels, low=1)
    if conv.groups != 1:
        raise ValueError(f"only convolutions with groups=1 can be widened; this one has groups={conv.groups}")
    w = conv.weight
    new = nn.Conv2d(conv.in_channels + extra, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                    conv.dilation, bias=conv.bias is not None, padding_mode=conv.padding_mode,
                    device=w.device, dtype=w.dtype)
    with torch.no_grad():
        new.weight.zero_()
        new.weight[:, :conv.in_channels].copy_(w)
        if conv.bias is not None:
            new.bias.copy_(conv.bias)
    new.weight.requires_grad_(w.requires_grad)
    return new


def widen_input(model: nn.Module, extra_channels: int, *, attr: str | None = None) -> nn.Module:
    r"""Widen ``model``'s first convolution in place by ``extra_channels`` zero-initialised input channels and
    update its ``in_channels``; returns the model. ``attr`` names the conv (default: ``inp`` for a
    :class:`~tinydiff.models.UNet`, ``x_embedder`` for a DiT). A DiT with ``learn_sigma`` is refused (its output
    split reads ``in_channels``)."""
    if attr is not None and not isinstance(attr, str):
        raise TypeError(f"attr must be None or the name of the model's first nn.Conv2d; got {validation.describe(attr)}")
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module (a UNet or a DiT); got {validation.describe(model)}")
    name = attr or _INPUT_CONV.get(type(model).__name__)
    if name is None or not isinstance(getattr(model, name, None), nn.Conv2d):
        raise ValueError(f"widen_input: no input convolution found on {type(model).__name__}"
                         f"{f' at {name!r}' if name else ''}; pass attr='<name of its first nn.Conv2d>'")
    if getattr(model, "learn_sigma", False):
        raise ValueError("widen_input: this model has learn_sigma=True, whose output split follows in_channels; "
                         "widen a model built with learn_sigma=False")
    conv = getattr(model, name)
    setattr(model, name, widen_input_conv(conv, extra_channels))
    if hasattr(model, "in_channels"):
        model.in_channels = conv.in_channels + extra_channels
    return model


class LightEmbedding(nn.Module):
    r"""The base model's time embedding plus a light term, :math:`e(t) + W_2\,\mathrm{SiLU}(W_1 f(L))` with
    :math:`W_2 = 0` at the start. Installed as a UNet's ``embed``; the UNet hands the light features in as ``y``."""

    def __init__(self, base: nn.Module, light_dim: int, emb_dim: int):
        super().__init__()
        if not isinstance(base, nn.Module) or not callable(base):
            raise TypeError(f"base must be the UNet's time embedding (an nn.Module base(t, y, batch, device)); got "
                            f"{validation.describe(base)}")
        light_dim = validation.integer("light_dim", light_dim, low=1)
        emb_dim = validation.integer("emb_dim", emb_dim, low=1)
        self.base = base
        self.light = nn.Sequential(nn.Linear(light_dim, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        nn.init.zeros_(self.light[-1].weight)
        nn.init.zeros_(self.light[-1].bias)

    def forward(self, t, y, batch: int, device):
        if not isinstance(device, torch.device):  # the UNet passes x.device; anything else is checked
            try:
                device = torch.device(device)
            except (RuntimeError, TypeError):
                raise ValueError(f"device must be a torch device like 'cpu' or 'cuda:0'; got "
                                 f"{validation.describe(device)}") from None
            if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
                raise ValueError(f"device {device} is not on this machine ({torch.cuda.device_count()} GPU(s))")
        emb = self.base(t, None, batch, device)
        if y is None:
            return emb
        w = self.light[0].weight
        y = validation.tensor("y", y, ndim=2, batch=emb.shape[0])
        if y.shape[1] != w.shape[1]:
            raise ValueError(f"y must be light features ({emb.shape[0]}, {w.shape[1]}); got {validation.describe(y)}")
        return emb + self.light(y.to(emb.dtype))


class RelightUNet(nn.Module):
    r"""The conditional relighting denoiser :math:`\delta(x_t, t, I_d, L)`.

    Args:
        cond_channels: channels of :math:`I_d` (4: albedo on a grey-0 background, and the mask).
        light_res: the environment map is ``(3, light_res, light_res)``; ``light_cells``: its summary has
            ``3 * light_cells**2`` numbers (:func:`~tinydiff.data.relight.light_features`).
        image_channels, base_channels, channel_mults, num_res_blocks, attn_levels: the UNet.
        prediction: what the output means (``"x0"``, ``"eps"`` or ``"v"``; read by the losses).
    """

    def __init__(self, cond_channels: int = 4, light_res: int = 16, light_cells: int = 4, image_channels: int = 3,
                 base_channels: int = 32, channel_mults=(1, 2), num_res_blocks: int = 1, attn_levels=(),
                 prediction: str = "x0", unet: UNet | None = None):
        super().__init__()
        self.prediction = validation.choice("prediction", prediction, ("eps", "x0", "v"))
        self.cond_channels = validation.integer("cond_channels", cond_channels, low=0)
        light_cells = validation.integer("light_cells", light_cells, low=1)
        image_channels = validation.integer("image_channels", image_channels, low=1)
        self.light_res, self.light_cells = light_res, light_cells
        self.image_channels = image_channels
        if unet is not None and not (isinstance(unet, UNet) or all(hasattr(unet, k) for k in ("embed", "inp"))):
            raise TypeError(f"unet must be a td.models.UNet (or None to build one); got {validation.describe(unet)}")
        if unet is None:
            unet = UNet(image_channels + cond_channels, image_channels, base_channels, channel_mults, num_res_blocks,
                        attn_levels)
        self.unet = unet
        emb_dim = self.unet.embed.mlp[-1].out_features
        w = self.unet.inp.weight
        self.unet.embed = LightEmbedding(self.unet.embed, 3 * light_cells**2, emb_dim).to(w.device, w.dtype)

    @classmethod
    def from_base(cls, base: UNet, cond_channels: int = 4, **kwargs) -> "RelightUNet":
        r"""IC-Light's recipe: take a trained image UNet ``base`` (``image_channels`` in and out), widen its input
        by ``cond_channels`` zero channels and attach the zero-initialised light embedding. The result computes
        exactly ``base(x_t, t)`` until it is trained."""
        if not isinstance(base, UNet):
            raise TypeError(f"base must be a trained td.models.UNet; got {validation.describe(base)}")
        cond_channels = validation.integer("cond_channels", cond_channels, low=1)
        if base.in_channels != base.out_channels:
            raise ValueError(f"base must map an image to an image of the same channels; got {base.in_channels} -> "
                             f"{base.out_channels}")
        widen_input(base, cond_channels)
        return cls(cond_channels=cond_channels, image_channels=base.out_channels, unet=base, **kwargs)

    def add_background(self, channels: int = 3) -> "RelightUNet":
        r"""The background-conditioned variant: ``channels`` more zero-initialised input channels for the
        background (fill them with zeros for a sample without one). Returns ``self``."""
        channels = validation.integer("channels", channels, low=1)
        widen_input(self.unet, channels)
        self.cond_channels += channels
        return self

    def forward(self, x: torch.Tensor, t, cond: torch.Tensor, light: torch.Tensor) -> torch.Tensor:
        x = validation.tensor("x", x, ndim=4, floating=False)
        if not x.is_floating_point() or x.shape[1] != self.image_channels:
            raise ValueError(f"x must be a floating batch of images (B, {self.image_channels}, H, W); got "
                             f"{validation.describe(x)}")
        cond = validation.tensor("cond", cond, ndim=4)
        light = validation.tensor("light", light, ndim=4, batch=x.shape[0])
        if cond.shape[1] != self.cond_channels or cond.shape[0] != x.shape[0] or cond.shape[-2:] != x.shape[-2:]:
            raise ValueError(f"cond must have shape ({x.shape[0]}, {self.cond_channels}, {x.shape[-2]}, "
                             f"{x.shape[-1]}); got {tuple(cond.shape)}")
        f = light_features(light, self.light_cells).to(x.dtype)
        return self.unet(torch.cat([x, cond.to(x.dtype)], 1), t, y=f)


class PhiNet(nn.Module):
    r"""A learned merging map :math:`\phi` for the latent-space consistency loss: a per-pixel MLP (1x1 convs)
    on :func:`tinydiff.relight.phi_inputs` (``5 * channels + 3`` channels) -> ``channels``."""

    def __init__(self, channels: int = 3, hidden: int = 64):
        super().__init__()
        channels = validation.integer("channels", channels, low=1)
        hidden = validation.integer("hidden", hidden, low=1)
        self.net = nn.Sequential(nn.Conv2d(5 * channels + 3, hidden, 1), nn.SiLU(), nn.Conv2d(hidden, hidden, 1),
                                 nn.SiLU(), nn.Conv2d(hidden, channels, 1))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        w = self.net[0].weight
        z = validation.tensor("z", z, ndim=4, floating=False)
        if not z.is_floating_point() or z.dtype != w.dtype or z.shape[1] != w.shape[1]:
            raise ValueError(f"z must be the {w.shape[1]} channels of tinydiff.relight.phi_inputs (B, {w.shape[1]}, H, W) "
                             f"in {w.dtype}; got {validation.describe(z)}")
        return self.net(z)
