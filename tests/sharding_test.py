"""The search split over 8 (virtual CPU) devices equals the search on one, and remat changes nothing
but memory. Runs in a subprocess: the device count is fixed when jax starts."""

from __future__ import annotations

import pytest
from helpers import command_env, run_python

SCRIPT = r"""
import jax, numpy as np
import pulse_jax as pj
from pulse_jax.latent_search.placement import placement
from reference.stylegan_torch import random_gaussian_fit
assert len(jax.devices()) == 8, jax.devices()
fit = random_gaussian_fit()
from micro_generator import MICRO
m = pj.Model.random(MICRO, seed=4, with_mapping=False)
m = pj.Model.from_arrays(m.config, m.synthesis.pure(),
                         gaussian_fit=(fit["mean"].numpy(), fit["std"].numpy()))
config = pj.PulseConfig(steps=2)
# Images split (8 images over the two devices asked for), then seeds split (2 images do not divide 8
# devices: their 8 seeds do). Four searches: each split and the one-device search it must equal.
for n, s, options in ((8, 1, pj.RunOptions(devices=jax.devices()[:2])), (2, 8, pj.RunOptions(shard=True))):
    lr = np.random.default_rng(n).random((n, 8, 8, 3), dtype=np.float32)
    one = pj.search(m, lr, config, pj.RunOptions(shard=False), seeds=s, key=jax.random.key(0))
    many = pj.search(m, lr, config, options, seeds=s, key=jax.random.key(0))
    assert len(many.images) == n
    # Same program per example, but partitioned convolutions round differently: step 0 (one forward
    # pass) agrees to rounding; after Adam's first, almost sign(g), update near-zero gradient
    # entries may flip (see search_test.test_short_run_follows_reference), measured 1.6e-4.
    np.testing.assert_allclose(many.loss_history[0], one.loss_history[0], rtol=1e-5)
    np.testing.assert_allclose(many.loss_history, one.loss_history, rtol=1e-3)
    assert np.abs(many.images - one.images).mean() < 1e-3
    print("sharded", n, s, "ok")
chosen = jax.devices()[2:4]
assert list(placement(8, 1, None, chosen).example_sharding.mesh.devices.flat) == chosen
# Not splittable: one of the devices asked for, not the default device.
assert list(placement(3, 3, None, chosen).example_sharding.mesh.devices.flat) == chosen[:1]
try:
    pj.search(m, np.zeros((3, 8, 8, 3), np.float32), config, pj.RunOptions(shard=True), seeds=3)
    raise SystemExit("an uneven split must be refused")
except pj.PulseJaxError as e:
    assert "multiple of the device count" in str(e)
print("done")
"""


@pytest.mark.slow
def test_sharded_search_equals_single_device():
    r = run_python("-c", SCRIPT, env=command_env(XLA_FLAGS="--xla_force_host_platform_device_count=8"), timeout=900)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "sharded 8 1 ok" in r.stdout and "sharded 2 8 ok" in r.stdout and "done" in r.stdout
