r"""The one denoiser interface: a noising path :math:`x_t = \alpha_t x_0 + \sigma_t\varepsilon`, and a network (or an
exact oracle) that predicts any one of :math:`\varepsilon`, :math:`x_0`, :math:`v`, the score, the flow velocity, or an
EDM-preconditioned output on that path.

Every diffusion model of the book is one of four paths, differing only in :math:`(\alpha_t, \sigma_t)`:

====================  ===================================  =====================================  ===============
path                  time ``t``                           :math:`\alpha_t`                       :math:`\sigma_t`
====================  ===================================  =====================================  ===============
:class:`DiscreteVP`   integer ``0..T`` (lessons 02–03)     :math:`\sqrt{\bar\alpha_t}`            :math:`\sqrt{1-\bar\alpha_t}`
:class:`ContinuousVP` float in ``[0, 1]`` (lesson 04)      :math:`m(t) = e^{-\frac12\int_0^t\beta}` :math:`\sqrt{1-m(t)^2}`
:class:`VE`           :math:`t = \sigma` (lesson 05, EDM)  1                                      :math:`t`
:class:`LinearPath`   float in ``[0, 1]`` (lesson 11)      :math:`1-t`                            :math:`t`
====================  ===================================  =====================================  ===============

Two paths describe the same model wherever they have the same signal-to-noise ratio
:math:`\alpha_t^2/\sigma_t^2`: dividing by :math:`\alpha_t` maps every path onto the VE variable
:math:`x/\alpha_t` at noise level :math:`\sigma^{\mathrm{VE}} = \sigma_t/\alpha_t` (k-diffusion's and EDM's
:math:`\sigma`). :meth:`Denoiser.on` re-expresses a denoiser on another path that way, and :meth:`Denoiser.x0_sigma`
gives the k-diffusion-style denoiser :math:`D(x, \sigma)` that the solvers of lesson 12 step.

A :class:`Denoiser` wraps ``fn(x, t)`` (the path's own time) and its ``prediction``; every sampler or loss asks it
for what it needs (``.x0``, ``.eps``, ``.score``, ``.v``, ``.velocity``), converting with :mod:`tinydiff.convert`.
"""

from __future__ import annotations

import numpy as np
import torch

from . import convert, validation
from .utils import device_of, expand_to, table_on

__all__ = ["NoisePath", "DiscreteVP", "ContinuousVP", "VE", "LinearPath", "Denoiser", "edm_coefs", "PREDICTIONS"]

PREDICTIONS = convert.PREDICTIONS + ("edm",)


# ---------------------------------------------------------------------------------- noise paths
class NoisePath:
    r"""A noising path :math:`x_t = \alpha_t x_0 + \sigma_t\varepsilon`. Subclasses define :meth:`alpha`,
    :meth:`sigma`, their time derivatives (continuous paths) and :meth:`t_from_sigma_ve`. All return float64 tensors
    on the device of ``t``; none of them synchronises with the host, so samplers may call them inside loops."""

    name = "path"
    discrete = False  # integer time (DiscreteVP) or continuous time

    def _arg(self, t, name="t", *, integers=False):
        """Check a time (or noise level) on its metadata only (these methods run inside samplers' loops: no host
        sync): a Python number, or a real tensor of rank 0 or 1 (floating for continuous time unless ``integers``;
        numpy and lists converted)."""
        if isinstance(t, np.ndarray) or isinstance(t, (list, tuple)):
            try:
                t = torch.as_tensor(t)
            except (TypeError, ValueError, RuntimeError):
                raise ValueError(f"{name} must be a number or a 1-d tensor; got {validation.describe(t)}") from None
        if isinstance(t, torch.Tensor):
            if t.is_complex() or t.dtype == torch.bool:
                raise ValueError(f"{name} must be a real number or tensor; got {validation.describe(t)}")
            if not (self.discrete or integers or t.is_floating_point()):
                raise ValueError(f"{name} must be a floating tensor ({self.name} has continuous time); got "
                                 f"{validation.describe(t)}")
            if t.ndim > 1:
                raise ValueError(f"{name} must be a scalar or a 1-d tensor (B,); got {validation.describe(t)}")
            return t
        if self.discrete and name == "t":
            return validation.integer(name, t, low=0, high=self.T)
        return validation.number(name, t, allow_inf=True)

    def alpha(self, t) -> torch.Tensor:
        r""":math:`\alpha_t` (every path defines it)."""
        raise NotImplementedError(f"{type(self).__name__} must define alpha(t): NoisePath is the base class of the "
                                  "paths (use DiscreteVP, ContinuousVP, VE or LinearPath, or subclass it)")

    def sigma(self, t) -> torch.Tensor:
        r""":math:`\sigma_t` (every path defines it)."""
        raise NotImplementedError(f"{type(self).__name__} must define sigma(t): NoisePath is the base class of the "
                                  "paths (use DiscreteVP, ContinuousVP, VE or LinearPath, or subclass it)")

    def d_alpha(self, t) -> torch.Tensor:
        r""":math:`\dot\alpha_t = d\alpha_t/dt` (continuous paths)."""
        raise NotImplementedError(f"{self.name} is a discrete path: it has no time derivative")

    def d_sigma(self, t) -> torch.Tensor:
        r""":math:`\dot\sigma_t = d\sigma_t/dt` (continuous paths)."""
        raise NotImplementedError(f"{self.name} is a discrete path: it has no time derivative")

    def t_from_sigma_ve(self, sigma_ve) -> torch.Tensor:
        r"""The time at which :math:`\sigma_t/\alpha_t` equals ``sigma_ve`` (the inverse of :meth:`sigma_ve`)."""
        raise NotImplementedError(f"{type(self).__name__} must define t_from_sigma_ve(sigma_ve), the inverse of "
                                  "sigma_ve(t)")

    # derived quantities ---------------------------------------------------------------------------
    def sigma_ve(self, t) -> torch.Tensor:
        r"""The VE / EDM noise level :math:`\sigma^{\mathrm{VE}}_t = \sigma_t/\alpha_t` of the variable :math:`x_t/\alpha_t`."""
        t = self._arg(t)
        return self.sigma(t) / self.alpha(t)

    def log_snr(self, t) -> torch.Tensor:
        r""":math:`\lambda_t = \log(\alpha_t^2/\sigma_t^2)`, decreasing in ``t`` (DPM-Solver's variable is :math:`\lambda/2`)."""
        t = self._arg(t)
        return 2 * (torch.log(self.alpha(t)) - torch.log(self.sigma(t)))

    def coefs(self, t, x: torch.Tensor):
        r"""``(alpha_t, sigma_t)`` shaped to broadcast against ``x`` ``(B, ...)``, in ``x``'s dtype."""
        x = validation.tensor("x", x)
        t = self._batch(self._arg(t), x)
        return expand_to(self.alpha(t), x), expand_to(self.sigma(t), x)

    def _batch(self, t, x, name="t"):
        if isinstance(t, torch.Tensor) and t.ndim == 1 and (x.ndim == 0 or t.shape[0] not in (1, x.shape[0])):
            raise ValueError(f"{name} must be a scalar or have shape (B,) with B = {x.shape[0] if x.ndim else 1} "
                             f"(the batch of x); got {validation.describe(t)}")
        return t

    def q_sample(self, x0: torch.Tensor, t, eps: torch.Tensor) -> torch.Tensor:
        r"""The noised point :math:`x_t = \alpha_t x_0 + \sigma_t\varepsilon`."""
        x0 = validation.tensor("x0", x0)
        eps = validation.tensor("eps", eps)
        if tuple(eps.shape) != tuple(x0.shape):
            raise ValueError(f"eps must have the shape of x0 {tuple(x0.shape)}; got {validation.describe(eps)}")
        t = self._batch(self._arg(t), x0)
        a, s = self.coefs(self._time(t, x0), x0)
        return a * x0 + s * eps

    def _time(self, t, x):
        """``t`` as a tensor on ``x``'s device (a Python number stays a 0-d tensor)."""
        if isinstance(t, torch.Tensor):
            return t.to(x.device)
        return torch.as_tensor(t, device=x.device)

    def __repr__(self) -> str:
        return self.name


class DiscreteVP(NoisePath):
    r"""The discrete variance-preserving path of a :class:`tinydiff.NoiseSchedule`: integer ``t`` in ``0..T``,
    :math:`\alpha_t = \sqrt{\bar\alpha_t}`, :math:`\sigma_t = \sqrt{1-\bar\alpha_t}`. ``t_from_sigma_ve`` returns the
    *nearest* table timestep (a discrete-time network is only defined on the table)."""

    def __init__(self, sched):
        if not hasattr(sched, "alpha_bar") or not hasattr(sched, "T"):
            raise TypeError(f"sched must be a tinydiff.NoiseSchedule (DiscreteVP's table); got {validation.describe(sched)}")
        self.sched = sched
        self.T = sched.T
        self.name = f"DiscreteVP({sched.name})"
        self._sigma_ve_table = ((1 - sched.alpha_bar) / sched.alpha_bar).sqrt()  # increasing in t, 0 at t = 0

    discrete = True

    def _lookup(self, table, t):
        t = self._arg(t)
        t = t if isinstance(t, torch.Tensor) else torch.as_tensor(t)
        try:
            return table_on(table, t.device)[t.long()]
        except IndexError:  # raised on the CPU only, without a host sync (a check of the values would need one)
            raise ValueError(f"t must hold integer timesteps in 0..{self.T} (the schedule's T); got "
                             f"{validation.describe(t)} with a value outside") from None

    def alpha(self, t):
        return self._lookup(self.sched.alpha_bar, t).sqrt()

    def sigma(self, t):
        return (1 - self._lookup(self.sched.alpha_bar, t)).sqrt()

    def sigma_ve(self, t):
        return self._lookup(self._sigma_ve_table, t)

    def t_from_sigma_ve(self, sigma_ve):
        sv = torch.as_tensor(self._arg(sigma_ve, "sigma_ve", integers=True), dtype=torch.float64)
        table = table_on(self._sigma_ve_table, sv.device)
        hi = torch.searchsorted(table, sv.reshape(-1)).clamp(1, self.T)
        lo = hi - 1
        nearer_lo = (torch.log(sv.reshape(-1).clamp_min(1e-300)) - torch.log(table[lo].clamp_min(1e-300))).abs() < \
            (torch.log(table[hi]) - torch.log(sv.reshape(-1).clamp_min(1e-300))).abs()
        return torch.where(nearer_lo, lo, hi).reshape(sv.shape)


class ContinuousVP(NoisePath):
    r"""The continuous VP path of a linear VP-SDE (:class:`tinydiff.sde.VPSDE`), ``t`` in ``[0, 1]``:
    :math:`\alpha_t = m(t) = e^{-B(t)/2}`, :math:`B(t) = \beta_{\min}t + \tfrac12(\beta_{\max}-\beta_{\min})t^2`,
    :math:`\sigma_t = \sqrt{1 - e^{-B(t)}}`; :math:`\dot\alpha_t = -\tfrac12\beta(t)\alpha_t`,
    :math:`\dot\sigma_t = \beta(t)\alpha_t^2/(2\sigma_t)`."""

    def __init__(self, sde=None, *, beta_min: float | None = None, beta_max: float | None = None):
        if sde is not None:
            sde = validation.sde("sde", sde)
            if not hasattr(sde, "beta_min") or not hasattr(sde, "beta_max"):
                raise TypeError(f"sde must be a linear VP-SDE with beta_min and beta_max like td.sde.VPSDE(); got "
                                f"{validation.describe(sde)}")
            beta_min, beta_max = sde.beta_min, sde.beta_max
        self.beta_min = validation.number("beta_min", 0.1 if beta_min is None else beta_min, low=0, strict_low=True)
        self.beta_max = validation.number("beta_max", 20.0 if beta_max is None else beta_max, low=self.beta_min)
        self.name = f"ContinuousVP(beta_min={self.beta_min:g}, beta_max={self.beta_max:g})"

    def _t(self, t):
        t = self._arg(t)
        return t.to(torch.float64) if isinstance(t, torch.Tensor) else torch.as_tensor(t, dtype=torch.float64)

    def beta(self, t):
        return self.beta_min + self._t(t) * (self.beta_max - self.beta_min)

    def _B(self, t):
        t = self._t(t)
        return self.beta_min * t + 0.5 * t**2 * (self.beta_max - self.beta_min)

    def alpha(self, t):
        return torch.exp(-0.5 * self._B(t))

    def sigma(self, t):
        return (-torch.expm1(-self._B(t))).sqrt()

    def d_alpha(self, t):
        return -0.5 * self.beta(t) * self.alpha(t)

    def d_sigma(self, t):
        return self.beta(t) * self.alpha(t) ** 2 / (2 * self.sigma(t))

    def sigma_ve(self, t):
        return torch.expm1(self._B(t)).sqrt()

    def t_from_sigma_ve(self, sigma_ve):
        # sigma_ve^2 = e^{B(t)} - 1  =>  B = log(1 + sigma_ve^2); solve the quadratic B(t) = B for t >= 0
        B = torch.log1p(torch.as_tensor(self._arg(sigma_ve, "sigma_ve", integers=True), dtype=torch.float64) ** 2)
        k = self.beta_max - self.beta_min
        if k == 0:
            return B / self.beta_min
        return (torch.sqrt(self.beta_min**2 + 2 * k * B) - self.beta_min) / k


class VE(NoisePath):
    r"""The variance-exploding path with time equal to the noise level: :math:`\alpha_t = 1`, :math:`\sigma_t = t`
    (NCSN / EDM; :math:`t = \sigma`)."""

    name = "VE"

    def alpha(self, t):
        t = self._arg(t)
        t = torch.as_tensor(t, dtype=torch.float64)
        return torch.ones_like(t)

    def sigma(self, t):
        t = self._arg(t)
        return torch.as_tensor(t, dtype=torch.float64)

    def d_alpha(self, t):
        t = self._arg(t)
        return torch.zeros_like(torch.as_tensor(t, dtype=torch.float64))

    def d_sigma(self, t):
        t = self._arg(t)
        return torch.ones_like(torch.as_tensor(t, dtype=torch.float64))

    def t_from_sigma_ve(self, sigma_ve):
        sigma_ve = self._arg(sigma_ve, "sigma_ve", integers=True)
        return torch.as_tensor(sigma_ve, dtype=torch.float64)


class LinearPath(NoisePath):
    r"""The flow-matching / rectified-flow line :math:`x_t = (1-t)x_0 + t\varepsilon`, ``t`` in ``[0, 1]``:
    :math:`\alpha_t = 1-t`, :math:`\sigma_t = t`, so the velocity is :math:`u = \varepsilon - x_0` and
    :math:`\sigma^{\mathrm{VE}}_t = t/(1-t)`. (diffusers' ``FlowMatchEulerDiscreteScheduler`` calls this ``t`` sigma.)"""

    name = "LinearPath"

    def alpha(self, t):
        t = self._arg(t)
        return 1 - torch.as_tensor(t, dtype=torch.float64)

    def sigma(self, t):
        t = self._arg(t)
        return torch.as_tensor(t, dtype=torch.float64)

    def d_alpha(self, t):
        t = self._arg(t)
        return -torch.ones_like(torch.as_tensor(t, dtype=torch.float64))

    def d_sigma(self, t):
        t = self._arg(t)
        return torch.ones_like(torch.as_tensor(t, dtype=torch.float64))

    def t_from_sigma_ve(self, sigma_ve):
        sigma_ve = self._arg(sigma_ve, "sigma_ve", integers=True)
        sv = torch.as_tensor(sigma_ve, dtype=torch.float64)
        return torch.where(torch.isinf(sv), torch.ones_like(sv), sv / (1 + sv))


# ---------------------------------------------------------------------------------- EDM preconditioning
def edm_coefs(sigma_ve, sigma_data: float = 0.5):
    r"""EDM's preconditioning (Karras et al. 2022, Table 1) at noise level :math:`\sigma` (VE variable):
    :math:`c_{\text{skip}} = \sigma_d^2/(\sigma^2+\sigma_d^2)`,
    :math:`c_{\text{out}} = \sigma\sigma_d/\sqrt{\sigma^2+\sigma_d^2}`,
    :math:`c_{\text{in}} = 1/\sqrt{\sigma^2+\sigma_d^2}`, :math:`c_{\text{noise}} = \tfrac14\log\sigma`; the denoiser is
    :math:`D(x;\sigma) = c_{\text{skip}}x + c_{\text{out}}F(c_{\text{in}}x; c_{\text{noise}})`. Returns the four as float64."""
    sigma_data = validation.number("sigma_data", sigma_data, low=0, strict_low=True)
    if isinstance(sigma_ve, np.ndarray):
        sigma_ve = torch.from_numpy(sigma_ve)
    if isinstance(sigma_ve, torch.Tensor):
        if sigma_ve.is_complex() or sigma_ve.dtype == torch.bool:
            raise ValueError(f"sigma_ve must be a real number or tensor; got {validation.describe(sigma_ve)}")
    else:
        sigma_ve = validation.number("sigma_ve", sigma_ve, low=0, allow_inf=True)
    s = torch.as_tensor(sigma_ve, dtype=torch.float64)
    n = s**2 + sigma_data**2
    return sigma_data**2 / n, s * sigma_data / n.sqrt(), 1 / n.sqrt(), 0.25 * torch.log(s)


# ---------------------------------------------------------------------------------- the denoiser
class Denoiser:
    r"""A denoiser on a noise path: ``fn(x, t)`` returns a prediction of kind ``prediction`` at :math:`x_t` = ``x``,
    with ``t`` in the path's own time (LongTensor ``(B,)`` for :class:`DiscreteVP`, float ``(B,)`` otherwise).

    ``prediction`` is one of ``"eps"``, ``"x0"``, ``"v"``, ``"score"``, ``"velocity"`` (flow velocity
    :math:`u = \dot\alpha_t x_0 + \dot\sigma_t\varepsilon`) or ``"edm"``: then ``fn(x_in, c_noise)`` is EDM's raw network
    :math:`F`, called on :math:`c_{\text{in}}\,x/\alpha_t` and :math:`c_{\text{noise}}` (see :func:`edm_coefs`), and the
    prediction of :math:`x_0` is :math:`c_{\text{skip}}x/\alpha_t + c_{\text{out}}F`.

    ``Denoiser(model, DiscreteVP(sched), "eps")`` is an ordinary ε-network; the exact oracle of a Gaussian mixture is
    ``mixture.denoiser(path)``. The object is itself a callable returning :math:`\hat\varepsilon` (so it can be passed
    wherever an ``eps_fn`` goes); its device is that of ``fn`` (:func:`tinydiff.utils.device_of`).
    """

    def __init__(self, fn, path: NoisePath, prediction: str = "eps", *, sigma_data: float = 0.5):
        if not callable(fn):
            raise TypeError(f"fn must be a callable fn(x, t) -> prediction; got {validation.describe(fn)}")
        if not isinstance(path, NoisePath):
            raise TypeError(f"path must be a tinydiff.denoisers path (DiscreteVP, ContinuousVP, VE, LinearPath); "
                            f"got {validation.describe(path)}")
        self.fn, self.path = fn, path
        self.prediction = validation.choice("prediction", prediction, PREDICTIONS)
        self.sigma_data = validation.number("sigma_data", sigma_data, low=0, strict_low=True)

    @property
    def device(self) -> torch.device:
        return device_of(self.fn)

    def _t(self, t, x):
        x = validation.tensor("x", x, min_batch=1)
        t = self.path._arg(t)
        if not isinstance(t, torch.Tensor):
            t = torch.full((x.shape[0],), t, device=x.device,
                           dtype=torch.long if isinstance(self.path, DiscreteVP) else torch.float64)
        return self.path._batch(t, x)

    def predict(self, x: torch.Tensor, t):
        r"""The pair :math:`(\hat x_0, \hat\varepsilon)` at :math:`x_t` = ``x`` (one call of ``fn``)."""
        x = validation.tensor("x", x)
        t = self._t(t, x)
        a, s = self.path.alpha(t), self.path.sigma(t)
        if self.prediction == "edm":
            c_skip, c_out, c_in, c_noise = edm_coefs(self.path.sigma_ve(t), self.sigma_data)
            x_ve = x / expand_to(a, x)
            x_in = expand_to(c_in, x) * x_ve
            x0 = expand_to(c_skip, x) * x_ve + expand_to(c_out, x) * self._out(self.fn(x_in, c_noise.to(x.dtype)), x)
            return x0, convert.x0_eps_from("x0", x0, x, a, s)[1]
        pred = self._out(self.fn(x, t), x)
        if self.prediction == "velocity":
            return convert.x0_eps_from("velocity", pred, x, a, s, self.path.d_alpha(t), self.path.d_sigma(t))
        return convert.x0_eps_from(self.prediction, pred, x, a, s)

    def _out(self, out, x):
        """Check what ``fn`` returned on its metadata (no host sync: this runs at every step): a tensor of ``x``'s
        shape on ``x``'s device (a wrong shape would otherwise broadcast silently in the conversions)."""
        if out is None:
            raise TypeError("the Denoiser's fn returned None: did it forget to `return` its prediction?")
        if not isinstance(out, torch.Tensor):
            raise TypeError(f"the Denoiser's fn must return a torch.Tensor of shape {tuple(x.shape)} (its "
                            f"{self.prediction} prediction); it returned {validation.describe(out)}")
        if tuple(out.shape) != tuple(x.shape):
            raise ValueError(f"the Denoiser's fn returned shape {tuple(out.shape)}; it must return the shape of its "
                             f"input x, {tuple(x.shape)}")
        if out.device != x.device:
            raise ValueError(f"the Denoiser's fn returned a tensor on {out.device} for input x on {x.device}; it must "
                             f"return its prediction on the device of x")
        return out

    def x0(self, x, t):
        r""":math:`\hat x_0(x_t, t)`, the posterior-mean estimate (Tweedie)."""
        return self.predict(x, t)[0]

    def eps(self, x, t):
        r""":math:`\hat\varepsilon(x_t, t) = (x_t - \alpha_t\hat x_0)/\sigma_t`."""
        return self.predict(x, t)[1]

    __call__ = eps

    def score(self, x, t):
        r""":math:`\nabla\log p_t(x_t) = -\hat\varepsilon/\sigma_t`."""
        t = self._t(t, x)
        return -self.eps(x, t) / expand_to(self.path.sigma(t), x)

    def v(self, x, t):
        r""":math:`\hat v = \alpha_t\hat\varepsilon - \sigma_t\hat x_0`."""
        t = self._t(t, x)
        x0, eps = self.predict(x, t)
        return convert.prediction_from("v", x0, eps, self.path.alpha(t), self.path.sigma(t))

    def velocity(self, x, t):
        r"""The probability-flow velocity of the path, :math:`\hat u = \dot\alpha_t\hat x_0 + \dot\sigma_t\hat\varepsilon`."""
        t = self._t(t, x)
        x0, eps = self.predict(x, t)
        p = self.path
        return convert.prediction_from("velocity", x0, eps, p.alpha(t), p.sigma(t), p.d_alpha(t), p.d_sigma(t))

    def eps_fn(self):
        """``eps_fn(x, t)`` for the samplers of lessons 02–06 (on a :class:`DiscreteVP` path: ``t`` LongTensor)."""
        return self.eps

    def on(self, path: NoisePath) -> "Denoiser":
        r"""The same model on another path, matched by signal-to-noise ratio: at time :math:`t'` of ``path``, the point
        :math:`x'` is :math:`x = x'\,\alpha_t/\alpha'_{t'}` of this path at the :math:`t` with the same
        :math:`\sigma^{\mathrm{VE}}`, and both have the same :math:`\hat x_0`. Returns an ``"x0"`` denoiser on ``path``.
        (On a :class:`DiscreteVP` source the matched time is the nearest table step.)"""
        src = self.path

        def x0_fn(x, t):
            t_src = src.t_from_sigma_ve(path.sigma_ve(t))
            if isinstance(src, DiscreteVP):
                t_src = t_src.long()
            scale = src.alpha(t_src) / path.alpha(t)
            return self.x0(x * expand_to(scale, x), t_src)

        x0_fn.device = self.device  # so samplers find where the model lives
        return Denoiser(x0_fn, path, "x0")

    def x0_sigma(self):
        r"""The k-diffusion-style denoiser :math:`D(x, \sigma)` in the VE variable: ``D(x_ve, sigma_ve)`` returns
        :math:`\hat x_0` at :math:`x_t = \alpha_t x_{\mathrm{ve}}` where :math:`\sigma_t/\alpha_t` = ``sigma_ve``
        (a scalar or ``(B,)``). At ``sigma_ve = 0`` it returns ``x_ve`` (nothing to denoise)."""
        path = self.path

        def D(x_ve, sigma_ve):
            sv = torch.as_tensor(sigma_ve, dtype=torch.float64, device=x_ve.device)
            if sv.ndim == 0:
                sv = sv.expand(x_ve.shape[0])
            t = path.t_from_sigma_ve(sv)
            if isinstance(path, DiscreteVP):
                t = t.long()
            return self.x0(x_ve * expand_to(path.alpha(t), x_ve), t)

        D.device = self.device
        return D

    def __repr__(self) -> str:
        return f"Denoiser({getattr(self.fn, '__name__', type(self.fn).__name__)}, {self.path}, prediction={self.prediction!r})"
