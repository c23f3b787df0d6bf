"""bicubic_downsample against the reference operator (torch, written from the spec)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from reference.pulse_torch import bicubic_down

import pulse_jax as pj
from pulse_jax.degrade import Degradation, bicubic_matrix, bicubic_taps, gaussian_downsample


@pytest.mark.parametrize("factor", [2, 3, 4, 5, 8, 16, 32, 64])
def test_matches_reference(factor):
    size = 128 if factor <= 32 else 256
    size -= size % factor
    x = np.random.default_rng(factor).random((2, size, size, 3), dtype=np.float32)
    got = np.asarray(pj.bicubic_downsample(x, factor))
    with torch.no_grad():
        want = bicubic_down(torch.from_numpy(x).permute(0, 3, 1, 2), factor).permute(0, 2, 3, 1).numpy()
    assert got.shape == want.shape == (2, size // factor, size // factor, 3)
    # Sums of 4f products of numbers in [0, 1], float32 in both: rounding is ~1e-7.
    np.testing.assert_allclose(got, want, atol=2e-6)


def test_operator_properties():
    for f in (2, 4, 32):
        assert np.isclose(bicubic_taps(f).sum(), 1.0)
        m = bicubic_matrix(256, f)
        np.testing.assert_allclose(m.sum(1), 1.0, atol=1e-6)  # a constant image stays constant
    flat = np.full((1, 64, 64, 3), 0.3, np.float32)
    np.testing.assert_allclose(np.asarray(pj.bicubic_downsample(flat, 8)), 0.3, atol=1e-6)
    # Non-square images work too (the operator is separable); bad factors are refused.
    assert pj.bicubic_downsample(np.zeros((1, 64, 32, 1), np.float32), 4).shape == (1, 16, 8, 1)
    with pytest.raises(pj.PulseJaxError, match="must be a positive integer dividing"):
        pj.bicubic_downsample(np.zeros((1, 30, 30, 3), np.float32), 4)


def test_box_is_the_block_mean():
    x = np.random.default_rng(0).random((1, 8, 8, 3), dtype=np.float32)
    want = x.reshape(1, 2, 4, 2, 4, 3).mean(axis=(2, 4))
    np.testing.assert_allclose(np.asarray(Degradation.parse("box").apply(x, 4)), want, atol=1e-6)


def test_gaussian_is_a_normalised_blur_sampled_at_block_centres():
    x = np.random.default_rng(1).random((1, 16, 16, 1), dtype=np.float32)
    got = np.asarray(Degradation.parse("gaussian:1.5").apply(np.repeat(x, 3, -1), 4))[0, :, :, 0]
    ys = np.arange(16)
    for i, j in [(0, 0), (1, 2), (3, 3)]:
        cy, cx = i * 4 + 1.5, j * 4 + 1.5
        wy, wx = np.exp(-0.5 * ((ys - cy) / 1.5) ** 2), np.exp(-0.5 * ((ys - cx) / 1.5) ** 2)
        w = np.outer(wy / wy.sum(), wx / wx.sum())
        assert got[i, j] == pytest.approx(float((w * x[0, :, :, 0]).sum()), abs=1e-5)
    flat = np.full((1, 32, 32, 3), 0.25, np.float32)
    np.testing.assert_allclose(np.asarray(gaussian_downsample(flat, 8)), 0.25, atol=1e-6)


def test_gray_is_luma_and_composes():
    x = np.random.default_rng(2).random((2, 8, 8, 3), dtype=np.float32)
    d = Degradation.parse("box+gray")
    got = np.asarray(d.apply(x, 2))
    want = (x.reshape(2, 4, 2, 4, 2, 3).mean(axis=(2, 4)) * np.array([0.299, 0.587, 0.114])).sum(-1, keepdims=True)
    np.testing.assert_allclose(got, want, atol=1e-6)
    assert str(Degradation.parse("gaussian:2+gray+mask")) == "gaussian:2+gray+mask"
    for bad in ("bicubic+box", "blur", "box:3", "gaussian:x", "gray:1"):
        with pytest.raises(pj.PulseJaxError):
            Degradation.parse(bad)


def test_mask_limits_the_loss_to_known_pixels():
    """Changing the input where the mask is 0 changes nothing; where it is 1, it does."""
    from pulse_jax.losses import mse

    gen = np.random.default_rng(3).random((8, 8, 3), dtype=np.float32)
    ref = np.random.default_rng(4).random((8, 8, 3), dtype=np.float32)
    mask = np.zeros((8, 8, 1), np.float32)
    mask[2:6, 2:6] = 1
    other = ref.copy()
    other[0] += 0.5
    assert float(mse(gen, ref, mask)) == pytest.approx(float(mse(gen, other, mask)))
    other[3, 3] += 0.5
    assert float(mse(gen, ref, mask)) != pytest.approx(float(mse(gen, other, mask)))
    assert float(mse(gen, ref, mask)) == pytest.approx(float(((gen - ref) ** 2)[2:6, 2:6].mean()), rel=1e-5)
