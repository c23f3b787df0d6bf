"""Side-by-side speed of our search and the PyTorch PULSE loop (tests/reference), in one process.

Same weights (random, PULSE format), same algorithm and config, same device. For each resolution and
seed count: seed-steps per second (median over timed chunks), compile time, peak memory (the device's
allocator peak on a GPU; on a CPU the resident high-water mark of the timed steps above the resident
size before the run), and achieved FLOP/s against a ceiling measured on the same device.

    python benchmarks/bench.py --resolutions 256 1024 --seeds 1 4 16 --out benchmarks/cpu.json
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from flops import search_step_flops  # noqa: E402
from reference import pulse_torch  # noqa: E402
from reference import stylegan_torch as ref  # noqa: E402

import pulse_jax as pj  # noqa: E402
from pulse_jax import batching, pulse_format  # noqa: E402
from pulse_jax import latent_search as ls  # noqa: E402
from pulse_jax.host_memory import TUNABLES, huge_pages_env_here, relaunch_with  # noqa: E402

PRESET_OF = {256: "small_256", 1024: "ffhq_1024", 128: "tiny_128"}
LR_SIZE = 32

# glibc tunables per --malloc choice. "kept": one arena, no mmap, no trimming: freed buffers are reused
# with no page faults at all, but the heap fragments (up to 2x the resident memory of the others,
# measured at 1024 px, 4 seeds), so the CLI does not use it; a user of either program could.
MALLOC_SETTINGS = {
    "huge-pages": "glibc.malloc.hugetlb=1",
    "default": "",
    "kept": "glibc.malloc.arena_max=1:glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=17179869184",
}


def malloc_env(choice: str) -> dict | None:
    """The environment to relaunch in for this --malloc choice; None when this process already runs in it,
    or for huge pages where the machine has none (the JSON's glibc_tunables says what ran)."""
    if os.environ.get(TUNABLES, "") == MALLOC_SETTINGS[choice]:
        return None
    if choice == "huge-pages" and huge_pages_env_here({}) is None:
        print("--malloc huge-pages: this machine has none (needs glibc >= 2.35 and huge pages on); "
              "running with its malloc as it is", flush=True)
        return None
    env = {k: v for k, v in os.environ.items() if k != TUNABLES}
    return {**env, TUNABLES: MALLOC_SETTINGS[choice]} if MALLOC_SETTINGS[choice] else env


def build(resolution: int):
    c = pj.PRESETS[PRESET_OF[resolution]]
    sd = ref.random_synthesis_state_dict(c.resolution, c.fmap_base, c.fmap_max, seed=0)
    fit = ref.random_gaussian_fit()
    config, params = pulse_format.synthesis_params({k: v.numpy() for k, v in sd.items()})
    model = pj.Model.from_arrays(config, params, gaussian_fit=(fit["mean"].numpy(), fit["std"].numpy()))
    return model, sd, (fit["mean"], fit["std"])


def time_ours(model, seeds: int, reps: int, chunk: int, precision: str, remat: bool = False,
              after_warmup=lambda: None, transposed_conv: str = "phases"):
    lr = np.random.default_rng(0).random((1, LR_SIZE, LR_SIZE, 3), dtype=np.float32)
    marks = []

    def on_chunk(chunk_done):
        jax.block_until_ready(chunk_done.state)
        marks.append(time.perf_counter())
        if len(marks) == 1:
            after_warmup()

    start = time.perf_counter()
    form = model.generator.SearchOptions(transposed_conv=transposed_conv)
    options = pj.RunOptions(precision=precision, remat=remat, chunk_steps=chunk, generator=form)
    pj.search(model, lr, pj.PulseConfig(steps=chunk * (reps + 1)), options, seeds=seeds, key=jax.random.key(0),
              on_chunk=on_chunk)
    times = np.diff([start] + marks)
    steady = statistics.median(times[1:]) / chunk
    return {"step_s": steady, "compile_s": float(times[0] - chunk * steady)}


def time_torch(sd, fit, seeds: int, reps: int, chunk: int, device: str, after_warmup=lambda: None):
    c_sd = {k: v.to(device) for k, v in sd.items()}
    fit = tuple(f.to(device) for f in fit)
    num_layers = 2 * int(np.log2(max(int(k.split(".")[1].split("x")[0]) for k in sd if k.startswith("blocks.")))) - 2
    g = torch.Generator().manual_seed(0)
    lr = torch.rand(seeds, 3, LR_SIZE, LR_SIZE, generator=g).to(device)
    latent = torch.randn(seeds, num_layers, 512, generator=g).to(device)
    noise = [torch.randn(seeds, 1, 2 ** (i // 2 + 2), 2 ** (i // 2 + 2), generator=g).to(device)
             for i in range(num_layers)]
    noise[-1].zero_()

    def run():
        pulse_torch.run(c_sd, fit, lr, latent, noise, steps=chunk)
        if device == "cuda":
            torch.cuda.synchronize()

    t0 = time.perf_counter()
    run()  # warm-up: cuDNN autotuning, allocator
    first = time.perf_counter() - t0
    after_warmup()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        run()
        times.append(time.perf_counter() - t0)
    return {"step_s": statistics.median(times) / chunk, "first_chunk_s": first}


def measure_ceiling(precision: str) -> float:
    """FLOP/s of a large matmul through jax as the generator computes it at this precision (float32 at
    "highest"/"default", bf16 operands with float32 accumulation at "bfloat16"): the practical peak."""
    n = 4096 if jax.default_backend() != "cpu" else 1536
    a = jax.random.normal(jax.random.key(0), (n, n))
    if precision == "bfloat16":
        a = a.astype(jnp.bfloat16)
        f = jax.jit(lambda x: jnp.dot(x, x, preferred_element_type=jnp.float32))
    else:
        f = jax.jit(lambda x: jnp.dot(x, x, precision=precision))
    return 2 * n**3 / median_seconds(f, a)


def median_seconds(f, x, reps: int = 5) -> float:
    """Median wall time of f(x) after one warm-up (compile) call."""
    f(x).block_until_ready()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        f(x).block_until_ready()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def peak_memory():
    stats = jax.devices()[0].memory_stats() or {}
    return stats.get("peak_bytes_in_use")


def _proc_status_bytes(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _trim_heap() -> None:
    """Hand freed heap back to the OS, so that memory freed earlier (the other side's, the compiler's)
    is not counted as resident."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def resident_before() -> int | None:
    """CPU runs (Linux): the resident size before a measurement. None where that cannot be read."""
    _trim_heap()
    return _proc_status_bytes("VmRSS")


def reset_high_water() -> None:
    """Called after the warm-up chunk: the compiler's and autotuner's transient memory is not the search's."""
    _trim_heap()
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current resident size
    except OSError:
        pass


def resident_peak_since(before: int | None) -> int | None:
    """The most resident memory above ``before`` since the last reset: what the steady steps needed."""
    peak = _proc_status_bytes("VmHWM")
    return None if before is None or peak is None else peak - before


def warm_compile_seconds(resolution: int, seeds: int, precision: str, cache: str) -> list[float]:
    """Cold then warm compile in fresh processes sharing a persistent compilation cache."""
    out = []
    for _ in range(2):
        r = subprocess.run([sys.executable, __file__, "--compile-only", str(resolution), str(seeds),
                            "--precision", precision, "--cache", cache], capture_output=True, text=True)
        if r.returncode != 0:
            raise RuntimeError(r.stderr[-2000:])
        out.append(float(r.stdout.strip().splitlines()[-1]))
    return out


def compile_only(resolution: int, seeds: int, precision: str, cache: str) -> float:
    jax.config.update("jax_compilation_cache_dir", cache)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    model, _, _ = build(resolution)
    return time_ours(model, seeds, reps=1, chunk=1, precision=precision)["compile_s"]


def measure_ours(model, s, args, flops, ceiling) -> dict:
    on_cpu = jax.default_backend() == "cpu"
    resident = resident_before() if on_cpu else None
    try:
        ours = time_ours(model, s, args.reps, args.chunk, args.precision, args.remat,
                         reset_high_water if on_cpu else lambda: None, args.transposed_conv)
    except Exception as e:  # noqa: BLE001 - an out-of-memory is a result; anything else is re-raised
        if not batching.is_out_of_memory(e):
            raise
        return {"ours": "out of memory"}
    return {"ours_step_s": ours["step_s"], "ours_compile_s": ours["compile_s"],
            "ours_seed_steps_per_s": s / ours["step_s"],
            "ours_peak_bytes": resident_peak_since(resident) if on_cpu else peak_memory(),
            "ours_flops_fraction": flops * s / ours["step_s"] / ceiling}


def measure_torch(sd, fit, s, args, device) -> dict:
    resident = resident_before() if device == "cpu" else None
    if device == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    try:
        th = time_torch(sd, fit, s, args.reps, args.chunk, device,
                        reset_high_water if device == "cpu" else lambda: None)
    except torch.OutOfMemoryError:
        th = None
    peak = torch.cuda.max_memory_allocated() if device == "cuda" else resident_peak_since(resident)
    if device == "cuda":
        torch.cuda.empty_cache()  # give the memory back, or jax's later (larger) runs cannot have it
    if th is None:
        return {"torch": "out of memory"}
    return {"torch_step_s": th["step_s"], "torch_seed_steps_per_s": s / th["step_s"], "torch_peak_bytes": peak}


def compile_step(model, seeds: int, precision: str, remat: bool = False, step_loop: str = "host"):
    """The search's step program for one image at this seed count, compiled for the default device (not
    run): one step per call ("host"), or a chunk of steps in a fori_loop ("device", what a GPU runs)."""
    options = pj.RunOptions(precision=precision, remat=remat, step_loop=step_loop)
    return ls.compile_step_program(model, seeds, LR_SIZE, options)


def compiled_step_bytes(model, seeds: int, precision: str, remat: bool = False, step_loop: str = "host") -> int:
    """Device memory the step program needs: arguments, outputs and temporaries, less what is aliased."""
    m = compile_step(model, seeds, precision, remat, step_loop).memory_analysis()
    return m.temp_size_in_bytes + m.argument_size_in_bytes + m.output_size_in_bytes - m.alias_size_in_bytes


def step_bytes_accessed(model, precision: str, remat: bool) -> tuple[float, float]:
    """(bytes per step that do not grow with seeds, bytes per seed) that one step reads and writes, by XLA's
    cost analysis of the program compiled for this device at 1 and 2 seeds: every fusion's operands and
    results, so an estimate of memory traffic that ignores what caches keep."""
    def accessed(seeds):
        cost = compile_step(model, seeds, precision, remat).cost_analysis()
        return float((cost[0] if isinstance(cost, list) else cost)["bytes accessed"])

    one, two = accessed(1), accessed(2)
    return one - (two - one), two - one


def measure_bandwidth() -> float:
    """Bytes per second that an elementwise pass over a large array reads and writes: the memory ceiling of
    a GPU. Not one of a CPU (2-core machine: 8 GB/s, and steps at 256 px "beat" it from cache)."""
    n = 2**28 if jax.default_backend() != "cpu" else 2**25  # float32: 1 GiB on a GPU, 128 MiB on a CPU
    return 2 * 4 * n / median_seconds(jax.jit(lambda v: v * 2.0 + 1.0), jnp.ones((n,), jnp.float32))


def max_fit(model, args, flops, fitted: list[int]) -> list[dict]:
    """The most seeds that fit the device's memory limit, found by running them. A first guess from the
    memory analysis of the program the search runs on this backend (linear in seeds: two small compiles,
    10% margin), then up from there while it fits, or halfway back towards the largest seed count known
    to fit while it does not, at most --max-fit-tries runs. Each run is a fresh process: in one process
    the allocator's pool, grown and fragmented by the runs before, fails sizes that fit a fresh one.
    Allocator peaks of earlier runs make no guess: on a GPU they are mostly the convolution autotuner's
    workspace (H100, TF32: 26.5 GiB at 32 seeds, 28.9 at 64, 57.5 at 128); and the one-step program's
    memory analysis was no better (H100, TF32: 0.45 GB per seed predicted 120 seeds; 120 did not fit)."""
    limit = args.memory_limit_gb * 2**30 if args.memory_limit_gb else \
        (jax.devices()[0].memory_stats() or {}).get("bytes_limit")
    if not limit:
        print("max-fit: the device reports no memory limit; give --memory-limit-gb", flush=True)
        return []
    deadline = time.monotonic() + args.max_fit_seconds
    small = (4, 8)
    loop = ls.default_step_loop()
    need = step_bytes_in_fresh_process(model.config.resolution, small, args)
    per_seed = (need[1] - need[0]) / (small[1] - small[0])
    base = need[1] - per_seed * small[1]
    predicted = max(8, int((0.9 * limit - base) / per_seed) // 8 * 8)
    fits, fails, rows, seeds = max(fitted, default=0), None, [], predicted
    for _ in range(args.max_fit_tries):
        left = deadline - time.monotonic()
        if left < 30:
            break
        row = {"resolution": model.config.resolution, "seeds": seeds, "max_fit_try": True,
               "predicted_max": predicted, "compiled_bytes_per_seed": per_seed, "compiled_bytes_base": base,
               "step_loop": loop, "bytes_limit": limit, "flops_per_seed_step": flops}
        row.update(run_ours_alone(model.config.resolution, seeds, args, left))
        rows.append(row)
        print(json.dumps(row), flush=True)
        if "ours_step_s" in row:
            fits = seeds
        elif row.get("ours") == "out of memory":
            fails = seeds
        else:  # out of time: nothing learnt about this size
            break
        seeds = seeds + max(8, seeds // 4) // 8 * 8 if fails is None else (fits + fails) // 2 // 8 * 8
        if fails is not None and seeds <= fits:
            break
    return rows


def step_bytes_in_fresh_process(resolution: int, seeds: tuple, args) -> list[int]:
    """compiled_step_bytes at these seed counts, compiled in a child process: compiling for a GPU
    autotunes its convolutions in buffers that this process's allocator would keep from the runs after."""
    cmd = [sys.executable, __file__, "--step-bytes", str(resolution), *map(str, seeds),
           "--precision", args.precision, "--malloc", args.malloc] + (["--remat"] if args.remat else [])
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"max-fit: compiling the step failed:\n{r.stderr[-3000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def run_ours_alone(resolution: int, seeds: int, args, timeout: float) -> dict:
    """Our search at this size in a fresh process (a short timed run): its row, or {"ours": why not}."""
    out = Path(os.environ.get("TMPDIR", "/tmp")) / f"pulse_jax_fit_{os.getpid()}_{seeds}.json"
    cmd = [sys.executable, __file__, "--resolutions", str(resolution), "--seeds", str(seeds), "--torch-seeds",
           "--reps", "1", "--chunk", "2", "--precision", args.precision, "--malloc", args.malloc,
           "--out", str(out)] + (["--remat"] if args.remat else [])
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"ours": f"not finished in {timeout:.0f} s"}
    if r.returncode != 0 or not out.exists():
        raise RuntimeError(f"max-fit run at {seeds} seeds failed:\n{r.stderr[-3000:]}")
    row = json.loads(out.read_text())["rows"][0]
    out.unlink()
    return {k: v for k, v in row.items() if k.startswith("ours")}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--resolutions", type=int, nargs="+", default=[256, 1024])
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 4, 16])
    p.add_argument("--torch-seeds", type=int, nargs="*", help="seed counts for torch (default: --seeds)")
    p.add_argument("--ours-seeds", type=int, nargs="*", help="seed counts for ours (default: --seeds)")
    p.add_argument("--reps", type=int, default=3, help="timed chunks per measurement")
    p.add_argument("--chunk", type=int, default=2, help="steps per timed chunk")
    p.add_argument("--precision", default="highest", choices=["highest", "default", "bfloat16"])
    p.add_argument("--remat", action="store_true", help="ours recomputes each block in the backward pass")
    p.add_argument("--torch-tf32", action="store_true", help="let torch use TF32 (its cuDNN default)")
    p.add_argument("--compile-cache", action="store_true", help="also time cold/warm compiles via a cache")
    p.add_argument("--transposed-conv", choices=["phases", "dilated"], default="phases",
                   help="form of the fused upsampling (pulse_jax.generators.layers.TRANSPOSED_CONV_IMPLS)")
    p.add_argument("--max-fit", action="store_true",
                   help="after the table: the most seeds that fit at the largest resolution, found by "
                        "running from a guess (the compiled step's memory), each run a fresh process")
    p.add_argument("--max-fit-tries", type=int, default=3, help="--max-fit: at most this many runs")
    p.add_argument("--max-fit-seconds", type=float, default=600, help="--max-fit: start no run after this long "
                   "(the guess's compiles included), and end each run by then")
    p.add_argument("--memory-limit-gb", type=float,
                   help="the memory limit for --max-fit in GiB (default: the device's own; a CPU has none)")
    p.add_argument("--memory-roofline", action="store_true",
                   help="also estimate the bytes each step moves (XLA's cost analysis, two extra compiles per "
                        "resolution) and report them against a measured memory bandwidth")
    p.add_argument("--out", type=Path, help="JSON results, rewritten after every row (a run stopped by a "
                                             "time limit keeps what it measured)")
    p.add_argument("--malloc", choices=list(MALLOC_SETTINGS), default="huge-pages",
                   help="glibc's malloc settings for both sides: huge pages for its large buffers (what the CLI "
                        "sets, pulse_jax/host_memory.py), its defaults, or freed memory kept in the process")
    p.add_argument("--compile-only", type=int, nargs=2, metavar=("R", "S"))
    p.add_argument("--step-bytes", type=int, nargs="+", metavar="R S",
                   help="print the compiled step's memory at resolution R for each seed count S (JSON list)")
    p.add_argument("--cache", default="")
    args = p.parse_args()
    relaunch_with(malloc_env(args.malloc))
    if args.max_fit:  # a preallocated pool in this process would leave the fresh processes nothing
        os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    if args.compile_only:
        print(compile_only(*args.compile_only, args.precision, args.cache))
        return
    if args.step_bytes:
        model, _, _ = build(args.step_bytes[0])
        print(json.dumps([compiled_step_bytes(model, s, args.precision, args.remat, ls.default_step_loop())
                          for s in args.step_bytes[1:]]))
        return
    device = "cuda" if jax.default_backend() == "gpu" and torch.cuda.is_available() else "cpu"
    torch.backends.cudnn.allow_tf32 = args.torch_tf32
    torch.backends.cuda.matmul.allow_tf32 = args.torch_tf32
    torch.backends.cudnn.benchmark = True
    if device == "cpu":
        torch.set_num_threads(os.cpu_count() or 1)
    ceiling = measure_ceiling(args.precision)
    meta = {"date": time.strftime("%Y-%m-%d"), "machine": platform.machine(), "cpus": os.cpu_count(),
            "device": str(jax.devices()[0].device_kind), "jax": jax.__version__, "torch": torch.__version__,
            "precision": args.precision, "torch_tf32": args.torch_tf32, "ceiling_flops": ceiling,
            "lr_size": LR_SIZE, "transposed_conv": args.transposed_conv, "remat": args.remat,
            "glibc_tunables": os.environ.get("GLIBC_TUNABLES", "")}
    if args.memory_roofline:
        meta["bandwidth_bytes_per_s"] = measure_bandwidth()
    rows = []

    def save():
        if args.out:
            args.out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")

    for r in args.resolutions:
        model, sd, fit = build(r)
        flops = search_step_flops(model.config)
        traffic = step_bytes_accessed(model, args.precision, args.remat) if args.memory_roofline else None
        ours_seeds = args.seeds if args.ours_seeds is None else args.ours_seeds
        torch_seeds = args.seeds if args.torch_seeds is None else args.torch_seeds
        table = {s: {"resolution": r, "seeds": s, "flops_per_seed_step": flops}
                 for s in sorted(set(torch_seeds) | set(ours_seeds))}
        # The PyTorch loop first, at every seed count: it gives its cached memory back after each run,
        # where JAX's allocator keeps the pool it grows, which would leave the PyTorch loop short of memory
        # on a GPU (H100, float32, 32 seeds: out of memory after ours, 43 GiB peak on its own).
        for s in sorted(torch_seeds):
            table[s].update(measure_torch(sd, fit, s, args, device))
            print("torch side:", json.dumps(table[s]), flush=True)
        for s, row in table.items():
            if s in ours_seeds:
                row.update(measure_ours(model, s, args, flops, ceiling))
            if "ours_step_s" in row and "torch_step_s" in row:
                row["speedup"] = row["torch_step_s"] / row["ours_step_s"]
            if traffic and "ours_step_s" in row:
                row["ours_bytes_per_step"] = traffic[0] + traffic[1] * s
                row["ours_bandwidth_fraction"] = (row["ours_bytes_per_step"] / row["ours_step_s"]
                                                  / meta["bandwidth_bytes_per_s"])
            rows.append(row)
            print(json.dumps(row), flush=True)
            save()
        if args.max_fit and r == max(args.resolutions):
            if rows and jax.default_backend() != "cpu":
                # the pool this process's allocator grew for the rows above stays reserved on the device
                print("max-fit skipped: run it in a bench.py of its own, with no table rows (--ours-seeds and "
                      "--torch-seeds with no values), so that this process holds no device memory while the "
                      "fresh processes try each size", flush=True)
                continue
            rows += max_fit(model, args, flops, [row["seeds"] for row in rows
                                                 if row["resolution"] == r and "ours_step_s" in row])
            save()
    if args.compile_cache:
        cache = str(Path(os.environ.get("TMPDIR", "/tmp")) / f"pulse_jax_cc_{os.getpid()}")
        for r in args.resolutions:
            meta[f"compile_cold_warm_s_{r}"] = warm_compile_seconds(r, 1, args.precision, cache)
    print(json.dumps(meta))
    save()


if __name__ == "__main__":
    main()
