"""pulse-jax: PULSE (Menon et al., CVPR 2020) on StyleGAN v1 and StyleGAN2, in JAX/Flax."""

from pulse_jax.config import PulseConfig, RunOptions
from pulse_jax.degrade import bicubic_downsample
from pulse_jax.errors import CheckpointError, PulseJaxError
from pulse_jax.generators import PRESETS, STYLEGAN2_PRESETS, Generator, StyleGAN2Config, StyleGANConfig
from pulse_jax.latent_search import SearchInit, SearchResult, search
from pulse_jax.model import Model, load_model, save_model

__version__ = "0.1.0"

__all__ = [
    "PRESETS", "CheckpointError", "Generator", "Model", "PulseConfig", "PulseJaxError", "RunOptions", "SearchInit",
    "STYLEGAN2_PRESETS", "SearchResult", "StyleGAN2Config", "StyleGANConfig", "bicubic_downsample", "load_model",
    "save_model", "search",
]
