"""The reference's optimisers, learning-rate schedules and sphere projection, optax style.

Each matches torch's formula exactly (docs/pulse.md, "One step").
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

OPTIMIZERS = ("adam", "sgd", "sgdm", "adamax")
SCHEDULES = ("fixed", "linear1cycle", "linear1cycledrop")


def lr_factor(name: str, steps: int) -> Callable[[jax.Array], jax.Array]:
    """Schedule factor f(x) for step x = 0, 1, ...; the learning rate is base * f(x)."""

    def one_cycle(x, length):
        return (9.0 * (1.0 - jnp.abs(x / length - 0.5) * 2.0) + 1.0) / 10.0

    def factor(count):
        x = jnp.asarray(count, jnp.float32)
        if name == "fixed":
            return jnp.ones_like(x)
        if name == "linear1cycle":
            return one_cycle(x, steps)
        if name == "linear1cycledrop":
            drop_start = 0.9 * steps
            tail = 0.1 + (x - drop_start) / (0.1 * steps) * (1.0 / 1000.0 - 0.1)
            return jnp.where(x < drop_start, one_cycle(x, drop_start), tail)
        raise ValueError(f"unknown schedule {name!r}")

    return factor


def _standard_promotion(tx: optax.GradientTransformation) -> optax.GradientTransformation:
    """optax's bias corrections mix float and int32 (1 - b1**count), fine under standard promotion:
    ask for it here so that everything else stays checkable under strict promotion."""

    def update(updates, state, params=None):
        with jax.numpy_dtype_promotion("standard"):
            return tx.update(updates, state, params)

    return optax.GradientTransformation(tx.init, update)


def make_optimizer(name: str, learning_rate: float, schedule: str, steps: int) -> optax.GradientTransformation:
    return _standard_promotion(_make_optimizer(name, learning_rate, schedule, steps))


def _make_optimizer(name: str, learning_rate: float, schedule: str, steps: int) -> optax.GradientTransformation:
    factor = lr_factor(schedule, steps)

    def lr(count):
        return learning_rate * factor(count)

    if name == "adam":  # torch defaults: betas (0.9, 0.999), eps 1e-8 after the square root
        return optax.adam(lr, b1=0.9, b2=0.999, eps=1e-8)
    if name == "sgd":
        return optax.sgd(lr)
    if name == "sgdm":  # torch's momentum: buf = 0.9 buf + g, no dampening, not Nesterov
        return optax.sgd(lr, momentum=0.9)
    if name == "adamax":
        # optax puts eps inside the max, max(b2 * u, |g| + eps), exactly as torch does.
        return optax.adamax(lr, b1=0.9, b2=0.999, eps=1e-8)
    raise ValueError(f"unknown optimiser {name!r}")


class SphereState(NamedTuple):
    radii: optax.Params


def _norm(x: jax.Array) -> jax.Array:
    """sqrt(sum(x**2) + 1e-9) over all axes but the first (the example's layer / channel axis)."""
    axes = tuple(range(1, x.ndim))
    return jnp.sqrt(jnp.sum(jnp.square(x), axis=axes, keepdims=True) + 1e-9)


def sphere_init(params: optax.Params) -> SphereState:
    """Remember each optimised tensor's radius at initialisation."""
    return SphereState(jax.tree_util.tree_map(_norm, params))


def sphere_project(params: optax.Params, state: SphereState) -> optax.Params:
    """After each update: x <- x / sqrt(sum(x**2) + 1e-9) * r0, per row of the first axis."""
    return jax.tree_util.tree_map(lambda x, r: x / _norm(x) * r, params, state.radii)
