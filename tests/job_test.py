"""One resolved run: the command line parses the degradation (and reads a kernel file) once, resolves the
run options once, and builds one search spec per batch; the run key hashes the very kernel the search
uses, so a kernel file edited mid-run changes nothing of that run."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
from helpers import upsample
from PIL import Image

import pulse_jax as pj
from pulse_jax import batching, cli, config, degrade
from pulse_jax.job import UpsampleJob
from pulse_jax.latent_search import driver


def inputs(folder, count=3, size=8):
    folder.mkdir()
    for i in range(count):
        pixels = np.random.default_rng(i).integers(0, 255, (size, size, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"face{i}.png")
    return folder


def counter(monkeypatch, owner, name, calls: list, when=lambda *a, **k: True):
    real = getattr(owner, name)

    def counted(*args, **kwargs):
        if when(*args, **kwargs):
            calls.append(name)
        return real(*args, **kwargs)

    monkeypatch.setattr(owner, name, counted)


def test_a_run_parses_reads_and_resolves_once(micro_model_dir, tmp_path, monkeypatch):
    """Three inputs, a kernel file, one input per batch: the kernel file is read once,
    the degradation parsed once, the run options resolved once, one search spec per batch."""
    np.save(tmp_path / "k.npy", np.outer(np.hanning(5), np.hanning(5))[1:-1, 1:-1])
    calls: list[str] = []
    counter(monkeypatch, degrade, "load_kernel", calls)
    counter(monkeypatch, degrade.Degradation, "parse", calls)
    counter(monkeypatch, config.RunOptions, "resolved", calls, when=lambda self: not self.is_resolved)
    counter(monkeypatch, driver, "make_spec", calls)
    code = cli.main(["upsample", str(inputs(tmp_path / "in")), "--model", str(micro_model_dir), "--out",
                     str(tmp_path / "out"), "--steps", "2", "--quiet", "--batch-size", "1",
                     "--degradation", f"kernel:{tmp_path / 'k.npy'}+box"])
    assert code == 0
    assert sorted(calls) == ["load_kernel", "make_spec", "make_spec", "make_spec", "parse", "resolved"], calls


@pytest.mark.slow  # 7-15 s on 2 cores, end to end: the fast tier keeps its 3 minutes; the full suite runs it
def test_a_kernel_edited_mid_run_changes_nothing_of_that_run(micro, tmp_path, monkeypatch):
    """The kernel is read when the run starts: outputs made after an edit of the file are the ones the
    undisturbed run makes, and the run key names the kernel they were made with (so a rerun with the
    edited file is not "already done", and a rerun with the original is)."""
    kernel = tmp_path / "k.npy"
    a = np.random.default_rng(0).random((3, 3))
    np.save(kernel, a)
    folder = inputs(tmp_path / "in")
    spec = f"kernel:{kernel}+box"

    def run(out):  # each run parses the spec afresh: reads the file as it is then
        return upsample(micro, sorted(folder.iterdir()), out, config=pj.PulseConfig(steps=2, degradation=spec))

    undisturbed = run(tmp_path / "one")
    real_run = batching.SearchRequest.run

    def edit_after_the_first(request, on_chunk=None):
        result = real_run(request, on_chunk)
        np.save(kernel, np.eye(3))  # the file changes under the run
        return result

    monkeypatch.setattr(batching.SearchRequest, "run", edit_after_the_first)
    disturbed = run(tmp_path / "two")
    monkeypatch.setattr(batching.SearchRequest, "run", real_run)

    def digests(out):
        return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(out.glob("face?.png"))}

    assert digests(tmp_path / "two") == digests(tmp_path / "one") and len(digests(tmp_path / "one")) == 3
    assert disturbed["run_key"] == undisturbed["run_key"]
    assert json.loads((tmp_path / "two" / "report.json").read_text())["run_key"] == undisturbed["run_key"]
    edited = run(tmp_path / "two")  # the file holds the edit now: other settings
    assert edited["skipped"] == [] and len(edited["failed"]) == 3 and "other settings" in edited["failed"][0]["error"]
    np.save(kernel, a)
    assert run(tmp_path / "two")["skipped"] == ["face0", "face1", "face2"]


def test_a_job_checks_its_parts_before_any_input_is_read(micro):
    with pytest.raises(pj.PulseJaxError, match="needs a mask"):
        UpsampleJob(micro, pj.PulseConfig(degradation="bicubic+mask"))
    with pytest.raises(pj.PulseJaxError, match="seeds must be a whole number"):
        UpsampleJob(micro, seeds=0)
    with pytest.raises(pj.PulseJaxError, match="keeps no noise maps"):
        UpsampleJob(micro, pj.PulseConfig(stored_noise=True))
    job = UpsampleJob(micro)
    assert job.options.is_resolved and job.options.resolved() is job.options
    assert job.run_key == UpsampleJob(micro).run_key  # a pure function of what changes a result
