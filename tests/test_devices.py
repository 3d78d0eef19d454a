"""Apple's MPS has no float64: a sampler that makes a float64 tensor on its model's device fails there ("Cannot convert
a MPS Tensor to float64 dtype"). With no Mac here, torch's ``meta`` device stands in: every sampler of the package
runs a meta model while a dispatch mode watches every op, and no op may produce a float64 tensor off the CPU. (The
float64 schedule tables live on the CPU; the loops read them as Python numbers or as cached tables in the model's
dtype.)"""

import pytest
import torch
from test_samplers import NAMES, _cpu_models, _samplers
from torch.utils._python_dispatch import TorchDispatchMode


class Float64OffCPU(TorchDispatchMode):
    """Records every op whose output is a float64 (or complex128) tensor on a device other than the CPU."""

    def __init__(self):
        super().__init__()
        self.seen = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor) and t.device.type != "cpu" and t.dtype in (torch.float64, torch.complex128):
                self.seen.append(str(func))
        return out


@pytest.mark.parametrize("name", NAMES)
def test_no_sampler_makes_a_float64_tensor_on_its_models_device(name):
    net, score_net, clf = (m.to("meta") for m in _cpu_models())
    call, _, _ = _samplers(net, score_net, clf)[name]
    with Float64OffCPU() as watch:
        call(torch.Generator().manual_seed(0), None)
    assert not watch.seen, f"{name} made float64 tensors on the model's device: {sorted(set(watch.seen))[:5]}"


def test_the_watch_can_fail():
    with Float64OffCPU() as watch:
        torch.zeros(3, device="meta").double()
    assert watch.seen


# ------------------------------------------------------------------ single steps and losses, meta playing MPS
def _single_step_calls():
    import tinydiff as td
    from tinydiff import ddim, ddpm

    sched = td.NoiseSchedule.linear(40, beta_end=0.2)
    x = torch.zeros(4, 2, device="meta")
    t = torch.full((4,), 20, device="meta")
    tp = torch.full((4,), 10, device="meta")
    net = _cpu_models()[0].to("meta")
    return {
        "ddpm.q_sample": lambda: ddpm.q_sample(x, t, x, sched),
        "ddpm.q_posterior": lambda: ddpm.q_posterior(x, x, t, sched),
        "ddpm.p_mean": lambda: ddpm.p_mean(x, x, t, sched),
        "ddpm.step": lambda: ddpm.step(x, x, t, sched, noise=x),
        "ddpm.loss": lambda: ddpm.loss(net, x, sched, t=t, eps=x),
        "ddim.step": lambda: ddim.step(x, x, t, tp, sched, eta=0.5, noise=x),
        "ddim.sigma": lambda: ddim.sigma(t, tp, sched, 0.5),
        "ddim.kappa": lambda: ddim.kappa(t, tp, 0.1, sched),
        "ddim.family_sample": lambda: ddim.family_sample(x, x, t, tp, 0.1, sched, x),
        "ddim.invert_step": lambda: ddim.invert_step(x, x, tp, t, sched),
    }


@pytest.mark.parametrize("name", list(_single_step_calls()))
def test_single_steps_make_no_float64_tensor_on_a_device_without_it(name, monkeypatch):
    """With meta declared a device without float64 (as MPS is), the per-step functions use float32 tables there."""
    import tinydiff as td

    monkeypatch.setattr(td.utils, "NO_FLOAT64", {"mps", "meta"})
    call = _single_step_calls()[name]
    with Float64OffCPU() as watch:
        call()
    assert not watch.seen, f"{name} made float64 tensors on a device without float64: {sorted(set(watch.seen))[:5]}"
