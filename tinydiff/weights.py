"""Shipped weights: the notebooks' trained models, stored in the package so that a CPU run loads them in a second
instead of training for minutes.

A notebook names each training run it ships::

    result = td.train.fit(net, loss_fn, data, steps=4000, ..., shipped="00_tour_mlp")

What :func:`tinydiff.train.fit` then does depends on :func:`mode` (the environment variable ``TINYDIFF_WEIGHTS``,
or :func:`use` in a notebook):

=========== ===========================================================================================================
``auto``    (default) load the shipped weights on a CPU when the run is the one that was recorded (same model
            fingerprint, data, settings and number of steps, see :func:`run_key`); otherwise train. On a GPU, train.
``shipped`` load the shipped weights on any device; a run that does not match is an error that says what differs.
``train``   always train ("train yourself").
``record``  train, store the result as the shipped weights of that name (how every file here was made), and
            return what a later load returns, so that later runs trained on its outputs record matching data.
=========== ===========================================================================================================

A loaded run is the recorded run: the same weights (stored in float16; the manifest records the largest absolute
rounding error this made), the same per-step losses, and the global torch random state the training left behind,
so the cells after it draw the same random numbers as after training. **With an EMA only the EMA weights are
shipped**, and after loading both ``result.model`` and ``result.ema`` hold them; a notebook that uses the raw
weights trains without an EMA (``ema_decay=None``), which leaves the raw weights unchanged.

Every file is listed in ``checkpoints/MANIFEST.json`` with its SHA-256, size, lesson and the command that makes it
again (``TINYDIFF_WEIGHTS=record python3 tasks.py execute NN``). Loading checks the hash; a changed, truncated or
foreign file, or a Git LFS pointer, is refused with a :class:`tinydiff.train.CheckpointError` that says what to do::

    python3 -m tinydiff.weights check      # verify every shipped file and print sizes
    python3 -m tinydiff.weights list       # what is shipped, and from which lesson
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
from pathlib import Path

import torch

from .validation import describe

__all__ = ["MODES", "mode", "use", "manifest", "path", "sha256", "verify", "run_key", "lookup", "restore", "record",
           "total_bytes"]

FOLDER = Path(__file__).resolve().parent / "checkpoints"
MODES = ("auto", "shipped", "train", "record")
FORMAT = 1
_NAME = re.compile(r"^\d\d_[a-z0-9][a-z0-9_\-]*$")
_mode: str | None = None


def _check_mode(value, name) -> str:
    if not isinstance(value, str) or value.strip().lower() not in MODES:
        raise ValueError(f"{name} must be one of {', '.join(MODES)}; got {describe(value)}")
    return value.strip().lower()


def use(mode: str | None) -> None:
    """Choose where trained weights come from for the rest of this process (see the module doc); ``None`` goes back to
    the environment variable ``TINYDIFF_WEIGHTS`` (default ``auto``)."""
    global _mode
    _mode = None if mode is None else _check_mode(mode, "mode")


def mode() -> str:
    """The active mode: the one set by :func:`use`, else ``TINYDIFF_WEIGHTS``, else ``auto``."""
    if _mode is not None:
        return _mode
    return _check_mode(os.environ.get("TINYDIFF_WEIGHTS", "auto") or "auto", "TINYDIFF_WEIGHTS")


def _name(name) -> str:
    if not isinstance(name, str) or not _NAME.match(name):
        raise ValueError("shipped must be a name like '02_ddpm_mlp' (the lesson's two digits, then lower-case letters, "
                         f"digits, '_' or '-'); got {describe(name)}")
    return name


def _manifest_file() -> Path:
    return FOLDER / "MANIFEST.json"


def manifest() -> dict[str, dict]:
    """Every shipped run: name -> its entry (file, sha256, bytes, lesson, command, key)."""
    file = _manifest_file()
    if not file.exists():
        return {}
    data = json.loads(file.read_text())
    if data.get("format") != FORMAT:
        raise ValueError(f"{file} has format {data.get('format')!r}; this tinydiff reads format {FORMAT}")
    return data["entries"]


def _write_manifest(entries: dict) -> None:
    FOLDER.mkdir(exist_ok=True)
    tmp = _manifest_file().with_suffix(".tmp")
    tmp.write_text(json.dumps({"format": FORMAT, "entries": dict(sorted(entries.items()))}, indent=1) + "\n")
    tmp.replace(_manifest_file())


def total_bytes() -> int:
    """The size of all shipped files together."""
    return sum(e["bytes"] for e in manifest().values())


def path(name: str) -> Path:
    """Where the file of the shipped run ``name`` lives (inside the installed package)."""
    return FOLDER / f"{_name(name)}.pt"


def sha256(file) -> str:
    """The SHA-256 of a file, hex."""
    if not isinstance(file, (str, Path)) or not Path(file).is_file():
        raise ValueError(f"file must be the path of an existing file; got {describe(file)}")
    h = hashlib.sha256()
    with open(file, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _command(name: str) -> str:
    return f"TINYDIFF_WEIGHTS=record python3 tasks.py execute {name[:2]}"


def verify(name: str) -> Path:
    """The path of ``name``'s file after checking that it is listed, exists and has the recorded SHA-256."""
    from .train import CheckpointError, CheckpointNotFound

    entry = manifest().get(_name(name))
    if entry is None:
        raise CheckpointNotFound(f"no shipped weights are called {name!r}; shipped: {', '.join(sorted(manifest())) or 'none'}")
    file = path(name)
    if not file.exists():
        raise CheckpointNotFound(f"the shipped weights {file} are missing; make them with `{_command(name)}` "
                                 "(or train: TINYDIFF_WEIGHTS=train)")
    got = sha256(file)
    if got != entry["sha256"]:
        head = file.read_bytes()[:40]
        why = " (it is a Git LFS pointer: run `git lfs pull`)" if head.startswith(b"version https://git-lfs") else ""
        raise CheckpointError(f"{file} does not match its recorded SHA-256{why}: expected {entry['sha256']}, got {got}. "
                              f"The file was changed, truncated or comes from another version; make it again with "
                              f"`{_command(name)}`, or train instead (TINYDIFF_WEIGHTS=train).")
    return file


def _data_digest(data) -> str:
    tensors = data if isinstance(data, tuple) else (data,) if isinstance(data, torch.Tensor) else None
    if tensors is None:  # a callable data(batch_size, generator): named by its type
        return f"callable {type(data).__module__}.{getattr(data, '__qualname__', type(data).__qualname__)}"
    h = hashlib.sha256()
    for t in tensors:
        t = t.detach().cpu().contiguous()
        h.update(f"{t.dtype}{tuple(t.shape)}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def run_key(fingerprint: dict, data, settings: dict, steps: int) -> dict:
    """What makes a training run the recorded one: the model's fingerprint (class, parameter shapes, constructor
    settings), the SHA-256 of the data tensors (or the type of a data callable), the optimiser settings and the number
    of steps. ``amp`` is left out: the weights serve on any device. The loss function cannot be fingerprinted: a run
    with another loss and everything else equal would load the recorded weights (set ``TINYDIFF_WEIGHTS=train``)."""
    for name, value in (("fingerprint", fingerprint), ("settings", settings)):
        if not isinstance(value, dict):
            raise TypeError(f"{name} must be a dict; got {describe(value)}")
    from .validation import integer

    steps = integer("steps", steps, low=1)
    model = hashlib.sha256(json.dumps(fingerprint, sort_keys=True, default=str).encode()).hexdigest()
    return {"model": model, "data": _data_digest(data), "steps": int(steps),
            "settings": {k: v for k, v in sorted(settings.items()) if k != "amp"}}


def lookup(name: str, key: dict) -> tuple[dict | None, str]:
    """The manifest entry of ``name`` if its recorded run has this ``key``, else ``(None, why not)``."""
    if not isinstance(key, dict) or not {"model", "data", "steps", "settings"} <= set(key):
        raise TypeError(f"key must be a dict from run_key() (model, data, steps, settings); got {describe(key)}")
    entry = manifest().get(_name(name))
    if entry is None:
        return None, f"no shipped weights are called {name!r}"
    got = entry["key"]
    diff = [k for k in ("model", "data", "steps") if got.get(k) != key[k]]
    diff += [f"{k} ({got['settings'].get(k)!r} recorded, {v!r} now)" for k, v in key["settings"].items()
             if got["settings"].get(k) != v]
    if diff:
        return None, f"the shipped run {name!r} was recorded with another " + ", ".join(diff)
    return entry, ""


def _half(state: dict) -> dict:
    return {k: v.detach().cpu().half() if v.is_floating_point() else v.detach().cpu() for k, v in state.items()}


def record(name: str, key: dict, model: torch.nn.Module, ema: torch.nn.Module | None, losses, torch_rng) -> str:
    """Store a finished run as the shipped weights ``name``, write it atomically, update the manifest and return the
    file's SHA-256. The file holds the weights in float16 (the EMA copy when there is one, else the raw weights: the
    book samples with the EMA, and shipping both would double the size), the losses (float32) and the random state."""
    file = path(name)
    FOLDER.mkdir(exist_ok=True)
    state = {"format": FORMAT, "name": name, "model": _half(model.state_dict()) if ema is None else None,
             "ema": None if ema is None else _half(ema.state_dict()),
             "losses": torch.tensor(list(losses), dtype=torch.float32), "torch_rng": torch_rng.clone(), "key": key}
    tmp = file.with_suffix(".tmp")
    torch.save(state, tmp)
    tmp.replace(file)
    entries = manifest()
    rounding = max((float((v.detach().cpu().float() - v.detach().cpu().half().float()).abs().max())
                    for v in (model if ema is None else ema).state_dict().values()
                    if v.is_floating_point() and v.numel()), default=0.0)
    entries[name] = {"file": file.name, "sha256": sha256(file), "bytes": file.stat().st_size, "lesson": name[:2],
                     "command": _command(name), "fp16_max_abs_error": rounding, "key": key}
    _write_manifest(entries)
    return entries[name]["sha256"]


def restore(name: str) -> dict:
    """The stored state of the shipped run ``name`` (checked: hash, format, keys), loaded with ``weights_only=True``."""
    from .train import CheckpointError

    file = verify(name)
    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure of a file whose hash matched
        raise CheckpointError(f"{file} could not be read ({type(exc).__name__}: {exc}); make it again with "
                              f"`{_command(name)}`") from None
    need = {"format", "model", "ema", "losses", "torch_rng"}
    if (not isinstance(state, dict) or not need <= set(state) or state["format"] != FORMAT
            or (state["model"] is None) == (state["ema"] is None)):
        raise CheckpointError(f"{file} is not a shipped-weights file of format {FORMAT}; make it again with "
                              f"`{_command(name)}`")
    return state


def _main(argv) -> int:
    entries = manifest()
    if argv[:1] == ["check"]:
        for name in argv[1:] or sorted(entries):
            verify(name)
            print(f"{name}: OK ({entries[name]['bytes'] / 1e3:.0f} kB)")
        print(f"{len(entries)} files, {total_bytes() / 1e6:.2f} MB in all")
        return 0
    if argv[:1] == ["list"]:
        for name, e in sorted(entries.items()):
            print(f"{name:<40} {e['bytes'] / 1e3:7.0f} kB  steps={e['key']['steps']:<6} `{e['command']}`")
        return 0
    print(__doc__)
    return 2


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
