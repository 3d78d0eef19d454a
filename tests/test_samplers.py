"""Every sampler of the package, one signature: the device follows the model (torch's ``meta`` device stands in for
a GPU and proves the loops make no device->host transfer), ``callback(i, t, x)`` sees every state, the same seed
gives the same samples, and a denoiser's output is checked at the first step."""

import math

import pytest
import torch

import tinydiff as td
from tinydiff import ddim, ddpm, guidance, latent, score, sde

SCHED = td.NoiseSchedule.linear(40, beta_end=0.2)
SDE = sde.VPSDE()
TOK = td.data.shapes.Tokenizer()


class Net(torch.nn.Module):
    """A denoiser ``(x, t) -> (B, D)`` that works on any device (``t`` an integer step or a continuous time)."""

    def __init__(self, dim=2):
        super().__init__()
        self.lin = torch.nn.Linear(dim, dim)

    def forward(self, x, t):
        return 0.1 * self.lin(x) * (1 + t.to(x.dtype)[:, None] / 1000)


class Score(torch.nn.Module):
    """A score model ``x -> (B, D)`` (Langevin) or ``(x, sigma) -> (B, D)`` (annealed Langevin)."""

    def __init__(self, dim=2):
        super().__init__()
        self.lin = torch.nn.Linear(dim, dim)

    def forward(self, x, sigma=1.0):
        return -x + 0.01 * self.lin(x)


def _samplers(net, score_net, clf):
    """name -> (call(generator, callback), number of steps, the times the callback should see)."""
    B = 4
    x0 = torch.randn(B, 2, generator=torch.Generator().manual_seed(9))
    ts_ddim = ddim.timesteps(SCHED.T, 8).tolist() + [0]
    grid_sde = torch.linspace(1.0, 1e-3, 11, dtype=torch.float64).tolist()
    sig = [1.0, 0.5, 0.25]
    T = SCHED.T
    return {
        "ddpm.sample": (lambda g, cb: ddpm.sample(net, (B, 2), SCHED, generator=g, callback=cb), T,
                        list(range(T, -1, -1))),
        "ddpm.sample(clip_x0)": (lambda g, cb: ddpm.sample(net, (B, 2), SCHED, clip_x0=1.0, generator=g, callback=cb),
                                 T, list(range(T, -1, -1))),
        "ddim.sample(eta=0.5)": (lambda g, cb: ddim.sample(net, (B, 2), SCHED, 8, eta=0.5, generator=g, callback=cb),
                                 8, ts_ddim),
        "ddim.encode": (lambda g, cb: ddim.encode(net, x0, SCHED, 8, callback=cb), 8, ts_ddim[::-1]),
        "guidance.guided_ddpm_sample": (lambda g, cb: guidance.guided_ddpm_sample(
            net, (B, 2), SCHED, grad_fn=lambda x, t, y: guidance.classifier_grad(clf, x, t, y), y=1, gamma=2.0,
            generator=g, callback=cb), T, list(range(T, -1, -1))),
        "sde.simulate_forward": (lambda g, cb: sde.simulate_forward(net, x0, SDE, 10, sigma=0.5, generator=g,
                                                                    callback=cb),
                                 10, torch.linspace(0.0, 1.0, 11, dtype=torch.float64).tolist()),
        "sde.sample_reverse_family": (lambda g, cb: sde.sample_reverse_family(net, (B, 2), SDE, 10, sigma=0.5,
                                                                              generator=g, callback=cb), 10, grid_sde),
        "sde.sample_reverse_sde": (lambda g, cb: sde.sample_reverse_sde(net, (B, 2), SDE, 10, generator=g,
                                                                        callback=cb), 10, grid_sde),
        "sde.sample_ode_euler": (lambda g, cb: sde.sample_ode_euler(net, (B, 2), SDE, 10, generator=g, callback=cb),
                                 10, grid_sde),
        "sde.sample_ode_heun": (lambda g, cb: sde.sample_ode_heun(net, (B, 2), SDE, 10, generator=g, callback=cb),
                                10, grid_sde),
        "sde.sample_pc": (lambda g, cb: sde.sample_pc(net, (B, 2), SDE, 10, corrector_steps=2, generator=g,
                                                      callback=cb), 10, grid_sde),
        "score.langevin": (lambda g, cb: score.langevin(score_net, x0, 0.01, 10, generator=g, callback=cb), 10,
                           [0.01 * i for i in range(11)]),
        "score.annealed_langevin": (lambda g, cb: score.annealed_langevin(
            score_net, sig, x0, steps_per_level=3, eps=0.01, generator=g, callback=cb), 9,
            [1.0] + [s for s in sig for _ in range(3)]),
    }


def _cpu_models():
    torch.manual_seed(0)
    return Net(), Score(), td.models.MLPClassifier(dim=2, num_classes=2)


NAMES = list(_samplers(*_cpu_models()))


# ------------------------------------------------------------------------------ the device follows the model
@pytest.mark.parametrize("name", NAMES)
def test_every_sampler_runs_on_the_device_of_its_model_without_host_syncs(name):
    """A model on ``meta`` (no values, so .item(), .cpu(), bool(t), int(t), .tolist() of a loop tensor all fail):
    the sampler runs there unchanged and returns a ``meta`` tensor; so it follows the model's device, and it makes
    no device->host transfer in its loop (the first-step finiteness check is skipped on meta)."""
    net, score_net, clf = (m.to("meta") for m in _cpu_models())
    call, _, _ = _samplers(net, score_net, clf)[name]
    traj = td.utils.Trajectory()
    out = call(torch.Generator().manual_seed(0), traj)
    assert out.device.type == "meta" and tuple(out.shape) == (4, 2)
    assert all(x.device.type == "meta" for x in traj)


class _Text(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = torch.nn.Embedding(TOK.vocab_size, 8)

    def forward(self, ids, mask):
        return self.emb(ids) * mask[..., None]


class _UNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(4, 4, 1)

    def forward(self, z, t, context, context_mask):
        return self.conv(z) + context.mean((1, 2))[:, None, None, None]


class _Caption(torch.nn.Module):
    """The two parts latent.eps_fn uses (text, unet). td.models.TextEncoder checks its ids with int() once when
    the captions are encoded (outside the loop), which meta cannot do, so a small stand-in is used here."""

    def __init__(self):
        super().__init__()
        self.text, self.unet = _Text(), _UNet()


def test_latent_sample_and_the_issue_example_run_on_meta():
    torch.manual_seed(0)
    model = _Caption().to("meta")
    ids, mask = TOK.encode(["a red circle top left", "a blue square bottom right"])
    z = latent.sample(model, (2, 4, 4, 4), SCHED, 5, autoencoder=None, ids=ids, mask=mask, gamma=2.0,
                      null=TOK.encode(""), generator=torch.Generator().manual_seed(0))
    assert z.device.type == "meta" and tuple(z.shape) == (2, 4, 4, 4)
    # the issue's failing call: a model on meta with the CPU default raised "not on the expected device cpu"
    net = Net().to("meta")
    assert ddim.sample(net, (4, 2), SCHED, 10).device.type == "meta"
    assert ddpm.sample(net, (4, 2), SCHED).device.type == "meta"


def test_the_meta_check_catches_a_host_sync():
    """The meta run can fail: the same loop with an .item() per step raises (so the test above proves something)."""
    net = Net().to("meta")
    with pytest.raises((RuntimeError, NotImplementedError)):
        ddpm.sample(lambda x, t: net(x, t) * (1 + 0 * net(x, t).sum().item()), (4, 2), SCHED)


def test_device_of_finds_models_and_keeps_oracles_on_the_cpu(monkeypatch):
    monkeypatch.setenv("TINYDIFF_DEVICE", "meta")  # the default where nothing else is known
    net = Net().to("meta")
    cpu_net = Net()
    gm = td.data.GaussianMixture.ring(4)
    assert td.utils.device_of(net) == torch.device("meta")
    assert td.utils.device_of(lambda x, t: cpu_net(x, t)) == torch.device("cpu")  # a global named in a lambda
    assert td.utils.device_of(guidance.cfg_eps_fn_from(net, gm.eps_fn(SCHED), 1.0)) == torch.device("meta")
    assert td.utils.device_of(gm.eps_fn(SCHED)) == torch.device("cpu")  # the oracle holds CPU tables
    assert td.utils.device_of(lambda x, t: x) == torch.device("meta")  # nothing known: td.device()
    assert td.utils.device_of(net, torch.zeros(1)) == torch.device("cpu")  # x_T wins


# ------------------------------------------------------------------------------ callback and Trajectory
@pytest.mark.parametrize("name", NAMES)
def test_callback_sees_the_start_every_step_and_the_result(name):
    """``callback(i, t, x)``: i = 0 with the start time and the start point, then i = 1..n_steps with the time
    reached, and the last state is the sampler's return value."""
    net, score_net, clf = _cpu_models()
    call, n, times = _samplers(net, score_net, clf)[name]
    seen = []
    traj = td.utils.Trajectory()
    out = call(torch.Generator().manual_seed(3), lambda i, t, x: (seen.append((i, t)), traj(i, t, x)))
    assert [i for i, _ in seen] == list(range(n + 1))
    assert traj.steps == list(range(n + 1)) and len(traj) == n + 1
    torch.testing.assert_close(torch.tensor(traj.ts, dtype=torch.float64), torch.tensor(times, dtype=torch.float64),
                               rtol=0, atol=1e-12)
    assert torch.equal(traj[-1], out) and traj.stack().shape == (n + 1, 4, 2)
    # the start point: the drawn x_T (first draw of the generator) or the given data
    if name in ("ddim.encode", "sde.simulate_forward", "score.langevin", "score.annealed_langevin"):
        assert torch.equal(traj[0], torch.randn(4, 2, generator=torch.Generator().manual_seed(9)))
    else:
        assert torch.equal(traj[0], torch.randn(4, 2, generator=torch.Generator().manual_seed(3)))
    every = td.utils.Trajectory(every=3)
    call(torch.Generator().manual_seed(3), every)
    assert every.steps == list(range(0, n + 1, 3)) and all(torch.equal(a, traj[i]) for a, i in zip(every, every.steps))


# ------------------------------------------------------------------------------ same seed, same samples
@pytest.mark.parametrize("name", NAMES)
def test_same_seed_same_samples_other_seed_other_samples(name):
    net, score_net, clf = _cpu_models()
    call, _, _ = _samplers(net, score_net, clf)[name]
    a, b = call(torch.Generator().manual_seed(5), None), call(torch.Generator().manual_seed(5), None)
    assert torch.equal(a, b)
    c = call(torch.Generator().manual_seed(6), None)
    if name in ("ddim.encode", "sde.sample_ode_euler", "sde.sample_ode_heun"):
        assert torch.equal(a, c) if name == "ddim.encode" else not torch.equal(a, c)  # ODEs: only x_T is drawn
    else:
        assert not torch.equal(a, c)


def test_noise_is_drawn_on_the_cpu_in_the_documented_order():
    """DDPM: x_T first, then one draw per step with t > 1, each of x's shape (so it is the same on every device)."""
    net = Net()
    g = torch.Generator().manual_seed(4)
    x = torch.randn(4, 2, generator=g)
    coefs = ddpm.sample_coefs(SCHED)
    for i, (a, b, s) in enumerate(coefs):
        t = SCHED.T - i
        x = a * x - b * net(x, torch.full((4,), t))
        if t > 1:
            x = x + s * torch.randn(4, 2, generator=g)
    torch.testing.assert_close(ddpm.sample(net, (4, 2), SCHED, generator=torch.Generator().manual_seed(4)), x,
                               rtol=1e-6, atol=1e-6)


# ------------------------------------------------------------------------------ the first-step output check
BAD_OUTPUTS = {
    "None": (lambda x: None, TypeError, "forget to `return`"),
    "wrong shape": (lambda x: x[:, :1], ValueError, r"returned shape \(4, 1\)"),
    "wrong dtype": (lambda x: x.double(), ValueError, "dtype"),
    "integer": (lambda x: x.long(), ValueError, "floating"),
    "NaN": (lambda x: x * math.nan, ValueError, "NaN"),
    "numpy": (lambda x: x.numpy(), TypeError, "numpy"),
}


@pytest.mark.parametrize("bad", list(BAD_OUTPUTS))
@pytest.mark.parametrize("name", NAMES)
def test_a_bad_denoiser_output_is_refused_at_the_first_step(name, bad):
    make, err, match = BAD_OUTPUTS[bad]
    calls = []

    class Bad(torch.nn.Module):
        def forward(self, x, *args):
            calls.append(1)
            return make(x)

    bad_net = Bad()
    _, score_net, clf = _cpu_models()
    if name.startswith("score."):
        call, _, _ = _samplers(None, bad_net, clf)[name]
    else:
        call, _, _ = _samplers(bad_net, score_net, clf)[name]
    with pytest.raises(err, match=match):
        call(torch.Generator().manual_seed(0), None)
    assert len(calls) <= 2  # refused at the first evaluation, not after the whole loop


def test_the_issue_examples_raise_clear_errors():
    with pytest.raises(ValueError, match=r"score_fn returned shape \(4, 1\)"):
        sde.sample_ode_euler(lambda x, t: -x[:, :1], sde.VPSDE(), (4, 2), n_steps=10)
    with pytest.raises(TypeError, match="forget to `return`"):
        ddim.sample(lambda x, t: None, (4, 2), SCHED, 5)
    with pytest.raises(TypeError, match="noise schedule"):
        ddpm.sample(lambda x, t: x, (4, 2), 1000)
    with pytest.raises(ValueError, match=r"score_fn returned shape"):
        sde.langevin_correct(lambda x, t: x[:, :1], SDE, torch.zeros(4, 2), 0.5)
    with pytest.raises(TypeError, match="CPU torch.Generator|torch.Generator"):
        ddpm.sample(lambda x, t: x, (4, 2), SCHED, generator=0)
    with pytest.raises(TypeError, match="callback"):
        ddim.sample(lambda x, t: x, (4, 2), SCHED, 5, callback=3)


def test_scipy_ode_solver_takes_the_signature_and_checks_the_score():
    """sample_ode_scipy runs on the host (scipy): callback at the start (t_max) and at the end (t_min) only."""
    sf = sde.mixture_score_fn(td.data.GaussianMixture.ring(4), SDE)
    traj = td.utils.Trajectory()
    out = sde.sample_ode_scipy(sf, (8, 2), SDE, generator=torch.Generator().manual_seed(1), callback=traj,
                               rtol=1e-4, atol=1e-4)
    assert traj.steps == [0, 1] and traj.ts == [1.0, 1e-3] and torch.equal(traj[-1], out)
    assert torch.equal(traj[0], torch.randn(8, 2, generator=torch.Generator().manual_seed(1)))
    with pytest.raises(ValueError, match=r"score_fn returned shape \(8, 1\)"):
        sde.sample_ode_scipy(lambda x, t: x[:, :1], (8, 2), SDE)
    with pytest.raises(ValueError, match=r"score_fn returned shape \(3, 1\)"):
        sde.log_likelihood(torch.zeros(3, 2), lambda x, t: x[:, :1], SDE)


def test_bad_input_of_the_issue_gets_clear_errors_outside_the_samplers_too():
    x = torch.zeros(2, 2)
    with pytest.raises(TypeError, match="noise schedule"):
        ddpm.q_sample(x, 1, x, 1000)
    with pytest.raises(TypeError, match="noise schedule"):
        ddim.step(x, x, 5, 4, 1000)
    with pytest.raises(ValueError, match="at least 1 sample"):
        ddpm.loss(lambda x, t: x, torch.zeros(0, 2), SCHED)
    with pytest.raises(ValueError, match="at least 1 sample"):
        sde.dsm_loss(lambda x, t: x, torch.zeros(0, 2), SDE)
    with pytest.raises(ValueError, match="finite"):
        score.component_fractions(td.data.GaussianMixture.ring(3), torch.tensor([[math.nan, 0.0]]))
    with pytest.raises(ValueError, match="continuous times"):
        SDE.marginal(True)
    with pytest.raises(ValueError, match=r"t must hold integer timesteps in 0\.\.40; got None"):
        ddpm.q_sample(x, None, x, SCHED)


def test_float16_stays_finite_at_t_1():
    """The coefficients are computed in float64 and cast (1 - alpha_bar_1 = 1e-4 rounded to 0 after a float16 cast
    and p_mean divided by it)."""
    sched = td.NoiseSchedule.linear(1000)
    x, e = torch.randn(4, 2), torch.randn(4, 2)
    for got, want in [(ddpm.p_mean(x.half(), e.half(), 1, sched), ddpm.p_mean(x.double(), e.double(), 1, sched)),
                      (ddpm.q_sample(x.half(), 1, e.half(), sched), ddpm.q_sample(x.double(), 1, e.double(), sched))]:
        assert got.dtype == torch.float16 and torch.isfinite(got).all()
        torch.testing.assert_close(got.double(), want, rtol=2e-3, atol=2e-3)


def test_public_steps_still_validate():
    x = torch.zeros(4, 2)
    with pytest.raises(ValueError, match=r"t must lie in 1\.\.40"):
        ddpm.step(x, x, 41, SCHED)
    with pytest.raises(ValueError, match="integer timesteps"):
        ddim.step(x, x, 1.5, 0, SCHED)
    with pytest.raises(ValueError, match="shape mismatch"):
        ddim.invert_step(x, torch.zeros(4, 3), 0, 5, SCHED)


def test_progress_bars_are_on_by_default_and_silenced_by_the_environment(monkeypatch, capsys):
    monkeypatch.setenv("TINYDIFF_PROGRESS", "1")
    ddim.sample(lambda x, t: 0 * x, (2, 2), SCHED, 5)
    assert "DDIM sampling" in capsys.readouterr().err
    monkeypatch.setenv("TINYDIFF_PROGRESS", "0")
    ddim.sample(lambda x, t: 0 * x, (2, 2), SCHED, 5)
    assert capsys.readouterr().err == ""
