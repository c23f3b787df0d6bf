"""What reading any generator file gives: the architecture, our params trees and the extras a file keeps."""

from __future__ import annotations

import dataclasses

import numpy as np

from pulse_jax.generators.stylegan1 import StyleGANConfig
from pulse_jax.generators.stylegan2 import StyleGAN2Config


@dataclasses.dataclass(frozen=True)
class Converted:
    config: StyleGANConfig | StyleGAN2Config
    synthesis: dict
    mapping: dict
    noise: list[np.ndarray] | None   # the generator's own noise maps, (r, r) each, in our order
    w_avg: np.ndarray | None         # the file's mean w, where the mapping tree has no place for it (v1)
    source: dict                     # provenance for model.json
