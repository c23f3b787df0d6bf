"""Layer functions whose formulas are rewritten for speed, against the textbook forms in float64."""

from __future__ import annotations

import jax
import numpy as np

from pulse_jax.layers import INSTANCE_NORM_EPS, instance_norm_stats


def test_instance_norm_stats_stay_exact_when_a_mean_dwarfs_its_spread():
    """Channels with mean / std from 0 to 1000 (1M pixels each): the one-pass moments match two passes in
    float64. Float32 rounding of the inputs alone is ~1e-7 relative; a naive E[x^2] - E[x]^2 misses by
    1.6e-3 at a ratio of 100, so 1e-6 tells the two apart."""
    rng = np.random.default_rng(0)
    ratios = np.array([0.0, 0.5, 10.0, 100.0, 1000.0])
    x = (ratios + rng.standard_normal((2, 1024, 1024, ratios.size))).astype(np.float32)
    x64 = x.astype(np.float64)
    mean = x64.mean(axis=(1, 2))
    inv_std = 1 / np.sqrt(((x64 - mean[:, None, None]) ** 2).mean(axis=(1, 2)) + INSTANCE_NORM_EPS)
    got_mean, got_inv_std = (np.asarray(a)[:, 0, 0] for a in jax.jit(instance_norm_stats)(x))
    assert np.abs(got_inv_std / inv_std - 1).max() < 1e-6
    # The mean to float32's own resolution at each magnitude (1000 has a spacing of 6e-5).
    assert np.all(np.abs(got_mean - mean) < 1e-6 * np.maximum(1.0, np.abs(mean)) + 1e-6)
