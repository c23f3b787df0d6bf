"""The noise maps beyond PULSE's search: NOISEREG in a search, --normalize-noise, and the searched maps'
figures in the report."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

import pulse_jax as pj
from pulse_jax.losses import noise_regularization
from pulse_jax.reports import seed_entries

LR = np.random.default_rng(0).random((1, 8, 8, 3)).astype(np.float32)


@pytest.mark.slow
def test_noisereg_in_a_search_keeps_the_searched_maps_white(micro):
    """PULSE's own loss lets the searched maps drift into structure; with NOISEREG they stay white (on the
    tests' 32 px generator, 60 steps, eps out of reach so the pixel loss keeps pulling: measured 0.32-0.72
    without, under 1e-3 with, for these seeds)."""
    import pulse_jax as pj

    left = {}
    for loss in ("100*L2+0.05*GEOCROSS", "100*L2+0.05*GEOCROSS+100*NOISEREG"):
        config = pj.PulseConfig(steps=60, loss_str=loss, eps=1e-9)
        result = pj.search(micro, LR, config, seeds=2)
        searched = config.trainable_layers(len(micro.noise_shapes()))
        left[loss] = [float(noise_regularization([jnp.asarray(result.noise[i][0, s])[None] for i in searched]))
                      for s in range(2)]
    without, with_term = left.values()
    assert all(w < 0.1 * wo for w, wo in zip(with_term, without, strict=True)), left


@pytest.mark.slow
def test_normalize_noise_leaves_every_searched_map_standard_and_the_report_says_so(micro):
    config = pj.PulseConfig(steps=5, normalize_noise=True)
    result = pj.search(micro, LR, config, seeds=2)
    searched = config.trainable_layers(len(micro.noise_shapes()))
    assert result.searched_noise == searched and searched
    for i in searched:  # zero mean, unit variance, to float32 rounding over a few hundred values
        np.testing.assert_allclose(result.noise[i].mean(axis=(2, 3)), 0.0, atol=1e-5)
        np.testing.assert_allclose(result.noise[i].std(axis=(2, 3)), 1.0, rtol=1e-4)
    figures = seed_entries(result, 0)[1]["searched_noise"]
    assert [f["map"] for f in figures] == list(searched)
    assert all(abs(f["mean"]) < 1e-5 and f["std"] == pytest.approx(1.0, rel=1e-4) for f in figures)
    plain = pj.search(micro, LR, pj.PulseConfig(steps=5), seeds=2)  # PULSE's: only the radius is kept
    assert max(abs(float(plain.noise[i].mean())) for i in searched) > 1e-3
    assert pj.PulseConfig().hash() == pj.PulseConfig(normalize_noise=False).hash()  # runs of before keep their key
    assert pj.PulseConfig().hash() != config.__class__(normalize_noise=True).hash()


@pytest.mark.slow
def test_a_search_with_noisereg_reaches_eps(micro):
    """An input the generator can make (a random point of its latent space, downscaled 4x): with NOISEREG
    beside PULSE's terms every seed still gets within PULSE's eps (measured MSE 1.7e-3 at 100 steps)."""
    import jax

    from pulse_jax.degrade import Degradation
    from pulse_jax.demo import ground_truth

    truth = ground_truth(micro, jax.random.key(7))
    lr = np.asarray(Degradation().simulate(jnp.asarray(truth)[None], 4, jax.random.key(0)))
    result = pj.search(micro, lr, pj.PulseConfig(steps=100, loss_str="100*L2+0.05*GEOCROSS+100*NOISEREG"), seeds=2)
    assert result.success.all(), result.min_l2
