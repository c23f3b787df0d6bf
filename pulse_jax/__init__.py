"""pulse-jax: PULSE (Menon et al., CVPR 2020) on StyleGAN generators, in JAX/Flax.

The names below are imported when first used (PEP 562), so that ``import pulse_jax.launch`` (the command's
entry point) can decide how the process should run before jax is imported, and jax is imported once.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_WHERE = {
    "PulseConfig": "config", "RunOptions": "config",
    "Degradation": "degrade", "bicubic_downsample": "degrade",
    "CheckpointError": "errors", "PulseJaxError": "errors",
    "PRESETS": "generators", "STYLEGAN2_PRESETS": "generators", "Generator": "generators",
    "StyleGAN2Config": "generators", "StyleGAN3Config": "generators", "StyleGANConfig": "generators",
    "families": "generators",
    "Chunk": "latent_search", "SearchInit": "latent_search", "SearchResult": "latent_search", "search": "latent_search",
    "Model": "model", "load_model": "model", "save_model": "model",
    "Perceptual": "perceptual", "load_perceptual": "perceptual",
    "UpsampleJob": "job", "OutputOptions": "job", "upsample_files": "upsample",
}

__all__ = sorted(_WHERE)


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(f"module 'pulse_jax' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"pulse_jax.{_WHERE[name]}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_WHERE])
