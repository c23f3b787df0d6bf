"""The model directory: round trip, checksum, format version, clear refusals."""

from __future__ import annotations

import json

import chex
import numpy as np
import pytest

import pulse_jax as pj
from pulse_jax.model import compute_gaussian_fit


@pytest.mark.slow
def test_round_trip_is_exact(tmp_path):
    model = pj.Model.random(pj.PRESETS["tiny_128"], seed=3)
    fit = compute_gaussian_fit(model, num_samples=1000, batch_size=300)
    model = model.with_gaussian_fit(fit)
    pj.save_model(model, tmp_path / "m")
    loaded = pj.load_model(tmp_path / "m")
    assert loaded.config == model.config
    chex.assert_trees_all_equal(loaded.pure_params(), model.pure_params())


@pytest.mark.slow  # 9-20 s on 2 cores: the fast tier keeps its 3 minutes; the full suite runs it
def test_gaussian_fit_batches_combine_exactly():
    """Chan's combination over uneven batches equals the one-pass statistics (float64 on the host)."""
    model = pj.Model.random(pj.PRESETS["tiny_128"], seed=0)
    m1, s1 = compute_gaussian_fit(model, num_samples=700, batch_size=700)
    m2, s2 = compute_gaussian_fit(model, num_samples=700, batch_size=700)
    np.testing.assert_array_equal(m1, m2)
    import jax

    z = jax.random.normal(jax.random.fold_in(jax.random.key(0), 0), (700, 512))
    w = np.asarray(model.map(z))
    x = np.where(w >= 0, w, 5 * w)
    # float32 sums over 700 rows: agreement to ~1e-6 relative.
    np.testing.assert_allclose(m1, x.mean(0), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(s1, x.std(0, ddof=1), rtol=1e-4)


@pytest.fixture
def saved(tmp_path):
    model = pj.Model.random(pj.PRESETS["tiny_128"], seed=1, with_mapping=False)
    return pj.save_model(model, tmp_path / "m")


def test_existing_directory_is_not_replaced(saved):
    model = pj.Model.random(pj.PRESETS["tiny_128"], seed=2, with_mapping=False)
    with pytest.raises(pj.PulseJaxError, match="already exists"):
        pj.save_model(model, saved)
    pj.save_model(model, saved, overwrite=True)
    chex.assert_trees_all_equal(pj.load_model(saved).pure_params(), model.pure_params())
    assert [p.name for p in saved.parent.iterdir()] == ["m"]  # no staging or old copies left


def test_flipped_byte_is_caught(saved):
    files = sorted(p for p in (saved / "params").rglob("*") if p.is_file() and p.stat().st_size > 4096)
    assert files
    target = max(files, key=lambda p: p.stat().st_size)
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0x01
    target.write_bytes(bytes(data))
    with pytest.raises(pj.CheckpointError) as e:
        pj.load_model(saved)
    assert "checksum" in str(e.value) or "could not read" in str(e.value)


def test_newer_format_is_refused(saved):
    meta = json.loads((saved / "model.json").read_text())
    meta["format_version"] = 99
    (saved / "model.json").write_text(json.dumps(meta))
    with pytest.raises(pj.CheckpointError, match="format 99.*upgrade pulse-jax"):
        pj.load_model(saved)


def test_not_a_model_directory(tmp_path):
    with pytest.raises(pj.CheckpointError, match="not a pulse-jax model directory"):
        pj.load_model(tmp_path)
    (tmp_path / "model.json").write_text("{not json")
    with pytest.raises(pj.CheckpointError, match="not valid JSON"):
        pj.load_model(tmp_path)


def test_from_arrays_names_every_mismatch():
    model = pj.Model.random(pj.PRESETS["tiny_128"], seed=0, with_mapping=False)
    params = model.synthesis.pure()
    del params["torgb"]["bias"]
    params["blocks"]["8x8"]["conv1"]["kernel"] = np.zeros((1, 1, 1, 1), np.float32)
    with pytest.raises(pj.CheckpointError) as e:
        pj.Model.from_arrays(model.config, params)
    assert "missing key torgb/bias (expected shape [3])" in str(e.value)
    assert "key blocks/8x8/conv1/kernel has shape [1, 1, 1, 1], expected [3, 3, 64, 64]" in str(e.value)


def test_model_json_names_the_architecture(saved):
    meta = json.loads((saved / "model.json").read_text())
    assert meta["format_version"] == 2 and meta["architecture"] == "stylegan1"
    assert pj.load_model(saved).config.architecture == "stylegan1"


def test_format_1_directories_read_as_stylegan1(saved):
    """Written before the architecture field existed: no "architecture", format_version 1."""
    model = pj.load_model(saved)
    meta = json.loads((saved / "model.json").read_text())
    del meta["architecture"]
    meta["format_version"] = 1
    (saved / "model.json").write_text(json.dumps(meta))
    old = pj.load_model(saved)
    assert old.config == model.config and old.generator.architecture == "stylegan1"
    chex.assert_trees_all_equal(old.pure_params(), model.pure_params())


@pytest.mark.parametrize(("change", "message"), [
    ({"architecture": "stylegan9"}, "unknown architecture 'stylegan9'"),
    ({"config": None}, "'config' must be an object"),
    ({"config": {"resolution": 100}}, "bad config"),
    ({"contents": "synthesis"}, "'contents' must be a list"),
])
def test_damaged_model_json_is_a_clear_refusal(saved, change, message):
    meta = json.loads((saved / "model.json").read_text())
    (saved / "model.json").write_text(json.dumps({**meta, **change}))
    with pytest.raises(pj.CheckpointError, match=message):
        pj.load_model(saved)


def test_search_params_are_prepared_once_per_option():
    model = pj.Model.random(pj.PRESETS["tiny_128"], seed=0, with_mapping=False)
    phases = model.search_params()
    assert model.search_params() is phases
    dilated = model.search_params(model.generator.SearchOptions(transposed_conv="dilated"))
    assert dilated is not phases and dilated.graphdef != phases.graphdef  # compiled apart, never confused


def test_overwrite_replaces_only_a_model_directory_of_ours(tmp_path):
    """--overwrite once removed any existing --out, its '.old' sibling and whatever was inside."""
    model = pj.Model.random(pj.PRESETS["tiny_128"], seed=1, with_mapping=False)
    theirs = tmp_path / "photos"
    theirs.mkdir()
    (theirs / "holiday.jpg").write_bytes(b"precious")
    with pytest.raises(pj.PulseJaxError, match="not a pulse-jax model directory"):
        pj.save_model(model, theirs, overwrite=True)
    assert (theirs / "holiday.jpg").read_bytes() == b"precious"
    saved = pj.save_model(model, tmp_path / "m")
    old = tmp_path / "m.old"  # a name the previous code used for its backup, and deleted
    old.mkdir()
    (old / "notes.txt").write_text("mine")
    pj.save_model(model, saved, overwrite=True)
    assert (old / "notes.txt").read_text() == "mine"
    (saved / "synthesis.pt").write_bytes(b"the user's checkpoint")  # kept inside the model folder
    with pytest.raises(pj.PulseJaxError, match=r"holds files that are not part of the model \(synthesis.pt\)"):
        pj.save_model(model, saved, overwrite=True)
    assert (saved / "synthesis.pt").read_bytes() == b"the user's checkpoint"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m", "m.old", "photos"]  # nothing of ours left


def test_a_failed_write_is_a_message_and_leaves_nothing(tmp_path, monkeypatch):
    """A full disk, injected where the finished model is renamed into place: one message, no staging left,
    an existing model untouched."""
    import errno
    import os

    import pulse_jax.model as model_module

    model = pj.Model.random(pj.PRESETS["tiny_128"], seed=1, with_mapping=False)
    saved = pj.save_model(model, tmp_path / "m")
    before = sorted((p.relative_to(saved), p.read_bytes()) for p in saved.rglob("*") if p.is_file())

    def full_disk(src, dst):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(model_module.os, "replace", full_disk)
    for target in (tmp_path / "new", saved):
        with pytest.raises(pj.PulseJaxError, match="disk is full"):
            pj.save_model(model, target, overwrite=True)
    monkeypatch.setattr(model_module.os, "replace", os.replace)
    assert sorted((p.relative_to(saved), p.read_bytes()) for p in saved.rglob("*") if p.is_file()) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]


def test_outputs_follow_the_umask(tmp_path):
    import os

    old = os.umask(0o022)
    try:
        saved = pj.save_model(pj.Model.random(pj.PRESETS["tiny_128"], seed=1, with_mapping=False), tmp_path / "m")
    finally:
        os.umask(old)
    assert saved.stat().st_mode & 0o777 == 0o755 and (saved / "model.json").stat().st_mode & 0o777 == 0o644


def test_a_truncated_params_file_is_named(saved, capfd):
    files = sorted((p for p in (saved / "params").rglob("*") if p.is_file()), key=lambda p: -p.stat().st_size)
    files[0].write_bytes(files[0].read_bytes()[: files[0].stat().st_size // 2])
    with pytest.raises(pj.CheckpointError, match="a truncated copy"):
        pj.load_model(saved)
    assert "Traceback" not in capfd.readouterr().err  # orbax was never reached


@pytest.mark.parametrize("config", [{"resolution": 2**20}, {"fmap_base": 0}, {"fmap_max": -1},
                                    {"dlatent_size": "512"}])
def test_nonsense_sizes_are_refused(saved, config):
    meta = json.loads((saved / "model.json").read_text())
    meta["config"].update(config)
    (saved / "model.json").write_text(json.dumps(meta))
    with pytest.raises(pj.CheckpointError, match="bad config"):
        pj.load_model(saved)


def test_non_finite_weights_and_fits_are_refused():
    model = pj.Model.random(pj.PRESETS["tiny_128"], seed=0)
    params = model.synthesis.pure()
    params["blocks"]["8x8"]["conv1"]["kernel"] = np.asarray(params["blocks"]["8x8"]["conv1"]["kernel"]).copy()
    params["blocks"]["8x8"]["conv1"]["kernel"][0, 0, 0, 0] = np.nan
    with pytest.raises(pj.CheckpointError, match=r"NaN or infinite values in 1 arrays: blocks/8x8/conv1/kernel"):
        pj.Model.from_arrays(model.config, params)
    for n in (0, 1):
        with pytest.raises(pj.PulseJaxError, match="at least 2 samples"):
            compute_gaussian_fit(model, num_samples=n)
