r"""A synthetic relighting world whose light transport is exactly linear (lesson 10, IC-Light).

Objects are ellipsoids seen from the front, with analytic normals :math:`n_p`, a two-colour albedo :math:`a_p`
and a foreground mask :math:`m_p`. Light is an **environment map** over the front half of the sphere (the half
that faces the camera, as in the IC-Light paper): an ``(3, R, R)`` grid of radiances :math:`L_k` over directions
:math:`\omega_k` with solid angles :math:`\Delta\Omega_k`. A Lambertian surface then shows

.. math::  I_p = a_p \sum_k \max(0, n_p\cdot\omega_k)\,\Delta\Omega_k\,L_k \;=\; (\mathbf T \mathbf L)_p,

a **linear** map of the light (the light-transport matrix :math:`\mathbf T`), so
:math:`I_{L_1+L_2} = I_{L_1} + I_{L_2}` holds in raw linear HDR, exactly up to rounding. Off the object the
picture shows a background :math:`B` that the light does not change (grey by default), so transport is linear
only where the mask is 1.

Three spaces, kept apart on purpose:

- **linear HDR** :math:`I \ge 0` (what light transport acts on; values may exceed 1);
- **model space** :math:`x = 2I - 1` (an *affine* map: black is :math:`-1`, so :math:`x_{12} = x_1 + x_2 + 1`);
- **display** :func:`tone_map` :math:`d = \mathrm{clip}(I, 0, 1)^{1/\gamma}` (what PSNR/SSIM and figures use;
  not linear at all).

The random-mask split :func:`split_light` gives :math:`L = L_1 + L_2` with :math:`L_1 = M_e \odot L`,
:math:`L_2 = (1 - M_e)\odot L` for a random binary mask :math:`M_e` of the environment map.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .. import validation

__all__ = [
    "BLACK", "GREY", "Objects", "front_half_directions", "make_objects", "irradiance", "render", "random_lights",
    "split_light", "tone_map", "to_model", "from_model", "merge", "condition", "light_features", "RelightBatches",
    "lobe_lights", "light_vector",
]

BLACK = -1.0  #: model-space value of zero light (x = 2 I - 1 at I = 0)
GREY = 0.5  #: the linear value of the default background; model space 2 * 0.5 - 1 = 0 exactly (IC-Light's grey 127)


@dataclass
class Objects:
    """``normals`` ``(N, 3, H, W)`` (unit, z towards the camera; 0 off the object), ``albedo`` ``(N, 3, H, W)``
    in ``(0, 1)``, ``mask`` ``(N, 1, H, W)`` in ``{0, 1}``, ``background`` ``(N, 3, H, W)`` linear (unlit)."""

    normals: torch.Tensor
    albedo: torch.Tensor
    mask: torch.Tensor
    background: torch.Tensor

    def __len__(self) -> int:
        return self.normals.shape[0]

    def __getitem__(self, idx) -> "Objects":
        return Objects(self.normals[idx], self.albedo[idx], self.mask[idx], self.background[idx])

    def to(self, *args, **kwargs) -> "Objects":
        return Objects(*(t.to(*args, **kwargs) for t in (self.normals, self.albedo, self.mask, self.background)))


def _dtype(dtype) -> torch.dtype:
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ValueError(f"dtype must be a floating torch dtype like torch.float32; got {validation.describe(dtype)}")
    return dtype


def _objects(objects) -> "Objects":
    if not all(isinstance(getattr(objects, k, None), torch.Tensor) for k in ("normals", "albedo", "mask", "background")):
        raise TypeError(f"objects must be an Objects from make_objects(...); got {validation.describe(objects)}")
    return objects


def front_half_directions(res: int, dtype=torch.float64):
    r"""Directions :math:`\omega_k` ``(R*R, 3)`` and solid angles :math:`\Delta\Omega_k` ``(R*R,)`` of a front-half
    environment map of ``res x res`` pixels: azimuth :math:`\phi \in (-\pi/2, \pi/2)` (columns, left to right),
    elevation :math:`\theta \in (-\pi/2, \pi/2)` (rows, top = up), :math:`\omega = (\cos\theta\sin\phi,\ \sin\theta,\
    \cos\theta\cos\phi)`, :math:`\Delta\Omega = \cos\theta\,\Delta\theta\,\Delta\phi` (they sum to :math:`2\pi`)."""
    res = validation.integer("res", res, low=1)
    dtype = _dtype(dtype)
    step = math.pi / res
    centres = -math.pi / 2 + step * (torch.arange(res, dtype=torch.float64) + 0.5)
    theta = centres.flip(0)[:, None].expand(res, res)  # row 0 is the top of the map (looking up)
    phi = centres[None, :].expand(res, res)
    dirs = torch.stack([theta.cos() * phi.sin(), theta.sin(), theta.cos() * phi.cos()], -1).reshape(-1, 3)
    # exact solid angle of each cell: (sin theta_hi - sin theta_lo) * d phi
    d_omega = ((theta + step / 2).sin() - (theta - step / 2).sin()) * step
    return dirs.to(dtype), d_omega.reshape(-1).to(dtype)


def make_objects(n: int, size: int = 16, *, generator: torch.Generator | None = None, background: str = "grey",
                 dtype=torch.float32) -> Objects:
    r"""``n`` random ellipsoids on ``size x size`` images: centre, semi-axes :math:`a, b`, in-plane rotation,
    depth semi-axis :math:`c = \sqrt{ab}` (so the silhouette determines the shape), two albedo colours split by a
    random line. ``background``: ``"grey"`` (linear 0.5, model space 0) or ``"random"`` (a smooth random colour
    gradient, the background-conditioned variant)."""
    n = validation.integer("n", n, low=1)
    size = validation.integer("size", size, low=4)
    validation.choice("background", background, ("grey", "random"))
    dtype = _dtype(dtype)
    g = generator

    def u(*shape, lo=0.0, hi=1.0):
        return lo + (hi - lo) * torch.rand(*shape, generator=g, dtype=torch.float64)

    coords = (torch.arange(size, dtype=torch.float64) + 0.5) / size * 2 - 1
    yy, xx = -coords[:, None], coords[None, :]  # y is up
    cx, cy = u(n, 1, 1, lo=-0.3, hi=0.3), u(n, 1, 1, lo=-0.3, hi=0.3)
    a, b = u(n, 1, 1, lo=0.3, hi=0.6), u(n, 1, 1, lo=0.3, hi=0.6)
    c = (a * b).sqrt()
    psi = u(n, 1, 1, hi=math.pi)
    cos, sin = psi.cos(), psi.sin()
    dx, dy = xx - cx, yy - cy
    p, q = cos * dx + sin * dy, -sin * dx + cos * dy  # coordinates along the ellipse's axes
    r2 = (p / a) ** 2 + (q / b) ** 2
    mask = (r2 < 1).to(torch.float64)
    z = c * (1 - r2).clamp_min(0).sqrt()
    gp, gq, gz = p / a**2, q / b**2, z / c**2  # gradient of the implicit function (normal direction)
    nx, ny = cos * gp - sin * gq, sin * gp + cos * gq  # rotate back to image axes
    normals = torch.stack([nx, ny, gz], 1)
    normals = normals / normals.norm(dim=1, keepdim=True).clamp_min(1e-12) * mask[:, None]
    # albedo: two colours on either side of a random line through the centre
    colours = u(n, 2, 3, lo=0.2, hi=0.9)
    ang = u(n, 1, 1, hi=2 * math.pi)
    side = ((ang.cos() * dx + ang.sin() * dy) > 0).to(torch.float64)[:, None]  # (n, 1, H, W)
    albedo = colours[:, 0, :, None, None] * side + colours[:, 1, :, None, None] * (1 - side)
    albedo = albedo * mask[:, None]
    if background == "grey":
        bg = torch.full((n, 3, size, size), GREY, dtype=torch.float64)
    else:
        c0, c1 = u(n, 3, 1, 1, lo=0.1, hi=0.9), u(n, 3, 1, 1, lo=0.1, hi=0.9)
        w = ((yy + 1) / 2)[None, None]
        bg = c0 * w + c1 * (1 - w)
    return Objects(normals.to(dtype), albedo.to(dtype), mask[:, None].to(dtype), bg.to(dtype))


def _check_light(light: torch.Tensor, n: int | None = None) -> torch.Tensor:
    light = validation.tensor("light", light, ndim=4, batch=n)
    if light.shape[1] != 3 or light.shape[2] != light.shape[3]:
        raise ValueError(f"light must be an environment map (B, 3, R, R); got {validation.describe(light)}")
    return light


def irradiance(normals: torch.Tensor, light: torch.Tensor, *, chunk: int = 256) -> torch.Tensor:
    r"""Irradiance :math:`E_p = \sum_k \max(0, n_p\cdot\omega_k)\,\Delta\Omega_k\,L_k` ``(N, 3, H, W)`` of unit
    ``normals`` ``(N, 3, H, W)`` under environment maps ``light`` ``(N, 3, R, R)``; linear in the light."""
    normals = validation.tensor("normals", normals, ndim=4)
    light = _check_light(light, normals.shape[0])
    chunk = validation.integer("chunk", chunk, low=1)
    N, _, H, W = normals.shape
    dirs, d_omega = front_half_directions(light.shape[-1], dtype=normals.dtype)
    dirs, d_omega = dirs.to(normals.device), d_omega.to(normals.device)
    Lk = light.to(normals.dtype).flatten(2)  # (N, 3, K)
    out = []
    for s in range(0, N, chunk):
        nrm = normals[s:s + chunk].flatten(2).transpose(1, 2)  # (n, P, 3)
        basis = (nrm @ dirs.T).clamp_min(0) * d_omega  # (n, P, K): one row of the transport matrix per pixel
        out.append(torch.einsum("npk,nck->ncp", basis, Lk[s:s + chunk]))
    return torch.cat(out).reshape(N, 3, H, W)


def render(objects: Objects, light: torch.Tensor, *, background: bool = True) -> torch.Tensor:
    r"""The linear HDR picture :math:`I = m \odot a \odot E(n, L) + (1 - m)\odot B` ``(N, 3, H, W)``.

    With ``background=False`` the off-object pixels are black (0) and :math:`I` is exactly linear in the light
    everywhere; with the (unlit) background, only on the mask."""
    objects = _objects(objects)
    e = irradiance(objects.normals, light)
    fg = objects.albedo * e * objects.mask
    return fg + (1 - objects.mask) * objects.background if background else fg


def random_lights(n: int, res: int = 16, *, n_sources: int | tuple[int, int] = 1,
                  generator: torch.Generator | None = None, dtype=torch.float32) -> torch.Tensor:
    r"""``n`` front-half environment maps ``(n, 3, res, res)``: a dim ambient term plus ``n_sources`` (an int or
    an inclusive range ``(lo, hi)``) coloured lobes :math:`c\,\exp(\kappa(\omega\cdot\mu - 1))` at random
    directions :math:`\mu` of the front half. Each source is normalised to a power
    :math:`\sum_k L_k\Delta\Omega_k` in ``(0.8, 1.4)``, so one source lights a facing surface to about 1."""
    n = validation.integer("n", n, low=1)
    res = validation.integer("res", res, low=2)
    dtype = _dtype(dtype)
    if isinstance(n_sources, (tuple, list)) and len(n_sources) == 2:
        lo, hi = n_sources
    else:
        lo = hi = n_sources
    lo, hi = validation.integer("n_sources", lo, low=1), validation.integer("n_sources", hi, low=1)
    if hi < lo:
        raise ValueError(f"n_sources must be an int or a range (lo, hi) with lo <= hi; got {n_sources}")
    g = generator
    dirs, d_omega = front_half_directions(res)
    counts = torch.randint(lo, hi + 1, (n,), generator=g)
    out = torch.zeros(n, 3, res * res, dtype=torch.float64)
    out += 0.03 * torch.rand(n, 1, 1, generator=g, dtype=torch.float64)  # ambient (white)
    for s in range(hi):
        theta = (torch.rand(n, generator=g, dtype=torch.float64) * 2 - 1) * 1.2
        phi = (torch.rand(n, generator=g, dtype=torch.float64) * 2 - 1) * 1.3
        mu = torch.stack([theta.cos() * phi.sin(), theta.sin(), theta.cos() * phi.cos()], -1)
        kappa = 4 + 16 * torch.rand(n, 1, generator=g, dtype=torch.float64)
        lobe = torch.exp(kappa * (mu @ dirs.T - 1))  # (n, K)
        lobe = lobe / (lobe * d_omega).sum(-1, keepdim=True)
        colour = 0.5 + 0.5 * torch.rand(n, 3, 1, generator=g, dtype=torch.float64)
        power = 0.8 + 0.6 * torch.rand(n, 1, 1, generator=g, dtype=torch.float64)
        on = (counts > s).to(torch.float64)[:, None, None]
        out += on * power * colour / colour.mean(1, keepdim=True) * lobe[:, None]
    return out.reshape(n, 3, res, res).to(dtype)


def lobe_lights(mu: torch.Tensor, res: int = 16, *, kappa: float = 20.0, power: float = 1.0,
                dtype=torch.float32) -> torch.Tensor:
    r"""White lights ``(K, 3, res, res)``, one lobe :math:`\propto\exp(\kappa(\omega\cdot\mu_k - 1))` per unit
    direction ``mu`` ``(K, 3)`` (z > 0), each of power :math:`\sum_k L_k\Delta\Omega_k` = ``power``."""
    mu = validation.tensor("mu", mu, ndim=2).to(torch.float64)
    if mu.shape[1] != 3:
        raise ValueError(f"mu must hold unit directions (K, 3); got {validation.describe(mu)}")
    kappa = validation.number("kappa", kappa, low=0)
    power = validation.number("power", power, low=0)
    dtype = _dtype(dtype)
    dirs, d_omega = front_half_directions(res)
    lobe = torch.exp(kappa * (torch.nn.functional.normalize(mu, dim=1) @ dirs.T - 1))
    lobe = power * lobe / (lobe * d_omega).sum(-1, keepdim=True)
    return lobe[:, None].expand(-1, 3, -1).reshape(-1, 3, res, res).to(dtype).contiguous()


def light_vector(light: torch.Tensor) -> torch.Tensor:
    r"""The first moment :math:`s = \sum_k \bar L_k\,\Delta\Omega_k\,\omega_k` ``(B, 3)`` of an environment map
    (:math:`\bar L` = mean over colours): where no part of the light is behind the surface,
    :math:`E(n) = n\cdot s` exactly (the clamp is inactive), the model of photometric stereo."""
    light = _check_light(light)
    dirs, d_omega = front_half_directions(light.shape[-1], dtype=torch.float64)
    w = light.double().mean(1).flatten(1) * d_omega
    return (w @ dirs).to(light.dtype)


def split_light(light: torch.Tensor, *, generator: torch.Generator | None = None, cells: int = 4):
    r"""The random-mask decomposition :math:`L = L_1 + L_2`: :math:`L_1 = M_e\odot L`, :math:`L_2 = (1-M_e)\odot L`
    with :math:`M_e` a random binary ``cells x cells`` grid upsampled to the map (one mask per sample, shared
    by the colours). Returns ``(L1, L2, M_e)``; the sum is exact (each pixel goes to exactly one part)."""
    light = _check_light(light)
    cells = validation.integer("cells", cells, low=1)
    n, _, res, _ = light.shape
    coarse = (torch.rand(n, 1, cells, cells, generator=generator) < 0.5).to(light.dtype)
    m = F.interpolate(coarse, size=(res, res), mode="nearest").to(light.device)
    return m * light, (1 - m) * light, m


def tone_map(hdr: torch.Tensor, *, exposure: float = 1.0, gamma: float = 2.2) -> torch.Tensor:
    r"""Display image :math:`d = \mathrm{clip}(e\,I, 0, 1)^{1/\gamma}` in ``[0, 1]`` (a separate, non-linear step)."""
    exposure = validation.number("exposure", exposure, low=0, strict_low=True)
    gamma = validation.number("gamma", gamma, low=0, strict_low=True)
    hdr = validation.tensor("hdr", hdr)
    return (exposure * hdr).clamp(0, 1) ** (1 / gamma)


def to_model(hdr: torch.Tensor) -> torch.Tensor:
    r"""Model space :math:`x = 2I - 1` (affine: black :math:`\mapsto -1`, grey 0.5 :math:`\mapsto 0`)."""
    hdr = validation.tensor("hdr", hdr)
    return 2 * hdr - 1


def from_model(x: torch.Tensor) -> torch.Tensor:
    r"""Linear HDR :math:`I = (x + 1)/2`."""
    x = validation.tensor("x", x)
    return (x + 1) / 2


def merge(x1: torch.Tensor, x2: torch.Tensor, black: float = BLACK) -> torch.Tensor:
    r"""The model-space image of the summed light: :math:`x_{12} = x_1 + x_2 - b` with :math:`b` the model-space
    black (:math:`-1` for :math:`x = 2I - 1`), since :math:`I_{12} = I_1 + I_2` is measured from black."""
    x1, x2 = validation.tensor("x1", x1), validation.tensor("x2", x2)
    if x1.shape != x2.shape:
        raise ValueError(f"x2 must have the shape of x1, {tuple(x1.shape)}; got {validation.describe(x2)}")
    black = validation.number("black", black)
    return x1 + x2 - black


def condition(objects: Objects, *, with_background: bool = False) -> torch.Tensor:
    r"""The conditioning image :math:`I_d` in model space: the albedo on the object and exactly 0 (grey) off it,
    plus the mask as a fourth channel ``(N, 4, H, W)``; with ``with_background`` also the background
    ``(N, 7, H, W)`` (model space, 0 off the background, i.e. on the object)."""
    m = _objects(objects).mask
    fg = to_model(objects.albedo) * m  # grey (0) off the object, IC-Light's "127 -> 0"
    parts = [fg, m]
    if with_background:
        parts.append(to_model(objects.background) * (1 - m))
    return torch.cat(parts, 1)


def light_features(light: torch.Tensor, size: int = 4) -> torch.Tensor:
    r"""A linear summary of an environment map for the model: radiance times solid angle, summed over
    ``size x size`` blocks, ``(B, 3 * size * size)``. Linear in :math:`L`, so :math:`f(L_1 + L_2) = f(L_1) + f(L_2)`."""
    light = _check_light(light)
    size = validation.integer("size", size, low=1)
    res = light.shape[-1]
    if res % size:
        raise ValueError(f"size must divide the environment map's resolution {res}; got {size}")
    _, d_omega = front_half_directions(res, dtype=light.dtype)
    weighted = light * d_omega.to(light.device).reshape(1, 1, res, res)
    return F.avg_pool2d(weighted, res // size, divisor_override=1).flatten(1)


class RelightBatches:
    r"""Training batches for :func:`tinydiff.train.fit`: ``batches(batch_size, generator)`` draws objects from
    ``objects``, a fresh light with ``n_sources`` lobes for each, its random-mask split, and renders the truth.
    Returns ``(x0, cond, light, light_1, light_2, mask)`` with ``x0 = to_model(render(objects, light))`` and
    ``cond = condition(objects)`` (model space); ``light_1 + light_2 == light`` exactly."""

    def __init__(self, objects: Objects, light_res: int = 16, n_sources: int | tuple[int, int] = 1,
                 with_background: bool = False):
        self.objects, self.light_res, self.n_sources = objects, light_res, n_sources
        self.with_background = with_background

    def __call__(self, batch_size: int, generator: torch.Generator | None = None):
        idx = torch.randint(0, len(self.objects), (batch_size,), generator=generator)
        obj = self.objects[idx]
        light = random_lights(batch_size, self.light_res, n_sources=self.n_sources, generator=generator,
                              dtype=obj.normals.dtype)
        l1, l2, _ = split_light(light, generator=generator)
        x0 = to_model(render(obj, light))
        return x0, condition(obj, with_background=self.with_background), light, l1, l2, obj.mask
