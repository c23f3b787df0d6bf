"""Generator families behind one interface (base.Generator); model.json names the family."""

from __future__ import annotations

from pulse_jax.errors import CheckpointError
from pulse_jax.generators.base import Generator, NetworkParams
from pulse_jax.generators.stylegan1 import PRESETS, StyleGAN1, StyleGANConfig
from pulse_jax.generators.stylegan2 import PRESETS as STYLEGAN2_PRESETS
from pulse_jax.generators.stylegan2 import StyleGAN2, StyleGAN2Config

# architecture name (as model.json records it) -> (family, its config class)
FAMILIES: dict[str, tuple[type[Generator], type]] = {
    StyleGAN1.architecture: (StyleGAN1, StyleGANConfig),
    StyleGAN2.architecture: (StyleGAN2, StyleGAN2Config),
}


def generator_for(config) -> Generator:
    """The family of an architecture config object."""
    for family, config_class in FAMILIES.values():
        if isinstance(config, config_class):
            return family(config)
    raise TypeError(f"no generator family takes a {type(config).__name__}")


def generator_from_dict(architecture: str, config: dict, what: str) -> Generator:
    """model.json's architecture name and config dict -> the generator (CheckpointError if either is bad)."""
    if architecture not in FAMILIES:
        raise CheckpointError(f"{what}: unknown architecture {architecture!r}; this pulse-jax knows "
                              f"{', '.join(sorted(FAMILIES))} (upgrade pulse-jax, or convert the model again)")
    family, config_class = FAMILIES[architecture]
    if not isinstance(config, dict):
        raise CheckpointError(f"{what}: 'config' must be an object of architecture settings, got {config!r}")
    try:
        return family(config_class(**config))
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{what}: bad config ({e})") from None


__all__ = ["FAMILIES", "PRESETS", "STYLEGAN2_PRESETS", "Generator", "NetworkParams", "StyleGAN1", "StyleGAN2",
           "StyleGAN2Config", "StyleGANConfig", "generator_for", "generator_from_dict"]
