"""Downscaling operators: pure functions of an image batch (B, H, W, C)."""

from __future__ import annotations

import dataclasses
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
    return separable(images, bicubic_matrix(h, factor), bicubic_matrix(w, factor))


def separable(images: jax.Array, rows: np.ndarray, cols: np.ndarray) -> jax.Array:
    """Apply (h', h) along the height and (w', w) along the width of (B, h, w, C): two float32 matmuls."""
    hi = jax.lax.Precision.HIGHEST
    # Width first: the order in which XLA:CPU lays out both products and their transposes without
    # transposing the full-size image (11 vs 30 ms for the loss and its gradient at 1024 px).
    x = jnp.einsum("jw,bhwc->bhjc", jnp.asarray(cols), images, precision=hi)
    return jnp.einsum("ih,bhjc->bijc", jnp.asarray(rows), x, precision=hi)


def box_downsample(images: jax.Array, factor: int) -> jax.Array:
    """(B, H, W, C) -> mean over each f x f block (area averaging)."""
    b, h, w, c = images.shape
    return images.reshape(b, h // factor, factor, w // factor, factor, c).mean(axis=(2, 4))


@functools.lru_cache(maxsize=64)
def gaussian_matrix(size: int, factor: int, sigma: float) -> np.ndarray:
    """(size // f, size): Gaussian blur of std ``sigma`` (high-res pixels), sampled at each f-block's centre.

    Weights are normalised over the pixels inside the image (no padding to invent).
    """
    centres = np.arange(size // factor) * factor + (factor - 1) / 2.0
    d = np.arange(size)[None, :] - centres[:, None]
    m = np.exp(-0.5 * (d / sigma) ** 2)
    return (m / m.sum(axis=1, keepdims=True)).astype(np.float32)


def gaussian_downsample(images: jax.Array, factor: int, sigma: float | None = None) -> jax.Array:
    """Gaussian blur (default sigma = f / 2) then subsample at block centres; separable, two matmuls."""
    _, h, w, _ = images.shape
    sigma = factor / 2.0 if sigma is None else sigma
    return separable(images, gaussian_matrix(h, factor, sigma), gaussian_matrix(w, factor, sigma))


LUMA_WEIGHTS = (0.299, 0.587, 0.114)  # ITU-R BT.601, as PIL's convert("L")


def to_luma(images: jax.Array) -> jax.Array:
    """(..., 3) RGB -> (..., 1) luma."""
    w = jnp.asarray(LUMA_WEIGHTS, images.dtype)
    return jnp.sum(images * w.reshape((1,) * (images.ndim - 1) + (3,)), axis=-1, keepdims=True)


DOWNSCALERS = ("bicubic", "box", "gaussian")


@dataclasses.dataclass(frozen=True)
class Degradation:
    """How a high-resolution image becomes the observation it must match.

    One downscaler (bicubic: PULSE's; box; gaussian[:sigma]), optionally "gray" (compare luma
    only, so a grayscale input also colourises) and "mask" (compare only where the per-image
    mask is 1: inpainting). Written ``"gaussian:1.5+gray+mask"``.
    """

    downscale: str = "bicubic"
    sigma: float | None = None
    gray: bool = False
    mask: bool = False

    @classmethod
    def parse(cls, text: str) -> Degradation:
        fields: dict = {}
        for part in (p.strip() for p in text.split("+")):
            name, _, arg = part.partition(":")
            if name in DOWNSCALERS:
                if "downscale" in fields:
                    raise PulseJaxError(f"degradation {text!r} names two downscalers; use one of {DOWNSCALERS}")
                fields["downscale"] = name
                if arg:
                    if name != "gaussian":
                        raise PulseJaxError(f"only gaussian takes a parameter (gaussian:SIGMA), got {part!r}")
                    try:
                        fields["sigma"] = float(arg)
                    except ValueError:
                        raise PulseJaxError(f"gaussian sigma must be a number, got {arg!r}") from None
                    if not fields["sigma"] > 0:
                        raise PulseJaxError("gaussian sigma must be > 0")
            elif name in ("gray", "mask") and not arg:
                fields[name] = True
            else:
                raise PulseJaxError(f"unknown degradation {part!r} in {text!r}; use one of {', '.join(DOWNSCALERS)}, "
                                    "optionally '+gray' and '+mask', e.g. 'gaussian:1.5+gray'")
        return cls(**fields)

    def __str__(self) -> str:
        parts = [self.downscale + (f":{self.sigma:g}" if self.sigma is not None else "")]
        return "+".join(parts + [p for p in ("gray", "mask") if getattr(self, p)])

    def apply(self, images: jax.Array, factor: int) -> jax.Array:
        """(B, R, R, 3) -> (B, R/f, R/f, 3, or 1 if gray)."""
        if self.downscale == "bicubic":
            x = bicubic_downsample(images, factor)
        elif self.downscale == "box":
            x = box_downsample(images, factor)
        else:
            x = gaussian_downsample(images, factor, self.sigma)
        return to_luma(x) if self.gray else x

    def observe(self, lr_images: jax.Array) -> jax.Array:
        """The input as the loss sees it: luma when gray."""
        return to_luma(lr_images) if self.gray else lr_images
