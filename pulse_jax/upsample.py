"""Files in -> search -> files out: the orchestration behind ``pulse-jax upsample``.

Inputs are listed (inputs.py: a bad one is reported and skipped; the rest still run), grouped by size and
colour, batched and searched (batching.py); while the next batch searches, a background writer
(writer.py) writes what the last one found, and each input is recorded in the run journal (journal.py)
once its files are whole. report.json and index.html are made from the journal (reports.py). Nothing is
written half-way; tests call this without a shell.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import os
import threading
import time
import zlib
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import jax
import numpy as np

from pulse_jax import latents, spread
from pulse_jax.batching import MemoryLimit, SearchRequest, batches, default_batch_size, search_fitting
from pulse_jax.config import PulseConfig
from pulse_jax.distributed import ProcessGroup
from pulse_jax.errors import PulseJaxError
from pulse_jax.images import save_gif, save_png, to_uint8
from pulse_jax.inputs import InputImage, printable, read_inputs
from pulse_jax.job import OutputOptions, UpsampleJob
from pulse_jax.journal import Journal, journal_name, journal_paths, read_journals
from pulse_jax.progress import Progress, seed_step_progress
from pulse_jax.reports import (
    INDEX_PATTERN,
    REPORT_NAME,
    IndexWriter,
    best_seed,
    build_report,
    entry_paths,
    folder_lock,
    is_ours,
    legacy_entries,
    outputs_exist,
    seed_entries,
    write_report,
    write_sheet,
)
from pulse_jax.safe_files import check_writable_folder, remove_stale_temporaries
from pulse_jax.writer import OutputWriter

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
    writer: OutputWriter
    commit_written: Callable[[], None]  # record what the writer finished (between chunks of steps too)
    misses: Iterator[int] = dataclasses.field(default_factory=itertools.count)  # inputs that missed eps, so far


# Inputs whose outputs may wait to be written while the next batch searches, in batches: memory holds at
# most this many batches' images besides the one being searched.
BATCHES_WAITING = 2
MISSES_SAID = 10  # inputs that missed eps said one by one; the rest are in the report and the index


def upsample_files(job: UpsampleJob, inputs: Sequence[Path], out_dir: Path, *, log: Callable[[str], None] = print,
                   show_progress: bool = True, processes: ProcessGroup = ALONE, shard: tuple[int, int] | None = None,
                   stop: threading.Event | None = None) -> dict:
    """Upsample every input (of this process's and this shard's share); returns the report of the run,
    also written as report.json with index.html. Failed inputs are listed, never fatal.

    Args:
      job: the model, what to search for, how, and what to write (UpsampleJob: checked and resolved).
      inputs: image files (folders already listed: ``images.list_inputs``).
      out_dir: where every output goes; created if missing.
      log: one line for the user; show_progress: the progress bar on stderr.
      processes: this process's place in a job of several (``pulse_jax.distributed``).
      shard: (i, n): search only the i-th of n shares of the inputs (dealt by name), e.g. one task of a
        job array; each shard keeps its own journal in ``out_dir``.
      stop: set from a signal handler or another thread: the batch being searched is dropped at its next
        chunk of steps, nothing more starts, outputs being written are finished, and the report says
        ``"stopped": true``.

    The journal (journal.py) records every batch as it goes, so an interrupted run keeps what it
    finished; a rerun into the same folder skips inputs already done with the same settings and never
    replaces an output made with other settings unless ``job.output_options.overwrite``.
    """
    config, options, seeds = job.config, job.options, job.seeds
    check_out_dir(out_dir, inputs)
    check_writable_folder(out_dir)
    check_our_files(out_dir)
    resolution = job.model.generator.resolution
    key = job.run_key
    journal_path = out_dir / journal_name(shard, (processes.index, processes.count))
    with folder_lock(out_dir):  # the start of runs on this host, one at a time: leftovers, the journal's birth
        remove_stale_temporaries(out_dir)
        journal = Journal(journal_path)
        adopt_legacy_report(journal, out_dir)
    previous = all_entries(out_dir, journal)
    header = {"config": config.to_dict(), "config_hash": config.hash(), "eps": config.effective_eps,
              "eps_reason": config.eps_reason, "run_key": key, "seeds": seeds,
              "seed": job.seed, "resolution": resolution, "architecture": job.model.generator.architecture,
              "model_checksum": job.model.checksum, "precision": options.precision,
              "run_options": options.to_dict()}
    if processes.count > 1:
        header["job"], header["process"] = processes.job, [processes.index, processes.count]
    if shard is not None:
        header["shard"] = list(shard)
    journal.start_run(header)
    mine = share(sorted({path.stem for path in inputs}), processes, shard)
    items, failed = read_inputs([p for p in inputs if p.stem in mine], resolution, job.input_options, out_dir, log,
                                config.degradation)
    todo, kept, refused = plan(items, previous, out_dir, inputs, job, log)
    failed += refused
    journal.fail(failed)
    searched: list[str] = []
    groups: dict[tuple[int, bool], list[InputImage]] = {}
    for item in todo:
        groups.setdefault((item.size, item.gray), []).append(item)
    devices = len(options.devices) if options.devices is not None else len(jax.local_devices())
    if options.shard is False:
        devices = 1
    batch_size = job.batch_size or default_batch_size(seeds, devices, jax.default_backend(), resolution)
    if devices > 1 and seeds % devices and batch_size % devices:
        log(f"note: {devices} devices, but neither --seeds ({seeds}) nor --batch-size ({batch_size}) is a multiple "
            f"of {devices}: a batch that does not split evenly runs on one device")
    label = "search" if processes.count == 1 else f"search [process {processes.index}/{processes.count}]"
    bar = Progress(len(todo) * seeds * config.steps, label, "seed-steps", enabled=show_progress)
    started = time.perf_counter()
    index = IndexWriter(out_dir)

    def run_report(stopped: bool = False) -> dict:
        entries = all_entries(out_dir, journal)
        run = {"failed": failed, "skipped": sorted(kept), "searched": list(searched), "stopped": stopped,
               "seconds": time.perf_counter() - started}
        return build_report(header, entries, run)

    def commit_written() -> None:
        """Record what the writer finished (one transaction), and say what failed."""
        finished = run.writer.finished()
        entries, failures = {}, []
        for name, entry, error in finished:
            entries[name] = None if entry is None else dict(entry, run_key=key)
            if error is not None:
                failures.append({"input": name, "error": error})
                log(f"failed: {error}")
        if entries:
            journal.record(entries, previous)
        if failures:
            journal.fail(failures)
            failed.extend(failures)
        if run.writer.disk_full is not None:  # every later write would fail too: stop, keeping what finished
            raise run.writer.disk_full

    def check_stop():
        if stop is not None and stop.is_set():
            raise _Stopped

    current: list[InputImage] = []
    stopped = False
    # Two threads where there are two cores: PNG encoding releases the GIL, and at small sizes writing an
    # input costs more than searching it (benchmarks/RESULTS.md, "Throughput").
    writer = OutputWriter(max_waiting=BATCHES_WAITING * batch_size, threads=min(2, os.cpu_count() or 1))
    run = _Run(job, out_dir, bar, check_stop, log, MemoryLimit(), writer, commit_written)
    try:
        for (_, gray), group in sorted(groups.items()):
            group_config = with_gray(config) if gray else config
            for batch in batches(group, batch_size, seeds, devices):
                check_stop()
                # Claimed (pending) first: a kill between an input's files and its entry leaves it pending,
                # so a rerun knows those files are this program's unfinished work and redoes them.
                taken = journal.claim({item.name: pending_entry(item, out_dir, job) for item in batch}, key,
                                      previous)
                for name in taken:
                    log(f"skipped: {name} is being searched, or was finished, by another run into this folder "
                        "since this one started")
                batch = [item for item in batch if item.name not in taken]
                if not batch:
                    continue
                current = batch
                searched_now, load_failures = _search_batch(run, batch, group_config)
                current = []
                searched += searched_now
                if load_failures:
                    journal.record({name: None for name in load_failures}, previous)
                    journal.fail(load_failures.values())
                    failed.extend(load_failures.values())
                commit_written()
                index.maybe_write(run_report)
    except _Stopped:
        stopped = True
        # The batch being searched wrote nothing (its outputs come after its search): its claims are dropped.
        journal.record({item.name: None for item in current}, previous)
    finally:
        run.writer.close()  # what was searched is written whole, even when stopped
        commit_written()
    report = run_report(stopped)
    journal.end_run(stopped=stopped, searched=searched, skipped=sorted(kept))
    if processes.count == 1:  # a job's report is written once, by process 0, from every process's journal
        write_report(out_dir, report)
        index.write(report)
    return report


def share(names: Sequence[str], processes: ProcessGroup, shard: tuple[int, int] | None) -> set[str]:
    """The input names this process of this shard searches: the sorted distinct names dealt out in turn to
    the shards, then to the processes. Dealing by name keeps every file that would write the same output
    in one share, where the clash is found and reported."""
    if shard is not None:
        i, n = shard
        names = sorted(set(names))[i::n]
    return processes.share(names)


def all_entries(out_dir: Path, journal: Journal) -> dict[str, dict]:
    """Every input's latest entry in this folder: this process's journal and every other (read only)."""
    entries, _ = read_journals(out_dir, skip=journal.path)
    for name, entry in journal.entries().items():
        if name not in entries or entry["_updated"] >= entries[name]["_updated"]:
            entries[name] = entry
    return entries


def adopt_legacy_report(journal: Journal, out_dir: Path) -> None:
    """A folder written by an earlier version (report.json and part reports, no journal): its entries go
    into the new journal once, so that the run resumes it as that version would have."""
    if len(journal_paths(out_dir)) > 1 or journal.entries():
        return
    old = legacy_entries(out_dir)
    if old:
        journal.adopt(old)


def check_our_files(out_dir: Path) -> None:
    """report.json and index pages in --out must be ours: a user's files of those names are never replaced."""
    for path in [out_dir / REPORT_NAME, *out_dir.glob("index*.html")]:
        if path.name == REPORT_NAME or INDEX_PATTERN.match(path.name):
            if (path.exists() or path.is_symlink()) and not is_ours(path):
                raise PulseJaxError(f"{path} exists and was not written by pulse-jax; a run writes its report there: "
                                    "move the file, or choose another --out")


def finish_job(out_dir: Path, processes: ProcessGroup, log: Callable[[str], None]) -> dict | None:
    """Every process of a job calls this at the end, even after an error: wait for all of them, then
    process 0 writes report.json and index.html from every process's journal (returned; None elsewhere)."""
    log("done; waiting for the other processes")
    processes.barrier("pulse-jax upsample: every journal written")
    if processes.index != 0:
        return None
    return write_folder_report(out_dir, job=processes)


def write_folder_report(out_dir: Path, job: ProcessGroup | None = None) -> dict:
    """report.json and index.html from every journal in the folder (``pulse-jax report``; a job's end). The
    header is the latest run's (of ``job``'s processes when given: a process of it that left no run is a
    failure of the job); failed / skipped / searched join every journal's latest run."""
    entries, runs = read_journals(out_dir)
    failed = []
    if job is not None:
        runs = [r for r in runs if r["header"].get("job") == job.job]
        seen = {r["header"].get("process", [0])[0] for r in runs}
        failed = [{"input": f"process {k}", "error": f"process {k} of {job.count} recorded no run (see its log); its "
                   "share of the inputs is not done: run again"} for k in range(job.count) if k not in seen]
    if not runs and not failed:
        raise PulseJaxError(f"{out_dir} holds no run journal (journal*.sqlite): nothing to report")
    latest = max(runs, key=lambda r: r["started"]) if runs else {"header": {}}
    run = {"failed": [f for r in runs for f in r["failed"]] + failed,
           "skipped": [s for r in runs for s in r["skipped"]],
           "searched": [s for r in runs for s in r["searched"]], "stopped": any(r["stopped"] for r in runs)}
    report = build_report(latest["header"], entries, run)
    if job is not None:
        report["processes"] = job.count
    if len(runs) > 1:
        report["journals"] = len(runs)
    check_our_files(out_dir)
    write_report(out_dir, report)
    IndexWriter(out_dir).write(report)
    return report


def _search_batch(run: _Run, batch: list[InputImage], config: PulseConfig) -> tuple[list[str], dict[str, dict]]:
    """Read one batch's pixels, search it, and hand its outputs to the writer; -> (the names searched, the
    failure entries of inputs whose file could not be read now, by name)."""
    job = run.job
    loaded, unreadable = [], {}
    for item in batch:
        try:
            loaded.append((item, item.load()))
        except PulseJaxError as e:
            unreadable[item.name] = {"input": printable(item.path), "error": str(e)}
            run.log(f"skipped: {e}")
    if not loaded:
        return [], unreadable
    batch = [item for item, _ in loaded]
    lr = np.stack([pixels for _, pixels in loaded])
    keys = jax.numpy.stack([image_key(job.seed, item.name) for item in batch])
    masks = None if job.input_options.mask is None else np.broadcast_to(job.input_options.mask, lr.shape[:3])
    frames: list[np.ndarray] = []

    def after_chunk(chunk):
        run.check_stop()
        run.commit_written()  # the last batch's outputs, written meanwhile: recorded now, not after this search
        if job.output_options.save_intermediate:
            # kept as bytes: a frame of 32 inputs x 1 seed at 1024 px is 100 MB, 400 MB as float32
            frames.append(to_uint8(chunk.images()))

    init = None if job.start is None else job.start.for_batch(len(batch), job.seeds)
    request = SearchRequest(job.model, config, job.options, job.seeds, lr, keys, masks, init=init,
                            perceptual=job.perceptual)
    result = search_fitting(request, on_chunk=seed_step_progress(run.bar, after_chunk), log=run.log,
                            limit=run.limit)
    whole = [f for f in frames if f.shape[:2] == (len(batch), job.seeds)]  # parts of a split search don't count
    for n, item in enumerate(batch):
        run.writer.submit(item.name, functools.partial(_write_input, run, item, lr[n], result, n, config, whole))
    return [item.name for item in batch], unreadable


def _write_input(run: _Run, item: InputImage, lr: np.ndarray, result, n: int, config: PulseConfig,
                 frames: list[np.ndarray]) -> dict:
    """One input's files and report entry (on the writer's thread); PulseJaxError: it is a failure."""
    job, out_dir, seeds = run.job, run.out_dir, run.job.seeds
    where = printable(item.path)
    if result.diverged[n].all():  # nothing finite to show: a failure, not a black image called a result
        raise PulseJaxError(f"{where}: all {seeds} seeds diverged (NaN or infinity in the loss or its gradient); "
                            "nothing was written for it: check the model (pulse-jax convert refuses non-finite "
                            "weights) and the input")
    stem = item.name
    k = best_seed(result, n)
    outputs = {"image": str(save_png(result.images[n, k], out_dir / f"{stem}.png"))}
    sheets = job.output_options.sheets
    if sheets != "none":
        shown = range(seeds) if sheets == "all" else [k]
        outputs["sheet"] = str(write_sheet(out_dir / f"{stem}_sheet.png", lr, result, n,
                                           degradation=str(config.degradation), seeds=shown))
    if job.output_options.all_seeds:
        outputs["seeds"] = [str(save_png(result.images[n, s], out_dir / f"{stem}_seed{s}.png")) for s in range(seeds)]
    if job.output_options.spread and seeds > 1:
        outputs["spread"] = str(spread.write_spread(out_dir / f"{stem}_spread.png", result, n))
    if job.output_options.save_latents:
        found = latents.of_result(result, n, job.model, config, job.options)
        outputs["latents"] = str(latents.write(found, out_dir / f"{stem}{latents.SUFFIX}"))
    if job.output_options.save_intermediate and frames:
        outputs["search_gif"] = str(save_gif([f[n, k] for f in frames], out_dir / f"{stem}_search.gif"))
    success = bool(result.success[n].any())
    if not success:
        missed = next(run.misses)
        if missed < MISSES_SAID:
            run.bar.write(f"note: {item.name}: no seed reached eps={config.effective_eps:.3g} "
                          f"(lowest MSE {result.min_l2[n].min():.3g}); the best image is written and flagged in the "
                          "report" + ("; further misses are listed in the report and the index only"
                                      if missed == MISSES_SAID - 1 else ""))
    return {"input": item.name, "file": str(item.path), "input_sha256": item.sha256, "size": int(lr.shape[0]),
            "degradation": str(config.degradation), "best_seed": k, "success": success, "outputs": outputs,
            "seeds": seed_entries(result, n),
            "spread": spread.figures(result, n, job.perceptual) if seeds > 1 else None,
            "seconds": result.seconds / result.images.shape[0],
            "compile_seconds": result.compile_seconds}


def recorded_names(entry: dict) -> set[str]:
    """The names of the files an entry records (all in the output folder, however --out was spelled)."""
    return {Path(p).name for p in entry_paths(entry)}


def planned_outputs(out_dir: Path, name: str, seeds: int, outputs: OutputOptions) -> list[Path]:
    """Every file this run will write for the input ``name`` (checked for clashes before any search)."""
    paths = [out_dir / f"{name}.png"]
    if outputs.sheets != "none":
        paths.append(out_dir / f"{name}_sheet.png")
    if outputs.all_seeds:
        paths += [out_dir / f"{name}_seed{s}.png" for s in range(seeds)]
    if outputs.save_intermediate:
        paths.append(out_dir / f"{name}_search.gif")
    if outputs.spread and seeds > 1:
        paths.append(out_dir / f"{name}_spread.png")
    if outputs.save_latents:
        paths.append(out_dir / f"{name}{latents.SUFFIX}")
    return paths


def pending_entry(item: InputImage, out_dir: Path, job: UpsampleJob) -> dict:
    """An input about to be searched and written: its planned files belong to this program."""
    planned = [str(p) for p in planned_outputs(out_dir, item.name, job.seeds, job.output_options)]
    return {"input": item.name, "file": str(item.path), "input_sha256": item.sha256, "run_key": job.run_key,
            "pending": True, "outputs": {"image": planned[0], "planned": planned[1:]}}


def _name_max(folder: Path) -> int:
    try:
        return os.pathconf(folder, "PC_NAME_MAX")
    except (OSError, ValueError):
        return 255


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
    name_max = _name_max(out_dir)
    for item in items:
        longest = max(len(os.fsencode(p.name)) for p in planned_outputs(out_dir, item.name, seeds, outputs))
        if longest > name_max:
            failed.append({"input": printable(item.path), "error": (
                f"{printable(item.path)}: its outputs' names would be {longest} bytes long, and this filesystem allows "
                f"{name_max}; rename the input (shorter)")})
            continue
        named = planned_outputs(out_dir, item.name, seeds, outputs)
        planned = [p.resolve() for p in named]  # compared resolved (links, ..); named as the user sees them
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
              and done.get("input_sha256") == item.sha256 and {p.name for p in named} <= recorded_names(done)):
            kept[item.name] = done
            reason = None
        else:
            reason = None
            ours = done is not None and done.get("pending")  # unfinished by an earlier run: redo, replacing
            # Done with these settings, but asked for more (--all-seeds, --save-latents, ...): redone,
            # replacing only the files its entry records.
            same = done is not None and done.get("run_key") == key and done.get("input_sha256") == item.sha256
            recorded = recorded_names(done) if same else set()
            existing = next((p for p in named if (p.exists() or p.is_symlink()) and p.name not in recorded), None)
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
    if kept:
        shown = ", ".join(sorted(kept)[:3]) + (", ..." if len(kept) > 3 else "")
        log(f"already done with these settings: {len(kept)} input(s) ({shown}); kept (--overwrite redoes them)")
    return todo, kept, failed
