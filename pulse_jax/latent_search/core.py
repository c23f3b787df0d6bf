"""The search for ONE image and ONE seed: its state, objective and step (vmapped in programs.py).

Per step (docs/pulse.md, "Search loop"): w from the latent, generate, downscale,
losses, track the best, gradient, optimiser update, sphere projection.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from pulse_jax.config import PulseConfig, RunOptions
from pulse_jax.degrade import Degradation
from pulse_jax.generators import Generator
from pulse_jax.generators.layers import leaky_relu, standard_normal
from pulse_jax.losses import LossInputs, mse, total_loss
from pulse_jax.optim import SphereState, make_optimizer, sphere_init, sphere_project
from pulse_jax.perceptual import distance_one


class SearchState(NamedTuple):
    """One (image, seed)'s search; programs.py holds (N, S, ...) of each leaf."""

    step: jax.Array
    params: dict              # optimised: {"latent": (Lt, D), "noise": tuple of (1, r, r)}
    fixed_noise: tuple        # the noise maps that are not optimised, (1, r, r) each
    opt_state: optax.OptState
    sphere: SphereState
    best_loss: jax.Array
    best_step: jax.Array
    best_l2: jax.Array
    min_l2: jax.Array
    best_params: dict
    diverged: jax.Array       # bool: stopped after a non-finite loss or gradient
    loss_history: jax.Array   # (steps,)
    l2_history: jax.Array     # (steps,)


@dataclasses.dataclass(frozen=True)
class Spec:
    """Everything static about one search: one compiled program per spec and shapes."""

    generator: Generator
    trainable: tuple          # indices of the optimised noise maps
    zero: tuple               # indices of the noise maps held at zero
    latent_rows: int          # Lt: 1 (tile_latent) or the generator's W+ rows
    terms: tuple
    eps: float
    factor: int
    degradation: Degradation
    opt_name: str
    learning_rate: float
    lr_schedule: str
    steps: int
    precision: str
    remat: bool
    normalize_noise: bool = False  # searched maps to zero mean, unit variance after each step

    @property
    def noise_shapes(self) -> tuple:
        return self.generator.noise_shapes()

    @property
    def num_noise(self) -> int:
        return len(self.noise_shapes)

    @property
    def fixed(self) -> tuple:
        return tuple(i for i in range(self.num_noise) if i not in self.trainable)

    def optimizer(self) -> optax.GradientTransformation:
        return make_optimizer(self.opt_name, self.learning_rate, self.lr_schedule, self.steps)

    # The start and image programs read a part of the spec; the rest at fixed values, so that searches
    # differing only in what those programs never read (the loss, eps, degradation, learning rate, ...)
    # share their compiled programs instead of compiling their own (seconds each on a CPU).

    def for_init(self) -> Spec:
        """What init_one reads: the generator, the maps' split, the latent rows, the optimiser's state
        structure (opt_name) and the histories' length (steps)."""
        return dataclasses.replace(self, terms=(), eps=0.0, factor=1, degradation=Degradation(),
                                   learning_rate=0.0, lr_schedule="fixed", precision="highest", remat=False,
                                   normalize_noise=False)

    def for_images(self) -> Spec:
        """What image_one reads: the generator, the maps' split, the latent rows, precision and remat."""
        return dataclasses.replace(self.for_init(), opt_name="adam", steps=1, precision=self.precision,
                                   remat=self.remat)


def make_spec(generator: Generator, config: PulseConfig, lr_size: int, options: RunOptions) -> Spec:
    """The static half of one search (``options`` resolved): built once per search call."""
    n = len(generator.noise_shapes())
    config.check_noise_options(n)
    return Spec(
        generator=generator, trainable=config.trainable_layers(n), zero=config.zero_layers(n),
        latent_rows=1 if config.tile_latent else generator.num_ws,
        terms=config.loss_terms(), eps=config.effective_eps, factor=generator.resolution // lr_size,
        degradation=config.degradation,
        opt_name=config.opt_name, learning_rate=float(config.learning_rate), lr_schedule=config.lr_schedule,
        steps=config.steps, precision=options.precision, remat=options.remat,
        normalize_noise=config.normalize_noise,
    )


def all_noise(spec: Spec, trainable: Sequence, fixed: Sequence) -> list:
    """The optimised and the fixed maps back in the generator's order."""
    maps: list = [None] * spec.num_noise
    for i, x in zip(spec.trainable, trainable, strict=True):
        maps[i] = x
    for i, x in zip(spec.fixed, fixed, strict=True):
        maps[i] = x
    return maps


def generate(spec: Spec, gen_params, fit, params, fixed_noise):
    """-> (image (R, R, 3) in about [0, 1], styles w (Lt, D)). PULSE's w: leaky_relu(latent * std + mean)."""
    mean, std = fit
    w = leaky_relu(params["latent"] * std[None] + mean[None])
    w_all = jnp.broadcast_to(w, (spec.generator.num_ws, spec.generator.dlatent_size))
    noise = all_noise(spec, params["noise"], fixed_noise)
    image = spec.generator.synthesize(gen_params, w_all[None], noise, precision=spec.precision, remat=spec.remat)
    return (image[0] + 1.0) / 2.0, w


def objective(params, fixed_noise, lr_image, mask, gen_params, fit, spec: Spec, perceptual=None):
    """-> (total loss, downscaling MSE) of one (image, seed). ``perceptual``: LPIPS params, for that term."""
    gen, w = generate(spec, gen_params, fit, params, fixed_noise)
    d = spec.degradation
    lr_gen = d.apply(gen[None], spec.factor)[0]
    target = d.observe(lr_image[None])[0]
    weight = mask[..., None] if d.mask else None
    noise = tuple(all_noise(spec, params["noise"], fixed_noise))
    distance = None if perceptual is None else functools.partial(distance_one, perceptual)
    total = total_loss(spec.terms, LossInputs(lr_gen, target, weight, spec.eps, w, noise, tuple(params["noise"]),
                                              distance))
    return total, mse(lr_gen, target, weight)


def init_one(spec: Spec, key, latent=None, noise=None) -> SearchState:
    """Draw (or take) the start values of one (image, seed) and build its state."""
    keys = jax.random.split(key, spec.num_noise + 1)
    if latent is None:
        latent = standard_normal(keys[0], (spec.latent_rows, spec.generator.dlatent_size))
    maps = []
    for i, shape in enumerate(spec.noise_shapes):
        if i in spec.zero:
            maps.append(jnp.zeros((1, *shape), jnp.float32))
        elif noise is not None:
            maps.append(jnp.asarray(noise[i], jnp.float32)[None])
        else:
            maps.append(standard_normal(keys[i + 1], (1, *shape)))
    params = {"latent": jnp.asarray(latent, jnp.float32), "noise": tuple(maps[i] for i in spec.trainable)}
    fixed = tuple(maps[i] for i in spec.fixed)
    inf = jnp.array(jnp.inf, jnp.float32)
    return SearchState(
        step=jnp.zeros((), jnp.int32), params=params, fixed_noise=fixed,
        opt_state=spec.optimizer().init(params), sphere=sphere_init(params),
        best_loss=inf, best_step=jnp.zeros((), jnp.int32), best_l2=inf, min_l2=inf, best_params=params,
        diverged=jnp.zeros((), bool),
        loss_history=jnp.full((spec.steps,), jnp.nan, jnp.float32),
        l2_history=jnp.full((spec.steps,), jnp.nan, jnp.float32),
    )


def step_one(spec: Spec, state: SearchState, lr_image, mask, gen_params, fit, perceptual=None) -> SearchState:
    """One step of one (image, seed)."""
    (total, l2), grads = jax.value_and_grad(objective, has_aux=True)(
        state.params, state.fixed_noise, lr_image, mask, gen_params, fit, spec, perceptual)
    finite = jnp.isfinite(total) & jnp.all(jnp.stack(
        [jnp.all(jnp.isfinite(g)) for g in jax.tree_util.tree_leaves(grads)]))
    diverged = state.diverged | ~finite
    improved = (total < state.best_loss) & ~diverged  # strict, as the reference's `loss < min_loss`
    best_params = jax.tree_util.tree_map(lambda new, old: jnp.where(improved, new, old),
                                         state.params, state.best_params)
    updates, opt_state = spec.optimizer().update(grads, state.opt_state, state.params)
    params = sphere_project(optax.apply_updates(state.params, updates), state.sphere)
    if spec.normalize_noise:
        params = {**params, "noise": tuple(normalized(x) for x in params["noise"])}
    # A diverged seed is frozen where it was (its neighbours in the batch are unaffected).
    params, opt_state = jax.tree_util.tree_map(lambda new, old: jnp.where(diverged, old, new),
                                               (params, opt_state), (state.params, state.opt_state))
    return state._replace(
        step=state.step + 1, params=params, opt_state=opt_state,
        best_loss=jnp.where(improved, total, state.best_loss),
        best_step=jnp.where(improved, state.step, state.best_step),
        best_l2=jnp.where(improved, l2, state.best_l2),
        min_l2=jnp.where(diverged, state.min_l2, jnp.minimum(state.min_l2, l2)),
        best_params=best_params, diverged=diverged,
        loss_history=state.loss_history.at[state.step].set(total),
        l2_history=state.l2_history.at[state.step].set(l2),
    )


def normalized(noise_map: jax.Array) -> jax.Array:
    """Zero mean and unit variance (over the whole map), as NVIDIA's projector sets its maps each step."""
    centred = noise_map - jnp.mean(noise_map)
    return centred * jax.lax.rsqrt(jnp.mean(jnp.square(centred)) + 1e-12)


def image_one(spec: Spec, gen_params, fit, params, fixed_noise) -> jax.Array:
    """(R, R, 3) in [0, 1] of one (image, seed)'s params; a seed that diverged before any finite step
    has only non-finite values: black, not NaN."""
    image = generate(spec, gen_params, fit, params, fixed_noise)[0]
    return jnp.clip(jnp.where(jnp.isfinite(image), image, 0.0), 0.0, 1.0)
