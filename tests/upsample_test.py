"""upsample_files: nothing lost, nothing overwritten, bad inputs reported, out-of-memory split."""

from __future__ import annotations

import json
import os
import socket
import sqlite3
from pathlib import Path

import numpy as np
import pytest
from helpers import start_python
from helpers import upsample as run
from PIL import Image

import pulse_jax as pj
from pulse_jax import batching
from pulse_jax import upsample as upsample_module
from pulse_jax.inputs import InputOptions
from pulse_jax.latent_search import search as real_search


def mixed_folder(root):
    d = root / "in"
    d.mkdir()
    for i, name in enumerate(["a.png", "b.png"]):
        Image.fromarray(np.random.default_rng(i).integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(d / name)
    (d / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00garbage")
    Image.new("RGB", (20, 20)).save(d / "wrong_size.png")
    return sorted(d.iterdir())


@pytest.mark.slow  # 9-20 s on 2 cores: the fast tier keeps its 3 minutes; the full suite runs it
def test_mixed_folder_and_rerun(micro, tmp_path):
    inputs = mixed_folder(tmp_path)
    out = tmp_path / "out"
    report = run(micro, inputs, out)
    assert {e["file"].split("/")[-1] for e in report["inputs"]} == {"a.png", "b.png"}
    failed = {f["input"].split("/")[-1]: f["error"] for f in report["failed"]}
    assert set(failed) == {"corrupt.png", "wrong_size.png"}
    assert "cannot read image" in failed["corrupt.png"] and "does not divide" in failed["wrong_size.png"]
    written = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in out.iterdir()}
    assert {"a.png", "b.png", "a_sheet.png", "b_sheet.png", "report.json"} <= set(written)
    # A rerun with the same settings leaves every finished output untouched and says so.
    again = run(micro, inputs, out)
    assert sorted(again["skipped"]) == ["a", "b"]
    assert len(again["failed"]) == 2
    for name in ("a.png", "b.png", "a_sheet.png", "b_sheet.png"):
        assert (out / name).stat().st_mtime_ns == written[name][0] and (out / name).read_bytes() == written[name][1]
    assert json.loads((out / "report.json").read_text())["inputs"] == again["inputs"]


@pytest.mark.slow  # 9-20 s on 2 cores: the fast tier keeps its 3 minutes; the full suite runs it
def test_other_settings_never_overwrite_without_overwrite(micro, tmp_path):
    inputs = mixed_folder(tmp_path)[:1]
    out = tmp_path / "out"
    run(micro, inputs, out)
    before = (out / "a.png").read_bytes()
    report = run(micro, inputs, out, config=pj.PulseConfig(steps=3))
    assert "pass --overwrite" in report["failed"][0]["error"] and (out / "a.png").read_bytes() == before
    report = run(micro, inputs, out, config=pj.PulseConfig(steps=3), overwrite=True)
    assert not report["failed"] and report["inputs"][0]["seeds"][0]["best_step"] <= 2


@pytest.mark.slow  # 9-20 s on 2 cores: the fast tier keeps its 3 minutes; the full suite runs it
def test_out_of_memory_splits_and_gives_the_same_results(micro, tmp_path, monkeypatch):
    """A device that fits one image x one seed: the work is halved until it fits, keys unchanged."""
    calls = []

    def small_device(model, lr, config, options, *, seeds, seed_offset=0, **kw):
        calls.append((lr.shape[0], seeds))
        if lr.shape[0] * seeds > 1:
            raise RuntimeError("RESOURCE_EXHAUSTED: Out of memory while trying to allocate 1.0GiB")
        return real_search(model, lr, config, options, seeds=seeds, seed_offset=seed_offset, **kw)

    inputs = mixed_folder(tmp_path)[:2]
    whole = run(micro, inputs, tmp_path / "whole", seeds=2, batch_size=2)
    monkeypatch.setattr(batching, "search", small_device)
    split = run(micro, inputs, tmp_path / "split", seeds=2, batch_size=2)
    assert calls[0] == (2, 2) and (1, 1) in calls
    for a, b in zip(whole["inputs"], split["inputs"], strict=True):
        assert [s["best_loss"] for s in a["seeds"]] == pytest.approx([s["best_loss"] for s in b["seeds"]], rel=1e-4)


def test_out_of_memory_with_nothing_left_to_split_is_a_message(micro, tmp_path, monkeypatch):
    def no_memory(*a, **kw):
        raise RuntimeError("RESOURCE_EXHAUSTED: out of memory")

    monkeypatch.setattr(batching, "search", no_memory)
    with pytest.raises(pj.PulseJaxError, match="largest batch that fits is none"):
        run(micro, mixed_folder(tmp_path)[:1], tmp_path / "o")


@pytest.mark.slow  # 9-20 s on 2 cores: the fast tier keeps its 3 minutes; the full suite runs it
def test_what_did_not_fit_is_not_tried_again(micro, tmp_path, monkeypatch):
    """After one batch ran out of memory, later batches are split before they are tried: each failed try
    costs a compile and an allocation. The split is said once."""
    calls, said = [], []

    def two_examples_fit(model, lr, config, options, *, seeds, seed_offset=0, **kw):
        calls.append((lr.shape[0], seeds))
        if lr.shape[0] * seeds > 2:
            raise RuntimeError("RESOURCE_EXHAUSTED: Out of memory while trying to allocate 1.0GiB")
        return real_search(model, lr, config, options, seeds=seeds, seed_offset=seed_offset, **kw)

    d = tmp_path / "in"
    d.mkdir()
    for i in range(4):
        Image.fromarray(np.full((16, 16, 3), 60 * i, np.uint8)).save(d / f"face{i}.png")
    monkeypatch.setattr(batching, "search", two_examples_fit)
    report = run(micro, sorted(d.iterdir()), tmp_path / "out", seeds=2, batch_size=2, log=said.append)
    assert calls == [(2, 2), (1, 2), (1, 2), (1, 2), (1, 2)]
    assert len(report["inputs"]) == 4 and not report["failed"]
    assert sum("out of device memory" in m for m in said) == 1


@pytest.mark.slow
def test_save_intermediate_writes_the_search_of_each_input(micro, tmp_path):
    """One GIF per input from a batch of two, a frame per chunk of steps (steps=4: chunks of 1)."""
    inputs = mixed_folder(tmp_path)[:2]
    report = run(micro, inputs, tmp_path / "out", config=pj.PulseConfig(steps=4), seeds=2, batch_size=2,
                 save_intermediate=True)
    gifs = [Image.open(e["outputs"]["search_gif"]) for e in report["inputs"]]
    assert [g.n_frames for g in gifs] == [4, 4]
    assert all(g.size == (micro.config.resolution,) * 2 for g in gifs)
    first = [np.asarray(g.convert("RGB"), np.int32) for g in gifs]
    assert np.abs(first[0] - first[1]).max() > 0  # each input's own search, not one GIF twice


def test_same_stem_twice_is_refused(micro, tmp_path):
    for d in ("x", "y"):
        (tmp_path / d).mkdir()
        Image.new("RGB", (16, 16)).save(tmp_path / d / "face.png")
    report = run(micro, [tmp_path / "x" / "face.png", tmp_path / "y" / "face.png"], tmp_path / "o")
    assert len(report["inputs"]) == 1 and "same output name" in report["failed"][0]["error"]


@pytest.mark.parametrize(("seeds", "batch_size", "said"),
                         [(3, 1, True), (4, 1, False), (1, 2, False), (3, None, False)])
def test_says_when_devices_would_sit_idle(micro, tmp_path, monkeypatch, seeds, batch_size, said):
    monkeypatch.setattr(upsample_module.jax, "local_devices", lambda: ["device"] * 2)
    logged = []
    run(micro, [], tmp_path / "out", config=pj.PulseConfig(steps=1), seeds=seeds, batch_size=batch_size,
        log=logged.append)
    assert any("runs on one device" in m for m in logged) == said


def test_stop_drops_the_batch_being_searched_and_keeps_the_rest(micro, tmp_path, monkeypatch):
    """``stop`` set while the second input searches: the first stays done, the second is not written,
    the report says stopped; the same call again does only the second."""
    import threading

    stop = threading.Event()
    searched = []

    def stop_during_second(model, lr, config, options, **kw):
        searched.append(lr.shape[0])
        if len(searched) == 2:
            stop.set()  # as a signal handler would, while this search runs
        return real_search(model, lr, config, options, **kw)

    inputs = mixed_folder(tmp_path)[:2]
    out = tmp_path / "out"
    monkeypatch.setattr(batching, "search", stop_during_second)
    report = run(micro, inputs, out, config=pj.PulseConfig(steps=4), stop=stop, batch_size=1)
    assert report["stopped"] and [e["input"] for e in report["inputs"]] == ["a"]
    assert json.loads((out / "report.json").read_text()) == report
    assert (out / "a.png").is_file() and not (out / "b.png").exists()
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # nothing half-written
    monkeypatch.setattr(batching, "search", real_search)
    again = run(micro, inputs, out, config=pj.PulseConfig(steps=4))
    assert "stopped" not in again and again["skipped"] == ["a"] and (out / "b.png").is_file()


def test_stop_before_the_start_searches_nothing(micro, tmp_path):
    import threading

    stop = threading.Event()
    stop.set()
    report = run(micro, mixed_folder(tmp_path)[:1], tmp_path / "out", stop=stop)
    assert report["stopped"] and not report["inputs"] and not (tmp_path / "out" / "a.png").exists()


def digests(folder):
    import hashlib

    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.iterdir() if p.is_file()}


def png(path, seed, size=16):
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (size, size, 3), dtype=np.uint8)).save(path)
    return path


def test_out_equal_to_an_input_folder_is_refused(micro, tmp_path):
    a = png(tmp_path / "a.png", 0)
    for overwrite in (False, True):
        with pytest.raises(pj.PulseJaxError, match="is the folder of the input"):
            run(micro, [a], tmp_path, overwrite=overwrite)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png"]


@pytest.mark.slow  # 7-15 s on 2 cores, end to end: the fast tier keeps its 3 minutes; the full suite runs it
def test_every_output_name_is_checked_for_clashes(micro, tmp_path):
    """x.png, x_sheet.png and x_seed0.jpg overwrote each other's sheet and seed images, with exit 0."""
    d = tmp_path / "in"
    d.mkdir()
    inputs = [png(d / "x.png", 0), png(d / "x_seed0.png", 1), png(d / "x_sheet.png", 2)]
    out = tmp_path / "out"
    report = run(micro, inputs, out, seeds=2, all_seeds=True)
    assert [e["input"] for e in report["inputs"]] == ["x"]
    errors = {Path(f["input"]).name: f["error"] for f in report["failed"]}
    assert "x_seed0.png is also an output of x" in errors["x_seed0.png"]
    assert "x_sheet.png is also an output of x" in errors["x_sheet.png"]
    # Across runs: the report says whose each file is.
    later = run(micro, [inputs[1]], out, seeds=2, overwrite=True)
    assert "was written for the input x by an earlier run" in later["failed"][0]["error"]
    assert digests(out)["x_seed0.png"] == digests(out)["x_seed0.png"]  # still x's seed 0
    assert Image.open(out / "x_seed0.png").size == (32, 32)


def test_the_report_keeps_earlier_work(micro, tmp_path):
    """A run on other inputs, or with other settings, rewrote report.json with only its own inputs;
    afterwards the first command refused its own finished inputs."""
    a, b = png(tmp_path / "a.png", 0), png(tmp_path / "b.png", 1)
    out = tmp_path / "out"
    run(micro, [a], out)
    run(micro, [b], out)
    other = run(micro, [a], out, config=pj.PulseConfig(steps=3))
    assert "from other settings" in other["failed"][0]["error"]
    on_disk = json.loads((out / "report.json").read_text())
    assert [e["input"] for e in on_disk["inputs"]] == ["a", "b"]
    again = run(micro, [a, b], out)
    assert again["skipped"] == ["a", "b"] and not again["failed"] and again["searched"] == []
    assert "a_sheet.png" in (out / "index.html").read_text() and "b_sheet.png" in (out / "index.html").read_text()


def dead_pid():
    proc = start_python("-c", "pass")
    proc.communicate()
    return proc.pid


def test_an_unfinished_output_is_redone_and_temporaries_cleaned(micro, tmp_path):
    """Killed between a.png and its report entry: the rerun said 'exists from other settings'."""
    from pulse_jax.safe_files import _HOST, TEMP_MARK

    a = png(tmp_path / "a.png", 0)
    out = tmp_path / "out"
    run(micro, [a], out)
    with sqlite3.connect(out / "journal.sqlite") as c:  # as a kill leaves it: pending, its run gone
        c.execute("UPDATE entries SET state = 'pending', owner = ?", (f"{socket.gethostname()}:{dead_pid()}",))
    stale = out / f".a_sheet.png{TEMP_MARK}{_HOST}-{dead_pid()}-abc"
    stale.write_bytes(b"half")
    live = out / f".b.png{TEMP_MARK}{_HOST}-{os.getpid()}-abc"  # a concurrent live writer's: left alone
    live.write_bytes(b"in progress")
    again = run(micro, [a], out)
    assert again["searched"] == ["a"] and not again["failed"] and not again["inputs"][0].get("pending")
    assert not stale.exists() and live.exists()


def test_already_done_means_everything_that_changes_the_result_is_the_same(micro, tmp_path):
    """Another --fit, mask, model or an edited input file was skipped as done."""
    a = png(tmp_path / "a.png", 0, size=20)
    out = tmp_path / "out"
    assert run(micro, [a], out, input_options=InputOptions(fit=16))["searched"] == ["a"]
    assert run(micro, [a], out, input_options=InputOptions(fit=16))["skipped"] == ["a"]
    assert "other settings" in run(micro, [a], out, input_options=InputOptions(fit=32))["failed"][0]["error"]
    other_model = micro.with_gaussian_fit((np.asarray(micro.gaussian_fit[0]) + 0.01, np.asarray(micro.gaussian_fit[1])))
    assert "other settings" in run(other_model, [a], out, input_options=InputOptions(fit=16))["failed"][0]["error"]
    png(a, 1, size=20)  # the input edited
    edited = run(micro, [a], out, input_options=InputOptions(fit=16))
    assert not edited["skipped"] and "other version of the input" in edited["failed"][0]["error"]
    masked = pj.PulseConfig(steps=2, degradation="bicubic+mask")
    b = png(tmp_path / "b.png", 2)
    half = np.zeros((16, 16), np.float32)
    half[:8] = 1
    assert run(micro, [b], out, config=masked, input_options=InputOptions(mask=half))["searched"] == ["b"]
    other_mask = run(micro, [b], out, config=masked, input_options=InputOptions(mask=1 - half))
    assert not other_mask["skipped"] and "other settings" in other_mask["failed"][0]["error"]


def test_all_seeds_diverged_is_a_failure_and_the_report_is_strict_json(micro, tmp_path):
    """A search whose seeds all diverged wrote a black image, printed 'lowest MSE inf', exited 0, and
    report.json held NaN/Infinity."""
    nan_fit = (np.full(512, np.nan, np.float32), np.ones(512, np.float32))
    out = tmp_path / "out"
    report = run(micro.with_gaussian_fit(nan_fit), [png(tmp_path / "a.png", 0)], out, seeds=2)
    assert "all 2 seeds diverged" in report["failed"][0]["error"] and not report["inputs"]
    assert not (out / "a.png").exists()

    def refuse(constant):
        raise AssertionError(f"{constant} in report.json")

    json.loads((out / "report.json").read_text(), parse_constant=refuse)
    from pulse_jax.reports import write_json

    write_json(out / "x.json", {"v": [float("nan"), float("inf"), 1.5]})
    assert json.loads((out / "x.json").read_text(), parse_constant=refuse) == {"v": [None, None, 1.5]}


def test_mask_without_plus_mask_is_an_error(micro, tmp_path):
    with pytest.raises(pj.PulseJaxError, match=r"has no \+mask, so the mask would be ignored"):
        run(micro, [png(tmp_path / "a.png", 0)], tmp_path / "out",
            input_options=InputOptions(mask=np.ones((16, 16), np.float32)))


def test_a_file_name_that_is_not_utf8_is_one_failure(micro, tmp_path):
    d = tmp_path / "in"
    d.mkdir()
    bad = Path(os.fsdecode(bytes(d) + b"/caf\xe9.png"))
    png(bad, 0)
    png(d / "ok.png", 1)
    out = tmp_path / "out"
    report = run(micro, sorted(d.iterdir()), out)
    assert [e["input"] for e in report["inputs"]] == ["ok"]
    assert "not valid UTF-8" in report["failed"][0]["error"] and "caf\\xe9.png" in report["failed"][0]["input"]
    json.loads((out / "report.json").read_text())


@pytest.mark.parametrize(("fit", "message"), [(-4, "--fit -4"), (100_000, "--fit 100000"), (24, "--fit 24")])
def test_a_fit_that_cannot_work_is_refused_before_reading(micro, tmp_path, fit, message):
    with pytest.raises(pj.PulseJaxError, match=f"{message}: the size must divide"):
        run(micro, [png(tmp_path / "a.png", 0)], tmp_path / "out", input_options=InputOptions(fit=fit))


def test_outputs_follow_the_umask(micro, tmp_path):
    old = os.umask(0o027)
    try:
        run(micro, [png(tmp_path / "a.png", 0)], tmp_path / "out")
    finally:
        os.umask(old)
    # what open() would give under umask 027, where mkstemp alone gave 0600
    assert (tmp_path / "out" / "a.png").stat().st_mode & 0o777 == 0o640
    assert (tmp_path / "out" / "report.json").stat().st_mode & 0o777 == 0o640
