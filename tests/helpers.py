"""What many test files share: the one way to run our commands in a subprocess, the parity checks against
the PyTorch references, a compile counter, and checkpoint writers. Fixtures live in conftest.py."""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(__file__).parent / "data"


# ---- subprocesses -------------------------------------------------------------------------------------


def command_env(**extra: str) -> dict[str, str]:
    """The environment for our commands in a subprocess: this repository importable, and huge pages
    already asked for where they apply, so that a command does not start a second time to ask
    (host_memory.relaunch_with_huge_pages, tested on its own in host_memory_test.py)."""
    from pulse_jax.host_memory import huge_pages_env_here

    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests")]), **extra}
    return huge_pages_env_here(env) or env


def _argv(args) -> list[str]:
    return [sys.executable, *map(str, args)]


def run_python(*args, env: dict | None = None, timeout: float = 600, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    """``python ARGS...`` to the end, output captured as text (``env``: command_env() unless given)."""
    return subprocess.run(_argv(args), cwd=cwd, env=env or command_env(), capture_output=True, text=True,
                          timeout=timeout)


def start_python(*args, env: dict | None = None, cwd: Path = ROOT) -> subprocess.Popen:
    """``python ARGS...`` started in the background (for kills, signals and processes that meet)."""
    return subprocess.Popen(_argv(args), cwd=cwd, env=env or command_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def finish_all(procs: list[subprocess.Popen], timeout: float = 600) -> list[subprocess.CompletedProcess]:
    results = []
    for p in procs:
        out, err = p.communicate(timeout=timeout)
        results.append(subprocess.CompletedProcess(p.args, p.returncode, out, err))
    return results


def pulse_jax(*args, **kw) -> subprocess.CompletedProcess:
    """The ``pulse-jax`` command, as a user runs it."""
    return run_python("-m", "pulse_jax.cli", *args, **kw)


def convert(*args, **kw) -> subprocess.CompletedProcess:
    """``python -m convert``."""
    return run_python("-m", "convert", *args, **kw)


def _here(main, args) -> subprocess.CompletedProcess:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main([str(a) for a in args])
        except SystemExit as e:
            code = e.code
    return subprocess.CompletedProcess(args, code, out.getvalue(), err.getvalue())


def pulse_jax_here(*args) -> subprocess.CompletedProcess:
    """The ``pulse-jax`` command run in this process (``cli.main``): its exit status and what it printed,
    without a process start and with this process's compiled programs. ``pulse_jax()`` where a real
    process matters: signals, the huge-pages restart, a fresh interpreter."""
    from pulse_jax import cli

    return _here(cli.main, args)


def convert_here(*args) -> subprocess.CompletedProcess:
    """``python -m convert`` run in this process (see pulse_jax_here)."""
    from convert.__main__ import main

    return _here(main, args)


# ---- parity -------------------------------------------------------------------------------------------


def relative_error(got, want) -> np.ndarray:
    """|got - want| relative to want's standard deviation (a scale that every layer's outputs share)."""
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    return np.abs(got - want) / want.std()


def assert_parity(got, want, max_rel: float, mean_rel: float) -> None:
    err = relative_error(got, want)
    assert err.max() < max_rel and err.mean() < mean_rel, (err.max(), err.mean())


def assert_float32_parity(ours, reference32, reference64, *, factor: float = 10.0, floor: float = 1e-5) -> dict:
    """Our float32 result against the PyTorch reference run in float64 (the specification's numbers), with
    a bar derived from the reference's own float32 error on the same inputs: ours may be at most
    ``factor`` times as far from float64 as torch's float32 run is (max and mean, relative to the std;
    anything under ``floor`` passes). A bar calibrated on one CPU's float32 rounding fails on another's
    (tests/stylegan1_test.py's gradient test did); this one moves with it. 10x: two float32
    implementations that sum in different orders differ from float64 by up to ~3.5x each other's error
    (measured over every parity test here), while a wrong formula is off by 1e-2 of the std or more.
    Returns the measured errors."""
    ours_err, ref_err = relative_error(ours, reference64), relative_error(reference32, reference64)
    measured = {"ours_max": float(ours_err.max()), "ours_mean": float(ours_err.mean()),
                "torch32_max": float(ref_err.max()), "torch32_mean": float(ref_err.mean())}
    assert ours_err.max() <= max(factor * ref_err.max(), floor), measured
    assert ours_err.mean() <= max(factor * ref_err.mean(), floor), measured
    return measured


# ---- compiles -----------------------------------------------------------------------------------------

_LOWERING = "/jax/core/compile/jaxpr_to_mlir_module_duration"  # once per program lowered (compiled or cached)


@contextlib.contextmanager
def counting_compiles():
    """Counts the programs jax lowers while inside (each one a compile, or a persistent-cache load), by
    function name, through jax's public monitoring hooks. Yields the dict, filled as they happen."""
    counts: dict[str, int] = {}

    def listener(event: str, duration: float, **kwargs):
        if event == _LOWERING:
            name = str(kwargs.get("fun_name", "?"))
            name = name[4:-1] if name.startswith("jit(") and name.endswith(")") else name
            counts[name] = counts.get(name, 0) + 1

    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        yield counts
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)


# ---- checkpoints --------------------------------------------------------------------------------------


@contextlib.contextmanager
def storages_tagged_cuda():
    """Make torch.save tag every storage 'cuda:0', as PULSE's files (saved from a GPU) are.

    A tagger registered ahead of torch's own; removed again afterwards.
    """
    registry = torch.serialization._package_registry
    entry = (-1, lambda obj: "cuda:0", lambda obj, location: None)
    registry.insert(0, entry)
    try:
        yield
    finally:
        registry.remove(entry)


def save_checkpoint(obj, path: Path, fmt: str) -> Path:
    """fmt 'zip' (torch >= 1.6 default) or 'legacy' (PULSE's era: non-zip, storages tagged cuda:0)."""
    if fmt == "zip":
        torch.save(obj, path)
    else:
        with storages_tagged_cuda():
            torch.save(obj, path, _use_new_zipfile_serialization=False)
    return path


# ---- runs ---------------------------------------------------------------------------------------------


def upsample(model, inputs, out: Path, *, stop=None, log=None, processes=None, **kw) -> dict:
    """upsample_files without a progress bar: the UpsampleJob's fields, and OutputOptions' (all_seeds,
    save_intermediate, overwrite, sheets), as keywords; config defaults to 2 steps."""
    import pulse_jax as pj
    from pulse_jax.job import OutputOptions, UpsampleJob
    from pulse_jax.upsample import ALONE, upsample_files

    kw.setdefault("config", pj.PulseConfig(steps=2))
    outputs = OutputOptions(**{f: kw.pop(f) for f in ("all_seeds", "save_intermediate", "overwrite", "sheets")
                               if f in kw})
    job = UpsampleJob(model, output_options=outputs, **kw)
    return upsample_files(job, list(inputs), Path(out), show_progress=False, log=log or (lambda m: None),
                          processes=processes or ALONE, stop=stop)
