"""upsample_files: nothing lost, nothing overwritten, bad inputs reported, out-of-memory split."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

import pulse_jax as pj
from pulse_jax import batching
from pulse_jax import upsample as upsample_module
from pulse_jax.latent_search import search as real_search
from pulse_jax.upsample import OutputOptions, upsample_files


def mixed_folder(root):
    d = root / "in"
    d.mkdir()
    for i, name in enumerate(["a.png", "b.png"]):
        Image.fromarray(np.random.default_rng(i).integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(d / name)
    (d / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00garbage")
    Image.new("RGB", (20, 20)).save(d / "wrong_size.png")
    return sorted(d.iterdir())


def run(model, inputs, out, **kw):
    """upsample_files, quiet; OutputOptions' fields may be given as keywords."""
    kw.setdefault("config", pj.PulseConfig(steps=2))
    outputs = {f: kw.pop(f) for f in ("all_seeds", "save_intermediate", "overwrite") if f in kw}
    return upsample_files(model, inputs, out, kw.pop("config"), outputs=OutputOptions(**outputs),
                          show_progress=False, log=lambda m: None, **kw)


def test_mixed_folder_and_rerun(tiny, tmp_path):
    inputs = mixed_folder(tmp_path)
    out = tmp_path / "out"
    report = run(tiny, inputs, out)
    assert {e["file"].split("/")[-1] for e in report["inputs"]} == {"a.png", "b.png"}
    failed = {f["input"].split("/")[-1]: f["error"] for f in report["failed"]}
    assert set(failed) == {"corrupt.png", "wrong_size.png"}
    assert "cannot read image" in failed["corrupt.png"] and "does not divide" in failed["wrong_size.png"]
    written = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in out.iterdir()}
    assert {"a.png", "b.png", "a_sheet.png", "b_sheet.png", "report.json"} <= set(written)
    # A rerun with the same settings leaves every finished output untouched and says so.
    again = run(tiny, inputs, out)
    assert sorted(again["skipped"]) == ["a", "b"]
    assert len(again["failed"]) == 2
    for name in ("a.png", "b.png", "a_sheet.png", "b_sheet.png"):
        assert (out / name).stat().st_mtime_ns == written[name][0] and (out / name).read_bytes() == written[name][1]
    assert json.loads((out / "report.json").read_text())["inputs"] == again["inputs"]


def test_other_settings_never_overwrite_without_overwrite(tiny, tmp_path):
    inputs = mixed_folder(tmp_path)[:1]
    out = tmp_path / "out"
    run(tiny, inputs, out)
    before = (out / "a.png").read_bytes()
    report = run(tiny, inputs, out, config=pj.PulseConfig(steps=3))
    assert "pass --overwrite" in report["failed"][0]["error"] and (out / "a.png").read_bytes() == before
    report = run(tiny, inputs, out, config=pj.PulseConfig(steps=3), overwrite=True)
    assert not report["failed"] and report["inputs"][0]["seeds"][0]["best_step"] <= 2


def test_out_of_memory_splits_and_gives_the_same_results(tiny, tmp_path, monkeypatch):
    """A device that fits one image x one seed: the work is halved until it fits, keys unchanged."""
    calls = []

    def small_device(model, lr, config, options, *, seeds, seed_offset=0, **kw):
        calls.append((lr.shape[0], seeds))
        if lr.shape[0] * seeds > 1:
            raise RuntimeError("RESOURCE_EXHAUSTED: Out of memory while trying to allocate 1.0GiB")
        return real_search(model, lr, config, options, seeds=seeds, seed_offset=seed_offset, **kw)

    inputs = mixed_folder(tmp_path)[:2]
    whole = run(tiny, inputs, tmp_path / "whole", seeds=2, batch_size=2)
    monkeypatch.setattr(batching, "search", small_device)
    split = run(tiny, inputs, tmp_path / "split", seeds=2, batch_size=2)
    assert calls[0] == (2, 2) and (1, 1) in calls
    for a, b in zip(whole["inputs"], split["inputs"], strict=True):
        assert [s["best_loss"] for s in a["seeds"]] == pytest.approx([s["best_loss"] for s in b["seeds"]], rel=1e-4)


def test_out_of_memory_with_nothing_left_to_split_is_a_message(tiny, tmp_path, monkeypatch):
    def no_memory(*a, **kw):
        raise RuntimeError("RESOURCE_EXHAUSTED: out of memory")

    monkeypatch.setattr(batching, "search", no_memory)
    with pytest.raises(pj.PulseJaxError, match="largest batch that fits is none"):
        run(tiny, mixed_folder(tmp_path)[:1], tmp_path / "o")


def test_what_did_not_fit_is_not_tried_again(tiny, tmp_path, monkeypatch):
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
    report = upsample_files(tiny, sorted(d.iterdir()), tmp_path / "out", pj.PulseConfig(steps=2), seeds=2,
                            batch_size=2, show_progress=False, log=said.append)
    assert calls == [(2, 2), (1, 2), (1, 2), (1, 2), (1, 2)]
    assert len(report["inputs"]) == 4 and not report["failed"]
    assert sum("out of device memory" in m for m in said) == 1


def test_save_intermediate_writes_the_search_of_each_input(tiny, tmp_path):
    """One GIF per input from a batch of two, a frame per chunk of steps (steps=4: chunks of 1)."""
    inputs = mixed_folder(tmp_path)[:2]
    report = run(tiny, inputs, tmp_path / "out", config=pj.PulseConfig(steps=4), seeds=2, batch_size=2,
                 save_intermediate=True)
    gifs = [Image.open(e["outputs"]["search_gif"]) for e in report["inputs"]]
    assert [g.n_frames for g in gifs] == [4, 4]
    assert all(g.size == (tiny.config.resolution,) * 2 for g in gifs)
    first = [np.asarray(g.convert("RGB"), np.int32) for g in gifs]
    assert np.abs(first[0] - first[1]).max() > 0  # each input's own search, not one GIF twice


def test_same_stem_twice_is_refused(tiny, tmp_path):
    for d in ("x", "y"):
        (tmp_path / d).mkdir()
        Image.new("RGB", (16, 16)).save(tmp_path / d / "face.png")
    report = run(tiny, [tmp_path / "x" / "face.png", tmp_path / "y" / "face.png"], tmp_path / "o")
    assert len(report["inputs"]) == 1 and "same output name" in report["failed"][0]["error"]


@pytest.mark.parametrize(("seeds", "batch_size", "said"),
                         [(3, 1, True), (4, 1, False), (1, 2, False), (3, None, False)])
def test_says_when_devices_would_sit_idle(tiny, tmp_path, monkeypatch, seeds, batch_size, said):
    monkeypatch.setattr(upsample_module.jax, "local_devices", lambda: ["device"] * 2)
    logged = []
    upsample_files(tiny, [], tmp_path / "out", pj.PulseConfig(steps=1), seeds=seeds, batch_size=batch_size,
                   show_progress=False, log=logged.append)
    assert any("runs on one device" in m for m in logged) == said


def test_stop_drops_the_batch_being_searched_and_keeps_the_rest(tiny, tmp_path, monkeypatch):
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
    report = run(tiny, inputs, out, config=pj.PulseConfig(steps=4), stop=stop)
    assert report["stopped"] and [e["input"] for e in report["inputs"]] == ["a"]
    assert json.loads((out / "report.json").read_text()) == report
    assert (out / "a.png").is_file() and not (out / "b.png").exists()
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # nothing half-written
    monkeypatch.setattr(batching, "search", real_search)
    again = run(tiny, inputs, out, config=pj.PulseConfig(steps=4))
    assert "stopped" not in again and again["skipped"] == ["a"] and (out / "b.png").is_file()


def test_stop_before_the_start_searches_nothing(tiny, tmp_path):
    import threading

    stop = threading.Event()
    stop.set()
    report = run(tiny, mixed_folder(tmp_path)[:1], tmp_path / "out", stop=stop)
    assert report["stopped"] and not report["inputs"] and not (tmp_path / "out" / "a.png").exists()
