"""What a run leaves beside its images: sheets, report.json and a paged index.html, both made from the run
journal (journal.py) so that their cost does not grow with every batch.

report.json keeps its schema (the latest run's header, every input's entry sorted by name, this run's
failed / skipped / searched lists) and is strict JSON; it is written when a run ends or is stopped, and by
``pulse-jax report``. index.html is the first of pages of PAGE_SIZE sheets (lazy-loaded images, links
between pages, pages listing what failed and what missed eps); while a run goes on it is rewritten at most
every few seconds, and only the pages whose content changed.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import html
import json
import math
import os
import re
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from pulse_jax.images import to_uint8
from pulse_jax.safe_files import atomic_write_bytes

REPORT_NAME = "report.json"
REPORT_FORMAT = "pulse-jax-report"
INDEX_NAME = "index.html"
PAGE_SIZE = 200           # sheets per index page: a page opens fast whatever the run's size
LIST_PAGE_SIZE = 2000     # names per page of the failed / missed lists
GENERATOR_META = '<meta name="generator" content="pulse-jax">'
INDEX_PATTERN = re.compile(r"^index(-\d+|-failed(-\d+)?|-missed(-\d+)?)?\.html$")
SHEET_TILE = 256
# Sheets are previews: fast zlib (level 1) writes them ~2x faster than PIL's default (6) for ~15% more
# bytes (benchmarks/RESULTS.md); the images themselves keep the default.
SHEET_PNG_LEVEL = 1
PART_PATTERN = "report.part*of*.json"  # part reports of an earlier version's distributed runs


def best_seed(result, n: int) -> int:
    """The seed to show first: successful seeds before failed ones, then the lowest total loss."""
    order = np.lexsort((result.best_loss[n], ~result.success[n]))
    return int(order[0])


def seed_entries(result, n: int) -> list[dict]:
    """Image n's figures, one entry per seed."""
    return [
        {"seed": s, "success": bool(result.success[n, s]), "diverged": bool(result.diverged[n, s]),
         "best_loss": float(result.best_loss[n, s]),
         "best_l2": float(result.best_l2[n, s]), "min_l2": float(result.min_l2[n, s]),
         "best_step": int(result.best_step[n, s]), "first_l2": float(result.l2_history[0, n, s]),
         "final_loss": float(result.loss_history[-1, n, s]), **searched_noise_figures(result, n, s)}
        for s in range(result.success.shape[1])
    ]


def searched_noise_figures(result, n: int, s: int) -> dict:
    """Each searched noise map's mean and std at the end (N(0, 1) at the start): how far the search took
    them (PULSE's critics: "extreme values"). Nothing without searched maps."""
    maps = getattr(result, "searched_noise", ())
    if not maps:
        return {}
    return {"searched_noise": [{"map": int(i), "mean": float(np.mean(result.noise[i][n, s])),
                                "std": float(np.std(result.noise[i][n, s]))} for i in maps]}


def _tile(image: np.ndarray, resample) -> Image.Image:
    return Image.fromarray(to_uint8(image)).resize((SHEET_TILE, SHEET_TILE), resample)


def sheet_image(lr: np.ndarray, images: Sequence[np.ndarray], captions: Sequence[str], *,
                truth: np.ndarray | None = None, degradation: str = "bicubic") -> Image.Image:
    """input (nearest, titled with its degradation) | input (bicubic) | [ground truth] | each image, captioned.
    In bytes throughout (each panel converted once)."""
    shown = re.sub(r"kernel:([^+]*)", lambda m: "kernel:" + Path(m[1]).name, degradation)  # no folders in a title
    panels = [(f"input: {shown}", _tile(lr, Image.Resampling.NEAREST)),
              ("input (bicubic)", _tile(lr, Image.Resampling.BICUBIC))]
    if truth is not None:
        panels.append(("ground truth", _tile(truth, Image.Resampling.LANCZOS)))
    panels += [(caption, _tile(image, Image.Resampling.LANCZOS)) for caption, image in zip(captions, images,
                                                                                             strict=True)]
    label_h = 18
    out = Image.new("RGB", (SHEET_TILE * len(panels), SHEET_TILE + label_h), "white")
    draw = ImageDraw.Draw(out)
    for i, (caption, tile) in enumerate(panels):
        out.paste(tile, (i * SHEET_TILE, label_h))
        draw.text((i * SHEET_TILE + 3, 3), caption[:40], fill="black")
    return out


def seed_captions(result, n: int, seeds: Sequence[int]) -> list[str]:
    return [f"seed {s} mse {result.min_l2[n, s]:.2e} {'ok' if result.success[n, s] else 'MISS'}" for s in seeds]


def write_sheet(path: Path, lr: np.ndarray, result, n: int, truth: np.ndarray | None = None,
                degradation: str = "bicubic", seeds: Sequence[int] | None = None) -> Path:
    """The sheet of image n of a search: its input, and each of ``seeds`` (default all) with its MSE."""
    seeds = range(result.images.shape[1]) if seeds is None else seeds
    image = sheet_image(lr, [result.images[n, s] for s in seeds], seed_captions(result, n, seeds), truth=truth,
                        degradation=degradation)
    atomic_write_bytes(path, lambda f: image.save(f, format="PNG", compress_level=SHEET_PNG_LEVEL))
    return path


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
    """While inside, no other pulse-jax run on this host starts in this folder (an advisory lock on the
    folder itself: no lock file to leave behind)."""
    fd = os.open(out_dir, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def read_report(path: Path) -> dict | None:
    try:
        report = json.loads(path.read_text())
        return report if isinstance(report, dict) and isinstance(report.get("inputs"), list) else None
    except (OSError, ValueError):
        return None


def legacy_entries(out_dir: Path) -> dict[str, dict]:
    """Entries an earlier version kept in report.json and in part reports (no journal yet), by input name;
    the newest file wins. What they say is checked where it is used: an entry that is not a dict with a
    string name is ignored."""
    entries = {}
    paths = [p for p in [out_dir / REPORT_NAME, *out_dir.glob(PART_PATTERN)] if p.is_file()]
    for path in sorted(paths, key=lambda p: p.stat().st_mtime_ns):
        report = read_report(path) or {"inputs": []}
        entries.update({e["input"]: e for e in report["inputs"]
                        if isinstance(e, dict) and isinstance(e.get("input"), str) and "run_key" in e})
    return entries


def entry_paths(entry: dict) -> list[str]:
    """Every output file an entry names (finished or planned); what is not a path is ignored."""
    outputs = entry.get("outputs")
    if not isinstance(outputs, dict):
        return []
    seeds, planned = outputs.get("seeds"), outputs.get("planned")
    paths = [outputs.get("image"), outputs.get("sheet"), outputs.get("search_gif"), outputs.get("latents"),
             outputs.get("spread"),
             *(seeds if isinstance(seeds, list) else []), *(planned if isinstance(planned, list) else [])]
    return [p for p in paths if isinstance(p, str) and p]


def outputs_exist(entry: dict) -> bool:
    paths = entry_paths(entry)
    return bool(paths) and not entry.get("pending") and all(Path(p).is_file() for p in paths)


def public(entry: dict) -> dict:
    """An entry as report.json shows it (the journal's bookkeeping fields left out)."""
    return {k: v for k, v in entry.items() if not k.startswith("_")}


def build_report(header: dict, entries: dict[str, dict], run: dict) -> dict:
    """report.json's content: the run's header, every input's entry by name, the run's lists."""
    report = {"format": REPORT_FORMAT, **header, "inputs": [public(entries[name]) for name in sorted(entries)],
              "failed": list(run.get("failed", [])), "skipped": sorted(run.get("skipped", [])),
              "searched": list(run.get("searched", []))}
    if run.get("stopped"):
        report["stopped"] = True
    if "seconds" in run:
        report["seconds"] = run["seconds"]
    return report


def write_report(out_dir: Path, report: dict) -> Path:
    path = out_dir / REPORT_NAME
    write_json(path, report)
    return path


def is_ours(path: Path) -> bool:
    """A report.json or index page this program wrote (any version), judged by its content."""
    try:
        with open(path, "rb") as f:
            head = f.read(4096)
    except OSError:
        return False
    if path.suffix == ".html":
        text = head.decode("utf-8", "replace")
        return GENERATOR_META in text or text.startswith("<!doctype html><meta charset='utf-8'><title>pulse-jax run")
    report = read_report(path)
    return report is not None and (report.get("format") == REPORT_FORMAT or "run_key" in report
                                   or "config_hash" in report)


# ---- index pages --------------------------------------------------------------------------------------

_STYLE = ("<style>body{font-family:sans-serif;margin:2em}img{max-width:100%;height:auto}nav a{margin-right:.5em}"
          ".ok{color:#060}.miss{color:#a00}section{margin:1.5em 0}</style>")


def _page_name(k: int) -> str:
    return INDEX_NAME if k == 1 else f"index-{k}.html"


def _list_name(kind: str, k: int) -> str:
    return f"index-{kind}.html" if k == 1 else f"index-{kind}-{k}.html"


def _nav(current: int, pages: int, failed: int, missed: int) -> str:
    """A page's links. Only the first page lists every page (and the counts): another page's links depend on
    its neighbours alone, so that a growing run rewrites the first and the last pages, not every page."""
    links = [] if current == 1 else [f"<a href='{INDEX_NAME}'>first</a>",
                                     f"<a href='{_page_name(current - 1)}' rel='prev'>previous</a>"]
    if current < pages:
        links.append(f"<a href='{_page_name(current + 1)}' rel='next'>next</a>")
    if current == 1:
        links.append("pages: " + " ".join("<b>1</b>" if k == 1 else f"<a href='{_page_name(k)}'>{k}</a>"
                                          for k in range(1, pages + 1)))
        if failed:
            links.append(f"<a href='{_list_name('failed', 1)}'>{failed} failed</a>")
        if missed:
            links.append(f"<a href='{_list_name('missed', 1)}'>{missed} not within eps</a>")
    return f"<nav>{' | '.join(links)}</nav>"


def _entry_html(e: dict) -> str:
    name = html.escape(str(e.get("input", "?")))
    outputs = e.get("outputs") if isinstance(e.get("outputs"), dict) else {}
    picture = outputs.get("sheet") or outputs.get("image") or ""
    src = html.escape(Path(picture).name) if picture else ""
    seeds = e.get("seeds") if isinstance(e.get("seeds"), list) else []
    best = e.get("best_seed", 0)
    best_entry = seeds[best] if isinstance(best, int) and 0 <= best < len(seeds) else {}
    ok = bool(e.get("success"))
    status = "<span class='ok'>within eps</span>" if ok else "<span class='miss'>NO seed within eps</span>"

    def num(x, fmt):
        return format(x, fmt) if isinstance(x, (int, float)) and math.isfinite(x) else "?"

    rows = "".join(f"<li>seed {s.get('seed')}: MSE {num(s.get('min_l2'), '.2e')}, loss "
                   f"{num(s.get('best_loss'), '.4g')}, step {s.get('best_step')}"
                   f"{' (diverged)' if s.get('diverged') else ''}</li>"
                   for s in seeds if isinstance(s, dict))
    image = (f"<a href='{src}'><img src='{src}' alt='{name}' loading='lazy' decoding='async'></a>" if src else "")
    return (f"<section id='{name}'><h2>{name} ({status})</h2>{image}<p>best seed {best}: MSE "
            f"{num(best_entry.get('min_l2'), '.2e')}; degradation {html.escape(str(e.get('degradation', 'bicubic')))}"
            f"</p><details><summary>seeds</summary><ul>{rows}</ul></details></section>")


def _page(title: str, body: str) -> str:
    return (f"<!doctype html><html lang='en'><head><meta charset='utf-8'>{GENERATOR_META}"
            f"<meta name='viewport' content='width=device-width'><title>{html.escape(title)}</title>{_STYLE}"
            f"</head><body>{body}</body></html>")


def index_pages(report: dict) -> dict[str, str]:
    """Every page of the index: file name -> HTML."""
    finished = [e for e in report["inputs"] if not e.get("pending")]
    missed = [e for e in finished if not e.get("success")]
    failed = report.get("failed", [])
    pending = len(report["inputs"]) - len(finished)
    pages = max(1, -(-len(finished) // PAGE_SIZE))
    summary = (f"<h1>pulse-jax: {len(finished)} inputs, {len(finished) - len(missed)} within eps, {len(missed)} not"
               f", {len(failed)} failed{f', {pending} unfinished' if pending else ''}</h1>")
    if report.get("stopped"):
        summary += "<p><b>stopped before the end</b>: the same command again does the rest</p>"
    config = html.escape(json.dumps(report.get("config")))
    summary += f"<p>config {config}; seeds {report.get('seeds')}; resolution {report.get('resolution')}</p>"
    page_of = {id(e): 1 + i // PAGE_SIZE for i, e in enumerate(finished)}
    out = {}
    for k in range(1, pages + 1):
        nav = _nav(k, pages, len(failed), len(missed))
        chunk = finished[(k - 1) * PAGE_SIZE: k * PAGE_SIZE]
        body = (summary if k == 1 else f"<h1>pulse-jax: page {k}</h1>") + nav
        out[_page_name(k)] = _page(f"pulse-jax run, page {k}", body + "".join(map(_entry_html, chunk)) + nav)
    for kind, items, line in (
            ("failed", failed, lambda f: html.escape(str(f.get("error", f)))),
            ("missed", missed, lambda e: (f"<a href='{_page_name(page_of[id(e)])}#"
                                          f"{html.escape(str(e['input']))}'>{html.escape(str(e['input']))}</a>"))):
        lists = max(1, -(-len(items) // LIST_PAGE_SIZE)) if items else 0
        for k in range(1, lists + 1):
            chunk = items[(k - 1) * LIST_PAGE_SIZE: k * LIST_PAGE_SIZE]
            links = [f"<a href='{INDEX_NAME}'>index</a>"]
            if k > 1:
                links.append(f"<a href='{_list_name(kind, k - 1)}' rel='prev'>previous</a>")
            if k < lists:
                links.append(f"<a href='{_list_name(kind, k + 1)}' rel='next'>next</a>")
            title = "failed" if kind == "failed" else "not within eps"
            out[_list_name(kind, k)] = _page(
                f"pulse-jax run, {title}", f"<h1>{title}, page {k}</h1><nav>{' | '.join(links)}</nav><ul>"
                + "".join(f"<li>{line(x)}</li>" for x in chunk) + "</ul>")
    return out


class IndexWriter:
    """Writes the index pages that changed since it last wrote them; ``maybe_write`` at most every
    ``interval`` seconds, and no more often than 20 times a write's own duration (so that a large index
    takes a bounded share of a run)."""

    def __init__(self, out_dir: Path, interval: float = 5.0):
        self.out_dir, self.interval = out_dir, interval
        self.written: dict[str, str] = {}   # page -> sha256 of what this writer last wrote there
        self.last, self.cost = 0.0, 0.0

    def write(self, report: dict) -> None:
        pages = index_pages(report)
        for name, text in pages.items():
            data = text.encode()
            digest = hashlib.sha256(data).hexdigest()
            if self.written.get(name) != digest:
                atomic_write_bytes(self.out_dir / name, lambda f, data=data: f.write(data))
                self.written[name] = digest
        for path in self.out_dir.glob("index*.html"):  # pages of ours a smaller index no longer has
            if path.name not in pages and INDEX_PATTERN.match(path.name) and is_ours(path):
                path.unlink(missing_ok=True)
                self.written.pop(path.name, None)

    def maybe_write(self, report: Callable[[], dict]) -> bool:
        """Build the report and write the pages if it is time (the cost measured includes the build)."""
        if time.monotonic() - self.last < max(self.interval, 20 * self.cost):
            return False
        started = time.perf_counter()
        self.write(report())
        self.last, self.cost = time.monotonic(), time.perf_counter() - started
        return True
