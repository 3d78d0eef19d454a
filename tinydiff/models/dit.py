r"""DiT (lesson 09): a diffusion transformer over image patches, in one readable file.

Peebles & Xie, *Scalable Diffusion Models with Transformers* (2023). An image (or a latent) ``(B, C, H, W)``
is cut into ``p x p`` patches, each patch becomes a token, fixed 2-D sin-cos position embeddings are
added, and a stack of transformer blocks is conditioned on the timestep :math:`t` and the class :math:`y`
in one of four ways (``cond=``, DiT's Figure 3 and 5):

- ``"adaln_zero"``: adaptive layer norm whose shift/scale come from :math:`c = e(t) + e(y)`, plus a gate
  :math:`\alpha(c)` on each residual branch, :math:`x + \alpha(c)\odot f(\mathrm{adaLN}(x; c))`, with the
  regression of :math:`(\beta, \gamma, \alpha)` initialised to **zero**, so every block starts as the identity;
- ``"adaln"``: the same shift and scale, no gate, ordinary initialisation;
- ``"cross_attn"``: the two vectors :math:`e(t), e(y)` form a length-2 sequence that every block
  cross-attends to after its self-attention (plain LayerNorms);
- ``"in_context"``: :math:`e(t), e(y)` are appended to the patch tokens as two extra tokens and removed
  after the last block (a plain ViT).

adaLN (eq. of the lecture): :math:`\mathrm{adaLN}(x; c) = \frac{x - \mathrm E[x]}{\sqrt{\mathrm{Var}[x] + \epsilon}}
\odot(1 + \gamma(c)) + \beta(c)`, i.e. LayerNorm without affine parameters followed by :func:`modulate`.

The model is a denoiser like :class:`tinydiff.models.UNet`: ``model(x, t, y=None)`` with ``t`` a LongTensor of
discrete steps, ``y`` labels with index ``num_classes`` the null label :math:`\varnothing` (classifier-free
guidance), returning the prediction named by ``model.prediction`` (``"eps"``, ``"x0"`` or ``"v"``), of the
input's shape. With ``learn_sigma=True`` the network has ``2C`` output channels and
``model(x, t, y, return_sigma=True)`` also returns the ``C`` channels that interpolate the log-variance
(improved DDPM); the plain call returns the prediction only, so every sampler takes it unchanged.

Attention is ``torch.nn.functional.scaled_dot_product_attention`` (fused on a GPU); mixed precision comes
from the autocast inside :func:`tinydiff.train.fit`, so the same code runs on a CPU in float32.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .. import validation as V
from .embeddings import timestep_embedding

__all__ = [
    "CONDITIONING", "DIT_SIZES", "patchify", "unpatchify", "pos_embed_1d", "pos_embed_2d", "modulate",
    "adaln", "Attention", "Mlp", "TimestepEmbedder", "LabelEmbedder", "DiTBlock", "FinalLayer", "DiT",
    "dit_to_diffusers", "param_count", "flops",
]

CONDITIONING = ("adaln_zero", "adaln", "cross_attn", "in_context")

# (depth, hidden size, heads): DiT's Table 1 (S, B, L, XL) and two sizes small enough for a CPU.
DIT_SIZES = {"XL": (28, 1152, 16), "L": (24, 1024, 16), "B": (12, 768, 12), "S": (12, 384, 6),
             "mini": (6, 128, 4), "tiny": (4, 64, 4)}


# ------------------------------------------------------------------------------------------ patches
def _autocast_on(device_type: str) -> bool:
    """Whether autocast is active for this device type (False for types autocast does not know, e.g. meta)."""
    try:
        return torch.is_autocast_enabled(device_type)
    except RuntimeError:
        return False


def _features(name: str, x, dim: int, ref: torch.Tensor, *, ndim=3, batch: int | None = None) -> torch.Tensor:
    """Check the input of a layer (metadata only, no host sync): a floating tensor of rank ``ndim`` (None: any rank
    >= 1) whose last dimension is ``dim``, in the dtype of the layer's parameter ``ref`` (any float under autocast),
    with ``batch`` rows when given."""
    x = V.tensor(name, x, floating=False, ndim=ndim)
    if not x.is_floating_point() or (x.dtype != ref.dtype and not _autocast_on(x.device.type)):
        raise ValueError(f"{name} must be a floating tensor of the layer's dtype {ref.dtype} (or run under autocast); "
                         f"got {V.describe(x)}")
    if x.ndim == 0 or x.shape[-1] != dim:
        raise ValueError(f"{name} must have {dim} features in its last dimension; got {V.describe(x)}")
    if batch is not None and x.shape[0] != batch:
        raise ValueError(f"{name} must have batch size {batch} (that of x); got {V.describe(x)}")
    return x


def patchify(x: torch.Tensor, p: int) -> torch.Tensor:
    r"""Cut images ``(B, C, H, W)`` into ``N = (H/p)(W/p)`` tokens of ``p*p*C`` numbers, ``(B, N, p*p*C)``.

    Token ``n = i*(W/p) + j`` is the patch in row ``i``, column ``j`` (row-major, as in DiT); inside a token the
    numbers run over (row in patch, column in patch, channel): the layout DiT's final layer writes and
    :func:`unpatchify` reads."""
    p = V.integer("p", p, low=1)
    x = V.tensor("x", x, ndim=4, floating=False)
    B, C, H, W = x.shape
    if H % p or W % p:
        raise ValueError(f"x: H and W must be divisible by the patch size p={p}; got {H}x{W}")
    h, w = H // p, W // p
    x = x.reshape(B, C, h, p, w, p)  # (B, C, h, p, w, q)
    return torch.einsum("bchpwq->bhwpqc", x).reshape(B, h * w, p * p * C)


def unpatchify(tokens: torch.Tensor, p: int, h: int, w: int | None = None) -> torch.Tensor:
    r"""The inverse of :func:`patchify`: ``(B, h*w, p*p*C)`` -> ``(B, C, h*p, w*p)`` (DiT's ``unpatchify``)."""
    p = V.integer("p", p, low=1)
    h = V.integer("h", h, low=1)
    w = h if w is None else V.integer("w", w, low=1)
    tokens = V.tensor("tokens", tokens, ndim=3, floating=False)
    B, N, D = tokens.shape
    if N != h * w or D % (p * p):
        raise ValueError(f"tokens: expected (B, {h}*{w}, p*p*C) with p={p}; got {tuple(tokens.shape)}")
    C = D // (p * p)
    x = tokens.reshape(B, h, w, p, p, C)
    return torch.einsum("bhwpqc->bchpwq", x).reshape(B, C, h * p, w * p)


# ------------------------------------------------------------------------------------------ positions
def pos_embed_1d(dim: int, pos: torch.Tensor) -> torch.Tensor:
    r"""Transformer sin-cos features of positions ``pos`` ``(M,)``: :math:`[\sin(\omega_k m), \cos(\omega_k m)]`,
    :math:`\omega_k = 10000^{-k/(dim/2)}`, :math:`k = 0..dim/2-1` -> ``(M, dim)`` in float64."""
    dim = V.integer("dim", dim, low=2)
    if dim % 2:
        raise ValueError(f"dim must be even; got {dim}")
    pos = V.tensor("pos", pos, floating=False)
    omega = 1.0 / 10000 ** (torch.arange(dim // 2, dtype=torch.float64) / (dim / 2))
    out = pos.double().reshape(-1)[:, None] * omega[None]
    return torch.cat([out.sin(), out.cos()], dim=1)


def pos_embed_2d(dim: int, h: int, w: int | None = None) -> torch.Tensor:
    r"""Fixed 2-D sin-cos position embedding of an ``h x w`` token grid, ``(h*w, dim)`` float64, token order
    row-major like :func:`patchify`. The first ``dim/2`` features encode the **column** ``j`` and the last
    ``dim/2`` the **row** ``i`` (MAE's and DiT's ``get_2d_sincos_pos_embed``: their ``emb_h`` is computed from
    ``grid[0]``, which ``np.meshgrid(grid_w, grid_h)`` fills with the column index)."""
    dim = V.integer("dim", dim, low=4)
    if dim % 4:
        raise ValueError(f"dim must be divisible by 4 (two sin-cos halves); got {dim}")
    h = V.integer("h", h, low=1)
    w = h if w is None else V.integer("w", w, low=1)
    rows, cols = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    return torch.cat([pos_embed_1d(dim // 2, cols), pos_embed_1d(dim // 2, rows)], dim=1)


# ------------------------------------------------------------------------------------------ adaLN
def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    r"""Per-sample affine modulation of tokens ``x`` ``(B, N, D)``: :math:`x\odot(1 + \gamma) + \beta` with
    ``scale`` :math:`\gamma` and ``shift`` :math:`\beta` ``(B, D)``. The ``1 +`` makes :math:`\gamma = 0` the identity."""
    _check_modulation(x, shift, scale)
    return x * (1 + scale[:, None]) + shift[:, None]


def _check_modulation(x, shift, scale) -> None:
    """Shapes only (no values are read: this runs inside every forward pass)."""
    for name, v in (("x", x), ("shift", shift), ("scale", scale)):
        if not isinstance(v, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor; got {V.describe(v)}")
    if x.ndim != 3:
        raise ValueError(f"x must be tokens (B, N, D); got {V.describe(x)}")
    for name, v in (("shift", shift), ("scale", scale)):
        if tuple(v.shape) != (x.shape[0], x.shape[-1]):
            raise ValueError(f"{name} must have shape ({x.shape[0]}, {x.shape[-1]}), one vector per sample of x; "
                             f"got {V.describe(v)}")


def adaln(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    r"""Adaptive layer norm :math:`\frac{x - \mathrm E[x]}{\sqrt{\mathrm{Var}[x] + \epsilon}}\odot(1+\gamma(c)) + \beta(c)`
    (mean and biased variance over the last dimension): ``F.layer_norm`` without affine, then :func:`modulate`."""
    eps = V.number("eps", eps, low=0)
    _check_modulation(x, shift, scale)
    if not x.is_floating_point():
        raise ValueError(f"x must be a floating tensor; got {V.describe(x)}")
    return modulate(F.layer_norm(x, x.shape[-1:], eps=eps), shift, scale)


# ------------------------------------------------------------------------------------------ layers
class Attention(nn.Module):
    r"""Multi-head attention :math:`\mathrm{softmax}(QK^\top/\sqrt{d})V` of tokens ``x`` ``(B, N, D)`` over
    themselves, or over ``context`` ``(B, M, D_c)`` when built with ``context_dim`` (cross-attention).
    Self-attention uses one fused ``qkv`` projection as in DiT."""

    def __init__(self, dim: int, heads: int, context_dim: int | None = None):
        super().__init__()
        dim, heads = V.integer("dim", dim, low=1), V.integer("heads", heads, low=1)
        if context_dim is not None:
            context_dim = V.integer("context_dim", context_dim, low=1)
        if dim % heads:
            raise ValueError(f"heads must divide the hidden size; got dim={dim}, heads={heads}")
        self.heads, self.context_dim = heads, context_dim
        if context_dim is None:
            self.qkv = nn.Linear(dim, 3 * dim)
        else:
            self.q, self.kv = nn.Linear(dim, dim), nn.Linear(context_dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)

    def _heads(self, z):
        B, L, D = z.shape
        return z.reshape(B, L, self.heads, D // self.heads).transpose(1, 2)  # (B, heads, L, d)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        w = self.proj.weight
        x = _features("x", x, w.shape[0], w)
        if self.context_dim is None:
            if context is not None:
                raise ValueError("context: this Attention is self-attention (built without context_dim), so it takes "
                                 f"no context; got {V.describe(context)}")
            q, k, v = self.qkv(x).chunk(3, dim=-1)
        else:
            context = _features("context", context, self.context_dim, w, batch=x.shape[0])
            q, (k, v) = self.q(x), self.kv(context).chunk(2, dim=-1)
        out = F.scaled_dot_product_attention(self._heads(q), self._heads(k), self._heads(v))  # (B, heads, N, d)
        return self.proj(out.transpose(1, 2).reshape(x.shape))


class Mlp(nn.Module):
    """The transformer's feed-forward layer: Linear -> GELU (tanh approximation, as DiT) -> Linear."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        dim, hidden = V.integer("dim", dim, low=1), V.integer("hidden", hidden, low=1)
        self.fc1, self.fc2 = nn.Linear(dim, hidden), nn.Linear(hidden, dim)

    def forward(self, x):
        x = _features("x", x, self.fc1.in_features, self.fc1.weight, ndim=None)
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))


class TimestepEmbedder(nn.Module):
    r""":math:`e(t) = W_2\,\mathrm{SiLU}(W_1\,\phi(t))` with :math:`\phi` the 256-wide sinusoidal embedding
    :func:`tinydiff.models.timestep_embedding` (:math:`[\cos, \sin]`, :math:`\omega_i = 10^{-4i/128}`: DiT's)."""

    def __init__(self, dim: int, freq_dim: int = 256, time_scale: float = 1.0):
        super().__init__()
        dim, freq_dim = V.integer("dim", dim, low=1), V.integer("freq_dim", freq_dim, low=2)
        self.freq_dim, self.time_scale = freq_dim, time_scale
        self.mlp = nn.Sequential(nn.Linear(freq_dim, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"t must be a torch.Tensor of timesteps (B,); got {V.describe(t)}")
        phi = timestep_embedding(t.float() * self.time_scale, self.freq_dim)
        return self.mlp(phi.to(self.mlp[0].weight.dtype))


class LabelEmbedder(nn.Module):
    r""":math:`e(y)`: a table of ``num_classes + 1`` vectors; row ``num_classes`` is the null label :math:`\varnothing`
    (label dropout for classifier-free guidance happens in the loss, :func:`tinydiff.guidance.cfg_loss`)."""

    def __init__(self, num_classes: int, dim: int):
        super().__init__()
        num_classes, dim = V.integer("num_classes", num_classes, low=1), V.integer("dim", dim, low=1)
        self.num_classes = num_classes
        self.table = nn.Embedding(num_classes + 1, dim)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        if not isinstance(y, torch.Tensor) or y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
            raise ValueError(f"y must be an integer tensor of labels in 0..{self.num_classes}; got {V.describe(y)}")
        # the values are checked on the CPU only (elsewhere the check would be a host sync on every forward)
        if y.device.type == "cpu" and y.numel() and (int(y.min()) < 0 or int(y.max()) > self.num_classes):
            raise ValueError(f"y must hold labels in 0..{self.num_classes} ({self.num_classes} is the null label); got "
                             f"values from {int(y.min())} to {int(y.max())}")
        return self.table(y)


def _mlp_hidden(dim: int, mlp_ratio) -> int:
    mlp_ratio = V.number("mlp_ratio", mlp_ratio, low=0, strict_low=True)
    if int(dim * mlp_ratio) < 1:
        raise ValueError(f"mlp_ratio must give an MLP of at least 1 unit (dim * mlp_ratio >= 1); got {mlp_ratio:g}")
    return int(dim * mlp_ratio)


class DiTBlock(nn.Module):
    r"""One transformer block conditioned on ``c`` in the way ``cond`` names (see the module docstring).

    ``forward(x, c)``: ``x`` ``(B, N, D)`` tokens; ``c`` ``(B, D)`` for the adaLN variants, ``(B, 2, D)`` (the
    tokens :math:`e(t), e(y)`) for ``"cross_attn"``, unused for ``"in_context"`` (the tokens are in ``x``)."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0, cond: str = "adaln_zero"):
        super().__init__()
        self.cond = V.choice("cond", cond, CONDITIONING)
        dim, heads = V.integer("dim", dim, low=1), V.integer("heads", heads, low=1)
        _mlp_hidden(dim, mlp_ratio)
        adaptive = cond in ("adaln_zero", "adaln")
        # adaLN's norms have no affine parameters of their own (the modulation supplies them).
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=not adaptive, eps=1e-6)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=not adaptive, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        if adaptive:
            n = 6 if cond == "adaln_zero" else 4  # (shift, scale[, gate]) for attention and for the MLP
            self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, n * dim))
        if cond == "cross_attn":
            self.norm_x = nn.LayerNorm(dim, eps=1e-6)
            self.cross = Attention(dim, heads, context_dim=dim)

    def _inputs(self, x, c):
        w = self.attn.proj.weight
        x = _features("x", x, w.shape[0], w)
        if self.cond in ("adaln_zero", "adaln"):
            c = _features("c", c, w.shape[0], w, ndim=2, batch=x.shape[0])
        elif self.cond == "cross_attn":
            c = _features("c", c, w.shape[0], w, batch=x.shape[0])
        return x, c

    def forward(self, x: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        x, c = self._inputs(x, c)
        if self.cond == "adaln_zero":
            shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.adaLN_modulation(c).chunk(6, dim=1)
            x = x + gate_msa[:, None] * self.attn(modulate(self.norm1(x), shift_msa, scale_msa))
            return x + gate_mlp[:, None] * self.mlp(modulate(self.norm2(x), shift_mlp, scale_mlp))
        if self.cond == "adaln":
            shift_msa, scale_msa, shift_mlp, scale_mlp = self.adaLN_modulation(c).chunk(4, dim=1)
            x = x + self.attn(modulate(self.norm1(x), shift_msa, scale_msa))
            return x + self.mlp(modulate(self.norm2(x), shift_mlp, scale_mlp))
        x = x + self.attn(self.norm1(x))
        if self.cond == "cross_attn":
            x = x + self.cross(self.norm_x(x), c)  # queries: patches; keys/values: [e(t), e(y)]
        return x + self.mlp(self.norm2(x))


class FinalLayer(nn.Module):
    r"""LayerNorm (adaptive for the adaLN variants) and a linear map from each token to its ``p*p*C_out`` pixels."""

    def __init__(self, dim: int, p: int, out_channels: int, adaptive: bool):
        super().__init__()
        dim, p = V.integer("dim", dim, low=1), V.integer("p", p, low=1)
        out_channels = V.integer("out_channels", out_channels, low=1)
        self.adaptive = adaptive
        self.norm = nn.LayerNorm(dim, elementwise_affine=not adaptive, eps=1e-6)
        self.linear = nn.Linear(dim, p * p * out_channels)
        if adaptive:
            self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 2 * dim))

    def forward(self, x: torch.Tensor, c: torch.Tensor | None) -> torch.Tensor:
        w = self.linear.weight
        x = _features("x", x, w.shape[1], w)
        if self.adaptive:
            c = _features("c", c, w.shape[1], w, ndim=2, batch=x.shape[0])
            shift, scale = self.adaLN_modulation(c).chunk(2, dim=1)
            return self.linear(modulate(self.norm(x), shift, scale))
        return self.linear(self.norm(x))


# ------------------------------------------------------------------------------------------ the model
class DiT(nn.Module):
    r"""A diffusion transformer ``model(x, t, y=None) -> prediction`` for images or latents ``(B, C, H, W)``.

    Args:
        input_size: ``H = W`` of the input; must be divisible by ``patch_size``.
        patch_size: ``p``; the model sees ``(H/p)^2`` tokens (DiT's "/2", "/4", "/8").
        in_channels: ``C``.
        hidden_size, depth, heads, mlp_ratio: the transformer (:data:`DIT_SIZES` has DiT's presets; see :meth:`from_preset`).
        num_classes: class-conditional with a null label ``num_classes`` (``y=None`` means "no label");
            ``None``: unconditional on labels (the timestep still conditions the blocks).
        cond: how ``(t, y)`` enter the blocks, one of :data:`CONDITIONING`.
        prediction: what the output is, ``"eps"``, ``"x0"`` or ``"v"`` (read by the training loss and samplers).
        learn_sigma: add ``C`` output channels for the variance interpolation (``return_sigma=True``).
        time_scale: ``t`` is multiplied by it before embedding (1 for steps 0..T, 1000 for ``t`` in [0, 1]).
    """

    def __init__(self, input_size: int = 8, patch_size: int = 2, in_channels: int = 1, hidden_size: int = 64,
                 depth: int = 4, heads: int = 4, mlp_ratio: float = 4.0, num_classes: int | None = 10,
                 cond: str = "adaln_zero", prediction: str = "eps", learn_sigma: bool = False,
                 time_scale: float = 1.0):
        super().__init__()
        self.cond = V.choice("cond", cond, CONDITIONING)
        self.prediction = V.choice("prediction", prediction, ("eps", "x0", "v"))
        input_size, patch_size = V.integer("input_size", input_size, low=1), V.integer("patch_size", patch_size, low=1)
        if input_size % patch_size:
            raise ValueError(f"input_size ({input_size}) must be divisible by patch_size ({patch_size})")
        hidden_size = V.integer("hidden_size", hidden_size, low=4)
        in_channels = V.integer("in_channels", in_channels, low=1)
        depth, heads = V.integer("depth", depth, low=1), V.integer("heads", heads, low=1)
        if num_classes is not None:
            num_classes = V.integer("num_classes", num_classes, low=0)
        if hidden_size % 4:
            raise ValueError(f"hidden_size must be divisible by 4 (2-D sin-cos positions); got {hidden_size}")
        if hidden_size % heads:
            raise ValueError(f"heads must divide hidden_size; got hidden_size={hidden_size}, heads={heads}")
        _mlp_hidden(hidden_size, mlp_ratio)
        self.input_size, self.patch_size, self.in_channels = input_size, patch_size, in_channels
        self.learn_sigma = learn_sigma
        self.out_channels = 2 * in_channels if learn_sigma else in_channels
        self.hidden_size, self.depth, self.heads, self.mlp_ratio = hidden_size, depth, heads, mlp_ratio
        self.grid = input_size // patch_size
        self.num_classes = num_classes

        self.x_embedder = nn.Conv2d(in_channels, hidden_size, patch_size, stride=patch_size)  # a linear map per patch
        self.register_buffer("pos_embed", pos_embed_2d(hidden_size, self.grid).float()[None], persistent=False)
        self.t_embedder = TimestepEmbedder(hidden_size, time_scale=time_scale)
        self.y_embedder = LabelEmbedder(num_classes, hidden_size) if num_classes else None
        self.blocks = nn.ModuleList(DiTBlock(hidden_size, heads, mlp_ratio, cond) for _ in range(depth))
        self.final_layer = FinalLayer(hidden_size, patch_size, self.out_channels, cond in ("adaln_zero", "adaln"))
        self.initialize_weights()

    @classmethod
    def from_preset(cls, name: str, **kwargs) -> "DiT":
        """A DiT from a preset name ``"<size>/<patch>"``, e.g. ``DiT.from_preset("S/2", input_size=32, in_channels=4)``;
        sizes are the keys of :data:`DIT_SIZES` (DiT's S, B, L, XL and the CPU-sized ``mini``, ``tiny``)."""
        size, _, patch = str(name).partition("/")
        if size not in DIT_SIZES or not patch.isdigit():
            raise ValueError(f"name must be '<size>/<patch>' with size in {sorted(DIT_SIZES)}, e.g. 'S/2'; got {name!r}")
        depth, hidden, heads = DIT_SIZES[size]
        return cls(patch_size=int(patch), hidden_size=hidden, depth=depth, heads=heads, **kwargs)

    @property
    def embed(self):
        """The label embedder (``.num_classes`` is the null label), where :func:`tinydiff.guidance.cfg_eps_fn` looks."""
        return self.y_embedder

    @property
    def num_tokens(self) -> int:
        return self.grid * self.grid

    def initialize_weights(self) -> None:
        r"""DiT's initialisation, in one place.

        - every Linear: Xavier-uniform weights, zero bias (the ViT default);
        - the patch embedding: Xavier-uniform on the conv weight viewed as a ``(D, C p p)`` matrix (it is a
          linear map of each patch);
        - the label table and the timestep MLP: normal with std 0.02;
        - **zero**: for ``"adaln_zero"`` the last Linear of every block's ``adaLN_modulation``, so that
          :math:`\beta = \gamma = \alpha = 0` and each block is the identity :math:`x + 0\cdot f(x)`; for every variant the final
          layer's adaLN regression and its output Linear, so the model's output is exactly 0 at step 0. The output
          Linear still gets a gradient (its input, the normalised tokens, is not zero); once it has moved, the
          gradient reaches the gates, and from them every block.
        """
        def basic(m):
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)

        self.apply(basic)
        w = self.x_embedder.weight.data
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.zeros_(self.x_embedder.bias)
        if self.y_embedder is not None:
            nn.init.normal_(self.y_embedder.table.weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[0].weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[2].weight, std=0.02)
        if self.cond == "adaln_zero":
            for block in self.blocks:
                nn.init.zeros_(block.adaLN_modulation[-1].weight)
                nn.init.zeros_(block.adaLN_modulation[-1].bias)
        if self.final_layer.adaptive:
            nn.init.zeros_(self.final_layer.adaLN_modulation[-1].weight)
            nn.init.zeros_(self.final_layer.adaLN_modulation[-1].bias)
        nn.init.zeros_(self.final_layer.linear.weight)
        nn.init.zeros_(self.final_layer.linear.bias)

    def _labels(self, y, batch: int, device) -> torch.Tensor:
        if y is None:
            return torch.full((batch,), self.num_classes, dtype=torch.long, device=device)  # the null label
        y = torch.as_tensor(y, device=device)
        if y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
            raise ValueError(f"y must be ({batch},) integer labels in 0..{self.num_classes - 1}, or {self.num_classes} "
                             f"for the null label; got {tuple(y.shape)} {y.dtype}")
        bad_values = y.device.type != "meta" and bool(((y < 0) | (y > self.num_classes)).any())  # meta: no values
        if y.is_floating_point() or y.shape != (batch,) or bad_values:
            raise ValueError(f"y must be ({batch},) integer labels in 0..{self.num_classes - 1}, or {self.num_classes} "
                             f"for the null label; got {tuple(y.shape)} {y.dtype}")
        return y.long()

    def forward(self, x: torch.Tensor, t, y=None, *, return_sigma: bool = False):
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"x must be a torch.Tensor (B, {self.in_channels}, {self.input_size}, {self.input_size}); "
                            f"got {V.describe(x)}")
        if x.ndim != 4 or x.shape[1] != self.in_channels or x.shape[-2:] != (self.input_size, self.input_size):
            raise ValueError(f"x must have shape (B, {self.in_channels}, {self.input_size}, {self.input_size}); "
                             f"got {tuple(x.shape)}")
        w = self.x_embedder.weight
        if not x.is_floating_point() or (x.dtype != w.dtype and not _autocast_on(x.device.type)):
            raise ValueError(f"x must be a floating tensor of the model's dtype {w.dtype} (or run under autocast); "
                             f"got {V.describe(x)}")
        if t is None or isinstance(t, (str, bytes)):
            raise TypeError(f"t must be timesteps, an int or a tensor (B,); got {V.describe(t)}")
        B = x.shape[0]
        t = torch.as_tensor(t, device=x.device)
        t = t.expand(B) if t.ndim == 0 else t
        if t.shape != (B,):
            raise ValueError(f"t must have shape ({B},) to match the batch; got {tuple(t.shape)}")
        h = self.x_embedder(x).flatten(2).transpose(1, 2) + self.pos_embed  # (B, N, D), N = (H/p)(W/p)
        c_t = self.t_embedder(t)  # (B, D)
        if self.y_embedder is not None:
            c_y = self.y_embedder(self._labels(y, B, x.device))  # (B, D)
        elif y is not None:
            raise ValueError("this DiT was built with num_classes=None, so it takes no labels y")
        else:
            c_y = torch.zeros_like(c_t)
        if self.cond in ("adaln_zero", "adaln"):
            c = c_t + c_y  # (B, D): one conditioning vector
        else:
            c = torch.stack([c_t, c_y], dim=1)  # (B, 2, D): two conditioning tokens
        if self.cond == "in_context":
            h = torch.cat([h, c], dim=1)  # (B, N + 2, D)
        for block in self.blocks:
            h = block(h, c)  # (B, N[+2], D)
        if self.cond == "in_context":
            h = h[:, :self.num_tokens]  # drop the two conditioning tokens
        h = self.final_layer(h, c if self.final_layer.adaptive else None)  # (B, N, p*p*C_out)
        out = unpatchify(h, self.patch_size, self.grid)  # (B, C_out, H, W)
        if not self.learn_sigma:
            return out
        pred, var = out.split(self.in_channels, dim=1)
        return (pred, var) if return_sigma else pred


# ------------------------------------------------------------------------------------------ cost
def _dit(name, model):
    if not isinstance(model, DiT):
        raise TypeError(f"{name} must be a tinydiff.models.dit.DiT (the formulas read its sizes); got "
                        f"{V.describe(model)}")
    return model


def param_count(model: DiT) -> int:
    r"""The number of parameters of a :class:`DiT`, by formula (``D`` hidden, ``r`` MLP ratio, ``n`` = 6 or 4
    modulation vectors, ``C p^2`` numbers per patch in and ``C_o p^2`` out):

    embeddings :math:`(Cp^2 + 1)D + (256 + 1)D + (D + 1)D + (K + 1)D`; per block attention :math:`4D^2 + 4D`,
    MLP :math:`2rD^2 + rD + D`, plus :math:`nD^2 + nD` (adaLN) or :math:`4D^2 + 4D + 6D` (cross-attention and its
    norm; plain LayerNorms have :math:`2D` each); final layer :math:`(D + 1)C_op^2` plus :math:`2D^2 + 2D` (adaptive)."""
    _dit("model", model)
    D, r, p = model.hidden_size, model.mlp_ratio, model.patch_size
    hid = int(D * r)
    n = model.in_channels * p * p * D + D + 256 * D + D + D * D + D
    n += 0 if model.y_embedder is None else (model.num_classes + 1) * D
    block = 4 * D * D + 4 * D + D * hid + hid + hid * D + D
    if model.cond in ("adaln_zero", "adaln"):
        k = 6 if model.cond == "adaln_zero" else 4
        block += k * D * D + k * D
    else:
        block += 4 * D  # two LayerNorms with affine parameters
        if model.cond == "cross_attn":
            block += 2 * D + 4 * D * D + 4 * D
    n += model.depth * block
    n += D * p * p * model.out_channels + p * p * model.out_channels
    n += 2 * D * D + 2 * D if model.final_layer.adaptive else 2 * D
    return n


def flops(model: DiT) -> int:
    r"""Forward FLOPs per sample of a :class:`DiT`, counting **2 per multiply-add** of the matrix products and
    ignoring element-wise work (the convention of ``torch.utils.flop_counter``). DiT's Table 4 reports
    multiply-adds ("Gflops" = half of this): 118.6 for DiT-XL/2 on 32x32x4 latents.

    With ``N`` tokens (``N + 2`` in context), per block: projections :math:`12 N D^2` (q, k, v, output and an MLP of
    ratio 4), attention :math:`2N^2D` (:math:`QK^\top` and the average of ``V``), the modulation :math:`nD^2`,
    and for cross-attention :math:`2ND^2 + 2\cdot 2D^2 + 2\cdot 2ND` over the two conditioning tokens."""
    _dit("model", model)
    D, p, N = model.hidden_size, model.patch_size, model.num_tokens
    hid = int(D * model.mlp_ratio)
    macs = N * model.in_channels * p * p * D + 256 * D + D * D  # patch embedding, timestep MLP
    n_tok = N + 2 if model.cond == "in_context" else N
    block = n_tok * (4 * D * D + 2 * D * hid) + 2 * n_tok * n_tok * D
    if model.cond in ("adaln_zero", "adaln"):
        block += (6 if model.cond == "adaln_zero" else 4) * D * D
    if model.cond == "cross_attn":
        block += 2 * N * D * D + 2 * 2 * D * D + 2 * N * 2 * D
    macs += model.depth * block
    macs += N * D * p * p * model.out_channels + (2 * D * D if model.final_layer.adaptive else 0)
    return 2 * macs


# ------------------------------------------------------------------------------------------ diffusers
def dit_to_diffusers(model: DiT, *, match_paper: bool = True):
    r"""The same network as diffusers' ``DiTTransformer2DModel`` with this model's weights (adaLN-Zero,
    class-conditional models only). Call it as ``ref(x, timestep=t, class_labels=y).sample``.

    diffusers' DiT differs from the paper's reference code in two settings, which ``match_paper=True`` sets:

    - its timestep features use ``downscale_freq_shift=1``, frequencies :math:`10^{-4i/(128-1)}`, where the paper
      has :math:`10^{-4i/128}` (we set ``time_proj.downscale_freq_shift = 0`` on every block);
    - the LayerNorm before the MLP uses ``norm_eps`` (default ``1e-5``; the paper's is ``1e-6``).

    It also keeps one copy of the timestep/label embedder per block (we copy ours into each).
    """
    from diffusers import DiTTransformer2DModel
    from diffusers.utils import logging as dlogging

    if model.cond != "adaln_zero" or model.y_embedder is None:
        raise ValueError("model: only a class-conditional adaLN-Zero DiT has a diffusers twin; "
                         f"got cond={model.cond!r}, num_classes={model.num_classes}")
    if model.mlp_ratio != 4.0:
        raise ValueError(f"model: diffusers' DiT has mlp_ratio 4; got {model.mlp_ratio}")
    D, H = model.hidden_size, model.heads
    ref = DiTTransformer2DModel(num_attention_heads=H, attention_head_dim=D // H, in_channels=model.in_channels,
                                out_channels=model.out_channels, num_layers=model.depth,
                                sample_size=model.input_size, patch_size=model.patch_size,
                                num_embeds_ada_norm=model.num_classes, norm_eps=1e-6 if match_paper else 1e-5)
    sd = {"pos_embed.proj.weight": model.x_embedder.weight, "pos_embed.proj.bias": model.x_embedder.bias,
          "proj_out_1.weight": model.final_layer.adaLN_modulation[1].weight,
          "proj_out_1.bias": model.final_layer.adaLN_modulation[1].bias,
          "proj_out_2.weight": model.final_layer.linear.weight, "proj_out_2.bias": model.final_layer.linear.bias}
    for i, b in enumerate(model.blocks):
        k = f"transformer_blocks.{i}."
        e = k + "norm1.emb."
        sd[e + "timestep_embedder.linear_1.weight"] = model.t_embedder.mlp[0].weight
        sd[e + "timestep_embedder.linear_1.bias"] = model.t_embedder.mlp[0].bias
        sd[e + "timestep_embedder.linear_2.weight"] = model.t_embedder.mlp[2].weight
        sd[e + "timestep_embedder.linear_2.bias"] = model.t_embedder.mlp[2].bias
        sd[e + "class_embedder.embedding_table.weight"] = model.y_embedder.table.weight
        sd[k + "norm1.linear.weight"] = b.adaLN_modulation[1].weight
        sd[k + "norm1.linear.bias"] = b.adaLN_modulation[1].bias
        for name, w, bias in zip("qkv", b.attn.qkv.weight.chunk(3), b.attn.qkv.bias.chunk(3)):
            sd[k + f"attn1.to_{name}.weight"], sd[k + f"attn1.to_{name}.bias"] = w, bias
        sd[k + "attn1.to_out.0.weight"], sd[k + "attn1.to_out.0.bias"] = b.attn.proj.weight, b.attn.proj.bias
        sd[k + "ff.net.0.proj.weight"], sd[k + "ff.net.0.proj.bias"] = b.mlp.fc1.weight, b.mlp.fc1.bias
        sd[k + "ff.net.2.weight"], sd[k + "ff.net.2.bias"] = b.mlp.fc2.weight, b.mlp.fc2.bias
    param = next(model.parameters())
    verbosity = dlogging.get_verbosity()
    dlogging.set_verbosity_error()  # diffusers warns about casting a model built from scratch; nothing to keep in fp32
    try:
        ref = ref.to(dtype=param.dtype, device=param.device)  # before loading, so float64 weights stay float64
    finally:
        dlogging.set_verbosity(verbosity)
    missing, unexpected = ref.load_state_dict({k: v.detach().clone() for k, v in sd.items()}, strict=False)
    missing = [m for m in missing if not m.endswith("pos_embed.pos_embed")]
    if missing or unexpected:
        raise RuntimeError(f"diffusers' DiT layout changed: missing {missing}, unexpected {unexpected}")
    if match_paper:
        for block in ref.transformer_blocks:
            block.norm1.emb.time_proj.downscale_freq_shift = 0
    return ref.eval()
