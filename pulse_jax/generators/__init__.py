"""Generator families behind one contract (base.Generator), registered by name (registry.py).

A new family is one module (its config, SearchOptions, networks, generator class and ``FAMILY``) and one
``register`` line below: docs/architecture.md lists what it provides.
"""

from __future__ import annotations

from pulse_jax.errors import CheckpointError
from pulse_jax.generators import registry, stylegan1, stylegan2, stylegan3
from pulse_jax.generators.base import FlaxGenerator, Generator, NetworkParams
from pulse_jax.generators.registry import Family, families
from pulse_jax.generators.stylegan1 import PRESETS, StyleGAN1, StyleGANConfig
from pulse_jax.generators.stylegan2 import PRESETS as STYLEGAN2_PRESETS
from pulse_jax.generators.stylegan2 import StyleGAN2, StyleGAN2Config
from pulse_jax.generators.stylegan3 import StyleGAN3, StyleGAN3Config

registry.register(stylegan1.FAMILY)
registry.register(stylegan2.FAMILY)
registry.register(stylegan3.FAMILY)


def generator_for(config) -> Generator:
    """The generator of an architecture config object (of any registered family)."""
    return registry.family_of_config(config).generator(config)


def generator_from_dict(architecture: str, config: dict, what: str) -> Generator:
    """model.json's architecture name and config dict -> the generator (CheckpointError if either is bad)."""
    family = registry.family(architecture, what)
    if not isinstance(config, dict):
        raise CheckpointError(f"{what}: 'config' must be an object of architecture settings, got {config!r}")
    try:
        return family.generator(family.config(**config))
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{what}: bad config ({e})") from None


__all__ = ["PRESETS", "STYLEGAN2_PRESETS", "Family", "FlaxGenerator", "Generator", "NetworkParams", "StyleGAN1",
           "StyleGAN2", "StyleGAN2Config", "StyleGAN3", "StyleGAN3Config", "StyleGANConfig", "families",
           "generator_for", "generator_from_dict", "registry"]
