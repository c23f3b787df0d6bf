"""Typed reads of the settings a network file's records hold: each value checked for its type (and range)
before it is used, so that a record holding a string, a list or a tensor where a number or a dict belongs is
one CheckpointError naming the field, never a traceback from deep in a converter."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from pulse_jax.errors import CheckpointError

_MISSING = object()


def _plain(value):
    """numpy scalars and 0-d arrays as the Python numbers they hold (the files keep some settings so); a
    rebuilt numpy array (nvidia_pickle.NumpyArray) as its array."""
    value = getattr(value, "value", value) if type(value).__name__ == "NumpyArray" else value
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray) and value.shape == () and value.dtype.kind in "biuf":
        return value.item()
    return value


def _get(record: Mapping, name: str, default, what: str):
    if not isinstance(record, Mapping):
        raise CheckpointError(f"{what}: holds a {type(record).__name__} where a record of settings belongs")
    return _plain(record.get(name, default))


def int_field(record: Mapping, name: str, default, what: str, *, low: int | None = None) -> int:
    value = _get(record, name, default, what)
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or (low is not None and value < low):
        bound = f" >= {low}" if low is not None else ""
        raise CheckpointError(f"{what}: {name} is {value!r} ({type(value).__name__}); a whole number{bound} belongs "
                              "there")
    return value


def float_field(record: Mapping, name: str, default, what: str, *, optional: bool = False) -> float | None:
    value = _get(record, name, default, what)
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise CheckpointError(f"{what}: {name} is {value!r} ({type(value).__name__}); a finite number belongs "
                              "there")
    return float(value)


def str_field(record: Mapping, name: str, default, what: str) -> str:
    value = _get(record, name, default, what)
    if not isinstance(value, str):
        raise CheckpointError(f"{what}: {name} is {value!r} ({type(value).__name__}); text belongs there")
    return value


def dict_field(record: Mapping, name: str, what: str) -> dict:
    """A record's sub-record (absent or None: empty)."""
    value = _get(record, name, None, what)
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise CheckpointError(f"{what}: {name} is a {type(value).__name__} ({str(value)[:60]!r}); a record of "
                              "settings belongs there")
    return dict(value)


def size_field(record: Mapping, name: str, default, what: str) -> int:
    """A square size kept as a number or as [width, height] (NVIDIA's StyleGAN3 layers): the one side."""
    value = _get(record, name, default, what)
    if isinstance(value, np.ndarray) and value.shape == (2,) and value.dtype.kind in "iu" and value[0] == value[1]:
        value = int(value[0])
    elif isinstance(value, (list, tuple)) and len(value) == 2 and value[0] == value[1]:
        value = value[0]
    return int_field({name: value}, name, None, what, low=1)


def any_field(record: Mapping, name: str, default: Any, what: str) -> Any:
    return _get(record, name, default, what)
