"""PulseConfig: every option of the reference's search, same names and defaults, validated."""

from __future__ import annotations

import dataclasses
import hashlib
import json

from pulse_jax.degrade import Degradation
from pulse_jax.errors import PulseJaxError
from pulse_jax.losses import parse_loss_str
from pulse_jax.optim import OPTIMIZERS, SCHEDULES

NOISE_TYPES = ("zero", "fixed", "trainable")


def parse_layers(text: str | int | tuple | list | None) -> tuple[int, ...] | None:
    """The reference's dotted form ``"16.17"`` (or ints) -> ``(16, 17)``; ``""`` -> ``()``."""
    if text is None:
        return None
    if isinstance(text, int):
        return (text,)
    if isinstance(text, str):
        parts = [p.strip() for p in text.replace(",", ".").split(".") if p.strip()]
        try:
            return tuple(int(p) for p in parts)
        except ValueError:
            raise PulseJaxError(f"bad_noise_layers {text!r}: write layer indices like '17' or '16.17'") from None
    return tuple(int(t) for t in text)


@dataclasses.dataclass(frozen=True)
class PulseConfig:
    """The search's options. ``bad_noise_layers=None`` means the generator's last layer (17 at 1024)."""

    loss_str: str = "100*L2+0.05*GEOCROSS"
    eps: float = 2e-3
    noise_type: str = "trainable"
    num_trainable_noise_layers: int = 5
    bad_noise_layers: tuple[int, ...] | None = None
    tile_latent: bool = False
    opt_name: str = "adam"
    learning_rate: float = 0.4
    steps: int = 100
    lr_schedule: str = "linear1cycledrop"
    degradation: str = "bicubic"  # not in the reference: see pulse_jax.degrade.Degradation

    def __post_init__(self):
        object.__setattr__(self, "bad_noise_layers", parse_layers(self.bad_noise_layers))
        parse_loss_str(self.loss_str)
        Degradation.parse(self.degradation)
        if self.noise_type not in NOISE_TYPES:
            raise PulseJaxError(f"unknown noise_type {self.noise_type!r}; choose one of {', '.join(NOISE_TYPES)}")
        if self.opt_name not in OPTIMIZERS:
            raise PulseJaxError(f"unknown opt_name {self.opt_name!r}; choose one of {', '.join(OPTIMIZERS)}")
        if self.lr_schedule not in SCHEDULES:
            raise PulseJaxError(f"unknown lr_schedule {self.lr_schedule!r}; choose one of {', '.join(SCHEDULES)}")
        if not (isinstance(self.steps, int) and self.steps >= 1):
            raise PulseJaxError(f"steps must be a positive integer, got {self.steps!r}")
        if not self.eps >= 0:
            raise PulseJaxError(f"eps must be >= 0, got {self.eps!r}")
        if not self.learning_rate > 0:
            raise PulseJaxError(f"learning_rate must be > 0, got {self.learning_rate!r}")
        if self.num_trainable_noise_layers < 0:
            raise PulseJaxError("num_trainable_noise_layers must be >= 0")

    def loss_terms(self) -> tuple[tuple[float, str], ...]:
        return parse_loss_str(self.loss_str)

    def bad_layers(self, num_layers: int) -> tuple[int, ...]:
        layers = (num_layers - 1,) if self.bad_noise_layers is None else self.bad_noise_layers
        wrong = [i for i in layers if not 0 <= i < num_layers]
        if wrong:
            raise PulseJaxError(f"bad_noise_layers {wrong} out of range: this generator has layers 0..{num_layers - 1}")
        return layers

    def trainable_layers(self, num_layers: int) -> tuple[int, ...]:
        if self.noise_type != "trainable":
            return ()
        bad = self.bad_layers(num_layers)
        return tuple(i for i in range(min(self.num_trainable_noise_layers, num_layers)) if i not in bad)

    def zero_layers(self, num_layers: int) -> tuple[int, ...]:
        if self.noise_type == "zero":
            return tuple(range(num_layers))
        return tuple(sorted(set(self.bad_layers(num_layers))))

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["bad_noise_layers"] = None if self.bad_noise_layers is None else list(self.bad_noise_layers)
        return d

    def hash(self) -> str:
        """Short stable name of this configuration (for reports and skipping finished work)."""
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:12]
