"""``search()``: check the inputs, place them, run the compiled programs chunk by chunk, fetch results."""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from pulse_jax.config import PulseConfig, RunOptions
from pulse_jax.errors import PulseJaxError
from pulse_jax.latent_search import programs
from pulse_jax.latent_search.core import SearchState, all_noise, make_spec
from pulse_jax.latent_search.keys import seed_keys
from pulse_jax.latent_search.placement import placement as choose_placement
from pulse_jax.losses import needs_perceptual
from pulse_jax.model import Model


class SearchInit(NamedTuple):
    """Start values: latent (N, S, Lt, D) with Lt the model's num_ws (or 1 with tile_latent); noise one
    (N, S, r, r) array per noise map, or None (drawn as without an init)."""

    latent: Any
    noise: Sequence[Any]


class Chunk(NamedTuple):
    """What ``on_chunk`` is given between chunks of steps."""

    steps_done: int
    state: SearchState                  # arrays (N, S, ...)
    images: Callable[[], np.ndarray]    # -> (N, S, R, R, 3) of the current values, computed when called


@dataclasses.dataclass(frozen=True)
class SearchResult:
    """Everything the search found, per image n and seed s. Nothing is dropped."""

    images: np.ndarray        # (N, S, R, R, 3) in [0, 1]: per seed the step with the lowest total loss
    loss_history: np.ndarray  # (steps, N, S): total loss at each step, before that step's update
    l2_history: np.ndarray    # (steps, N, S): unclamped downscaling MSE at each step
    success: np.ndarray       # (N, S) bool: lowest MSE <= eps
    best_step: np.ndarray     # (N, S) int: step of the returned image
    best_loss: np.ndarray     # (N, S): total loss of the returned image
    best_l2: np.ndarray       # (N, S): MSE of the returned image
    min_l2: np.ndarray        # (N, S): lowest MSE over all steps (what success tests)
    diverged: np.ndarray      # (N, S) bool: the seed hit NaN/Inf and was stopped there (the others went on)
    latent: np.ndarray        # (N, S, Lt, D): final latent
    noise: list[np.ndarray]   # one (N, S, r_i, r_i) array per noise map: final noise maps
    seconds: float            # wall time of the search, compile included
    compile_seconds: float    # of which the first chunk's compile
    searched_noise: tuple = ()  # indices (into noise) of the maps the search optimised
    best_latent: np.ndarray | None = None  # (N, S, Lt, D): the latent of the returned image's step
    best_noise: list | None = None         # one (N, S, r_i, r_i) array per noise map, of that step


def example_bytes(model: Model, steps: int, latent_rows: int) -> int:
    """What one (image, seed) of a search holds at the least, in bytes: its state (the latent and the noise
    maps with their optimiser moments and best values, its loss histories) and its image, which the result
    brings to this host."""
    maps = sum(r * c for r, c in model.noise_shapes())
    return 4 * (6 * (latent_rows * model.generator.dlatent_size + maps) + 2 * steps
                + 3 * model.generator.resolution ** 2)


def physical_memory() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def check_size(model: Model, examples: int, steps: int, latent_rows: int, what: str) -> None:
    """Refuse, with the size, a search whose state alone cannot fit this machine's memory (instead of
    growing until the system kills the process)."""
    need, have = examples * example_bytes(model, steps, latent_rows), physical_memory()
    if have is not None and need > 0.8 * have:
        raise PulseJaxError(f"{what}: the search's state alone would take {need / 2**30:,.1f} GiB, more than this "
                            f"machine's {have / 2**30:,.1f} GiB of memory allows; use fewer seeds or images")


def check_inputs(model: Model, lr_images, init: SearchInit | None, seeds: int, latent_rows: int) -> None:
    r = model.generator.resolution
    if lr_images.ndim != 4 or lr_images.shape[-1] != 3 or lr_images.shape[1] != lr_images.shape[2]:
        raise PulseJaxError(f"lr_images must be (N, h, h, 3), got {tuple(lr_images.shape)}")
    h = lr_images.shape[1]
    if r % h:
        raise PulseJaxError(f"low-resolution size {h} must divide the generator's resolution {r}")
    if model.gaussian_fit is None:
        raise PulseJaxError("the model has no gaussian fit; convert it with --mapping or --gaussian-fit")
    if seeds < 1:
        raise PulseJaxError(f"seeds must be >= 1, got {seeds}")
    if init is None:
        return
    n = lr_images.shape[0]
    want = (n, seeds, latent_rows, model.generator.dlatent_size)
    if tuple(np.shape(init.latent)) != want:
        raise PulseJaxError(f"init.latent must be {want}, got {tuple(np.shape(init.latent))}")
    shapes = model.noise_shapes()
    if init.noise is None:
        return
    if len(init.noise) != len(shapes):
        raise PulseJaxError(f"init.noise must hold {len(shapes)} maps, got {len(init.noise)}")
    for i, (x, s) in enumerate(zip(init.noise, shapes, strict=True)):
        if tuple(np.shape(x)) != (n, seeds, *s):
            raise PulseJaxError(f"init.noise[{i}] must be {(n, seeds, *s)}, got {tuple(np.shape(x))}")


def stored_noise_of(model: Model) -> tuple:
    """The maps ``stored_noise`` starts from: the generator's own, which only some files keep."""
    if model.stored_noise is None:
        raise PulseJaxError("stored_noise: this model keeps no noise maps of its own (PULSE's synthesis.pt has "
                            "none; NVIDIA's pickles and rosinality's checkpoints do: convert one of those with "
                            "--network), or leave stored_noise off for N(0, 1) maps")
    return model.stored_noise


def _checked_masks(degradation, masks, lr_images):
    if not degradation.mask:
        return None
    if masks is None or tuple(np.shape(masks)) != lr_images.shape[:3]:
        raise PulseJaxError(f"degradation '{degradation}' needs masks shaped {lr_images.shape[:3]}, "
                            f"got {None if masks is None else tuple(np.shape(masks))}")
    masks = jnp.asarray(masks, jnp.float32)
    if not bool(jnp.all(jnp.any(masks > 0, axis=(1, 2)))):
        raise PulseJaxError("every mask needs at least one known pixel (value 1)")
    return masks


def _perceptual_params(spec, perceptual):
    """The LPIPS params the loss needs, else None (so that a run without that term compiles as before)."""
    if not needs_perceptual(spec.terms):
        return None
    if perceptual is None:
        raise PulseJaxError("the loss LPIPS needs a perceptual model: pass --perceptual DIR (search(perceptual=...));"
                            " make one with pulse-jax convert --vgg16 vgg16-397923af.pth --lpips-heads vgg.pth "
                            "--out DIR")
    return perceptual.params


def search(model: Model, lr_images, config: PulseConfig | None = None, options: RunOptions | None = None, *,
           seeds: int = 1, key=None, init: SearchInit | None = None,
           on_chunk: Callable[[Chunk], None] | None = None, seed_offset: int = 0,
           masks=None, perceptual=None) -> SearchResult:
    """Search S seeds for each of N low-resolution images.

    Args:
      model: the generator, its params and gaussian fit (``pulse_jax.load_model``).
      lr_images: (N, h, h, 3) in [0, 1]; h divides the model's resolution.
      config: what to search for (PulseConfig: the reference's options); default PulseConfig().
      options: how to run (RunOptions: precision, remat, step loop, sharding, devices, chunk steps).
      seeds: S, results per image.
      key: one key (folded per image) or one per image; seed s of image n gets the same start whatever
        runs beside it.
      init: start values instead of random ones (SearchInit); without it, ``config.stored_noise`` starts
        the noise maps from the model's own (Model.stored_noise) and draws only the latents.
      on_chunk: ``on_chunk(chunk)`` between chunks of ``options.chunk_steps`` steps, for progress and
        intermediates (a Chunk: steps done, the state's (N, S, ...) arrays, the current images on demand).
      seed_offset: the first seed's index, so that seeds split over several calls get the keys they would
        get in one.
      masks: (N, h, h), 1 where the input is known: needed with a degradation ending in "+mask".
      perceptual: the LPIPS model (``pulse_jax.load_perceptual``), needed by an LPIPS term in the loss.

    Returns:
      SearchResult: per (image, seed) the image of the step with the lowest total loss, histories,
      success (lowest MSE <= eps), best step, and the final latents and noise.
    """
    config = config or PulseConfig()
    options = (options or RunOptions()).resolved()
    step_loop = options.step_loop
    lr_images = jnp.asarray(lr_images, jnp.float32)
    spec = make_spec(model.generator, config, lr_images.shape[1], options)
    check_inputs(model, lr_images, init, seeds, spec.latent_rows)
    check_size(model, lr_images.shape[0] * seeds, config.steps, spec.latent_rows,
               f"{lr_images.shape[0]} images x {seeds} seeds")
    spec.degradation.check(model.generator.resolution, lr_images.shape[1])
    masks = _checked_masks(spec.degradation, masks, lr_images)
    perceptual_params = _perceptual_params(spec, perceptual)
    started = time.perf_counter()
    keys = seed_keys(key, lr_images.shape[0], seeds, seed_offset)
    latent = noise = None
    if init is not None:
        latent = jnp.asarray(init.latent, jnp.float32)
        noise = None if init.noise is None else [jnp.asarray(x, jnp.float32) for x in init.noise]
    elif config.stored_noise:
        noise = [jnp.broadcast_to(n, (lr_images.shape[0], seeds, *n.shape)) for n in stored_noise_of(model)]
    placement = choose_placement(lr_images.shape[0], seeds, options.shard, options.devices)
    gen_params, fit = model.search_params(options.generator_options(model.generator)), model.gaussian_fit
    if placement is not None:
        placement.check_same_everywhere((lr_images, masks, jax.random.key_data(keys), latent, noise))
        keys, latent, noise = placement.examples((keys, latent, noise))
        lr_images, masks = placement.images((lr_images, masks))
        gen_params, fit, perceptual_params = placement.everywhere((gen_params, fit, perceptual_params))
    state = programs.init_states(spec, keys, latent, noise)
    if placement is not None:
        state = placement.examples(state)
    chunk = options.chunk_steps or max(1, -(-config.steps // 10))
    groups = [(0, seeds)]
    if step_loop == "host" and placement is None and jax.default_backend() == "cpu":
        groups = programs.seed_groups(seeds, lr_images.shape[0], model.generator.resolution,
                                      getattr(model.generator, "work_pixels", None))
    parts = programs.split_seeds(state, groups)
    done, compile_seconds = 0, 0.0
    while done < config.steps:
        n = min(chunk, config.steps - done)
        t0 = time.perf_counter()
        if step_loop == "device":
            parts = [programs.run_steps(spec, parts[0], jnp.int32(n), lr_images, masks, gen_params, fit,
                                        perceptual_params)]
        else:
            for _ in range(n):
                parts = [programs.run_one_step(spec, part, lr_images, masks, gen_params, fit, perceptual_params)
                         for part in parts]
        if done == 0:
            jax.block_until_ready([part.step for part in parts])
            compile_seconds = time.perf_counter() - t0  # an upper bound: includes the first chunk's run
        done += n
        if on_chunk is not None:
            state = programs.join_seeds(parts)
            on_chunk(Chunk(done, state, lambda state=state: np.asarray(
                programs.images_of(spec, state.params, state.fixed_noise, gen_params, fit))))
    state = programs.join_seeds(parts)
    images = programs.images_of(spec, state.best_params, state.fixed_noise, gen_params, fit)
    noise_maps = all_noise(spec, state.params["noise"], state.fixed_noise)
    best_maps = all_noise(spec, state.best_params["noise"], state.fixed_noise)
    fetch = jax.device_get if placement is None else placement.fetch
    images, noise_maps, best_maps, host = fetch((images, noise_maps, best_maps, state))
    return SearchResult(
        images=np.asarray(images),
        loss_history=np.moveaxis(host.loss_history, -1, 0),
        l2_history=np.moveaxis(host.l2_history, -1, 0),
        success=host.min_l2 <= config.effective_eps,
        best_step=host.best_step, best_loss=host.best_loss, best_l2=host.best_l2, min_l2=host.min_l2,
        diverged=host.diverged,
        latent=host.params["latent"], noise=[np.asarray(x)[:, :, 0] for x in noise_maps],
        seconds=time.perf_counter() - started, compile_seconds=compile_seconds, searched_noise=spec.trainable,
        best_latent=host.best_params["latent"], best_noise=[np.asarray(x)[:, :, 0] for x in best_maps],
    )
