"""The PULSE search: written for ONE image and ONE seed, vmapped over seeds and images, jitted once.

Per step (shared/docs/pulse-reference.md, "Search loop"): w from the latent,
generate, downscale, losses, track the best, gradient, optimiser update,
sphere projection. The step loop runs inside the compiled program, in chunks
of steps so that the caller can report progress between them (on CPU, one
step per compiled call: see STEP_LOOPS).
"""

from __future__ import annotations

import dataclasses
import functools
import time
import zlib
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from pulse_jax.config import PulseConfig
from pulse_jax.degrade import Degradation
from pulse_jax.errors import PulseJaxError
from pulse_jax.layers import leaky_relu
from pulse_jax.losses import geocross_loss, l1_loss, l2_loss, mse
from pulse_jax.model import Model
from pulse_jax.optim import SphereState, make_optimizer, sphere_init, sphere_project


class SearchInit(NamedTuple):
    """Start values: latent (N, S, L or 1, D); noise a sequence of L arrays (N, S, r_i, r_i)."""

    latent: Any
    noise: Sequence[Any]


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
    latent: np.ndarray        # (N, S, L or 1, D): final latent
    noise: list[np.ndarray]   # L arrays (N, S, r_i, r_i): final noise maps
    seconds: float            # wall time of the search, compile included
    compile_seconds: float    # of which the first chunk's compile


class SearchState(NamedTuple):
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
class _Spec:
    """Everything static about one search: one compiled program per spec and shapes."""

    graphdef: Any
    noise_shapes: tuple
    trainable: tuple
    zero: tuple
    latent_rows: int
    dlatent: int
    terms: tuple
    eps: float
    factor: int
    degradation: Degradation
    opt_name: str
    learning_rate: float
    lr_schedule: str
    steps: int
    precision: str
    remat: bool = False

    @property
    def num_layers(self) -> int:
        return len(self.noise_shapes)

    @property
    def fixed(self) -> tuple:
        return tuple(i for i in range(self.num_layers) if i not in self.trainable)

    def optimizer(self) -> optax.GradientTransformation:
        return make_optimizer(self.opt_name, self.learning_rate, self.lr_schedule, self.steps)


def _make_spec(model: Model, config: PulseConfig, lr_size: int, precision: str, remat: bool = False) -> _Spec:
    n = model.num_layers
    return _Spec(
        graphdef=model.search_synthesis[0], noise_shapes=tuple(model.config.noise_shapes()),
        trainable=config.trainable_layers(n), zero=config.zero_layers(n),
        latent_rows=1 if config.tile_latent else n, dlatent=model.config.dlatent_size,
        terms=config.loss_terms(), eps=float(config.eps), factor=model.config.resolution // lr_size,
        degradation=Degradation.parse(config.degradation),
        opt_name=config.opt_name, learning_rate=float(config.learning_rate), lr_schedule=config.lr_schedule,
        steps=config.steps, precision=precision, remat=remat,
    )


# ---- one image, one seed -------------------------------------------------------------------


def _all_noise(spec: _Spec, trainable: Sequence, fixed: Sequence) -> list:
    maps: list = [None] * spec.num_layers
    for i, x in zip(spec.trainable, trainable, strict=True):
        maps[i] = x
    for i, x in zip(spec.fixed, fixed, strict=True):
        maps[i] = x
    return maps


def _generate(spec: _Spec, gen_params, fit, params, fixed_noise):
    """-> (image (R, R, 3) in about [0, 1], styles w (Lt, D))."""
    mean, std = fit
    w = leaky_relu(params["latent"] * std[None] + mean[None])
    w_all = jnp.broadcast_to(w, (spec.num_layers, spec.dlatent))
    noise = _all_noise(spec, params["noise"], fixed_noise)
    image = nnx.merge(spec.graphdef, gen_params)(w_all[None], noise, spec.precision, spec.remat)
    return (image[0] + 1.0) / 2.0, w


def _objective(params, fixed_noise, lr_image, mask, gen_params, fit, spec: _Spec):
    gen, w = _generate(spec, gen_params, fit, params, fixed_noise)
    d = spec.degradation
    lr_gen = d.apply(gen[None], spec.factor)[0]
    target = d.observe(lr_image[None])[0]
    weight = mask[..., None] if d.mask else None
    total = jnp.zeros((), jnp.float32)
    for weight_of_term, name in spec.terms:
        if name == "L2":
            term = l2_loss(lr_gen, target, spec.eps, weight)
        elif name == "L1":
            term = l1_loss(lr_gen, target, spec.eps, weight)
        else:
            term = geocross_loss(w)
        total = total + weight_of_term * term
    return total, mse(lr_gen, target, weight)


def _init_one(spec: _Spec, key, latent=None, noise=None) -> SearchState:
    """Draw (or take) the start values of one (image, seed) and build its state."""
    keys = jax.random.split(key, spec.num_layers + 1)
    if latent is None:
        latent = jax.random.normal(keys[0], (spec.latent_rows, spec.dlatent), jnp.float32)
    maps = []
    for i, shape in enumerate(spec.noise_shapes):
        if i in spec.zero:
            maps.append(jnp.zeros((1, *shape), jnp.float32))
        elif noise is not None:
            maps.append(jnp.asarray(noise[i], jnp.float32)[None])
        else:
            maps.append(jax.random.normal(keys[i + 1], (1, *shape), jnp.float32))
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


def _step_one(spec: _Spec, state: SearchState, lr_image, mask, gen_params, fit) -> SearchState:
    (total, l2), grads = jax.value_and_grad(_objective, has_aux=True)(
        state.params, state.fixed_noise, lr_image, mask, gen_params, fit, spec)
    finite = jnp.isfinite(total) & jnp.all(jnp.stack(
        [jnp.all(jnp.isfinite(g)) for g in jax.tree_util.tree_leaves(grads)]))
    diverged = state.diverged | ~finite
    improved = (total < state.best_loss) & ~diverged  # strict, as the reference's `loss < min_loss`
    best_params = jax.tree_util.tree_map(lambda new, old: jnp.where(improved, new, old),
                                         state.params, state.best_params)
    updates, opt_state = spec.optimizer().update(grads, state.opt_state, state.params)
    params = sphere_project(optax.apply_updates(state.params, updates), state.sphere)
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


# ---- vmapped over seeds (inner) and images (outer), jitted --------------------------------


def _over_images_and_seeds(fn, per_seed_in_axes, per_image_in_axes):
    return jax.vmap(jax.vmap(fn, in_axes=per_seed_in_axes), in_axes=per_image_in_axes)


@functools.partial(jax.jit, static_argnames=("spec",))
def _init(spec: _Spec, keys, latent, noise) -> SearchState:
    """keys (N, S); latent (N, S, Lt, D) or None; noise: L arrays (N, S, r, r) or None."""
    fn = functools.partial(_init_one, spec)
    return _over_images_and_seeds(fn, 0, 0)(keys, latent, noise)


# vmap axes of (state, lr_image, mask, gen_params, fit): seeds share an image; images have their own.
_SEED_AXES = (0, None, None, None, None)
_IMAGE_AXES = (0, 0, 0, None, None)


def _batched_step(spec: _Spec) -> Callable:
    """_step_one over (N, S) examples: (state, lr_images, masks, gen_params, fit) -> state."""
    return _over_images_and_seeds(functools.partial(_step_one, spec), _SEED_AXES, _IMAGE_AXES)


@functools.partial(jax.jit, static_argnames=("spec",), donate_argnums=(1,))
def _run_steps(spec: _Spec, state: SearchState, num_steps, lr_images, masks, gen_params, fit) -> SearchState:
    """``num_steps`` steps (a traced bound: one compile serves every chunk size).

    The barrier keeps XLA from hoisting work on the state's unchanging parts out of the loop: it
    multiplied each fixed noise map by its layer's per-channel weights once, before the loop, and kept
    the C-times-larger products for the whole loop (at 1024 px, ~0.27 GB per seed, 40% more memory
    than one step needs; each step then read them instead of the maps: more bytes, not fewer)."""
    step = _batched_step(spec)
    return jax.lax.fori_loop(
        0, num_steps, lambda _, s: step(jax.lax.optimization_barrier(s), lr_images, masks, gen_params, fit), state)


@functools.partial(jax.jit, static_argnames=("spec",), donate_argnums=(1,))
def _run_one_step(spec: _Spec, state: SearchState, lr_images, masks, gen_params, fit) -> SearchState:
    """One step per call, for backends where a loop inside the program is slower (see STEP_LOOPS)."""
    return _batched_step(spec)(state, lr_images, masks, gen_params, fit)


def compile_step_program(model: Model, seeds: int, lr_size: int, *, precision: str = "highest",
                         remat: bool = False, step_loop: str = "host"):
    """The step program a search of one image at this seed count runs ("host": one step; "device": a
    fori_loop of steps), compiled for the default device and not run: for its memory and cost analyses."""
    spec = _make_spec(model, PulseConfig(), lr_size, precision, remat)
    state = jax.eval_shape(lambda: _init(spec, seed_keys(jax.random.key(0), 1, seeds), None, None))
    lr = jax.ShapeDtypeStruct((1, lr_size, lr_size, 3), jnp.float32)
    gen, fit = model.search_synthesis[1], model.gaussian_fit
    if step_loop == "device":
        return _run_steps.lower(spec, state, jnp.int32(2), lr, None, gen, fit).compile()
    return _run_one_step.lower(spec, state, lr, None, gen, fit).compile()


# "device": the chunk's steps run in a fori_loop inside one compiled call. "host": each compiled call
# runs one step and Python loops; XLA:CPU runs convolutions inside while-loop bodies ~3x slower than
# the same program unrolled (measured on this search; jax-ml/jax#12868), and on a CPU the per-call
# dispatch (~0.1 ms) is nothing beside a step (~100 ms).
STEP_LOOPS = ("device", "host")


def default_step_loop() -> str:
    return "host" if jax.default_backend() == "cpu" else "device"


# On a CPU a step's temporary memory is allocated afresh at every call (XLA:CPU has no caching
# allocator), and past a few GB the kernel's cost of handing out new memory rivals the step: at
# 1024 px, 4 seeds in one call took 1.75 s on one step and 3.5 s on the next (2.6 s of it system time,
# finding huge pages for the fresh 2.5 GB buffer), where 4 calls of one seed take 4 x 0.44 s. A CPU
# gains nothing from a batch that big (a 1024 px seed already keeps every core busy), so the host loop
# runs the seeds in groups of about this many output pixels per call.
CPU_PIXELS_PER_CALL = 1024 * 1024


def seed_groups(seeds: int, num_images: int, resolution: int) -> list[tuple[int, int]]:
    """(start, stop) of each group of seeds one host-loop call runs: sizes differ by at most one, so
    that at most two programs are compiled."""
    most = max(1, CPU_PIXELS_PER_CALL // (num_images * resolution * resolution))
    count = -(-seeds // most)
    bounds = [seeds * i // count for i in range(count + 1)]
    return list(zip(bounds[:-1], bounds[1:], strict=True))


def _split_seeds(state: SearchState, groups) -> list[SearchState]:
    if len(groups) == 1:
        return [state]
    return [jax.tree_util.tree_map(lambda a, lo=lo, hi=hi: a[:, lo:hi], state) for lo, hi in groups]


def _join_seeds(parts: list[SearchState]) -> SearchState:
    if len(parts) == 1:
        return parts[0]
    return jax.tree_util.tree_map(lambda *a: jnp.concatenate(a, axis=1), *parts)


@functools.partial(jax.jit, static_argnames=("spec",))
def _images(spec: _Spec, params, fixed_noise, gen_params, fit) -> jax.Array:
    """(N, S, R, R, 3) images of the given per-example params, clipped to [0, 1]."""
    def one(p, f):
        image = _generate(spec, gen_params, fit, p, f)[0]
        # A seed that diverged before any finite step has only non-finite values: show black, not NaN.
        return jnp.clip(jnp.where(jnp.isfinite(image), image, 0.0), 0.0, 1.0)
    return _over_images_and_seeds(one, 0, 0)(params, fixed_noise)


# ---- the public driver ----------------------------------------------------------------------


def _per_image_keys(key, n: int) -> jax.Array:
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
    """(N, S) keys: seed s of image n uses fold_in(image_key_n, seed_offset + s), whatever runs beside it."""
    image_keys = _per_image_keys(key, num_images)
    indices = jnp.arange(seed_offset, seed_offset + seeds)
    return jax.vmap(lambda k: jax.vmap(lambda s: jax.random.fold_in(k, s))(indices))(image_keys)


def _check_inputs(model: Model, lr_images, init: SearchInit | None, seeds: int, spec_rows: int):
    r = model.config.resolution
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
    want = (n, seeds, spec_rows, model.config.dlatent_size)
    if tuple(np.shape(init.latent)) != want:
        raise PulseJaxError(f"init.latent must be {want}, got {tuple(np.shape(init.latent))}")
    shapes = model.config.noise_shapes()
    if len(init.noise) != len(shapes):
        raise PulseJaxError(f"init.noise must hold {len(shapes)} maps, got {len(init.noise)}")
    for i, (x, s) in enumerate(zip(init.noise, shapes, strict=True)):
        if tuple(np.shape(x)) != (n, seeds, *s):
            raise PulseJaxError(f"init.noise[{i}] must be {(n, seeds, *s)}, got {tuple(np.shape(x))}")


def search(model: Model, lr_images, config: PulseConfig | None = None, *, seeds: int = 1, key=None,
           init: SearchInit | None = None, chunk_steps: int | None = None,
           on_chunk: Callable[[int, SearchState], None] | None = None,
           precision: str = "highest", step_loop: str | None = None, seed_offset: int = 0,
           masks=None, remat: bool = False, shard: bool | None = None,
           devices: Sequence[jax.Device] | None = None) -> SearchResult:
    """Search S seeds for each of N low-resolution images (N, h, h, 3) in [0, 1].

    ``on_chunk(steps_done, state)`` is called between chunks of ``chunk_steps``
    steps (default: about a tenth of the run), for progress and intermediates.
    ``step_loop``: "device" or "host" (see STEP_LOOPS); default by backend. ``seed_offset``: the
    first seed's index, so that seeds split over several calls get the keys they would get in one.
    ``masks`` (N, h, h), 1 where the input is known: needed with a degradation ending in "+mask".
    ``remat``: recompute each generator block in the backward pass (less memory, more seeds fit: -18% of
    a step's memory at 1024 px on an H200; none measured on XLA:CPU).
    ``shard``: split the (images x seeds) batch over the devices (default: when there are several).
    ``devices``: where to run (default: this process's devices, ``jax.local_devices()``). In a job of
    several processes (``pulse_jax.distributed``), ``devices=jax.devices()`` makes the search one
    program over every host's devices: each process must then pass the same inputs and key, and each
    gets the whole result.
    """
    step_loop = step_loop or default_step_loop()
    if step_loop not in STEP_LOOPS:
        raise PulseJaxError(f"step_loop must be one of {STEP_LOOPS}, got {step_loop!r}")
    config = config or PulseConfig()
    lr_images = jnp.asarray(lr_images, jnp.float32)
    _check_inputs(model, lr_images, init, seeds, 1 if config.tile_latent else model.num_layers)
    spec = _make_spec(model, config, lr_images.shape[1], precision, remat)
    fit = model.gaussian_fit
    if spec.degradation.mask:
        if masks is None or tuple(np.shape(masks)) != lr_images.shape[:3]:
            raise PulseJaxError(f"degradation {config.degradation!r} needs masks shaped {lr_images.shape[:3]}, "
                                f"got {None if masks is None else tuple(np.shape(masks))}")
        masks = jnp.asarray(masks, jnp.float32)
        if not bool(jnp.all(jnp.any(masks > 0, axis=(1, 2)))):
            raise PulseJaxError("every mask needs at least one known pixel (value 1)")
    else:
        masks = None
    started = time.perf_counter()
    keys = seed_keys(key, lr_images.shape[0], seeds, seed_offset)
    latent = noise = None
    if init is not None:
        latent = jnp.asarray(init.latent, jnp.float32)
        noise = [jnp.asarray(x, jnp.float32) for x in init.noise]
    placement = _placement(lr_images.shape[0], seeds, shard, devices)
    gen_params = model.search_synthesis[1]
    if placement is not None:
        placement.check_same_everywhere((lr_images, masks, jax.random.key_data(keys), latent, noise))
        keys, latent, noise = placement.examples((keys, latent, noise))
        lr_images, masks = placement.images((lr_images, masks))
        gen_params, fit = placement.everywhere((gen_params, fit))
    state = _init(spec, keys, latent, noise)
    if placement is not None:
        state = placement.examples(state)
    chunk = chunk_steps or max(1, -(-config.steps // 10))
    groups = [(0, seeds)]
    if step_loop == "host" and placement is None and jax.default_backend() == "cpu":
        groups = seed_groups(seeds, lr_images.shape[0], model.config.resolution)
    parts = _split_seeds(state, groups)
    done, compile_seconds = 0, 0.0
    while done < config.steps:
        n = min(chunk, config.steps - done)
        t0 = time.perf_counter()
        if step_loop == "device":
            parts = [_run_steps(spec, parts[0], jnp.int32(n), lr_images, masks, gen_params, fit)]
        else:
            for _ in range(n):
                parts = [_run_one_step(spec, part, lr_images, masks, gen_params, fit) for part in parts]
        if done == 0:
            jax.block_until_ready([part.step for part in parts])
            compile_seconds = time.perf_counter() - t0  # an upper bound: includes the first chunk's run
        done += n
        if on_chunk is not None:
            on_chunk(done, _join_seeds(parts))
    state = _join_seeds(parts)
    images = _images(spec, state.best_params, state.fixed_noise, gen_params, fit)
    noise_maps = _all_noise(spec, state.params["noise"], state.fixed_noise)
    fetch = jax.device_get if placement is None else placement.fetch
    images, noise_maps, host = fetch((images, noise_maps, state))
    return SearchResult(
        images=np.asarray(images),
        loss_history=np.moveaxis(host.loss_history, -1, 0),
        l2_history=np.moveaxis(host.l2_history, -1, 0),
        success=host.min_l2 <= config.eps,
        best_step=host.best_step, best_loss=host.best_loss, best_l2=host.best_l2, min_l2=host.min_l2,
        diverged=host.diverged,
        latent=host.params["latent"], noise=[np.asarray(x)[:, :, 0] for x in noise_maps],
        seconds=time.perf_counter() - started, compile_seconds=compile_seconds,
    )


@dataclasses.dataclass(frozen=True)
class _Placement:
    """Where the (N, S, ...) arrays live when the batch is split over several devices."""

    example_sharding: Any   # for (N, S, ...) arrays
    image_sharding: Any     # for (N, ...) arrays: split with the images, or replicated when seeds are split
    replicated: Any         # for the generator's params and the gaussian fit

    @property
    def spans_processes(self) -> bool:
        return not self.replicated.is_fully_addressable

    def examples(self, tree):
        return jax.tree_util.tree_map(lambda x: _put(x, self.example_sharding), tree)

    def images(self, tree):
        return jax.tree_util.tree_map(lambda x: _put(x, self.image_sharding), tree)

    def everywhere(self, tree):
        return jax.tree_util.tree_map(lambda x: _put(x, self.replicated), tree)

    def check_same_everywhere(self, inputs) -> None:
        """Across processes each one holds a part of one global batch: their inputs must agree."""
        if not self.spans_processes:
            return
        from jax.experimental import multihost_utils

        digest = np.uint32(0)
        for leaf in jax.tree_util.tree_leaves(inputs):
            digest = np.uint32(zlib.crc32(np.ascontiguousarray(jax.device_get(leaf)).tobytes(), int(digest)))
        try:
            multihost_utils.assert_equal(digest, "inputs differ between processes")
        except AssertionError:
            raise PulseJaxError("search(devices=...) over several processes needs the same images, key and "
                                "init in every process; to search different images per process, leave "
                                "devices at its default (this process's devices)") from None

    def fetch(self, tree):
        """To numpy on this host; over several processes, every process gets the whole arrays."""
        if not self.spans_processes:
            return jax.device_get(tree)
        from jax.experimental import multihost_utils

        return multihost_utils.process_allgather(tree, tiled=True)


def _put(x, sharding):
    """device_put, also onto devices of other processes: there from this process's copy of the
    value (every process holds the same), through the host (keys as their raw data)."""
    if sharding.is_fully_addressable or (isinstance(x, jax.Array) and not x.is_fully_addressable):
        return jax.device_put(x, sharding)
    if jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
        return jax.random.wrap_key_data(_put(jax.random.key_data(x), sharding), impl=jax.random.key_impl(x))
    return jax.device_put(np.asarray(x), sharding)


def _placement(num_images: int, seeds: int, shard: bool | None,
               devices: Sequence[jax.Device] | None = None) -> _Placement | None:
    """Split images over the devices if they divide evenly, else seeds; else run on one device.

    Every example is independent, so the compiled program needs no communication: XLA partitions
    the batch axis and each device runs its share. Params and statistics are replicated.
    """
    from jax.sharding import Mesh, NamedSharding, PartitionSpec

    chosen = devices is not None
    devices = list(jax.local_devices() if devices is None else devices)
    if not devices:
        raise PulseJaxError("devices is empty; pass at least one device (e.g. jax.local_devices())")
    if shard is False:
        devices = devices[:1]
    if len(devices) == 1 and not chosen:
        return None
    # Auto axes: XLA propagates the batch split through every op (no per-op sharding annotations).
    mesh = Mesh(np.array(devices), ("batch",), axis_types=(jax.sharding.AxisType.Auto,))
    split_first = NamedSharding(mesh, PartitionSpec("batch"))
    split_second = NamedSharding(mesh, PartitionSpec(None, "batch"))
    everywhere = NamedSharding(mesh, PartitionSpec())
    if num_images % len(devices) == 0:
        return _Placement(split_first, split_first, everywhere)
    if seeds % len(devices) == 0:
        return _Placement(split_second, everywhere, everywhere)
    spans_processes = len({d.process_index for d in devices}) > 1
    if shard or spans_processes:
        raise PulseJaxError(f"cannot split {num_images} images x {seeds} seeds evenly over {len(devices)} devices; "
                            "make the images or the seeds a multiple of the device count")
    return _placement(num_images, seeds, False, devices)


def current_images(model: Model, config: PulseConfig, lr_size: int, state: SearchState,
                   precision: str = "highest") -> np.ndarray:
    """The images of a running search's current values (for --save-intermediate)."""
    spec = _make_spec(model, config, lr_size, precision)
    return np.asarray(_images(spec, state.params, state.fixed_noise, model.search_synthesis[1], model.gaussian_fit))


def concat_results(parts: Sequence[SearchResult], axis: str) -> SearchResult:
    """Join results of searches split over images (axis "images") or seeds ("seeds")."""
    image_axis = {"images": 0, "seeds": 1}[axis]
    merged = {}
    for field in dataclasses.fields(SearchResult):
        values = [getattr(p, field.name) for p in parts]
        if field.name in ("seconds", "compile_seconds"):
            merged[field.name] = float(sum(values))
        elif field.name == "noise":
            merged[field.name] = [np.concatenate(maps, axis=image_axis) for maps in zip(*values, strict=True)]
        else:
            history = field.name in ("loss_history", "l2_history")
            merged[field.name] = np.concatenate(values, axis=image_axis + history)
    return SearchResult(**merged)


def is_out_of_memory(error: BaseException) -> bool:
    text = f"{type(error).__name__}: {error}"
    return "RESOURCE_EXHAUSTED" in text or "out of memory" in text.lower()
