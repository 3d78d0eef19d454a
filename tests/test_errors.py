"""The samplers' own errors, one sampler per family (ddpm, ddim, sde, guidance, latent, score, solvers, flow): what
the user's callable returns is checked at the first step (None, wrong shape, dtype, NaN, device), and the arguments
before the loop (n_steps, x_T's shape, generator, callback, device). Each error names what is wrong."""

import math

import pytest
import torch

import tinydiff as td
from tinydiff import ddim, ddpm, flow, guidance, latent, score, sde, solvers

SCHED = td.NoiseSchedule.linear(20, beta_end=0.2)
B, D = 4, 2
IDS = torch.tensor([[1, 2, 0, 0]] * B)
MASK = torch.tensor([[True, True, False, False]] * B)


def _caption_unet(out):
    """A tiny caption UNet whose UNet's output goes through ``out`` (latent.sample calls ``model.unet``)."""
    torch.manual_seed(0)
    m = latent.caption_unet(vocab_size=10, latent_channels=1, base_channels=8, channel_mults=(1,), attn_levels=(0,),
                            text_dim=8, text_layers=1, heads=2, max_len=4)
    forward = m.unet.forward
    m.unet.forward = lambda *a, **k: out(forward(*a, **k))
    return m


def _families(out):
    """family -> (the name its errors give the callable, call(**kwargs)); every callable's output goes through
    ``out``; ``calls`` counts the evaluations."""
    calls = []

    def f(x, *args):
        calls.append(1)
        return out(0.1 * x)

    def counted(y):
        calls.append(1)
        return out(y)

    def steps(k, default):
        return k.pop("n_steps", default)

    fams = {
        "ddpm": ("eps_fn", lambda **k: ddpm.sample(f, (B, D), SCHED, progress_bar=False, **k)),
        "ddim": ("eps_fn", lambda **k: ddim.sample(f, (B, D), SCHED, steps(k, 5), progress_bar=False, **k)),
        "sde": ("score_fn", lambda **k: sde.sample_ode_euler(f, (B, D), sde.VPSDE(), steps(k, 5), progress_bar=False,
                                                             **k)),
        "guidance": ("eps_fn", lambda **k: guidance.guided_ddpm_sample(
            f, (B, D), SCHED, grad_fn=lambda x, t, y: torch.zeros_like(x), y=1, gamma=1.0, progress_bar=False, **k)),
        "latent": ("eps_fn", lambda **k: latent.sample(
            _caption_unet(counted), (B, 1, 4, 4), SCHED, steps(k, 2), autoencoder=td.models.KLAutoencoder(1, 1, 2, 8),
            ids=IDS, mask=MASK, progress_bar=False, **k)),
        "score": ("score_fn", lambda **k: score.langevin(f, k.pop("x_T", torch.zeros(B, D)), 0.01, steps(k, 3),
                                                         progress_bar=False, **k)),
        "solvers": ("Denoiser's fn|x0_fn", lambda **k: solvers.sample(
            td.denoisers.Denoiser(f, td.denoisers.DiscreteVP(SCHED)), (B, D), steps(k, 3), progress_bar=False, **k)),
        "flow": ("velocity_fn", lambda **k: flow.sample(f, (B, D), steps(k, 3), progress_bar=False, **k)),
    }
    return fams, calls


FAMILIES = list(_families(lambda y: y)[0])

BAD_OUTPUTS = {  # what the callable returns -> (error, message after the callable's name)
    "None": (lambda y: None, TypeError, r"returned None: did it forget to `return`"),
    "wrong shape": (lambda y: y[..., :1], ValueError, r"returned shape \(4, (1|1, 4, 1)\); it must return the shape"),
    "float64": (lambda y: y.double(), ValueError, r"returned dtype torch.float64 for input x of dtype torch.float32"),
    "NaN": (lambda y: y * math.nan, ValueError, r"returned NaN or inf for finite input \(at the first sampler step\)"),
    "other device": (lambda y: torch.empty(y.shape, dtype=y.dtype, device="meta"), ValueError,
                     r"returned a tensor on meta for input x on cpu"),
}


@pytest.mark.parametrize("bad", list(BAD_OUTPUTS))
@pytest.mark.parametrize("family", FAMILIES)
def test_a_bad_callable_output_is_refused_at_the_first_step_with_its_name(family, bad):
    make, err, match = BAD_OUTPUTS[bad]
    fams, calls = _families(make)
    name, call = fams[family]
    with pytest.raises(err, match=rf"({name}) {match}"):
        call(generator=torch.Generator().manual_seed(0))
    assert 1 <= len(calls) <= 2  # refused at the first evaluation, not after the loop


BAD_ARGUMENTS = {  # keyword -> (value, error, message); x_T is the start of the chain (x for Langevin)
    "n_steps=-1": ("n_steps", -1, ValueError, r"n_steps.* must (lie in|be >=)"),
    "n_steps=2.5": ("n_steps", 2.5, ValueError, r"n_steps.* must be an int; got float 2.5"),
    "x_T shape": ("x_T", None, ValueError, r"x_T has shape \(4, (3|1, 4, 5)\) but shape=\(4, (2|1, 4, 4)\) was requested"),
    "generator=3": ("generator", 3, TypeError, r"generator must be a torch.Generator or None; got int 3"),
    "callback='x'": ("callback", "x", TypeError, r"callback must be a callable callback\(i, t, x\) or None"),
    "device='nonsense'": ("device", "nonsense", ValueError, r"device must be a .*got str 'nonsense'"),
}
NO_N_STEPS = {"ddpm", "guidance"}  # they run all T steps of the schedule


@pytest.mark.parametrize("arg", list(BAD_ARGUMENTS))
@pytest.mark.parametrize("family", FAMILIES)
def test_bad_sampler_arguments_are_refused_before_the_loop(family, arg):
    key, value, err, match = BAD_ARGUMENTS[arg]
    if key == "n_steps" and family in NO_N_STEPS:
        pytest.skip(f"{family} takes no n_steps")
    if key == "x_T" and family == "score":
        pytest.skip("Langevin starts from x, whose shape defines the samples")
    if key == "x_T":
        value = torch.zeros(B, 1, 4, 5) if family == "latent" else torch.zeros(B, D + 1)
    fams, calls = _families(lambda y: y)
    kwargs = {key: value}
    if key != "generator":
        kwargs["generator"] = torch.Generator().manual_seed(0)
    with pytest.raises(err, match=match):
        fams[family][1](**kwargs)
    assert not calls  # nothing was evaluated


@pytest.mark.parametrize("family", FAMILIES)
def test_every_family_runs_with_the_same_plausible_arguments(family):
    """The other side of the checks above: the same calls with good values return finite samples."""
    fams, calls = _families(lambda y: y)
    out = fams[family][1](generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(out).all() and calls


def test_a_denoiser_output_of_another_shape_no_longer_broadcasts():
    """Denoiser.predict checks fn's output before converting (a (B, 1) prediction used to broadcast into (B, D))."""
    den = td.denoisers.Denoiser(lambda x, t: x[:, :1], td.denoisers.DiscreteVP(SCHED))
    with pytest.raises(ValueError, match=r"the Denoiser's fn returned shape \(4, 1\)"):
        den.x0(torch.zeros(B, D), 5)
    with pytest.raises(TypeError, match="forget to `return`"):
        td.denoisers.Denoiser(lambda x, t: None, td.denoisers.LinearPath(), "velocity").velocity(torch.zeros(B, D), 0.5)


def test_a_mean_that_does_not_broadcast_against_x_is_named_in_both_densities():
    """One check (validation.broadcasts) behind ddpm.gaussian_log_prob and score.gaussian_score; a (1, D) mean still
    broadcasts (notebook 02 passes one)."""
    x = torch.zeros(4, 2)
    for fn in (td.ddpm.gaussian_log_prob, td.score.gaussian_score):
        with pytest.raises(ValueError, match=r"mean must broadcast against x \(4, 2\); got shape \(3, 2\)"):
            fn(x, torch.zeros(3, 2), 1.0)
        assert fn(x, torch.zeros(1, 2), 1.0).shape[0] == 4
    with pytest.raises(TypeError, match="sigma must be a number, an array or a tensor of real numbers; got None"):
        td.validation.reals("sigma", None)
    with pytest.raises(ValueError, match="sigma must be real"):
        td.validation.reals("sigma", torch.tensor([1j]))
