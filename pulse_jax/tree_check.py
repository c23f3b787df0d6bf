"""One check for "does this tree of arrays have the paths and shapes it should": every mismatch named."""

from __future__ import annotations

from collections.abc import Mapping

import jax
import numpy as np

from pulse_jax.errors import CheckpointError

SHOWN = 20  # problems listed in one message; the count says how many there are


def flat_shapes(tree) -> dict[str, tuple[int, ...]]:
    """Nested dicts of arrays (or shape structs) -> {"a/b/c": shape}."""
    flat = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {"/".join(str(getattr(k, "key", k)) for k in path): tuple(np.shape(v)) for path, v in flat}


def check_shapes(got: Mapping[str, tuple], expected: Mapping[str, tuple], what: str, *,
                 kind: str = "the model") -> None:
    """Raise CheckpointError naming every missing, unexpected and mis-shaped key of ``got``."""
    problems = [f"missing key {k} (expected shape {list(s)})" for k, s in expected.items() if k not in got]
    problems += [f"unexpected key {k} (shape {list(s)})" for k, s in got.items() if k not in expected]
    problems += [f"key {k} has shape {list(got[k])}, expected {list(s)}"
                 for k, s in expected.items() if k in got and tuple(got[k]) != tuple(s)]
    if problems:
        shown = problems[:SHOWN] + ([f"... and {len(problems) - SHOWN} more"] if len(problems) > SHOWN else [])
        raise CheckpointError(f"{what} does not match {kind} ({len(problems)} problems):\n  " + "\n  ".join(shown))


def check_tree(got, expected, what: str) -> None:
    """The same for two nested trees, compared by path."""
    check_shapes(flat_shapes(got), flat_shapes(expected), what)


def check_finite(tree, what: str) -> None:
    """Raise CheckpointError naming every array with a NaN or an infinity (a search on it would only
    produce NaN, reported as if the input were at fault)."""
    flat = jax.tree_util.tree_flatten_with_path(tree)[0]
    bad = [("/".join(str(getattr(k, "key", k)) for k in path), int(np.size(v) - np.isfinite(v).sum()))
           for path, v in flat if not np.all(np.isfinite(np.asarray(v)))]
    if bad:
        shown = ", ".join(f"{k} ({n} values)" for k, n in bad[:SHOWN])
        raise CheckpointError(f"{what} has NaN or infinite values in {len(bad)} arrays: {shown}; the file is "
                              "damaged or was saved from a diverged training run")
