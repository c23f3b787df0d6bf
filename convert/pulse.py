"""PULSE's StyleGAN v1 files -> model directory: read, map, check, fit, save."""

from __future__ import annotations

import sys
from pathlib import Path

from convert.torch_io import load_state_dict
from pulse_jax import pulse_format
from pulse_jax.errors import PulseJaxError
from pulse_jax.model import Model, compute_gaussian_fit, save_model
from pulse_jax.progress import Progress
from pulse_jax.safe_files import is_inside


def convert(*, synthesis: str, out: str, mapping: str | None = None, gaussian_fit: str | None = None,
            overwrite: bool = False, gaussian_fit_samples: int = 1_000_000, verbose: bool = True) -> Path:
    """Convert and write; every check runs before anything is written."""
    log = (lambda msg: print(msg, file=sys.stderr)) if verbose else (lambda msg: None)
    check_out(out, overwrite, {"--synthesis": synthesis, "--mapping": mapping, "--gaussian-fit": gaussian_fit})
    if gaussian_fit is None and mapping is not None and gaussian_fit_samples < 2:
        raise PulseJaxError(f"--gaussian-fit-samples must be at least 2 (a standard deviation needs two samples), "
                            f"got {gaussian_fit_samples}")
    config, synth = pulse_format.synthesis_params(
        load_state_dict(synthesis, "synthesis checkpoint"), f"synthesis checkpoint {synthesis}")
    log(f"synthesis: {config}")
    mapping_params = None
    if mapping is not None:
        mapping_params = pulse_format.mapping_params(
            load_state_dict(mapping, "mapping checkpoint"), config.dlatent_size, f"mapping checkpoint {mapping}")
    fit = None
    if gaussian_fit is not None:
        fit = pulse_format.gaussian_fit_arrays(
            load_state_dict(gaussian_fit, "gaussian fit"), config.dlatent_size, f"gaussian fit {gaussian_fit}")
    model = Model.from_arrays(config, synth, mapping_params, fit)
    if fit is None and mapping_params is not None:
        bar = Progress(gaussian_fit_samples, "gaussian fit", "samples", enabled=verbose)
        fit = compute_gaussian_fit(model, num_samples=gaussian_fit_samples,
                                   progress=lambda done, total: bar.update(done - bar.count))
        model = Model.from_arrays(config, synth, mapping_params, fit)
    elif fit is None:
        log("no --mapping and no --gaussian-fit: the model has no gaussian fit; "
            "search needs one, so pass either to use this model with pulse-jax upsample")
    return save_model(model, out, overwrite=overwrite)


def check_out(out: str, overwrite: bool, inputs: dict[str, str | None]) -> None:
    """Before reading anything: --out must not hold an input (replacing it would delete the input), and
    must be new, or with --overwrite a model directory of ours (save_model checks that again)."""
    for flag, path in inputs.items():
        if path is not None and is_inside(Path(path), Path(out)):
            raise PulseJaxError(f"{flag} {path} lies inside --out {out}: writing the model there would replace "
                                "it; choose another --out")
    if Path(out).exists() and not overwrite:
        raise PulseJaxError(f"{out} already exists; choose another --out or pass --overwrite")
