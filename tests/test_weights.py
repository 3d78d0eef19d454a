"""Shipped weights (tinydiff.weights + train.fit(shipped=...)): every shipped file has its recorded hash and is small;
a matching run loads instead of training and returns the recorded result (weights, losses, random state); a run that
differs in anything recorded trains; a changed file is refused with the command that makes it again."""

import json

import pytest
import torch

import tinydiff as td
from tinydiff import weights as W


@pytest.mark.parametrize("name", sorted(W.manifest()))
def test_every_shipped_file_has_its_recorded_hash_and_loads(name):
    entry = W.manifest()[name]
    assert W.sha256(W.verify(name)) == entry["sha256"]
    state = W.restore(name)
    weights = state["ema"] if state["model"] is None else state["model"]
    assert (state["ema"] is None) == (entry["key"]["settings"]["ema_decay"] is None)
    assert all(v.dtype == torch.float16 for v in weights.values() if v.is_floating_point())
    assert len(state["losses"]) == entry["key"]["steps"]
    assert torch.isfinite(state["losses"]).all()
    assert entry["command"] == f"TINYDIFF_WEIGHTS=record python3 tasks.py execute {name[:2]}"


def test_the_shipped_files_stay_small_and_every_file_is_listed():
    assert W.total_bytes() < 15e6, f"{W.total_bytes() / 1e6:.1f} MB shipped; keep it under 15 MB"
    on_disk = {p.stem for p in W.FOLDER.glob("*.pt")}
    assert on_disk == set(W.manifest()), "files without a manifest entry, or entries without a file"


def test_every_shipped_name_is_used_by_its_notebook():
    """A manifest entry nobody loads is dead weight: each name (or its f-string stem) appears in its lesson's notebook."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "notebooks"
    for name in W.manifest():
        source = next(root.glob(f"{name[:2]}_*.py")).read_text()
        stems = [name[:i] for i in range(len(name), 2, -1)]
        assert f'"{name}"' in source or any(f'f"{s}{{' in source for s in stems), name


def test_the_committed_notebooks_loaded_every_shipped_file():
    """The committed (standard, CPU) runs printed "shipped weights 'NAME' loaded" for every file: so each shipped file
    is the one its notebook's run asks for (same model, data, settings, steps), and the committed check cells passed
    with it. A notebook whose training cell changed without re-recording would train instead and fail this."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "notebooks"
    for name in W.manifest():
        nb = json.loads(next(root.glob(f"{name[:2]}_*.ipynb")).read_text())
        text = "".join("".join(o.get("text", "")) for c in nb["cells"] for o in c.get("outputs", []))
        assert f"shipped weights '{name}' loaded" in text, f"{name}: re-record with {W.manifest()[name]['command']}"


# ------------------------------------------------------------------------------------------- the mechanism
@pytest.fixture
def folder(tmp_path, monkeypatch):
    monkeypatch.setattr(W, "FOLDER", tmp_path / "checkpoints")
    monkeypatch.delenv("TINYDIFF_WEIGHTS", raising=False)
    yield tmp_path / "checkpoints"
    W.use(None)


def _run(net=None, *, steps=30, lr=1e-2, data=None, counter=None, **kw):
    torch.manual_seed(0)
    net = net or td.models.MLPDenoiser(dim=2, hidden=16, depth=2)
    data = torch.randn(64, 2, generator=torch.Generator().manual_seed(3)) if data is None else data
    sched = td.NoiseSchedule.linear(T=50)

    def loss(m, x):
        if counter is not None:
            counter.append(1)
        return td.ddpm.loss(m, x, sched)

    kw = {"ema_decay": 0.9, **kw}
    return td.train.fit(net, loss, data, steps=steps, batch_size=16, lr=lr, progress_bar=False, shipped="99_test_mlp",
                        **kw)


def test_record_then_auto_loads_the_recorded_run_without_training(folder):
    W.use("train")
    trained = _run()
    after_training = torch.randn(3)  # the random state training left behind
    W.use("record")
    recorded = _run()
    assert recorded.losses == trained.losses and torch.equal(torch.randn(3), after_training)
    entry = W.manifest()["99_test_mlp"]
    assert (folder / "99_test_mlp.pt").exists() and entry["bytes"] < 40_000
    W.use("auto")
    calls = []
    loaded = _run(counter=calls)
    assert calls == [] and loaded.shipped is not None, "a matching run on the CPU must load, not train"
    assert loaded.losses == trained.losses and loaded.steps == 30
    assert torch.equal(torch.randn(3), after_training), "the cells after fit must draw the same numbers"
    for (k, u), v in zip(trained.ema.state_dict().items(), loaded.ema.state_dict().values()):
        assert v.dtype == u.dtype and torch.allclose(u, v, rtol=1e-3, atol=1e-4), k  # float16 storage
        assert (u - v).abs().max() <= entry["fp16_max_abs_error"] + 1e-12
        assert torch.equal(v, u.half().float()), k
    first = next(iter(trained.model.state_dict()))
    assert not torch.equal(trained.ema.state_dict()[first], trained.model.state_dict()[first])
    # with an EMA only the EMA weights are shipped; the loaded raw model holds them too
    assert torch.equal(loaded.model.state_dict()[first], loaded.ema.state_dict()[first])


def test_a_record_run_returns_what_a_load_returns_so_runs_trained_on_its_outputs_match(folder):
    """A record run hands on the float16, EMA-only result a later load gives; so a second run whose data are the first
    model's outputs (reflow pairs, latents, codes) sees the same data, hashes the same, and loads too."""
    def two_runs(counter):
        first = _run()
        with torch.no_grad():
            data = first.ema(torch.randn(64, 2, generator=torch.Generator().manual_seed(5)), torch.full((64,), 7))
        torch.manual_seed(1)
        net = td.models.MLPDenoiser(dim=2, hidden=16, depth=2)
        sched = td.NoiseSchedule.linear(T=50)
        second = td.train.fit(net, lambda m, x: (counter.append(1), td.ddpm.loss(m, x, sched))[1], data, steps=10,
                              batch_size=16, ema_decay=None, progress_bar=False, shipped="99_test_second")
        return first, second

    W.use("record")
    rec_first, rec_second = two_runs([])
    W.use("auto")
    calls = []
    first, second = two_runs(calls)
    assert calls == [] and second.shipped, "the run trained on the first model's outputs must load too"
    for u, v in zip(rec_first.model.state_dict().values(), first.model.state_dict().values()):
        assert torch.equal(u, v)
    assert second.losses == rec_second.losses


def test_without_an_ema_the_raw_weights_are_shipped(folder):
    W.use("record")
    trained = _run(ema_decay=None)
    W.use("auto")
    loaded = _run(ema_decay=None)
    assert loaded.shipped and loaded.ema is None
    for u, v in zip(trained.model.state_dict().values(), loaded.model.state_dict().values()):
        assert torch.equal(v, u.half().float())


@pytest.mark.parametrize("change", ["steps", "lr", "data", "model"])
def test_a_run_that_differs_from_the_recorded_one_trains(folder, change):
    W.use("record")
    _run()
    W.use("auto")
    calls = []
    kwargs = {"steps": {"steps": 31}, "lr": {"lr": 2e-2}, "data": {"data": torch.randn(64, 2)},
              "model": {"net": td.models.MLPDenoiser(dim=2, hidden=17, depth=2)}}[change]
    result = _run(counter=calls, **kwargs)
    assert calls and result.shipped is None
    W.use("shipped")
    kwargs = {**kwargs, "net": td.models.MLPDenoiser(dim=2, hidden=17, depth=2)} if change == "model" else kwargs
    with pytest.raises(td.train.CheckpointMismatch, match="recorded with another"):
        _run(**kwargs)


def test_train_mode_always_trains_and_shipped_mode_needs_a_file(folder):
    W.use("train")
    calls = []
    assert _run(counter=calls).shipped is None and calls
    W.use("shipped")
    with pytest.raises(td.train.CheckpointMismatch, match="no shipped weights are called '99_test_mlp'"):
        _run()


def test_a_changed_file_is_refused_and_auto_falls_back_to_training(folder):
    W.use("record")
    _run()
    file = folder / "99_test_mlp.pt"
    data = bytearray(file.read_bytes())
    data[len(data) // 2] ^= 1
    file.write_bytes(bytes(data))
    W.use("shipped")
    with pytest.raises(td.train.CheckpointError, match=r"does not match its recorded SHA-256.*TINYDIFF_WEIGHTS=record "
                                                       r"python3 tasks.py execute 99"):
        _run()
    W.use("auto")
    with pytest.warns(UserWarning, match="Training instead"):
        assert _run().shipped is None
    file.write_text("version https://git-lfs.github.com/spec/v1\noid sha256:0\nsize 1\n")
    with pytest.raises(td.train.CheckpointError, match="Git LFS pointer"):
        W.verify("99_test_mlp")
    file.unlink()
    with pytest.raises(td.train.CheckpointNotFound, match="missing"):
        W.verify("99_test_mlp")


def test_a_foreign_file_with_a_matching_hash_is_refused(folder):
    W.use("record")
    _run()
    file = folder / "99_test_mlp.pt"
    torch.save({"something": torch.zeros(2)}, file)
    entries = json.loads((folder / "MANIFEST.json").read_text())
    entries["entries"]["99_test_mlp"]["sha256"] = W.sha256(file)
    (folder / "MANIFEST.json").write_text(json.dumps(entries))
    with pytest.raises(td.train.CheckpointError, match="not a shipped-weights file"):
        W.restore("99_test_mlp")


def test_bad_arguments_are_named(folder, monkeypatch):
    with pytest.raises(ValueError, match="shipped must be a name like '02_ddpm_mlp'.*got str 'Bad Name'"):
        td.train.fit(td.models.MLPDenoiser(dim=2, hidden=8, depth=1), lambda m, x: m(x, torch.zeros(len(x))).mean(),
                     torch.zeros(8, 2), steps=1, shipped="Bad Name")
    with pytest.raises(ValueError, match="shipped and ckpt cannot be used together"):
        _run(ckpt=str(folder.parent / "c.pt"))
    with pytest.raises(ValueError, match="mode must be one of auto, shipped, train, record; got str 'yes'"):
        W.use("yes")
    monkeypatch.setenv("TINYDIFF_WEIGHTS", "sometimes")
    with pytest.raises(ValueError, match="TINYDIFF_WEIGHTS must be one of"):
        W.mode()
    with pytest.raises(ValueError, match="file must be the path of an existing file"):
        W.sha256("/nonexistent/file.pt")
    with pytest.raises(ValueError, match="device must be a torch.device"):
        td.profiles.autocast_dtype("nonsense")
    with pytest.raises(TypeError, match="standard must be a dict"):
        td.profiles.choose(quick={"n": 1}, standard=None)


def test_the_shipped_folder_is_packaged():
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "pyproject.toml").read_text()
    assert '"checkpoints/*.pt", "checkpoints/MANIFEST.json"' in text
