"""What a run leaves beside its images: report.json (resumable), sheets, index.html, and merged parts."""

from __future__ import annotations

import html
import json
from pathlib import Path

import numpy as np
from PIL import Image

from pulse_jax.distributed import ProcessGroup
from pulse_jax.images import atomic_write_bytes, resize, save_png, sheet
from pulse_jax.latent_search import SearchResult

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


def write_sheet(path: Path, lr: np.ndarray, result: SearchResult, n: int, truth: np.ndarray | None = None) -> Path:
    """input (nearest) | input (bicubic) | [ground truth] | every seed with its MSE."""
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


def outputs_exist(entry: dict) -> bool:
    paths = [entry["outputs"].get("image"), entry["outputs"].get("sheet"), *entry["outputs"].get("seeds", [])]
    return all(p and Path(p).is_file() for p in paths)


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
