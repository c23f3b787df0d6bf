"""Saved latents: --save-latents, `pulse-jax render` (bit for bit), NVIDIA's projected_w.npz, and files that
are not what they say."""

from __future__ import annotations

import io
import json
import zipfile

import numpy as np
import pytest
from helpers import pulse_jax_here
from PIL import Image

import pulse_jax as pj
from pulse_jax import latents


def png(path, seed=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(path)
    return path


@pytest.fixture(scope="module")
def run(micro_model_dir, tmp_path_factory):
    """One input searched with two seeds, every seed's image and the latents written."""
    root = tmp_path_factory.mktemp("latents")
    r = pulse_jax_here("upsample", png(root / "in" / "a.png"), "--model", micro_model_dir, "--out", root / "out",
                       "--steps", "3", "--seeds", "2", "--all-seeds", "--save-latents", "--quiet")
    assert r.returncode == 0, r.stderr
    return root


def test_render_draws_the_images_the_search_wrote_bit_for_bit(run, micro_model_dir, micro):
    saved = latents.read(run / "out" / "a_latents.npz")
    assert saved.w.shape == (2, micro.num_ws, micro.generator.dlatent_size) and saved.w.dtype == np.float32
    assert len(saved.noise) == len(micro.noise_shapes()) and saved.meta["model_checksum"] == micro.checksum
    report = json.loads((run / "out" / "report.json").read_text())
    assert report["inputs"][0]["outputs"]["latents"].endswith("a_latents.npz")
    r = pulse_jax_here("render", run / "out" / "a_latents.npz", "--model", micro_model_dir, "--out", run / "again")
    assert r.returncode == 0, r.stderr
    for k in range(2):
        assert (run / "again" / f"a_seed{k}.png").read_bytes() == (run / "out" / f"a_seed{k}.png").read_bytes()


def test_nvidias_projected_w_renders_the_same_image(run, micro):
    """A file with w alone (NVIDIA's projector's layout) goes through the generator on w: the same image to
    float32 rounding (another program computes it), here with the noise maps the search used."""
    saved = latents.read(run / "out" / "a_latents.npz")
    path = run / "projected_w.npz"
    np.savez(path, w=saved.w[:1])
    projected = latents.read(path)
    with_noise = latents.Latents(projected.w, None, tuple(x[:1] for x in saved.noise), {})
    np.testing.assert_allclose(latents.render(micro, with_noise)[0], latents.render(micro, saved)[0], atol=1e-5)
    assert latents.render(micro, projected).shape == (1, 32, 32, 3)  # no maps in the file: the model's or zeros


def test_another_model_is_refused_unless_forced(run, tmp_path):
    from micro_generator import MICRO

    other = pj.save_model(pj.Model.random(MICRO, seed=9, with_mapping=False), tmp_path / "other")
    r = pulse_jax_here("render", run / "out" / "a_latents.npz", "--model", other, "--out", tmp_path / "r")
    assert r.returncode == 2 and "made with another model" in r.stderr and "--force" in r.stderr, r.stderr
    assert not (tmp_path / "r").exists()
    r = pulse_jax_here("render", run / "out" / "a_latents.npz", "--model", other, "--out", tmp_path / "r", "--force")
    assert r.returncode == 0 and (tmp_path / "r" / "a_seed1.png").is_file(), r.stderr


def test_a_rerun_asking_for_latents_adds_them_without_overwrite(micro_model_dir, tmp_path):
    args = ["upsample", png(tmp_path / "in" / "b.png", 1), "--model", micro_model_dir, "--out", tmp_path / "out",
            "--steps", "2", "--quiet"]
    assert pulse_jax_here(*args).returncode == 0
    r = pulse_jax_here(*args, "--save-latents")
    assert r.returncode == 0, r.stderr
    assert latents.read(tmp_path / "out" / "b_latents.npz").seeds == 1
    # a file of the user's where a newly asked output would go (not recorded as ours): never replaced
    (tmp_path / "out" / "b_seed0.png").write_bytes(b"the user's own file")
    r = pulse_jax_here(*args, "--save-latents", "--all-seeds")
    assert r.returncode == 1 and "b_seed0.png exists" in r.stderr + r.stdout, r.stderr
    assert (tmp_path / "out" / "b_seed0.png").read_bytes() == b"the user's own file"


def npz_with(path, **members):
    """A .npz whose members are raw .npy bytes (headers that may lie)."""
    with zipfile.ZipFile(path, "w") as z:
        for name, data in members.items():
            z.writestr(f"{name}.npy", data)
    return path


def npy_bytes(array, **header_changes):
    buffer = io.BytesIO()
    header = np.lib.format.header_data_from_array_1_0(array)
    header.update(header_changes)
    np.lib.format.write_array_header_1_0(buffer, header)
    if array.dtype.hasobject:
        import pickle

        buffer.write(pickle.dumps(array, protocol=2))
    else:
        buffer.write(array.tobytes())
    return buffer.getvalue()


def test_files_that_are_not_latents_are_refused_before_reading(tmp_path):
    marker = tmp_path / "ran"

    class Plant:
        def __reduce__(self):
            import os

            return (os.system, (f"touch {marker}",))

    w = np.zeros((1, 4, 8), np.float32)
    cases = {
        "objects": (npz_with(tmp_path / "o.npz", w=npy_bytes(np.array([Plant()], dtype=object))), "Python objects"),
        "huge": (npz_with(tmp_path / "h.npz", w=npy_bytes(w, shape=(1 << 20, 18, 512))), "refused before reading"),
        "short": (npz_with(tmp_path / "s.npz", w=npy_bytes(w)[:-4]), "truncated"),
        "no w": (npz_with(tmp_path / "n.npz", latent=npy_bytes(w)), "no 'w' array"),
        "nan": (npz_with(tmp_path / "f.npz", w=npy_bytes(np.full((1, 4, 8), np.nan, np.float32))), "finite"),
        "text": (tmp_path / "t.npz", "not a readable .npz"),
    }
    (tmp_path / "t.npz").write_text("w = 1")
    for path, needle in cases.values():
        with pytest.raises(pj.PulseJaxError, match=needle):
            latents.read(path)
    assert not marker.exists()


def test_init_latents_continues_a_search_where_it_left_off(run, micro_model_dir, micro, tmp_path):
    """A second run started from the first's latents: its first step sees exactly the first run's returned
    image (its MSE equals that seed's best_l2), and it is another run (another run key)."""
    first = json.loads((run / "out" / "report.json").read_text())
    r = pulse_jax_here("upsample", run / "in" / "a.png", "--model", micro_model_dir, "--out", tmp_path / "more",
                       "--steps", "2", "--seeds", "2", "--init-latents", run / "out" / "a_latents.npz", "--quiet")
    assert r.returncode in (0, 1), r.stderr  # 1: no seed within eps (a random generator, two steps)
    second = json.loads((tmp_path / "more" / "report.json").read_text())
    for was, now in zip(first["inputs"][0]["seeds"], second["inputs"][0]["seeds"], strict=True):
        assert now["first_l2"] == pytest.approx(was["best_l2"], rel=1e-6)  # the same program on the same values
    assert second["inputs"][0]["run_key"] != first["inputs"][0]["run_key"]


def test_a_projected_w_starts_from_the_latent_that_gives_it(run, micro):
    """w alone (NVIDIA's projector): the start latent is the inverse of w = leaky_relu(latent*std + mean)
    (float32 rounding of that inverse: 1e-4 of the latent's scale)."""
    saved = latents.read(run / "out" / "a_latents.npz")
    np.savez(run / "w_only.npz", w=saved.w)
    start = latents.start_values(run / "w_only.npz", micro, pj.PulseConfig(), seeds=2)
    np.testing.assert_allclose(start.latent, saved.latent, atol=1e-4 * np.abs(saved.latent).max())
    assert start.noise is None  # drawn by the search
    with pytest.raises(pj.PulseJaxError, match="holds 2 seeds' latents; give --seeds 2"):
        latents.start_values(run / "w_only.npz", micro, pj.PulseConfig(), seeds=3)
    with pytest.raises(pj.PulseJaxError, match="latent rows per seed"):
        latents.start_values(run / "w_only.npz", micro, pj.PulseConfig(tile_latent=True), seeds=2)
