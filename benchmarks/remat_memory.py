"""Device memory of one compiled search step with and without rematerialised generator blocks.

    python benchmarks/remat_memory.py --resolution 1024 --seeds 8
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks"), str(ROOT / "tests")]

import jax  # noqa: E402
import numpy as np  # noqa: E402
from bench import build  # noqa: E402

import pulse_jax as pj  # noqa: E402
from pulse_jax import latent_search as ls  # noqa: E402


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--resolution", type=int, default=1024)
    p.add_argument("--seeds", type=int, default=8)
    args = p.parse_args()
    model, _, _ = build(args.resolution)
    lr = np.zeros((1, 32, 32, 3), np.float32)
    for remat in (False, True):
        spec = ls._make_spec(model, pj.PulseConfig(), 32, "highest", remat)
        state = ls._init(spec, ls.seed_keys(jax.random.key(0), 1, args.seeds), None, None)
        compiled = ls._run_one_step.lower(spec, state, lr, None, model.synthesis_params,
                                          model.gaussian_fit).compile()
        m = compiled.memory_analysis()
        print(f"remat={remat} resolution={args.resolution} seeds={args.seeds} "
              f"temp_GB={m.temp_size_in_bytes / 1e9:.3f} args_GB={m.argument_size_in_bytes / 1e9:.3f}", flush=True)


if __name__ == "__main__":
    main()
