"""How close the search comes to a known truth, per downscaling factor and objective.

Truths are drawn from the generator itself (random points of the latent space PULSE searches, through the
demo's random StyleGAN v1 at 128 px and its gaussian fit), so the prior is exact: what is measured is
the search, not how well a generator fits faces. Each truth is downscaled (bicubic) by x4, x8, x16, x32
and searched with a fixed set of seeds and steps under each objective; per factor and objective: the mean
HR PSNR and SSIM of the best seed against the truth (pulse_jax.evaluate's measures), its consistency (the
downscaling MSE of the returned image) and the fraction within eps, and HR LPIPS. LPIPS here (in the
+LPIPS objective and as a measure) has a random VGG16 trunk and random heads (Perceptual.random: no
weights can be had here), so it is a random deep-feature distance, not the published metric. Random
weights say nothing about realism: these figures compare objectives and factors on one generator.

    python benchmarks/quality.py --truths 4 --seeds 2 --steps 100 --out benchmarks/results/quality.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import pulse_jax as pj
from pulse_jax.degrade import Degradation
from pulse_jax.demo import ground_truth, random_demo_model
from pulse_jax.evaluate import measure
from pulse_jax.perceptual import distances_in_groups

OBJECTIVES = {"PULSE": "100*L2+0.05*GEOCROSS", "PULSE+NOISEREG": "100*L2+0.05*GEOCROSS+100*NOISEREG",
              "PULSE+LPIPS": "100*L2+0.05*GEOCROSS+0.5*LPIPS"}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--truths", type=int, default=4)
    p.add_argument("--seeds", type=int, default=2)
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--factors", type=int, nargs="*", default=[4, 8, 16, 32])
    p.add_argument("--out")
    args = p.parse_args()
    model = random_demo_model(0)
    resolution = model.generator.resolution
    truths = np.stack([ground_truth(model, jax.random.key(1000 + i)) for i in range(args.truths)])
    perceptual = pj.Perceptual.random(0)
    rows = []
    for factor in args.factors:
        lr = np.asarray(Degradation().simulate(jnp.asarray(truths), factor, jax.random.key(0)))
        for name, loss in OBJECTIVES.items():
            t = time.perf_counter()
            result = pj.search(model, lr, pj.PulseConfig(steps=args.steps, loss_str=loss), seeds=args.seeds,
                               key=jax.random.key(7), perceptual=perceptual)
            best = np.argmin(np.where(result.success, 0, 1) * 1e9 + result.best_loss, axis=1)
            found = result.images[np.arange(args.truths), best]
            psnr, ssim = measure(found, truths)
            lpips = distances_in_groups(perceptual, found, truths)
            row = {"factor": factor, "lr_size": resolution // factor, "objective": name, "loss": loss,
                   "psnr": float(psnr.mean()), "ssim": float(ssim.mean()), "lpips": float(lpips.mean()),
                   "consistency_mse": float(result.best_l2[np.arange(args.truths), best].mean()),
                   "within_eps": float(result.success[np.arange(args.truths), best].mean()),
                   "seconds": time.perf_counter() - t}
            rows.append(row)
            print(json.dumps(row), flush=True)
    meta = {"date": time.strftime("%Y-%m-%d"), "machine": platform.machine(), "cpus": os.cpu_count(),
            "jax": jax.__version__, "generator": f"demo StyleGAN v1, {resolution} px, random weights",
            "truths": args.truths, "seeds": args.seeds, "steps": args.steps,
            "lpips": "random trunk and heads (Perceptual.random(0)): not the published metric"}
    if args.out:
        Path(args.out).write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    print("\n| factor | input | objective | HR PSNR dB | HR SSIM | HR LPIPS* | consistency MSE | within eps | s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| x{r['factor']} | {r['lr_size']} px | {r['objective']} | {r['psnr']:.2f} | {r['ssim']:.3f} | "
              f"{r['lpips']:.4f} | {r['consistency_mse']:.2e} | {r['within_eps']:.0%} | {r['seconds']:.0f} |")


if __name__ == "__main__":
    main()
