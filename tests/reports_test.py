"""What a run leaves beside its images: the paged index, report.json from entries, and which files are ours."""

from __future__ import annotations

import json
import time

import pytest

from pulse_jax import reports


def entry(name: str, success: bool = True, mse: float = 1e-3) -> dict:
    return {"input": name, "outputs": {"image": f"/o/{name}.png", "sheet": f"/o/{name}_sheet.png"}, "best_seed": 0,
            "success": success, "degradation": "bicubic",
            "seeds": [{"seed": 0, "min_l2": mse, "best_loss": 0.1, "best_step": 3, "diverged": False}]}


def report_of(n: int, missed_every: int = 0, failed: int = 0) -> dict:
    names = [f"face{i:05d}" for i in range(n)]
    entries = {name: entry(name, success=not (missed_every and i % missed_every == 0)) for i, name in enumerate(names)}
    run = {"failed": [{"input": f"bad{i}.png", "error": f"bad{i}.png: <b>broken</b>"} for i in range(failed)],
           "skipped": [], "searched": names}
    return reports.build_report({"config": {"steps": 2}, "seeds": 1, "resolution": 32}, entries, run)


def test_the_index_is_paged_with_links_and_lists_of_what_failed_and_missed():
    pages = reports.index_pages(report_of(450, missed_every=7, failed=3))
    assert set(pages) == {"index.html", "index-2.html", "index-3.html", "index-failed.html", "index-missed.html"}
    first, last = pages["index.html"], pages["index-3.html"]
    assert first.count("<section") == reports.PAGE_SIZE and last.count("<section") == 50
    assert "href='index-2.html' rel='next'" in first and "rel='prev'" not in first
    assert "href='index-2.html' rel='prev'" in last and "rel='next'" not in last
    assert "href='index-3.html'>3</a>" in first  # the first page lists every page
    assert "loading='lazy'" in first and "face00000_sheet.png" in first and "face00200_sheet.png" not in first
    assert "450 inputs, 385 within eps, 65 not, 3 failed" in first and "3 failed" in first.split("<nav>")[1]
    missed = pages["index-missed.html"]
    assert missed.count("<li>") == 65 and "href='index-2.html#face00203'" in missed  # 203 = 7 * 29, on page 2
    assert "&lt;b&gt;broken&lt;/b&gt;" in pages["index-failed.html"]  # escaped, not markup
    assert all(reports.GENERATOR_META in page for page in pages.values())


def test_a_page_is_the_same_size_however_large_the_run_and_a_growing_run_changes_two_pages():
    small, large = (reports.index_pages(report_of(n)) for n in (400, 20_000))
    assert len(large) == 100 and len(large["index-57.html"]) < 1.1 * len(small["index-2.html"])
    grown = reports.index_pages(report_of(20_100))
    changed = {name for name in grown if grown[name] != large.get(name)}
    assert changed == {"index.html", "index-100.html", "index-101.html"}  # the counts, the old last, the new


def test_the_index_writer_writes_only_what_changed_and_removes_its_own_stale_pages(tmp_path):
    index = reports.IndexWriter(tmp_path)
    index.write(report_of(450))
    second = tmp_path / "index-2.html"
    written = second.stat().st_mtime_ns
    time.sleep(0.01)
    index.write(report_of(450))
    assert second.stat().st_mtime_ns == written  # unchanged: not rewritten
    (tmp_path / "index-9.html").write_text("<p>a page of the user's</p>")
    index.write(report_of(150))
    assert not (tmp_path / "index-3.html").exists() and not second.exists()  # ours, no longer needed
    assert (tmp_path / "index-9.html").read_text() == "<p>a page of the user's</p>"  # not ours: kept


def test_the_index_writer_waits_longer_when_writing_costs_more(tmp_path, monkeypatch):
    index = reports.IndexWriter(tmp_path, interval=5.0)
    assert index.maybe_write(lambda: report_of(3))
    assert not index.maybe_write(lambda: report_of(3))  # within the interval
    index.cost, index.last = 2.0, time.monotonic() - 10
    assert not index.maybe_write(lambda: report_of(3))  # a 2 s write: at most one every 40 s
    index.last = time.monotonic() - 41
    assert index.maybe_write(lambda: report_of(3))


def test_report_json_is_strict_and_keeps_its_schema(tmp_path):
    report = report_of(2)
    report["inputs"][0]["seeds"][0]["min_l2"] = float("nan")
    path = reports.write_report(tmp_path, report)
    on_disk = json.loads(path.read_text(), parse_constant=lambda c: pytest.fail(f"non-strict JSON: {c}"))
    assert on_disk["format"] == reports.REPORT_FORMAT and on_disk["inputs"][0]["seeds"][0]["min_l2"] is None
    assert [e["input"] for e in on_disk["inputs"]] == ["face00000", "face00001"]
    assert {"config", "seeds", "inputs", "failed", "skipped", "searched"} <= set(on_disk)


def test_which_files_are_ours(tmp_path):
    ours = reports.write_report(tmp_path, report_of(1))
    earlier = tmp_path / "earlier" / "report.json"  # an earlier version's report: no format field
    earlier.parent.mkdir()
    earlier.write_text(json.dumps({"run_key": "k", "inputs": []}))
    theirs = tmp_path / "theirs.json"
    theirs.write_text(json.dumps({"inputs": [], "notes": "mine"}))
    old_index = tmp_path / "old.html"
    old_index.write_text("<!doctype html><meta charset='utf-8'><title>pulse-jax run</title><h1>...")
    their_index = tmp_path / "index.html"
    their_index.write_text("<html>my photo album</html>")
    assert reports.is_ours(ours) and reports.is_ours(earlier) and reports.is_ours(old_index)
    assert not reports.is_ours(theirs) and not reports.is_ours(their_index)


def test_legacy_entries_read_newest_first_and_ignore_damage(tmp_path):
    (tmp_path / "report.json").write_text(json.dumps({"inputs": [
        {"input": "a", "run_key": "old"}, {"input": ["not", "a", "name"], "run_key": "x"}, "junk", {"input": "b"}]}))
    part = tmp_path / "report.part1of2.json"
    part.write_text(json.dumps({"inputs": [{"input": "a", "run_key": "newer"}]}))
    import os

    later = (tmp_path / "report.json").stat().st_mtime_ns + 10**9
    os.utime(part, ns=(later, later))
    legacy = reports.legacy_entries(tmp_path)
    assert set(legacy) == {"a"} and legacy["a"]["run_key"] == "newer"
    assert reports.entry_paths({"outputs": 5}) == [] and reports.entry_paths({"outputs": {"seeds": "x"}}) == []
