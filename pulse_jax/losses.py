"""The loss terms of the search for ONE example, their registry, and the loss-string parser.

The reference sums per-sample losses over its batch; here each (image, seed) is its own example, so each
term returns that example's value. A term is a function of ``LossInputs``; ``LOSSES`` names every term a
loss string may use (docs/pulse.md, "Losses"). A new term is a function here and one entry in LOSSES.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp

from pulse_jax.errors import PulseJaxError

_TERM = re.compile(r"^\s*(?:([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*\*\s*)?([A-Za-z0-9_]+)\s*$")


def parse_loss_str(loss_str: str) -> tuple[tuple[float, str], ...]:
    """``"100*L2+0.05*GEOCROSS"`` -> ``((100.0, "L2"), (0.05, "GEOCROSS"))``; a bare name has weight 1."""
    if not isinstance(loss_str, str) or not loss_str.strip():
        raise PulseJaxError("loss_str is empty; use e.g. '100*L2+0.05*GEOCROSS'")
    terms = []
    for part in loss_str.split("+"):
        m = _TERM.match(part)
        if m is None:
            raise PulseJaxError(f"cannot read loss term {part!r} in {loss_str!r}; write terms as WEIGHT*NAME "
                                f"joined by '+', e.g. '100*L2+0.05*GEOCROSS'")
        weight, name = float(m.group(1) or 1.0), m.group(2)
        if name not in LOSSES:
            raise PulseJaxError(f"unknown loss {name!r} in {loss_str!r}; known: {', '.join(LOSSES)}")
        if any(n == name for _, n in terms):
            raise PulseJaxError(f"loss {name} appears twice in {loss_str!r}")
        terms.append((weight, name))
    return tuple(terms)


def _mean(x: jax.Array, weight: jax.Array | None) -> jax.Array:
    """Mean over (h, w, c), or over the pixels where ``weight`` (h, w, 1) is 1 (inpainting)."""
    if weight is None:
        return jnp.mean(x)
    return jnp.sum(x * weight) / (jnp.sum(weight) * x.shape[-1])


def mse(lr_gen: jax.Array, lr_ref: jax.Array, weight: jax.Array | None = None) -> jax.Array:
    """Unclamped mean squared error of one example: the figure the success test uses."""
    return _mean(jnp.square(lr_gen - lr_ref), weight)


def l2_loss(lr_gen, lr_ref, eps: float, weight=None) -> jax.Array:
    """``max(mean((D(gen) - ref)**2), eps)``: its gradient is zero once below eps."""
    return jnp.maximum(mse(lr_gen, lr_ref, weight), eps)


def l1_loss(lr_gen, lr_ref, eps: float, weight=None) -> jax.Array:
    return 10.0 * jnp.maximum(_mean(jnp.abs(lr_gen - lr_ref), weight), eps)


def geocross_loss(w: jax.Array) -> jax.Array:
    """Geodesic cross loss over the (L, D) styles of one example; 0 for a single (tiled) vector.

    For every ordered pair (i, j): d = 2 atan2(|w_i - w_j|, |w_i + w_j|) (each norm
    with 1e-9 under the root); the loss is mean(D * d**2) / 8.
    """
    if w.shape[0] == 1:
        return jnp.zeros((), w.dtype)
    x, y = w[None, :, :], w[:, None, :]
    a = jnp.sqrt(jnp.sum(jnp.square(x - y), -1) + 1e-9)
    b = jnp.sqrt(jnp.sum(jnp.square(x + y), -1) + 1e-9)
    d = 2.0 * jnp.arctan2(a, b)
    return jnp.mean(w.shape[-1] * jnp.square(d)) / 8.0


def noise_regularization(maps) -> jax.Array:
    """The squared autocorrelation of each searched noise map at a shift of one pixel, down and across
    (wrapping), summed over a pyramid of 2x2-averaged versions of the map down to 8x8 (NVIDIA's StyleGAN2
    projector, docs/pulse.md "Losses"): near 0 for white noise, large for the smooth, structured maps an
    unconstrained search drifts to. 0 without searched maps."""
    total = jnp.zeros((), jnp.float32)
    for v in maps:
        x = v.reshape(v.shape[-2:])
        while True:
            total = total + jnp.square(jnp.mean(x * jnp.roll(x, 1, axis=1)))
            total = total + jnp.square(jnp.mean(x * jnp.roll(x, 1, axis=0)))
            if x.shape[0] <= 8:
                break
            h, w = x.shape
            x = x.reshape(h // 2, 2, w // 2, 2).mean(axis=(1, 3))
    return total


class LossInputs(NamedTuple):
    """What a loss term may look at, for one (image, seed)."""

    lr_gen: jax.Array         # the found image, degraded: (h, h, c)
    target: jax.Array         # the observation as the loss compares it: (h, h, c)
    weight: jax.Array | None  # (h, h, 1): 1 where the observation is known (inpainting), else None
    eps: float                # the success threshold; L2 and L1 are clamped at it
    w: jax.Array              # the searched styles, (Lt, D): Lt = 1 with tile_latent
    noise: tuple              # every noise map the generator takes, (1, r, r) each
    searched_noise: tuple = ()  # the maps the search optimises (a subset of noise), (1, r, r) each
    perceptual: Callable | None = None  # (a, b) -> LPIPS of two (h, w, 3) images, when a term needs it


def perceptual_loss(lr_gen, target, weight, distance) -> jax.Array:
    """A perceptual distance (LPIPS, docs/perceptual.md) between the degraded found image and the
    observation: where only some pixels are known (inpainting) both are black elsewhere; a one-channel
    observation (colourisation, a mosaic) is compared as a grey RGB image."""
    if distance is None:
        raise PulseJaxError("the loss LPIPS needs a perceptual model: pass --perceptual DIR (from pulse-jax "
                            "convert --vgg16 ... --lpips-heads ...)")
    if weight is not None:
        lr_gen, target = lr_gen * weight, target * weight
    if lr_gen.shape[-1] == 1:
        lr_gen, target = (jnp.broadcast_to(x, (*x.shape[:-1], 3)) for x in (lr_gen, target))
    return distance(lr_gen, target)


@dataclasses.dataclass(frozen=True)
class LossTerm:
    fn: Callable[[LossInputs], jax.Array]
    doc: str


LOSSES: dict[str, LossTerm] = {
    "L2": LossTerm(lambda x: l2_loss(x.lr_gen, x.target, x.eps, x.weight),
                   "max(mean squared error of the degraded image, eps)"),
    "L1": LossTerm(lambda x: l1_loss(x.lr_gen, x.target, x.eps, x.weight),
                   "10 * max(mean absolute error of the degraded image, eps)"),
    "GEOCROSS": LossTerm(lambda x: geocross_loss(x.w), "geodesic distances between the W+ rows"),
    "NOISEREG": LossTerm(lambda x: noise_regularization(x.searched_noise),
                         "squared 1-pixel autocorrelations of the searched noise maps over a 2x pyramid"),
    "LPIPS": LossTerm(lambda x: perceptual_loss(x.lr_gen, x.target, x.weight, x.perceptual),
                      "LPIPS (VGG16) of the degraded image and the observation; needs --perceptual DIR"),
}


def needs_perceptual(terms: tuple[tuple[float, str], ...]) -> bool:
    return any(name == "LPIPS" for _, name in terms)


def total_loss(terms: tuple[tuple[float, str], ...], inputs: LossInputs) -> jax.Array:
    """The weighted sum of the named terms (names checked by parse_loss_str)."""
    total = jnp.zeros((), jnp.float32)
    for weight, name in terms:
        total = total + weight * LOSSES[name].fn(inputs)
    return total
