"""What reading any generator file gives: the architecture, our params trees and the extras a file keeps."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np


@dataclasses.dataclass(frozen=True)
class Converted:
    config: Any                      # the architecture config of a registered family (generators.registry)
    synthesis: dict
    mapping: dict
    noise: list[np.ndarray] | None   # the generator's own noise maps, (r, r) each, in our order
    w_avg: np.ndarray | None         # the file's mean w, where the mapping tree has no place for it (v1)
    source: dict                     # provenance for model.json
