"""The background writer: a failed write is that input's failure, the queue is bounded, closing waits, and
after a full disk nothing more is tried. And in a run: a write that fails fails that input only."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from helpers import upsample
from PIL import Image

from pulse_jax import upsample as upsample_module
from pulse_jax.errors import DiskFull, PulseJaxError
from pulse_jax.writer import OutputWriter


def test_a_failed_write_is_that_inputs_failure_never_a_silent_loss():
    def broken():
        raise PulseJaxError("b.png: cannot write (no permission)")

    def bug():
        raise ValueError("odd")

    w = OutputWriter(max_waiting=2)
    w.submit("a", lambda: {"input": "a"})
    w.submit("b", broken)
    w.submit("c", bug)
    w.close()
    done = {name: (entry, error) for name, entry, error in w.finished()}
    assert done["a"] == ({"input": "a"}, None)
    assert done["b"] == (None, "b.png: cannot write (no permission)")
    assert done["c"][0] is None and "c: writing its outputs failed (ValueError: odd)" == done["c"][1]
    assert w.finished() == []  # each reported once


def test_the_queue_is_bounded_and_closing_waits_for_every_write():
    gate, started, order = threading.Event(), threading.Event(), []

    def write(name, wait=False):
        def run():
            if wait:
                started.set()
                gate.wait(10)
            order.append(name)
            return {"input": name}
        return run

    w = OutputWriter(max_waiting=2)
    w.submit("1", write("1", wait=True))  # taken by the thread, which waits at the gate
    assert started.wait(10)
    w.submit("2", write("2"))
    w.submit("3", write("3"))  # the queue holds 2: full
    blocked = threading.Thread(target=lambda: w.submit("4", write("4")))
    blocked.start()
    blocked.join(0.3)
    assert blocked.is_alive()  # memory stays bounded: the producer waits
    gate.set()
    blocked.join(5)
    assert not blocked.is_alive()
    w.close()
    assert order == ["1", "2", "3", "4"] and len(w.finished()) == 4


def test_after_a_full_disk_nothing_more_is_tried():
    tried = []

    def full():
        tried.append("a")
        raise DiskFull("cannot write a.png: No space left on device (the disk is full: free space or ...)")

    w = OutputWriter(max_waiting=4)
    w.submit("a", full)
    w.submit("b", lambda: tried.append("b") or {"input": "b"})
    w.close()
    assert tried == ["a"] and isinstance(w.disk_full, DiskFull)
    assert [(n, e is None, "disk is full" in err) for n, e, err in w.finished()] == [("a", True, True),
                                                                                   ("b", True, True)]


@pytest.mark.slow  # 9-20 s on 2 cores: the fast tier keeps its 3 minutes; the full suite runs it
def test_a_write_that_fails_in_a_run_fails_that_input_and_the_rerun_does_it(micro, tmp_path, monkeypatch):
    folder = tmp_path / "in"
    folder.mkdir()
    for i in range(3):
        Image.fromarray(np.random.default_rng(i).integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(folder / f"f{i}.png")
    real = upsample_module.save_png

    def refuses_f1(image, path):
        if path.name == "f1.png":
            raise PulseJaxError(f"cannot write {path}: Permission denied (no permission: choose another folder)")
        return real(image, path)

    monkeypatch.setattr(upsample_module, "save_png", refuses_f1)
    report = upsample(micro, sorted(folder.iterdir()), tmp_path / "out")
    assert [e["input"] for e in report["inputs"]] == ["f0", "f2"]
    assert [f["input"] for f in report["failed"]] == ["f1"] and "Permission denied" in report["failed"][0]["error"]
    monkeypatch.setattr(upsample_module, "save_png", real)
    again = upsample(micro, sorted(folder.iterdir()), tmp_path / "out")
    assert again["searched"] == ["f1"] and again["skipped"] == ["f0", "f2"] and not again["failed"]


@pytest.mark.parametrize("sheets", ["best", "none"])
def test_sheets_best_or_none(micro, tmp_path, sheets):
    folder = tmp_path / "in"
    folder.mkdir()
    Image.new("RGB", (8, 8), (200, 10, 10)).save(folder / "a.png")
    report = upsample(micro, [folder / "a.png"], tmp_path / "out", seeds=3, sheets=sheets)
    entry, = report["inputs"]
    if sheets == "none":
        assert "sheet" not in entry["outputs"] and not (tmp_path / "out" / "a_sheet.png").exists()
        assert "src='a.png'" in (tmp_path / "out" / "index.html").read_text()  # the index shows the image instead
    else:  # input, bicubic, the best seed: three panels of 256 px
        assert Image.open(entry["outputs"]["sheet"]).size == (3 * 256, 256 + 18)
