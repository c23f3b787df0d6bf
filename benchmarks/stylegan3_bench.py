"""StyleGAN3: our search beside the PyTorch PULSE loop on the reference generator, in one process.

Same random weights (NVIDIA's names, converted once by convert/stylegan3.py), same config (W+ only: no
noise maps), same device, float32. The reference computes in NVIDIA's plain form (zeros inserted for the
upsampling, grouped per-sample convolutions); ours polyphase with the shared-weight modulation. Seed-steps
per second from the median of timed chunks after a warm-up chunk; the two sides alternate.

    python benchmarks/stylegan3_bench.py --resolution 256 --seeds 1 4 --out benchmarks/results/sg3_256.json
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
from reference import stylegan3_torch as ref  # noqa: E402
from stylegan2_bench import LR_SIZE, time_ours  # noqa: E402  (the same timing of our search, any family)
from stylegan3_files import random_state  # noqa: E402

import pulse_jax as pj  # noqa: E402
from convert.stylegan3 import mapping_arrays, synthesis_arrays  # noqa: E402
from pulse_jax.generators.stylegan3 import PRESETS, StyleGAN3Config  # noqa: E402

# NVIDIA's released architectures: T at 1024 (FFHQ, MetFaces), T at 256 (FFHQ-U 256: channel_base 32768).
CONFIGS = {"t1024": PRESETS["t_ffhq_1024"], "r1024": PRESETS["r_ffhq_1024"],
           "t256": StyleGAN3Config(resolution=256), "r256": StyleGAN3Config(resolution=256, channel_base=65536,
                                                                            channel_max=1024, conv_kernel=1,
                                                                            radial_filters=True)}


def build(name: str):
    config = CONFIGS[name]
    state = random_state(config, seed=0, calibration_samples=1)
    arrays = {k: v.numpy() for k, v in state.items()}
    fit = (np.zeros(512, np.float32), np.ones(512, np.float32))
    model = pj.Model.from_arrays(config, synthesis_arrays(arrays, config), mapping_arrays(arrays, config), fit)
    return model, state


def time_torch(model, state, seeds: int, chunk: int, reps: int, device: str) -> dict:
    config = model.generator.config
    state = {k: v.to(device) for k, v in state.items()}
    g = torch.Generator().manual_seed(0)
    lr = torch.rand(seeds, 3, LR_SIZE, LR_SIZE, generator=g).to(device)
    latent = torch.randn(seeds, model.num_ws, 512, generator=g).to(device)
    fit = (torch.zeros(512, device=device), torch.ones(512, device=device))

    def run():
        pulse_torch.run(state, fit, lr, latent, [], trainable_layers=(), steps=chunk, num_ws=model.num_ws,
                        synthesis=lambda s, w, maps: ref.synthesis(s, config, w), resolution=config.resolution)
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
    p.add_argument("--config", default="t256", choices=sorted(CONFIGS))
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 4])
    p.add_argument("--chunk", type=int, default=2, help="steps per timed chunk")
    p.add_argument("--reps", type=int, default=3, help="timed chunks per side (median)")
    p.add_argument("--out")
    p.add_argument("--torch-first", action="store_true",
                   help="time the torch side first (where the two sides' peaks do not fit one after the other)")
    args = p.parse_args()
    device = "cuda" if jax.default_backend() == "gpu" else "cpu"
    if device == "cuda":  # float32 on both sides
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    model, state = build(args.config)
    rows = []
    for seeds in args.seeds:
        if args.torch_first:
            theirs = time_torch(model, state, seeds, args.chunk, args.reps, device)
            print(json.dumps({"config": args.config, "seeds": seeds, "torch": theirs}), flush=True)
        ours = time_ours(model, seeds, args.chunk, args.reps, "highest")
        print(json.dumps({"config": args.config, "seeds": seeds, "ours": ours}), flush=True)  # if torch's side dies
        if not args.torch_first:
            theirs = time_torch(model, state, seeds, args.chunk, args.reps, device)
        row = {"config": args.config, "resolution": model.generator.resolution, "seeds": seeds,
               "ours_step_s": ours["step_s"], "torch_step_s": theirs["step_s"],
               "speedup": theirs["step_s"] / ours["step_s"], "ours_first_chunk_s": ours["first_chunk_s"],
               "torch_first_chunk_s": theirs["first_chunk_s"]}
        rows.append(row)
        print(json.dumps(row), flush=True)
    info = {"machine": platform.processor() or platform.machine(), "backend": jax.default_backend(),
            "devices": [str(d) for d in jax.devices()], "jax": jax.__version__, "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(), "chunk": args.chunk, "reps": args.reps,
            "torch_first": args.torch_first,
            "date": time.strftime("%Y-%m-%d"), "rows": rows}
    if args.out:
        Path(args.out).write_text(json.dumps(info, indent=2) + "\n")


if __name__ == "__main__":
    main()
