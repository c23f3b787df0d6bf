"""What the bfloat16 mode costs in results: same targets, same keys, float32 vs bfloat16.

Targets are images the generator can make (as in the demo), downscaled, so success is reachable.
Reports the lowest LR-MSE reached, the success rate and the RMS difference of the returned images.

    python benchmarks/bf16_cost.py --preset small_256 --images 4 --seeds 4 --steps 100 --size 16
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT)]

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import pulse_jax as pj  # noqa: E402
from pulse_jax.demo import ground_truth  # noqa: E402
from pulse_jax.model import compute_gaussian_fit  # noqa: E402


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--preset", default="small_256")
    p.add_argument("--images", type=int, default=4)
    p.add_argument("--seeds", type=int, default=4)
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--size", type=int, default=16)
    args = p.parse_args()
    model = pj.Model.random(pj.PRESETS[args.preset], 0)
    fit = compute_gaussian_fit(model, num_samples=50_000)
    model = model.with_gaussian_fit(fit)
    truths = np.stack([ground_truth(model, jax.random.key(100 + i)) for i in range(args.images)])
    lr = np.asarray(pj.bicubic_downsample(jnp.asarray(truths), model.config.resolution // args.size))
    config = pj.PulseConfig(steps=args.steps)
    out = {"preset": args.preset, "images": args.images, "seeds": args.seeds, "steps": args.steps,
           "size": args.size, "device": jax.devices()[0].device_kind, "jax": jax.__version__}
    results = {}
    for precision in ("highest", "bfloat16"):
        r = pj.search(model, lr, config, pj.RunOptions(precision=precision), seeds=args.seeds, key=jax.random.key(0))
        results[precision] = r
        out[precision] = {"median_min_lr_mse": float(np.median(r.min_l2)), "success_rate": float(r.success.mean()),
                          "seconds": r.seconds}
    diff = results["bfloat16"].images - results["highest"].images
    out["rms_image_difference"] = float(np.sqrt(np.mean(diff**2)))
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
