"""A generator family written for the tests, as a new family is written (docs/architecture.md): a config,
networks behind the contract, SearchOptions and a Family entry. It has no noise maps, so it also proves
that the search, the model directory and upsample work for a generator without any.

The synthesis network: each W+ row through its own dense layer to an (R, R, 3) image, summed, tanh.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import ClassVar

import jax
import jax.numpy as jnp
from flax import nnx

from pulse_jax.fields import option
from pulse_jax.generators.base import FlaxGenerator
from pulse_jax.generators.layers import Dense, leaky_relu, normalize_2nd_moment
from pulse_jax.generators.registry import Family


@dataclasses.dataclass(frozen=True)
class ToyConfig:
    resolution: int = 16
    dlatent_size: int = 512
    rows: int = 3

    architecture: ClassVar[str] = "toy"

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class SearchOptions:
    scale_once: bool = option(True, "fold the output scale into the kernels before a search (the same function)")


class Synthesis(nnx.Module):
    def __init__(self, config: ToyConfig, *, rngs: nnx.Rngs):
        self.config = config
        size = config.resolution**2 * 3
        self.rows = nnx.List([Dense(config.dlatent_size, size, gain=1.0, lrmul=1.0, rngs=rngs)
                              for _ in range(config.rows)])
        self.scale = 1.0 / math.sqrt(config.rows)

    def prepare_for_search(self, options: SearchOptions) -> None:
        for row in self.rows:
            row.prepare_for_search()

    def __call__(self, w: jax.Array, noise: Sequence[jax.Array], precision: str = "highest",
                 remat: bool = False) -> jax.Array:
        assert not noise  # no noise maps: the contract passes an empty sequence
        r = self.config.resolution
        total = sum(row(w[:, i], precision) for i, row in enumerate(self.rows))
        return jnp.tanh(total * self.scale).reshape(w.shape[0], r, r, 3)


class Mapping(nnx.Module):
    def __init__(self, config: ToyConfig, *, rngs: nnx.Rngs):
        self.fc = Dense(config.dlatent_size, config.dlatent_size, gain=math.sqrt(2), lrmul=1.0, rngs=rngs)

    def __call__(self, z: jax.Array, precision: str = "highest") -> jax.Array:
        return leaky_relu(self.fc(normalize_2nd_moment(z), precision))


@dataclasses.dataclass(frozen=True)
class Toy(FlaxGenerator):
    config: ToyConfig
    architecture: ClassVar[str] = ToyConfig.architecture
    SearchOptions: ClassVar[type] = SearchOptions

    def synthesis_module(self, rngs: nnx.Rngs) -> Synthesis:
        return Synthesis(self.config, rngs=rngs)

    def mapping_module(self, rngs: nnx.Rngs) -> Mapping:
        return Mapping(self.config, rngs=rngs)

    @property
    def num_ws(self) -> int:
        return self.config.rows

    def noise_shapes(self) -> tuple[tuple[int, int], ...]:
        return ()


FAMILY = Family(name="toy", title="Toy", generator=Toy, config=ToyConfig, presets={"tiny": ToyConfig()},
                demo_preset="tiny", files="nothing (made in the tests)")
