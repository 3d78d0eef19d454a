"""Shipped checkpoints: small trained models stored in the package, each with a SHA-256 and the command that makes it.

A notebook can load a model instead of training it (seconds instead of minutes on a CPU)::

    net = td.weights.load("00_tour_mlp")          # checks the file's SHA-256, builds the network, loads the weights

``load`` refuses a file whose SHA-256 differs from :data:`MANIFEST` (a truncated download, a Git LFS pointer, a file
from another version) and says how to make it again. Every file is made by its *recipe* here, the same training
call as the notebook's, in the ``standard`` profile::

    python3 -m tinydiff.weights make 00_tour_mlp   # trains, writes tinydiff/checkpoints/00_tour_mlp.pt, prints its hash
    python3 -m tinydiff.weights check              # verifies every shipped file

Training is seeded, so a re-made file holds the same model; its bytes (and hash) can differ on another CPU, torch
version or thread count (float rounding), in which case update :data:`MANIFEST` with the printed hash.
"""

from __future__ import annotations

import hashlib
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

__all__ = ["MANIFEST", "Checkpoint", "path", "sha256", "load", "make", "verify"]

FOLDER = Path(__file__).resolve().parent / "checkpoints"


@dataclass(frozen=True)
class Checkpoint:
    """One shipped file: what it holds, its hash, how to build the network, and the lesson it comes from."""

    file: str
    sha256: str
    build: Callable[[], torch.nn.Module]
    recipe: Callable[[], torch.nn.Module]
    lesson: str
    what: str

    @property
    def command(self) -> str:
        return f"python3 -m tinydiff.weights make {Path(self.file).stem}"


def _mlp_00():
    from .models import MLPDenoiser

    return MLPDenoiser(dim=2, hidden=128, depth=3)


def _train_00():
    """notebooks/00_tour.py §6 in the standard profile: Algorithm 1 on the 8-mode ring, 4000 steps, EMA 0.995."""
    from . import ddpm, train
    from .data import GaussianMixture
    from .schedules import NoiseSchedule
    from .utils import seed_everything

    seed_everything(0)
    sched = NoiseSchedule.linear(T=1000)
    mixture = GaussianMixture.ring(k=8, radius=2.0, std=0.15)
    result = train.fit(_mlp_00(), lambda net, x0: ddpm.loss(net, x0, sched), lambda n, gen: mixture.sample(n, gen),
                       steps=4000, batch_size=256, lr=2e-3, ema_decay=0.995, desc="training the MLP (00)")
    return result.sampler_model


MANIFEST: dict[str, Checkpoint] = {
    "00_tour_mlp": Checkpoint(
        file="00_tour_mlp.pt",
        sha256="80ad0fe479fcc983db7ff8a6ac3d407e85cbe54de071f97c3e16474cb614f207",
        build=_mlp_00,
        recipe=_train_00,
        lesson="00_tour",
        what="the MLP ε-predictor of lesson 00 §6 (EMA weights, fp32): DDPM on the 8-mode ring, standard profile",
    ),
}


def _entry(name: str) -> Checkpoint:
    if not isinstance(name, str) or name not in MANIFEST:
        raise ValueError(f"name must be a shipped checkpoint, one of {', '.join(sorted(MANIFEST))}; got "
                         f"{type(name).__name__} {name!r:.60}")
    return MANIFEST[name]


def path(name: str) -> Path:
    """Where the shipped file of ``name`` lives (inside the installed package)."""
    return FOLDER / _entry(name).file


def sha256(file) -> str:
    """The SHA-256 of a file, hex."""
    if not isinstance(file, (str, Path)) or not Path(file).is_file():
        raise ValueError(f"file must be the path of an existing file; got {type(file).__name__} {file!r:.80}")
    h = hashlib.sha256()
    with open(file, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def verify(name: str) -> Path:
    """Return the path of ``name``'s file after checking that it exists and has the recorded SHA-256."""
    entry, file = _entry(name), path(name)
    if not file.exists():
        raise FileNotFoundError(f"the shipped checkpoint {file} is missing; make it with `{entry.command}` "
                                "(or train in the notebook instead)")
    got = sha256(file)
    if got != entry.sha256:
        head = file.read_bytes()[:40]
        why = " (it is a Git LFS pointer: run `git lfs pull`)" if head.startswith(b"version https://git-lfs") else ""
        raise ValueError(f"{file} does not match its recorded SHA-256{why}: expected {entry.sha256 or '(none recorded)'}, "
                         f"got {got}. The file was changed, truncated or comes from another version; make it again "
                         f"with `{entry.command}` (and record the new hash in tinydiff/weights.py), or train in the "
                         "notebook instead.")
    return file


def load(name: str, *, device=None) -> torch.nn.Module:
    """The shipped model ``name``, checked (SHA-256), built, loaded and in eval mode, on ``device`` (default CPU)."""
    if device is not None:
        try:
            device = torch.device(device)
        except (TypeError, RuntimeError, ValueError):
            raise ValueError(f"device must be a torch.device or a name like 'cuda' or 'cpu'; got "
                             f"{type(device).__name__} {device!r:.60}") from None
    file = verify(name)
    model = _entry(name).build()
    state = torch.load(file, map_location="cpu", weights_only=True)
    model.load_state_dict(state)
    return model.eval().to(device or "cpu")


def make(name: str) -> str:
    """Run ``name``'s recipe, write its file and return the new SHA-256 (record it in :data:`MANIFEST`)."""
    entry = _entry(name)
    model = entry.recipe().cpu()
    FOLDER.mkdir(exist_ok=True)
    file = FOLDER / entry.file
    tmp = file.with_suffix(".tmp")
    torch.save({k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}, tmp)
    tmp.replace(file)
    return sha256(file)


def _main(argv) -> int:
    if argv[:1] == ["make"] and len(argv) >= 2:
        for name in argv[1:]:
            print(f"{name}: {path(name)}  sha256={make(name)}")
        return 0
    if argv[:1] == ["check"]:
        for name in argv[1:] or sorted(MANIFEST):
            verify(name)
            print(f"{name}: OK ({path(name).stat().st_size / 1e3:.0f} kB)")
        return 0
    print(__doc__)
    return 2


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
