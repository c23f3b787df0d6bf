"""Random keys per (image, seed): seed s of image n gets the same key whatever runs beside it."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from pulse_jax.errors import PulseJaxError


def per_image_keys(key, n: int) -> jax.Array:
    """One key (typed or raw uint32 data) -> n keys folded from it; n keys are taken as they are."""
    if key is None:
        key = jax.random.key(0)
    if not jnp.issubdtype(jnp.asarray(key).dtype, jax.dtypes.prng_key):
        key = jax.random.wrap_key_data(jnp.asarray(key, jnp.uint32))
    if key.shape == ():
        return jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.arange(n))
    if key.shape != (n,):
        raise PulseJaxError(f"key must be one key or one per image ({n}), got shape {key.shape}")
    return key


def seed_keys(key, num_images: int, seeds: int, seed_offset: int = 0) -> jax.Array:
    """(N, S) keys: seed s of image n uses fold_in(image_key_n, seed_offset + s)."""
    image_keys = per_image_keys(key, num_images)
    indices = jnp.arange(seed_offset, seed_offset + seeds)
    return jax.vmap(lambda k: jax.vmap(lambda s: jax.random.fold_in(k, s))(indices))(image_keys)
