"""The run journal: claims between runs, what a batch records, and every way the file can be wrong (refused,
never deleted or replaced)."""

from __future__ import annotations

import hashlib
import json
import socket
import sqlite3

import numpy as np
import pytest
from helpers import start_python, upsample
from PIL import Image

import pulse_jax as pj
from pulse_jax import journal as jr
from pulse_jax.errors import DiskFull


def digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_batch_is_claimed_then_recorded_and_a_dropped_claim_goes_back(tmp_path):
    j = jr.Journal(tmp_path / jr.JOURNAL_NAME)
    j.start_run({"run_key": "k"})
    assert j.claim({"a": {"input": "a", "pending": True}, "b": {"input": "b", "pending": True}}, "k") == []
    assert {n: e["pending"] for n, e in j.entries().items()} == {"a": True, "b": True}
    earlier = {"b": {"input": "b", "run_key": "old", "outputs": {"image": "b.png"}}}
    j.record({"a": {"input": "a", "run_key": "k", "success": True}, "b": None}, earlier)
    entries = j.entries()
    assert not entries["a"].get("pending") and entries["a"]["success"]
    assert entries["b"]["run_key"] == "old" and not entries["b"].get("pending")  # back to what it was
    j.claim({"c": {"input": "c", "pending": True}}, "k")
    j.record({"c": None})
    assert "c" not in j.entries()  # a claim on a new input goes altogether
    j.fail([{"input": "x.png", "error": "x.png: broken"}])
    j.end_run(stopped=False, searched=["a"], skipped=[])
    j.close()
    again = jr.Journal(tmp_path / jr.JOURNAL_NAME)  # reopened: the same record
    run = again.latest_run()
    assert run["searched"] == ["a"] and run["failed"] == [{"input": "x.png", "error": "x.png: broken"}]
    assert set(again.entries()) == {"a", "b"}


def test_another_live_runs_claim_is_respected_and_a_dead_ones_is_taken(tmp_path, monkeypatch):
    j = jr.Journal(tmp_path / jr.JOURNAL_NAME)
    alive = start_python("-c", "import time; time.sleep(60)")
    try:
        with sqlite3.connect(tmp_path / jr.JOURNAL_NAME) as c:
            for name, pid in (("live", alive.pid), ("dead", 2**22 + 17)):
                c.execute("INSERT INTO entries VALUES (?, 'k', 'pending', ?, '{}', 0)",
                          (name, f"{socket.gethostname()}:{pid}"))
        seen = j.entries()  # the plan was made from these: the dead run's claim is not news
        assert j.claim({"live": {}, "dead": {}, "new": {}}, "k", seen) == ["live"]
        assert j.entries()["dead"]["_owner"] == jr.OWNER
    finally:
        alive.kill()
        alive.communicate()


@pytest.mark.parametrize("kind", ["noise", "other sqlite", "newer", "broken table"])
def test_a_journal_not_ours_damaged_or_newer_is_refused_and_left_as_it_is(tmp_path, kind, micro):
    path = tmp_path / jr.JOURNAL_NAME
    if kind == "noise":
        path.write_bytes(np.random.default_rng(0).bytes(8192))
    else:
        with sqlite3.connect(path) as c:
            if kind == "other sqlite":
                c.execute("CREATE TABLE photos (name TEXT)")
            else:
                c.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT)")
                c.execute("INSERT INTO meta VALUES ('format', ?), ('version', ?)",
                          (jr.FORMAT, "99" if kind == "newer" else "1"))
    before = digest(path)
    message = {"noise": "damaged or not a pulse-jax journal", "other sqlite": "not a pulse-jax run journal",
               "newer": "written by a newer pulse-jax", "broken table": "is damaged"}[kind]
    with pytest.raises(pj.PulseJaxError, match=message):
        jr.Journal(path)
    (tmp_path / "in").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "in" / "a.png")
    with pytest.raises(pj.PulseJaxError, match=message):  # and a run into that folder says the same
        upsample(micro, [tmp_path / "in" / "a.png"], tmp_path)
    assert digest(path) == before and not (tmp_path / "a_sheet.png").exists()


def test_a_full_disk_is_a_clear_error(tmp_path):
    j = jr.Journal(tmp_path / jr.JOURNAL_NAME)
    j.conn.execute("PRAGMA max_page_count = 8")  # a database that can grow no more: SQLite's "disk is full"
    with pytest.raises(DiskFull, match="the disk is full"):
        j.claim({f"input{i}": {"padding": "x" * 10_000} for i in range(20)}, "k")
    assert j.entries() == {}  # the transaction is all or nothing


@pytest.mark.slow  # 9-20 s on 2 cores: the fast tier keeps its 3 minutes; the full suite runs it
def test_a_folder_of_the_earlier_report_json_is_resumed(micro, tmp_path):
    """A folder written before the journal existed (report.json only) resumes as that version would have."""
    inputs = []
    for i in range(2):
        inputs.append(tmp_path / f"f{i}.png")
        Image.fromarray(np.random.default_rng(i).integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(inputs[-1])
    out = tmp_path / "out"
    upsample(micro, inputs, out)
    report = json.loads((out / "report.json").read_text())
    for name in ("format", "journals"):
        report.pop(name, None)
    report["inputs"][1]["pending"] = True  # f1 left unfinished by that version
    (out / "report.json").write_text(json.dumps(report))
    (out / "journal.sqlite").unlink()
    again = upsample(micro, inputs, out)
    assert again["skipped"] == ["f0"] and again["searched"] == ["f1"] and not again["failed"]
    assert (out / "journal.sqlite").is_file()
