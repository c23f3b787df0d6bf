"""The image loader: every mode to (H, W, 3) in [0, 1]; anything broken is a PulseJaxError."""

from __future__ import annotations

import io

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from pulse_jax import images
from pulse_jax.errors import PulseJaxError
from pulse_jax.images import list_inputs, read_image, save_png


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "L", "P", "I;16", "LA", "CMYK"])
def test_modes_become_rgb_in_unit_range(tmp_path, mode):
    a = np.random.default_rng(0).integers(0, 255, (8, 8, 3), dtype=np.uint8)
    im = Image.fromarray(a).convert(mode if mode != "I;16" else "L")
    if mode == "I;16":
        im = Image.fromarray((np.asarray(im, np.uint16) * 257).astype(np.uint16))
    path = tmp_path / ("x.tiff" if mode == "CMYK" else "x.png")
    im.save(path)
    out = read_image(path)
    assert out.shape == (8, 8, 3) and out.dtype == np.float32 and out.min() >= 0 and out.max() <= 1
    if mode in ("RGB", "RGBA"):
        np.testing.assert_allclose(out, a / 255.0, atol=1e-6)
    if mode == "I;16":  # 16-bit gray scaled by 65535: same as the 8-bit gray it came from
        np.testing.assert_allclose(out[..., 0], np.asarray(Image.fromarray(a).convert("L")) / 255.0, atol=1e-6)


def test_jpeg_and_round_trip(tmp_path):
    a = np.random.default_rng(1).random((16, 16, 3)).astype(np.float32)
    save_png(a, tmp_path / "a.png")
    np.testing.assert_allclose(read_image(tmp_path / "a.png"), np.round(a * 255) / 255, atol=1e-6)
    Image.fromarray((a * 255).astype(np.uint8)).save(tmp_path / "a.jpg", quality=95)
    assert read_image(tmp_path / "a.jpg").shape == (16, 16, 3)


def test_broken_files_are_user_errors(tmp_path):
    good = io.BytesIO()
    Image.new("RGB", (32, 32), "red").save(good, format="PNG")
    (tmp_path / "truncated.png").write_bytes(good.getvalue()[:60])
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "text.png").write_text("hello")
    for name in ("truncated.png", "empty.png", "text.png"):
        with pytest.raises(PulseJaxError, match="cannot read image"):
            read_image(tmp_path / name)
    with pytest.raises(PulseJaxError, match="missing.png does not exist"):
        read_image(tmp_path / "missing.png")


def test_decompression_bomb_limit_is_kept(tmp_path, monkeypatch):
    Image.new("RGB", (64, 64)).save(tmp_path / "big.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 64 * 64 // 2 + 1)  # between the warning and the error
    with pytest.raises(PulseJaxError, match="DecompressionBomb"):
        read_image(tmp_path / "big.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    with pytest.raises(PulseJaxError, match="DecompressionBomb"):
        read_image(tmp_path / "big.png")


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(max_size=400), cut=st.integers(0, 400), flip=st.integers(0, 10_000))
def test_fuzzed_bytes_never_crash(tmp_path, data, cut, flip):
    """Random bytes, or a real PNG cut short or with a flipped byte: an image or a PulseJaxError."""
    png = io.BytesIO()
    Image.fromarray(np.full((6, 6, 3), 100, np.uint8)).save(png, format="PNG")
    raw = bytearray(png.getvalue()[: max(cut, 8)])
    raw[flip % len(raw)] ^= 0xFF
    for blob in (data, bytes(raw)):
        path = tmp_path / "f.png"
        path.write_bytes(blob)
        try:
            out = read_image(path)
        except PulseJaxError:
            continue
        assert out.ndim == 3 and out.shape[-1] == 3 and np.all(np.isfinite(out))


def test_list_inputs(tmp_path):
    (tmp_path / "b.png").write_bytes(b"")
    (tmp_path / "a.jpg").write_bytes(b"")
    (tmp_path / "notes.txt").write_text("x")
    assert [p.name for p in list_inputs([tmp_path])] == ["a.jpg", "b.png"]
    with pytest.raises(PulseJaxError, match="does not exist"):
        list_inputs([tmp_path / "nope"])
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(PulseJaxError, match="no images found"):
        list_inputs([empty])


def test_to_uint8_rounds_floats_and_keeps_bytes():
    floats = np.array([[[-0.5, 0.0, 0.5]], [[0.999, 1.0, 7.0]]], np.float32)
    np.testing.assert_array_equal(images.to_uint8(floats)[..., 2].ravel(), [128, 255])
    as_bytes = images.to_uint8(floats)
    assert images.to_uint8(as_bytes) is as_bytes  # not read as 0..255 floats and clipped to 0/1
