r"""Shapes with captions (lesson 08): a procedural, offline data set with something to condition on.

Each image is one filled shape of one colour in one quadrant, on a grey background, captioned in words:

    "a red circle top left"      "a blue triangle bottom right"

Everything is drawn in code from a seed (deterministic, any size, no download). The attributes come
back as integer labels next to the captions, so a small classifier of shape / colour / position can
*measure* whether a text-conditional model drew what the caption asked for.

The :class:`Tokenizer` turns a caption into the token ids a text encoder :math:`\tau_\theta` reads: a fixed
word-level vocabulary, a ``<bos>`` token first (so the empty caption is one real token, the "null" caption
of classifier-free guidance), then ``<pad>`` up to ``max_len``, and a mask that is True on real tokens.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .. import validation as V

__all__ = [
    "SHAPES",
    "COLOURS",
    "POSITIONS",
    "NUM_ATTRIBUTES",
    "ShapesData",
    "combos",
    "caption",
    "parse_caption",
    "render",
    "make_shapes",
    "Tokenizer",
    "AttributeClassifier",
    "attribute_classifier",
    "classifier_loss",
    "predict_attributes",
    "attribute_accuracy",
]

SHAPES = ("circle", "square", "triangle")
COLOURS = ("red", "green", "blue")
POSITIONS = ("top left", "top right", "bottom left", "bottom right")
NUM_ATTRIBUTES = (len(SHAPES), len(COLOURS), len(POSITIONS))
_RGB = torch.tensor([[1.0, -1.0, -1.0], [-1.0, 1.0, -1.0], [-1.0, -1.0, 1.0]])  # in [-1, 1], one row per colour
_BACKGROUND = -0.5
_ATTRS = {"shape": SHAPES, "colour": COLOURS, "position": POSITIONS}


@dataclass
class ShapesData:
    """A drawn data set: ``images`` ``(N, 3, S, S)`` in ``[-1, 1]``, integer labels ``shape``, ``colour``,
    ``position`` ``(N,)``, the continuous ``centre`` ``(N, 2)`` (x, y in pixels) and ``radius`` ``(N,)``,
    and the ``captions`` (a list of N strings)."""

    images: torch.Tensor
    shape: torch.Tensor
    colour: torch.Tensor
    position: torch.Tensor
    centre: torch.Tensor
    radius: torch.Tensor
    captions: list

    def __len__(self) -> int:
        return self.images.shape[0]

    @property
    def labels(self) -> torch.Tensor:
        """``(N, 3)`` LongTensor: columns shape, colour, position (the classifier's targets)."""
        return torch.stack([self.shape, self.colour, self.position], dim=1)


def _index(name: str, value) -> int:
    table = _ATTRS[name]
    if isinstance(value, str):
        if value not in table:
            raise ValueError(f"unknown {name} {value!r}; choose one of {', '.join(table)}")
        return table.index(value)
    return V.integer(name, value, low=0, high=len(table) - 1)  # an index into the table


def _rules(name, rules):
    if rules is None:
        return None
    if isinstance(rules, dict):
        rules = [rules]
    if isinstance(rules, (str, bytes)) or not hasattr(rules, "__iter__"):
        raise TypeError(f"{name} must be a list of rules like [{{'colour': 'green'}}]; got {V.describe(rules)}")
    rules = list(rules)
    if not all(isinstance(r, dict) for r in rules):
        raise TypeError(f"{name} must be a list of dicts like [{{'colour': 'green', 'shape': 'triangle'}}]; got "
                        f"{V.describe(rules)}")
    return rules


def _matches(rule: dict, s: int, c: int, p: int) -> bool:
    unknown = set(rule) - set(_ATTRS)
    if unknown:
        raise ValueError(f"a combination rule may only name {', '.join(_ATTRS)}; got {sorted(unknown)}")
    got = {"shape": s, "colour": c, "position": p}
    return all(got[k] == _index(k, v) for k, v in rule.items())


def combos(exclude=None, only=None) -> list[tuple[int, int, int]]:
    """All (shape, colour, position) index triples, minus those matching a rule in ``exclude``, and (if
    ``only`` is given) restricted to those matching a rule in ``only``.

    A rule is a dict of attribute values, e.g. ``{"colour": "green", "shape": "triangle"}`` (any position).
    """
    exclude, only = _rules("exclude", exclude), _rules("only", only)
    out = []
    for s in range(len(SHAPES)):
        for c in range(len(COLOURS)):
            for p in range(len(POSITIONS)):
                if exclude and any(_matches(r, s, c, p) for r in exclude):
                    continue
                if only is not None and not any(_matches(r, s, c, p) for r in only):
                    continue
                out.append((s, c, p))
    if not out:
        raise ValueError("no (shape, colour, position) combination is left: loosen exclude= or only=")
    return out


def caption(shape, colour, position) -> str:
    """The caption of one image, e.g. ``caption("circle", "red", "top left") == "a red circle top left"``
    (names or indices)."""
    s, c, p = _index("shape", shape), _index("colour", colour), _index("position", position)
    return f"a {COLOURS[c]} {SHAPES[s]} {POSITIONS[p]}"


def parse_caption(text: str) -> tuple[int, int, int]:
    """Inverse of :func:`caption`: ``"a red circle top left" -> (shape, colour, position)`` indices."""
    if not isinstance(text, str):
        raise TypeError(f"text must be a caption string like 'a red circle top left'; got {V.describe(text)}")
    words = text.split()
    if len(words) != 5 or words[0] != "a":
        raise ValueError(f"a caption reads 'a <colour> <shape> <top|bottom> <left|right>'; got {text!r}")
    try:
        return _index("shape", words[2]), _index("colour", words[1]), _index("position", " ".join(words[3:]))
    except ValueError as exc:
        raise ValueError(f"text {text!r} is not a caption: {exc}") from None


def _centres(size: int):
    q = size / 4
    return torch.tensor([[q, q], [3 * q, q], [q, 3 * q], [3 * q, 3 * q]])  # (x, y) of the quadrant centres


def render(shape: torch.Tensor, colour: torch.Tensor, centre: torch.Tensor, radius: torch.Tensor, size: int,
           *, supersample: int = 4) -> torch.Tensor:
    """Draw ``B`` shapes: ``shape``, ``colour`` ``(B,)`` indices, ``centre`` ``(B, 2)`` (x, y) and ``radius``
    ``(B,)`` in pixels. Returns ``(B, 3, size, size)`` in ``[-1, 1]``, antialiased by ``supersample``² points
    per pixel. A circle has radius r, a square half-side 0.85 r, a triangle (apex up, centred
    on its bounding box) circumradius 1.2 r."""
    shape = _labels("shape", shape, len(SHAPES))
    B = shape.shape[0]
    colour = _labels("colour", colour, len(COLOURS), batch=B)
    centre = V.tensor("centre", centre, ndim=2, batch=B, finite=True)
    if centre.shape[1] != 2:
        raise ValueError(f"centre must have shape (B, 2) (x, y in pixels); got {V.describe(centre)}")
    radius = V.tensor("radius", radius, ndim=1, batch=B, finite=True)
    size, supersample = V.integer("size", size, low=1), V.integer("supersample", supersample, low=1)
    k = supersample
    u = (torch.arange(size * k, dtype=torch.float32) + 0.5) / k
    y, x = torch.meshgrid(u, u, indexing="ij")
    dx = x[None] - centre[:, 0, None, None]
    dy = y[None] - centre[:, 1, None, None]
    r = radius[:, None, None]
    circle = dx**2 + dy**2 <= r**2
    square = torch.maximum(dx.abs(), dy.abs()) <= 0.85 * r
    rt = 1.2 * r  # triangle, centred on its bounding box: apex at dy = -3 rt / 4, base at dy = 3 rt / 4
    triangle = (dy <= 0.75 * rt) & (dx.abs() * math.sqrt(3) <= dy + 0.75 * rt)
    inside = torch.stack([circle, square, triangle], 0)[shape, torch.arange(shape.shape[0])].float()
    cover = F.avg_pool2d(inside[:, None], k)  # (B, 1, size, size): fraction of each pixel covered
    rgb = _RGB[colour][:, :, None, None]
    return _BACKGROUND + cover * (rgb - _BACKGROUND)


def _labels(name, value, n, batch=None):
    value = V.tensor(name, value, ndim=1, floating=False, batch=batch)
    if value.is_floating_point() or value.dtype == torch.bool:
        raise ValueError(f"{name} must hold integer indices in 0..{n - 1}; got {V.describe(value)}")
    if bool(((value < 0) | (value >= n)).any()):
        raise ValueError(f"{name} must hold indices in 0..{n - 1}; got values from {int(value.min())} to "
                         f"{int(value.max())}")
    return value.long()


def make_shapes(n: int, size: int = 16, *, seed: int = 0, exclude=None, only=None, chunk: int = 512) -> ShapesData:
    """Draw ``n`` captioned images of ``size``×``size`` deterministically from ``seed``.

    Each image picks one allowed (shape, colour, position) combination uniformly (see :func:`combos` for
    ``exclude`` / ``only``, e.g. hold out every green triangle), a centre jittered around the quadrant's
    centre and a radius between 0.12 and 0.18 of the image size.
    """
    n = V.integer("n", n, low=1)  # the number of images
    size = V.integer("size", size, low=8)
    if size % 4:
        raise ValueError(f"size must be an int >= 8 divisible by 4 (e.g. 16 or 32); got {size!r}")
    chunk = V.integer("chunk", chunk, low=1)
    g = torch.Generator().manual_seed(V.integer("seed", seed))
    table = torch.tensor(combos(exclude, only))
    pick = table[torch.randint(0, table.shape[0], (n,), generator=g)]
    s, c, p = pick[:, 0], pick[:, 1], pick[:, 2]
    jitter = (torch.rand(n, 2, generator=g) * 2 - 1) * size / 20
    centre = _centres(size)[p] + jitter
    radius = size * (0.12 + 0.06 * torch.rand(n, generator=g))
    images = torch.cat([render(s[i:i + chunk], c[i:i + chunk], centre[i:i + chunk], radius[i:i + chunk], size)
                        for i in range(0, n, chunk)])
    caps = [caption(*t) for t in pick.tolist()]
    return ShapesData(images, s, c, p, centre, radius, caps)


# ------------------------------------------------------------------------------------ tokenizer
class Tokenizer:
    """A word-level tokenizer with a fixed vocabulary: ``encode`` -> ``(ids, mask)``, ``decode`` -> captions.

    Every sequence starts with ``<bos>`` (id 1) and is padded with ``<pad>`` (id 0) to ``max_len``;
    ``mask`` is True on real tokens (``<bos>`` included), so the empty caption ``""`` is ``[<bos>]``, the
    null condition of classifier-free guidance. An unknown word raises ``ValueError``.
    """

    PAD, BOS = "<pad>", "<bos>"

    def __init__(self, words=None, max_len: int = 8):
        if words is None:
            words = ["a", *COLOURS, *SHAPES, "top", "bottom", "left", "right"]
        if isinstance(words, (str, bytes)) or not hasattr(words, "__iter__"):
            raise TypeError(f"words must be a list of strings (the vocabulary); got {V.describe(words)}")
        words = list(words)
        if not all(isinstance(w, str) and len(w.split()) == 1 for w in words):
            raise ValueError(f"words must be single words (non-empty strings without spaces); got {words!r}")
        max_len = V.integer("max_len", max_len)
        if len(set(words)) != len(words) or self.PAD in words or self.BOS in words:
            raise ValueError("the vocabulary must list distinct words and must not contain <pad> or <bos>")
        if max_len < 2:
            raise ValueError(f"max_len must be >= 2 (<bos> plus one word); got {max_len}")
        self.vocab = [self.PAD, self.BOS, *words]
        self.index = {w: i for i, w in enumerate(self.vocab)}
        self.max_len = max_len

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    def encode(self, captions) -> tuple[torch.Tensor, torch.Tensor]:
        """Captions (a string or a list of strings) -> ``ids`` LongTensor ``(B, max_len)`` and ``mask`` bool
        ``(B, max_len)``."""
        if isinstance(captions, str):
            captions = [captions]
        if isinstance(captions, (bytes, dict)) or not hasattr(captions, "__iter__"):
            raise TypeError(f"captions must be a string or a list of strings; got {V.describe(captions)}")
        captions = list(captions)
        if not all(isinstance(c, str) for c in captions):
            raise TypeError(f"captions must be a string or a list of strings; got {V.describe(captions)}")
        ids = torch.zeros(len(captions), self.max_len, dtype=torch.long)
        for row, text in enumerate(captions):
            words = text.split()
            if len(words) + 1 > self.max_len:
                raise ValueError(f"{text!r} has {len(words)} words; at most {self.max_len - 1} fit in max_len="
                                 f"{self.max_len} (one slot is <bos>). Build Tokenizer(max_len=...) larger.")
            unknown = [w for w in words if w not in self.index or w in (self.PAD, self.BOS)]
            if unknown:
                raise ValueError(f"unknown word(s) {unknown} in {text!r}; the vocabulary is {self.vocab[2:]}")
            ids[row, : len(words) + 1] = torch.tensor([self.index[self.BOS]] + [self.index[w] for w in words])
        return ids, ids != self.index[self.PAD]

    def decode(self, ids: torch.Tensor, mask: torch.Tensor | None = None) -> list[str]:
        """Token ids ``(B, L)`` -> captions, dropping ``<bos>`` and every position where ``mask`` is False
        (or, without a mask, every ``<pad>``)."""
        ids = V.tensor("ids", ids, ndim=2, floating=False, min_batch=0)
        if ids.is_floating_point() or ids.dtype == torch.bool:
            raise ValueError(f"ids must hold integer token ids; got {V.describe(ids)}")
        if mask is None:
            mask = ids != self.index[self.PAD]
        mask = V.tensor("mask", mask, floating=False, min_batch=0)
        if mask.shape != ids.shape:
            raise ValueError(f"mask must have the shape of ids {tuple(ids.shape)}; got {V.describe(mask)}")
        if not ids.numel():
            return [""] * ids.shape[0]
        if int(ids.max()) >= self.vocab_size or int(ids.min()) < 0:
            raise ValueError(f"token ids must lie in 0..{self.vocab_size - 1}")
        return [" ".join(self.vocab[i] for i, m in zip(row.tolist(), keep.tolist()) if m and i > 1)
                for row, keep in zip(ids, mask)]


# ------------------------------------------------------------------------------------ attribute classifier
class AttributeClassifier(nn.Module):
    """A small classifier of the three attributes, with one logit per attribute value (3 + 3 + 4 = 10), read as
    three heads (shape, colour, position) by :func:`predict_attributes`.

    It first *finds* the shape: the foreground weight of a pixel is how far it is from the background
    colour, and its weighted mean position is the centroid. Position logits are a linear function of the
    centroid, colour logits a linear function of the mean foreground colour, and shape logits come from a
    :class:`tinydiff.models.Classifier` on a ``window``-sized crop of the foreground map centred on the centroid
    (translation and colour removed: the shape head cannot learn "green, so not a triangle" from a training
    set without green triangles, and it learns from a few hundred steps). All of it is trained on the data set.
    """

    def __init__(self, base_channels: int = 16, window: float = 0.5):
        super().__init__()
        from ..models import Classifier

        base_channels = V.integer("base_channels", base_channels, low=1)
        window = V.number("window", window, low=0.0, strict_low=True, high=1.0)
        self.window = window
        self.shape_net = Classifier(in_channels=1, num_classes=len(SHAPES), base_channels=base_channels)
        self.colour = nn.Linear(3, len(COLOURS))
        self.position = nn.Linear(2, len(POSITIONS))

    @staticmethod
    def foreground(x: torch.Tensor) -> torch.Tensor:
        """``(B, 1, H, W)``: how far each pixel is from the background colour (0 on the background)."""
        x = _images("x", x)
        return ((x - _BACKGROUND).abs().amax(1, keepdim=True) - 0.2).clamp_min(0)

    def locate(self, x: torch.Tensor):
        """``(centroid (B, 2) in [-1, 1] as (x, y), mean foreground colour (B, 3))``."""
        x = self._in(x)
        B, _, H, W = x.shape
        w = self.foreground(x)[:, 0] + 1e-6  # (B, H, W) foreground weight
        w = w / w.sum((1, 2), keepdim=True)
        yy, xx = torch.meshgrid(torch.linspace(-1, 1, H, device=x.device), torch.linspace(-1, 1, W, device=x.device),
                                indexing="ij")
        centre = torch.stack([(w * xx).sum((1, 2)), (w * yy).sum((1, 2))], dim=1)
        return centre, (w[:, None] * x).sum((2, 3))

    def crop(self, x: torch.Tensor, centre: torch.Tensor) -> torch.Tensor:
        """The ``window``-sized patch of each image's foreground map centred on ``centre`` (bilinear, 0 outside)."""
        x = self._in(x)
        B, _, H, W = x.shape
        centre = V.tensor("centre", centre, ndim=2, batch=B).to(x.dtype)
        if centre.shape[1] != 2:
            raise ValueError(f"centre must have shape (B, 2) (x, y in [-1, 1]); got {V.describe(centre)}")
        fg = self.foreground(x)
        theta = torch.zeros(B, 2, 3, device=x.device, dtype=x.dtype)
        theta[:, 0, 0] = theta[:, 1, 1] = self.window
        theta[:, :, 2] = centre
        size = (B, 1, max(4, int(H * self.window)), max(4, int(W * self.window)))
        grid = F.affine_grid(theta, size, align_corners=False)
        return F.grid_sample(fg, grid, align_corners=False)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled shape features of the crop, the mean colour and the centroid ``(B, 2 * base_channels + 5)``,
        e.g. for a Fréchet distance."""
        x = self._in(x)
        centre, colour = self.locate(x)
        return torch.cat([self.shape_net.features(self.crop(x, centre)), colour, centre], dim=1)

    def _in(self, x):
        x = _images("x", x)
        return x.to(self.colour.weight.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self._in(x)
        centre, colour = self.locate(x)
        return torch.cat([self.shape_net(self.crop(x, centre)), self.colour(colour), self.position(4 * centre)], dim=1)


def _images(name, x):
    x = V.tensor(name, x, ndim=4)
    if x.shape[1] != 3:
        raise ValueError(f"{name} must be images of shape (B, 3, H, W); got {V.describe(x)}")
    return x


def attribute_classifier(base_channels: int = 16) -> AttributeClassifier:
    """A fresh :class:`AttributeClassifier` (train it with :func:`classifier_loss`)."""
    return AttributeClassifier(base_channels)


def _heads(logits: torch.Tensor):
    return torch.split(logits, list(NUM_ATTRIBUTES), dim=1)


def classifier_loss(model, batch) -> torch.Tensor:
    """Sum of the three cross-entropies (shape, colour, position) for ``batch = (images, labels (B, 3))``."""
    if not callable(model):
        raise TypeError(f"model must be a callable classifier (e.g. attribute_classifier()); got {V.describe(model)}")
    if not isinstance(batch, (tuple, list)) or len(batch) != 2:
        raise TypeError(f"batch must be a pair (images, labels); got {V.describe(batch)}")
    images = _images("images", batch[0])
    labels = V.tensor("labels", batch[1], ndim=2, floating=False, batch=images.shape[0])
    if labels.shape[1] != 3 or labels.is_floating_point() or labels.dtype == torch.bool:
        raise ValueError(f"labels must be (B, 3) integer labels (shape, colour, position); got {V.describe(labels)}")
    return sum(F.cross_entropy(h, labels[:, i].long()) for i, h in enumerate(_heads(_logits(model, images))))


def _logits(model, images):
    logits = model(images)
    if logits is None:
        raise TypeError("model returned None: did it forget to `return` its logits?")
    want = (images.shape[0], sum(NUM_ATTRIBUTES))
    if not isinstance(logits, torch.Tensor) or tuple(logits.shape) != want or not logits.is_floating_point():
        raise ValueError(f"model must return logits of shape {want} (3 shape + 3 colour + 4 position values); it "
                         f"returned {V.describe(logits)}")
    return logits


@torch.no_grad()
def predict_attributes(model, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """The classifier's guess ``(B, 3)`` (shape, colour, position indices) for images ``(B, 3, S, S)``, with the
    model in eval mode for the call (its own train/eval mode is restored afterwards)."""
    from ..utils import eval_mode

    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module classifier; got {V.describe(model)}")
    images = _images("images", images)
    batch_size = V.integer("batch_size", batch_size, low=1)
    param = next(model.parameters(), None)
    dev = param.device if param is not None else torch.device("cpu")
    out = []
    with eval_mode(model):
        for i in range(0, images.shape[0], batch_size):
            logits = _logits(model, images[i:i + batch_size].to(dev)).cpu()
            out.append(torch.stack([h.argmax(1) for h in _heads(logits)], dim=1))
    return torch.cat(out)


def attribute_accuracy(pred: torch.Tensor, target: torch.Tensor) -> dict:
    """Fraction of rows where each attribute matches, and ``"all"``: the whole caption matches."""
    pred = V.tensor("pred", pred, floating=False)
    target = V.tensor("target", target, floating=False)
    if pred.shape != target.shape or pred.ndim != 2 or pred.shape[1] != 3:
        raise ValueError(f"pred and target must both be (B, 3) label tensors; got {tuple(pred.shape)}, "
                         f"{tuple(target.shape)}")
    hit = pred == target
    acc = {name: float(hit[:, i].float().mean()) for i, name in enumerate(("shape", "colour", "position"))}
    acc["all"] = float(hit.all(1).float().mean())
    return acc
