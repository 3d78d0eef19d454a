"""tinydiff side by side with diffusers (and with a minimal hand-written loop), measured interleaved in one run.

    .venv/bin/python benchmarks/bench.py                 # all parts, prints a Markdown table
    .venv/bin/python benchmarks/bench.py --write         # also writes benchmarks/results.md and the README block

What is compared (ratios are the result; absolute times on a shared machine are not):
- sampler: the cost per step of td.ddim.sample / td.ddpm.sample with a trivial denoiser (so only the sampler's own
  work is timed) vs diffusers' DDIMScheduler / DDPMScheduler loop and a minimal loop of the same update;
- unet: forward and one training step of td.models.UNet vs diffusers' UNet2DModel configured with the same
  architecture (parameter counts printed side by side);
- oracle: one exact eps evaluation of the Gaussian mixture (what a DDPM step on the oracle costs) vs the same
  quantity from torch.distributions + autograd, in 2-D (the notebooks' ring) and at D = 64.
Every timing is the median over interleaved repeats (the candidates take turns), so a load change on the machine
affects all of them alike. This is not a test: speed targets live here, never in the test suite.
"""

from __future__ import annotations

import argparse
import datetime
import math
import platform
import statistics
import time
from pathlib import Path

import torch

import tinydiff as td

ROOT = Path(__file__).resolve().parent.parent


def interleaved(fns: dict, reps: int, inner: int = 1) -> dict:
    """Median seconds per call of each function, the functions taking turns ``reps`` times (after one warm-up)."""
    for f in fns.values():
        f()
    times = {k: [] for k in fns}
    for _ in range(reps):
        for k, f in fns.items():
            t0 = time.perf_counter()
            for _ in range(inner):
                f()
            times[k].append((time.perf_counter() - t0) / inner)
    return {k: statistics.median(v) for k, v in times.items()}


# ---------------------------------------------------------------------------------- samplers
def part_sampler(reps: int) -> list[tuple]:
    from diffusers import DDIMScheduler, DDPMScheduler

    sched = td.NoiseSchedule.linear(1000)
    shape, n = (64, 2), 100

    def eps0(x, t):
        return 0.1 * x

    def minimal_ddim():
        ts = td.ddim.timesteps(1000, n).tolist()
        ab = sched.alpha_bar.float()
        x = torch.randn(shape, generator=torch.Generator().manual_seed(0))
        for t, p in zip(ts, ts[1:] + [0]):
            e = eps0(x, t)
            x0 = (x - (1 - ab[t]).sqrt() * e) / ab[t].sqrt()
            x = ab[p].sqrt() * x0 + (1 - ab[p]).sqrt() * e
        return x

    dd = DDIMScheduler(num_train_timesteps=1000, beta_schedule="linear", clip_sample=False, set_alpha_to_one=True)

    def diffusers_ddim():
        dd.set_timesteps(n)
        x = torch.randn(shape, generator=torch.Generator().manual_seed(0))
        for t in dd.timesteps:
            x = dd.step(eps0(x, t), t, x).prev_sample
        return x

    def tinydiff_ddim():
        return td.ddim.sample(eps0, shape, sched, n, generator=torch.Generator().manual_seed(0), progress_bar=False)

    times = interleaved({"minimal loop": minimal_ddim, "diffusers DDIMScheduler": diffusers_ddim,
                         "td.ddim.sample": tinydiff_ddim}, reps)
    rows = [("DDIM, 100 steps, trivial eps, per step", {k: v / n for k, v in times.items()}, "diffusers DDIMScheduler")]

    dp = DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear", clip_sample=False)

    def diffusers_ddpm():
        dp.set_timesteps(1000)
        g = torch.Generator().manual_seed(0)
        x = torch.randn(shape, generator=g)
        for t in dp.timesteps:
            x = dp.step(eps0(x, t), t, x, generator=g).prev_sample
        return x

    def tinydiff_ddpm():
        return td.ddpm.sample(eps0, shape, sched, generator=torch.Generator().manual_seed(0), progress_bar=False)

    times = interleaved({"diffusers DDPMScheduler": diffusers_ddpm, "td.ddpm.sample": tinydiff_ddpm}, max(2, reps // 2))
    rows.append(("DDPM, 1000 steps, trivial eps, per step", {k: v / 1000 for k, v in times.items()},
                 "diffusers DDPMScheduler"))
    return rows


# ---------------------------------------------------------------------------------- UNet
def part_unet(reps: int) -> list[tuple]:
    from diffusers import UNet2DModel

    C, mults = 32, (1, 2)
    ours = td.models.UNet(1, base_channels=C, channel_mults=mults, num_res_blocks=1)
    theirs = UNet2DModel(in_channels=1, out_channels=1, block_out_channels=tuple(C * m for m in mults), layers_per_block=1,
                         down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
                         add_attention=False, norm_num_groups=8, flip_sin_to_cos=True, freq_shift=0)
    x = torch.randn(64, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    t = torch.randint(1, 1000, (64,), generator=torch.Generator().manual_seed(1))
    n_ours, n_theirs = (sum(p.numel() for p in m.parameters()) for m in (ours, theirs))
    label = f"(params: tinydiff {n_ours / 1e6:.2f} M, diffusers {n_theirs / 1e6:.2f} M)"

    @torch.no_grad()
    def fwd_ours():
        return ours(x, t)

    @torch.no_grad()
    def fwd_theirs():
        return theirs(x, t).sample

    opt_a = torch.optim.AdamW(ours.parameters(), 1e-4)
    opt_b = torch.optim.AdamW(theirs.parameters(), 1e-4)

    def train_ours():
        opt_a.zero_grad(set_to_none=True)
        (ours(x, t) - x).pow(2).mean().backward()
        opt_a.step()

    def train_theirs():
        opt_b.zero_grad(set_to_none=True)
        (theirs(x, t).sample - x).pow(2).mean().backward()
        opt_b.step()

    f = interleaved({"diffusers UNet2DModel": fwd_theirs, "td.models.UNet": fwd_ours}, reps)
    b = interleaved({"diffusers UNet2DModel": train_theirs, "td.models.UNet": train_ours}, reps)
    return [(f"UNet forward, 64x1x16x16 {label}", f, "diffusers UNet2DModel"),
            (f"UNet train step (AdamW) {label}", b, "diffusers UNet2DModel")]


# ---------------------------------------------------------------------------------- the oracle
def _dist_eps(gm, x, a, s):
    """eps* from torch.distributions + autograd: -s * grad log p(x) of the mixture of N(a mu_k, a^2 Sigma_k + s^2 I)."""
    comp = torch.distributions.MultivariateNormal(a * gm.means, covariance_matrix=a**2 * gm.covs
                                                  + s**2 * torch.eye(gm.D, dtype=torch.float64))
    mix = torch.distributions.MixtureSameFamily(torch.distributions.Categorical(probs=gm.weights), comp)
    x = x.double().requires_grad_(True)
    (g,) = torch.autograd.grad(mix.log_prob(x).sum(), x)
    return -s * g


def _former_score(gm, x, ab):
    """The oracle as the package computed it until 2026-12 (per-sample (B, K, D, D) Cholesky factors), kept in
    tests/test_oracle.py as the reference formula."""
    import sys

    sys.path.insert(0, str(ROOT))
    from tests.test_oracle import _reference

    B = x.shape[0]
    abt = torch.full((B,), ab, dtype=torch.float64)
    return _reference(gm, x, abt.sqrt(), (1 - abt).sqrt())[1]


def part_oracle(reps: int) -> list[tuple]:
    rows = []
    sched = td.NoiseSchedule.linear(1000)
    for name, gm, B in (("2-D ring, K=8, B=1000", td.data.GaussianMixture.ring(), 1000),
                        ("D=64, K=10, B=2000", td.data.GaussianMixture.isotropic(
                            torch.randn(10, 64, generator=torch.Generator().manual_seed(0), dtype=torch.float64), 0.3),
                         2000)):
        x = torch.randn(B, gm.D, generator=torch.Generator().manual_seed(1))
        t = torch.full((B,), 500)
        eps = gm.eps_fn(sched)
        ab = float(sched.alpha_bar[500])
        a, s = math.sqrt(ab), math.sqrt(1 - ab)
        torch.testing.assert_close(eps(x, t).double(), _dist_eps(gm, x, a, s), rtol=1e-5, atol=1e-5)
        times = interleaved({"torch.distributions + autograd": lambda gm=gm, x=x, a=a, s=s: _dist_eps(gm, x, a, s),
                             "former (B, K, D, D) Cholesky formulas": lambda gm=gm, x=x, ab=ab: _former_score(gm, x, ab),
                             "mixture.eps_fn (one DDPM step)": lambda eps=eps, x=x, t=t: eps(x, t)}, reps)
        rows.append((f"exact eps of a Gaussian mixture, {name}", times, "torch.distributions + autograd"))
    return rows


PARTS = {"sampler": part_sampler, "unet": part_unet, "oracle": part_oracle}


def table(rows) -> str:
    out = ["| what | candidate | time | ratio to baseline |", "| --- | --- | --- | --- |"]
    for what, times, base in rows:
        for k, v in times.items():
            unit = f"{v * 1e6:.0f} µs" if v < 1e-2 else f"{v * 1e3:.1f} ms"
            out.append(f"| {what} | {k} | {unit} | {v / times[base]:.2f}× |")
    return "\n".join(out)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--parts", default=",".join(PARTS))
    p.add_argument("--reps", type=int, default=7)
    p.add_argument("--write", action="store_true", help="write benchmarks/results.md and the README block")
    args = p.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    rows = []
    for part in args.parts.split(","):
        rows += PARTS[part](args.reps)
    when = datetime.date.today().isoformat()
    machine = f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}"
    text = f"Measured {when} on {machine} (CPU; no GPU was available), medians of {args.reps} interleaved repeats.\n\n"
    text += table(rows) + "\n"
    print(text)
    if args.write:
        (ROOT / "benchmarks" / "results.md").write_text("# Benchmark results (generated by benchmarks/bench.py)\n\n" + text)
        readme = ROOT / "README.md"
        s = readme.read_text()
        start, end = "<!-- benchmarks:start -->", "<!-- benchmarks:end -->"
        if start in s and end in s:
            head, rest = s.split(start, 1)
            readme.write_text(head + start + "\n" + text + end + rest.split(end, 1)[1])


if __name__ == "__main__":
    main()
