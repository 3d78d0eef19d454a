"""One small training loop for every lesson: minibatches, AdamW, EMA, AMP on CUDA, a progress bar,
a NaN guard, and checksummed atomic checkpoints that resume exactly where they stopped.

    result = td.train.fit(model, loss_fn, data, steps=2000, batch_size=256, ckpt="runs/ddpm.pt")

``loss_fn(model, batch) -> scalar`` decides what is learned; ``data`` is a tensor ``(N, ...)``, a tuple of
tensors sampled together (e.g. images and labels), or a callable ``data(batch_size, generator)``.

Checkpoint files (format version :data:`FORMAT_VERSION`) are a one-line header
``TINYDIFF-CHECKPOINT {"version": 2, "sha256": ..., "size": ...}`` followed by a ``torch.save`` payload; the
SHA-256 of the payload is checked before anything is unpickled, and the payload is read with
``torch.load(..., weights_only=True)`` (no code in a file can run). Every unreadable file (empty, truncated, a
text file, a flipped byte, a missing entry) raises :class:`CheckpointError` naming the file and what to do.
"""

from __future__ import annotations

import copy
import glob
import hashlib
import io
import json
import math
import os
import re
import shutil
import tempfile
import warnings
from dataclasses import dataclass, field

import torch
from torch import nn

from . import validation as V
from .profiles import autocast_dtype
from .utils import device as default_device
from .utils import progress

__all__ = ["EMA", "fit", "FitResult", "save_checkpoint", "load_checkpoint", "TrainingDiverged", "CheckpointError",
           "CheckpointNotFound", "CheckpointMismatch", "FORMAT_VERSION"]

FORMAT_VERSION = 2
_MAGIC = b"TINYDIFF-CHECKPOINT "
# what a training checkpoint written by fit holds (a missing entry means the file is incomplete)
_TRAINING_KEYS = ("model", "optimizer", "lr_schedule", "step", "losses", "data_rng", "torch_rng", "fingerprint",
                  "settings")


class TrainingDiverged(RuntimeError):
    """The loss (or the weights) became NaN or infinite."""


class CheckpointError(RuntimeError):
    """A checkpoint file cannot be used: empty, truncated, corrupted, not a tinydiff checkpoint, or incomplete;
    or its folder cannot be written. The message names the file and what to do."""


class CheckpointNotFound(CheckpointError, FileNotFoundError):
    """There is no checkpoint file at the given path."""


class CheckpointMismatch(CheckpointError, ValueError):
    """A checkpoint was written by a different model (class, parameter shapes or constructor settings)."""


class EMA:
    r"""Exponential moving average of a model's weights: :math:`\bar\theta \leftarrow d_k\,\bar\theta + (1-d_k)\,\theta`.

    The decay warms up, :math:`d_k = \min\big(d, \tfrac{1+k}{10+k}\big)` at update ``k``, so that a short run is
    not dominated by the untrained initial weights (with a fixed ``d = 0.999``, 1,000 steps would still
    keep :math:`0.999^{1000} \approx 37\%` of them). ``ema.model`` is a frozen copy used for sampling.
    The update is one fused ``torch._foreach_lerp_`` over all parameters (no Python loop, no host sync).
    """

    def __init__(self, model: nn.Module, decay: float = 0.999):
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module; got {V.describe(model)}")
        self.decay = V.number("decay", decay, low=0.0)
        if not self.decay < 1.0:
            raise ValueError(f"decay (the EMA decay) must lie in [0, 1); got {decay}")
        self.updates = 0
        self.model = copy.deepcopy(model).eval().requires_grad_(False)
        self._avg = list(self.model.parameters())
        self._avg_buffers = list(self.model.buffers())

    def current_decay(self) -> float:
        """:math:`d_k` for the next update."""
        return min(self.decay, (1 + self.updates) / (10 + self.updates))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """One EMA step towards ``model``'s weights (and a copy of its buffers, e.g. normalisation statistics)."""
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be the torch.nn.Module this EMA was built from; got {V.describe(model)}")
        params = [p.detach() for p in model.parameters()]
        if len(params) != len(self._avg):
            raise ValueError(f"model has {len(params)} parameters but this EMA averages {len(self._avg)}: "
                             "pass the model the EMA was built from")
        if params:
            torch._foreach_lerp_(self._avg, params, 1.0 - self.current_decay())
        buffers = list(model.buffers())
        if buffers:
            torch._foreach_copy_(self._avg_buffers, buffers)
        self.updates += 1

    def state_dict(self):
        return {"model": self.model.state_dict(), "updates": self.updates}

    def load_state_dict(self, state):
        if not isinstance(state, dict) or "model" not in state or "updates" not in state:
            raise ValueError(f"state must be a dict from EMA.state_dict() with 'model' and 'updates'; "
                             f"got {V.describe(state)}")
        self.model.load_state_dict(state["model"])
        self.updates = int(state["updates"])


# ---------------------------------------------------------------------------------------------- fingerprints
def _settings_of(model: nn.Module) -> dict:
    """The constructor settings of every submodule that are kept as plain attributes (``time_scale``, ``heads``,
    ``num_classes``, dropout ``p``, norm ``eps``, ...): they change the function without changing any shape."""
    out = {}
    for prefix, module in model.named_modules():
        for key, value in vars(module).items():
            if key.startswith("_") or key == "training" or isinstance(value, bool):
                continue
            if isinstance(value, (int, float, str)) or value is None or (
                    isinstance(value, tuple) and all(isinstance(v, (int, float, str)) for v in value)):
                out[f"{prefix}.{key}" if prefix else key] = list(value) if isinstance(value, tuple) else value
    return out


def _fingerprint(model: nn.Module) -> dict:
    return {"class": type(model).__name__, "shapes": {k: list(v.shape) for k, v in model.state_dict().items()},
            "settings": _settings_of(model)}


def _same(a, b) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return a == b


def _check_fingerprint(path, got, model):
    want = _fingerprint(model)
    if got["class"] != want["class"]:
        why = f"it holds a {got['class']}, not a {want['class']}"
    elif got["shapes"] != want["shapes"]:
        names = set(got["shapes"]) | set(want["shapes"])
        diff = sorted(k for k in names if got["shapes"].get(k) != want["shapes"].get(k))
        why = f"parameter shapes differ ({', '.join(diff[:4])}{', ...' if len(diff) > 4 else ''})"
    else:
        saved = got.get("settings", {})
        names = sorted(k for k in set(saved) | set(want["settings"])
                       if not _same(saved.get(k), want["settings"].get(k)))
        if not names:
            return
        why = "constructor settings differ (" + ", ".join(
            f"{k}: {saved.get(k)!r} in the checkpoint, {want['settings'].get(k)!r} in the model" for k in names[:4]
        ) + (", ..." if len(names) > 4 else "") + ")"
    raise CheckpointMismatch(
        f"checkpoint {path!r} was written by another model: {why}. Build the model with the settings used when "
        "it was saved, or delete the file to train from scratch."
    )


# ----------------------------------------------------------------------------------------------- the file
def _tmp_prefix(path: str) -> str:
    return f".tmp-{os.path.basename(path)}-"


def save_checkpoint(path, **state) -> None:
    """Write ``state`` (tensors, numbers, strings, lists and dicts of them) to ``path`` atomically: to a temporary
    file in the same folder, flushed to disk, then renamed over ``path``, so an interrupted write never leaves a
    half-written checkpoint behind. The file carries the format version and the SHA-256 of its payload."""
    path = _path("path", path)
    buffer = io.BytesIO()
    torch.save(state, buffer)
    payload = buffer.getvalue()
    header = json.dumps({"version": FORMAT_VERSION, "sha256": hashlib.sha256(payload).hexdigest(),
                         "size": len(payload)}).encode()
    folder = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=_tmp_prefix(path), suffix=".pt")
    except OSError as exc:
        raise CheckpointError(f"cannot write checkpoint {path!r}: its folder {folder!r} is not writable "
                              f"({exc.strerror or exc}). Pass a path in a writable folder, or ckpt=None.") from exc
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(_MAGIC + header + b"\n")
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        if os.path.exists(tmp):
            os.remove(tmp)
        if isinstance(exc, OSError):
            raise CheckpointError(f"could not write checkpoint {path!r} ({exc.strerror or exc}); the previous "
                                  "checkpoint, if any, is intact. Free disk space or choose another folder.") from exc
        raise


def _read(path: str, map_location) -> dict:
    """Read and verify one checkpoint file; every way it can be broken becomes a CheckpointError."""
    advice = "Delete it (or move it away) to train from scratch, or point ckpt= at an intact checkpoint."
    try:
        with open(path, "rb") as f:
            data = f.read()
    except IsADirectoryError:
        raise CheckpointError(f"checkpoint {path!r} is a folder, not a file. Pass the path of a .pt file.") from None
    except OSError as exc:
        raise CheckpointError(f"cannot read checkpoint {path!r} ({exc.strerror or exc}).") from exc
    if not data:
        raise CheckpointError(f"checkpoint {path!r} is empty (0 bytes). {advice}")
    if not data.startswith(_MAGIC):
        kind = "a torch.save file from an older tinydiff or another program" if data[:2] == b"PK" else "not a checkpoint"
        raise CheckpointError(f"{path!r} is not a tinydiff checkpoint (format {FORMAT_VERSION}): it is {kind}. {advice}")
    end = data.find(b"\n", len(_MAGIC))
    try:
        header = json.loads(data[len(_MAGIC):end].decode())
        version, digest, size = int(header["version"]), str(header["sha256"]), int(header["size"])
    except Exception:  # noqa: BLE001 - any damage to the header line
        raise CheckpointError(f"checkpoint {path!r} has a damaged header (the file is corrupted). {advice}") from None
    if version != FORMAT_VERSION:
        raise CheckpointError(f"checkpoint {path!r} has format version {version}; this tinydiff reads version "
                              f"{FORMAT_VERSION}. {advice}")
    payload = data[end + 1:] if end >= 0 else b""
    if len(payload) != size:
        raise CheckpointError(f"checkpoint {path!r} is truncated or padded: its payload has {len(payload)} bytes, "
                              f"the header says {size} (an interrupted copy?). {advice}")
    if hashlib.sha256(payload).hexdigest() != digest:
        raise CheckpointError(f"checkpoint {path!r} is corrupted: the SHA-256 of its payload does not match the one "
                              f"written with it. {advice}")
    try:
        state = torch.load(io.BytesIO(payload), map_location=map_location, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - a payload that passed the checksum but holds something unsafe
        raise CheckpointError(f"checkpoint {path!r} holds objects that are not plain tensors and containers, so it "
                              f"is not loaded (weights_only=True: {type(exc).__name__}). {advice}") from exc
    if not isinstance(state, dict):
        raise CheckpointError(f"checkpoint {path!r} does not hold a dict of named entries. {advice}")
    return state


def _path(name, path) -> str:
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"{name} must be a file path (str or os.PathLike); got {V.describe(path)}")
    path = os.fspath(path)
    if not path:
        raise ValueError(f"{name} must be a file path; got an empty string")
    return path


def load_checkpoint(path, model: nn.Module | None = None, *, map_location="cpu") -> dict:
    """Load a checkpoint written by :func:`save_checkpoint` (or :func:`fit`), verifying its format version and
    checksum, with ``weights_only=True`` (no arbitrary code runs). If ``model`` is given, check that the checkpoint
    was written for the same architecture and constructor settings and load its weights into it.

    Raises :class:`CheckpointError` for a file that cannot be used, :class:`CheckpointMismatch` for another model."""
    path = _path("path", path)
    if model is not None and not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module or None; got {V.describe(model)}")
    if not os.path.exists(path):
        raise CheckpointNotFound(f"no checkpoint at {path!r}")
    state = _read(path, map_location)
    if model is not None:
        got = state.get("fingerprint")
        if not isinstance(got, dict) or "model" not in state:
            raise CheckpointError(f"{path!r} is not a tinydiff training checkpoint (no model fingerprint in it); "
                                  "delete it to train from scratch.")
        _check_fingerprint(path, got, model)
        model.load_state_dict(state["model"])
    return state


# ----------------------------------------------------------------------------------------------- fit
@dataclass
class FitResult:
    """What :func:`fit` returns: the trained ``model``, its ``ema`` copy (or None), the per-step ``losses``, the
    number of ``steps`` done, ``resumed_from`` (the step a checkpoint resumed at, else None) and ``shipped`` (the file
    the weights were loaded from instead of training, else None)."""

    model: nn.Module
    ema: nn.Module | None
    losses: list = field(default_factory=list)
    steps: int = 0
    resumed_from: int | None = None
    shipped: str | None = None

    @property
    def sampler_model(self) -> nn.Module:
        """The weights to sample with: the EMA copy when there is one."""
        return self.ema if self.ema is not None else self.model


def _check_data(data):
    if callable(data) and not isinstance(data, torch.Tensor):
        return data
    tensors = data if isinstance(data, (tuple, list)) else (data,)
    if not tensors:
        raise ValueError("data must be a tensor (N, ...), a tuple of tensors, or a callable data(batch_size, generator)"
                         "; got an empty tuple")
    tensors = tuple(V.tensor("data", t, floating=False) for t in tensors)
    n = tensors[0].shape[0] if tensors[0].ndim else 0
    if any(t.ndim == 0 or t.shape[0] != n for t in tensors):
        raise ValueError("all tensors in data must have the same first dimension (number of examples); got shapes "
                         + ", ".join(str(tuple(t.shape)) for t in tensors))
    if n == 0:
        raise ValueError("data holds no examples (its first dimension is 0)")
    if any(t.is_complex() for t in tensors):
        raise ValueError("data must be real; got a complex tensor")
    return tensors if isinstance(data, (tuple, list)) else tensors[0]


def _draw(data, batch_size, generator, dev):
    if callable(data) and not isinstance(data, torch.Tensor):
        batch = data(batch_size, generator)
        if batch is None:
            raise TypeError("data(batch_size, generator) returned None: did it forget to `return` the batch?")
    else:
        tensors = data if isinstance(data, tuple) else (data,)
        idx = torch.randint(0, tensors[0].shape[0], (batch_size,), generator=generator)
        batch = tuple(t[idx] for t in tensors)
        batch = batch if isinstance(data, tuple) else batch[0]
    if isinstance(batch, (tuple, list)):
        return tuple(b.to(dev, non_blocking=True) if isinstance(b, torch.Tensor) else b for b in batch)
    if not isinstance(batch, torch.Tensor):
        raise TypeError(f"data(batch_size, generator) must return a tensor or a tuple of tensors; got "
                        f"{V.describe(batch)}")
    return batch.to(dev, non_blocking=True)


def _check_loss(loss):
    if loss is None:
        raise TypeError("loss_fn(model, batch) returned None: did it forget to `return` the loss?")
    if not isinstance(loss, torch.Tensor) or loss.numel() != 1 or not loss.is_floating_point():
        raise ValueError(f"loss_fn(model, batch) must return a scalar floating tensor; it returned {V.describe(loss)}")
    if not loss.requires_grad:
        raise ValueError("loss_fn(model, batch) returned a loss with no gradient: compute it from the model's output "
                         "(not under torch.no_grad() or from detached tensors)")
    return loss.reshape(())


def _settings(lr, weight_decay, batch_size, ema_decay, grad_clip, warmup, seed, amp):
    return {"lr": lr, "weight_decay": weight_decay, "batch_size": batch_size, "ema_decay": ema_decay,
            "grad_clip": grad_clip, "warmup": warmup, "seed": seed, "amp": amp}


def _last_good(ckpt):
    return None if ckpt is None else ckpt + ".last-good"


def fit(model: nn.Module, loss_fn, data, *, steps: int, batch_size: int = 128, lr: float = 1e-3,
        weight_decay: float = 0.0, ema_decay: float | None = 0.999, grad_clip: float | None = 1.0,
        warmup: int = 0, seed: int = 0, ckpt=None, ckpt_every: int = 500, check_every: int = 50,
        amp: bool | None = None, device=None, progress_bar: bool = True, desc: str = "training",
        shipped: str | None = None) -> FitResult:
    """Train ``model`` for ``steps`` optimiser steps of AdamW on ``loss_fn(model, batch)``.

    - Settings are checked first: ``steps >= 1``, ``batch_size >= 1``, ``lr > 0``, ``weight_decay >= 0``,
      ``ema_decay`` in ``[0, 1)`` or None, ``grad_clip > 0`` or None, ``warmup >= 0`` (the learning rate rises
      linearly over the first ``warmup`` steps), ``ckpt_every >= 1``, ``check_every >= 1``.
    - ``ckpt``: a path; the state (weights, EMA, optimiser, step, random states, losses, settings) is written
      there atomically every ``ckpt_every`` steps and at the end, and the checkpoint before it is kept as
      ``ckpt + ".last-good"``. The folder is checked writable at the start, and temporary files left by a write that
      was killed are removed. If the file exists the run resumes from it; with unchanged settings the resumed run
      ends with exactly the weights of an uninterrupted one. **A resume applies the caller's settings**: a new
      ``lr``, ``weight_decay``, ``warmup``, ``grad_clip``, ``ema_decay`` or ``batch_size`` takes effect from the
      resumed step on (the optimiser's moment estimates are kept), and a warning lists what changed. A checkpoint
      with more steps than ``steps`` is refused (ValueError) rather than returned silently; one with exactly
      ``steps`` returns the finished run without training.
    - NaN guard: the loss is checked for NaN/inf on the device without a host sync; the flag and the pending losses
      are read (one sync) every ``check_every`` steps, before every checkpoint and at the end, and the weights are
      checked finite there too. A divergence is therefore noticed at most ``check_every - 1`` steps after it happened
      (the message gives the exact step), and no checkpoint with non-finite weights or losses is ever written:
      :class:`TrainingDiverged` names the newest checkpoint whose weights gave finite losses, older than the
      divergence (if the newest one's own weights gave the first NaN, the one before it takes its place); calling
      ``fit`` again with the same ``ckpt`` and a lower ``lr`` resumes from it.
    - ``amp``: mixed-precision autocast; default on for CUDA, off elsewhere. The dtype is
      :func:`tinydiff.profiles.autocast_dtype`: bfloat16 where the GPU computes it natively, float16 with a
      ``torch.amp.GradScaler`` on GPUs that only emulate bf16 (e.g. a T4; the scaler restarts from its initial
      scale on a resume, so an fp16 resume is not bit-exact), bfloat16 on the CPU when asked for. Progress bar on by default.
    - ``shipped``: the name of this run's shipped weights (:mod:`tinydiff.weights`). By default (``auto``) a CPU run
      that matches the recorded one (model, data, settings, steps) loads them instead of training and returns the
      recorded result (weights, losses, and the random state training left; with an EMA only the EMA weights are
      shipped, and ``model`` holds them too); ``TINYDIFF_WEIGHTS=train`` trains,
      ``=shipped`` insists on loading, ``=record`` trains and stores the result. Not with ``ckpt``.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module; got {V.describe(model)}")
    if not callable(loss_fn):
        raise TypeError(f"loss_fn must be a callable loss_fn(model, batch) -> scalar loss; got {V.describe(loss_fn)}")
    data = _check_data(data)
    steps = V.integer("steps", steps, low=1)
    batch_size = V.integer("batch_size", batch_size, low=1)
    lr = V.number("lr", lr, low=0.0, strict_low=True)
    weight_decay = V.number("weight_decay", weight_decay, low=0.0)
    if ema_decay is not None:
        ema_decay = V.number("ema_decay", ema_decay, low=0.0)
        if ema_decay >= 1.0:
            raise ValueError(f"ema_decay must lie in [0, 1) (or be None for no EMA); got {ema_decay}")
    if grad_clip is not None:
        grad_clip = V.number("grad_clip", grad_clip, low=0.0, strict_low=True)
    warmup = V.integer("warmup", warmup, low=0)
    seed = V.integer("seed", seed)
    ckpt_every = V.integer("ckpt_every", ckpt_every, low=1)
    check_every = V.integer("check_every", check_every, low=1)
    if amp is not None and not isinstance(amp, bool):
        raise ValueError(f"amp must be True, False or None (automatic); got {V.describe(amp)}")
    if not isinstance(progress_bar, bool):
        raise ValueError(f"progress_bar must be True or False; got {V.describe(progress_bar)}")
    if not isinstance(desc, str):
        raise ValueError(f"desc must be a string; got {V.describe(desc)}")
    if ckpt is not None:
        ckpt = _path("ckpt", ckpt)
        _prepare_folder(ckpt)
    try:
        dev = torch.device(device) if device is not None else default_device()
    except (RuntimeError, TypeError) as exc:
        raise ValueError(f"device must be a torch device such as 'cpu' or 'cuda'; got {V.describe(device)}") from exc
    amp = (dev.type == "cuda") if amp is None else amp
    # bf16 where the device computes it natively; fp16 (with a gradient scaler) on GPUs that only emulate bf16
    amp_dtype = (autocast_dtype(dev) or torch.bfloat16) if amp else None
    scaler = torch.amp.GradScaler(dev.type, enabled=amp_dtype == torch.float16)
    settings = _settings(lr, weight_decay, batch_size, ema_decay, grad_clip, warmup, seed, amp)
    key = None
    if shipped is not None:
        from . import weights as W

        shipped = W._name(shipped)
        if ckpt is not None:
            raise ValueError("shipped and ckpt cannot be used together: shipped weights replace the whole run")
        key = W.run_key(_fingerprint(model), data, settings, steps)
        loaded = _load_shipped(W, shipped, key, model, ema_decay, dev, progress_bar, desc)
        if loaded is not None:
            return loaded

    model.to(dev).train()
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("model has no trainable parameters (all have requires_grad=False)")
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warmup) if warmup else 1.0)
    ema = EMA(model, ema_decay) if ema_decay is not None else None
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    losses: list[float] = []
    start, resumed = 0, None
    if ckpt is not None and os.path.exists(ckpt):
        start, losses = _resume(ckpt, model, opt, sched, ema, gen, dev, settings, steps)
        resumed = start
        if start == steps:
            model.eval()
            return FitResult(model=model, ema=None if ema is None else ema.model, losses=losses, steps=steps,
                             resumed_from=resumed)

    pending: list[torch.Tensor] = []  # losses of the steps since the last check, still on the device
    bad = torch.zeros((), dtype=torch.bool, device=dev)  # any non-finite loss since the last check

    def check(step):
        """Read the pending losses and the NaN flag (one host sync); raise if training diverged."""
        nonlocal bad
        if pending:
            values = torch.stack(pending).float().tolist()
            first = step - len(values)
            pending.clear()
            if bool(bad):
                at = next(i for i, v in enumerate(values) if not math.isfinite(v))
                _diverged(values[at], first + at, step, lr, ckpt)
            losses.extend(values)
            bar.set_postfix(loss=f"{sum(losses[-check_every:]) / len(losses[-check_every:]):.4f}", refresh=False)
        if not _finite_weights(model):
            _diverged(float("nan"), step, step, lr, ckpt, weights=True)

    def save(step):
        check(step)
        _keep_previous(ckpt)
        save_checkpoint(
            ckpt, model=model.state_dict(), ema=None if ema is None else ema.state_dict(),
            optimizer=opt.state_dict(), lr_schedule=sched.state_dict(), step=step, losses=losses,
            data_rng=gen.get_state(), torch_rng=torch.get_rng_state(),
            cuda_rng=torch.cuda.get_rng_state() if dev.type == "cuda" else None, fingerprint=_fingerprint(model),
            settings=settings,
        )

    bar = progress(range(start, steps), total=steps, initial=start, desc=desc, disable=not progress_bar)
    for step in bar:
        batch = _draw(data, batch_size, gen, dev)
        with torch.autocast(device_type=dev.type, dtype=amp_dtype or torch.bfloat16, enabled=amp):
            loss = _check_loss(loss_fn(model, batch))
        detached = loss.detach()
        bad = bad | ~torch.isfinite(detached)
        pending.append(detached)
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()  # the scaler is a no-op unless training in fp16
        if grad_clip is not None:
            scaler.unscale_(opt)
            nn.utils.clip_grad_norm_(params, grad_clip)
        scaler.step(opt)
        scaler.update()
        sched.step()
        if ema is not None:
            ema.update(model)
        if ckpt is not None and (step + 1) % ckpt_every == 0:
            save(step + 1)
        elif (step + 1) % check_every == 0:
            check(step + 1)
    if ckpt is not None:
        save(steps)
    else:
        check(steps)
    model.eval()
    if key is not None and W.mode() == "record":
        digest = W.record(shipped, key, model, None if ema is None else ema.model, losses, torch.get_rng_state())
        if os.environ.get("TINYDIFF_PROGRESS", "1") != "0":
            print(f"{desc}: recorded as the shipped weights {shipped!r} (sha256 {digest[:12]}...)")
        return _load_shipped(W, shipped, key, model, ema_decay, dev, progress_bar, desc, just_recorded=True)
    return FitResult(model=model, ema=None if ema is None else ema.model, losses=losses, steps=steps,
                     resumed_from=resumed)


def _load_shipped(W, name, key, model, ema_decay, dev, progress_bar, desc, *, just_recorded=False):
    """The recorded result of the run ``name`` if the weights mode and the run allow it, else None (train).
    ``just_recorded``: a record run returns what a later run will load (float16 weights, the EMA copy), so that the
    cells after it, and any run trained on its outputs, see exactly what they will see with the shipped weights."""
    mode = "shipped" if just_recorded else W.mode()
    if mode not in ("auto", "shipped") or (mode == "auto" and dev.type != "cpu"):
        return None
    entry, why = W.lookup(name, key)
    if entry is None:
        if mode == "shipped":
            raise CheckpointMismatch(f"TINYDIFF_WEIGHTS=shipped, but {why}: train instead (TINYDIFF_WEIGHTS=train or "
                                     "auto), or record the new run with TINYDIFF_WEIGHTS=record")
        return None
    try:
        state = W.restore(name)
    except CheckpointError as exc:
        if mode == "shipped":
            raise
        warnings.warn(f"{exc} Training instead.", stacklevel=3)
        return None
    if (state["ema"] is None) != (ema_decay is None):  # the key's settings include ema_decay: a foreign file
        raise CheckpointError(f"{W.path(name)} holds {'no ' if state['ema'] is None else ''}EMA weights, but "
                              f"ema_decay={ema_decay}; make it again with `{W.manifest()[name]['command']}`")
    model.load_state_dict(state["model"] if state["ema"] is None else state["ema"])  # with an EMA only it is shipped
    model.to(dev).eval()
    ema = None
    if ema_decay is not None:
        ema = EMA(model, ema_decay)
        ema.updates = key["steps"]
    torch.set_rng_state(state["torch_rng"])
    if os.environ.get("TINYDIFF_PROGRESS", "1") != "0" and not just_recorded:  # one line, also without a bar
        print(f"{desc}: shipped weights {name!r} loaded ({key['steps']} steps; to train yourself: "
              "td.weights.use('train'))")
    return FitResult(model=model, ema=None if ema is None else ema.model, losses=state["losses"].tolist(),
                     steps=key["steps"], resumed_from=None, shipped=str(W.path(name)))


def _finite_weights(model) -> bool:
    tensors = [p.detach() for p in model.parameters()]
    if not tensors:
        return True
    norms = torch._foreach_norm(tensors, ord=float("inf"))
    return bool(torch.isfinite(torch.stack([n.float() for n in norms])).all())


def _diverged(value, at, noticed, lr, ckpt, weights=False):
    """Raise TrainingDiverged naming a checkpoint whose weights gave a finite loss. ``ckpt`` is only written after
    the losses before it were checked, but its own weights may be the ones that gave the first non-finite loss (when
    ``at`` equals its step): then the checkpoint before it (``.last-good``) takes its place, so that calling ``fit``
    again with the same ``ckpt`` resumes from good weights."""
    what = "the weights became NaN or inf" if weights else f"the loss became {value} at step {at}"
    msg = (f"{what}: training diverged (noticed at step {noticed}). Lower the learning rate (lr={lr:g}), keep "
           "gradient clipping on, or check the data for NaN/inf.")
    if ckpt is not None and os.path.exists(ckpt):
        step = _step_of(ckpt)
        if step is not None and step >= at:
            previous = _last_good(ckpt)
            if os.path.exists(previous) and (_step_of(previous) or at) < at:
                os.replace(previous, ckpt)
            else:
                os.replace(ckpt, ckpt + ".diverged")
                msg += (f" No checkpoint before the divergence exists (the weights at step {step} are kept in "
                        f"{ckpt + '.diverged'!r}); calling fit again with a lower lr starts from scratch.")
        step = _step_of(ckpt) if os.path.exists(ckpt) else None
        if step is not None:
            msg += (f" The last good state (finite weights and losses, step {step}, before the divergence) is in "
                    f"{ckpt!r}: call fit again with the same ckpt and a lower lr to resume from it.")
    raise TrainingDiverged(msg)


def _step_of(path):
    try:
        return int(load_checkpoint(path)["step"])
    except (CheckpointError, KeyError, TypeError, ValueError):
        return None


def _keep_previous(ckpt):
    """Keep the current checkpoint as ``ckpt + ".last-good"`` before it is replaced (a hard link, so ``ckpt`` itself
    stays in place until the new one is written; a copy where links are not supported)."""
    if not os.path.exists(ckpt):
        return
    folder = os.path.dirname(os.path.abspath(ckpt))
    tmp = os.path.join(folder, f"{_tmp_prefix(ckpt)}last-good")
    with _quiet():
        os.remove(tmp)
    try:
        os.link(ckpt, tmp)
    except OSError:
        shutil.copyfile(ckpt, tmp)
    os.replace(tmp, _last_good(ckpt))


def _prepare_folder(ckpt):
    """Check that the checkpoint's folder can be written (now, not at the first checkpoint) and remove the
    temporary files of writes that were killed."""
    folder = os.path.dirname(os.path.abspath(ckpt))
    if os.path.isdir(ckpt):
        raise CheckpointError(f"ckpt {ckpt!r} is a folder; pass the path of a file inside it, e.g. "
                              f"{os.path.join(ckpt, 'run.pt')!r}")
    try:
        os.makedirs(folder, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=folder, prefix=_tmp_prefix(ckpt), suffix=".probe")
        os.close(fd)
        os.remove(probe)
    except OSError as exc:
        raise CheckpointError(f"cannot write checkpoints to {folder!r} ({exc.strerror or exc}): pass ckpt= a path in "
                              "a writable folder, or ckpt=None to train without checkpoints.") from exc
    for tmp in glob.glob(os.path.join(glob.escape(folder), glob.escape(_tmp_prefix(ckpt)) + "*")):
        with _quiet():
            os.remove(tmp)
    for name in os.listdir(folder):  # and those of the first checkpoint format (".tmp-" + 8 random characters)
        if re.fullmatch(r"\.tmp-[a-z0-9_]{8}\.pt", name):
            with _quiet():
                os.remove(os.path.join(folder, name))


class _quiet:
    def __enter__(self):
        return self

    def __exit__(self, kind, exc, tb):
        return kind is not None and issubclass(kind, OSError)


def _resume(ckpt, model, opt, sched, ema, gen, dev, settings, steps):
    """Load a training checkpoint into the fresh training state; returns the step it resumes at and the losses."""
    state = load_checkpoint(ckpt, map_location="cpu")
    missing = [k for k in _TRAINING_KEYS if k not in state]
    if missing:
        raise CheckpointError(f"checkpoint {ckpt!r} is incomplete: it has no {', '.join(repr(k) for k in missing)} "
                              "entry (it was not written by tinydiff.train.fit). Delete it to train from scratch.")
    saved_steps = int(state["step"])
    if saved_steps > steps:
        raise ValueError(f"checkpoint {ckpt!r} already holds {saved_steps} steps, more than steps={steps}: pass "
                         f"steps>={saved_steps} to continue it, load it with td.train.load_checkpoint to use it as it "
                         f"is, or delete it to train {steps} steps from scratch")
    _check_fingerprint(ckpt, state["fingerprint"], model)
    try:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["lr_schedule"])
        if ema is not None and state.get("ema") is not None:
            ema.load_state_dict(state["ema"])
        elif ema is not None:
            ema.model.load_state_dict(model.state_dict())
        gen.set_state(state["data_rng"])
        torch.set_rng_state(state["torch_rng"])
    except (RuntimeError, ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"checkpoint {ckpt!r} does not fit this training run ({type(exc).__name__}: {exc}). "
                              "Delete it to train from scratch.") from exc
    if dev.type == "cuda" and state.get("cuda_rng") is not None:
        torch.cuda.set_rng_state(state["cuda_rng"])
    # the caller's settings apply from here on: optimiser hyper-parameters and the warm-up
    for group in opt.param_groups:
        group["weight_decay"] = settings["weight_decay"]
        group["initial_lr"] = settings["lr"]
    sched.base_lrs = [settings["lr"] for _ in opt.param_groups]
    factor = sched.lr_lambdas[0](sched.last_epoch)
    for group in opt.param_groups:
        group["lr"] = settings["lr"] * factor
    saved = state["settings"]
    # (the seed only chose the initial random state, which the checkpoint's random states replace)
    changed = [f"{k} {saved.get(k)!r} -> {v!r}" for k, v in settings.items()
               if k != "seed" and not _same(saved.get(k), v)]
    if changed:
        warnings.warn(f"resuming {ckpt!r} at step {saved_steps} with new settings ({', '.join(changed)}); they apply "
                      "from this step on", stacklevel=3)
    return saved_steps, [float(v) for v in state["losses"]]
