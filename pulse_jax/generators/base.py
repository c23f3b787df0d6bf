"""The generator contract every family implements (``Generator``), and what they share.

A family (StyleGAN v1, StyleGAN2, ...) is a frozen dataclass over its architecture config: hashable, so
it can be a static argument of a jitted program. Its networks are Flax NNX modules:

- the synthesis network, ``SynthesisNetwork``: ``module(w (B, num_ws, D), noise [(B, r, r)] * len(
  noise_shapes()), precision, remat) -> image (B, R, R, 3)`` about [-1, 1], and
  ``module.prepare_for_search(options)``, which puts its kernels in the form a search step uses (the same
  function), ``options`` being the family's own ``SearchOptions`` (a frozen dataclass of fields made
  with ``pulse_jax.fields.option``: they become flags);
- the mapping network, ``MappingNetwork``: ``module(z (B, D), precision) -> w (B, D)``.

Optional: ``work_pixels``, what one example's search step holds in output-image pixels, where that is far
more than the image (StyleGAN3): the CPU's seeds per call are counted with it.

``FlaxGenerator`` writes everything else once (binding arrays, random weights, abstract shapes, the pure
synthesize / map / prepare). Nothing in this package knows about the search or about files; what a new
family provides is listed in docs/architecture.md.
"""

from __future__ import annotations

import abc
import dataclasses
import functools
from collections.abc import Callable, Sequence
from typing import Any, ClassVar, Protocol, runtime_checkable

import jax
import jax.numpy as jnp
from flax import nnx

from pulse_jax.tree_check import check_finite, check_tree


class SynthesisNetwork(Protocol):
    def __call__(self, w: jax.Array, noise: Sequence[jax.Array], precision: str, remat: bool) -> jax.Array: ...

    def prepare_for_search(self, options: Any) -> None: ...


class MappingNetwork(Protocol):
    def __call__(self, z: jax.Array, precision: str) -> jax.Array: ...


@runtime_checkable
class Generator(Protocol):
    """What the search, the model directory and the converters use of a generator family."""

    architecture: ClassVar[str]    # the name model.json records (the family's registry name)
    SearchOptions: ClassVar[type]  # the family's options for prepare (a frozen dataclass; may have no fields)
    config: Any                    # the architecture config (frozen dataclass with to_dict())

    @property
    def resolution(self) -> int: ...

    @property
    def dlatent_size(self) -> int: ...

    @property
    def num_ws(self) -> int:
        """W+ rows the synthesis network takes, counted from its layers."""

    def noise_shapes(self) -> tuple[tuple[int, int], ...]:
        """One (r, r) per noise map, in the synthesis network's order (counted apart from num_ws; may be
        empty)."""

    def random_params(self, seed: int = 0, *, with_mapping: bool = True) -> tuple[NetworkParams, NetworkParams | None]:
        ...

    def abstract_params(self, network: str) -> NetworkParams: ...

    def bind(self, network: str, arrays: dict) -> NetworkParams: ...

    def synthesize(self, params: NetworkParams, w: jax.Array, noise: Sequence[jax.Array], *,
                   precision: str = "highest", remat: bool = False) -> jax.Array: ...

    def map(self, params: NetworkParams, z: jax.Array, *, precision: str = "highest") -> jax.Array: ...

    def prepare(self, params: NetworkParams, options: Any = None) -> NetworkParams: ...


@dataclasses.dataclass(frozen=True)
class NoSearchOptions:
    """A family whose search form has no choices."""


@jax.tree_util.register_pytree_node_class
class NetworkParams:
    """One network's parameters with the graph they belong to.

    The graph (``nnx.GraphDef``) travels as static pytree metadata: jitted programs take the params as
    an ordinary argument (never baked in as constants) and compile once per graph, so a prepared network
    (another graph) and a plain one never share a compiled program by mistake.
    """

    def __init__(self, graphdef: nnx.GraphDef, state: nnx.State):
        self.graphdef = graphdef
        self.state = state

    def tree_flatten(self):
        return (self.state,), self.graphdef

    @classmethod
    def tree_unflatten(cls, graphdef, children):
        return cls(graphdef, children[0])

    @classmethod
    def of(cls, module: nnx.Module) -> NetworkParams:
        return cls(*nnx.split(module))

    def module(self) -> nnx.Module:
        return nnx.merge(self.graphdef, self.state)

    def pure(self) -> dict:
        """Nested dicts of arrays, as the model directory stores them."""
        return nnx.to_pure_dict(self.state)


@dataclasses.dataclass(frozen=True)
class FlaxGenerator(abc.ABC):
    """The shared half of a family: given its modules, counts and options, the rest of ``Generator``."""

    config: Any
    architecture: ClassVar[str]
    SearchOptions: ClassVar[type] = NoSearchOptions

    # ---- what a family defines ------------------------------------------------------------------

    @abc.abstractmethod
    def synthesis_module(self, rngs: nnx.Rngs) -> nnx.Module:
        """A synthesis network of this config with random weights (every parameter random)."""

    @abc.abstractmethod
    def mapping_module(self, rngs: nnx.Rngs) -> nnx.Module:
        """A mapping network of this config with random weights."""

    @property
    @abc.abstractmethod
    def num_ws(self) -> int:
        """W+ rows the synthesis network takes, counted from its layers (18 at 1024 for StyleGAN v1 and
        StyleGAN2)."""

    @abc.abstractmethod
    def noise_shapes(self) -> tuple[tuple[int, int], ...]:
        """One (r, r) per noise map, in the synthesis network's order (counted apart from num_ws)."""

    # ---- shared ---------------------------------------------------------------------------------

    @property
    def resolution(self) -> int:
        return self.config.resolution

    @property
    def dlatent_size(self) -> int:
        return self.config.dlatent_size

    def random_params(self, seed: int = 0, *, with_mapping: bool = True) -> tuple[NetworkParams, NetworkParams | None]:
        """(synthesis, mapping or None) with every parameter random, for demos and tests."""
        synthesis = _random_network(self, "synthesis", seed)
        mapping = _random_network(self, "mapping", seed + 1) if with_mapping else None
        return synthesis, mapping

    def _module_maker(self, network: str) -> Callable[[nnx.Rngs], nnx.Module]:
        return {"synthesis": self.synthesis_module, "mapping": self.mapping_module}[network]

    def abstract_params(self, network: str) -> NetworkParams:
        """The "synthesis" or "mapping" network's graph and parameter shapes, nothing computed."""
        return NetworkParams(*_split_abstract(self._module_maker(network)))

    def bind(self, network: str, arrays: dict) -> NetworkParams:
        """Nested dicts of arrays (our layout) -> that network's params, checking every path and shape."""
        abstract = self.abstract_params(network)
        check_tree(arrays, abstract.pure(), f"{network} params")
        check_finite(arrays, f"{network} params")
        nnx.replace_by_pure_dict(abstract.state, jax.tree_util.tree_map(jnp.asarray, arrays))
        return abstract

    def synthesize(self, params: NetworkParams, w: jax.Array, noise, *, precision: str = "highest",
                   remat: bool = False) -> jax.Array:
        """Pure: w (B, num_ws, D), noise [(B, r, r)] -> (B, R, R, 3), about [-1, 1]. For use inside jit.
        ``remat``: keep only each block's output for the backward pass and recompute the inside."""
        return params.module()(w, noise, precision, remat)

    def map(self, params: NetworkParams, z: jax.Array, *, precision: str = "highest") -> jax.Array:
        """Pure: z (B, D) -> w (B, D)."""
        return params.module()(z, precision)

    def prepare(self, params: NetworkParams, options: Any = None) -> NetworkParams:
        """The synthesis params in the form a search step uses (kernels scaled and rearranged once);
        ``synthesize`` gives the same images with either. ``options``: the family's SearchOptions (None:
        its defaults)."""
        options = self.SearchOptions() if options is None else options
        if not isinstance(options, self.SearchOptions):
            raise TypeError(f"{self.architecture} takes {self.SearchOptions.__qualname__}, got {options!r}")
        module = params.module()
        module.prepare_for_search(options)
        return NetworkParams.of(module)


def _random_network(generator: FlaxGenerator, network: str, seed: int) -> NetworkParams:
    """The module's random init as ONE compiled program: run op by op, every parameter's draw was its own
    compile, paid by every demo and test process (benchmarks/RESULTS.md, "Measurements behind the code")."""
    graphdef, _ = _split_abstract(generator._module_maker(network))
    return NetworkParams(graphdef, _init_program(generator, network)(jax.random.key(seed)))


@functools.cache
def _init_program(generator: FlaxGenerator, network: str):
    """One compile per architecture and network, the seed an argument: the same bits as nnx.Rngs(seed),
    and a second random model of a config costs milliseconds, not the compile again."""
    make = generator._module_maker(network)
    return jax.jit(lambda key: nnx.split(make(nnx.Rngs(key)))[1])


def _split_abstract(make: Callable[[nnx.Rngs], nnx.Module]):
    """Not cached: ``bind`` fills the returned state in place."""
    return nnx.split(nnx.eval_shape(lambda: make(nnx.Rngs(0))))
