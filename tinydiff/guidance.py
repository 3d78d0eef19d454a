r"""Guidance (lesson 06): two ways to inject a condition :math:`y` into a diffusion sampler.

Bayes' rule on the noised data gives the conditional score as the unconditional one plus a classifier gradient,

.. math:: \nabla_{x_t}\log p(x_t\mid y) = \nabla_{x_t}\log p(x_t) + \nabla_{x_t}\log p(y\mid x_t),

and with :math:`\varepsilon = -\sqrt{1-\bar\alpha_t}\,\nabla\log p(x_t)` (lesson 05) a guidance strength :math:`\gamma` gives

- **classifier guidance**:
  :math:`\hat\varepsilon = \varepsilon_\theta(x_t,t) - \gamma\sqrt{1-\bar\alpha_t}\,\nabla\log p_\phi(y\mid x_t)`
  (:func:`classifier_eps`), or in DDPM-mean form :math:`\mu_\theta + \gamma\sigma_t^2\nabla\log p_\phi` (:func:`guided_mean`);
- **classifier-free guidance (CFG)**:
  :math:`\hat\varepsilon = (1+\gamma)\varepsilon_\theta(x_t,t,y) - \gamma\varepsilon_\theta(x_t,t,\varnothing)`
  (:func:`cfg`), with one network trained with label dropout (:func:`drop_labels`, :func:`cfg_loss`).

Two conventions for the strength are in use: the lecture's (and Ho & Salimans') :math:`\gamma`, where
:math:`\gamma = 0` is the plain conditional model, and diffusers' ``guidance_scale`` :math:`w = 1 + \gamma`
(:func:`guidance_scale_from_gamma`), where :math:`w = 1` is the conditional model.

The *oracle* versions (a labelled :class:`tinydiff.data.GaussianMixture`) are exact: :func:`oracle_class_log_prob`,
:func:`oracle_class_grad`, :func:`oracle_cfg_eps_fn`, and the tilted density :func:`tilted_log_density` that
CFG is often (wrongly) said to sample. Every ``*_eps_fn`` builder returns an ``eps_fn(x, t)`` that any
sampler takes (``td.ddpm.sample``, ``td.ddim.sample``, ...).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from . import ddpm, metrics, validation
from .utils import check_same_shape, expand_to, noise_like, progress, sampler_start, table_on

__all__ = [
    "cfg",
    "cfg_diffusers",
    "guidance_scale_from_gamma",
    "gamma_from_guidance_scale",
    "classifier_eps",
    "guided_score",
    "guided_mean",
    "drop_labels",
    "classifier_grad",
    "oracle_class_log_prob",
    "oracle_class_grad",
    "classifier_guided_eps_fn",
    "cfg_eps_fn",
    "cfg_eps_fn_from",
    "oracle_cfg_eps_fn",
    "oracle_classifier_eps_fn",
    "guided_ddpm_sample",
    "classifier_loss",
    "cfg_loss",
    "tilted_log_density",
    "grid_moments",
    "gamma_browser",
    "tradeoff",
]


# ------------------------------------------------------------------------------------------ checks
def _x(name: str, value) -> torch.Tensor:
    return validation.tensor(name, value, ndim=tuple(range(1, 9)))


_float64 = validation.reals  # a number, list or tensor of reals as float64, refused by name


def _alpha_bar(value) -> torch.Tensor:
    r""":math:`\bar\alpha_t` as float64, in ``[0, 1]`` (checked for values on the CPU only: no device sync)."""
    ab = _float64("alpha_bar_t", value)
    if ab.device.type == "cpu" and ab.numel() and not bool(((ab >= 0) & (ab <= 1)).all()):
        raise ValueError(f"alpha_bar_t must lie in [0, 1]; got values from {float(ab.min()):.3g} to {float(ab.max()):.3g}")
    return ab


def _check_gm(gm):
    if not all(callable(getattr(gm, k, None)) for k in ("conditional", "log_prob", "eps_fn")):
        raise TypeError(f"gm must be a labelled td.data.GaussianMixture; got {validation.describe(gm)}")
    return gm


def _check_gamma(gamma, x: torch.Tensor | None = None, name: str = "gamma (the guidance strength, 0 = no guidance)"):
    """γ is a finite real number, or a per-sample tensor ``(B,)`` (several strengths in one batch)."""
    if isinstance(gamma, torch.Tensor) and gamma.ndim > 0:
        if not torch.isfinite(gamma).all():
            raise ValueError("the guidance strength gamma must be finite; got a tensor with NaN or inf")
        if x is not None and (gamma.ndim != 1 or gamma.shape[0] != x.shape[0]):
            raise ValueError(f"a per-sample gamma must have shape ({x.shape[0]},); got {tuple(gamma.shape)}")
        return gamma
    return validation.number(name, gamma)


def _as_labels(y, batch: int, num_classes: int | None = None, *, allow_null: bool = False) -> torch.Tensor:
    """An int or a LongTensor ``(B,)`` of class indices -> LongTensor ``(B,)`` (checked against ``num_classes``).

    The range is checked for labels on the CPU; labels already on an accelerator are checked for dtype and shape
    only (reading them would cost a device->host sync at every sampler step)."""
    try:
        y = torch.as_tensor(y)
    except (TypeError, ValueError, RuntimeError):
        raise ValueError(f"labels y must be an int or a LongTensor of class indices; got {validation.describe(y)}") \
            from None
    if y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
        raise ValueError(f"labels y must be integer class indices; got dtype {y.dtype}")
    if y.ndim == 0:
        y = y.expand(batch)
    if y.shape != (batch,):
        raise ValueError(f"labels y must be an int or have shape ({batch},) to match the batch; got {tuple(y.shape)}")
    if num_classes is not None and y.numel() and y.device.type == "cpu":
        top = num_classes if allow_null else num_classes - 1
        if int(y.min()) < 0 or int(y.max()) > top:
            raise ValueError(f"labels y must lie in 0..{top}; got values from {int(y.min())} to {int(y.max())}")
    return y.long()


def _scalar(y) -> bool:
    """Whether labels ``y`` are one label (an int, a 0-d tensor, None or anything without a length)."""
    return (isinstance(y, torch.Tensor) and y.ndim == 0) or not hasattr(y, "__len__") or isinstance(y, (str, bytes))


def _on(value, x: torch.Tensor, cache: dict):
    """A per-sample tensor (labels, strengths) moved to ``x``'s device once and kept for the following steps."""
    if not isinstance(value, torch.Tensor) or value.device == x.device:
        return value
    key = (str(x.device), value.dtype)
    if key not in cache:
        cache[key] = value.to(x.device)
    return cache[key]


def _cfg(eps_uncond, eps_cond, g):
    r""":math:`(1+\gamma)\varepsilon_y - \gamma\varepsilon_\varnothing`, unchecked (``g`` a number or broadcastable)."""
    return (1 + g) * eps_cond - g * eps_uncond


def _gamma_like(gamma, x):
    return expand_to(gamma, x) if isinstance(gamma, torch.Tensor) else gamma


# ------------------------------------------------------------------------------------------ the algebra
def cfg(eps_uncond: torch.Tensor, eps_cond: torch.Tensor, gamma) -> torch.Tensor:
    r"""Classifier-free guidance, the lecture's form:
    :math:`\hat\varepsilon = (1+\gamma)\,\varepsilon_\theta(x_t,t,y) - \gamma\,\varepsilon_\theta(x_t,t,\varnothing)`.

    ``gamma = 0`` returns the conditional prediction, ``gamma = -1`` the unconditional one. ``gamma`` may be
    a per-sample tensor ``(B,)``.
    """
    eps_uncond, eps_cond = _x("eps_uncond", eps_uncond), _x("eps_cond", eps_cond)
    check_same_shape(eps_uncond=eps_uncond, eps_cond=eps_cond)
    g = expand_to(_check_gamma(gamma, eps_cond), eps_cond)
    return (1 + g) * eps_cond - g * eps_uncond


def cfg_diffusers(eps_uncond: torch.Tensor, eps_cond: torch.Tensor, guidance_scale) -> torch.Tensor:
    r"""The same combination in diffusers' convention:
    :math:`\hat\varepsilon = \varepsilon_\varnothing + w\,(\varepsilon_y - \varepsilon_\varnothing)`,
    with ``guidance_scale`` :math:`w = 1 + \gamma` (so :math:`w = 1` is the conditional model, not :math:`w = 0`)."""
    eps_uncond, eps_cond = _x("eps_uncond", eps_uncond), _x("eps_cond", eps_cond)
    check_same_shape(eps_uncond=eps_uncond, eps_cond=eps_cond)
    w = expand_to(_check_gamma(guidance_scale, eps_cond, "guidance_scale"), eps_cond)
    return eps_uncond + w * (eps_cond - eps_uncond)


def guidance_scale_from_gamma(gamma):
    r"""diffusers' ``guidance_scale`` :math:`w = 1 + \gamma` for the lecture's strength :math:`\gamma`."""
    return 1 + _check_gamma(gamma)


def gamma_from_guidance_scale(guidance_scale):
    r"""The lecture's strength :math:`\gamma = w - 1` for diffusers' ``guidance_scale`` :math:`w`."""
    return _check_gamma(guidance_scale, name="guidance_scale") - 1


def classifier_eps(eps: torch.Tensor, grad_log_py: torch.Tensor, alpha_bar_t, gamma) -> torch.Tensor:
    r"""Classifier guidance on the noise prediction:
    :math:`\hat\varepsilon = \varepsilon - \gamma\sqrt{1-\bar\alpha_t}\,\nabla_{x_t}\log p_\phi(y\mid x_t)`.

    ``alpha_bar_t`` is a scalar or per-sample ``(B,)``; ``gamma`` a number or per-sample ``(B,)``.
    """
    eps, grad_log_py = _x("eps", eps), _x("grad_log_py", grad_log_py)
    check_same_shape(eps=eps, grad_log_py=grad_log_py)
    g = expand_to(_check_gamma(gamma, eps), eps)
    ab = _alpha_bar(alpha_bar_t)
    if ab.ndim > 1 or (ab.ndim == 1 and ab.shape[0] not in (1, eps.shape[0])):
        raise ValueError(f"alpha_bar_t must be a number or have shape ({eps.shape[0]},); got {tuple(ab.shape)}")
    ab = expand_to(ab, eps)
    return eps - g * (1 - ab).sqrt() * grad_log_py


def guided_score(score: torch.Tensor, grad_log_py: torch.Tensor, gamma) -> torch.Tensor:
    r"""The guided score :math:`\nabla\log p(x_t) + \gamma\,\nabla\log p(y\mid x_t)` (``gamma = 1``: the conditional score)."""
    score, grad_log_py = _x("score", score), _x("grad_log_py", grad_log_py)
    check_same_shape(score=score, grad_log_py=grad_log_py)
    return score + expand_to(_check_gamma(gamma, score), score) * grad_log_py


def guided_mean(mean: torch.Tensor, var, grad_log_py: torch.Tensor, gamma) -> torch.Tensor:
    r"""Dhariwal & Nichol's guided DDPM step mean :math:`\mu + \gamma\,\Sigma\,\nabla_{x_t}\log p_\phi(y\mid x_t)`
    with :math:`\Sigma = \sigma_t^2 I`; ``var`` is :math:`\sigma_t^2` (a number, per-sample ``(B,)``, or broadcastable)."""
    mean, grad_log_py = _x("mean", mean), _x("grad_log_py", grad_log_py)
    check_same_shape(mean=mean, grad_log_py=grad_log_py)
    var = _float64("var", var) if not isinstance(var, torch.Tensor) else validation.tensor("var", var)
    var = torch.as_tensor(var, dtype=mean.dtype, device=mean.device)
    if var.ndim == 1:
        if var.shape[0] not in (1, mean.shape[0]):
            raise ValueError(f"var must be a number or have shape ({mean.shape[0]},); got {tuple(var.shape)}")
        var = expand_to(var, mean)
    else:
        try:
            torch.broadcast_shapes(var.shape, mean.shape)
        except RuntimeError:
            raise ValueError(f"var must broadcast against mean {tuple(mean.shape)}; got {tuple(var.shape)}") from None
    return mean + expand_to(_check_gamma(gamma, mean), mean) * var * grad_log_py


# ------------------------------------------------------------------------------------------ training
def drop_labels(y: torch.Tensor, p_uncond: float, null_label: int, generator: torch.Generator | None = None) -> torch.Tensor:
    r"""Algorithm 1, line 3: replace each label by the null label :math:`\varnothing` (index ``null_label``) with
    probability ``p_uncond``, independently. The coin flips are drawn on the CPU from ``generator``."""
    p_uncond = validation.number("p_uncond (a probability; the paper uses 0.1 or 0.2)", p_uncond, low=0, high=1)
    null_label = validation.integer("null_label (the int num_classes, the index after the last class)", null_label,
                                    low=1)
    y = _as_labels(y, 1, null_label) if _scalar(y) else _as_labels(y, len(y), null_label)
    drop = torch.rand(y.shape[0], generator=generator).to(y.device) < p_uncond
    return torch.where(drop, torch.full_like(y, null_label), y)


def cfg_loss(model, x0: torch.Tensor, y: torch.Tensor, sched, *, p_uncond: float = 0.1, null_label: int | None = None,
             generator: torch.Generator | None = None) -> torch.Tensor:
    r"""Algorithm 1 of Ho & Salimans: the :math:`\varepsilon`-loss of ``model(x_t, t, y)`` with labels dropped to
    :math:`\varnothing` with probability ``p_uncond``, so one network learns both :math:`\varepsilon(x,y)` and
    :math:`\varepsilon(x,\varnothing)`. ``null_label`` defaults to ``model.embed.num_classes``."""
    if null_label is None:
        null_label = _null_label_of(model)
    y_in = drop_labels(y, p_uncond, null_label, generator)
    return ddpm.loss(model, x0, sched, model_kwargs={"y": y_in})


def classifier_loss(classifier, x0: torch.Tensor, y: torch.Tensor, sched, *, t=None, eps=None) -> torch.Tensor:
    r"""Cross-entropy of a noise-conditional classifier :math:`p_\phi(y\mid x_t, t)` on noised data
    :math:`x_t = \sqrt{\bar\alpha_t}x_0 + \sqrt{1-\bar\alpha_t}\varepsilon`, :math:`t\sim\mathcal U\{1..T\}`."""
    sched = validation.schedule("sched", sched)
    x0 = _x("x0", x0)
    if not callable(classifier):
        raise TypeError(f"classifier must be a callable classifier(x, t) -> logits; got {validation.describe(classifier)}")
    B = x0.shape[0]
    y = _as_labels(y, B).to(x0.device)
    if t is None:
        t = torch.randint(1, sched.T + 1, (B,), device=x0.device)
    t = sched.check_t(t, B, low=0).to(x0.device)
    if eps is None:
        eps = torch.randn_like(x0)
    xt = ddpm.q_sample(x0, t, eps, sched)
    logits = _logits(classifier(xt, t), B)
    _as_labels(y, B, logits.shape[1])  # the labels against the classifier's K
    return F.cross_entropy(logits, y)


def _logits(out, batch: int) -> torch.Tensor:
    if not isinstance(out, torch.Tensor):
        hint = " (did it forget to `return`?)" if out is None else ""
        raise TypeError(f"the classifier must return logits, a tensor ({batch}, K); it returned "
                        f"{validation.describe(out)}{hint}")
    if out.ndim != 2 or out.shape[0] != batch:
        raise ValueError(f"the classifier must return logits of shape ({batch}, K); got {tuple(out.shape)}")
    return out


def _null_label_of(model) -> int:
    embed = getattr(model, "embed", None)
    k = getattr(embed, "num_classes", None)
    if not k:
        raise ValueError("cannot tell the null label of this model: pass null_label=num_classes "
                         "(the model must be built with num_classes=K to take labels)")
    return int(k)


# ------------------------------------------------------------------------------------------ gradients
def classifier_grad(classifier, x: torch.Tensor, t, y) -> torch.Tensor:
    r""":math:`\nabla_{x_t}\log p_\phi(y\mid x_t, t)` by autograd, for a classifier that returns logits ``(B, K)``.

    Works inside ``torch.no_grad()`` samplers. Each sample's gradient is that of its own log-probability
    (the batch is summed, which is exact as long as the classifier treats samples independently: no BatchNorm).
    """
    x = _x("x", x)
    if not callable(classifier):
        raise TypeError(f"classifier must be a callable classifier(x, t) -> logits; got {validation.describe(classifier)}")
    with torch.enable_grad():
        x_ = x.detach().requires_grad_(True)
        logits = _logits(classifier(x_, t), x.shape[0])
        yy = _as_labels(y, x.shape[0], logits.shape[1]).to(x.device)
        logp = torch.log_softmax(logits.float(), dim=1).gather(1, yy[:, None]).sum()
        (grad,) = torch.autograd.grad(logp, x_)
    return grad.to(x.dtype)


def oracle_class_log_prob(gm, x: torch.Tensor, alpha_bar_t, y) -> torch.Tensor:
    r"""Exact :math:`\log p(y\mid x_t)` of a labelled mixture at noise level :math:`\bar\alpha_t`, by Bayes' rule:
    :math:`\log\pi_y + \log p(x_t\mid y) - \log p(x_t)` (each a log-sum-exp over components, so it never underflows).
    ``y`` is an int (one class for the whole batch)."""
    _check_gm(gm)._require_labels()
    x = _x("x", x)
    y = validation.integer("y (one class for the whole batch)", y)
    ab = _alpha_bar(alpha_bar_t).to(x.device)
    a, s = ab.sqrt(), (1 - ab).sqrt()
    cond = gm.conditional(y)
    log_pi = torch.log(gm.weights[gm.labels == y].sum())
    return log_pi + cond.log_prob(x, a, s) - gm.log_prob(x, a, s)


def oracle_class_grad(gm, x: torch.Tensor, alpha_bar_t, y) -> torch.Tensor:
    r""":math:`\nabla_{x_t}\log p(y\mid x_t)` of the mixture oracle, by autograd of :func:`oracle_class_log_prob`
    (float64 inside; independent of the closed-form scores, so it can check them)."""
    x = _x("x", x)
    with torch.enable_grad():
        x_ = x.detach().to(torch.float64).requires_grad_(True)
        (grad,) = torch.autograd.grad(oracle_class_log_prob(gm, x_, alpha_bar_t, y).sum(), x_)
    return grad.to(x.dtype)


# ------------------------------------------------------------------------------------------ eps_fn builders
def classifier_guided_eps_fn(eps_fn, grad_fn, y, gamma, sched):
    r"""Wrap an unconditional ``eps_fn(x, t)`` and a classifier gradient ``grad_fn(x, t, y)`` into the guided
    ``eps_fn(x, t)`` of :func:`classifier_eps`, usable by any sampler (DDPM, DDIM, ...).

    ``grad_fn`` is e.g. ``lambda x, t, y: classifier_grad(clf, x, t, y)``."""
    gamma = _check_gamma(gamma)
    cache: dict = {}

    def guided_eps(x, t):  # sqrt(1 - alpha_bar_t) from ddpm's float64 table, cast once to x's device and dtype
        g = _gamma_like(_on(gamma, x, cache), x)
        return eps_fn(x, t) - g * ddpm._coef(sched, "sqrt_1mab", t, x) * grad_fn(x, t, y)

    return guided_eps


def cfg_eps_fn_from(eps_cond_fn, eps_uncond_fn, gamma):
    r"""Combine two callables ``eps(x, t)`` into the CFG ``eps_fn``
    :math:`(1+\gamma)\varepsilon_y - \gamma\varepsilon_\varnothing`."""
    gamma = _check_gamma(gamma)
    cache: dict = {}

    def guided_eps(x, t):
        return _cfg(eps_uncond_fn(x, t), eps_cond_fn(x, t), _gamma_like(_on(gamma, x, cache), x))

    return guided_eps


def cfg_eps_fn(model, y, gamma, *, null_label: int | None = None):
    r"""The CFG ``eps_fn(x, t)`` of one label-conditional network ``model(x, t, y)`` (null label = :math:`\varnothing`).

    Conditional and unconditional predictions come from one forward pass on a doubled batch. ``y`` is an int
    or ``(B,)`` labels and ``gamma`` a number or ``(B,)`` strengths, so one call can sample many (y, γ) pairs.
    """
    if null_label is None:
        null_label = _null_label_of(model)
    null_label = validation.integer("null_label (the int num_classes, the index after the last class)", null_label,
                                    low=1)
    gamma = _check_gamma(gamma)
    if isinstance(y, torch.Tensor) and y.ndim:
        _as_labels(y, y.shape[0], null_label)  # checked once, here
    labels: dict = {}
    cache: dict = {}

    def guided_eps(x, t):
        B = x.shape[0]
        key = (B, str(x.device))
        if key not in labels:  # [y; null] built once per batch size and device, not at every step
            yy = _as_labels(y, B, null_label).to(x.device)
            labels[key] = torch.cat([yy, torch.full_like(yy, null_label)])
        out = model(torch.cat([x, x]), torch.cat([t, t]), labels[key])
        eps_cond, eps_uncond = out[:B], out[B:]
        return _cfg(eps_uncond, eps_cond, _gamma_like(_on(gamma, x, cache), eps_cond))

    return guided_eps


def oracle_cfg_eps_fn(gm, sched, y: int, gamma):
    r"""Exact CFG on the mixture oracle: :math:`(1+\gamma)\varepsilon^*(x_t\mid y) - \gamma\varepsilon^*(x_t)`."""
    return cfg_eps_fn_from(_check_gm(gm).conditional(y).eps_fn(sched), gm.eps_fn(sched), gamma)


def oracle_classifier_eps_fn(gm, sched, y: int, gamma):
    r"""Exact classifier guidance on the mixture oracle:
    :math:`\varepsilon^*(x_t) - \gamma\sqrt{1-\bar\alpha_t}\nabla\log p(y\mid x_t)`."""

    _check_gm(gm)

    def grad_fn(x, t, yy):
        return oracle_class_grad(gm, x, table_on(sched.alpha_bar, t.device)[t], yy)

    return classifier_guided_eps_fn(gm.eps_fn(sched), grad_fn, y, gamma, sched)


# ------------------------------------------------------------------------------------------ guided DDPM
@torch.no_grad()
def guided_ddpm_sample(eps_fn, shape, sched, *, grad_fn, y, gamma, x_T: torch.Tensor | None = None,
                       generator: torch.Generator | None = None, progress_bar: bool = True, callback=None, device=None,
                       var: str = "posterior"):
    r"""Classifier-guided ancestral sampling in Dhariwal & Nichol's *mean* form (their Algorithm 1):
    :math:`x_{t-1}\sim\mathcal N\big(\mu_\theta(x_t,t) + \gamma\sigma_t^2\nabla\log p_\phi(y\mid x_t),\ \sigma_t^2 I\big)`,
    with ``grad_fn(x, t, y)`` :math:`= \nabla_{x_t}\log p_\phi(y\mid x_t)` and ``gamma`` a number or per-sample ``(B,)``.

    The signature of :func:`tinydiff.ddpm.sample` (all ``T`` steps; ``callback(i, t, x)``, the device of the model,
    noise drawn on the CPU from ``generator`` exactly as there, so ``gamma = 0`` reproduces it sample for sample).
    (The :math:`\varepsilon`-form, :func:`classifier_guided_eps_fn`, shifts the mean by
    :math:`\gamma\beta_t/\sqrt{\alpha_t}\,\nabla\log p_\phi` instead: the same to first order in :math:`\beta_t`.)
    """
    sched = validation.schedule("sched", sched)
    gamma = _check_gamma(gamma)
    if not callable(grad_fn):
        raise TypeError(f"grad_fn must be a callable grad_fn(x, t, y); got {validation.describe(grad_fn)}")
    x, device = sampler_start(eps_fn, shape, x_T=x_T, generator=generator, device=device, callback=callback)
    _check_gamma(gamma, x)
    coefs = ddpm.sample_coefs(sched, var)
    var_table = ddpm.reverse_variance(sched, var)
    s2 = [float(var_table[t]) if t > 1 else 0.0 for t in range(sched.T, 0, -1)]
    g = _gamma_like(gamma.to(device) if isinstance(gamma, torch.Tensor) else gamma, x)
    B, T = x.shape[0], sched.T
    if callback is not None:
        callback(0, T, x)
    for i in progress(range(1, T + 1), desc="guided DDPM", disable=not progress_bar):
        t_int = T + 1 - i
        t = torch.full((B,), t_int, dtype=torch.long, device=device)
        eps, grad = eps_fn(x, t), grad_fn(x, t, y)
        if i == 1:
            validation.output("eps_fn", eps, like=x)
            validation.output("grad_fn", grad, like=x)
        a, b, sig = coefs[i - 1]
        mean = torch.sub(x * a, eps, alpha=b) + (g * s2[i - 1]) * grad
        x = mean.add_(noise_like(x, generator), alpha=sig) if t_int > 1 else mean
        if callback is not None:
            callback(i, t_int - 1, x)
    return x


# ------------------------------------------------------------------------------------------ a 2-D classifier
# ------------------------------------------------------------------------------------------ what CFG is not
def tilted_log_density(gm, y: int, gamma):
    r"""The unnormalised log-density :math:`(1+\gamma)\log p(x\mid y) - \gamma\log p(x)` of the clean data,
    i.e. :math:`\log\big[p(x\mid y)\,p(y\mid x)^{\gamma}\big]` up to a constant: what CFG would sample if guidance
    commuted with noising. Returns a function ``x (N, D) -> (N,)``."""
    gamma = _check_gamma(gamma)
    cond = _check_gm(gm).conditional(y)

    def log_density(x):
        return (1 + gamma) * cond.log_prob(x) - gamma * gm.log_prob(x)

    return log_density


def grid_moments(log_density_fn, *, lim: float = 5.0, n: int = 400, center=(0.0, 0.0)):
    r"""Mean ``(2,)`` and covariance ``(2, 2)`` of the 2-D density :math:`\propto e^{\text{log\_density\_fn}}` by
    quadrature on an ``n × n`` grid over ``center ± lim`` (float64; the normaliser cancels)."""
    n = validation.integer("n (grid points per axis)", n, low=10)
    lim = validation.number("lim", lim, low=0, strict_low=True)
    if not callable(log_density_fn):
        raise TypeError(f"log_density_fn must be a callable log_density_fn(x (N, 2)) -> (N,); got "
                        f"{validation.describe(log_density_fn)}")
    c = _float64("center", center)
    if c.shape != (2,):
        raise ValueError(f"center must be a 2-D point like (0.0, 0.0); got {validation.describe(center)}")
    u = torch.linspace(-lim, lim, n, dtype=torch.float64)
    gx, gy = torch.meshgrid(u + c[0], u + c[1], indexing="xy")
    pts = torch.stack([gx.flatten(), gy.flatten()], 1)
    logp = log_density_fn(pts)
    if not isinstance(logp, torch.Tensor) or tuple(logp.shape) != (n * n,):
        hint = " (did it forget to `return`?)" if logp is None else ""
        raise ValueError(f"log_density_fn must return one log-density per point, shape ({n * n},); it returned "
                         f"{validation.describe(logp)}{hint}")
    logp = logp.double()
    w = torch.softmax(logp, 0)
    edge = torch.cat([w.reshape(n, n)[[0, -1]].flatten(), w.reshape(n, n)[:, [0, -1]].flatten()]).max()
    if edge > 1e-8:
        raise ValueError(f"the density is not negligible at the edge of the grid (weight {edge:.2g}): increase lim")
    mean = w @ pts
    d = pts - mean
    return mean, (w[:, None] * d).T @ d


def gamma_browser(samples_by_gamma: dict, *, nrow: int = 10, panel_size: float = 2.6):
    r"""Show precomputed image samples for several guidance strengths :math:`\gamma`.

    Always draws a static figure (one grid per :math:`\gamma`, which renders everywhere, nbval included) and, when
    ``ipywidgets`` is importable, also returns a slider that selects among the same grids in a live notebook
    (nothing is re-sampled). ``samples_by_gamma`` maps γ to images ``(B, C, H, W)`` in ``[-1, 1]``.
    """
    import matplotlib.pyplot as plt

    from .plotting import show_images

    if not samples_by_gamma:
        raise ValueError("samples_by_gamma is empty: pass {gamma: images (B, C, H, W)}")
    gammas = list(samples_by_gamma)
    fig, axes = plt.subplots(1, len(gammas), figsize=(panel_size * len(gammas), panel_size * 1.1))
    for ax, g in zip(list(getattr(axes, "flat", [axes])), gammas):
        show_images(samples_by_gamma[g], nrow=nrow, ax=ax)
        ax.set_title(f"γ = {g:g}  (w = {1 + g:g})", fontsize=9)
    fig.tight_layout()
    try:
        import ipywidgets as widgets
    except ImportError:
        return fig, None

    def show(gamma):
        show_images(samples_by_gamma[gamma], nrow=nrow, title=f"γ = {gamma:g}")
        plt.show()

    slider = widgets.interactive(show, gamma=widgets.SelectionSlider(options=gammas, value=gammas[0], description="γ"))
    return fig, slider


@torch.no_grad()
def tradeoff(judge, images: torch.Tensor, labels: torch.Tensor, gammas, real_images: torch.Tensor,
             real_labels: torch.Tensor, *, k: int = 3) -> list[dict]:
    r"""Fidelity and diversity of guided samples, one row per :math:`\gamma`.

    ``images``/``labels`` hold ``len(gammas)`` consecutive equal blocks of samples (block ``i`` sampled with
    ``gammas[i]``). An independent ``judge`` classifier (with a ``features`` method, e.g.
    :class:`tinydiff.models.Classifier`) gives the **accuracy**; on its features we measure the mean
    :func:`tinydiff.metrics.within_class_spread` and the per-class :func:`tinydiff.metrics.knn_recall`
    against ``real_images`` of each class.
    """
    gammas = list(gammas)
    if len(images) % len(gammas) or len(labels) != len(images):
        raise ValueError(f"images and labels must hold len(gammas)={len(gammas)} equal blocks; got {len(images)} images")
    dev = next(judge.parameters()).device
    logits = torch.cat([judge(b.to(dev)).cpu() for b in images.split(512)])
    feats = torch.cat([judge.features(b.to(dev)).cpu() for b in images.split(512)])
    feat_real = torch.cat([judge.features(b.to(dev)).cpu() for b in real_images.split(512)])
    labels, real_labels = labels.cpu(), real_labels.cpu()
    m, rows = len(images) // len(gammas), []
    for i, gam in enumerate(gammas):
        f, y = feats[i * m:(i + 1) * m], labels[i * m:(i + 1) * m]
        classes = [c for c in y.unique().tolist() if (y == c).sum() > k and (real_labels == c).any()]
        recall = sum(metrics.knn_recall(feat_real[real_labels == c], f[y == c], k) for c in classes) / max(1, len(classes))
        rows.append(dict(gamma=float(gam), accuracy=(logits[i * m:(i + 1) * m].argmax(1) == y).double().mean().item(),
                         spread=metrics.within_class_spread(f, y).nanmean().item(), recall=recall))
    return rows
