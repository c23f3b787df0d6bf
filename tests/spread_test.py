"""The spread across seeds: the figures against a direct computation, the heat map, --spread's file."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
from helpers import pulse_jax_here
from PIL import Image

from pulse_jax import spread


def fake_result(images, success, diverged=None):
    success = np.asarray(success)[None]
    return SimpleNamespace(images=np.asarray(images, np.float32)[None], success=success,
                           diverged=np.zeros_like(success) if diverged is None else np.asarray(diverged)[None])


def test_figures_are_the_std_over_the_seeds_within_eps():
    rng = np.random.default_rng(0)
    images = rng.random((4, 8, 8, 3))
    result = fake_result(images, [True, False, True, True])
    got = spread.figures(result, 0)
    want = images[[0, 2, 3]].std(axis=0).mean(axis=-1)
    assert got["seeds"] == [0, 2, 3] and got["over"] == "within eps"
    np.testing.assert_allclose([got["pixel_std_mean"], got["pixel_std_max"]], [want.mean(), want.max()], rtol=1e-6)
    fewer = spread.figures(fake_result(images, [True, False, False, False], [False, False, False, True]), 0)
    assert fewer["seeds"] == [0, 1, 2] and fewer["over"].startswith("all seeds")  # diverged seeds never count
    assert spread.figures(fake_result(images[:2], [True, True], [False, True]), 0) is None


def test_heat_map_runs_from_black_to_white():
    colours = spread.heat(np.array([[0.0, 0.5, 1.0, 2.0]]), top=1.0)
    np.testing.assert_allclose(colours[0, 0], 0.0)
    np.testing.assert_allclose(colours[0, 2], 1.0)
    np.testing.assert_allclose(colours[0, 3], 1.0)  # above the top: clipped
    assert 0 < colours[0, 1].sum() < 3
    np.testing.assert_allclose(spread.heat(np.zeros((2, 2)), top=0.0), 0.0)  # identical seeds: black


def test_spread_file_and_figures_in_a_run(micro_model_dir, tmp_path):
    path = tmp_path / "in" / "a.png"
    path.parent.mkdir(parents=True)
    Image.fromarray(np.random.default_rng(3).integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(path)
    r = pulse_jax_here("upsample", path, "--model", micro_model_dir, "--out", tmp_path / "out", "--steps", "2",
                       "--seeds", "3", "--all-seeds", "--spread", "--quiet")
    assert r.returncode in (0, 1), r.stderr  # 1: no seed within eps (two steps of a random generator)
    entry = json.loads((tmp_path / "out" / "report.json").read_text())["inputs"][0]
    figures = entry["spread"]
    seeds = np.stack([np.asarray(Image.open(tmp_path / "out" / f"a_seed{s}.png"), np.float64) / 255
                      for s in figures["seeds"]])
    # the figures come from the float images, the check from their 8-bit PNGs: 1/255 apart at most
    assert abs(figures["pixel_std_mean"] - seeds.std(axis=0).mean()) < 1 / 255
    picture = Image.open(entry["outputs"]["spread"])
    assert picture.size == (64, 32)  # the mean image (32 px) beside the map


def test_lpips_spread_is_the_mean_over_pairs_of_seeds_within_eps():
    """With a perceptual model: the mean of LPIPS over every pair of the chosen seeds, computed pair by pair
    here; images larger than 256 px are box-averaged to 256 first (512 -> 256 here)."""
    import pulse_jax as pj

    perceptual = pj.Perceptual.random(0)
    rng = np.random.default_rng(1)
    images = rng.random((4, 16, 16, 3)).astype(np.float32)
    got = spread.figures(fake_result(images, [True, True, False, True]), 0, perceptual)
    pairs = [(0, 1), (0, 3), (1, 3)]
    want = np.mean([float(perceptual(images[[i]], images[[j]])[0]) for i, j in pairs])
    assert abs(got["lpips_mean_pairwise"] - want) <= 1e-5 * want  # one call of three pairs vs three calls
    assert got["lpips_size"] == 16 and "lpips_mean_pairwise" not in spread.figures(fake_result(images, [1] * 4), 0)
    big = rng.random((2, 512, 512, 3)).astype(np.float32)
    small = big.reshape(2, 256, 2, 256, 2, 3).mean(axis=(2, 4))
    np.testing.assert_allclose(spread.shrunk(big), small, rtol=1e-6)
