"""Reports: what earlier runs left is read newest first; a job's parts merge into one report."""

from __future__ import annotations

import json
import os

from pulse_jax import reports
from pulse_jax.distributed import ProcessGroup


def test_stale_part_reports_are_read_newest_first_then_removed(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    entry = {"input": "a", "run_key": "old", "outputs": {}}
    (out / "report.json").write_text(json.dumps({"inputs": [entry]}))
    part = out / "report.part1of2.json"
    part.write_text(json.dumps({"inputs": [dict(entry, run_key="newer")]}))
    later = (out / "report.json").stat().st_mtime_ns + 10**9  # newer even where timestamps are coarse
    os.utime(part, ns=(later, later))
    assert reports.load_previous(out)["a"]["run_key"] == "newer"  # written after report.json
    reports.remove_parts(out)
    assert not part.exists() and reports.load_previous(out)["a"]["run_key"] == "old"


def test_a_stopped_part_makes_the_merged_report_stopped(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    group = ProcessGroup(index=0, count=2, job="j")
    for k, stopped in enumerate((False, True)):
        entry = {"input": f"x{k}", "outputs": {"sheet": f"x{k}_sheet.png"}, "best_seed": 0, "success": True,
                 "seeds": [{"seed": 0, "min_l2": 0.0, "best_loss": 0.0, "best_step": 0}]}
        part = {"job": "j", "inputs": [entry], "failed": [], "skipped": []}
        (out / reports.part_name(k, 2)).write_text(json.dumps(dict(part, stopped=True) if stopped else part))
    merged = reports.merge_parts(out, group)
    assert merged["stopped"] and [e["input"] for e in merged["inputs"]] == ["x0", "x1"] and not merged["failed"]
    assert "stopped before the end" in (out / "index.html").read_text()
