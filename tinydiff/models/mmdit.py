r"""MM-DiT (lesson 09): the joint-attention transformer of Stable Diffusion 3 (Esser et al., 2024).

DiT conditions on a *vector* (timestep + class). A caption is a *sequence*; SD3 lets the image tokens and the
text tokens be two streams of one transformer:

- each stream has its own weights: adaLN-Zero modulation, q/k/v projections, output projection and MLP;
- the two streams meet in **one** attention over the concatenated sequence ``[image; text]``, so image
  tokens attend to words, words to image patches, and each to its own kind
  (:math:`\mathrm{softmax}(QK^\top/\sqrt d)V` with :math:`Q = [Q_x; Q_c]`, :math:`K = [K_x; K_c]`, :math:`V = [V_x; V_c]`);
- optional RMSNorm of q and k per head (SD3's QK-normalisation, which keeps the attention logits bounded
  in mixed precision): :math:`\mathrm{RMSNorm}(q) = q / \sqrt{\mathrm{mean}(q^2) + \epsilon}\odot w`;
- the adaLN vector is :math:`e(t)` plus an embedding of the **pooled** caption (SD3 uses CLIP's pooled output;
  here the mean of the text encoder's tokens over the real, unpadded words);
- the last block updates only the image stream (``context_pre_only``: its text tokens are read, not written).

:class:`MMDiT` is a caption-conditional denoiser ``model(x, t, ids, mask)`` with lesson 08's tokenizer and
:class:`tinydiff.models.TextEncoder`; ``td.latent.loss`` trains it with caption dropout, and :func:`eps_fn`
gives the (guided) sampler callable.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .. import validation as V
from .dit import Mlp, TimestepEmbedder, _autocast_on, _features, _mlp_hidden, modulate, patchify, pos_embed_2d, unpatchify
from .text import TextEncoder

__all__ = ["rms_norm", "RMSNorm", "JointAttention", "JointBlock", "MMDiT", "eps_fn", "joint_block_to_diffusers"]


def rms_norm(x: torch.Tensor, weight: torch.Tensor | None = None, eps: float = 1e-6) -> torch.Tensor:
    r""":math:`x / \sqrt{\mathrm{mean}(x^2) + \epsilon}\,\odot w` over the last dimension (no centring, unlike LayerNorm)."""
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise ValueError(f"x must be a floating tensor (..., D); got {V.describe(x)}")
    if weight is not None and (not isinstance(weight, torch.Tensor) or tuple(weight.shape) != tuple(x.shape[-1:])):
        raise ValueError(f"weight must be None or a tensor of shape ({x.shape[-1]},); got {V.describe(weight)}")
    if not (isinstance(eps, (int, float)) and not isinstance(eps, bool) and eps >= 0):
        raise ValueError(f"eps must be a number >= 0; got {V.describe(eps)}")
    out = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)
    return out if weight is None else out * weight


def _streams(x, c, c_mask, w):
    """Check the two token streams of a joint block: ``x`` ``(B, N, D)``, ``c`` ``(B, M, D)`` and ``c_mask`` ``(B, M)``
    (None, or bool/0-1 values)."""
    x = _features("x", x, w.shape[0], w)
    c = _features("c", c, w.shape[0], w, batch=x.shape[0])
    if c_mask is not None:
        c_mask = V.tensor("c_mask", c_mask, ndim=2, floating=False)
        if c_mask.is_floating_point() or tuple(c_mask.shape) != tuple(c.shape[:2]):
            raise ValueError(f"c_mask must be a bool (or integer 0/1) mask of shape {tuple(c.shape[:2])}, one per text "
                             f"token of c; got {V.describe(c_mask)}")
    return x, c, c_mask


class RMSNorm(nn.Module):
    """:func:`rms_norm` with a learned per-feature weight ``w`` (initialised to 1)."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        dim, self.eps = V.integer("dim", dim, low=1), V.number("eps", eps, low=0)
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        x = _features("x", x, self.weight.shape[0], self.weight, ndim=None)
        return rms_norm(x, self.weight, self.eps)


class JointAttention(nn.Module):
    r"""One attention over ``[x; c]`` with separate projections per stream.

    ``forward(x, c, c_mask=None) -> (x_out, c_out)``: ``x`` ``(B, N, D)`` image tokens, ``c`` ``(B, M, D)`` text
    tokens, ``c_mask`` ``(B, M)`` True where a text token may be attended to (image tokens always may).
    With ``context_pre_only`` there is no text output projection and ``c_out`` is None."""

    def __init__(self, dim: int, heads: int, qk_norm: bool = False, context_pre_only: bool = False):
        super().__init__()
        dim, heads = V.integer("dim", dim, low=1), V.integer("heads", heads, low=1)
        if dim % heads:
            raise ValueError(f"heads must divide the hidden size; got dim={dim}, heads={heads}")
        self.heads, self.context_pre_only = heads, context_pre_only
        d = dim // heads
        self.qkv_x, self.qkv_c = nn.Linear(dim, 3 * dim), nn.Linear(dim, 3 * dim)
        self.qk_norm = qk_norm
        if qk_norm:
            self.norm_q_x, self.norm_k_x, self.norm_q_c, self.norm_k_c = (RMSNorm(d) for _ in range(4))
        self.proj_x = nn.Linear(dim, dim)
        self.proj_c = None if context_pre_only else nn.Linear(dim, dim)

    def _heads(self, z):
        B, L, D = z.shape
        return z.reshape(B, L, self.heads, D // self.heads).transpose(1, 2)  # (B, heads, L, d)

    def forward(self, x: torch.Tensor, c: torch.Tensor, c_mask: torch.Tensor | None = None):
        x, c, c_mask = _streams(x, c, c_mask, self.proj_x.weight)
        N = x.shape[1]
        qx, kx, vx = (self._heads(z) for z in self.qkv_x(x).chunk(3, dim=-1))
        qc, kc, vc = (self._heads(z) for z in self.qkv_c(c).chunk(3, dim=-1))
        if self.qk_norm:
            qx, kx, qc, kc = self.norm_q_x(qx), self.norm_k_x(kx), self.norm_q_c(qc), self.norm_k_c(kc)
        q, k, v = torch.cat([qx, qc], 2), torch.cat([kx, kc], 2), torch.cat([vx, vc], 2)  # (B, heads, N + M, d)
        mask = None
        if c_mask is not None:
            keep = torch.cat([c_mask.new_ones(c_mask.shape[0], N), c_mask], dim=1).bool()  # (B, N + M)
            mask = keep[:, None, None, :]
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        out = out.transpose(1, 2).reshape(x.shape[0], -1, x.shape[-1])  # (B, N + M, D)
        x_out, c_out = out[:, :N], out[:, N:]
        return self.proj_x(x_out), (None if self.proj_c is None else self.proj_c(c_out))


class JointBlock(nn.Module):
    r"""The MM-DiT block: two adaLN-Zero streams around one :class:`JointAttention`.

    ``forward(x, c, vec, c_mask=None) -> (x, c)``; ``vec`` ``(B, D)`` is :math:`e(t) + e(\text{pooled caption})`.
    With ``context_pre_only`` (the last block) the text stream is only normalised and modulated (shift, scale)
    to take part in the attention, and the block returns ``c = None``."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0, qk_norm: bool = False,
                 context_pre_only: bool = False):
        super().__init__()
        dim, heads = V.integer("dim", dim, low=1), V.integer("heads", heads, low=1)
        _mlp_hidden(dim, mlp_ratio)
        self.context_pre_only = context_pre_only
        self.norm1_x = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.norm1_c = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.adaLN_x = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))
        self.adaLN_c = nn.Sequential(nn.SiLU(), nn.Linear(dim, (2 if context_pre_only else 6) * dim))
        self.attn = JointAttention(dim, heads, qk_norm, context_pre_only)
        self.norm2_x = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.mlp_x = Mlp(dim, int(dim * mlp_ratio))
        if not context_pre_only:
            self.norm2_c = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
            self.mlp_c = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor, c: torch.Tensor, vec: torch.Tensor, c_mask: torch.Tensor | None = None):
        w = self.attn.proj_x.weight
        x, c, c_mask = _streams(x, c, c_mask, w)
        vec = _features("vec", vec, w.shape[0], w, ndim=2, batch=x.shape[0])
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.adaLN_x(vec).chunk(6, dim=1)
        if self.context_pre_only:
            c_shift_msa, c_scale_msa = self.adaLN_c(vec).chunk(2, dim=1)
        else:
            c_shift_msa, c_scale_msa, c_gate_msa, c_shift_mlp, c_scale_mlp, c_gate_mlp = self.adaLN_c(vec).chunk(6, dim=1)
        ax, ac = self.attn(modulate(self.norm1_x(x), shift_msa, scale_msa),
                           modulate(self.norm1_c(c), c_shift_msa, c_scale_msa), c_mask)
        x = x + gate_msa[:, None] * ax
        x = x + gate_mlp[:, None] * self.mlp_x(modulate(self.norm2_x(x), shift_mlp, scale_mlp))
        if self.context_pre_only:
            return x, None
        c = c + c_gate_msa[:, None] * ac
        c = c + c_gate_mlp[:, None] * self.mlp_c(modulate(self.norm2_c(c), c_shift_mlp, c_scale_mlp))
        return x, c


class MMDiT(nn.Module):
    r"""A small MM-DiT ``model(x, t, ids, mask) -> eps`` conditioned on captions (lesson 08's shapes).

    Args:
        input_size, patch_size, in_channels: the image or latent grid (``H = W = input_size``).
        hidden_size, depth, heads, mlp_ratio: the joint transformer (``depth`` blocks, the last one context-only).
        vocab_size, text_dim, text_layers, max_len: the text encoder :math:`\tau_\theta` (trained jointly).
        qk_norm: RMSNorm on q and k.
    """

    def __init__(self, input_size: int = 8, patch_size: int = 2, in_channels: int = 4, hidden_size: int = 64,
                 depth: int = 4, heads: int = 4, mlp_ratio: float = 4.0, *, vocab_size: int, text_dim: int = 32,
                 text_layers: int = 1, max_len: int = 8, qk_norm: bool = True, time_scale: float = 1.0):
        super().__init__()
        input_size, patch_size = V.integer("input_size", input_size, low=1), V.integer("patch_size", patch_size, low=1)
        depth = V.integer("depth", depth, low=1)
        hidden_size = V.integer("hidden_size", hidden_size, low=4)
        in_channels = V.integer("in_channels", in_channels, low=1)
        text_dim, text_layers = V.integer("text_dim", text_dim, low=1), V.integer("text_layers", text_layers, low=1)
        _mlp_hidden(hidden_size, mlp_ratio)
        if input_size % patch_size:
            raise ValueError(f"input_size ({input_size}) must be divisible by patch_size ({patch_size})")
        self.input_size, self.patch_size, self.in_channels = input_size, patch_size, in_channels
        self.grid, self.hidden_size, self.depth = input_size // patch_size, hidden_size, depth
        self.prediction = "eps"
        self.text = TextEncoder(vocab_size, text_dim, text_layers, heads, max_len)
        self.x_embedder = nn.Linear(patch_size * patch_size * in_channels, hidden_size)  # on patchify(x)
        self.register_buffer("pos_embed", pos_embed_2d(hidden_size, self.grid).float()[None], persistent=False)
        self.context_embedder = nn.Linear(text_dim, hidden_size)
        self.t_embedder = TimestepEmbedder(hidden_size, time_scale=time_scale)
        self.pooled_embedder = nn.Sequential(nn.Linear(text_dim, hidden_size), nn.SiLU(), nn.Linear(hidden_size, hidden_size))
        self.blocks = nn.ModuleList(JointBlock(hidden_size, heads, mlp_ratio, qk_norm, context_pre_only=(i == depth - 1))
                                    for i in range(depth))
        self.norm_out = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.adaLN_out = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 2 * hidden_size))
        self.linear_out = nn.Linear(hidden_size, patch_size * patch_size * in_channels)
        self.initialize_weights()

    def initialize_weights(self) -> None:
        """DiT's recipe (Xavier Linear layers, zero biases, std 0.02 for the timestep MLP) with every adaLN
        regression and the output layer at zero: each joint block starts as the identity on both streams and
        the model's output is 0. The text encoder keeps its own initialisation."""
        for name, m in self.named_modules():
            if isinstance(m, nn.Linear) and not name.startswith("text."):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        nn.init.normal_(self.t_embedder.mlp[0].weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[2].weight, std=0.02)
        for lin in [b.adaLN_x[1] for b in self.blocks] + [b.adaLN_c[1] for b in self.blocks] + [self.adaLN_out[1],
                                                                                                   self.linear_out]:
            nn.init.zeros_(lin.weight)
            nn.init.zeros_(lin.bias)

    def pooled(self, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        r"""Mean of the text tokens ``(B, M, d)`` over the real words (``mask`` True) -> ``(B, d)``."""
        tokens = V.tensor("tokens", tokens, ndim=3)
        mask = V.tensor("mask", mask, ndim=2, floating=False)
        if mask.is_floating_point() or tuple(mask.shape) != tuple(tokens.shape[:2]):
            raise ValueError(f"mask must be a bool (or integer 0/1) mask of shape {tuple(tokens.shape[:2])}, one per "
                             f"token; got {V.describe(mask)}")
        w = mask.to(tokens.dtype)[..., None]
        return (tokens * w).sum(1) / w.sum(1).clamp_min(1.0)

    def forward(self, x: torch.Tensor, t, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        w = self.x_embedder.weight
        x = V.tensor("x", x, floating=False)
        if not x.is_floating_point() or (x.dtype != w.dtype and not _autocast_on(x.device.type)):
            raise ValueError(f"x must be a floating tensor of the model's dtype {w.dtype} (or run under autocast); "
                             f"got {V.describe(x)}")
        ids = V.tensor("ids", ids, ndim=2, floating=False)
        mask = V.tensor("mask", mask, ndim=2, floating=False)
        if t is None or isinstance(t, (str, bytes)):
            raise TypeError(f"t must be timesteps, a number or a tensor (B,); got {V.describe(t)}")
        if x.ndim != 4 or x.shape[1] != self.in_channels or x.shape[-2:] != (self.input_size, self.input_size):
            raise ValueError(f"x must have shape (B, {self.in_channels}, {self.input_size}, {self.input_size}); "
                             f"got {tuple(x.shape)}")
        B = x.shape[0]
        if ids.shape[0] != B or mask.shape != ids.shape:
            raise ValueError(f"ids and mask must be (B={B}, M) caption tokens; got {tuple(ids.shape)}, {tuple(mask.shape)}")
        t = torch.as_tensor(t, device=x.device)
        t = t.expand(B) if t.ndim == 0 else t
        if t.shape != (B,):
            raise ValueError(f"t must have shape ({B},) to match the batch; got {tuple(t.shape)}")
        tau = self.text(ids, mask)  # (B, M, text_dim)
        vec = self.t_embedder(t) + self.pooled_embedder(self.pooled(tau, mask))  # (B, D)
        h = self.x_embedder(patchify(x, self.patch_size)) + self.pos_embed  # (B, N, D)
        c = self.context_embedder(tau)  # (B, M, D)
        for block in self.blocks:
            h, c = block(h, c, vec, mask)  # (B, N, D), (B, M, D) (None after the last block)
        shift, scale = self.adaLN_out(vec).chunk(2, dim=1)
        h = self.linear_out(modulate(self.norm_out(h), shift, scale))  # (B, N, p*p*C)
        return unpatchify(h, self.patch_size, self.grid)  # (B, C, H, W)


def eps_fn(model: MMDiT, ids: torch.Tensor, mask: torch.Tensor, *, gamma: float = 0.0, null=None):
    r"""A sampler-ready ``eps_fn(x, t)`` for the captions ``ids``/``mask`` ``(B, M)``: the conditional
    prediction, or with ``gamma != 0`` classifier-free guidance
    :math:`(1+\gamma)\varepsilon(x, y) - \gamma\varepsilon(x, \varnothing)` (``null = tokenizer.encode("")``),
    both branches in one doubled batch."""
    from .. import guidance

    gamma = V.number("gamma", gamma)
    if gamma and null is None:
        raise ValueError("null: guidance (gamma != 0) needs the null caption, tokenizer.encode('')")
    if not isinstance(model, nn.Module) or not callable(model):
        raise TypeError(f"model must be an MMDiT; got {V.describe(model)}")
    ids, mask = V.tensor("ids", ids, ndim=2, floating=False), V.tensor("mask", mask, ndim=2, floating=False)
    if ids.shape != mask.shape:
        raise ValueError(f"mask must have the shape of ids, {tuple(ids.shape)}; got {V.describe(mask)}")
    model.eval()
    dev = next(model.parameters()).device
    ids, mask = ids.to(dev), mask.to(dev)
    if gamma:
        ids = torch.cat([ids, null[0].to(dev).expand_as(ids)])
        mask = torch.cat([mask, null[1].to(dev).expand_as(mask)])

    def fn(x, t):
        with torch.no_grad():
            if not gamma:
                return model(x, t, ids, mask)
            e_cond, e_null = model(torch.cat([x, x]), torch.cat([t, t]), ids, mask).chunk(2)
            return guidance.cfg(e_null, e_cond, gamma)

    return fn


def joint_block_to_diffusers(block: JointBlock):
    r"""diffusers' ``JointTransformerBlock`` (SD3) with the weights of ``block``; call it as
    ``c, x = ref(hidden_states=x, encoder_hidden_states=c, temb=vec)`` (diffusers returns the text stream first).

    Layouts that differ: diffusers has separate ``to_q/to_k/to_v`` (image) and ``add_q/k/v_proj`` (text) where
    we fuse three projections per stream, and its context-only norm (``AdaLayerNormContinuous``) emits
    ``(scale, shift)`` where ours emits ``(shift, scale)``."""
    from diffusers.models.attention import JointTransformerBlock

    a = block.attn
    D, H = a.qkv_x.in_features, a.heads
    if block.mlp_x.fc1.out_features != 4 * D:
        raise ValueError("block: diffusers' JointTransformerBlock has mlp_ratio 4")
    ref = JointTransformerBlock(D, H, D // H, context_pre_only=block.context_pre_only,
                                qk_norm="rms_norm" if a.qk_norm else None)
    param = next(block.parameters())
    ref = ref.to(dtype=param.dtype, device=param.device)
    sd = {"norm1.linear.weight": block.adaLN_x[1].weight, "norm1.linear.bias": block.adaLN_x[1].bias,
          "attn.to_out.0.weight": a.proj_x.weight, "attn.to_out.0.bias": a.proj_x.bias,
          "ff.net.0.proj.weight": block.mlp_x.fc1.weight, "ff.net.0.proj.bias": block.mlp_x.fc1.bias,
          "ff.net.2.weight": block.mlp_x.fc2.weight, "ff.net.2.bias": block.mlp_x.fc2.bias}
    for n, w, b in zip("qkv", a.qkv_x.weight.chunk(3), a.qkv_x.bias.chunk(3)):
        sd[f"attn.to_{n}.weight"], sd[f"attn.to_{n}.bias"] = w, b
    for n, w, b in zip("qkv", a.qkv_c.weight.chunk(3), a.qkv_c.bias.chunk(3)):
        sd[f"attn.add_{n}_proj.weight"], sd[f"attn.add_{n}_proj.bias"] = w, b
    if a.qk_norm:
        sd.update({"attn.norm_q.weight": a.norm_q_x.weight, "attn.norm_k.weight": a.norm_k_x.weight,
                   "attn.norm_added_q.weight": a.norm_q_c.weight, "attn.norm_added_k.weight": a.norm_k_c.weight})
    if block.context_pre_only:
        shift_w, scale_w = block.adaLN_c[1].weight.chunk(2)
        shift_b, scale_b = block.adaLN_c[1].bias.chunk(2)
        sd["norm1_context.linear.weight"] = torch.cat([scale_w, shift_w])
        sd["norm1_context.linear.bias"] = torch.cat([scale_b, shift_b])
    else:
        sd.update({"norm1_context.linear.weight": block.adaLN_c[1].weight,
                   "norm1_context.linear.bias": block.adaLN_c[1].bias,
                   "attn.to_add_out.weight": a.proj_c.weight, "attn.to_add_out.bias": a.proj_c.bias,
                   "ff_context.net.0.proj.weight": block.mlp_c.fc1.weight,
                   "ff_context.net.0.proj.bias": block.mlp_c.fc1.bias,
                   "ff_context.net.2.weight": block.mlp_c.fc2.weight, "ff_context.net.2.bias": block.mlp_c.fc2.bias})
    ref.load_state_dict({k: v.detach().clone() for k, v in sd.items()}, strict=True)
    return ref.eval()
