"""Files in -> search -> files out: the work behind ``pulse-jax upsample``.

Every decision lives here (grouping, keys, which seed is "best", what the report
holds) so tests can call it without a shell. A bad input is reported and
skipped; the rest still run; nothing is written half-way.
"""

from __future__ import annotations

import dataclasses
import html
import json
import threading
import time
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path

import jax
import numpy as np
from PIL import Image

from pulse_jax.config import PulseConfig
from pulse_jax.degrade import Degradation
from pulse_jax.distributed import ProcessGroup
from pulse_jax.errors import PulseJaxError
from pulse_jax.images import atomic_write_bytes, center_fit, load_image, resize, save_gif, save_png, sheet, to_uint8
from pulse_jax.latent_search import SearchResult, concat_results, current_images, is_out_of_memory, search
from pulse_jax.model import Model
from pulse_jax.progress import Progress

REPORT_NAME = "report.json"
INDEX_NAME = "index.html"
ALONE = ProcessGroup()
PART_PATTERN = "report.part*of*.json"  # one per process of a distributed run, until merged


class _Stopped(Exception):
    """Raised between search chunks once ``stop`` is set; caught in upsample_files."""


@dataclasses.dataclass
class InputImage:
    path: Path          # the file it came from
    name: str           # output stem: the file's stem, or <stem>_<k> for the k-th aligned face
    image: np.ndarray   # (h, h, 3) in [0, 1]
    gray: bool = False  # match luma only (the file had no colour)


@dataclasses.dataclass
class InputOptions:
    """How files become search inputs (``pulse-jax upsample`` flags)."""

    fit: int | None = None          # centre-crop and resize every input to fit x fit
    mask: np.ndarray | None = None  # (h, h) in {0, 1}: with degradation "+mask", known pixels
    align: int | None = None        # inputs are photos: align each face and downscale to align x align


def image_key(base_seed: int, name: str) -> jax.Array:
    """An input's key depends on the seed and its name only, not on what runs beside it."""
    return jax.random.fold_in(jax.random.key(base_seed), zlib.crc32(name.encode()) & 0x7FFFFFFF)


def check_size(image: np.ndarray, resolution: int, path: Path) -> None:
    h, w = image.shape[:2]
    if h != w:
        raise PulseJaxError(f"{path}: image is {w}x{h}; PULSE needs a square input (crop it to a square, "
                            f"e.g. with pulse-jax align for faces)")
    if resolution % h:
        sizes = ", ".join(str(resolution >> k) for k in range(2, 8))
        raise PulseJaxError(f"{path}: size {h} does not divide the generator's resolution {resolution}; "
                            f"resize it to one of {sizes}")


def best_seed(result: SearchResult, n: int) -> int:
    """The seed to show first: successful seeds before failed ones, then the lowest total loss."""
    order = np.lexsort((result.best_loss[n], ~result.success[n]))
    return int(order[0])


def run_key(config: PulseConfig, seeds: int, seed: int, precision: str, resolution: int) -> str:
    """What must match for an earlier result to count as this run's (config hash and the rest)."""
    return f"{config.hash()}-s{seeds}-seed{seed}-{precision}-r{resolution}"


def read_report(path: Path) -> dict | None:
    try:
        report = json.loads(path.read_text())
        return report if isinstance(report, dict) and isinstance(report.get("inputs"), list) else None
    except (OSError, ValueError):
        return None


def load_previous(out_dir: Path) -> dict[str, dict]:
    """Entries of earlier runs in the folder, by input name ({} if none or unreadable): the report,
    and the part reports of a distributed run stopped before merging them; the newest file wins."""
    entries = {}
    paths = [p for p in [out_dir / REPORT_NAME, *out_dir.glob(PART_PATTERN)] if p.is_file()]
    for path in sorted(paths, key=lambda p: p.stat().st_mtime_ns):
        report = read_report(path) or {"inputs": []}
        entries.update({e["input"]: e for e in report["inputs"]
                        if isinstance(e, dict) and "run_key" in e and "input" in e})
    return entries


def part_name(index: int, count: int) -> str:
    return f"report.part{index}of{count}.json"


def merge_parts(out_dir: Path, group: ProcessGroup) -> dict:
    """After every process finished: one report and index.html for the whole job."""
    merged = {"inputs": [], "failed": [], "skipped": [], "processes": group.count, "seconds": 0.0}
    for k in range(group.count):
        part = read_report(out_dir / part_name(k, group.count))
        if part is not None and part.get("job") != group.job:
            part = None  # left by an earlier job
        if part is None:
            merged["failed"].append({"input": f"process {k}", "error": f"process {k} of {group.count} wrote no "
                                     f"report (see its log); its share of the inputs is not done: run again"})
            continue
        merged.update({name: v for name, v in part.items() if name not in merged and name != "stopped"})
        if part.get("stopped"):
            merged["stopped"] = True
        for field in ("inputs", "failed", "skipped"):
            merged[field] += part.get(field, [])
        merged["seconds"] = max(merged["seconds"], part.get("seconds", 0.0))
    merged["inputs"].sort(key=lambda e: e["input"])
    write_json(out_dir / REPORT_NAME, merged)
    write_index(out_dir, merged)
    remove_parts(out_dir)
    return merged


def remove_parts(out_dir: Path) -> None:
    """After a complete report: part reports are older news (a stopped distributed run's)."""
    for path in out_dir.glob(PART_PATTERN):
        path.unlink(missing_ok=True)


def outputs_exist(entry: dict) -> bool:
    paths = [entry["outputs"].get("image"), entry["outputs"].get("sheet"), *entry["outputs"].get("seeds", [])]
    return all(p and Path(p).is_file() for p in paths)


# Examples (inputs x seeds) searched together per device by default. On a GPU throughput grows with them
# up to about 32 at 1024 px (H200 float32: 90 seed-steps/s at 1, 130 at 8, 149 at 32, 154 at 64; H100
# TF32: flat from 32 to 128; benchmarks/RESULTS.md); on a CPU it falls (1024 px: 1.06 seed-steps/s at 1
# seed, 0.61 at 16), so a CPU searches one input at a time.
EXAMPLES_PER_DEVICE = {"cpu": 1, "gpu": 32, "tpu": 32}


def default_batch_size(seeds: int, devices: int, backend: str = "cpu") -> int:
    """Inputs per search: enough to give each device about EXAMPLES_PER_DEVICE examples, at least one
    input when the seeds split evenly over the devices, else at least one input per device (so that no
    device sits idle and each holds whole inputs, as on a single device)."""
    per_device = EXAMPLES_PER_DEVICE.get(backend, EXAMPLES_PER_DEVICE["gpu"])
    if seeds % devices == 0:
        return max(1, per_device * devices // seeds)
    return devices * max(1, per_device // seeds)


def batches(items: Sequence, batch_size: int, seeds: int, devices: int) -> list[list]:
    """Runs of ``batch_size``; a shorter last run that would not split over the devices goes one by
    one (all on one device it would need more memory than a full run needs per device)."""
    runs = [list(items[i:i + batch_size]) for i in range(0, len(items), batch_size)]
    if devices > 1 and runs and len(runs[-1]) % devices and seeds % devices:
        runs += [[item] for item in runs.pop()]
    return runs


def seed_step_progress(bar: Progress, then: Callable | None = None) -> Callable:
    """An ``on_chunk`` for search(): advance ``bar`` by the seed-steps done, then call ``then(state)``."""
    done_before = [0]

    def on_chunk(done, state):
        if done < done_before[0]:  # a new part of a search split after running out of memory
            done_before[0] = 0
        bar.update((done - done_before[0]) * state.step.size)  # state arrays are (N, S, ...)
        done_before[0] = done
        if then is not None:
            then(state)

    return on_chunk


@dataclasses.dataclass
class MemoryLimit:
    """The fewest examples (images x seeds) seen not to fit the device in this run. Later batches that
    large are split before they are tried: each failed try costs a compile and an allocation."""

    too_big: int | None = None

    def fits(self, examples: int) -> bool:
        return self.too_big is None or examples < self.too_big

    def failed(self, examples: int) -> None:
        self.too_big = examples if self.too_big is None else min(self.too_big, examples)


def search_fitting(model, lr, config, seeds, keys, *, on_chunk, precision, log, seed_offset=0,
                   masks=None, limit: MemoryLimit | None = None) -> SearchResult:
    """search(), and when the device runs out of memory, the same work in halves (images, then seeds).

    Seeds keep their keys when split (seed_offset), so the results are those of one big run. ``limit``
    carries what did not fit from one call to the next.
    """
    limit = limit if limit is not None else MemoryLimit()
    n = lr.shape[0]
    tried = limit.fits(n * seeds)  # else split at once, silently: the first failure was said
    if tried:
        try:
            return search(model, lr, config, seeds=seeds, key=keys, on_chunk=on_chunk, precision=precision,
                          seed_offset=seed_offset, masks=masks)
        except Exception as e:  # noqa: BLE001 - only out-of-memory is handled; everything else re-raised
            if not is_out_of_memory(e):
                raise
        limit.failed(n * seeds)
    later = "; later batches are split up front"
    if n > 1:
        if tried:
            log(f"out of device memory with {n} images x {seeds} seeds; retrying in halves of images{later}")
        h = n // 2
        parts = [search_fitting(model, lr[a:b], config, seeds, keys[a:b], on_chunk=on_chunk, precision=precision,
                                log=log, seed_offset=seed_offset, masks=None if masks is None else masks[a:b],
                                limit=limit)
                 for a, b in ((0, h), (h, n))]
        return concat_results(parts, "images")
    if seeds > 1:
        if tried:
            log(f"out of device memory with 1 image x {seeds} seeds; retrying in halves of seeds{later}")
        h = seeds // 2
        parts = [search_fitting(model, lr, config, b - a, keys, on_chunk=on_chunk, precision=precision, log=log,
                                seed_offset=seed_offset + a, masks=masks, limit=limit)
                 for a, b in ((0, h), (h, seeds))]
        return concat_results(parts, "seeds")
    raise PulseJaxError(
        f"out of device memory searching one image with one seed at {model.config.resolution}px: the largest "
        "batch that fits is none; free the device (another process may hold its memory) or use one with more "
        "memory") from None


def seed_entries(result: SearchResult, n: int) -> list[dict]:
    return [
        {"seed": s, "success": bool(result.success[n, s]), "diverged": bool(result.diverged[n, s]),
         "best_loss": float(result.best_loss[n, s]),
         "best_l2": float(result.best_l2[n, s]), "min_l2": float(result.min_l2[n, s]),
         "best_step": int(result.best_step[n, s]), "first_l2": float(result.l2_history[0, n, s]),
         "final_loss": float(result.loss_history[-1, n, s])}
        for s in range(result.success.shape[1])
    ]


def write_sheet(path: Path, lr: np.ndarray, result: SearchResult, n: int, truth: np.ndarray | None = None) -> Path:
    tile = 256
    panels = [("input (nearest)", resize(lr, tile)),
              ("input (bicubic)", resize(lr, tile, Image.Resampling.BICUBIC))]
    if truth is not None:
        panels.append(("ground truth", resize(truth, tile, Image.Resampling.LANCZOS)))
    for s in range(result.images.shape[1]):
        mark = "ok" if result.success[n, s] else "MISS"
        panels.append((f"seed {s} mse {result.min_l2[n, s]:.2e} {mark}",
                       resize(result.images[n, s], tile, Image.Resampling.LANCZOS)))
    return save_png(sheet(panels, tile), path)


def write_json(path: Path, data: dict) -> None:
    atomic_write_bytes(path, lambda f: f.write((json.dumps(data, indent=2) + "\n").encode()))


def read_inputs(paths: Sequence[Path], model: Model, options: InputOptions, out_dir: Path,
                log: Callable[[str], None]) -> tuple[list[InputImage], list[dict]]:
    """Files -> search inputs, and a failure entry per file that cannot be one (never fatal)."""
    items, failed, said_alpha = [], [], False
    aligner = None
    if options.align:
        from pulse_jax.align import FaceAligner, align_photo

        aligner = FaceAligner()
    for path in paths:
        try:
            if aligner is not None:
                faces = align_photo(aligner, path, options.align)
                for k, face in enumerate(faces):
                    save_png(face, out_dir / "aligned" / f"{path.stem}_{k}.png")
                    items.append(InputImage(path, f"{path.stem}_{k}", face))
                log(f"{path}: {len(faces)} face(s) aligned to {options.align}x{options.align}")
                continue
            loaded = load_image(path)
            if loaded.alpha and not said_alpha:
                log(f"note: alpha channels are dropped (first in {path})")
                said_alpha = True
            image = center_fit(loaded.pixels, options.fit) if options.fit else loaded.pixels
            check_size(image, model.config.resolution, path)
            if options.mask is not None and options.mask.shape != image.shape[:2]:
                raise PulseJaxError(f"{path}: the mask is {options.mask.shape[1]}x{options.mask.shape[0]}, "
                                    f"the image {image.shape[1]}x{image.shape[0]}; they must match")
            items.append(InputImage(path, path.stem, image, loaded.gray))
        except PulseJaxError as e:
            failed.append({"input": str(path), "error": str(e)})
            log(f"skipped: {e}")
    return items, failed


def with_gray(config: PulseConfig) -> PulseConfig:
    """The config for a grayscale input: compare luma, so the search also colourises."""
    d = Degradation.parse(config.degradation)
    return config if d.gray else dataclasses.replace(config, degradation=str(dataclasses.replace(d, gray=True)))


def upsample_files(model: Model, inputs: Sequence[Path], out_dir: Path, config: PulseConfig, *, seeds: int = 1,
                   seed: int = 0, batch_size: int | None = None, all_seeds: bool = False,
                   save_intermediate: bool = False,
                   precision: str = "highest", overwrite: bool = False, options: InputOptions | None = None,
                   log: Callable[[str], None] = print, show_progress: bool = True,
                   processes: ProcessGroup = ALONE, stop: threading.Event | None = None) -> dict:
    """Upsample every input; returns (and writes) the report and index.html. Failed inputs are listed.

    The report is rewritten after every batch, so an interrupted run keeps what it finished; a rerun
    into the same folder skips inputs already done with the same settings and never replaces an
    output made with other settings unless ``overwrite``.

    ``stop`` (set from a signal handler or another thread): the batch being searched is dropped at
    its next chunk of steps, nothing more starts, and the report says ``"stopped": true``.

    In a job of several processes (``processes``), every process is given the same inputs and searches
    its share (by file name; an input's keys come from its name, not from where it runs); each writes
    its own part report, and process 0 merges them into the report and index.html at the end.
    """
    options = options or InputOptions()
    if Degradation.parse(config.degradation).mask and options.mask is None:
        raise PulseJaxError(f"degradation {config.degradation!r} needs a mask: pass --mask MASK.png")
    out_dir.mkdir(parents=True, exist_ok=True)
    report_path = out_dir / (REPORT_NAME if processes.count == 1 else part_name(processes.index, processes.count))
    key = run_key(config, seeds, seed, precision, model.config.resolution)
    previous = load_previous(out_dir)
    report = {"config": config.to_dict(), "config_hash": config.hash(), "run_key": key, "seeds": seeds,
              "seed": seed, "resolution": model.config.resolution, "precision": precision, "inputs": [],
              "failed": [], "skipped": []}
    if processes.count > 1:
        report["job"] = processes.job
    mine = processes.share([path.stem for path in inputs])
    items, report["failed"] = read_inputs([p for p in inputs if p.stem in mine], model, options, out_dir, log)
    todo: list[InputImage] = []
    names: dict[str, Path] = {}
    for item in items:
        done = previous.get(item.name)
        if item.name in names:
            report["failed"].append({"input": str(item.path),
                                     "error": f"{item.path}: same output name as {names[item.name]}; rename one"})
        elif done is not None and done["run_key"] == key and outputs_exist(done) and not overwrite:
            report["inputs"].append(done)
            report["skipped"].append(item.name)
            log(f"already done with these settings: {item.name} (kept; --overwrite redoes it)")
        elif (out_dir / f"{item.name}.png").exists() and not overwrite:
            report["failed"].append({"input": str(item.path), "error": (
                f"{item.path}: {out_dir / (item.name + '.png')} exists from other settings; pass --overwrite "
                "to replace it, or choose another --out")})
        else:
            todo.append(item)
        names.setdefault(item.name, item.path)
    groups: dict[tuple[int, bool], list[InputImage]] = {}
    for item in todo:
        groups.setdefault((item.image.shape[0], item.gray), []).append(item)
    devices = len(jax.local_devices())
    batch_size = batch_size or default_batch_size(seeds, devices, jax.default_backend())
    limit = MemoryLimit()
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
    try:
        for (_, gray), group in sorted(groups.items()):
            group_config = with_gray(config) if gray else config
            for batch in batches(group, batch_size, seeds, devices):
                check_stop()
                entries = _run_batch(model, batch, out_dir, group_config, seeds, seed, all_seeds,
                                     save_intermediate, precision, options.mask, bar, check_stop, log, limit)
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


def _run_batch(model, batch, out_dir, config, seeds, seed, all_seeds, save_intermediate, precision, mask, bar,
               check_stop, log, limit):
    lr = np.stack([item.image for item in batch])
    keys = jax.numpy.stack([image_key(seed, item.name) for item in batch])
    masks = None if mask is None else np.broadcast_to(mask, lr.shape[:3])
    frames: list[np.ndarray] = []

    def after_chunk(state):
        check_stop()
        if save_intermediate:
            # kept as bytes: a frame of 32 inputs x 1 seed at 1024 px is 100 MB, 400 MB as float32
            frames.append(to_uint8(current_images(model, config, lr.shape[1], state, precision)))

    on_chunk = seed_step_progress(bar, after_chunk)
    result = search_fitting(model, lr, config, seeds, keys, on_chunk=on_chunk, precision=precision, log=log,
                            masks=masks, limit=limit)
    entries = []
    for n, item in enumerate(batch):
        stem = item.name
        k = best_seed(result, n)
        outputs = {"image": str(save_png(result.images[n, k], out_dir / f"{stem}.png")),
                   "sheet": str(write_sheet(out_dir / f"{stem}_sheet.png", item.image, result, n))}
        if all_seeds:
            outputs["seeds"] = [str(save_png(result.images[n, s], out_dir / f"{stem}_seed{s}.png"))
                                for s in range(seeds)]
        whole = [f for f in frames if f.shape[:2] == (len(batch), seeds)]  # parts of a split search don't count
        if save_intermediate and whole:
            outputs["search_gif"] = str(save_gif([f[n, k] for f in whole], out_dir / f"{stem}_search.gif"))
        success = bool(result.success[n].any())
        entries.append({"input": item.name, "file": str(item.path), "size": int(lr.shape[1]),
                        "degradation": config.degradation, "best_seed": k, "success": success,
                        "outputs": outputs, "seeds": seed_entries(result, n),
                        "seconds": result.seconds / len(batch), "compile_seconds": result.compile_seconds})
        if not success:
            bar.write(f"note: {item.name}: no seed reached eps={config.eps} "
                      f"(lowest MSE {result.min_l2[n].min():.3g}); the best image is written and flagged in the "
                      "report")
    return entries


def write_index(out_dir: Path, report: dict) -> Path:
    """index.html: every input's sheet with its figures, and what failed."""
    rows = []
    for e in report["inputs"]:
        sheet_name = Path(e["outputs"]["sheet"]).name
        best = e["seeds"][e["best_seed"]]
        status = "within eps" if e["success"] else "NO seed within eps"
        seeds = "".join(f"<li>seed {s['seed']}: MSE {s['min_l2']:.2e}, loss {s['best_loss']:.4g}, step "
                        f"{s['best_step']}{' (diverged)' if s.get('diverged') else ''}</li>" for s in e["seeds"])
        rows.append(f"<section><h2>{html.escape(e['input'])} ({status})</h2>"
                    f"<img src='{html.escape(sheet_name)}' alt='sheet'><p>best seed {e['best_seed']}: MSE "
                    f"{best['min_l2']:.2e}; degradation {html.escape(e.get('degradation', 'bicubic'))}</p>"
                    f"<ul>{seeds}</ul></section>")
    failed = "".join(f"<li>{html.escape(f['error'])}</li>" for f in report["failed"])
    stopped = ("<p><b>stopped before the end</b>: the same command again does the rest</p>"
               if report.get("stopped") else "")
    page = (f"<!doctype html><meta charset='utf-8'><title>pulse-jax run</title>"
            f"<style>body{{font-family:sans-serif;margin:2em}}img{{max-width:100%}}</style>"
            f"<h1>pulse-jax: {len(report['inputs'])} inputs, {len(report['failed'])} failed</h1>{stopped}"
            f"<p>config {html.escape(json.dumps(report.get('config')))}; seeds {report.get('seeds')}; "
            f"resolution {report.get('resolution')}</p>{''.join(rows)}"
            + (f"<h2>Failed</h2><ul>{failed}</ul>" if failed else ""))
    path = out_dir / INDEX_NAME
    atomic_write_bytes(path, lambda f: f.write(page.encode()))
    return path
