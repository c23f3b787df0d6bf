"""The one tree check: every missing, unexpected and mis-shaped key named, and how many there are."""

from __future__ import annotations

import numpy as np
import pytest

from pulse_jax.errors import CheckpointError
from pulse_jax.tree_check import SHOWN, check_shapes, check_tree


def test_names_every_kind_of_mismatch():
    expected = {"a": {"w": np.zeros((2, 3)), "b": np.zeros(3)}, "c": np.zeros(1)}
    got = {"a": {"w": np.zeros((3, 2))}, "c": np.zeros(1), "d": np.zeros(4)}
    with pytest.raises(CheckpointError) as e:
        check_tree(got, expected, "test params")
    text = str(e.value)
    assert "test params does not match the model (3 problems)" in text
    assert "missing key a/b (expected shape [3])" in text
    assert "unexpected key d (shape [4])" in text
    assert "key a/w has shape [3, 2], expected [2, 3]" in text
    check_tree(expected, expected, "same")  # no error


def test_long_lists_are_cut_with_a_count():
    expected = {f"k{i}": (1,) for i in range(SHOWN + 5)}
    with pytest.raises(CheckpointError, match=rf"\({SHOWN + 5} problems\)[\s\S]*and 5 more"):
        check_shapes({}, expected, "x", kind="a checkpoint")
