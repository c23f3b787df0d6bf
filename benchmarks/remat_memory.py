"""Device memory of one compiled search step with and without rematerialised generator blocks.

    python benchmarks/remat_memory.py --resolution 1024 --seeds 8
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks"), str(ROOT / "tests")]

from bench import build, compile_step  # noqa: E402


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--resolution", type=int, default=1024)
    p.add_argument("--seeds", type=int, default=8)
    args = p.parse_args()
    model, _, _ = build(args.resolution)
    for remat in (False, True):
        m = compile_step(model, args.seeds, "highest", remat).memory_analysis()
        print(f"remat={remat} resolution={args.resolution} seeds={args.seeds} "
              f"temp_GB={m.temp_size_in_bytes / 1e9:.3f} args_GB={m.argument_size_in_bytes / 1e9:.3f}", flush=True)


if __name__ == "__main__":
    main()
