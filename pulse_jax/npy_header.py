"""The header of a .npy array from a file users bring, read before any of its data: the array's shape,
order and dtype, refused when it names Python objects (reading those needs unpickling)."""

from __future__ import annotations

import math
from typing import BinaryIO

import numpy as np

from pulse_jax.errors import PulseJaxError

READERS = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}


def read_header(f: BinaryIO, what: str) -> tuple[tuple[int, ...], bool, np.dtype, int]:
    """-> (shape, fortran_order, dtype, data bytes), ``f`` left at the start of the data."""
    try:
        version = np.lib.format.read_magic(f)
    except ValueError as e:
        raise PulseJaxError(f"{what}: not a .npy array ({e})") from None
    reader = READERS.get(version)
    if reader is None:
        raise PulseJaxError(f"{what}: .npy format version {version} is not read here (1.0 and 2.0 are)")
    try:
        shape, fortran, dtype = reader(f)
    except (ValueError, SyntaxError, EOFError) as e:
        raise PulseJaxError(f"{what}: not a .npy array ({e})") from None
    if dtype.hasobject:
        raise PulseJaxError(f"{what}: an array of Python objects (it would need unpickling) was refused")
    return shape, fortran, dtype, math.prod(shape) * dtype.itemsize
