"""pulse-jax: PULSE (Menon et al., CVPR 2020) on StyleGAN generators, in JAX/Flax."""

from pulse_jax.config import PulseConfig, RunOptions
from pulse_jax.degrade import Degradation, bicubic_downsample
from pulse_jax.errors import CheckpointError, PulseJaxError
from pulse_jax.generators import PRESETS, STYLEGAN2_PRESETS, Generator, StyleGAN2Config, StyleGANConfig, families
from pulse_jax.latent_search import Chunk, SearchInit, SearchResult, search
from pulse_jax.model import Model, load_model, save_model

__version__ = "0.1.0"

__all__ = [
    "PRESETS", "CheckpointError", "Chunk", "Degradation", "Generator", "Model", "PulseConfig", "PulseJaxError",
    "RunOptions", "STYLEGAN2_PRESETS", "SearchInit", "SearchResult", "StyleGAN2Config", "StyleGANConfig",
    "bicubic_downsample", "families", "load_model", "save_model", "search",
]
