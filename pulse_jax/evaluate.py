"""``pulse-jax evaluate RUN --truth DIR``: how close each input's best image came to its ground truth, and
how well it still explains the input.

Per input with a ``<stem>.png`` (or any image named ``<stem>.*``) in the truth folder: PSNR and SSIM of the
best image against the truth, both in [0, 1] intensities (PSNR = 10 log10(1 / MSE); SSIM as Wang et al.
2004 with an 11-tap Gaussian window of sigma 1.5, K1 = 0.01, K2 = 0.03, population covariances, over
each channel with the borders the window does not fit cropped, then averaged: scikit-image's
``structural_similarity(gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1)``,
checked against it in the tests); with a perceptual model (``--perceptual``), LPIPS (docs/perceptual.md)
at the images' own size; and the consistency: the MSE of the best image degraded as the run
degraded (its degradation spec) against the input file. Written as ``evaluation.csv`` and
``evaluation.json`` in the run folder, with a summary (means) on the terminal. The measures run as one
compiled program per image size, over the inputs in groups.
"""

from __future__ import annotations

import csv
import functools
import io
import json
import math
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from pulse_jax.degrade import Degradation
from pulse_jax.errors import PulseJaxError
from pulse_jax.images import IMAGE_SUFFIXES, read_image
from pulse_jax.perceptual import distances_in_groups
from pulse_jax.safe_files import atomic_write_bytes

SSIM_SIGMA = 1.5
SSIM_RADIUS = 5  # int(3.5 * sigma + 0.5): scikit-image's truncation of its Gaussian window
K1, K2 = 0.01, 0.03
GROUP = 16  # images measured per compiled call
NAMES = ("evaluation.csv", "evaluation.json")


def _window() -> np.ndarray:
    x = np.arange(-SSIM_RADIUS, SSIM_RADIUS + 1, dtype=np.float64)
    w = np.exp(-0.5 * (x / SSIM_SIGMA) ** 2)
    return (w / w.sum()).astype(np.float32)


def _blur(x: jax.Array) -> jax.Array:
    """(H, W, C) -> the same, Gaussian-filtered with mirrored borders (d c b | a b c d ...: scipy's
    'reflect', numpy's 'symmetric'), separably."""
    w = jnp.asarray(_window())
    r = SSIM_RADIUS
    x = jnp.pad(x, ((r, r), (r, r), (0, 0)), mode="symmetric")
    h, wd = x.shape[0] - 2 * r, x.shape[1] - 2 * r
    x = sum(w[i] * x[i:i + h] for i in range(2 * r + 1))
    return sum(w[i] * x[:, i:i + wd] for i in range(2 * r + 1))


def ssim(a: jax.Array, b: jax.Array) -> jax.Array:
    """SSIM of two (H, W, C) images in [0, 1] (see the module docstring)."""
    c1, c2 = K1**2, K2**2
    mu_a, mu_b = _blur(a), _blur(b)
    var_a = _blur(a * a) - mu_a * mu_a
    var_b = _blur(b * b) - mu_b * mu_b
    cov = _blur(a * b) - mu_a * mu_b
    s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    r = SSIM_RADIUS
    return jnp.mean(s[r:-r, r:-r])


def psnr(a: jax.Array, b: jax.Array) -> jax.Array:
    return 10.0 * jnp.log10(1.0 / jnp.mean(jnp.square(a - b)))


@jax.jit
def _measures(found: jax.Array, truth: jax.Array) -> tuple[jax.Array, jax.Array]:
    return jax.vmap(psnr)(found, truth), jax.vmap(ssim)(found, truth)


def measure(found: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(N, H, W, C) pairs -> (PSNR, SSIM) per pair, in groups of GROUP (one compile per size)."""
    outs = []
    for i in range(0, len(found), GROUP):
        a, b = found[i:i + GROUP], truth[i:i + GROUP]
        pad = GROUP - len(a)  # whole groups only: one program per image size
        if pad:
            a = np.concatenate([a, np.zeros((pad, *a.shape[1:]), a.dtype)])
            b = np.concatenate([b, np.ones((pad, *b.shape[1:]), b.dtype)])
        p, s = _measures(jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32))
        outs.append((np.asarray(p)[:GROUP - pad], np.asarray(s)[:GROUP - pad]))
    return (np.concatenate([o[0] for o in outs]), np.concatenate([o[1] for o in outs])) if outs else (
        np.zeros(0), np.zeros(0))


def consistency(found: np.ndarray, observed: np.ndarray, spec: str) -> float | None:
    """MSE of ``found`` degraded by ``spec`` against the input ``observed``; None where it cannot be said
    from the files (a mask's pixels, or a spec that no longer parses, e.g. a kernel file since moved)."""
    d = _parsed(spec)
    if d is None:
        return None
    if d.mask or found.shape[0] % observed.shape[0]:
        return None
    lr = d.apply(jnp.asarray(found)[None], found.shape[0] // observed.shape[0])[0]
    return float(jnp.mean(jnp.square(lr - d.observe(jnp.asarray(observed)[None])[0])))


@functools.lru_cache(maxsize=8)
def _parsed(spec: str) -> Degradation | None:
    """A run's degradation, parsed (and a kernel file read) once, not once per input."""
    try:
        return Degradation.parse(spec)
    except PulseJaxError:
        return None


def _truth_for(truth_dir: Path, stem: str) -> Path | None:
    for ext in IMAGE_SUFFIXES:
        path = truth_dir / f"{stem}{ext}"
        if path.is_file():
            return path
    return None


def evaluate(run_dir: Path, truth_dir: Path, perceptual=None) -> dict:
    """The figures of every finished input of the run that has a truth; writes evaluation.csv/.json.
    ``perceptual`` (pulse_jax.load_perceptual): LPIPS of each best image against its truth too."""
    report_path = run_dir / "report.json"
    try:
        report = json.loads(report_path.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise PulseJaxError(f"{report_path}: cannot read the run's report ({e}); run pulse-jax report {run_dir} "
                            "first") from None
    if not truth_dir.is_dir():
        raise PulseJaxError(f"--truth {truth_dir} is not a folder")
    _check_ours(run_dir)
    rows, group, missing = [], [], []

    def flush():  # a group at a time: memory bounded however many inputs the run has
        if group:
            p, s = measure(np.stack([g[1] for g in group]), np.stack([g[2] for g in group]))
            lp = [None] * len(group)
            if perceptual is not None:
                lp = distances_in_groups(perceptual, np.stack([g[1] for g in group]), np.stack([g[2] for g in group]))
            for (row, _, _), pv, sv, lv in zip(group, p, s, lp, strict=True):
                row["psnr"], row["ssim"], row["lpips"] = float(pv), float(sv), None if lv is None else float(lv)
            group.clear()

    for entry in report.get("inputs", []) if isinstance(report, dict) else []:
        outputs = entry.get("outputs") if isinstance(entry, dict) else None
        if not isinstance(outputs, dict) or entry.get("pending") or not isinstance(outputs.get("image"), str):
            continue
        truth = _truth_for(truth_dir, str(entry.get("input")))
        if truth is None:
            missing.append(str(entry.get("input")))
            continue
        image = read_image(outputs["image"])
        reference = read_image(truth)
        if reference.shape != image.shape:
            raise PulseJaxError(f"{truth} is {reference.shape[1]}x{reference.shape[0]}; the result it is compared "
                                f"with is {image.shape[1]}x{image.shape[0]}")
        source = entry.get("file")
        observed = read_image(source) if isinstance(source, str) and Path(source).is_file() else None
        rows.append({"input": entry["input"], "truth": str(truth), "success": bool(entry.get("success")),
                     "consistency_mse": None if observed is None else consistency(image, observed,
                                                                                  str(entry.get("degradation")))})
        if group and group[0][1].shape != image.shape:  # a group holds one size
            flush()
        group.append((rows[-1], image, reference))
        if len(group) == GROUP:
            flush()
    flush()
    summary = {"inputs": len(rows), "without_truth": missing,
               "mean_psnr": _mean([r["psnr"] for r in rows]), "mean_ssim": _mean([r["ssim"] for r in rows]),
               "mean_lpips": _mean([r["lpips"] for r in rows]),
               "perceptual": None if perceptual is None else perceptual.checksum,
               "mean_consistency_mse": _mean([r["consistency_mse"] for r in rows])}
    result = {"format": FORMAT_NAME, "run": str(run_dir), "truth": str(truth_dir), "summary": summary,
              "inputs": rows}
    _write(run_dir, result)
    return result


FORMAT_NAME = "pulse-jax-evaluation"
CSV_HEADER = ["input", "psnr", "ssim", "lpips", "consistency_mse", "success", "truth"]
# Headers this program wrote before (evaluation.csv without the lpips column): still recognised as ours.
EARLIER_CSV_HEADERS = (["input", "psnr", "ssim", "consistency_mse", "success", "truth"],)


def _check_ours(run_dir: Path) -> None:
    """evaluation.csv / .json are rewritten on every evaluation, never a file of the user's by that name."""
    csv_path, json_path = (run_dir / n for n in NAMES)
    try:
        headers = [",".join(h) for h in (CSV_HEADER, *EARLIER_CSV_HEADERS)]
        ours = [not csv_path.exists() or (csv_path.read_text().splitlines() or [""])[0] in headers,
                not json_path.exists() or json.loads(json_path.read_text()).get("format") == FORMAT_NAME]
    except (OSError, ValueError, AttributeError, UnicodeDecodeError):
        ours = [False]
    if not all(ours):
        raise PulseJaxError(f"{run_dir} holds an evaluation.csv or evaluation.json that pulse-jax did not write; "
                            "move it, it is not replaced")


def _mean(values) -> float | None:
    values = [v for v in values if v is not None and math.isfinite(v)]
    return float(np.mean(values)) if values else None


def _write(run_dir: Path, result: dict) -> None:
    from pulse_jax.reports import strict_json

    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=CSV_HEADER, lineterminator="\n")
    writer.writeheader()
    for row in result["inputs"]:
        writer.writerow({k: row.get(k) for k in CSV_HEADER})
    atomic_write_bytes(run_dir / NAMES[0], lambda f: f.write(text.getvalue().encode()))
    payload = json.dumps(strict_json(result), indent=1, allow_nan=False) + "\n"
    atomic_write_bytes(run_dir / NAMES[1], lambda f: f.write(payload.encode()))
