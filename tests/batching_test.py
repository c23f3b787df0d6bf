"""Batch sizes per backend and device count, and how a batch is split over the devices."""

from __future__ import annotations

from pulse_jax import batching


def test_default_batch_keeps_every_device_busy():
    assert batching.default_batch_size(seeds=8, devices=8) == 1   # the seeds split
    assert batching.default_batch_size(seeds=4, devices=8) == 8   # the images split
    assert batching.default_batch_size(seeds=3, devices=1) == 1
    # On accelerators, about 32 examples (inputs x seeds) per device, where throughput stops growing.
    assert batching.default_batch_size(seeds=1, devices=1, backend="gpu") == 32
    assert batching.default_batch_size(seeds=4, devices=1, backend="gpu") == 8
    assert batching.default_batch_size(seeds=64, devices=1, backend="gpu") == 1
    assert batching.default_batch_size(seeds=8, devices=8, backend="gpu") == 32  # 32 x 1 seed each
    assert batching.default_batch_size(seeds=3, devices=2, backend="tpu") == 20  # 10 x 3 each
    items = list(range(10))
    assert batching.batches(items, 4, seeds=1, devices=4) == [[0, 1, 2, 3], [4, 5, 6, 7], [8], [9]]
    assert batching.batches(items, 4, seeds=4, devices=4)[-1] == [8, 9]  # the seeds split: kept
    assert batching.batches(items, 4, seeds=1, devices=1)[-1] == [8, 9]
    assert batching.batches([], 4, seeds=1, devices=4) == []
