"""Downscaling operators: pure functions of an image batch (B, H, W, C)."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from pulse_jax.errors import PulseJaxError


def keys_cubic(t: np.ndarray, a: float = -0.5) -> np.ndarray:
    t = np.abs(t)
    near = (a + 2) * t**3 - (a + 3) * t**2 + 1
    far = a * t**3 - 5 * a * t**2 + 8 * a * t - 4 * a
    return np.where(t <= 1, near, np.where(t < 2, far, 0.0))


def bicubic_taps(factor: int) -> np.ndarray:
    """The reference's filter: length 4f, tap i = cubic((i - floor(4f/2) + 0.5) / f), summing to 1."""
    n = 4 * factor
    taps = keys_cubic((np.arange(n) - n // 2 + 0.5) / factor)
    return taps / taps.sum()


@functools.lru_cache(maxsize=64)
def bicubic_matrix(size: int, factor: int) -> np.ndarray:
    """(size // f, size) matrix of the 1-D operator: reflect-pad by 3f (3f // 2 before), stride-f filter.

    Folding the padding into one small matrix makes D two matmuls, exact and fast
    on every backend (no strided or depthwise convolutions).
    """
    taps = bicubic_taps(factor)
    before = 3 * factor // 2
    padded_index = np.pad(np.arange(size), (before, 3 * factor - before), mode="reflect")
    m = np.zeros((size // factor, size), np.float64)
    for o in range(size // factor):
        np.add.at(m[o], padded_index[o * factor: o * factor + len(taps)], taps)
    return m.astype(np.float32)


def bicubic_downsample(images: jax.Array, factor: int) -> jax.Array:
    """(B, H, W, C) -> (B, H/f, W/f, C), PULSE's BicubicDownSample for any integer factor f."""
    if images.ndim != 4:
        raise PulseJaxError(f"images must be (batch, height, width, channels), got shape {images.shape}")
    _, h, w, _ = images.shape
    if factor < 1 or h % factor or w % factor:
        raise PulseJaxError(f"factor {factor} must be a positive integer dividing the image size {h}x{w}")
    if factor == 1:
        return images
    mh = jnp.asarray(bicubic_matrix(h, factor))
    mw = jnp.asarray(bicubic_matrix(w, factor))
    hi = jax.lax.Precision.HIGHEST
    x = jnp.einsum("ih,bhwc->biwc", mh, images, precision=hi)
    return jnp.einsum("jw,biwc->bijc", mw, x, precision=hi)
