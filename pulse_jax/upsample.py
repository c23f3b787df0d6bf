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

from pulse_jax.batching import MemoryLimit, SearchRequest, batches, default_batch_size, search_fitting
from pulse_jax.config import PulseConfig
from pulse_jax.distributed import ProcessGroup
from pulse_jax.errors import PulseJaxError
from pulse_jax.images import save_gif, save_png, to_uint8
from pulse_jax.inputs import InputImage, printable, read_inputs
from pulse_jax.job import OutputOptions, UpsampleJob
from pulse_jax.progress import Progress, seed_step_progress
from pulse_jax.reports import (
    REPORT_NAME,
    best_seed,
    entry_paths,
    folder_lock,
    load_previous,
    merge_into_report,
    merge_parts,
    outputs_exist,
    part_name,
    remove_parts,
    seed_entries,
    write_index,
    write_sheet,
)
from pulse_jax.safe_files import check_writable_folder, remove_stale_temporaries

ALONE = ProcessGroup()


class _Stopped(Exception):
    """Raised between search chunks once ``stop`` is set; caught in upsample_files."""


def image_key(base_seed: int, name: str) -> jax.Array:
    """An input's key depends on the seed and its name only, not on what runs beside it."""
    return jax.random.fold_in(jax.random.key(base_seed), zlib.crc32(name.encode()) & 0x7FFFFFFF)


def with_gray(config: PulseConfig) -> PulseConfig:
    """The config for a grayscale input: compare luma, so the search also colourises (a grayscale file
    under bayer is the mosaic itself: its values are compared as they are)."""
    d = config.degradation
    if d.gray or d.bayer:
        return config
    return dataclasses.replace(config, degradation=dataclasses.replace(d, gray=True, spelled=None))


@dataclasses.dataclass(frozen=True)
class _Run:
    """One run's job and the machinery every batch of it uses."""

    job: UpsampleJob
    out_dir: Path
    bar: Progress
    check_stop: Callable[[], None]
    log: Callable[[str], None]
    limit: MemoryLimit


def upsample_files(job: UpsampleJob, inputs: Sequence[Path], out_dir: Path, *, log: Callable[[str], None] = print,
                   show_progress: bool = True, processes: ProcessGroup = ALONE,
                   stop: threading.Event | None = None) -> dict:
    """Upsample every input; returns (and writes) the report and index.html. Failed inputs are listed.

    Args:
      job: the model, what to search for, how, and what to write (UpsampleJob: checked and resolved).
      inputs: image files (folders already listed: ``images.list_inputs``).
      out_dir: where every output goes; created if missing.
      log: one line for the user; show_progress: the progress bar on stderr.
      processes: this process's place in a job of several (``pulse_jax.distributed``).
      stop: set from a signal handler or another thread: the batch being searched is dropped at its next
        chunk of steps, nothing more starts, and the report says ``"stopped": true``.

    Returns:
      The report (also written as report.json, or this process's part report in a job).

    The report is rewritten after every batch, so an interrupted run keeps what it finished; a rerun
    into the same folder skips inputs already done with the same settings and never replaces an
    output made with other settings unless ``job.output_options.overwrite``. In a job of several processes, every
    process is given the same inputs and searches its share (by file name); each writes its own part
    report, and process 0 merges them into the report and index.html at the end (``finish_job``).
    """
    config, options, seeds = job.config, job.options, job.seeds
    check_out_dir(out_dir, inputs)
    check_writable_folder(out_dir)
    report_path = out_dir / (REPORT_NAME if processes.count == 1 else part_name(processes.index, processes.count))
    resolution = job.model.generator.resolution
    key = job.run_key
    with folder_lock(out_dir):
        remove_stale_temporaries(out_dir)
        previous = load_previous(out_dir)
    report = {"config": config.to_dict(), "config_hash": config.hash(), "eps": config.effective_eps,
              "eps_reason": config.eps_reason, "run_key": key, "seeds": seeds,
              "seed": job.seed, "resolution": resolution, "architecture": job.model.generator.architecture,
              "model_checksum": job.model.checksum, "precision": options.precision,
              "run_options": options.to_dict(), "inputs": [], "failed": [], "skipped": [], "searched": []}
    if processes.count > 1:
        report["job"] = processes.job
    mine = processes.share([path.stem for path in inputs])
    items, report["failed"] = read_inputs([p for p in inputs if p.stem in mine], resolution, job.input_options, out_dir,
                                          log, config.degradation)
    todo, kept, refused = plan(items, previous, out_dir, inputs, job, log)
    report["failed"] += refused
    report["skipped"] = sorted(kept)
    entries: dict[str, dict] = dict(kept)
    groups: dict[tuple[int, bool], list[InputImage]] = {}
    for item in todo:
        groups.setdefault((item.image.shape[0], item.gray), []).append(item)
    devices = len(options.devices) if options.devices is not None else len(jax.local_devices())
    if options.shard is False:
        devices = 1
    batch_size = job.batch_size or default_batch_size(seeds, devices, jax.default_backend())
    if devices > 1 and seeds % devices and batch_size % devices:
        log(f"note: {devices} devices, but neither --seeds ({seeds}) nor --batch-size ({batch_size}) is a multiple "
            f"of {devices}: a batch that does not split evenly runs on one device")
    label = "search" if processes.count == 1 else f"search [process {processes.index}/{processes.count}]"
    bar = Progress(len(todo) * seeds * config.steps, label, "seed-steps", enabled=show_progress)
    started = time.perf_counter()

    def save_report(batch_entries: dict[str, dict] | None = None):
        nonlocal report
        entries.update(batch_entries or {})
        report["seconds"] = time.perf_counter() - started
        with folder_lock(out_dir):  # merged with what other runs into this folder wrote meanwhile
            report = merge_into_report(report_path, report, entries)
        if processes.count == 1:  # a job's index is written once, from every process's part
            write_index(out_dir, report)

    def check_stop():
        if stop is not None and stop.is_set():
            raise _Stopped

    current: list[InputImage] = []
    run = _Run(job, out_dir, bar, check_stop, log, MemoryLimit())
    try:
        for (_, gray), group in sorted(groups.items()):
            group_config = with_gray(config) if gray else config
            for batch in batches(group, batch_size, seeds, devices):
                check_stop()
                # Pending first: a kill between an input's files and its entry leaves the entry pending,
                # so a rerun knows those files are this program's unfinished work and redoes them.
                save_report({item.name: pending_entry(item, out_dir, job) for item in batch})
                current = batch
                done, diverged = _run_batch(run, batch, group_config)
                report["searched"] += [item.name for item in batch]
                report["failed"] += diverged
                save_report({name: None if e is None else dict(e, run_key=key) for name, e in done.items()})
    except _Stopped:
        report["stopped"] = True
        # The batch being searched wrote nothing (its outputs come after the search): not pending.
        entries.update({item.name: previous.get(item.name) for item in current})
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


def _run_batch(run: _Run, batch: list[InputImage], config: PulseConfig) -> tuple[dict, list]:
    """Search one batch and write its outputs; -> (its report entries by name, its failures)."""
    job, out_dir = run.job, run.out_dir
    seeds = job.seeds
    lr = np.stack([item.image for item in batch])
    keys = jax.numpy.stack([image_key(job.seed, item.name) for item in batch])
    masks = None if job.input_options.mask is None else np.broadcast_to(job.input_options.mask, lr.shape[:3])
    frames: list[np.ndarray] = []

    def after_chunk(chunk):
        run.check_stop()
        if job.output_options.save_intermediate:
            # kept as bytes: a frame of 32 inputs x 1 seed at 1024 px is 100 MB, 400 MB as float32
            frames.append(to_uint8(chunk.images()))

    request = SearchRequest(job.model, config, job.options, seeds, lr, keys, masks)
    result = search_fitting(request, on_chunk=seed_step_progress(run.bar, after_chunk), log=run.log,
                            limit=run.limit)
    done, diverged = {}, []
    for n, item in enumerate(batch):
        stem = item.name
        if result.diverged[n].all():  # nothing finite to show: a failure, not a black image called a result
            diverged.append({"input": printable(item.path), "error": (
                f"{printable(item.path)}: all {seeds} seeds diverged (NaN or infinity in the loss or its gradient); "
                "nothing was written for it: check the model (pulse-jax convert refuses non-finite weights) and "
                "the input")})
            done[item.name] = None
            continue
        k = best_seed(result, n)
        outputs = {"image": str(save_png(result.images[n, k], out_dir / f"{stem}.png")),
                   "sheet": str(write_sheet(out_dir / f"{stem}_sheet.png", item.image, result, n,
                                            degradation=str(config.degradation)))}
        if job.output_options.all_seeds:
            outputs["seeds"] = [str(save_png(result.images[n, s], out_dir / f"{stem}_seed{s}.png"))
                                for s in range(seeds)]
        whole = [f for f in frames if f.shape[:2] == (len(batch), seeds)]  # parts of a split search don't count
        if job.output_options.save_intermediate and whole:
            outputs["search_gif"] = str(save_gif([f[n, k] for f in whole], out_dir / f"{stem}_search.gif"))
        success = bool(result.success[n].any())
        done[item.name] = {"input": item.name, "file": str(item.path), "input_sha256": item.sha256,
                           "size": int(lr.shape[1]), "degradation": str(config.degradation), "best_seed": k,
                           "success": success, "outputs": outputs, "seeds": seed_entries(result, n),
                           "seconds": result.seconds / len(batch), "compile_seconds": result.compile_seconds}
        if not success:
            run.bar.write(f"note: {item.name}: no seed reached eps={config.effective_eps:.3g} "
                          f"(lowest MSE {result.min_l2[n].min():.3g}); the best image is written and flagged in "
                          "the report")
    return done, diverged


def planned_outputs(out_dir: Path, name: str, seeds: int, outputs: OutputOptions) -> list[Path]:
    """Every file this run will write for the input ``name`` (checked for clashes before any search)."""
    paths = [out_dir / f"{name}.png", out_dir / f"{name}_sheet.png"]
    if outputs.all_seeds:
        paths += [out_dir / f"{name}_seed{s}.png" for s in range(seeds)]
    if outputs.save_intermediate:
        paths.append(out_dir / f"{name}_search.gif")
    return paths


def pending_entry(item: InputImage, out_dir: Path, job: UpsampleJob) -> dict:
    """An input about to be searched and written: its planned files belong to this program."""
    planned = [str(p) for p in planned_outputs(out_dir, item.name, job.seeds, job.output_options)]
    return {"input": item.name, "file": str(item.path), "input_sha256": item.sha256, "run_key": job.run_key,
            "pending": True, "outputs": {"image": planned[0], "sheet": planned[1], "planned": planned[2:]}}


def check_out_dir(out_dir: Path, inputs: Sequence[Path]) -> None:
    """--out may not be a folder the inputs come from: outputs would mix with the inputs, replace them
    (a.png is both an input and an output name), and be read as inputs by the next run."""
    folders = {p.resolve().parent for p in inputs}
    if out_dir.resolve() in folders:
        example = next(p for p in inputs if p.resolve().parent == out_dir.resolve())
        raise PulseJaxError(f"--out {out_dir} is the folder of the input {printable(example)}: the outputs would mix "
                            "with the inputs and could replace them; choose another --out")


def plan(items: list[InputImage], previous: dict[str, dict], out_dir: Path, inputs: Sequence[Path], job: UpsampleJob,
         log: Callable[[str], None]):
    """-> (inputs to search, {name: entry} already done and kept, failure entries).

    Every file a run would write is checked before any search: against the other inputs of this run,
    against the files earlier runs wrote for other inputs (the report says whose each file is), against
    the input files themselves, and against files of unknown origin (kept unless --overwrite)."""
    seeds, key, outputs = job.seeds, job.run_key, job.output_options
    input_files = {p.resolve() for p in inputs}
    owner: dict[Path, str] = {}
    for name, entry in previous.items():
        for path in entry_paths(entry):
            owner[Path(path).resolve()] = name
    todo, kept, failed, claimed, names = [], {}, [], {}, {}
    for item in items:
        planned = [p.resolve() for p in planned_outputs(out_dir, item.name, seeds, outputs)]
        done = previous.get(item.name)
        where = printable(item.path)
        clash = next((p for p in planned if claimed.get(p, item.name) != item.name), None)
        taken = next((p for p in planned if owner.get(p, item.name) != item.name), None)
        over_input = next((p for p in planned if p in input_files), None)
        if item.name in names:
            reason = f"{where}: same output name as {printable(names[item.name])}; rename one"
        elif clash is not None:
            reason = f"{where}: its output {clash.name} is also an output of {claimed[clash]}; rename one"
        elif taken is not None:
            reason = (f"{where}: its output {taken.name} was written for the input {owner[taken]} by an earlier "
                      "run into this folder; rename one, or choose another --out")
        elif over_input is not None:
            reason = f"{where}: its output would replace the input file {over_input}; choose another --out"
        elif (done is not None and not outputs.overwrite and done.get("run_key") == key and outputs_exist(done)
              and done.get("input_sha256") == item.sha256):
            kept[item.name] = done
            log(f"already done with these settings: {item.name} (kept; --overwrite redoes it)")
            reason = None
        else:
            reason = None
            ours = done is not None and done.get("pending")  # unfinished by an earlier run: redo, replacing
            existing = next((p for p in planned if p.exists()), None)
            if existing is not None and not ours and not outputs.overwrite:
                why = ("from other settings (or another version of the input)" if done is not None else
                       "and is not recorded as an output of this folder's runs")
                reason = (f"{where}: {existing} exists {why}; pass --overwrite to replace it, or choose another "
                          "--out")
            else:
                todo.append(item)
        if reason is not None:
            failed.append({"input": where, "error": reason})
        else:
            claimed.update({p: item.name for p in planned})
        names.setdefault(item.name, item.path)
    return todo, kept, failed
