"""Winograd's F(2x2, 3x3) against the direct convolution, and a Conv layer prepared to use it."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax import lax

from pulse_jax.generators import winograd
from pulse_jax.generators.layers import Conv


def direct(x, k):
    return lax.conv_general_dilated(x, k, (1, 1), ((1, 1), (1, 1)), dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                    precision=lax.Precision.HIGHEST)


def test_winograd_is_the_same_convolution():
    """Float64: the same sums in another order, ~1e-15 of the std; a transform matrix off by one entry
    is off by the whole std. Float32: within 3x the direct convolution's own rounding (both against
    float64; measured 1.5-2x), so it costs no precision worth the name."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 8, 6, 32))
    k = rng.standard_normal((3, 3, 32, 16)) / math.sqrt(9 * 32)
    with jax.enable_x64(True):
        want = np.asarray(direct(jnp.asarray(x), jnp.asarray(k)))
        got = winograd.conv3x3(jnp.asarray(x), winograd.transform_kernel(jnp.asarray(k)), {})
        assert np.abs(np.asarray(got) - want).max() < 1e-12 * want.std()
    x32, k32 = jnp.asarray(x, jnp.float32), jnp.asarray(k, jnp.float32)
    kw = {"precision": lax.Precision.HIGHEST}
    ours = np.abs(np.asarray(winograd.conv3x3(x32, winograd.transform_kernel(k32), kw)) - want).max()
    theirs = np.abs(np.asarray(direct(x32, k32)) - want).max()
    assert ours < 3 * theirs, (ours, theirs)


@pytest.mark.slow  # 9-20 s on 2 cores: the fast tier keeps its 3 minutes; the full suite runs it
def test_conv_layer_prepared_for_winograd_is_the_same_function():
    """Output and input gradient (through the adjoint's transformed kernel) of a Conv prepared with and
    without Winograd, in float64: 1e-12 of the std; a wrong adjoint is off by the whole std."""
    with jax.enable_x64(True):
        layer = Conv(16, 8, 3, gain=math.sqrt(2), rngs=nnx.Rngs(0))
        graphdef, state = nnx.split(layer)
        state = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), state)
        x = jnp.asarray(np.random.default_rng(1).standard_normal((2, 8, 8, 16)))
        g = jnp.asarray(np.random.default_rng(2).standard_normal((2, 8, 8, 8)))
        results = []
        for use in (False, True):
            module = nnx.merge(graphdef, state)
            module.prepare_for_search(winograd=use)
            assert module.kernel.shape[:2] == ((4, 4) if use else (3, 3))
            y, vjp = jax.vjp(lambda x_, m=module: m(x_, "highest"), x)
            results.append((np.asarray(y), np.asarray(vjp(g)[0])))
        for a, b in zip(*results, strict=True):
            assert np.abs(a - b).max() < 1e-12 * b.std()
