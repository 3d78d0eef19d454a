"""The training loop: resume equality, NaN guard, atomic checkpoints, safe loading, EMA."""

import math
import os
import signal
import subprocess
import sys
import textwrap
import time
import warnings

import pytest
import torch

import tinydiff as td
from tinydiff.models import MLPDenoiser
from tinydiff.train import EMA, CheckpointError, CheckpointMismatch, TrainingDiverged, fit, load_checkpoint, save_checkpoint

SCHED = td.NoiseSchedule.linear(T=50)
GM = td.data.GaussianMixture.ring(4, radius=1.5, std=0.2)


def ddpm_loss(model, batch):
    return td.ddpm.loss(model, batch, SCHED)


def data(n, g):
    return GM.sample(n, g)


def run(steps, ckpt=None, seed=0):
    torch.manual_seed(123)
    model = MLPDenoiser(hidden=32, depth=1, time_dim=16)
    return fit(model, ddpm_loss, data, steps=steps, batch_size=32, lr=1e-3, ckpt=ckpt, ckpt_every=5, seed=seed,
               progress_bar=False, device="cpu")


def params(m):
    return torch.cat([p.detach().flatten() for p in m.parameters()])


def test_interrupted_training_resumes_to_identical_weights(tmp_path):
    straight = run(20)
    ckpt = tmp_path / "run.pt"
    run(10, ckpt=ckpt)  # "interrupted" after 10 steps
    resumed = run(20, ckpt=ckpt)  # the same call again picks up at step 10
    assert resumed.steps == 20 and len(resumed.losses) == 20
    assert torch.equal(params(straight.model), params(resumed.model))
    assert torch.equal(params(straight.ema), params(resumed.ema))
    assert straight.losses == resumed.losses


def test_same_seed_same_training_and_different_seed_differs():
    a, b, c = run(8), run(8), run(8, seed=1)
    assert torch.equal(params(a.model), params(b.model))
    assert not torch.equal(params(a.model), params(c.model))


def test_training_reduces_the_loss():
    res = run(300)
    first, last = sum(res.losses[:30]) / 30, sum(res.losses[-30:]) / 30
    assert last < 0.8 * first


def test_nan_loss_stops_with_a_clear_message():
    model = MLPDenoiser(hidden=16, depth=1, time_dim=8)
    with pytest.raises(TrainingDiverged, match="diverged.*learning rate"):
        fit(model, lambda m, b: m(b, torch.ones(b.shape[0])).sum() * float("nan"), data, steps=5, batch_size=4,
            progress_bar=False, device="cpu")


def test_checkpoint_from_another_model_is_refused(tmp_path):
    ckpt = tmp_path / "a.pt"
    run(5, ckpt=ckpt)
    other = MLPDenoiser(hidden=64, depth=1, time_dim=16)
    with pytest.raises(CheckpointMismatch, match="parameter shapes differ"):
        load_checkpoint(ckpt, other)
    with pytest.raises(CheckpointMismatch, match="holds a MLPDenoiser, not a UNet"):
        load_checkpoint(ckpt, td.models.UNet(1, base_channels=8, channel_mults=(1,)))
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        load_checkpoint(tmp_path / "missing.pt")


class NotATensor:
    """An arbitrary Python object: unpickling it could run code, so weights_only loading must refuse it."""


def test_checkpoints_load_with_weights_only(tmp_path):
    path = tmp_path / "evil.pt"
    save_checkpoint(path, payload=NotATensor())  # a valid container (checksum and all) around a pickled object
    with pytest.raises(CheckpointError, match="weights_only=True"):
        load_checkpoint(path)


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "ckpt.pt"
    save_checkpoint(path, value=torch.tensor(1.0))

    def broken_save(obj, f):
        f.write(b"half a file")
        raise KeyboardInterrupt  # interrupted mid-write

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, value=torch.tensor(2.0))
    monkeypatch.undo()
    assert load_checkpoint(path)["value"] == 1.0  # the old checkpoint is intact
    assert os.listdir(tmp_path) == ["ckpt.pt"]  # and no temporary file is left behind


def test_ema_update_is_the_exponential_average_with_warmup():
    model = torch.nn.Linear(3, 2)
    ema = EMA(model, decay=0.9)
    ema.updates = 1000  # past the warm-up, d_k = d
    old = params(ema.model).clone()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    ema.update(model)
    torch.testing.assert_close(params(ema.model), 0.9 * old + 0.1 * params(model))
    fresh = EMA(model, decay=0.999)  # the first update uses d_0 = 1/10
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    before = params(fresh.model).clone()
    fresh.update(model)
    torch.testing.assert_close(params(fresh.model), 0.1 * before + 0.9 * params(model))
    assert fresh.updates == 1 and fresh.current_decay() == 2 / 11
    with pytest.raises(ValueError, match="decay"):
        EMA(model, decay=1.0)


def test_fit_takes_tuples_of_tensors_and_checks_them():
    x, y = torch.randn(20, 2), torch.randint(0, 3, (20,))
    model = MLPDenoiser(hidden=16, depth=1, time_dim=8, num_classes=3)

    def loss(m, batch):
        xb, yb = batch
        return td.ddpm.loss(m, xb, SCHED, model_kwargs={"y": yb})

    res = fit(model, loss, (x, y), steps=3, batch_size=4, progress_bar=False, device="cpu")
    assert len(res.losses) == 3
    with pytest.raises(ValueError, match="same first dimension"):
        fit(model, loss, (x, y[:5]), steps=1, batch_size=4, progress_bar=False, device="cpu")
    with pytest.raises(ValueError, match="steps"):
        fit(model, loss, (x, y), steps=-1, progress_bar=False, device="cpu")


# ------------------------------------------------------------------------------------- settings are checked
def tiny_fit(**kwargs):
    args = dict(steps=2, batch_size=4, progress_bar=False, device="cpu")
    args.update(kwargs)
    model = args.pop("model", MLPDenoiser(hidden=8, depth=1, time_dim=8))
    return fit(model, args.pop("loss_fn", ddpm_loss), args.pop("data", data), **args)


@pytest.mark.parametrize("name, value", [
    ("grad_clip", -1.0), ("grad_clip", 0.0), ("grad_clip", float("nan")), ("warmup", -1), ("warmup", 2.5),
    ("lr", 0.0), ("lr", -1e-3), ("lr", float("inf")), ("steps", 0), ("steps", 2.0), ("steps", True),
    ("batch_size", 0), ("weight_decay", -0.1), ("weight_decay", float("nan")), ("ema_decay", 1.0),
    ("ema_decay", -0.5), ("ckpt_every", 0), ("check_every", 0), ("seed", "0"), ("amp", "yes"),
    ("device", "nonsense"), ("ckpt", 3), ("progress_bar", None),
])
def test_fit_refuses_bad_settings_naming_the_argument(name, value):
    calls = []

    def loss(m, b):
        calls.append(1)
        return ddpm_loss(m, b)

    with pytest.raises((ValueError, TypeError), match=name):
        tiny_fit(loss_fn=loss, **{name: value})
    assert not calls  # refused before any training


def test_fit_refuses_bad_data_and_bad_losses():
    with pytest.raises(ValueError, match="data must hold at least 1"):
        tiny_fit(data=torch.zeros(0, 2))
    with pytest.raises(ValueError, match="complex|real"):
        tiny_fit(data=torch.zeros(8, 2, dtype=torch.complex64))
    with pytest.raises(TypeError, match="forget to `return`"):
        tiny_fit(data=lambda n, g: None)
    with pytest.raises(TypeError, match="loss_fn.*forget to `return`"):
        tiny_fit(loss_fn=lambda m, b: None)
    with pytest.raises(ValueError, match="scalar"):
        tiny_fit(loss_fn=lambda m, b: m(b, torch.zeros(b.shape[0])))
    with pytest.raises(TypeError, match="loss_fn"):
        tiny_fit(loss_fn="mse")
    res = tiny_fit(data=GM.sample(16, torch.Generator().manual_seed(0)).numpy())  # numpy data is converted
    assert len(res.losses) == 2


# ------------------------------------------------------------------------------------- resuming
def test_resume_applies_the_callers_new_optimiser_settings(tmp_path):
    ckpt = tmp_path / "run.pt"
    run(10, ckpt=ckpt)
    torch.manual_seed(123)
    model = MLPDenoiser(hidden=32, depth=1, time_dim=16)
    with pytest.warns(UserWarning, match=r"lr 0\.001 -> 0\.0001.*weight_decay 0\.0 -> 0\.1.*warmup 0 -> 100"):
        fit(model, ddpm_loss, data, steps=20, batch_size=32, lr=1e-4, weight_decay=0.1, warmup=100, ckpt=ckpt,
            ckpt_every=5, progress_bar=False, device="cpu")
    state = load_checkpoint(ckpt)
    group = state["optimizer"]["param_groups"][0]
    assert group["weight_decay"] == 0.1
    assert math.isclose(group["lr"], 1e-4 * 21 / 100, rel_tol=1e-12)  # warm-up factor (step + 1) / warmup at step 20
    assert state["settings"]["lr"] == 1e-4
    # and the weights differ from a resume with the old settings (which is the uninterrupted run)
    old = run(20)
    assert not torch.equal(params(old.model), params(model))


def test_resume_with_unchanged_settings_warns_nothing(tmp_path):
    ckpt = tmp_path / "run.pt"
    run(10, ckpt=ckpt)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        res = run(15, ckpt=ckpt)
    assert res.resumed_from == 10 and res.steps == 15


def test_fewer_steps_than_the_checkpoint_holds_is_refused(tmp_path):
    ckpt = tmp_path / "run.pt"
    first = run(10, ckpt=ckpt)
    with pytest.raises(ValueError, match=r"already holds 10 steps, more than steps=4"):
        run(4, ckpt=ckpt)
    again = run(10, ckpt=ckpt)  # the finished run comes back without training
    assert again.steps == 10 and again.losses == first.losses and again.resumed_from == 10
    assert torch.equal(params(again.model), params(first.model))


def test_checkpoint_of_a_model_with_other_constructor_settings_is_refused(tmp_path):
    ckpt = tmp_path / "run.pt"
    tiny_fit(ckpt=ckpt, model=MLPDenoiser(hidden=8, depth=1, time_dim=8, time_scale=1.0))
    with pytest.raises(CheckpointMismatch, match=r"embed\.time_scale: 1\.0 in the checkpoint, 1000\.0 in the model"):
        tiny_fit(ckpt=ckpt, model=MLPDenoiser(hidden=8, depth=1, time_dim=8, time_scale=1000.0))
    tiny_fit(ckpt=ckpt, model=MLPDenoiser(hidden=8, depth=1, time_dim=8, time_scale=1.0), steps=3)  # same: resumes


# ------------------------------------------------------------------------------------- divergence
def exploding_loss(limit):
    """The DDPM loss while every weight stays below ``limit`` in size, NaN once one exceeds it: a large learning
    rate pushes Adam's weights past it within a few steps, a small one does not."""

    def loss(m, batch):
        big = max(p.detach().abs().max().item() for p in m.parameters())
        return ddpm_loss(m, batch) * (float("nan") if big > limit else 1.0)

    return loss


def test_divergence_names_a_finite_older_checkpoint_and_a_lower_lr_resumes_from_it(tmp_path):
    ckpt = tmp_path / "run.pt"
    torch.manual_seed(0)
    model = MLPDenoiser(hidden=16, depth=1, time_dim=8)
    with pytest.raises(TrainingDiverged) as info:
        fit(model, exploding_loss(2.0), data, steps=60, batch_size=16, lr=0.2, ckpt=ckpt, ckpt_every=3,
            check_every=7, progress_bar=False, device="cpu")
    msg = str(info.value)
    at, noticed = (int(v) for v in __import__("re").search(r"at step (\d+).*noticed at step (\d+)", msg).groups())
    assert at <= noticed < at + 7  # noticed at most check_every - 1 steps late
    assert f"is in {str(ckpt)!r}" in msg and "lower lr" in msg
    state = load_checkpoint(ckpt)
    assert state["step"] <= at  # older than the divergence
    weights = torch.cat([v.flatten() for v in state["model"].values()])
    assert torch.isfinite(weights).all() and weights.abs().max() <= 2.0  # and its weights gave a finite loss
    torch.manual_seed(0)
    with pytest.warns(UserWarning, match=r"lr 0\.2 -> 0\.001"):
        retry = fit(MLPDenoiser(hidden=16, depth=1, time_dim=8), exploding_loss(2.0), data, steps=60, batch_size=16,
                    lr=1e-3, ckpt=ckpt, ckpt_every=3, check_every=7, progress_bar=False, device="cpu")
    assert retry.resumed_from == state["step"] and len(retry.losses) == 60
    assert all(math.isfinite(v) for v in retry.losses)


def test_nan_weights_are_never_checkpointed(tmp_path):
    ckpt = tmp_path / "run.pt"

    def poison(m, batch):
        loss = ddpm_loss(m, batch)
        if poison.calls == 4:
            with torch.no_grad():
                next(m.parameters()).fill_(float("inf"))  # weights broken, loss (computed before) still finite
        poison.calls += 1
        return loss

    poison.calls = 0
    with pytest.raises(TrainingDiverged, match="weights became NaN or inf"):
        tiny_fit(loss_fn=poison, steps=10, ckpt=ckpt, ckpt_every=5, check_every=100)
    assert not ckpt.exists()  # the checkpoint at step 5 would have held them: it was not written


# ------------------------------------------------------------------------------------- broken checkpoint files
@pytest.fixture
def good_ckpt(tmp_path):
    path = tmp_path / "run.pt"
    tiny_fit(ckpt=path)
    return path


def expect_checkpoint_error(path, match, *, unreadable=True):
    model = MLPDenoiser(hidden=8, depth=1, time_dim=8)
    with pytest.raises(CheckpointError, match=match) as info:
        tiny_fit(ckpt=path, model=model, steps=4)
    assert str(path) in str(info.value)
    if unreadable:
        with pytest.raises(CheckpointError, match=match):
            load_checkpoint(path)
    return str(info.value)


def test_truncated_checkpoint(good_ckpt):
    data_ = good_ckpt.read_bytes()
    good_ckpt.write_bytes(data_[: len(data_) // 2])
    assert "Delete it" in expect_checkpoint_error(good_ckpt, "is truncated or padded")


def test_empty_checkpoint(good_ckpt):
    good_ckpt.write_bytes(b"")
    expect_checkpoint_error(good_ckpt, r"is empty \(0 bytes\)")


def test_text_file_as_checkpoint(good_ckpt):
    good_ckpt.write_text("epoch,loss\n1,0.5\n")
    expect_checkpoint_error(good_ckpt, "not a tinydiff checkpoint")


def test_plain_torch_save_file_as_checkpoint(good_ckpt):
    torch.save({"model": {}}, good_ckpt)
    expect_checkpoint_error(good_ckpt, "not a tinydiff checkpoint.*torch.save file")


def test_checkpoint_with_a_missing_entry(good_ckpt):
    state = load_checkpoint(good_ckpt)
    del state["lr_schedule"]
    save_checkpoint(good_ckpt, **state)
    expect_checkpoint_error(good_ckpt, "incomplete.*'lr_schedule'", unreadable=False)


def test_every_single_byte_corruption_is_caught(good_ckpt):
    original = good_ckpt.read_bytes()
    n = len(original)
    positions = sorted(set(list(range(0, 120, 3)) + list(range(120, n, max(1, n // 40))) + [n - 1]))
    for pos in positions:
        broken = bytearray(original)
        broken[pos] ^= 0x5A
        good_ckpt.write_bytes(bytes(broken))
        with pytest.raises(CheckpointError, match=str(good_ckpt).replace(".", r"\.")):
            load_checkpoint(good_ckpt)
    assert len(positions) > 60


def test_checkpoint_folder_is_checked_before_training(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    calls = []

    def loss(m, b):
        calls.append(1)
        return ddpm_loss(m, b)

    with pytest.raises(CheckpointError, match="cannot write checkpoints to"):
        tiny_fit(loss_fn=loss, ckpt=blocker / "run.pt", ckpt_every=500)
    assert not calls
    with pytest.raises(CheckpointError, match="is a folder"):
        tiny_fit(ckpt=tmp_path)


def test_unwritable_checkpoint_folder_is_reported_before_training(tmp_path, monkeypatch):
    import tinydiff.train as train_module

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    calls = []
    monkeypatch.setattr(train_module.tempfile, "mkstemp", refuse)  # what a read-only folder does, even for root
    with pytest.raises(CheckpointError, match="cannot write checkpoints to .*Permission denied"):
        tiny_fit(loss_fn=lambda m, b: calls.append(1) or ddpm_loss(m, b), ckpt=tmp_path / "run.pt")
    assert not calls


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root can write to read-only folders")
def test_read_only_checkpoint_folder_is_reported_at_the_start(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        with pytest.raises(CheckpointError, match="cannot write checkpoints"):
            tiny_fit(ckpt=folder / "run.pt")
    finally:
        folder.chmod(0o700)


def test_temporary_files_of_a_killed_write_are_removed_on_the_next_start(tmp_path):
    ckpt = tmp_path / "run.pt"
    stale = tmp_path / ".tmp-run.pt-abc123.pt"
    stale.write_bytes(b"half a checkpoint")
    other = tmp_path / ".tmp-other.pt-abc123.pt"  # another run's temporary file is left alone
    other.write_bytes(b"x")
    legacy = tmp_path / ".tmp-k3j_9x0a.pt"  # one left by the first checkpoint format's writer
    legacy.write_bytes(b"y")
    tiny_fit(ckpt=ckpt)
    assert not stale.exists() and not legacy.exists() and other.exists()
    assert sorted(os.listdir(tmp_path)) == [".tmp-other.pt-abc123.pt", "run.pt"]


def test_disk_full_during_a_write_is_a_checkpoint_error(tmp_path, monkeypatch):
    path = tmp_path / "ckpt.pt"
    save_checkpoint(path, value=torch.tensor(1.0))
    real_fdopen = os.fdopen

    class Full:
        def __init__(self, f):
            self.f = f

        def __enter__(self):
            return self

        def __exit__(self, *a):
            self.f.close()

        def write(self, b):
            raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fdopen", lambda fd, mode: Full(real_fdopen(fd, mode)))
    with pytest.raises(CheckpointError, match="No space left.*previous checkpoint, if any, is intact"):
        save_checkpoint(path, value=torch.tensor(2.0))
    monkeypatch.undo()
    assert load_checkpoint(path)["value"] == 1.0 and os.listdir(tmp_path) == ["ckpt.pt"]


# ------------------------------------------------------------------------------------- no host syncs per step
def test_fit_loop_has_no_per_step_host_sync(monkeypatch):
    """Count the tensor -> Python conversions made from train.py's own code during a run."""
    import tinydiff.train as train_module

    counts = {"n": 0}
    here = train_module.__file__

    def counting(name):
        original = getattr(torch.Tensor, name)

        def wrapper(self, *args, **kwargs):
            if sys._getframe(1).f_code.co_filename == here:
                counts["n"] += 1
            return original(self, *args, **kwargs)

        return wrapper

    for name in ("item", "tolist", "__bool__", "__float__", "__int__", "cpu", "numpy"):
        monkeypatch.setattr(torch.Tensor, name, counting(name))
    model = torch.nn.Linear(2, 2)
    fit(model, lambda m, b: (m(b) ** 2).mean(), torch.randn(64, 2), steps=60, batch_size=8, check_every=30,
        progress_bar=False, device="cpu")
    assert counts["n"] <= 3 * (60 // 30 + 1), counts  # a few per check, none per step


def test_ema_update_is_one_foreach_call(monkeypatch):
    model = MLPDenoiser(hidden=8, depth=2, time_dim=8)
    ema = EMA(model, decay=0.9)
    calls = []
    real = torch._foreach_lerp_
    monkeypatch.setattr(torch, "_foreach_lerp_", lambda *a: (calls.append(len(a[0])), real(*a)))
    ema.update(model)
    assert calls == [len(list(model.parameters()))]


# ------------------------------------------------------------------------------------- kill -9 and processes
SCRIPT = textwrap.dedent('''
    import sys, torch, tinydiff as td
    torch.set_num_threads(1)
    ckpt, out, steps = sys.argv[1], sys.argv[2], int(sys.argv[3])
    sched = td.NoiseSchedule.linear(T=50)
    gm = td.data.GaussianMixture.ring(4, radius=1.5, std=0.2)
    torch.manual_seed(123)
    model = td.models.MLPDenoiser(hidden=32, depth=1, time_dim=16)
    res = td.train.fit(model, lambda m, b: td.ddpm.loss(m, b, sched), lambda n, g: gm.sample(n, g), steps=steps,
                       batch_size=32, ckpt=None if ckpt == "-" else ckpt, ckpt_every=20, progress_bar=False,
                       device="cpu")
    torch.save({"model": [p.detach() for p in res.model.parameters()],
                "ema": [p.detach() for p in res.ema.parameters()], "losses": res.losses}, out)
''')


def _spawn(tmp_path, ckpt, out, steps):
    script = tmp_path / "train_script.py"
    script.write_text(SCRIPT)
    env = dict(os.environ, OMP_NUM_THREADS="1", TINYDIFF_PROGRESS="0")
    return subprocess.Popen([sys.executable, str(script), str(ckpt), str(out), str(steps)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def test_kill_9_mid_run_then_resume_is_bitwise_identical(tmp_path):
    """A training subprocess is killed (SIGKILL) after its first checkpoint, possibly mid-write; a second process
    resumes it. Its weights, EMA and losses equal those of an uninterrupted run in this process, bit for bit (which
    also shows: same seed, same weights across processes)."""
    steps = 300
    ckpt = tmp_path / "run.pt"
    victim = _spawn(tmp_path, ckpt, tmp_path / "never.pt", steps)
    deadline = time.time() + 120
    while not ckpt.exists() and victim.poll() is None and time.time() < deadline:
        time.sleep(0.002)
    time.sleep(0.02)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    assert victim.returncode == -signal.SIGKILL, victim.stdout.read().decode()
    killed_at = load_checkpoint(ckpt)["step"]
    assert 0 < killed_at < steps  # it really was interrupted mid-run
    resumed = _spawn(tmp_path, ckpt, tmp_path / "resumed.pt", steps)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:  # the uninterrupted run, in this process, while the other one resumes
        torch.manual_seed(123)
        straight = fit(MLPDenoiser(hidden=32, depth=1, time_dim=16), ddpm_loss, data, steps=steps, batch_size=32,
                       progress_bar=False, device="cpu")
    finally:
        torch.set_num_threads(threads)
    assert resumed.wait(timeout=300) == 0, resumed.stdout.read().decode()
    b = torch.load(tmp_path / "resumed.pt")
    assert all(torch.equal(x, y) for x, y in zip(straight.model.parameters(), b["model"]))
    assert all(torch.equal(x, y) for x, y in zip(straight.ema.parameters(), b["ema"]))
    assert straight.losses == b["losses"] and len(b["losses"]) == steps
    assert not [f for f in os.listdir(tmp_path) if f.startswith(".tmp-")]  # a killed write leaves nothing behind


def test_a_checkpoint_whose_weights_gave_the_first_nan_is_replaced_by_the_one_before(tmp_path):
    """Losses 0..5 are finite, so the checkpoint at step 6 is written; the loss at step 6 (computed from exactly those
    weights) is NaN: the checkpoint named afterwards must be the one of step 3."""
    ckpt = tmp_path / "run.pt"

    def nan_at_6(m, batch):
        nan_at_6.calls += 1
        return ddpm_loss(m, batch) * (float("nan") if nan_at_6.calls == 7 else 1.0)

    nan_at_6.calls = 0
    with pytest.raises(TrainingDiverged, match=r"at step 6:.*noticed at step 9.*step 3, before the divergence"):
        tiny_fit(loss_fn=nan_at_6, steps=20, ckpt=ckpt, ckpt_every=3, check_every=9)
    assert load_checkpoint(ckpt)["step"] == 3
    nan_at_6.calls = 0
    with pytest.raises(TrainingDiverged, match=r"No checkpoint before the divergence") as info:
        tiny_fit(loss_fn=nan_at_6, steps=20, ckpt=tmp_path / "b.pt", ckpt_every=6, check_every=9)
    assert not (tmp_path / "b.pt").exists() and (tmp_path / "b.pt.diverged").exists()
    assert "resume" not in str(info.value)


@pytest.mark.parametrize("native_bf16", [True, False])
def test_amp_uses_the_dtype_the_device_supports_and_scales_fp16_gradients(monkeypatch, native_bf16):
    """fit's autocast dtype comes from profiles.autocast_dtype: bf16 where native, fp16 with a GradScaler otherwise
    (a T4). The CUDA decision is simulated on the CPU by replacing autocast_dtype."""
    import tinydiff.train as train_mod

    want = torch.bfloat16 if native_bf16 else torch.float16
    monkeypatch.setattr(train_mod, "autocast_dtype", lambda dev: want)
    seen, scaled = [], []
    real_scale = torch.amp.GradScaler.scale

    def spy(self, outputs):
        scaled.append(self.is_enabled())
        return real_scale(self, outputs)

    monkeypatch.setattr(torch.amp.GradScaler, "scale", spy)
    model = torch.nn.Linear(4, 4)
    x = torch.randn(64, 4, generator=torch.Generator().manual_seed(0))

    def loss_fn(m, batch):
        seen.append((torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu")))
        return (m(batch) - batch).pow(2).mean()

    out = fit(model, loss_fn, x, steps=5, batch_size=16, lr=1e-2, amp=True, device="cpu", progress_bar=False,
              ema_decay=None)
    assert all(on and dtype == want for on, dtype in seen)
    assert scaled and all(flag == (want == torch.float16) for flag in scaled)
    assert all(math.isfinite(v) for v in out.losses)
