"""One upsample run, resolved once where it starts: the value the command line (or a Python caller) builds
and every batch reads. The degradation is parsed and a kernel file read when the config is made; the run
options are resolved here; the run key is computed once, from the very arrays the search uses."""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
from typing import Any

import numpy as np

from pulse_jax.config import PulseConfig, RunOptions
from pulse_jax.errors import PulseJaxError
from pulse_jax.fields import option
from pulse_jax.inputs import InputOptions, check_options
from pulse_jax.latent_search.driver import check_size, stored_noise_of
from pulse_jax.losses import needs_perceptual
from pulse_jax.model import Model

SHEETS = ("all", "best", "none")


@dataclasses.dataclass(frozen=True)
class OutputOptions:
    """What is written per input besides its image, sheet and report entry (``pulse-jax upsample`` flags)."""

    all_seeds: bool = option(False, "also write every seed's image, <stem>_seed<k>.png")
    save_intermediate: bool = option(False, "write the search as an animated GIF, <stem>_search.gif")
    overwrite: bool = option(False, "redo inputs already done and replace outputs made with other settings")
    spread: bool = option(False, "with several seeds, write <stem>_spread.png: the seeds' mean image beside a "
                          "heat map of their per-pixel standard deviation (over the seeds within eps)")
    save_latents: bool = option(False, "write every seed's W+ and noise maps, <stem>_latents.npz (pulse-jax render "
                                "draws them again)")
    sheets: str = option("all", "the comparison sheet per input: all (every seed), best (the best seed only), none "
                         "(no sheet: faster for large runs)", choices=SHEETS)

    def __post_init__(self):
        if self.sheets not in SHEETS:
            raise PulseJaxError(f"sheets must be one of {', '.join(SHEETS)}, got {self.sheets!r}")


@dataclasses.dataclass(frozen=True, eq=False)
class UpsampleJob:
    """Everything an upsample run's batches share, checked and resolved when it is made.

    model, config, options: the generator, what to search for, how to run (``options`` is resolved here:
      precision and step loop for this backend, once).
    seeds: results per input; seed: the base random seed (an input's keys come from it and its name).
    batch_size: inputs per search (None: by backend and device count, batching.default_batch_size).
    input_options: how files become inputs (--fit, --mask, --align); output_options: what is written.
    """

    model: Model
    config: PulseConfig = PulseConfig()
    options: RunOptions = RunOptions()
    seeds: int = 1
    seed: int = 0
    batch_size: int | None = None
    input_options: InputOptions = InputOptions()
    output_options: OutputOptions = OutputOptions()
    start: Any = None  # latents.StartValues: every search starts there (--init-latents), else drawn
    perceptual: Any = None  # perceptual.Perceptual (--perceptual): for an LPIPS loss term, and the spread's LPIPS

    def __post_init__(self):
        object.__setattr__(self, "options", self.options.resolved())
        self.options.generator_options(self.model.generator)  # a family's options given to another: refused
        for name in ("seeds", "batch_size"):
            value = getattr(self, name)
            if value is not None and not (isinstance(value, int) and value >= 1):
                raise PulseJaxError(f"{name} must be a whole number >= 1, got {value!r}")
        d = self.config.degradation
        if d.mask and self.input_options.mask is None:
            raise PulseJaxError(f"degradation '{d}' needs a mask: pass --mask MASK.png")
        if self.input_options.mask is not None and not d.mask:
            raise PulseJaxError(f"--mask is given, but --degradation '{d}' has no +mask, so the mask would be "
                                f"ignored: add +mask (--degradation {d}+mask) or drop --mask")
        d.check(self.model.generator.resolution)
        check_options(self.input_options, self.model.generator.resolution)
        self.config.check_noise_options(len(self.model.noise_shapes()))
        if self.config.stored_noise:
            stored_noise_of(self.model)  # a model without stored maps: says why, before any input is read
        if needs_perceptual(self.config.loss_terms()) and self.perceptual is None:
            raise PulseJaxError(f"--loss-str {self.config.loss_str!r} has an LPIPS term: pass --perceptual DIR (from "
                                "pulse-jax convert --vgg16 vgg16-397923af.pth --lpips-heads vgg.pth --out DIR)")
        rows = 1 if self.config.tile_latent else self.model.num_ws
        check_size(self.model, self.seeds, self.config.steps, rows, f"--seeds {self.seeds}")

    @functools.cached_property
    def run_key(self) -> str:
        """What must match for an earlier result to count as this run's: everything that changes a result
        (config, seeds, seed, precision and remat, the model's checksum, --fit / --align, the mask's pixels,
        the kernel's values as read for this run, the LPIPS model's checksum when the loss uses it). The input
        file's own hash is kept per entry."""
        config, options, mask = self.config, self.options, self.input_options.mask
        extra = {"model": self.model.checksum, "remat": options.remat, "fit": self.input_options.fit,
                 "align": self.input_options.align,
                 "mask": None if mask is None else hashlib.sha256(np.ascontiguousarray(mask)).hexdigest()}
        kernel = config.degradation.kernel
        if kernel is not None:  # the spec names the file; what counts is what it held when read
            extra["kernel"] = kernel.sha256
        if self.start is not None:
            extra["init_latents"] = self.start.sha256
        if needs_perceptual(config.loss_terms()):  # only what the search uses changes its results
            extra["perceptual"] = self.perceptual.checksum
        digest = hashlib.sha256(json.dumps(extra, sort_keys=True).encode()).hexdigest()[:12]
        return (f"{config.hash()}-s{self.seeds}-seed{self.seed}-{options.precision}-"
                f"r{self.model.generator.resolution}-{digest}")
