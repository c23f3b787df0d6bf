"""The compiled programs: core's per-example functions vmapped over seeds (inner) and images (outer).

Arrays are (N, S, ...): images, seeds, then the rest. The generator's params, the gaussian fit and the
LPIPS params (None without that loss) are arguments (never constants) shared by every example; the state
is donated to each step program.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp

from pulse_jax.config import PulseConfig, RunOptions
from pulse_jax.latent_search.core import SearchState, Spec, image_one, init_one, make_spec, step_one
from pulse_jax.latent_search.keys import seed_keys


def over_images_and_seeds(fn, per_seed_in_axes, per_image_in_axes):
    return jax.vmap(jax.vmap(fn, in_axes=per_seed_in_axes), in_axes=per_image_in_axes)


def init_states(spec: Spec, keys, latent, noise) -> SearchState:
    """keys (N, S); latent (N, S, Lt, D) or None; noise: one (N, S, r, r) array per map, or None.
    Compiled for ``spec.for_init()``: one program for the searches that start alike."""
    return _init_states(spec.for_init(), keys, latent, noise)


@functools.partial(jax.jit, static_argnames=("spec",))
def _init_states(spec: Spec, keys, latent, noise) -> SearchState:
    """A loop over the examples, not a vmap: the same draws (each key's own), but a vmapped draw is a
    batched multi-dimensional threefry, which XLA:CPU compiles far slower (layers.standard_normal), in
    every search's first call (benchmarks/RESULTS.md, "Measurements behind the code")."""
    n, s = keys.shape

    def flat(tree):
        return jax.tree_util.tree_map(lambda a: a.reshape(n * s, *a.shape[2:]), tree)

    states = jax.lax.map(lambda args: init_one(spec, *args), (keys.reshape(n * s), flat(latent), flat(noise)))
    return jax.tree_util.tree_map(lambda a: a.reshape(n, s, *a.shape[1:]), states)


# vmap axes of (state, lr_image, mask, gen_params, fit, perceptual): seeds share an image; images have
# their own; the networks' params are everyone's.
_SEED_AXES = (0, None, None, None, None, None)
_IMAGE_AXES = (0, 0, 0, None, None, None)


def batched_step(spec: Spec) -> Callable:
    """step_one over (N, S) examples: (state, lr_images, masks, gen_params, fit, perceptual) -> state."""
    return over_images_and_seeds(functools.partial(step_one, spec), _SEED_AXES, _IMAGE_AXES)


@functools.partial(jax.jit, static_argnames=("spec",), donate_argnums=(1,))
def run_steps(spec: Spec, state: SearchState, num_steps, lr_images, masks, gen_params, fit,
              perceptual=None) -> SearchState:
    """``num_steps`` steps in a fori_loop (a traced bound: one compile serves every chunk size).

    The barrier keeps XLA from hoisting work on the state's unchanging parts out of the loop: it
    multiplied each fixed noise map by its layer's per-channel weights once, before the loop, and kept
    the C-times-larger products for the whole loop (at 1024 px 40% more memory than one step needs,
    benchmarks/RESULTS.md; each step then read them instead of the maps: more bytes, not fewer)."""
    step = batched_step(spec)
    return jax.lax.fori_loop(
        0, num_steps, lambda _, s: step(jax.lax.optimization_barrier(s), lr_images, masks, gen_params, fit,
                                        perceptual), state)


@functools.partial(jax.jit, static_argnames=("spec",), donate_argnums=(1,))
def run_one_step(spec: Spec, state: SearchState, lr_images, masks, gen_params, fit, perceptual=None) -> SearchState:
    """One step per call, for backends where a loop inside the program is slower (see default_step_loop)."""
    return batched_step(spec)(state, lr_images, masks, gen_params, fit, perceptual)


def images_of(spec: Spec, params, fixed_noise, gen_params, fit) -> jax.Array:
    """(N, S, R, R, 3) images of the given per-example params, clipped to [0, 1]; compiled for
    ``spec.for_images()``."""
    return _images_of(spec.for_images(), params, fixed_noise, gen_params, fit)


@functools.partial(jax.jit, static_argnames=("spec",))
def _images_of(spec: Spec, params, fixed_noise, gen_params, fit) -> jax.Array:
    return over_images_and_seeds(functools.partial(image_one, spec, gen_params, fit), 0, 0)(params, fixed_noise)


# Every jitted program a search runs (a test checks that a second search compiles none of them again).
PROGRAMS = (_init_states, run_steps, run_one_step, _images_of)


def default_step_loop() -> str:
    """This backend's step loop when none is asked for (the reason: RunOptions.resolved)."""
    return RunOptions().resolved().step_loop


def compile_step_program(model, seeds: int, lr_size: int, options: RunOptions | None = None):
    """The step program a search of one image at this seed count runs (``options.step_loop`` "host":
    one step; "device": a fori_loop of steps; default "host"), compiled for the default device and not
    run: for its memory and cost analyses."""
    options = dataclasses.replace(options or RunOptions(), step_loop=(options and options.step_loop) or "host")
    options = options.resolved()
    spec = make_spec(model.generator, PulseConfig(), lr_size, options)
    state = jax.eval_shape(lambda: init_states(spec, seed_keys(jax.random.key(0), 1, seeds), None, None))
    lr = jax.ShapeDtypeStruct((1, lr_size, lr_size, 3), jnp.float32)
    gen, fit = model.search_params(options.generator_options(model.generator)), model.gaussian_fit
    if options.step_loop == "device":
        return run_steps.lower(spec, state, jnp.int32(2), lr, None, gen, fit).compile()
    return run_one_step.lower(spec, state, lr, None, gen, fit).compile()


# On a CPU a step's temporary memory is allocated afresh at every call (XLA:CPU has no caching
# allocator), and past a few GB the kernel's cost of handing out new memory rivals the step (at 1024 px
# four seeds in one call were slower than four calls of one: benchmarks/RESULTS.md, "Measurements behind
# the code"). A CPU gains nothing from a batch that big (a 1024 px seed already keeps every core busy),
# so the host loop runs the seeds in groups of about this many output pixels per call.
CPU_PIXELS_PER_CALL = 1024 * 1024


def seed_groups(seeds: int, num_images: int, resolution: int, work_pixels: int | None = None) -> list[tuple[int, int]]:
    """(start, stop) of each group of seeds one host-loop call runs: sizes differ by at most one, so
    that at most two programs are compiled. ``work_pixels``: what one example's step holds, in output-image
    pixels (a family's ``work_pixels``; default the image's own: StyleGAN v1 and 2)."""
    per_example = work_pixels or resolution * resolution
    most = max(1, CPU_PIXELS_PER_CALL // (num_images * per_example))
    count = -(-seeds // most)
    bounds = [seeds * i // count for i in range(count + 1)]
    return list(zip(bounds[:-1], bounds[1:], strict=True))


def split_seeds(state: SearchState, groups) -> list[SearchState]:
    if len(groups) == 1:
        return [state]
    return [jax.tree_util.tree_map(lambda a, lo=lo, hi=hi: a[:, lo:hi], state) for lo, hi in groups]


def join_seeds(parts: list[SearchState]) -> SearchState:
    if len(parts) == 1:
        return parts[0]
    return jax.tree_util.tree_map(lambda *a: jnp.concatenate(a, axis=1), *parts)
