"""``pulse-jax demo``: a ground truth, its low-resolution version, and what the search finds.

With no model it builds a small random-weight generator, so it runs anywhere in
about a minute; the results downscale to the input although none equals the truth.
"""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from pulse_jax.config import PulseConfig
from pulse_jax.degrade import bicubic_downsample
from pulse_jax.generators import PRESETS
from pulse_jax.generators.layers import leaky_relu
from pulse_jax.images import save_png
from pulse_jax.inputs import check_fit_size
from pulse_jax.latent_search import search
from pulse_jax.model import Model, compute_gaussian_fit, load_model
from pulse_jax.progress import Progress, seed_step_progress
from pulse_jax.reports import REPORT_NAME, seed_entries, write_json, write_sheet
from pulse_jax.safe_files import check_writable_folder

DEMO_PRESET = "tiny_128"


def random_demo_model(seed: int = 0) -> Model:
    model = Model.random(PRESETS[DEMO_PRESET], seed)
    return model.with_gaussian_fit(compute_gaussian_fit(model, num_samples=50_000, batch_size=10_000, seed=seed))


def ground_truth(model: Model, key) -> np.ndarray:
    """An image the generator can make: a random point of the latent space PULSE searches."""
    k1, k2 = jax.random.split(key)
    mean, std = model.gaussian_fit
    w = leaky_relu(jax.random.normal(k1, (1, model.num_ws, model.generator.dlatent_size)) * std[None, None]
                   + mean[None, None])
    shapes = model.noise_shapes()
    noise = [jax.random.normal(k, (1, *s)) for k, s in zip(jax.random.split(k2, len(shapes)), shapes, strict=True)]
    return np.clip((np.asarray(model.synthesize(w, noise))[0] + 1.0) / 2.0, 0.0, 1.0)


def run_demo(out_dir: Path, model_dir: str | None = None, *, seeds: int = 4, lr_size: int = 8,
             steps: int = 200, seed: int = 0, show_progress: bool = True) -> dict:
    check_writable_folder(out_dir)
    model = load_model(model_dir) if model_dir else random_demo_model(seed)
    check_fit_size(lr_size, model.generator.resolution, "--size")
    truth = ground_truth(model, jax.random.key(seed + 1000))
    lr = np.asarray(bicubic_downsample(jnp.asarray(truth)[None], model.generator.resolution // lr_size))
    config = PulseConfig(steps=steps)
    bar = Progress(steps * seeds, "demo search", "seed-steps", enabled=show_progress)
    result = search(model, lr, config, seeds=seeds, key=jax.random.key(seed), on_chunk=seed_step_progress(bar))
    save_png(truth, out_dir / "ground_truth.png")
    save_png(lr[0], out_dir / "input.png")
    for s in range(seeds):
        save_png(result.images[0, s], out_dir / f"seed{s}.png")
    write_sheet(out_dir / "sheet.png", lr[0], result, 0, truth=truth)
    diff_from_truth = [float(np.sqrt(np.mean((result.images[0, s] - truth) ** 2))) for s in range(seeds)]
    report = {
        "model": model_dir or f"random {DEMO_PRESET} generator (seed {seed})",
        "resolution": model.generator.resolution, "input_size": lr_size, "config": config.to_dict(),
        "seeds": seed_entries(result, 0), "rms_difference_from_truth": diff_from_truth,
        "seconds": result.seconds, "compile_seconds": result.compile_seconds,
    }
    write_json(out_dir / REPORT_NAME, report)
    return report
