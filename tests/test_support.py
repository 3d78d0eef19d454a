"""Profiles, device choice, metrics, check cells and the exercise checker."""

import pytest
import scipy.linalg
import torch

import tinydiff as td
from tinydiff import metrics, profiles
from tinydiff.exercises import check
from tinydiff.utils import as_timesteps, expand_to


def test_profile_default_and_override(monkeypatch):
    monkeypatch.delenv("TINYDIFF_PROFILE", raising=False)
    assert profiles.current() == ("full" if torch.cuda.is_available() else "standard")
    monkeypatch.setenv("TINYDIFF_PROFILE", "quick")
    cfg = profiles.choose(quick=dict(n=1), standard=dict(n=2), full=dict(n=3))
    assert cfg.n == 1 and cfg.profile == "quick"
    assert profiles.choose(quick=dict(n=1), standard=dict(n=2), profile="full").n == 2  # full defaults to standard
    monkeypatch.setenv("TINYDIFF_PROFILE", "huge")
    with pytest.raises(ValueError, match="quick, standard, full"):
        profiles.current()
    with pytest.raises(ValueError, match="same settings"):
        profiles.choose(quick=dict(n=1), standard=dict(m=2), profile="quick")


def test_device_override(monkeypatch):
    monkeypatch.setenv("TINYDIFF_DEVICE", "cpu")
    assert td.device() == torch.device("cpu")


def test_timestep_and_shape_helpers():
    assert as_timesteps(3, 4, T=10).tolist() == [3, 3, 3, 3]
    with pytest.raises(ValueError, match=r"0\.\.10"):
        as_timesteps(torch.tensor([1, 11]), 2, T=10)
    with pytest.raises(ValueError, match="integer"):
        as_timesteps(torch.tensor([0.5, 1.0]), 2, T=10)
    with pytest.raises(ValueError, match=r"shape \(3,\)"):
        as_timesteps(torch.tensor([1, 2]), 3, T=10)
    assert expand_to(torch.ones(4, dtype=torch.float64), torch.zeros(4, 3, 2, 2)).shape == (4, 1, 1, 1)


def test_sliced_wasserstein_of_a_shift():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4000, 4, generator=g)
    m = torch.tensor([1.0, -1.0, 0.5, 0.0])
    # projecting a shift m on a random unit direction gives E[(theta.m)^2] = |m|^2 / D
    sw = metrics.sliced_wasserstein(x, x + m, n_projections=500, generator=g)
    assert abs(sw - m.norm().item() / 2) < 0.05
    assert metrics.sliced_wasserstein(x, x.clone(), generator=g) < 1e-9
    y = torch.randn(2500, 4, generator=g)
    assert metrics.sliced_wasserstein(x, y, generator=g) < 0.08  # unequal sizes, same law
    assert abs(metrics.sliced_wasserstein(x, y + m, n_projections=500, generator=g) - m.norm().item() / 2) < 0.08


def test_frechet_distance_against_scipy():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(500, 3, generator=g, dtype=torch.float64) @ torch.randn(3, 3, generator=g, dtype=torch.float64)
    y = torch.randn(400, 3, generator=g, dtype=torch.float64) * 2 + 1
    cx, cy = torch.cov(x.T).numpy(), torch.cov(y.T).numpy()
    want = ((x.mean(0) - y.mean(0)) ** 2).sum().item() + (cx + cy - 2 * scipy.linalg.sqrtm(cx @ cy).real).trace()
    assert abs(metrics.frechet_distance(x, y) - want) < 1e-6


def test_mmd_separates_distributions():
    g = torch.Generator().manual_seed(2)
    x, y = torch.randn(400, 2, generator=g), torch.randn(400, 2, generator=g)
    assert abs(metrics.mmd_rbf(x, y)) < 0.01
    assert metrics.mmd_rbf(x, y + 1.0) > 0.1


def test_check_cells_pass_and_fail_loudly(capsys):
    td.check("two equal numbers", torch.tensor([1.0, 2.0]), torch.tensor([1.0, 2.0 + 1e-9]))
    assert capsys.readouterr().out == "✓ two equal numbers\n"
    with pytest.raises(AssertionError, match="max abs error"):
        td.check("not equal", torch.tensor([1.0]), torch.tensor([1.1]))
    with pytest.raises(AssertionError, match="shapes differ"):
        td.check("shapes", torch.zeros(2), torch.zeros(3))
    td.check_less("small", 0.1, 0.2)
    with pytest.raises(AssertionError, match="not below"):
        td.check_less("big", 0.3, 0.2)


def test_exercise_checker_verdicts(capsys):
    cases = [(torch.tensor([1.0, 4.0]),), (torch.tensor([9.0]),)]

    def todo(x):
        raise NotImplementedError

    assert check(todo, torch.sqrt, cases) is None
    assert "[not attempted]" in capsys.readouterr().out
    assert check(lambda x: x**0.5, torch.sqrt, cases) is True
    assert "[correct]" in capsys.readouterr().out
    assert check(lambda x: x / 2, torch.sqrt, cases, mistakes={"halved instead of a root": lambda x: x / 2}) is False
    out = capsys.readouterr().out
    assert "[wrong]" in out and "hint: halved instead of a root" in out
    assert check(lambda x: x.foo(), torch.sqrt, cases) is False
    assert "[error]" in capsys.readouterr().out


def test_image_grid_layout_and_range():
    from tinydiff.plotting import image_grid

    x = torch.stack([torch.full((3, 4, 4), v) for v in (-1.0, 0.0, 1.0)])
    grid = image_grid(x, nrow=2, pad=1)
    assert grid.shape == (2 * 5 + 1, 2 * 5 + 1, 3)
    assert grid[1, 1, 0] == 0.0 and grid[1, 6, 0] == 0.5 and grid[6, 1, 0] == 1.0  # [-1, 1] -> [0, 1], row-major
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        image_grid(torch.zeros(3, 4, 4))


def test_plots_draw_without_a_display():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from tinydiff import plotting

    gm = td.data.GaussianMixture.ring(4)
    pts = gm.sample(50)
    plotting.scatter2d(pts)
    plotting.density2d(gm.log_prob, n=20)
    plotting.vector_field(lambda x: gm.score(x), n=5)
    plotting.trajectories2d([pts, pts * 0.5], n_show=5)
    plotting.show_images(torch.zeros(4, 1, 8, 8), nrow=2, title="zeros")
    fig = plotting.animate_frames([pts, pts * 0.5, pts * 0.1], lambda f, ax: plotting.scatter2d(f, ax), animate=False)
    assert len(fig.axes) == 3  # the static fallback: a strip of frames
    plt.close("all")


def test_animate_frames_static_strip_wraps_rows_and_uses_labels():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from tinydiff import plotting

    frames = [torch.randn(20, 2) for _ in range(11)]
    fig = plotting.animate_frames(frames, lambda fr, ax: plotting.scatter2d(fr, ax=ax), n_static=11, animate=False,
                                  labels=[f"t = {1000 - 100 * i}" for i in range(11)])
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert titles[0] == "t = 1000" and titles[-1] == "t = 0" and len(titles) == 11
    assert len(fig.axes) == 12 and fig.get_size_inches()[0] < 15  # 2 rows of 6: readable at notebook width
    with pytest.raises(ValueError, match="one entry per frame"):
        plotting.animate_frames(frames, lambda fr, ax: None, labels=["a"], animate=False)
    plt.close("all")


def test_density2d_colorbar_and_shared_scale():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from tinydiff import plotting

    gm = td.data.GaussianMixture.ring(4)
    ax = plotting.density2d(gm.log_prob, n=20, colorbar=True, vmin=0, vmax=1, label="probability")
    assert len(ax.figure.axes) == 2 and ax.images[0].get_clim() == (0, 1)
    assert ax.figure.axes[1].get_ylabel() == "probability"
    plt.close("all")


def test_check_refuses_what_is_no_number_by_name():
    with pytest.raises(td.checks.CheckFailed):  # a failing check is still an AssertionError
        td.check("nan", float("nan"), 1.0)
    with pytest.raises(TypeError, match="actual must be a number, an array or a tensor"):
        td.check("none", None, 1.0)
    with pytest.raises(ValueError, match="expected must be real"):
        td.check("complex", 1.0, 1j)
    with pytest.raises(ValueError, match="atol must be >= 0"):
        td.check("negative atol", 1.0, 1.0, atol=-1.0)
    with pytest.raises(ValueError, match="rtol must be a finite number"):
        td.check("nan rtol", 1.0, 1.0, rtol=float("nan"))
    with pytest.raises(TypeError, match="bound must be a real number"):
        td.check_less("bool bound", 0.5, True)
    with pytest.raises(ValueError, match="bound must be a number, not NaN"):
        td.check_less("nan bound", 0.5, float("nan"))
    with pytest.raises(td.checks.CheckFailed, match="not below"):
        td.check_less("nan value", float("nan"), 1.0)


def test_plotting_refuses_bad_arguments_by_name():
    from tinydiff import plotting

    with pytest.raises(ValueError, match="x must be images of shape"):
        plotting.image_grid(torch.zeros(8, 8))
    with pytest.raises(ValueError, match="pad must lie in 0"):
        plotting.image_grid(torch.zeros(2, 1, 4, 4), pad=-1)
    with pytest.raises(TypeError, match="ax must be a matplotlib Axes"):
        plotting.scatter2d(torch.zeros(4, 2), ax="nonsense")
    with pytest.raises(TypeError, match="log_prob_fn returned None"):
        plotting.density2d(lambda p: None, n=4)
    with pytest.raises(ValueError, match="field_fn must return shape"):
        plotting.vector_field(lambda p: p[:, :1], n=4)
    with pytest.raises(ValueError, match="traj must be a non-empty sequence"):
        plotting.trajectories2d([])
