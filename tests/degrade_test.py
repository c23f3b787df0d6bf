"""bicubic_downsample against the reference operator (torch, written from the spec)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from reference.pulse_torch import bicubic_down

import pulse_jax as pj
from pulse_jax.degrade import bicubic_matrix, bicubic_taps


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
