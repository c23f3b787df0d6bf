"""Where the (N, S, ...) arrays of a search live: one device, or split over several (and hosts).

Every example is independent, so the compiled program needs no communication: XLA partitions the
batch axis and each device runs its share. Params and statistics are replicated.
"""

from __future__ import annotations

import dataclasses
import zlib
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from pulse_jax.errors import PulseJaxError


@dataclasses.dataclass(frozen=True)
class Placement:
    """Shardings for a batch split over several devices."""

    example_sharding: Any   # for (N, S, ...) arrays
    image_sharding: Any     # for (N, ...) arrays: split with the images, or replicated when seeds are split
    replicated: Any         # for the generator's params and the gaussian fit

    @property
    def spans_processes(self) -> bool:
        return not self.replicated.is_fully_addressable

    def examples(self, tree):
        return jax.tree_util.tree_map(lambda x: put(x, self.example_sharding), tree)

    def images(self, tree):
        return jax.tree_util.tree_map(lambda x: put(x, self.image_sharding), tree)

    def everywhere(self, tree):
        return jax.tree_util.tree_map(lambda x: put(x, self.replicated), tree)

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
            raise PulseJaxError("search over several processes' devices needs the same images, key and "
                                "init in every process; to search different images per process, leave "
                                "devices at its default (this process's devices)") from None

    def fetch(self, tree):
        """To numpy on this host; over several processes, every process gets the whole arrays."""
        if not self.spans_processes:
            return jax.device_get(tree)
        from jax.experimental import multihost_utils

        return multihost_utils.process_allgather(tree, tiled=True)


def put(x, sharding):
    """device_put, also onto devices of other processes: there from this process's copy of the
    value (every process holds the same), through the host (keys as their raw data)."""
    if sharding.is_fully_addressable or (isinstance(x, jax.Array) and not x.is_fully_addressable):
        return jax.device_put(x, sharding)
    if jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
        return jax.random.wrap_key_data(put(jax.random.key_data(x), sharding), impl=jax.random.key_impl(x))
    return jax.device_put(np.asarray(x), sharding)


def placement(num_images: int, seeds: int, shard: bool | None,
              devices: Sequence[jax.Device] | None = None) -> Placement | None:
    """Split images over the devices if they divide evenly, else seeds; None: run on one device as JAX
    places it (one device, no devices chosen)."""
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
        return Placement(split_first, split_first, everywhere)
    if seeds % len(devices) == 0:
        return Placement(split_second, everywhere, everywhere)
    spans_processes = len({d.process_index for d in devices}) > 1
    if shard or spans_processes:
        raise PulseJaxError(f"cannot split {num_images} images x {seeds} seeds evenly over {len(devices)} devices; "
                            "make the images or the seeds a multiple of the device count")
    return placement(num_images, seeds, False, devices)
