"""Small helpers shared by every lesson: the device choice, seeding, the pieces every sampler shares (start point,
step noise, the device that follows the model, the ``callback`` protocol) and a context manager that keeps a
model's train/eval mode.

There is exactly one place that decides where tensors live (:func:`device`), so no notebook or
module ever hard-codes ``.cuda()``.
"""

from __future__ import annotations

import contextlib
import os
import random
import weakref

import numpy as np
import torch

__all__ = [
    "device",
    "seed_everything",
    "expand_to",
    "as_timesteps",
    "check_same_shape",
    "progress",
    "start_noise",
    "noise_like",
    "device_of",
    "Trajectory",
    "sampler_start",
    "eval_mode",
    "table_on",
]


def device() -> torch.device:
    """The device every lesson uses: ``$TINYDIFF_DEVICE`` if set, else CUDA, else Apple MPS, else CPU."""
    name = os.environ.get("TINYDIFF_DEVICE")
    if name:
        return torch.device(name)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, NumPy and torch; return a fresh CPU ``torch.Generator`` seeded the same way."""
    from . import validation

    seed = validation.integer("seed", seed)
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def expand_to(coef: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Reshape a per-sample coefficient ``(B,)`` (or a scalar) so it broadcasts against ``x`` ``(B, ...)``.

    The coefficient is cast to ``x``'s dtype and device: schedules are stored in float64 and cast here,
    where they are used.
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor (B, ...); got {_describe(x)}")
    if coef is None or isinstance(coef, str):
        raise TypeError(f"coef must be a number or a per-sample tensor (B,); got {_describe(coef)}")
    coef = torch.as_tensor(coef)
    coef = coef.to(device=x.device, dtype=x.dtype if x.is_floating_point() else coef.dtype)
    if coef.ndim == 0:
        return coef
    if coef.ndim != 1 or coef.shape[0] not in (1, x.shape[0]):
        raise ValueError(
            f"a per-sample coefficient must have shape (B,) with B = {x.shape[0]} (the batch of x), "
            f"got shape {tuple(coef.shape)}"
        )
    return coef.reshape(-1, *([1] * (x.ndim - 1)))


def as_timesteps(t, batch: int, T: int, *, low: int = 0, name: str = "t") -> torch.Tensor:
    """Validate integer timesteps and return them as a LongTensor of shape ``(batch,)``.

    ``t`` may be a Python int (broadcast to the batch) or an integer tensor of shape ``(batch,)``.
    Raises ``ValueError`` with a readable message if a value lies outside ``[low, T]``
    (:func:`tinydiff.validation.timesteps`).
    """
    from . import validation

    T = validation.integer("T", T, low=0)
    low = validation.integer("low", low, low=0)
    batch = validation.integer("batch", batch, low=0)
    return validation.timesteps(name, t, T, low=low, batch=batch)


_TABLES: dict = {}
NO_FLOAT64 = {"mps"}  # device types without float64 (Apple's MPS): tables go there in float32


def wide_dtype(device) -> torch.dtype:
    """The widest float dtype ``device`` computes in: float64, or float32 on devices without it (:data:`NO_FLOAT64`)."""
    return torch.float32 if torch.device(device).type in NO_FLOAT64 else torch.float64


def table_on(table: torch.Tensor, device, dtype: torch.dtype | None = None) -> torch.Tensor:
    """A float64 schedule table cast to ``device`` and ``dtype`` once and cached, so indexing it with device
    timesteps (``table_on(sched.alpha_bar, t.device)[t]``) needs no host copy and no sync. On a device without
    float64 (Apple's MPS, :data:`NO_FLOAT64`) a float64 table goes there as float32."""
    if not isinstance(table, torch.Tensor):
        raise TypeError(f"table must be a torch.Tensor (a schedule table like sched.alpha_bar); got {_describe(table)}")
    if not isinstance(device, torch.device):
        device = check_device("device", device)
    dtype = table.dtype if dtype is None else dtype
    if dtype == torch.float64 and device.type in NO_FLOAT64:
        dtype = torch.float32
    if table.device == device and table.dtype == dtype:
        return table
    key = (id(table), str(device), dtype)
    hit = _TABLES.get(key)
    if hit is not None and hit[0]() is table:
        return hit[1]
    cast = table.to(device=device, dtype=dtype)
    _TABLES[key] = (weakref.ref(table, lambda _r, k=key: _TABLES.pop(k, None)), cast)
    return cast


def _describe(value) -> str:
    from . import validation

    return validation.describe(value)


def check_device(name: str, device) -> torch.device:
    """``device`` as a ``torch.device`` (a name like ``'cpu'`` or ``'cuda:0'`` accepted), refused clearly when it is
    no device or names CUDA on a machine without it."""
    try:
        dev = torch.device(device)
    except (TypeError, RuntimeError, ValueError):
        raise ValueError(f"{name} must be a torch.device or a name like 'cpu' or 'cuda'; got {_describe(device)}") \
            from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"{name} is {dev}, but CUDA is not available on this machine; use td.device()")
    return dev


def check_same_shape(**tensors: torch.Tensor) -> None:
    """Raise ``ValueError`` naming the culprits if the given tensors do not all have one shape."""
    shapes = {k: tuple(v.shape) for k, v in tensors.items()}
    if len(set(shapes.values())) > 1:
        desc = ", ".join(f"{k}: {s}" for k, s in shapes.items())
        raise ValueError(f"shape mismatch: these tensors must have the same shape, got {desc}")


def progress(iterable=None, *, total=None, desc=None, disable=False, **kwargs):
    """A text progress bar (tqdm) that renders both in a terminal and in a saved notebook.

    Set ``TINYDIFF_PROGRESS=0`` to silence every bar (the test suite does).
    """
    from tqdm.std import tqdm

    if os.environ.get("TINYDIFF_PROGRESS", "1") == "0":
        disable = True
    return tqdm(iterable, total=total, desc=desc, disable=disable, mininterval=1.0, ncols=90, **kwargs)


def start_noise(shape, *, generator: torch.Generator | None = None, device=None, x_T: torch.Tensor | None = None,
                dtype: torch.dtype = torch.float32):
    r"""The starting point of a sampler, :math:`x_T\sim\mathcal N(0, I)` of ``shape``, drawn on the CPU from
    ``generator`` and moved to ``device`` (so a seed gives the same samples on every machine); or ``x_T`` itself,
    checked against ``shape`` and moved to ``device``."""
    from . import validation

    device = torch.device("cpu") if device is None else check_device("device", device)
    shape = validation.shape("shape", shape)
    generator = validation.generator("generator", generator)
    if x_T is None:
        return _to_device(torch.randn(tuple(shape), generator=generator, dtype=dtype), device)
    x_T = validation.tensor("x_T", x_T, floating=False)
    if tuple(x_T.shape) != tuple(shape):
        raise ValueError(f"x_T has shape {tuple(x_T.shape)} but shape={tuple(shape)} was requested")
    return x_T.to(device)


def noise_like(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Standard normal noise of ``x``'s shape and dtype, drawn on the CPU from ``generator``, moved to ``x``'s device
    (on CUDA through pinned memory without blocking, so the copy does not wait for the queued kernels)."""
    if not isinstance(x, torch.Tensor) or not (x.is_floating_point() or x.is_complex()):
        raise TypeError(f"x must be a floating torch.Tensor (the noise takes its shape and dtype); got {_describe(x)}")
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator or None; got {_describe(generator)}")
    return _to_device(torch.randn(x.shape, generator=generator, dtype=x.dtype), x.device)


def _to_device(z: torch.Tensor, device: torch.device) -> torch.Tensor:
    if device.type == "cuda":
        return z.pin_memory().to(device, non_blocking=True)
    return z.to(device)


def sampler_start(denoiser, shape, *, x_T=None, generator=None, device=None, callback=None, name: str = "eps_fn",
                  data_start: bool = False):
    """Validate, once, the arguments every sampler shares and return ``(x, device)``: the start point on the device
    where the sampler runs.

    ``device=None`` means :func:`device_of` ``(denoiser, x_T)``: the device of ``x_T``, else of the model, else
    :func:`device`. With ``data_start`` (samplers that start from data, like DDIM inversion or Langevin chains,
    pass the data as ``x_T``) the model's device comes first and the data's device is the fallback, so CPU data
    and a GPU model run on the GPU. ``shape`` may be ``None`` when ``x_T`` is given. Noise for the start point is
    drawn on the CPU from ``generator`` (float32) and moved."""
    from . import validation

    if not callable(denoiser):
        raise TypeError(f"{name} (the denoiser) must be a callable {name}(x, t) (a model or a function); got "
                        f"{validation.describe(denoiser)}")
    validation.generator("generator", generator)
    validation.callback("callback", callback)
    if x_T is not None:
        x_T = validation.tensor("x_T", x_T, finite=True)
        if x_T.ndim < 1:
            raise ValueError(f"x_T must have a batch dimension, shape (B, ...); got {validation.describe(x_T)}")
    if data_start and x_T is None:
        raise ValueError("data_start=True needs the data as x_T (the sampler starts from it)")
    if shape is None:
        if x_T is None:
            raise ValueError("pass shape=(B, ...) (x_T is then drawn from N(0, I)) or x_T itself")
        shape = tuple(x_T.shape)
    shape = validation.shape("shape", shape)
    if device is None:
        dev = device_of(denoiser, fallback=x_T.device) if data_start else device_of(denoiser, x_T)
    else:
        dev = check_device("device", device)
    return start_noise(shape, generator=generator, device=dev, x_T=x_T), dev


def device_of(fn, x_T: torch.Tensor | None = None, *, fallback=None) -> torch.device:
    """Where a sampler runs: the device of ``x_T`` if given, else of the denoiser ``fn``, else ``fallback`` if given,
    else :func:`device`.

    The denoiser's device is found on an ``nn.Module`` (its first parameter or buffer), on a bound method of one
    (``model.forward``), on a ``functools.partial``, on an attribute ``fn.device``, or on an ``nn.Module`` or
    ``Denoiser`` captured by a closure or named as a global (``lambda x, t: model(x, t)`` in a notebook), looked
    up through nested closures (a guided ``eps_fn`` built from another one). Where no model is found, tensors are
    the evidence: a captured tensor, or the tensors an object keeps (the exact mixture oracle
    ``gm.eps_fn(sched)`` holds CPU tables, so it samples on the CPU, where its results meet other CPU numbers).
    """
    if x_T is not None:
        if not isinstance(x_T, torch.Tensor):
            raise TypeError(f"x_T must be a torch.Tensor or None; got {_describe(x_T)}")
        return x_T.device
    try:
        found = _search(fn, strong=True) or _search(fn, strong=False)
    except Exception:  # an exotic object in a closure or a global must not break sampling: use the default
        found = None
    if found is not None:
        return found
    return torch.device(fallback) if fallback is not None else device()


def _search(obj, *, strong: bool, depth: int = 3):
    """The device of ``obj``, or of what its closure captures (``depth`` levels of nested closures)."""
    found = _device_of(obj) if strong else _tensor_device(obj)
    if found is not None or depth == 0:
        return found
    import functools

    if isinstance(obj, functools.partial):
        parts = [obj.func, *obj.args, *obj.keywords.values()]
    else:
        parts = []
        for cell in getattr(obj, "__closure__", None) or ():
            try:
                parts.append(cell.cell_contents)
            except ValueError:  # an empty cell
                continue
        code, env = getattr(obj, "__code__", None), getattr(obj, "__globals__", None)
        if code is not None and env is not None:  # a notebook's `lambda x, t: net(x, t)` names a global
            parts += [env[name] for name in code.co_names if name in env and not isinstance(env[name], type)
                      and not getattr(env[name], "__name__", "").startswith(("torch", "numpy", "tinydiff"))]
    for part in parts:
        found = _search(part, strong=strong, depth=depth - 1)
        if found is not None:
            return found
    return None


def _tensor_device(obj):
    if isinstance(obj, torch.Tensor):
        return obj.device
    if callable(obj) or isinstance(obj, (str, bytes, int, float, type)):
        return None
    for value in getattr(obj, "__dict__", {}).values():
        if isinstance(value, torch.Tensor):
            return value.device
    return None


def _device_of(obj):
    import functools

    from torch import nn

    if isinstance(obj, functools.partial):
        obj = obj.func
    obj = getattr(obj, "__self__", obj)  # a bound method -> its object
    if isinstance(obj, nn.Module):
        for t in obj.parameters():
            return t.device
        for t in obj.buffers():
            return t.device
        return None
    dev = getattr(obj, "device", None)
    if isinstance(dev, (torch.device, str)) and not isinstance(obj, torch.Tensor):
        return torch.device(dev)
    return None


class Trajectory(list):
    """A ready-made sampler ``callback`` that keeps the states: ``traj = Trajectory(); sample(..., callback=traj)``.

    Every sampler calls ``callback(i, t, x)`` with ``i = 0`` for the start point and ``i = 1..n_steps`` after each
    step (``t`` the time reached). The trajectory is the list itself (``traj[0]`` the start, ``traj[-1]`` the
    sampler's result, ``traj[::100]``, ``torch.stack(traj)``), with the times in ``traj.ts`` and the step indices in
    ``traj.steps``. The states are kept on their device (a copy, no host transfer in the loop); ``traj.stack()``
    gives one CPU tensor ``(len(traj), *shape)``. ``every=k`` keeps only the states with ``i % k == 0``
    (``Trajectory(every=steps_per_level)`` keeps annealed Langevin's state after each level).
    """

    def __init__(self, every: int = 1):
        super().__init__()
        from . import validation

        self.every = validation.integer("every", every, low=1)
        self.ts: list = []
        self.steps: list[int] = []

    def __call__(self, i: int, t, x: torch.Tensor) -> None:
        if i % self.every == 0:
            self.append(x.detach().clone())
            self.ts.append(t)
            self.steps.append(i)

    @property
    def xs(self) -> list:
        """The kept states (the list itself)."""
        return self

    def stack(self) -> torch.Tensor:
        return torch.stack([x.cpu() for x in self])


@contextlib.contextmanager
def eval_mode(*modules):
    """``with eval_mode(model):`` runs the block with ``model`` (and every submodule) in eval mode and restores each
    submodule's own train/eval flag afterwards, so no function changes the caller's model behind its back.
    Arguments that are not ``nn.Module`` are ignored (a plain function needs no mode)."""
    from torch import nn

    mods = [m for m in modules if isinstance(m, nn.Module)]
    saved = [(sub, sub.training) for m in mods for sub in m.modules()]
    for m in mods:
        m.eval()
    try:
        yield
    finally:
        for sub, flag in saved:
            sub.training = flag
