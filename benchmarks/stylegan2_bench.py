"""StyleGAN2: our search beside the PyTorch PULSE loop on the reference generator, in one process.

Same random weights (NVIDIA's names, converted once), same config, same device, float32 (TF32 on both
sides with --precision default on a GPU). Seed-steps per second from the median of timed chunks after a
warm-up chunk (compile, autotuning); the two sides alternate, so a noisy neighbour hits both.

    python benchmarks/stylegan2_bench.py --resolution 1024 --seeds 1 4 --out benchmarks/results/sg2.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import jax  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from reference import pulse_torch  # noqa: E402
from reference import stylegan2_torch as ref  # noqa: E402

import pulse_jax as pj  # noqa: E402
from convert import stylegan2 as names  # noqa: E402

LR_SIZE = 32
CONFIGS = {1024: (32768, 512), 256: (2048, 64), 64: (1024, 32)}


def build(resolution: int):
    base, cmax = CONFIGS[resolution]
    sd = ref.random_generator_state_dict(resolution, base, cmax, seed=0)
    arrays = {k: v.numpy() for k, v in sd.items()}
    config = names.config_from_state(arrays, "benchmark", conv_clamp=256.0, channel_base=base)
    synthesis, mapping = names.to_params(arrays, config, "benchmark")
    fit = (np.zeros(512, np.float32), np.ones(512, np.float32))
    return pj.Model.from_arrays(config, synthesis, mapping, fit), sd


def time_ours(model, seeds: int, chunk: int, reps: int, precision: str) -> dict:
    lr = np.random.default_rng(0).random((1, LR_SIZE, LR_SIZE, 3), dtype=np.float32)
    marks = []

    def on_chunk(chunk_done):
        jax.block_until_ready(chunk_done.state)
        marks.append(time.perf_counter())

    start = time.perf_counter()
    pj.search(model, lr, pj.PulseConfig(steps=chunk * (reps + 1)),
              pj.RunOptions(precision=precision, chunk_steps=chunk), seeds=seeds, key=jax.random.key(0),
              on_chunk=on_chunk)
    times = np.diff([start] + marks)
    return {"step_s": float(statistics.median(times[1:]) / chunk), "first_chunk_s": float(times[0])}


def time_torch(model, sd, seeds: int, chunk: int, reps: int, device: str) -> dict:
    sd = {k: v.to(device) for k, v in sd.items()}
    g = torch.Generator().manual_seed(0)
    lr = torch.rand(seeds, 3, LR_SIZE, LR_SIZE, generator=g).to(device)
    latent = torch.randn(seeds, model.num_ws, 512, generator=g).to(device)
    noise = [torch.randn(seeds, 1, *s, generator=g).to(device) for s in model.noise_shapes()]
    noise[-1].zero_()
    fit = (torch.zeros(512, device=device), torch.ones(512, device=device))

    def run():
        pulse_torch.run(sd, fit, lr, latent, noise, steps=chunk, num_ws=model.num_ws,
                        synthesis=lambda s, w, maps: ref.synthesis(s, w, maps, 256.0))
        if device == "cuda":
            torch.cuda.synchronize()

    t0 = time.perf_counter()
    run()
    first = time.perf_counter() - t0
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        run()
        times.append(time.perf_counter() - t0)
    return {"step_s": float(statistics.median(times) / chunk), "first_chunk_s": first}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--resolution", type=int, default=1024, choices=sorted(CONFIGS))
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 4])
    p.add_argument("--chunk", type=int, default=2, help="steps per timed chunk")
    p.add_argument("--reps", type=int, default=3, help="timed chunks per side (median)")
    p.add_argument("--precision", default="highest")
    p.add_argument("--out")
    args = p.parse_args()
    device = "cuda" if jax.default_backend() == "gpu" else "cpu"
    if device == "cuda":
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = args.precision == "default"
    model, sd = build(args.resolution)
    rows = []
    for seeds in args.seeds:
        ours = time_ours(model, seeds, args.chunk, args.reps, args.precision)
        theirs = time_torch(model, sd, seeds, args.chunk, args.reps, device)
        row = {"resolution": args.resolution, "seeds": seeds, "ours_step_s": ours["step_s"],
               "torch_step_s": theirs["step_s"], "speedup": theirs["step_s"] / ours["step_s"],
               "ours_first_chunk_s": ours["first_chunk_s"], "torch_first_chunk_s": theirs["first_chunk_s"]}
        rows.append(row)
        print(json.dumps(row), flush=True)
    info = {"machine": platform.processor() or platform.machine(), "backend": jax.default_backend(),
            "devices": [str(d) for d in jax.devices()], "jax": jax.__version__, "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(), "precision": args.precision, "chunk": args.chunk,
            "reps": args.reps, "rows": rows}
    if args.out:
        Path(args.out).write_text(json.dumps(info, indent=2) + "\n")


if __name__ == "__main__":
    main()
