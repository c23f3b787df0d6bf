"""python -m convert: formats, gaussian fit, and every way a checkpoint can be wrong."""

from __future__ import annotations

import os
import pickle

import numpy as np
import pytest
import torch
from helpers import convert as run_cli
from helpers import convert_here, pulse_jax, save_checkpoint
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from reference import stylegan_torch as ref

import pulse_jax as pj
from convert.__main__ import main as convert_main


@pytest.mark.slow
def test_cli_converts_and_reports(small_checkpoints, gaussian_fit, gaussian_fit_file, tmp_path):
    files = small_checkpoints["files"]
    out = tmp_path / "model"
    r = run_cli("--synthesis", files["synthesis_zip"], "--mapping", files["mapping_legacy"],
                "--gaussian-fit", gaussian_fit_file, "--out", out)
    assert r.returncode == 0, r.stderr
    assert (out / "model.json").is_file()
    model = pj.load_model(out)
    np.testing.assert_array_equal(np.asarray(model.gaussian_fit[0]), gaussian_fit["mean"].numpy())
    np.testing.assert_array_equal(np.asarray(model.gaussian_fit[1]), gaussian_fit["std"].numpy())
    # A second run does not replace the model silently.
    r = run_cli("--synthesis", files["synthesis_zip"], "--out", out)
    assert r.returncode == 2 and "already exists" in r.stderr and "Traceback" not in r.stderr


def test_gaussian_fit_computed_from_mapping_matches_torch(small_checkpoints, tmp_path):
    """Without gaussian_fit.pt the statistics come from the mapping network, as the reference's."""
    files = small_checkpoints["files"]
    n = 20_000
    assert convert_main(["--synthesis", str(files["synthesis_zip"]), "--mapping", str(files["mapping_zip"]),
                         "--gaussian-fit-samples", str(n), "--out", str(tmp_path / "m"), "--quiet"]) == 0
    mean, std = (np.asarray(a) for a in pj.load_model(tmp_path / "m").gaussian_fit)
    with torch.no_grad():
        z = torch.randn(n, 512, generator=torch.Generator().manual_seed(0))
        x = torch.nn.functional.leaky_relu(ref.mapping(small_checkpoints["mapping"], z), 5.0)
    # Different random samples: the sample mean's standard error is std/sqrt(n);
    # 6 standard errors never fails by chance, a wrong formula misses by far more.
    se = x.std(0).numpy() / np.sqrt(n)
    assert np.all(np.abs(mean - x.mean(0).numpy()) < 6 * se)
    assert np.all(np.abs(std - x.std(0).numpy()) < 6 * se * 1.5)


def test_no_mapping_no_fit_is_allowed_and_said(small_checkpoints, tmp_path):
    r = convert_here("--synthesis", small_checkpoints["files"]["synthesis_legacy"], "--out", tmp_path / "m")
    assert r.returncode == 0, r.stderr
    assert "no gaussian fit" in r.stderr
    assert pj.load_model(tmp_path / "m").gaussian_fit is None


def expect_refusal(path, tmp_path, *needles, flag="--synthesis"):
    out = tmp_path / "out"
    r = convert_here(flag, path, *(["--synthesis", path] if flag != "--synthesis" else []), "--out", out)
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert "Traceback" not in r.stderr
    for needle in needles:
        assert needle in r.stderr, r.stderr
    assert not out.exists()
    return r.stderr


def test_wrong_keys_are_named(tmp_path):
    sd = ref.random_synthesis_state_dict(64, 256, 64)
    sd["blocks.8x8.extra"] = sd.pop("blocks.8x8.conv1.bias")
    path = save_checkpoint(sd, tmp_path / "s.pt", "zip")
    expect_refusal(path, tmp_path, "missing key blocks.8x8.conv1.bias", "unexpected key blocks.8x8.extra")


def test_wrong_shapes_are_named(tmp_path):
    sd = ref.random_synthesis_state_dict(64, 256, 64)
    sd["blocks.16x16.conv1.weight"] = torch.randn(32, 32, 5, 5)
    path = save_checkpoint(sd, tmp_path / "s.pt", "legacy")
    expect_refusal(path, tmp_path, "blocks.16x16.conv1.weight has shape [32, 32, 5, 5], expected [32, 32, 3, 3]")


def test_wrong_mapping_is_named(tmp_path):
    synth = save_checkpoint(ref.random_synthesis_state_dict(64, 256, 64), tmp_path / "s.pt", "zip")
    msd = ref.random_mapping_state_dict()
    del msd["dense7.bias"]
    mapping = save_checkpoint(msd, tmp_path / "m.pt", "zip")
    r = convert_here("--synthesis", synth, "--mapping", mapping, "--out", tmp_path / "o")
    assert r.returncode == 2 and "missing key dense7.bias" in r.stderr and not (tmp_path / "o").exists()


def test_changed_blur_kernel_is_refused(tmp_path):
    sd = ref.random_synthesis_state_dict(64, 256, 64)
    sd["blocks.8x8.conv0_up.intermediate.kernel"] = torch.ones(1, 1, 3, 3) / 9
    expect_refusal(save_checkpoint(sd, tmp_path / "s.pt", "zip"), tmp_path, "blur kernel")


def test_pickle_that_is_not_a_state_dict(tmp_path):
    path = save_checkpoint([torch.ones(3)], tmp_path / "list.pt", "zip")
    expect_refusal(path, tmp_path, "holds a list, not a state dict")
    path = save_checkpoint({"a": 3}, tmp_path / "int.pt", "zip")
    expect_refusal(path, tmp_path, "entry 'a' is a int")


@pytest.mark.slow
def test_file_that_is_not_a_checkpoint(tmp_path):
    path = tmp_path / "notes.pt"
    path.write_text("these are not weights\n" * 10)
    expect_refusal(path, tmp_path, "not a readable PyTorch checkpoint")
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    expect_refusal(empty, tmp_path, "empty")
    expect_refusal(tmp_path / "missing.pt", tmp_path, "no such file")


def test_truncated_checkpoint(small_checkpoints, tmp_path):
    for fmt in ("zip", "legacy"):
        data = small_checkpoints["files"][f"synthesis_{fmt}"].read_bytes()
        path = tmp_path / f"cut_{fmt}.pt"
        path.write_bytes(data[: len(data) // 2])
        expect_refusal(path, tmp_path, "truncated")  # said by the pre-scan (legacy) or the reader (zip)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(position=st.floats(0, 1), value=st.integers(0, 255), fmt=st.sampled_from(["zip", "legacy"]),
       cut=st.booleans())
def test_fuzzed_checkpoint_gives_a_state_dict_or_a_clear_error(tmp_path_factory, position, value, fmt, cut):
    """A corrupted byte (or a cut) anywhere in a real checkpoint: a dict of arrays or a CheckpointError."""
    from convert.torch_io import load_state_dict
    from pulse_jax.errors import CheckpointError

    d = tmp_path_factory.mktemp("fuzz")
    raw = bytearray(save_checkpoint(ref.random_mapping_state_dict(dlatent=8), d / "m.pt", fmt).read_bytes())
    i = min(int(position * len(raw)), len(raw) - 1)
    raw = raw[:i] if cut else raw[:i] + bytes([value]) + raw[i + 1:]
    (d / "m.pt").write_bytes(bytes(raw))
    try:
        out = load_state_dict(d / "m.pt", "mapping checkpoint")
    except CheckpointError:
        return
    assert all(isinstance(v, np.ndarray) for v in out.values())


class _PlantsAFile:
    """Unpickling this calls os.system: what a malicious checkpoint would do."""

    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (os.system, (f"touch {self.target}",))


@pytest.mark.parametrize("fmt", ["zip", "legacy"])
def test_pickle_that_carries_code_is_refused_without_running_it(tmp_path, fmt):
    marker = tmp_path / "pwned"
    sd = {"torgb.weight": torch.ones(3, 16, 1, 1), "evil": _PlantsAFile(marker)}
    path = tmp_path / "evil.pt"
    if fmt == "zip":
        torch.save(sd, path)
    else:
        torch.save(sd, path, _use_new_zipfile_serialization=False)
    # The plant works: plain pickle-loading it would run the command.
    with open(tmp_path / "control.pkl", "wb") as f:
        pickle.dump(_PlantsAFile(tmp_path / "control"), f)
    with open(tmp_path / "control.pkl", "rb") as f:
        pickle.load(f)
    assert (tmp_path / "control").exists()
    expect_refusal(path, tmp_path, "was refused", "may carry code")
    assert not marker.exists()


@pytest.mark.slow
def test_pulse_jax_convert_subcommand(small_checkpoints, tmp_path):
    r = pulse_jax("convert", "--synthesis", small_checkpoints["files"]["synthesis_zip"], "--out", tmp_path / "m",
                  "--quiet")
    assert r.returncode == 0, r.stderr
    assert pj.load_model(tmp_path / "m").config.resolution == 256


def test_a_nan_weight_is_refused_and_nothing_written(tmp_path):
    sd = ref.random_synthesis_state_dict(64, 256, 64)
    sd["blocks.16x16.conv1.weight"][0, 0, 1, 1] = float("nan")
    expect_refusal(save_checkpoint(sd, tmp_path / "s.pt", "zip"), tmp_path, "NaN or infinite values",
                   "blocks/16x16/conv1/kernel")


def test_overwrite_never_deletes_the_inputs_or_a_folder_not_ours(small_checkpoints, tmp_path):
    """The inputs inside --out, and an --out that is not a model directory, were deleted by --overwrite."""
    out = tmp_path / "work"
    out.mkdir()
    synthesis = out / "synthesis.pt"
    synthesis.write_bytes(small_checkpoints["files"]["synthesis_zip"].read_bytes())
    r = convert_here("--synthesis", synthesis, "--out", out, "--overwrite")
    assert r.returncode == 2 and "lies inside --out" in r.stderr and "Traceback" not in r.stderr
    (out / "notes.txt").write_text("mine")
    r = convert_here("--synthesis", small_checkpoints["files"]["synthesis_zip"], "--out", out, "--overwrite")
    assert r.returncode == 2 and "not a pulse-jax model directory" in r.stderr
    assert synthesis.is_file() and (out / "notes.txt").read_text() == "mine"


def test_unwritable_out_and_bad_sample_counts_are_messages(small_checkpoints, tmp_path):
    a_file = tmp_path / "file"
    a_file.write_text("x")
    r = convert_here("--synthesis", small_checkpoints["files"]["synthesis_zip"], "--out", a_file / "m")
    assert r.returncode == 2 and "cannot write" in r.stderr and "Traceback" not in r.stderr, r.stderr
    r = convert_here("--synthesis", small_checkpoints["files"]["synthesis_zip"], "--mapping",
                small_checkpoints["files"]["mapping_zip"], "--gaussian-fit-samples", "1", "--out", tmp_path / "m")
    assert r.returncode == 2 and "at least 2" in r.stderr and not (tmp_path / "m").exists()
