"""What a run leaves beside its images: report.json (resumable), sheets, index.html, and merged parts."""

from __future__ import annotations

import contextlib
import fcntl
import html
import json
import math
import os
import re
from pathlib import Path

import numpy as np
from PIL import Image

from pulse_jax.distributed import ProcessGroup
from pulse_jax.images import resize, save_png, sheet
from pulse_jax.latent_search import SearchResult
from pulse_jax.safe_files import atomic_write_bytes

REPORT_NAME = "report.json"
INDEX_NAME = "index.html"
PART_PATTERN = "report.part*of*.json"  # one per process of a distributed run, until merged


def best_seed(result: SearchResult, n: int) -> int:
    """The seed to show first: successful seeds before failed ones, then the lowest total loss."""
    order = np.lexsort((result.best_loss[n], ~result.success[n]))
    return int(order[0])


def seed_entries(result: SearchResult, n: int) -> list[dict]:
    """Image n's figures, one entry per seed."""
    return [
        {"seed": s, "success": bool(result.success[n, s]), "diverged": bool(result.diverged[n, s]),
         "best_loss": float(result.best_loss[n, s]),
         "best_l2": float(result.best_l2[n, s]), "min_l2": float(result.min_l2[n, s]),
         "best_step": int(result.best_step[n, s]), "first_l2": float(result.l2_history[0, n, s]),
         "final_loss": float(result.loss_history[-1, n, s])}
        for s in range(result.success.shape[1])
    ]


def write_sheet(path: Path, lr: np.ndarray, result: SearchResult, n: int, truth: np.ndarray | None = None,
                degradation: str = "bicubic") -> Path:
    """input (nearest, titled with its degradation) | input (bicubic) | [ground truth] | every seed with its MSE."""
    tile = 256
    shown = re.sub(r"kernel:([^+]*)", lambda m: "kernel:" + Path(m[1]).name, degradation)  # no folders in a title
    panels = [(f"input: {shown}", resize(lr, tile)),
              ("input (bicubic)", resize(lr, tile, Image.Resampling.BICUBIC))]
    if truth is not None:
        panels.append(("ground truth", resize(truth, tile, Image.Resampling.LANCZOS)))
    for s in range(result.images.shape[1]):
        mark = "ok" if result.success[n, s] else "MISS"
        panels.append((f"seed {s} mse {result.min_l2[n, s]:.2e} {mark}",
                       resize(result.images[n, s], tile, Image.Resampling.LANCZOS)))
    return save_png(sheet(panels, tile), path)


def strict_json(value):
    """NaN and infinities as null (strict JSON parsers reject NaN/Infinity); everything else as it is."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: strict_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict_json(v) for v in value]
    return value


def write_json(path: Path, data: dict) -> None:
    text = json.dumps(strict_json(data), indent=2, allow_nan=False) + "\n"
    atomic_write_bytes(path, lambda f: f.write(text.encode()))


@contextlib.contextmanager
def folder_lock(out_dir: Path):
    """While inside, no other pulse-jax run reads or writes this folder's report (an advisory lock on the
    folder itself: no lock file to leave behind): concurrent runs into one folder each merge with what
    the other wrote."""
    fd = os.open(out_dir, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def merge_into_report(path: Path, report: dict, entries: dict[str, dict]) -> dict:
    """Read ``path``, keep every entry of inputs this run did not touch, put this run's ``entries``
    (by input name; None removes one) over them, write it with this run's header fields, and return
    what was written. Call under folder_lock."""
    on_disk = read_report(path) or {"inputs": []}
    merged = {e["input"]: e for e in on_disk["inputs"] if isinstance(e, dict) and "input" in e}
    merged.update(entries)
    merged = {name: e for name, e in merged.items() if e is not None}  # None: this run dropped the entry
    report = dict(report, inputs=[merged[name] for name in sorted(merged)])
    write_json(path, report)
    return report


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


def entry_paths(entry: dict) -> list[str]:
    """Every output file an entry names (finished or planned)."""
    outputs = entry.get("outputs") or {}
    paths = [outputs.get("image"), outputs.get("sheet"), outputs.get("search_gif"), *outputs.get("seeds", []),
             *outputs.get("planned", [])]
    return [p for p in paths if p]


def outputs_exist(entry: dict) -> bool:
    return not entry.get("pending") and all(Path(p).is_file() for p in entry_paths(entry))


def part_name(index: int, count: int) -> str:
    return f"report.part{index}of{count}.json"


def merge_parts(out_dir: Path, group: ProcessGroup) -> dict:
    """After every process finished: one report and index.html for the whole job."""
    merged = {"inputs": [], "failed": [], "skipped": [], "searched": [], "processes": group.count, "seconds": 0.0}
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
        for field in ("inputs", "failed", "skipped", "searched"):
            merged[field] += part.get(field, [])
        merged["seconds"] = max(merged["seconds"], part.get("seconds", 0.0))
    with folder_lock(out_dir):  # earlier runs' entries stay; this job's win for its inputs
        merged = merge_into_report(out_dir / REPORT_NAME, merged, {e["input"]: e for e in merged["inputs"]})
    write_index(out_dir, merged)
    remove_parts(out_dir)
    return merged


def remove_parts(out_dir: Path) -> None:
    """After a complete report: part reports are older news (a stopped distributed run's)."""
    for path in out_dir.glob(PART_PATTERN):
        path.unlink(missing_ok=True)


def write_index(out_dir: Path, report: dict) -> Path:
    """index.html: every input's sheet with its figures, and what failed."""
    rows = []
    finished = [e for e in report["inputs"] if not e.get("pending")]
    for e in finished:
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
            f"<h1>pulse-jax: {len(finished)} inputs, {len(report['failed'])} failed</h1>{stopped}"
            f"<p>config {html.escape(json.dumps(report.get('config')))}; seeds {report.get('seeds')}; "
            f"resolution {report.get('resolution')}</p>{''.join(rows)}"
            + (f"<h2>Failed</h2><ul>{failed}</ul>" if failed else ""))
    path = out_dir / INDEX_NAME
    atomic_write_bytes(path, lambda f: f.write(page.encode()))
    return path
