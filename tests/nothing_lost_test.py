"""End to end, as a user would break it: reruns with other settings, kill -9 mid-run, a full disk,
two runs into one folder at once. Afterwards every finished output is intact, the run journal (and the
report.json made from it) lists every finished input once, and a rerun finishes the rest."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import signal
import time
from pathlib import Path

import numpy as np
import pytest
from helpers import pulse_jax, start_python, upsample
from PIL import Image

import pulse_jax as pj
from pulse_jax import safe_files
from pulse_jax.journal import read_journals

ROOT = Path(__file__).parents[1]
NAMES = [f"face{i}" for i in range(5)]


def start(*args):
    return start_python("-m", "pulse_jax.cli", "upsample", *args)


def finish(*args):
    return pulse_jax("upsample", *args)


def done_entries(out: Path) -> dict[str, dict]:
    """The finished inputs' entries, as every journal in the folder records them (read only, while a run may
    be writing)."""
    if not out.is_dir():
        return {}
    return {name: e for name, e in read_journals(out)[0].items() if not e.get("pending")}


def finished(out: Path) -> dict[str, str]:
    """{file name: sha256} of every output the journal calls finished."""
    paths = [p for e in done_entries(out).values() for p in (e["outputs"]["image"], e["outputs"]["sheet"])]
    return {Path(p).name: hashlib.sha256(Path(p).read_bytes()).hexdigest() for p in paths}


def listed(out: Path) -> list[str]:
    return sorted(done_entries(out))


def reported(out: Path) -> list[str]:
    """What report.json lists as finished (written at a run's end, or by pulse-jax report)."""
    return sorted(e["input"] for e in json.loads((out / "report.json").read_text())["inputs"] if not e.get("pending"))


@pytest.fixture
def faces(tmp_path):
    d = tmp_path / "in"
    d.mkdir()
    for i, name in enumerate(NAMES):
        Image.fromarray(np.random.default_rng(i).integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(d / f"{name}.png")
    return d


@pytest.mark.slow
def test_kill_rerun_other_settings_and_concurrent_runs(micro_model_dir, faces, tmp_path):
    out = tmp_path / "out"
    run = ["--model", micro_model_dir, "--out", out, "--quiet", "--batch-size", "1", "--steps", "300"]
    proc = start(faces, *run)
    deadline = time.monotonic() + 300
    while not finished(out) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, proc.communicate()
    proc.send_signal(signal.SIGKILL)  # kill -9: no handler, no cleanup
    proc.wait()
    before = finished(out)
    assert before and len(listed(out)) < len(NAMES), "the run was to be killed mid-way"
    # Other settings, no --overwrite: refused for what is done, the rest searched; nothing finished changes.
    r = finish(faces, *run[:-2], "--steps", "2")
    assert r.returncode == 1 and "from other settings" in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert {k: v for k, v in finished(out).items() if k in before} == before
    # Two runs at once into the same folder, each on its own inputs: both end complete in the report.
    others = []
    for k in range(2):
        d = tmp_path / f"more{k}"
        d.mkdir()
        for j in range(2):
            Image.new("RGB", (16, 16), (40 * k, 90 * j, 30)).save(d / f"extra{k}{j}.png")
        others.append(start(d, *run))
    for p in others:
        _, err = p.communicate(timeout=600)
        assert p.returncode == 0, err
    assert {k: v for k, v in finished(out).items() if k in before} == before
    assert set(listed(out)) >= {"extra00", "extra01", "extra10", "extra11"}
    # The original command again: what it finished is kept, what the second settings did is left alone.
    r = finish(faces, *run)
    assert "Traceback" not in r.stderr
    names = listed(out)
    assert len(names) == len(set(names)) and set(names) == set(NAMES) | {"extra00", "extra01", "extra10", "extra11"}
    assert reported(out) == names  # the last run's report.json, made from the journal
    assert {k: v for k, v in finished(out).items() if k in before} == before
    assert not [p for p in out.iterdir() if safe_files.TEMP_MARK in p.name]


@pytest.mark.slow  # 7-15 s on 2 cores, end to end: the fast tier keeps its 3 minutes; the full suite runs it
def test_a_full_disk_keeps_what_finished_and_the_rerun_does_the_rest(micro, faces, tmp_path, monkeypatch):
    out = tmp_path / "out"
    inputs = sorted(faces.iterdir())
    config = pj.PulseConfig(steps=2)
    writes = []
    real_replace = os.replace

    def disk_fills_up(src, dst):
        writes.append(dst)
        if str(dst).endswith("face2.png"):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_replace(src, dst)

    monkeypatch.setattr(safe_files.os, "replace", disk_fills_up)
    with pytest.raises(pj.PulseJaxError, match="disk is full"):
        upsample(micro, inputs, out, config=config)
    monkeypatch.setattr(safe_files.os, "replace", real_replace)
    before = finished(out)
    # What finished is kept: face0 and face1, and whichever input a second writer thread finished while
    # face2's write was failing; never face2, and nothing after the stop was seen.
    kept = set(listed(out))
    assert {"face0", "face1"} <= kept <= {"face0", "face1", "face3"} and before
    assert not [p for p in out.iterdir() if safe_files.TEMP_MARK in p.name]
    report = upsample(micro, inputs, out, config=config)
    assert sorted(report["skipped"]) == sorted(kept)
    assert sorted(report["searched"]) == sorted(set(NAMES) - kept)
    assert listed(out) == NAMES == reported(out)
    assert {k: v for k, v in finished(out).items() if k in before} == before
