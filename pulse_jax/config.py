"""PulseConfig: every option of the reference's search, same names and defaults, validated; RunOptions: how it runs."""

from __future__ import annotations

import dataclasses
import hashlib
import json

from pulse_jax.degrade import PULSE_EPS, Degradation
from pulse_jax.errors import PulseJaxError
from pulse_jax.generators import layers as generator_layers
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
    """The search's options. ``bad_noise_layers=None`` means the generator's last layer (17 at 1024);
    ``eps=None`` means PULSE's 2e-3, or with a ``noise:SIGMA`` degradation what a perfect image scores
    against the noisy observation (``effective_eps`` and ``eps_reason``)."""

    loss_str: str = "100*L2+0.05*GEOCROSS"
    eps: float | None = None
    noise_type: str = "trainable"
    num_trainable_noise_layers: int = 5
    bad_noise_layers: tuple[int, ...] | None = None
    stored_noise: bool = False  # not in the reference: start the maps from the generator's own (see driver)
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
        if not isinstance(self.stored_noise, bool):
            raise PulseJaxError(f"stored_noise must be True or False, got {self.stored_noise!r}")
        if self.opt_name not in OPTIMIZERS:
            raise PulseJaxError(f"unknown opt_name {self.opt_name!r}; choose one of {', '.join(OPTIMIZERS)}")
        if self.lr_schedule not in SCHEDULES:
            raise PulseJaxError(f"unknown lr_schedule {self.lr_schedule!r}; choose one of {', '.join(SCHEDULES)}")
        if not (isinstance(self.steps, int) and self.steps >= 1):
            raise PulseJaxError(f"steps must be a positive integer, got {self.steps!r}")
        if self.eps is not None and not self.eps >= 0:
            raise PulseJaxError(f"eps must be >= 0, got {self.eps!r}")
        if not self.learning_rate > 0:
            raise PulseJaxError(f"learning_rate must be > 0, got {self.learning_rate!r}")
        if self.num_trainable_noise_layers < 0:
            raise PulseJaxError("num_trainable_noise_layers must be >= 0")

    @property
    def effective_eps(self) -> float:
        """The success threshold (and the L2/L1 clamp) the search uses."""
        if self.eps is not None:
            return float(self.eps)
        implied = Degradation.parse(self.degradation).noise_eps()
        return PULSE_EPS if implied is None else implied

    @property
    def eps_reason(self) -> str:
        """Why ``effective_eps`` is what it is, in words for the report."""
        if self.eps is not None:
            return "given"
        noise = Degradation.parse(self.degradation).noise
        if noise is None:
            return "PULSE's default"
        return (f"noise:{noise:g} in the observation: a perfect image's expected downscaling MSE against it is "
                f"SIGMA^2 = {noise * noise:g}")

    def loss_terms(self) -> tuple[tuple[float, str], ...]:
        return parse_loss_str(self.loss_str)

    # The three below index noise maps: ``num_noise`` is the generator's count (len(noise_shapes())),
    # which need not equal its W+ rows.

    def bad_layers(self, num_noise: int) -> tuple[int, ...]:
        layers = (num_noise - 1,) if self.bad_noise_layers is None else self.bad_noise_layers
        wrong = [i for i in layers if not 0 <= i < num_noise]
        if wrong:
            raise PulseJaxError(f"bad_noise_layers {wrong} out of range: this generator has noise layers "
                                f"0..{num_noise - 1}")
        return layers

    def trainable_layers(self, num_noise: int) -> tuple[int, ...]:
        if self.noise_type != "trainable":
            return ()
        bad = self.bad_layers(num_noise)
        return tuple(i for i in range(min(self.num_trainable_noise_layers, num_noise)) if i not in bad)

    def zero_layers(self, num_noise: int) -> tuple[int, ...]:
        if self.noise_type == "zero":
            return tuple(range(num_noise))
        return tuple(sorted(set(self.bad_layers(num_noise))))

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["eps"] = self.effective_eps  # the number used (eps_reason says why): hashes as before eps was optional
        d["bad_noise_layers"] = None if self.bad_noise_layers is None else list(self.bad_noise_layers)
        if not self.stored_noise:
            del d["stored_noise"]  # so that a configuration of before the option hashes as it did
        return d

    def hash(self) -> str:
        """Short stable name of this configuration (for reports and skipping finished work)."""
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:12]


PRECISIONS = tuple(generator_layers.PRECISIONS)  # highest, default, bfloat16
STEP_LOOPS = ("device", "host")
TRANSPOSED_CONVS = tuple(generator_layers.TRANSPOSED_CONV_IMPLS)  # phases, dilated


@dataclasses.dataclass(frozen=True)
class RunOptions:
    """How a search runs, as opposed to what it searches for (PulseConfig). Frozen and hashable.

    precision: the generator's matmul/conv precision: "highest" (float32), "default" (the backend's
        choice: TF32 on NVIDIA GPUs), "bfloat16" (bf16 operands, float32 accumulation). None: "default"
        on a GPU, as PyTorch (and so PULSE) runs its convolutions in TF32 there by default (3x faster on
        an H200), and "highest" elsewhere (on a CPU both are float32; on a TPU "default" is bfloat16).
    remat: recompute each generator block in the backward pass (less memory per seed, more work).
    step_loop: "device" (a chunk of steps in one compiled loop) or "host" (one step per compiled call);
        None chooses by backend (host on a CPU, where XLA runs convolutions in loops ~3x slower).
    shard: split the (images x seeds) batch over the devices; None: when there are several.
    devices: where to run (None: this process's devices). Over several processes, ``jax.devices()``
        makes one program over every host's devices (each process then passes the same inputs).
    chunk_steps: steps between progress callbacks (None: about a tenth of the run).
    transposed_conv: how StyleGAN v1's fused upsampling runs: "phases" (one 2x2 phase convolution) or
        "dilated" (a dilated convolution, kept to compare the two on a device). Same numbers.
    """

    precision: str | None = None
    remat: bool = False
    step_loop: str | None = None
    shard: bool | None = None
    devices: tuple | None = None
    chunk_steps: int | None = None
    transposed_conv: str = "phases"

    def __post_init__(self):
        if self.precision is not None and self.precision not in PRECISIONS:
            raise PulseJaxError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if self.step_loop is not None and self.step_loop not in STEP_LOOPS:
            raise PulseJaxError(f"step_loop must be one of {STEP_LOOPS}, got {self.step_loop!r}")
        if self.transposed_conv not in TRANSPOSED_CONVS:
            raise PulseJaxError(f"transposed_conv must be one of {TRANSPOSED_CONVS}, got {self.transposed_conv!r}")
        if self.chunk_steps is not None and not (isinstance(self.chunk_steps, int) and self.chunk_steps >= 1):
            raise PulseJaxError(f"chunk_steps must be a positive integer, got {self.chunk_steps!r}")
        if self.devices is not None:
            object.__setattr__(self, "devices", tuple(self.devices))
            if not self.devices:
                raise PulseJaxError("devices is empty; pass at least one device (e.g. jax.local_devices())")

    def resolved(self) -> RunOptions:
        """The options with every backend-dependent default (precision, step loop) filled in.

        The step loop: "device" runs a chunk's steps in a fori_loop inside one compiled call; "host" one
        step per call with Python looping. XLA:CPU runs convolutions inside while-loop bodies ~3x slower
        than the same program unrolled (measured on this search; jax-ml/jax#12868), and on a CPU the
        per-call dispatch (~0.1 ms) is nothing beside a step (~100 ms): "host" there, "device" elsewhere."""
        import jax

        backend = jax.default_backend() if self.devices is None else self.devices[0].platform
        return dataclasses.replace(
            self, precision=self.precision or ("default" if backend == "gpu" else "highest"),
            step_loop=self.step_loop or ("host" if backend == "cpu" else "device"))

    def to_dict(self) -> dict:
        """For reports: devices by their names."""
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}  # asdict would deep-copy devices
        d["devices"] = None if self.devices is None else [str(x) for x in self.devices]
        return d
