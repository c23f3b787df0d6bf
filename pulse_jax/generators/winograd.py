"""3x3 'same' convolutions by Winograd's minimal filtering F(2x2, 3x3) (Lavin & Gray, CVPR 2016).

Each 2x2 block of outputs comes from a 4x4 tile of the input: the tile and the kernel are each mapped
to 16 numbers (per channel) by small fixed matrices, multiplied point by point (16 matmuls over the
channels), and mapped back. 16 products per output block and channel pair instead of 36: 2.25x fewer.
The transforms are extra passes over memory, so it pays where channels are many and images small
(the generator's 512-channel layers at 8-32 px); rounding stays that of a direct convolution (the
matrices hold only 0, +-1 and +-1/2).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

# B^T (input tile), G (kernel), A^T (output): the standard F(2, 3) matrices.
INPUT_TRANSFORM = np.array([[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]], np.float32)
KERNEL_TRANSFORM = np.array([[1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]], np.float32)
OUTPUT_TRANSFORM = np.array([[1, 1, 1, 0], [0, 1, -1, -1]], np.float32)


def transform_kernel(kernel: jax.Array) -> jax.Array:
    """(3, 3, I, O) HWIO kernel -> (4, 4, I, O): G k G^T per channel pair (computed once per search)."""
    g = jnp.asarray(KERNEL_TRANSFORM, kernel.dtype)
    return jnp.einsum("xa,yb,abio->xyio", g, g, kernel, precision=lax.Precision.HIGHEST)


def _combine(parts, coefficients):
    out = None
    for c, part in zip(coefficients, parts, strict=True):
        if c:
            term = part if c == 1 else -part if c == -1 else part * c
            out = term if out is None else out + term
    return out


def _input_rows(x: jax.Array, axis: int, size: int) -> list[jax.Array]:
    # Tiles start every 2 pixels along ``axis`` of the 1-padded input; row k of every tile at once.
    rows = [lax.slice_in_dim(x, k, k + size - 1, stride=2, axis=axis) for k in range(4)]
    return [_combine(rows, INPUT_TRANSFORM[j]) for j in range(4)]


def conv3x3(x: jax.Array, transformed: jax.Array, dot_kwargs: dict) -> jax.Array:
    """x (B, H, W, I) with H, W even, and ``transform_kernel(k)`` -> the 'same' convolution (B, H, W, O).
    ``dot_kwargs``: precision (or preferred element type) of the 16 matmuls."""
    b, h, w, _ = x.shape
    padded = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    tiles = jnp.stack([jnp.stack(_input_rows(r, 2, w)) for r in _input_rows(padded, 1, h)])
    products = jnp.einsum("xybhwi,xyio->xybhwo", tiles.astype(transformed.dtype), transformed, **dot_kwargs)
    half = [_combine(list(products), OUTPUT_TRANSFORM[j]) for j in range(2)]
    blocks = [[_combine([r[k] for k in range(4)], OUTPUT_TRANSFORM[j]) for j in range(2)] for r in half]
    out = jnp.stack([jnp.stack(row, axis=3) for row in blocks], axis=2)  # (B, H/2, 2, W/2, 2, O)
    return out.reshape(b, h, w, -1).astype(x.dtype)
