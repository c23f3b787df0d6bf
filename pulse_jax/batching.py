"""How many inputs a search takes at once, and what happens when the device runs out of memory."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from pulse_jax.config import PulseConfig, RunOptions
from pulse_jax.errors import PulseJaxError
from pulse_jax.latent_search import SearchResult, search
from pulse_jax.latent_search.driver import SearchInit
from pulse_jax.model import Model

# Examples (inputs x seeds) searched together per device by default. On a GPU throughput grows with them
# up to about 32 at 1024 px and is flat beyond. On a CPU it depends on the resolution: small images gain
# from batches (a step's fixed costs shared), a 1024 px seed already keeps every core busy and fresh
# multi-GB buffers cost more than batching gains (the figures: benchmarks/RESULTS.md, "CPU batch size").
EXAMPLES_PER_DEVICE = {"gpu": 32, "tpu": 32}
CPU_EXAMPLES_BY_RESOLUTION = {32: 32, 128: 4, 256: 1}  # measured; a resolution between takes the one below


def examples_per_device(backend: str, resolution: int) -> int:
    if backend != "cpu":
        return EXAMPLES_PER_DEVICE.get(backend, EXAMPLES_PER_DEVICE["gpu"])
    fitting = [n for r, n in sorted(CPU_EXAMPLES_BY_RESOLUTION.items()) if r <= resolution]
    return fitting[-1] if fitting else CPU_EXAMPLES_BY_RESOLUTION[min(CPU_EXAMPLES_BY_RESOLUTION)]


def default_batch_size(seeds: int, devices: int, backend: str = "cpu", resolution: int = 1024) -> int:
    """Inputs per search: enough to give each device about ``examples_per_device`` examples, at least one
    input when the seeds split evenly over the devices, else at least one input per device (so that no
    device sits idle and each holds whole inputs, as on a single device)."""
    per_device = examples_per_device(backend, resolution)
    if seeds % devices == 0:
        return max(1, per_device * devices // seeds)
    return devices * max(1, per_device // seeds)


def batches(items: Sequence, batch_size: int, seeds: int, devices: int) -> list[list]:
    """Runs of ``batch_size``; a shorter last run that would not split over the devices goes one by
    one (all on one device it would need more memory than a full run needs per device)."""
    runs = [list(items[i:i + batch_size]) for i in range(0, len(items), batch_size)]
    if devices > 1 and runs and len(runs[-1]) % devices and seeds % devices:
        runs += [[item] for item in runs.pop()]
    return runs


def is_out_of_memory(error: BaseException) -> bool:
    text = f"{type(error).__name__}: {error}"
    return "RESOURCE_EXHAUSTED" in text or "out of memory" in text.lower()


def concat_results(parts: Sequence[SearchResult], axis: str) -> SearchResult:
    """Join results of searches split over images (axis "images") or seeds ("seeds")."""
    image_axis = {"images": 0, "seeds": 1}[axis]
    merged = {}
    for field in dataclasses.fields(SearchResult):
        values = [getattr(p, field.name) for p in parts]
        if field.name in ("seconds", "compile_seconds"):
            merged[field.name] = float(sum(values))
        elif field.name == "searched_noise":  # the same spec in every part
            merged[field.name] = values[0]
        elif field.name in ("noise", "best_noise"):
            merged[field.name] = [np.concatenate(maps, axis=image_axis) for maps in zip(*values, strict=True)]
        else:
            history = field.name in ("loss_history", "l2_history")
            merged[field.name] = np.concatenate(values, axis=image_axis + history)
    return SearchResult(**merged)


@dataclasses.dataclass(frozen=True, eq=False)
class SearchRequest:
    """One batch's search: what ``search()`` takes, and its halves when the device runs out of memory."""

    model: Model
    config: PulseConfig
    options: RunOptions
    seeds: int
    lr_images: np.ndarray   # (N, h, h, 3)
    keys: Any               # (N,) random keys, one per image
    masks: np.ndarray | None = None
    seed_offset: int = 0    # the first seed's index: seeds split over searches keep their keys
    init: SearchInit | None = None  # start values (N, S, ...), or drawn
    perceptual: Any = None  # perceptual.Perceptual, for an LPIPS loss term

    @property
    def num_images(self) -> int:
        return self.lr_images.shape[0]

    def image_range(self, a: int, b: int) -> SearchRequest:
        return dataclasses.replace(self, lr_images=self.lr_images[a:b], keys=self.keys[a:b],
                                   masks=None if self.masks is None else self.masks[a:b],
                                   init=_sliced(self.init, (slice(a, b),)))

    def seed_range(self, a: int, b: int) -> SearchRequest:
        return dataclasses.replace(self, seeds=b - a, seed_offset=self.seed_offset + a,
                                   init=_sliced(self.init, (slice(None), slice(a, b))))

    def run(self, on_chunk=None) -> SearchResult:
        return search(self.model, self.lr_images, self.config, self.options, seeds=self.seeds, key=self.keys,
                      on_chunk=on_chunk, seed_offset=self.seed_offset, masks=self.masks, init=self.init,
                      perceptual=self.perceptual)


def _sliced(init: SearchInit | None, index: tuple) -> SearchInit | None:
    if init is None:
        return None
    return SearchInit(init.latent[index], None if init.noise is None else [x[index] for x in init.noise])


@dataclasses.dataclass
class MemoryLimit:
    """The fewest examples (images x seeds) seen not to fit the device in this run. Later batches that
    large are split before they are tried: each failed try costs a compile and an allocation."""

    too_big: int | None = None

    def fits(self, examples: int) -> bool:
        return self.too_big is None or examples < self.too_big

    def failed(self, examples: int) -> None:
        self.too_big = examples if self.too_big is None else min(self.too_big, examples)


def search_fitting(request: SearchRequest, *, on_chunk, log: Callable[[str], None],
                   limit: MemoryLimit | None = None) -> SearchResult:
    """The request's search, and when the device runs out of memory, the same work in halves (images,
    then seeds). Seeds keep their keys when split, so the results are those of one big run. ``limit``
    carries what did not fit from one call to the next."""
    limit = limit if limit is not None else MemoryLimit()
    n, seeds = request.num_images, request.seeds
    tried = limit.fits(n * seeds)  # else split at once, silently: the first failure was said
    if tried:
        try:
            return request.run(on_chunk)
        except Exception as e:  # noqa: BLE001 - only out-of-memory is handled; everything else re-raised
            if not is_out_of_memory(e):
                raise
        limit.failed(n * seeds)
    later = "; later batches are split up front"
    again = dict(on_chunk=on_chunk, log=log, limit=limit)
    if n > 1:
        if tried:
            log(f"out of device memory with {n} images x {seeds} seeds; retrying in halves of images{later}")
        h = n // 2
        return concat_results([search_fitting(request.image_range(a, b), **again) for a, b in ((0, h), (h, n))],
                              "images")
    if seeds > 1:
        if tried:
            log(f"out of device memory with 1 image x {seeds} seeds; retrying in halves of seeds{later}")
        h = seeds // 2
        return concat_results([search_fitting(request.seed_range(a, b), **again) for a, b in ((0, h), (h, seeds))],
                              "seeds")
    raise PulseJaxError(
        f"out of device memory searching one image with one seed at {request.model.generator.resolution}px: the "
        "largest batch that fits is none; free the device (another process may hold its memory) or use one "
        "with more memory") from None
