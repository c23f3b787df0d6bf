"""PulseConfig: what the search looks for (every option of the reference's search, same names and defaults,
validated); RunOptions: how it runs. Each field carries its own help: the command line is built from them."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from typing import Any

from pulse_jax.degrade import PULSE_EPS, Degradation
from pulse_jax.errors import PulseJaxError
from pulse_jax.fields import option
from pulse_jax.generators import layers as generator_layers
from pulse_jax.losses import LOSSES, parse_loss_str
from pulse_jax.optim import OPTIMIZERS, SCHEDULES

NOISE_TYPES = ("zero", "fixed", "trainable")
MAX_STEPS = 1_000_000  # PULSE uses 100; a million keeps the per-step histories at 4 MB a seed


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


def layers_flag(text: str) -> tuple[int, ...]:
    """``--bad-noise-layers`` text -> layer indices (a flag's parser: errors as argparse expects)."""
    import argparse

    try:
        return parse_layers(text)
    except PulseJaxError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def degradation_flag(text: str) -> Degradation:
    """``--degradation`` text -> the parsed degradation (a kernel file is read here, once per run)."""
    import argparse

    try:
        return Degradation.parse(text)
    except PulseJaxError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


@dataclasses.dataclass(frozen=True)
class PulseConfig:
    """What the search looks for: every option of the reference's search, same names and defaults
    (docs/pulse.md), and the degradation. ``bad_noise_layers=None`` means the generator's last noise map
    (17 at 1024), none for a generator without noise maps; ``eps=None`` means PULSE's 2e-3, or with a
    ``noise:SIGMA`` degradation what a perfect image scores against the noisy observation
    (``effective_eps`` and ``eps_reason``). ``degradation`` may be given as text; it is parsed (and a
    kernel file read) once, here."""

    loss_str: str = option("100*L2+0.05*GEOCROSS", "loss as a sum of WEIGHT*NAME terms ("
                           + ", ".join(LOSSES) + ")")
    eps: float | None = option(None, "success threshold on the downscaling MSE; the L2/L1 terms are clamped at it "
                               "(default: PULSE's 2e-3; with noise:SIGMA, SIGMA^2, what a perfect image scores "
                               "against the noisy input)")
    noise_type: str = option("trainable", "zero, fixed or trainable noise maps", choices=NOISE_TYPES)
    num_trainable_noise_layers: int = option(5, "with trainable noise: optimise the maps of layers below this")
    bad_noise_layers: tuple[int, ...] | None = option(
        None, "noise maps held at zero, e.g. '17' or '16.17'; '' for none (default: the last map)",
        parse=layers_flag, metavar="LAYERS")
    stored_noise: bool = option(False, "start the noise maps from the generator's own (kept by NVIDIA's pickles and "
                                "rosinality's checkpoints; NVIDIA's randomize_noise=False) instead of N(0, 1) draws: "
                                "with --noise-type fixed they stay so, with trainable the first maps are optimised "
                                "from there; bad layers stay zero")  # not in the reference
    normalize_noise: bool = option(  # not in the reference
        False, "after each step set every searched noise map to zero mean and unit variance (NVIDIA's StyleGAN2 "
        "projector; PULSE only rescales them)")
    tile_latent: bool = option(False, "search one latent vector for all layers")
    opt_name: str = option("adam", "optimiser", choices=OPTIMIZERS)
    learning_rate: float = option(0.4, "base learning rate")
    steps: int = option(100, "optimisation steps")
    lr_schedule: str = option("linear1cycledrop", "learning-rate schedule", choices=SCHEDULES)
    degradation: Degradation = option(  # not in the reference: docs/degradations.md
        Degradation(), "how the output must match the input, terms joined by '+': kernel:FILE (a blur kernel, .npy "
        "or grayscale image), then bicubic (PULSE's), box or gaussian[:SIGMA] downscaling, then "
        "bayer[:RGGB|BGGR|GRBG|GBRG] (the input is a colour-filter mosaic) or gray (luma only; automatic for "
        "grayscale inputs), +mask (with --mask), +noise:SIGMA (the input is noisy; sets eps). Examples below",
        parse=degradation_flag, metavar="SPEC")

    def __post_init__(self):
        object.__setattr__(self, "bad_noise_layers", parse_layers(self.bad_noise_layers))
        object.__setattr__(self, "degradation", Degradation.of(self.degradation))
        parse_loss_str(self.loss_str)
        if self.noise_type not in NOISE_TYPES:
            raise PulseJaxError(f"unknown noise_type {self.noise_type!r}; choose one of {', '.join(NOISE_TYPES)}")
        for name in ("stored_noise", "normalize_noise"):
            if not isinstance(getattr(self, name), bool):
                raise PulseJaxError(f"{name} must be True or False, got {getattr(self, name)!r}")
        if self.opt_name not in OPTIMIZERS:
            raise PulseJaxError(f"unknown opt_name {self.opt_name!r}; choose one of {', '.join(OPTIMIZERS)}")
        if self.lr_schedule not in SCHEDULES:
            raise PulseJaxError(f"unknown lr_schedule {self.lr_schedule!r}; choose one of {', '.join(SCHEDULES)}")
        if not (isinstance(self.steps, int) and 1 <= self.steps <= MAX_STEPS):
            raise PulseJaxError(f"steps must be a whole number from 1 to {MAX_STEPS:,} (a search keeps its loss at "
                                f"every step), got {self.steps!r}")
        if self.eps is not None and not (isinstance(self.eps, (int, float)) and 0 <= self.eps < math.inf):
            raise PulseJaxError(f"eps must be a finite number >= 0, got {self.eps!r}")
        if not (isinstance(self.learning_rate, (int, float)) and 0 < self.learning_rate < math.inf):
            raise PulseJaxError(f"learning_rate must be a finite number > 0, got {self.learning_rate!r}")
        if self.num_trainable_noise_layers < 0:
            raise PulseJaxError("num_trainable_noise_layers must be >= 0")

    @property
    def effective_eps(self) -> float:
        """The success threshold (and the L2/L1 clamp) the search uses."""
        if self.eps is not None:
            return float(self.eps)
        implied = self.degradation.noise_eps()
        return PULSE_EPS if implied is None else implied

    @property
    def eps_reason(self) -> str:
        """Why ``effective_eps`` is what it is, in words for the report."""
        if self.eps is not None:
            return "given"
        noise = self.degradation.noise
        if noise is None:
            return "PULSE's default"
        return (f"noise:{noise:g} in the observation: a perfect image's expected downscaling MSE against it is "
                f"SIGMA^2 = {noise * noise:g}")

    def loss_terms(self) -> tuple[tuple[float, str], ...]:
        return parse_loss_str(self.loss_str)

    # The four below index noise maps: ``num_noise`` is the generator's count (len(noise_shapes())),
    # which need not equal its W+ rows, and may be 0 (a generator without noise maps).

    def check_noise_options(self, num_noise: int) -> None:
        """Options that name noise maps, refused for a generator that has none (the defaults apply to
        every generator)."""
        if num_noise:
            self.bad_layers(num_noise)
            return
        if self.bad_noise_layers:
            raise PulseJaxError(f"bad_noise_layers {list(self.bad_noise_layers)}: this generator has no noise maps; "
                                "leave --bad-noise-layers out")
        if self.stored_noise:
            raise PulseJaxError("stored_noise: this generator has no noise maps; leave --stored-noise out")

    def bad_layers(self, num_noise: int) -> tuple[int, ...]:
        if self.bad_noise_layers is None:
            return (num_noise - 1,) if num_noise else ()
        wrong = [i for i in self.bad_noise_layers if not 0 <= i < num_noise]
        if wrong:
            have = f"noise layers 0..{num_noise - 1}" if num_noise else "no noise maps"
            raise PulseJaxError(f"bad_noise_layers {wrong} out of range: this generator has {have}")
        return self.bad_noise_layers

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
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        d["degradation"] = str(self.degradation)
        d["eps"] = self.effective_eps  # the number used (eps_reason says why): hashes as before eps was optional
        d["bad_noise_layers"] = None if self.bad_noise_layers is None else list(self.bad_noise_layers)
        for added_later in ("stored_noise", "normalize_noise"):
            if not d[added_later]:
                del d[added_later]  # so that a configuration of before the option hashes as it did
        return d

    def hash(self) -> str:
        """Short stable name of this configuration (for reports and skipping finished work)."""
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:12]


PRECISIONS = tuple(generator_layers.PRECISIONS)  # highest, default, bfloat16
STEP_LOOPS = ("device", "host")


@dataclasses.dataclass(frozen=True)
class RunOptions:
    """How a search runs, as opposed to what it searches for (PulseConfig). Frozen and hashable.

    ``resolved()`` fills in what depends on the backend (precision, step loop), once, where a run starts;
    ``generator``: the model family's own options for the form its network takes in the search (e.g.
    ``StyleGAN1.SearchOptions(transposed_conv="dilated")``; None: that family's defaults).
    """

    precision: str | None = option(
        None, "generator matmul/conv precision: highest (strict float32), default (the backend's choice: TF32 on "
        "NVIDIA GPUs, as PyTorch and so PULSE run their convolutions there), bfloat16 (bf16 operands, float32 "
        "accumulation; its cost in benchmarks/RESULTS.md). Default: default on a GPU, highest elsewhere (on a CPU "
        "both are float32; on a TPU default is bfloat16); the report says which ran", choices=PRECISIONS)
    remat: bool = option(False, "recompute each generator block in the backward pass: less memory per seed (more "
                         "seeds fit on a GPU), about one more forward pass of work")
    step_loop: str | None = option(
        None, "device: a chunk of steps in one compiled loop; host: one step per compiled call (default: host on "
        "a CPU, where XLA runs convolutions in loops slower, device elsewhere)", choices=STEP_LOOPS)
    shard: bool | None = option(None, "split each batch over this process's devices: auto (when there are "
                                "several), on (refuse a batch that does not split evenly), off (one device)",
                                flag="--device-split")
    devices: tuple | None = option(None, "where to run (None: this process's devices); over several processes "
                                   "jax.devices() makes one program over every host's devices", cli=False)
    chunk_steps: int | None = option(None, "steps between progress updates and stop checks (default: a tenth of "
                                     "--steps)", metavar="N")
    generator: Any = option(None, "the model family's options for the search's form of its network (None: the "
                            "family's defaults); flags of their own, by family", cli=False)

    def __post_init__(self):
        if self.precision is not None and self.precision not in PRECISIONS:
            raise PulseJaxError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if self.step_loop is not None and self.step_loop not in STEP_LOOPS:
            raise PulseJaxError(f"step_loop must be one of {STEP_LOOPS}, got {self.step_loop!r}")
        if self.chunk_steps is not None and not (isinstance(self.chunk_steps, int) and self.chunk_steps >= 1):
            raise PulseJaxError(f"chunk_steps must be a positive integer, got {self.chunk_steps!r}")
        if self.devices is not None:
            object.__setattr__(self, "devices", tuple(self.devices))
            if not self.devices:
                raise PulseJaxError("devices is empty; pass at least one device (e.g. jax.local_devices())")
        if self.generator is not None and not dataclasses.is_dataclass(self.generator):
            raise PulseJaxError(f"generator must be a model family's SearchOptions, got {self.generator!r}")

    @property
    def is_resolved(self) -> bool:
        return self.precision is not None and self.step_loop is not None

    def resolved(self) -> RunOptions:
        """The options with every backend-dependent default (precision, step loop) filled in; itself when
        nothing is left to fill in.

        The step loop: "device" runs a chunk's steps in a fori_loop inside one compiled call; "host" one
        step per call with Python looping. XLA:CPU runs convolutions inside while-loop bodies slower than
        the same program unrolled (jax-ml/jax#12868; measured on this search in benchmarks/RESULTS.md),
        and on a CPU the per-call dispatch is nothing beside a step: "host" there, "device" elsewhere."""
        if self.is_resolved:
            return self
        import jax

        backend = jax.default_backend() if self.devices is None else self.devices[0].platform
        return dataclasses.replace(
            self, precision=self.precision or ("default" if backend == "gpu" else "highest"),
            step_loop=self.step_loop or ("host" if backend == "cpu" else "device"))

    def generator_options(self, generator) -> Any:
        """This run's options for ``generator``'s family: the ones given, or the family's defaults."""
        if self.generator is None:
            return generator.SearchOptions()
        if not isinstance(self.generator, generator.SearchOptions):
            raise PulseJaxError(f"run options for {type(self.generator).__qualname__} were given, but the model is "
                                f"a {generator.architecture} generator (its options: "
                                f"{generator.SearchOptions.__qualname__})")
        return self.generator

    def to_dict(self) -> dict:
        """For reports: devices by their names, the family's options as a dict."""
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}  # asdict would deep-copy devices
        d["devices"] = None if self.devices is None else [str(x) for x in self.devices]
        d["generator"] = None if self.generator is None else dataclasses.asdict(self.generator)
        return d
