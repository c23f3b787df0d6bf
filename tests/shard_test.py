"""--shard I/N: independent processes (a job array) into one folder cover every input once, each with its own
journal; a killed shard run again does only what it had not finished; pulse-jax report merges them all.
And two runs into one folder at once on the same inputs: each input is searched by one of them."""

from __future__ import annotations

import json
import signal
import sqlite3
import time

import numpy as np
import pytest
from helpers import finish_all, pulse_jax, pulse_jax_here, start_python
from PIL import Image

from pulse_jax.distributed import ProcessGroup
from pulse_jax.flag_types import shard_arg
from pulse_jax.upsample import share

NAMES = [f"face{i}" for i in range(9)]


def inputs(folder):
    folder.mkdir()
    for i, name in enumerate(NAMES):
        pixels = np.random.default_rng(i).integers(0, 255, (16, 16, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"{name}.png")
    return folder


def done_in(journal) -> list[str]:
    if not journal.is_file():
        return []
    try:
        with sqlite3.connect(f"file:{journal}?mode=ro", uri=True) as c:
            return sorted(r[0] for r in c.execute("SELECT input FROM entries WHERE state = 'done'"))
    except sqlite3.OperationalError:  # being created
        return []


def claimed_in(journal) -> list[str]:
    if not journal.is_file():
        return []
    try:
        with sqlite3.connect(f"file:{journal}?mode=ro", uri=True) as c:
            return [r[0] for r in c.execute("SELECT input FROM entries")]
    except sqlite3.OperationalError:  # being created
        return []


def test_shares_cover_every_name_once():
    shares = [share(NAMES, ProcessGroup(), (i, 4)) for i in range(4)]
    assert set().union(*shares) == set(NAMES) and sum(map(len, shares)) == len(NAMES)
    two_processes = [share(NAMES, ProcessGroup(k, 2), (1, 4)) for k in range(2)]
    assert set().union(*two_processes) == shares[1] and not two_processes[0] & two_processes[1]
    assert shard_arg("2/3") == (2, 3)
    for bad in ("3/3", "-1/2", "1", "a/b", "1/0"):
        with pytest.raises(Exception, match="write I/N"):
            shard_arg(bad)


@pytest.mark.slow
def test_three_shards_cover_every_input_once_and_a_killed_one_reruns_only_its_own(micro_model_dir, tmp_path):
    folder, out = inputs(tmp_path / "in"), tmp_path / "out"
    common = ["-m", "pulse_jax.cli", "upsample", folder, "--model", micro_model_dir, "--out", out, "--quiet",
              "--batch-size", "1", "--steps", "120"]
    procs = [start_python(*common, "--shard", f"{i}/3") for i in range(3)]
    killed = out / "journal.shard-1-of-3.sqlite"
    deadline = time.monotonic() + 300
    while not done_in(killed) and procs[1].poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert procs[1].poll() is None, "shard 1 ended before it could be killed"
    procs[1].send_signal(signal.SIGKILL)
    results = finish_all(procs)
    assert results[0].returncode == results[2].returncode == 0, results[0].stderr + results[2].stderr
    first = done_in(killed)
    assert 1 <= len(first) < 3
    again = pulse_jax_here("upsample", *common[3:], "--shard", "1/3")
    assert again.returncode == 0, again.stderr
    assert f"{len(first)} input(s)" in again.stderr and "already done" in again.stderr  # only the rest searched
    r = pulse_jax("report", out)
    assert r.returncode == 0, r.stderr
    report = json.loads((out / "report.json").read_text())
    assert [e["input"] for e in report["inputs"]] == NAMES and report["journals"] == 3
    journals = [done_in(out / f"journal.shard-{i}-of-3.sqlite") for i in range(3)]
    assert sorted(sum(journals, [])) == NAMES  # every input in exactly one shard's journal
    assert "9 inputs done" in r.stdout


@pytest.mark.slow
def test_two_runs_at_once_on_the_same_inputs_search_each_input_once(micro_model_dir, tmp_path):
    """The second run, with other settings, started while the first searches: an input the first has
    claimed is left to it, and no finished output is replaced (the red team's lost a.png)."""
    folder, out = inputs(tmp_path / "in"), tmp_path / "out"
    common = ["-m", "pulse_jax.cli", "upsample", folder, "--model", micro_model_dir, "--out", out, "--quiet",
              "--batch-size", "1"]
    first = start_python(*common, "--steps", "600")
    deadline = time.monotonic() + 300
    while not claimed_in(out / "journal.sqlite") and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    second = start_python(*common, "--steps", "3")
    (a, b) = finish_all([first, second])
    with sqlite3.connect(out / "journal.sqlite") as c:
        rows = {name: json.loads(entry) for name, entry in c.execute("SELECT input, entry FROM entries")}
    assert sorted(rows) == NAMES and all(not e.get("pending") for e in rows.values())
    steps = {e["run_key"].split("-")[0] for e in rows.values()}
    assert len(steps) == 2, (a.stderr, b.stderr)  # both runs searched some inputs, neither every one
    for e in rows.values():  # each input's files are those of the run its entry names: one writer each
        assert len(e["seeds"]) == 1 and (out / f"{e['input']}.png").is_file()
    assert "by another run into this folder since this one started" in a.stderr + b.stderr
