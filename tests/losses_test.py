"""Loss terms against the reference formulas, and the loss-string parser."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from reference.pulse_torch import geocross
from reference.stylegan2_torch import noise_regularization as reference_noise_regularization

from pulse_jax.errors import PulseJaxError
from pulse_jax.losses import LOSSES, geocross_loss, l1_loss, l2_loss, mse, noise_regularization, parse_loss_str


def test_geocross_matches_reference():
    w = np.random.default_rng(0).standard_normal((3, 18, 512)).astype(np.float32)
    want = geocross(torch.from_numpy(w)).numpy()
    got = np.array([float(geocross_loss(jnp.asarray(x))) for x in w])
    np.testing.assert_allclose(got, want, rtol=1e-5)
    assert float(geocross_loss(jnp.ones((1, 512)))) == 0.0  # tiled: one vector, no pairs


def test_noise_regularization_matches_the_formula_and_its_gradient():
    """Value and gradient against the formula in torch float64: 1e-5 relative for the value, 1e-4 for the
    gradient (float32 sums of a few thousand products; measured 6e-9 and 1.5e-6 of the largest entry),
    far under what a missed level or a wrong shift changes (tens of %)."""
    rng = np.random.default_rng(1)
    maps = [rng.standard_normal((1, r, r)) for r in (4, 8, 16, 32, 64)]
    maps[2] = maps[2] + np.linspace(0, 3, 16)[None, :, None]  # structure: a real value to match, not ~0
    theirs = [torch.tensor(m, dtype=torch.float64, requires_grad=True) for m in maps]
    want = reference_noise_regularization(theirs)
    want.backward()
    ours = [jnp.asarray(m, jnp.float32) for m in maps]
    got, grads = jax.value_and_grad(lambda ms: noise_regularization(ms))(ours)
    np.testing.assert_allclose(float(got), want.item(), rtol=1e-5)
    for g, t in zip(grads, theirs, strict=True):
        np.testing.assert_allclose(np.asarray(g), t.grad.numpy(), rtol=1e-4, atol=1e-5 * np.abs(t.grad.numpy()).max())
    # a flat map is as correlated as a map can be: 2 per level (64 -> 32 -> 16 -> 8: four levels)
    assert float(noise_regularization([jnp.ones((1, 64, 64))])) == pytest.approx(8.0)
    assert float(noise_regularization(())) == 0.0


def test_clamped_terms():
    a = jnp.zeros((4, 4, 3))
    b = jnp.full((4, 4, 3), 0.01)
    assert float(mse(a, b)) == pytest.approx(1e-4)
    assert float(l2_loss(a, b, 2e-3)) == pytest.approx(2e-3)       # below eps: clamped
    assert float(l2_loss(a, b + 0.1, 2e-3)) == pytest.approx(0.0121)
    assert float(l1_loss(a, b, 2e-3)) == pytest.approx(10 * 0.01)


def test_noise_regularization_is_a_loss_term_of_the_searched_maps():
    from pulse_jax.losses import LossInputs, total_loss

    searched = (jnp.ones((1, 16, 16)),)
    inputs = LossInputs(jnp.zeros((4, 4, 3)), jnp.zeros((4, 4, 3)), None, 2e-3, jnp.ones((1, 512)),
                        noise=(jnp.ones((1, 4, 4)), *searched), searched_noise=searched)
    assert float(total_loss(parse_loss_str("2*NOISEREG"), inputs)) == pytest.approx(2 * 4.0)  # 16 -> 8: 2 levels


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

