"""End-to-end throughput of ``pulse-jax upsample`` over folders of N tiny inputs, and how idle the search is.

    python benchmarks/throughput.py --n 100 1000 10000 --out benchmarks/results/throughput.json
    python benchmarks/throughput.py --idle --resolution 1024 --inputs 6   # the search-idle fraction

Sizes: a 32 px random StyleGAN v1 (the tests' micro generator), 8x8 PNG inputs, ``--steps 2 --seeds 1``,
default options otherwise: what a folder of many tiny faces costs beyond the search itself. Per N: the
wall time, ms per input, and the time inside the search, inside the writer's jobs (encoding and writing
each input's files, on its own thread) and inside the bookkeeping (journal transactions, the index); the
bytes of reports written (journal, report.json, every index page write). In one process, so compiles are
paid once (by a warm-up run).

``--idle``: at a given resolution, the fraction of the wall time in which no search runs (reading inputs,
encoding and writing outputs between searches), for the code checked out: run it from two checkouts to
compare before and after.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import jax
import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import pulse_jax as pj  # noqa: E402
from pulse_jax import batching, safe_files  # noqa: E402


class Clock:
    """Time spent inside wrapped functions, by label (threads add their own time)."""

    def __init__(self):
        self.seconds: dict[str, float] = {}
        self.wrapped: list[tuple] = []

    def restore(self) -> None:
        for owner, name, real in reversed(self.wrapped):
            setattr(owner, name, real)
        self.wrapped = []

    def wrap(self, label: str, owner, name: str):
        real = getattr(owner, name)
        self.wrapped.append((owner, name, real))

        def timed(*args, **kwargs):
            t = time.perf_counter()
            try:
                return real(*args, **kwargs)
            finally:
                self.seconds[label] = self.seconds.get(label, 0.0) + time.perf_counter() - t

        setattr(owner, name, timed)


def micro_model():
    from micro_generator import MICRO

    model = pj.Model.random(MICRO, seed=4, with_mapping=False)
    return model.with_gaussian_fit((np.zeros(512, np.float32), np.ones(512, np.float32)))


def make_inputs(folder: Path, n: int, size: int) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        path = folder / f"face{i:06d}.png"
        if not path.exists():
            Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


def run(model, inputs: list[Path], out: Path, steps: int, **job) -> float:
    from pulse_jax.upsample import upsample_files

    t = time.perf_counter()
    try:
        from pulse_jax.job import UpsampleJob
    except ImportError:  # a checkout from before the resolved job (to compare with, --idle only)
        upsample_files(model, inputs, out, pj.PulseConfig(steps=steps), log=lambda m: None, show_progress=False)
    else:
        upsample_files(UpsampleJob(model, pj.PulseConfig(steps=steps), **job), inputs, out, log=lambda m: None,
                       show_progress=False)
    return time.perf_counter() - t


def throughput(args) -> list[dict]:
    from pulse_jax import journal, reports, upsample

    model = micro_model()
    root = Path(args.dir or tempfile.mkdtemp(prefix="pulse-jax-throughput-"))
    run(model, make_inputs(root / "warm", 64, 8), root / "warm-out", args.steps)  # compiles, once
    rows = []
    for n in args.n:
        inputs = make_inputs(root / f"in{n}", n, 8)
        clock = Clock()
        clock.wrap("search", batching.SearchRequest, "run")
        clock.wrap("writing", upsample, "_write_input")
        for label, owner, name in (("journal", journal.Journal, "claim"), ("journal", journal.Journal, "record"),
                                   ("index", reports.IndexWriter, "write"), ("plan", upsample, "plan"),
                                   ("plan", upsample, "read_inputs"), ("report", upsample, "build_report")):
            clock.wrap(label, owner, name)
        written = {"bytes": 0}
        real_write = safe_files.atomic_write_bytes

        def counting(path, write, real_write=real_write, written=written):
            real_write(path, write)
            if Path(path).name.startswith(("index", "report")):
                written["bytes"] += Path(path).stat().st_size

        safe_files.atomic_write_bytes = counting
        reports.atomic_write_bytes = counting
        wall = run(model, inputs, root / f"out{n}", args.steps)
        safe_files.atomic_write_bytes = reports.atomic_write_bytes = real_write
        clock.restore()
        journal_bytes = sum(p.stat().st_size for p in (root / f"out{n}").glob("journal*"))
        row = {"n": n, "wall_s": wall, "ms_per_input": 1000 * wall / n,
               **{f"{k}_s": v for k, v in sorted(clock.seconds.items())},
               "report_bytes_written": written["bytes"], "journal_bytes": journal_bytes}
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def idle(args) -> dict:
    """Wall time against the time inside searches, at one resolution."""
    config = pj.StyleGANConfig(resolution=args.resolution)
    model = pj.Model.random(config, seed=0, with_mapping=False)
    model = model.with_gaussian_fit((np.zeros(512, np.float32), np.ones(512, np.float32)))
    root = Path(tempfile.mkdtemp(prefix="pulse-jax-idle-"))
    inputs = make_inputs(root / "in", args.inputs, 32)
    run(model, inputs[:1], root / "warm", args.steps)  # compiles
    searching = {"s": 0.0}
    real = batching.search

    def timed(*a, **k):
        t = time.perf_counter()
        try:
            return real(*a, **k)
        finally:
            searching["s"] += time.perf_counter() - t

    batching.search = timed
    wall = run(model, inputs, root / "out", args.steps)
    batching.search = real
    row = {"resolution": args.resolution, "inputs": args.inputs, "steps": args.steps, "wall_s": wall,
           "search_s": searching["s"], "idle_fraction": 1 - searching["s"] / wall}
    print(json.dumps(row), flush=True)
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, nargs="*", default=[100, 1000])
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--dir", help="where the inputs and outputs go (default: a new temporary folder)")
    p.add_argument("--idle", action="store_true")
    p.add_argument("--resolution", type=int, default=1024)
    p.add_argument("--inputs", type=int, default=6)
    p.add_argument("--out")
    args = p.parse_args()
    rows = [idle(args)] if args.idle else throughput(args)
    meta = {"date": time.strftime("%Y-%m-%d"), "machine": platform.machine(), "cpus": os.cpu_count(),
            "jax": jax.__version__, "device": jax.default_backend(),
            "glibc_tunables": os.environ.get("GLIBC_TUNABLES", "")}
    if args.out:
        Path(args.out).write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
