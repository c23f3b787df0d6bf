"""Loss terms against the reference formulas, and the loss-string parser."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from reference.pulse_torch import geocross

from pulse_jax.errors import PulseJaxError
from pulse_jax.losses import LOSSES, geocross_loss, l1_loss, l2_loss, mse, parse_loss_str


def test_geocross_matches_reference():
    w = np.random.default_rng(0).standard_normal((3, 18, 512)).astype(np.float32)
    want = geocross(torch.from_numpy(w)).numpy()
    got = np.array([float(geocross_loss(jnp.asarray(x))) for x in w])
    np.testing.assert_allclose(got, want, rtol=1e-5)
    assert float(geocross_loss(jnp.ones((1, 512)))) == 0.0  # tiled: one vector, no pairs


def test_clamped_terms():
    a = jnp.zeros((4, 4, 3))
    b = jnp.full((4, 4, 3), 0.01)
    assert float(mse(a, b)) == pytest.approx(1e-4)
    assert float(l2_loss(a, b, 2e-3)) == pytest.approx(2e-3)       # below eps: clamped
    assert float(l2_loss(a, b + 0.1, 2e-3)) == pytest.approx(0.0121)
    assert float(l1_loss(a, b, 2e-3)) == pytest.approx(10 * 0.01)


def test_parse_reference_default():
    assert parse_loss_str("100*L2+0.05*GEOCROSS") == ((100.0, "L2"), (0.05, "GEOCROSS"))
    assert parse_loss_str("L1") == ((1.0, "L1"),)
    assert parse_loss_str(" 1e2 * L2 + 5E-2*GEOCROSS ") == ((100.0, "L2"), (0.05, "GEOCROSS"))


@pytest.mark.parametrize("bad", ["", "100*L3", "L2+L2", "100**L2", "L2+", "abc*L2", "*L2"])
def test_parse_rejects(bad):
    with pytest.raises(PulseJaxError):
        parse_loss_str(bad)


@given(st.lists(st.tuples(st.floats(0.001, 1000, allow_nan=False), st.sampled_from(sorted(LOSSES))),
                min_size=1, max_size=3, unique_by=lambda t: t[1]))
def test_parse_round_trips(terms):
    text = "+".join(f"{w!r}*{n}" for w, n in terms)
    assert parse_loss_str(text) == tuple((float(w), n) for w, n in terms)


@given(st.text(max_size=30))
def test_parse_never_crashes(text):
    try:
        terms = parse_loss_str(text)
    except PulseJaxError:
        return
    assert all(name in LOSSES for _, name in terms)
