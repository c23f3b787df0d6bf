"""StyleGAN3: our search beside the PyTorch PULSE loop on the reference generator, in one process.

Same random weights (NVIDIA's names, converted once by convert/stylegan3.py), same config (W+ only: no
noise maps), same device, float32. The reference computes in NVIDIA's plain form (zeros inserted for the
upsampling, grouped per-sample convolutions); ours polyphase with the shared-weight modulation. Seed-steps
per second from the median of timed chunks after a warm-up chunk; for each seed count one side, then the other.

    python benchmarks/stylegan3_bench.py --config t256 --seeds 1 4 --out benchmarks/results/sg3_256.json

``--side ours|torch`` times one side alone, in a process of its own: where the two sides do not fit one
machine's memory together, or one side does not fit at all. Each row has each side's peak RSS (while it
ran, with what the process held before it); a side the kernel kills for memory leaves no row, and the
shell reports signal 9.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
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


def build(name: str, with_torch: bool = True):
    """(our model, the reference's state dict or None). Without the torch side, our own random weights:
    the reference's float64 calibration is the build's peak (21.8 GB RSS for R at 256 px), more than
    our search needs, and a step's work does not depend on the weights' values."""
    config = CONFIGS[name]
    fit = (np.zeros(512, np.float32), np.ones(512, np.float32))
    if not with_torch:
        return pj.Model.random(config, seed=0, with_mapping=False).with_gaussian_fit(fit), None
    state = random_state(config, seed=0, calibration_samples=1)
    arrays = {k: v.numpy() for k, v in state.items()}
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


def peak_rss_gb() -> float:
    """The process's peak resident memory since the last reset_peak_rss (Linux's VmHWM; on a GPU, the
    host's side only)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024 / 1e9
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9  # no /proc: the whole run's


def reset_peak_rss() -> None:
    """Start the peak over from what the process holds now (Linux: "5" to clear_refs), so that each
    side's peak is its own, not the build's (the torch reference's calibration at 1024 px peaks higher
    than our search)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--config", default="t256", choices=sorted(CONFIGS))
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 4])
    p.add_argument("--chunk", type=int, default=2, help="steps per timed chunk")
    p.add_argument("--reps", type=int, default=3, help="timed chunks per side (median)")
    p.add_argument("--out")
    p.add_argument("--torch-first", action="store_true",
                   help="time the torch side first (where the two sides' peaks do not fit one after the other)")
    p.add_argument("--side", choices=("both", "ours", "torch"), default="both",
                   help="time one side alone (where the two do not fit one machine together)")
    args = p.parse_args()
    device = "cuda" if jax.default_backend() == "gpu" else "cpu"
    if device == "cuda":  # float32 on both sides
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    model, state = build(args.config, with_torch=args.side != "ours")
    built_rss = peak_rss_gb()  # the weights made and converted (the torch reference's calibration included)
    rows = []
    for seeds in args.seeds:
        row = {"config": args.config, "resolution": model.generator.resolution, "seeds": seeds}
        if args.side != "both":
            sides = (args.side,)
        else:
            sides = ("torch", "ours") if args.torch_first else ("ours", "torch")
        for side in sides:
            reset_peak_rss()
            if side == "ours":
                timed = time_ours(model, seeds, args.chunk, args.reps, "highest")
            else:
                timed = time_torch(model, state, seeds, args.chunk, args.reps, device)
            row.update({f"{side}_step_s": timed["step_s"], f"{side}_first_chunk_s": timed["first_chunk_s"],
                        f"{side}_peak_rss_gb": peak_rss_gb()})
            print(json.dumps(row), flush=True)  # kept if the next side dies
        if len(sides) == 2:
            row["speedup"] = row["torch_step_s"] / row["ours_step_s"]
        rows.append(row)
        print(json.dumps(row), flush=True)
    info = {"machine": platform.processor() or platform.machine(), "backend": jax.default_backend(),
            "devices": [str(d) for d in jax.devices()], "jax": jax.__version__, "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(), "chunk": args.chunk, "reps": args.reps,
            "torch_first": args.torch_first, "side": args.side,
            "peak_rss_gb_after_build": built_rss,
            "date": time.strftime("%Y-%m-%d"), "rows": rows}
    if args.out:
        Path(args.out).write_text(json.dumps(info, indent=2) + "\n")


if __name__ == "__main__":
    main()
