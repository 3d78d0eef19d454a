"""Shipped checkpoints: each file has its recorded SHA-256, a changed file is refused with the command that remakes it,
and the shipped model is a trained one (its samples are far closer to the data than an untrained network's)."""

import shutil

import pytest
import torch

import tinydiff as td
from tinydiff import weights as W


@pytest.mark.parametrize("name", sorted(W.MANIFEST))
def test_every_shipped_file_has_its_recorded_hash_and_loads(name):
    assert W.sha256(W.verify(name)) == W.MANIFEST[name].sha256
    model = W.load(name)
    assert not model.training and all(p.device.type == "cpu" for p in model.parameters())
    assert W.path(name).stat().st_size < 5e6, "keep each shipped file small"


@pytest.fixture
def copy_of_the_folder(tmp_path, monkeypatch):
    folder = tmp_path / "checkpoints"
    shutil.copytree(W.FOLDER, folder)
    monkeypatch.setattr(W, "FOLDER", folder)
    return folder


def test_a_changed_file_is_refused_with_the_command_that_remakes_it(copy_of_the_folder):
    file = copy_of_the_folder / W.MANIFEST["00_tour_mlp"].file
    data = bytearray(file.read_bytes())
    data[len(data) // 2] ^= 1  # one bit
    file.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r"does not match its recorded SHA-256.*python3 -m tinydiff\.weights make 00_tour_mlp"):
        W.load("00_tour_mlp")


def test_a_git_lfs_pointer_and_a_missing_file_say_what_to_do(copy_of_the_folder):
    file = copy_of_the_folder / W.MANIFEST["00_tour_mlp"].file
    file.write_text("version https://git-lfs.github.com/spec/v1\noid sha256:0\nsize 1\n")
    with pytest.raises(ValueError, match="Git LFS pointer"):
        W.load("00_tour_mlp")
    file.unlink()
    with pytest.raises(FileNotFoundError, match="make 00_tour_mlp"):
        W.load("00_tour_mlp")
    with pytest.raises(ValueError, match="name must be a shipped checkpoint, one of 00_tour_mlp; got str 'nope'"):
        W.load("nope")


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="name must be a shipped checkpoint"):
        W.path(None)
    with pytest.raises(ValueError, match="device must be a torch.device"):
        W.load("00_tour_mlp", device=3.5)
    with pytest.raises(ValueError, match="file must be the path of an existing file"):
        W.sha256("/nonexistent/file.pt")
    with pytest.raises(ValueError, match="device must be a torch.device"):
        td.profiles.autocast_dtype("nonsense")
    with pytest.raises(TypeError, match="standard must be a dict"):
        td.profiles.choose(quick={"n": 1}, standard=None)


def test_the_shipped_lesson_00_mlp_is_trained():
    """Off-mode fraction of DDPM samples (data: ~1 %): the shipped MLP lands near the modes, an untrained one does not."""
    sched = td.NoiseSchedule.linear(T=1000)
    mixture = td.data.GaussianMixture.ring(k=8, radius=2.0, std=0.15)
    torch.manual_seed(0)
    off = {}
    for name, net in [("shipped", W.load("00_tour_mlp")), ("untrained", W.MANIFEST["00_tour_mlp"].build().eval())]:
        with torch.no_grad():
            x = td.ddpm.sample(net, (500, 2), sched, generator=torch.Generator().manual_seed(1), progress_bar=False)
        off[name] = td.metrics.off_mode_fraction(x, mixture)
    assert off["shipped"] < 0.25 < off["untrained"], off
