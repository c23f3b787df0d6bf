"""How many inputs a CPU should search together, by resolution: seconds per input-step at batch sizes 1..B
(one seed each), for StyleGAN v1 generators of full width (fmap_base 8192, as FFHQ's) and of the tests'
narrow widths. The defaults in pulse_jax/batching.py (CPU_EXAMPLES_BY_RESOLUTION) come from this table.

    python benchmarks/cpu_batch.py --out benchmarks/results/cpu_batch.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import jax
import numpy as np

import pulse_jax as pj

CONFIGS = {  # name -> (config, batch sizes)
    "narrow 32 px (the tests' micro: fmap 256/32)": (pj.StyleGANConfig(resolution=32, fmap_base=256, fmap_max=32),
                                                      (1, 4, 8, 16, 32, 64)),
    "full 32 px": (pj.StyleGANConfig(resolution=32), (1, 4, 8, 16, 32)),
    "full 128 px": (pj.StyleGANConfig(resolution=128), (1, 2, 4, 8, 16)),
    "full 256 px": (pj.StyleGANConfig(resolution=256), (1, 2, 4, 8)),
    "full 1024 px": (pj.StyleGANConfig(resolution=1024), (1, 2, 4)),
}


def step_seconds(model, n: int, reps: int, chunk: int) -> float:
    lr = np.random.default_rng(0).random((n, 8, 8, 3), dtype=np.float32)
    marks = []

    def on_chunk(c):
        jax.block_until_ready(c.state)
        marks.append(time.perf_counter())

    start = time.perf_counter()
    pj.search(model, lr, pj.PulseConfig(steps=chunk * (reps + 1)), pj.RunOptions(chunk_steps=chunk), seeds=1,
              key=jax.random.key(0), on_chunk=on_chunk)
    return statistics.median(np.diff([start] + marks)[1:]) / chunk


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--chunk", type=int, default=2)
    p.add_argument("--only", nargs="*", help="names of CONFIGS to run (default all)")
    p.add_argument("--out")
    args = p.parse_args()
    rows = []
    for name, (config, sizes) in CONFIGS.items():
        if args.only and not any(o in name for o in args.only):
            continue
        model = pj.Model.random(config, seed=0, with_mapping=False)
        model = model.with_gaussian_fit((np.zeros(512, np.float32), np.ones(512, np.float32)))
        for n in sizes:
            s = step_seconds(model, n, args.reps, args.chunk)
            rows.append({"generator": name, "batch": n, "step_s": s, "per_input_step_s": s / n})
            print(json.dumps(rows[-1]), flush=True)
    result = {"meta": {"date": time.strftime("%Y-%m-%d"), "machine": platform.machine(), "jax": jax.__version__,
                       "device": jax.default_backend(), "reps": args.reps, "chunk": args.chunk}, "rows": rows}
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
