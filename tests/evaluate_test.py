"""pulse-jax evaluate: PSNR and SSIM against numpy and scikit-image, consistency, files, and a run's folder."""

from __future__ import annotations

import json

import numpy as np
import pytest
from helpers import pulse_jax_here
from PIL import Image
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from pulse_jax import evaluate


def test_psnr_and_ssim_match_scikit_image():
    """float32 sums over a 48x48x3 image: bars 1e-6 of SSIM and 1e-4 dB of PSNR (measured 1.2e-7 and 3.7e-6).
    On these images scikit-image's own other choices differ by at least 9.8e-6 (a 7x7 uniform window) and
    4.3e-5 (sigma 1.0): the bar tells them apart."""
    rng = np.random.default_rng(0)
    truth = rng.random((5, 48, 48, 3))
    found = np.clip(truth + rng.normal(0, [[[[s]]] for s in (0.01, 0.05, 0.1, 0.2, 0.4)], truth.shape), 0, 1)
    found[4] = truth[4][::-1]  # structure moved, not noise
    p, s = evaluate.measure(found, truth)
    for i in range(5):
        assert p[i] == pytest.approx(peak_signal_noise_ratio(truth[i], found[i], data_range=1), abs=1e-4)
        want = structural_similarity(truth[i], found[i], gaussian_weights=True, sigma=1.5,
                                     use_sample_covariance=False, data_range=1, channel_axis=-1)
        assert s[i] == pytest.approx(want, abs=1e-6)
    assert np.all(np.diff(p[:4]) < 0) and np.all(np.diff(s[:4]) < 0)  # more noise, worse on both


def test_consistency_is_the_degraded_result_against_the_input():
    rng = np.random.default_rng(1)
    found = rng.random((32, 32, 3)).astype(np.float32)
    observed = found.reshape(8, 4, 8, 4, 3).mean(axis=(1, 3))
    assert evaluate.consistency(found, observed, "box") == pytest.approx(0.0, abs=1e-12)
    assert evaluate.consistency(found, observed + 0.1, "box") == pytest.approx(0.01, rel=1e-4)
    assert evaluate.consistency(found, observed, "bicubic+mask") is None  # the mask's pixels are not in the run


def test_evaluate_a_run(micro_model_dir, tmp_path):
    truths, inputs = tmp_path / "truth", tmp_path / "in"
    truths.mkdir()
    inputs.mkdir()
    rng = np.random.default_rng(2)
    for name in ("a", "b"):
        truth = rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)
        Image.fromarray(truth).save(truths / f"{name}.png")
        Image.fromarray(truth).resize((8, 8), Image.Resampling.BOX).save(inputs / f"{name}.png")
    out = tmp_path / "out"
    pulse_jax_here("upsample", inputs, "--model", micro_model_dir, "--out", out, "--steps", "2", "--quiet",
                   "--degradation", "box")
    (truths / "b.png").rename(truths / "other.png")  # b has no truth now
    r = pulse_jax_here("evaluate", out, "--truth", truths)
    assert r.returncode == 0 and "1 inputs with a truth" in r.stdout and "1 without a truth" in r.stdout, r.stderr
    result = json.loads((out / "evaluation.json").read_text())
    row = result["inputs"][0]
    found = np.asarray(Image.open(out / "a.png"), np.float64) / 255
    truth = np.asarray(Image.open(truths / "a.png"), np.float64) / 255
    assert row["psnr"] == pytest.approx(peak_signal_noise_ratio(truth, found, data_range=1), abs=1e-3)
    lr = np.asarray(Image.open(inputs / "a.png"), np.float64) / 255
    assert row["consistency_mse"] == pytest.approx(np.mean((found.reshape(8, 4, 8, 4, 3).mean(axis=(1, 3)) - lr) ** 2),
                                                   rel=1e-3)
    assert (out / "evaluation.csv").read_text().splitlines()[0] == ",".join(evaluate.CSV_HEADER)
    assert pulse_jax_here("evaluate", out, "--truth", truths).returncode == 0  # ours: rewritten
    (out / "evaluation.csv").write_text("my,own\n")
    r = pulse_jax_here("evaluate", out, "--truth", truths)
    assert r.returncode == 2 and "did not write" in r.stderr and (out / "evaluation.csv").read_text() == "my,own\n"


@pytest.mark.slow  # a run and LPIPS's compile: 10-20 s; lpips_in_groups below stays in the fast tier
def test_evaluate_with_a_perceptual_model_adds_lpips(micro_model_dir, tmp_path):
    """--perceptual: each row's LPIPS is the distance of the files' images (computed directly), the summary's
    the mean; an evaluation.csv of the earlier header (no lpips column) is still ours and rewritten."""
    import pulse_jax as pj

    truths, inputs, out = tmp_path / "truth", tmp_path / "in", tmp_path / "out"
    truths.mkdir()
    inputs.mkdir()
    rng = np.random.default_rng(3)
    for name in ("a", "b", "c"):
        truth = rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)
        Image.fromarray(truth).save(truths / f"{name}.png")
        Image.fromarray(truth).resize((8, 8), Image.Resampling.BOX).save(inputs / f"{name}.png")
    pulse_jax_here("upsample", inputs, "--model", micro_model_dir, "--out", out, "--steps", "2", "--quiet")
    perceptual = pj.Perceptual.random(2)
    pj.perceptual.save_perceptual(perceptual, tmp_path / "p")
    (out / "evaluation.csv").write_text(",".join(evaluate.EARLIER_CSV_HEADERS[0]) + "\n")
    r = pulse_jax_here("evaluate", out, "--truth", truths, "--perceptual", tmp_path / "p")
    assert r.returncode == 0 and "mean LPIPS" in r.stdout, r.stderr
    result = json.loads((out / "evaluation.json").read_text())
    for row in result["inputs"]:
        found = np.asarray(Image.open(out / f"{row['input']}.png"), np.float32)[None] / 255
        truth = np.asarray(Image.open(truths / f"{row['input']}.png"), np.float32)[None] / 255
        # The same function on the same arrays, in a group of three instead of one: summation order only.
        assert row["lpips"] == pytest.approx(float(perceptual(found, truth)[0]), rel=1e-5)
    assert result["summary"]["mean_lpips"] == pytest.approx(np.mean([r["lpips"] for r in result["inputs"]]))
    assert result["summary"]["perceptual"] == perceptual.checksum
    assert (out / "evaluation.csv").read_text().splitlines()[0] == ",".join(evaluate.CSV_HEADER)


def test_lpips_in_groups_is_the_same_pair_by_pair_at_any_group_size(monkeypatch):
    import pulse_jax as pj
    from pulse_jax import perceptual as module

    perceptual = pj.Perceptual.random(0)
    rng = np.random.default_rng(4)
    a, b = rng.uniform(0, 1, (2, 5, 16, 16, 3)).astype(np.float32)
    whole = module.distances_in_groups(perceptual, a, b)
    monkeypatch.setattr(module, "PIXELS_PER_CALL", 2 * 64 * 64)  # pairs of two (16 px compared at 64), last padded
    np.testing.assert_allclose(module.distances_in_groups(perceptual, a, b), whole, rtol=1e-5)
    assert whole.shape == (5,) and np.all(whole > 0)
