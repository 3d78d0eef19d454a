"""Lesson 10's ablation table (lessons/10_ic_light.md, "Measured ablations"): with and without the light-transport
consistency loss, with and without its mask M, at equal compute and at equal data, over seeds.

    .venv/bin/python experiments/relight_ablation.py --seeds 5 --out runs/relight_ablation.json   # ~1 h of one core
    .venv/bin/python experiments/relight_ablation.py --summary runs/relight_ablation.json          # the table

Too slow for the notebook's standard budget (the notebook runs a smaller version of the same procedure); this
script is the one source of the guide's numbers.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

import tinydiff as td
from tinydiff import relight as R
from tinydiff.data import relight as W
from tinydiff.models.relight import RelightUNet

# name, lambda_consistency, use_mask, batch multiplier (vanilla gets 3x the batch = the consistency runs' compute)
VARIANTS = [("vanilla (batch 3B)", 0.0, True, 3), ("consistency + M", 0.1, True, 1), ("consistency, no M", 0.1, False, 1),
            ("vanilla, batch B (equal data)", 0.0, True, 1)]


def run(args) -> list[dict]:
    torch.set_num_threads(1)
    sched = td.NoiseSchedule.linear(1000)
    g = torch.Generator().manual_seed(0)
    train_obj, test_obj = W.make_objects(256, 16, generator=g), W.make_objects(128, 16, generator=g)
    single = W.random_lights(128, 16, generator=g)
    mix = W.random_lights(128, 16, n_sources=(2, 3), generator=g)
    m1, m2, _ = W.split_light(mix, generator=g)
    cond = W.condition(test_obj)
    rows = []
    for seed in range(args.seeds):
        for name, lam, mask, mult in VARIANTS:
            torch.manual_seed(seed)
            model = RelightUNet(base_channels=args.base_channels)
            t0 = time.time()
            res = td.train.fit(model, R.loss_fn(sched, "x0", lambda_consistency=lam, use_mask=mask),
                               W.RelightBatches(train_obj), steps=args.steps, batch_size=mult * args.batch, lr=2e-3,
                               seed=seed, progress_bar=False, device="cpu")
            row = dict(variant=name, seed=seed, train_s=time.time() - t0)
            f = res.sampler_model
            for lname, L in (("single", single), ("mix", mix)):
                x = R.relight(f, cond, L, sched, 10, generator=torch.Generator().manual_seed(1))
                p, s = R.psnr_ssim(W.tone_map(W.from_model(x)), W.tone_map(W.render(test_obj, L)))
                row[lname + "_psnr"], row[lname + "_ssim"] = p.mean().item(), s.mean().item()
            xs = [R.relight(f, cond, L, sched, 10, generator=torch.Generator().manual_seed(1)) for L in (mix, m1, m2)]
            row["lin"] = R.linearity_error(*xs, test_obj.mask)
            rows.append(row)
            print(row, flush=True)
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            Path(args.out).write_text(json.dumps(rows, indent=1))
    return rows


def summary(rows: list[dict]) -> str:
    out = ["| variant | seeds | PSNR single (dB) | SSIM single | PSNR mixtures (dB) | SSIM mixtures | linearity error |",
           "| --- | --- | --- | --- | --- | --- | --- |"]
    for name in dict.fromkeys(r["variant"] for r in rows):
        rs = [r for r in rows if r["variant"] == name]
        c = {k: torch.tensor([r[k] for r in rs]) for k in ("single_psnr", "single_ssim", "mix_psnr", "mix_ssim", "lin")}

        def f(k, d, c=c):
            return f"{c[k].mean():.{d}f} ± {c[k].std():.{d}f}"

        out.append(f"| {name} | {len(rs)} | {f('single_psnr', 2)} | {f('single_ssim', 3)} | {f('mix_psnr', 2)} | "
                   f"{f('mix_ssim', 3)} | {f('lin', 3)} |")
    return "\n".join(out)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--base-channels", type=int, default=16)
    p.add_argument("--out", default="runs/relight_ablation.json")
    p.add_argument("--summary", help="print the table of a finished run's JSON and exit")
    args = p.parse_args()
    rows = json.loads(Path(args.summary).read_text()) if args.summary else run(args)
    print(summary(rows))


if __name__ == "__main__":
    main()
