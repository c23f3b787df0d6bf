"""``pulse-jax demo``: a ground truth, its low-resolution version, and what the search finds.

With no model it builds a small random-weight generator, so it runs anywhere in
about a minute; the results downscale to the input although none equals the truth.
"""

from __future__ import annotations

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from pulse_jax.config import PulseConfig
from pulse_jax.degrade import Degradation
from pulse_jax.errors import PulseJaxError
from pulse_jax.generators import registry
from pulse_jax.generators.layers import leaky_relu, standard_normal
from pulse_jax.images import save_png
from pulse_jax.inputs import check_fit_size
from pulse_jax.latent_search import search
from pulse_jax.model import Model, compute_gaussian_fit, load_model
from pulse_jax.progress import Progress, seed_step_progress
from pulse_jax.reports import REPORT_NAME, seed_entries, write_json, write_sheet
from pulse_jax.safe_files import check_writable_folder


def random_demo_model(seed: int = 0, architecture: str = "stylegan1") -> Model:
    """The family's demo preset (registry.Family.demo_preset, or a variant's: ``stylegan3-r``) with random
    weights and their gaussian fit."""
    family, preset = demo_model_name(architecture)
    model = Model.random(family.presets[preset], seed)
    return model.with_gaussian_fit(compute_gaussian_fit(model, num_samples=50_000, batch_size=10_000, seed=seed))


def demo_model_name(architecture: str):
    """(family, preset) of a demo --arch name."""
    choices = registry.demo_choices()
    if architecture not in choices:
        registry.family(architecture)  # raises, naming the families it knows
    return choices[architecture]


def ground_truth(model: Model, key) -> np.ndarray:
    """An image the generator can make: a random point of the latent space PULSE searches."""
    k1, k2 = jax.random.split(key)
    mean, std = model.gaussian_fit
    w = leaky_relu(standard_normal(k1, (1, model.num_ws, model.generator.dlatent_size)) * std[None, None]
                   + mean[None, None])
    shapes = model.noise_shapes()
    noise = [standard_normal(k, (1, *s)) for k, s in zip(jax.random.split(k2, len(shapes)), shapes, strict=True)]
    return np.clip((np.asarray(model.synthesize(w, noise))[0] + 1.0) / 2.0, 0.0, 1.0)


def demo_mask(size: int) -> np.ndarray:
    """(size, size): known (1) everywhere but a centred square of half the side (what inpainting fills)."""
    mask = np.ones((size, size), np.float32)
    mask[size // 4: size // 4 + size // 2, size // 4: size // 4 + size // 2] = 0.0
    return mask


DEMO_FORMAT = "pulse-jax-demo"


def demo_outputs(out_dir: Path, seeds: int) -> list[Path]:
    return [out_dir / n for n in ("ground_truth.png", "input.png", "sheet.png", REPORT_NAME,
                                  *(f"seed{s}.png" for s in range(seeds)))]


def check_demo_folder(out_dir: Path, seeds: int) -> None:
    """The demo replaces only what an earlier demo wrote there (its report.json says so): never a user's
    files, nor an upsample run's report."""
    existing = [p for p in demo_outputs(out_dir, seeds) if p.exists() or p.is_symlink()]
    if not existing:
        return
    try:
        earlier = json.loads((out_dir / REPORT_NAME).read_text())
    except (OSError, ValueError):
        earlier = None
    if not (isinstance(earlier, dict) and (earlier.get("format") == DEMO_FORMAT
                                           or "rms_difference_from_truth" in earlier)):
        raise PulseJaxError(f"{existing[0]} exists and was not written by pulse-jax demo: the demo would replace it; "
                            "choose another --out (an empty or new folder)")


def run_demo(out_dir: Path, model_dir: str | None = None, *, seeds: int = 4, lr_size: int = 8,
             steps: int = 200, seed: int = 0, degradation: str | Degradation = "bicubic",
             architecture: str = "stylegan1", show_progress: bool = True) -> dict:
    """The generator's own image, degraded (``degradation``, noise drawn from ``seed``), then searched."""
    config = PulseConfig(steps=steps, degradation=degradation)
    d = config.degradation
    check_writable_folder(out_dir)
    check_demo_folder(out_dir, seeds)
    model = load_model(model_dir) if model_dir else random_demo_model(seed, architecture)
    check_fit_size(lr_size, model.generator.resolution, "--size")
    d.check(model.generator.resolution, lr_size)
    truth = ground_truth(model, jax.random.key(seed + 1000))
    lr = np.asarray(d.simulate(jnp.asarray(truth)[None], model.generator.resolution // lr_size,
                               jax.random.key(seed + 2000)))
    masks = demo_mask(lr_size)[None] if d.mask else None
    bar = Progress(steps * seeds, "demo search", "seed-steps", enabled=show_progress)
    result = search(model, lr, config, seeds=seeds, key=jax.random.key(seed), on_chunk=seed_step_progress(bar),
                    masks=masks)
    save_png(truth, out_dir / "ground_truth.png")
    save_png(lr[0] if masks is None else lr[0] * masks[0][..., None], out_dir / "input.png")
    for s in range(seeds):
        save_png(result.images[0, s], out_dir / f"seed{s}.png")
    write_sheet(out_dir / "sheet.png", lr[0], result, 0, truth=truth, degradation=str(d))
    diff_from_truth = [float(np.sqrt(np.mean((result.images[0, s] - truth) ** 2))) for s in range(seeds)]
    report = {
        "format": DEMO_FORMAT,
        "model": model_dir or f"random {architecture} {demo_model_name(architecture)[1]} generator (seed {seed})",
        "architecture": model.generator.architecture,
        "resolution": model.generator.resolution, "input_size": lr_size, "degradation": str(d),
        "eps": config.effective_eps, "eps_reason": config.eps_reason, "config": config.to_dict(),
        "seeds": seed_entries(result, 0), "rms_difference_from_truth": diff_from_truth,
        "seconds": result.seconds, "compile_seconds": result.compile_seconds,
    }
    write_json(out_dir / REPORT_NAME, report)
    return report
