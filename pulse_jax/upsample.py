"""Files in -> search -> files out: the orchestration behind ``pulse-jax upsample``.

Inputs are read (inputs.py: a bad one is reported and skipped; the rest still run), grouped by size
and colour, batched and searched (batching.py), and what each finished batch leaves is written
(reports.py). Nothing is written half-way; tests call this without a shell.
"""

from __future__ import annotations

import dataclasses
import threading
import time
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path

import jax
import numpy as np

from pulse_jax.batching import MemoryLimit, batches, default_batch_size, search_fitting
from pulse_jax.config import PulseConfig, RunOptions
from pulse_jax.degrade import Degradation
from pulse_jax.distributed import ProcessGroup
from pulse_jax.errors import PulseJaxError
from pulse_jax.images import save_gif, save_png, to_uint8
from pulse_jax.inputs import InputImage, InputOptions, read_inputs
from pulse_jax.latent_search import current_images
from pulse_jax.model import Model
from pulse_jax.progress import Progress, seed_step_progress
from pulse_jax.reports import (
    REPORT_NAME,
    best_seed,
    load_previous,
    merge_parts,
    outputs_exist,
    part_name,
    remove_parts,
    seed_entries,
    write_index,
    write_json,
    write_sheet,
)

ALONE = ProcessGroup()


class _Stopped(Exception):
    """Raised between search chunks once ``stop`` is set; caught in upsample_files."""


def image_key(base_seed: int, name: str) -> jax.Array:
    """An input's key depends on the seed and its name only, not on what runs beside it."""
    return jax.random.fold_in(jax.random.key(base_seed), zlib.crc32(name.encode()) & 0x7FFFFFFF)


def run_key(config: PulseConfig, seeds: int, seed: int, precision: str, resolution: int) -> str:
    """What must match for an earlier result to count as this run's (config hash and the rest)."""
    return f"{config.hash()}-s{seeds}-seed{seed}-{precision}-r{resolution}"


def with_gray(config: PulseConfig) -> PulseConfig:
    """The config for a grayscale input: compare luma, so the search also colourises."""
    d = Degradation.parse(config.degradation)
    return config if d.gray else dataclasses.replace(config, degradation=str(dataclasses.replace(d, gray=True)))


@dataclasses.dataclass(frozen=True)
class OutputOptions:
    """What is written per input besides its image, sheet and report entry (``pulse-jax upsample`` flags)."""

    all_seeds: bool = False          # every seed's image, <stem>_seed<k>.png
    save_intermediate: bool = False  # the search as an animated GIF, <stem>_search.gif
    overwrite: bool = False          # redo inputs already done, replace outputs made with other settings


@dataclasses.dataclass(frozen=True)
class _Batch:
    """What every batch of one run shares."""

    model: Model
    out_dir: Path
    options: RunOptions
    outputs: OutputOptions
    seeds: int
    seed: int
    mask: np.ndarray | None
    bar: Progress
    check_stop: Callable[[], None]
    log: Callable[[str], None]
    limit: MemoryLimit


def upsample_files(model: Model, inputs: Sequence[Path], out_dir: Path, config: PulseConfig,
                   options: RunOptions | None = None, *, seeds: int = 1, seed: int = 0,
                   batch_size: int | None = None, outputs: OutputOptions | None = None,
                   input_options: InputOptions | None = None, log: Callable[[str], None] = print,
                   show_progress: bool = True, processes: ProcessGroup = ALONE,
                   stop: threading.Event | None = None) -> dict:
    """Upsample every input; returns (and writes) the report and index.html. Failed inputs are listed.

    Args:
      model, config, options: the generator, what to search for, how to run (as for ``search``).
      inputs: image files (folders already listed: ``images.list_inputs``).
      out_dir: where every output goes; created if missing.
      seeds: results per input; seed: the base random seed (an input's keys come from it and its name).
      batch_size: inputs per search (default: by backend and device count, batching.default_batch_size).
      outputs: extra outputs and whether to redo finished work (OutputOptions).
      input_options: how files become inputs: --fit, --mask, --align (InputOptions).
      log: one line for the user; show_progress: the progress bar on stderr.
      processes: this process's place in a job of several (``pulse_jax.distributed``).
      stop: set from a signal handler or another thread: the batch being searched is dropped at its next
        chunk of steps, nothing more starts, and the report says ``"stopped": true``.

    Returns:
      The report (also written as report.json, or this process's part report in a job).

    The report is rewritten after every batch, so an interrupted run keeps what it finished; a rerun
    into the same folder skips inputs already done with the same settings and never replaces an
    output made with other settings unless ``outputs.overwrite``. In a job of several processes, every
    process is given the same inputs and searches its share (by file name); each writes its own part
    report, and process 0 merges them into the report and index.html at the end (``finish_job``).
    """
    options = options or RunOptions()
    outputs = outputs or OutputOptions()
    input_options = input_options or InputOptions()
    if Degradation.parse(config.degradation).mask and input_options.mask is None:
        raise PulseJaxError(f"degradation {config.degradation!r} needs a mask: pass --mask MASK.png")
    out_dir.mkdir(parents=True, exist_ok=True)
    report_path = out_dir / (REPORT_NAME if processes.count == 1 else part_name(processes.index, processes.count))
    resolution = model.generator.resolution
    key = run_key(config, seeds, seed, options.precision, resolution)
    previous = load_previous(out_dir)
    report = {"config": config.to_dict(), "config_hash": config.hash(), "run_key": key, "seeds": seeds,
              "seed": seed, "resolution": resolution, "architecture": model.generator.architecture,
              "precision": options.precision, "run_options": options.to_dict(), "inputs": [],
              "failed": [], "skipped": []}
    if processes.count > 1:
        report["job"] = processes.job
    mine = processes.share([path.stem for path in inputs])
    items, report["failed"] = read_inputs([p for p in inputs if p.stem in mine], resolution, input_options, out_dir,
                                          log)
    todo: list[InputImage] = []
    names: dict[str, Path] = {}
    for item in items:
        done = previous.get(item.name)
        if item.name in names:
            report["failed"].append({"input": str(item.path),
                                     "error": f"{item.path}: same output name as {names[item.name]}; rename one"})
        elif done is not None and done["run_key"] == key and outputs_exist(done) and not outputs.overwrite:
            report["inputs"].append(done)
            report["skipped"].append(item.name)
            log(f"already done with these settings: {item.name} (kept; --overwrite redoes it)")
        elif (out_dir / f"{item.name}.png").exists() and not outputs.overwrite:
            report["failed"].append({"input": str(item.path), "error": (
                f"{item.path}: {out_dir / (item.name + '.png')} exists from other settings; pass --overwrite "
                "to replace it, or choose another --out")})
        else:
            todo.append(item)
        names.setdefault(item.name, item.path)
    groups: dict[tuple[int, bool], list[InputImage]] = {}
    for item in todo:
        groups.setdefault((item.image.shape[0], item.gray), []).append(item)
    devices = len(options.devices) if options.devices is not None else len(jax.local_devices())
    if options.shard is False:
        devices = 1
    batch_size = batch_size or default_batch_size(seeds, devices, jax.default_backend())
    if devices > 1 and seeds % devices and batch_size % devices:
        log(f"note: {devices} devices, but neither --seeds ({seeds}) nor --batch-size ({batch_size}) is a multiple "
            f"of {devices}: a batch that does not split evenly runs on one device")
    label = "search" if processes.count == 1 else f"search [process {processes.index}/{processes.count}]"
    bar = Progress(len(todo) * seeds * config.steps, label, "seed-steps", enabled=show_progress)
    started = time.perf_counter()

    def save_report():
        report["seconds"] = time.perf_counter() - started
        write_json(report_path, report)
        if processes.count == 1:  # a job's index is written once, from every process's part
            write_index(out_dir, report)

    def check_stop():
        if stop is not None and stop.is_set():
            raise _Stopped

    shared = _Batch(model, out_dir, options, outputs, seeds, seed, input_options.mask, bar, check_stop, log,
                    MemoryLimit())
    try:
        for (_, gray), group in sorted(groups.items()):
            group_config = with_gray(config) if gray else config
            for batch in batches(group, batch_size, seeds, devices):
                check_stop()
                entries = _run_batch(shared, batch, group_config)
                report["inputs"] += [dict(e, run_key=key) for e in entries]
                save_report()
    except _Stopped:
        report["stopped"] = True
    save_report()
    if processes.count == 1 and not report.get("stopped"):
        remove_parts(out_dir)
    return report


def finish_job(out_dir: Path, processes: ProcessGroup, log: Callable[[str], None]) -> dict | None:
    """Every process of a job calls this at the end, even after an error: wait for all of them,
    then process 0 merges their part reports (returned; None elsewhere)."""
    log("done; waiting for the other processes")
    processes.barrier("pulse-jax upsample: every part report written")
    return merge_parts(out_dir, processes) if processes.index == 0 else None


def _run_batch(run: _Batch, batch: list[InputImage], config: PulseConfig) -> list[dict]:
    """Search one batch and write its outputs; -> its report entries."""
    lr = np.stack([item.image for item in batch])
    keys = jax.numpy.stack([image_key(run.seed, item.name) for item in batch])
    masks = None if run.mask is None else np.broadcast_to(run.mask, lr.shape[:3])
    frames: list[np.ndarray] = []
    seeds, out_dir = run.seeds, run.out_dir

    def after_chunk(state):
        run.check_stop()
        if run.outputs.save_intermediate:
            # kept as bytes: a frame of 32 inputs x 1 seed at 1024 px is 100 MB, 400 MB as float32
            frames.append(to_uint8(current_images(run.model, config, lr.shape[1], state, run.options)))

    result = search_fitting(run.model, lr, config, run.options, seeds, keys,
                            on_chunk=seed_step_progress(run.bar, after_chunk), log=run.log, masks=masks,
                            limit=run.limit)
    entries = []
    for n, item in enumerate(batch):
        stem = item.name
        k = best_seed(result, n)
        outputs = {"image": str(save_png(result.images[n, k], out_dir / f"{stem}.png")),
                   "sheet": str(write_sheet(out_dir / f"{stem}_sheet.png", item.image, result, n))}
        if run.outputs.all_seeds:
            outputs["seeds"] = [str(save_png(result.images[n, s], out_dir / f"{stem}_seed{s}.png"))
                                for s in range(seeds)]
        whole = [f for f in frames if f.shape[:2] == (len(batch), seeds)]  # parts of a split search don't count
        if run.outputs.save_intermediate and whole:
            outputs["search_gif"] = str(save_gif([f[n, k] for f in whole], out_dir / f"{stem}_search.gif"))
        success = bool(result.success[n].any())
        entries.append({"input": item.name, "file": str(item.path), "size": int(lr.shape[1]),
                        "degradation": config.degradation, "best_seed": k, "success": success,
                        "outputs": outputs, "seeds": seed_entries(result, n),
                        "seconds": result.seconds / len(batch), "compile_seconds": result.compile_seconds})
        if not success:
            run.bar.write(f"note: {item.name}: no seed reached eps={config.eps} "
                          f"(lowest MSE {result.min_l2[n].min():.3g}); the best image is written and flagged in "
                          "the report")
    return entries
