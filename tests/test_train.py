"""The training loop: resume equality, NaN guard, atomic checkpoints, safe loading, EMA."""

import os

import pytest
import torch

import tinydiff as td
from tinydiff.models import MLPDenoiser
from tinydiff.train import EMA, CheckpointMismatch, TrainingDiverged, fit, load_checkpoint, save_checkpoint

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
    torch.save({"payload": NotATensor()}, path)
    with pytest.raises(Exception, match="(?i)weights_only|unpickl"):
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
