"""One small training loop for every lesson: minibatches, AdamW, EMA, AMP on CUDA, a progress bar,
a NaN guard, and atomic checkpoints that resume exactly where they stopped.

    result = td.train.fit(model, loss_fn, data, steps=2000, batch_size=256, ckpt="runs/ddpm.pt")

``loss_fn(model, batch) -> scalar`` decides what is learned; ``data`` is a tensor ``(N, ...)``, a tuple of
tensors sampled together (e.g. images and labels), or a callable ``data(batch_size, generator)``.
"""

from __future__ import annotations

import copy
import os
import tempfile
from dataclasses import dataclass, field

import torch
from torch import nn

from .utils import device as default_device
from .utils import progress

__all__ = ["EMA", "fit", "FitResult", "save_checkpoint", "load_checkpoint", "TrainingDiverged", "CheckpointMismatch"]


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite."""


class CheckpointMismatch(ValueError):
    """A checkpoint was written by a different model (class or parameter shapes)."""


class EMA:
    r"""Exponential moving average of a model's weights: :math:`\bar\theta \leftarrow d_k\,\bar\theta + (1-d_k)\,\theta`.

    The decay warms up, :math:`d_k = \min\big(d, \tfrac{1+k}{10+k}\big)` at update ``k``, so that a short run is
    not dominated by the untrained initial weights (with a fixed ``d = 0.999``, 1,000 steps would still
    keep :math:`0.999^{1000} \approx 37\%` of them). ``ema.model`` is a frozen copy used for sampling.
    """

    def __init__(self, model: nn.Module, decay: float = 0.999):
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must lie in [0, 1); got {decay}")
        self.decay = decay
        self.updates = 0
        self.model = copy.deepcopy(model).eval().requires_grad_(False)

    def current_decay(self) -> float:
        """:math:`d_k` for the next update."""
        return min(self.decay, (1 + self.updates) / (10 + self.updates))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        d = self.current_decay()
        for avg, p in zip(self.model.parameters(), model.parameters()):
            avg.lerp_(p.detach(), 1.0 - d)
        for avg, b in zip(self.model.buffers(), model.buffers()):
            avg.copy_(b)
        self.updates += 1

    def state_dict(self):
        return {"model": self.model.state_dict(), "updates": self.updates}

    def load_state_dict(self, state):
        self.model.load_state_dict(state["model"])
        self.updates = int(state["updates"])


def _fingerprint(model: nn.Module) -> dict:
    return {"class": type(model).__name__, "shapes": {k: list(v.shape) for k, v in model.state_dict().items()}}


def save_checkpoint(path: str, **state) -> None:
    """Write ``state`` with ``torch.save`` atomically: to a temporary file in the same folder, then rename,
    so an interrupted write never leaves a half-written checkpoint behind."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=".pt")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def load_checkpoint(path: str, model: nn.Module | None = None, *, map_location="cpu") -> dict:
    """Load a checkpoint with ``weights_only=True`` (no arbitrary code runs). If ``model`` is given, check
    that the checkpoint was written for the same architecture and load its weights into it."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"no checkpoint at {path!r}")
    state = torch.load(path, map_location=map_location, weights_only=True)
    if model is not None:
        want, got = _fingerprint(model), state.get("fingerprint")
        if got is None or "model" not in state:
            raise CheckpointMismatch(f"{path!r} is not a tinydiff training checkpoint (no model fingerprint in it)")
        if got != want:
            if got["class"] != want["class"]:
                why = f"it holds a {got['class']}, not a {want['class']}"
            else:
                names = set(got["shapes"]) | set(want["shapes"])
                diff = sorted(k for k in names if got["shapes"].get(k) != want["shapes"].get(k))
                why = f"parameter shapes differ ({', '.join(diff[:4])}{', ...' if len(diff) > 4 else ''})"
            raise CheckpointMismatch(
                f"checkpoint {path!r} was written by another model: {why}. Build the model with the settings "
                "used when it was saved, or delete the file to train from scratch."
            )
        model.load_state_dict(state["model"])
    return state


@dataclass
class FitResult:
    """What :func:`fit` returns: the trained ``model``, its ``ema`` copy (or None), the per-step ``losses``."""

    model: nn.Module
    ema: nn.Module | None
    losses: list = field(default_factory=list)
    steps: int = 0

    @property
    def sampler_model(self) -> nn.Module:
        """The weights to sample with: the EMA copy when there is one."""
        return self.ema if self.ema is not None else self.model


def _draw(data, batch_size, generator, dev):
    if callable(data):
        batch = data(batch_size, generator)
    else:
        tensors = data if isinstance(data, (tuple, list)) else (data,)
        n = tensors[0].shape[0]
        if any(t.shape[0] != n for t in tensors):
            raise ValueError("all tensors in data must have the same first dimension (number of examples)")
        idx = torch.randint(0, n, (batch_size,), generator=generator)
        batch = tuple(t[idx] for t in tensors)
        batch = batch if isinstance(data, (tuple, list)) else batch[0]
    if isinstance(batch, (tuple, list)):
        return tuple(b.to(dev, non_blocking=True) for b in batch)
    return batch.to(dev, non_blocking=True)


def fit(model: nn.Module, loss_fn, data, *, steps: int, batch_size: int = 128, lr: float = 1e-3,
        weight_decay: float = 0.0, ema_decay: float | None = 0.999, grad_clip: float | None = 1.0,
        warmup: int = 0, seed: int = 0, ckpt: str | None = None, ckpt_every: int = 500,
        amp: bool | None = None, device=None, progress_bar: bool = True, desc: str = "training") -> FitResult:
    """Train ``model`` for ``steps`` optimiser steps of AdamW on ``loss_fn(model, batch)``.

    - ``ckpt``: a path; the state (weights, EMA, optimiser, step, random states, losses) is written
      there atomically every ``ckpt_every`` steps and at the end. If the file exists the run resumes
      from it, and the resumed run ends with exactly the weights of an uninterrupted one.
    - ``amp``: bfloat16 autocast; default on for CUDA, off elsewhere.
    - Raises :class:`TrainingDiverged` if the loss is not finite.
    """
    if steps < 0 or batch_size < 1:
        raise ValueError(f"steps must be >= 0 and batch_size >= 1; got {steps}, {batch_size}")
    dev = torch.device(device) if device is not None else default_device()
    model.to(dev).train()
    amp = (dev.type == "cuda") if amp is None else amp
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warmup) if warmup else 1.0)
    ema = EMA(model, ema_decay) if ema_decay is not None else None
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    losses: list[float] = []
    start = 0
    if ckpt is not None and os.path.exists(ckpt):
        state = load_checkpoint(ckpt, model)
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["lr_schedule"])
        if ema is not None and state.get("ema") is not None:
            ema.load_state_dict(state["ema"])
        gen.set_state(state["data_rng"])
        torch.set_rng_state(state["torch_rng"])
        if dev.type == "cuda" and state.get("cuda_rng") is not None:
            torch.cuda.set_rng_state(state["cuda_rng"])
        losses, start = list(state["losses"]), int(state["step"])

    def save(step):
        if ckpt is None:
            return
        save_checkpoint(
            ckpt, model=model.state_dict(), ema=None if ema is None else ema.state_dict(),
            optimizer=opt.state_dict(), lr_schedule=sched.state_dict(), step=step, losses=losses,
            data_rng=gen.get_state(), torch_rng=torch.get_rng_state(),
            cuda_rng=torch.cuda.get_rng_state() if dev.type == "cuda" else None, fingerprint=_fingerprint(model),
        )

    bar = progress(range(start, steps), total=steps, initial=start, desc=desc, disable=not progress_bar)
    for step in bar:
        batch = _draw(data, batch_size, gen, dev)
        with torch.autocast(device_type=dev.type, dtype=torch.bfloat16, enabled=amp):
            loss = loss_fn(model, batch)
        if not torch.isfinite(loss):
            raise TrainingDiverged(
                f"the loss became {loss.item()} at step {step}: training diverged. Lower the learning rate "
                f"(lr={lr}), keep gradient clipping on, or check the data for NaN/inf."
                + (f" The last good state is in {ckpt!r}." if ckpt and os.path.exists(ckpt) else "")
            )
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if grad_clip is not None:
            nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        opt.step()
        sched.step()
        if ema is not None:
            ema.update(model)
        losses.append(loss.item())
        if step % 50 == 0:
            bar.set_postfix(loss=f"{sum(losses[-50:]) / len(losses[-50:]):.4f}", refresh=False)
        if ckpt is not None and (step + 1) % ckpt_every == 0:
            save(step + 1)
    save(max(steps, start))
    model.eval()
    return FitResult(model=model, ema=None if ema is None else ema.model, losses=losses, steps=max(steps, start))
