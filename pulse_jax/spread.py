"""What an input leaves undetermined: the spread of the images its seeds found (PULSE returns one sample of
many that downscale to the input; several seeds show how much of the result the input fixes).

Over the seeds within eps (all seeds when fewer than two are): the per-pixel standard deviation across
seeds (over the colour channels' mean), drawn as a heat map beside the seeds' mean image, and its mean and
maximum as figures in the report (docs/pulse.md "Success and what is returned"); with a perceptual model,
the seeds' mean pairwise LPIPS too.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pulse_jax.images import save_png

# Heat map ramp (black -> red -> yellow -> white) at evenly spaced stops.
RAMP = np.array([[0, 0, 0], [0.6, 0, 0], [1, 0.45, 0], [1, 0.9, 0.2], [1, 1, 1]], np.float32)


def chosen_seeds(result, n: int) -> tuple[list[int], str]:
    """The seeds the spread is taken over, and which rule chose them."""
    within = [int(s) for s in np.flatnonzero(result.success[n] & ~result.diverged[n])]
    if len(within) >= 2:
        return within, "within eps"
    return [int(s) for s in np.flatnonzero(~result.diverged[n])], "all seeds (fewer than two within eps)"


def pixel_std(images: np.ndarray) -> np.ndarray:
    """(S, R, R, 3) -> (R, R): the standard deviation across seeds, averaged over the channels."""
    return images.astype(np.float64).std(axis=0).mean(axis=-1)


def heat(values: np.ndarray, top: float) -> np.ndarray:
    """(R, R) in [0, top] -> (R, R, 3) colours along RAMP (top: the brightest; 0 -> black)."""
    t = np.clip(values / top, 0.0, 1.0) * (len(RAMP) - 1) if top > 0 else np.zeros_like(values)
    low = np.minimum(t.astype(int), len(RAMP) - 2)
    frac = (t - low)[..., None]
    return (RAMP[low] * (1 - frac) + RAMP[low + 1] * frac).astype(np.float32)


def figures(result, n: int, perceptual=None) -> dict | None:
    """The report's spread figures of image n (None with fewer than two usable seeds); with a perceptual
    model also the mean LPIPS over every pair of those seeds' images (mean_pairwise_lpips)."""
    seeds, rule = chosen_seeds(result, n)
    if len(seeds) < 2:
        return None
    images = result.images[n, seeds]
    std = pixel_std(images)
    out = {"seeds": seeds, "over": rule, "pixel_std_mean": float(std.mean()), "pixel_std_max": float(std.max())}
    if perceptual is not None:
        out["lpips_mean_pairwise"] = mean_pairwise_lpips(perceptual, images)
        out["lpips_size"] = int(shrunk(images).shape[1])
    return out


# LPIPS between seeds is taken at most at this size: NVIDIA's projector also brings larger images down to
# 256 px before VGG16, and 28 pairs (8 seeds) at 1024 px would cost more than a short search on a CPU.
LPIPS_MAX_SIDE = 256


def shrunk(images: np.ndarray) -> np.ndarray:
    """(S, R, R, C) -> the same, box-averaged by the whole factor that brings R to at most LPIPS_MAX_SIDE."""
    r = images.shape[1]
    f = -(-r // LPIPS_MAX_SIDE)
    while r % f:
        f += 1
    if f == 1:
        return images
    s = images.shape
    return images.reshape(s[0], r // f, f, s[2] // f, f, s[3]).mean(axis=(2, 4))


def mean_pairwise_lpips(perceptual, images: np.ndarray) -> float:
    """Mean LPIPS over the S(S-1)/2 pairs of (S, R, R, 3) images (at most LPIPS_MAX_SIDE px)."""
    from pulse_jax.perceptual import distances_in_groups

    x = shrunk(np.asarray(images, np.float32))
    i, j = np.triu_indices(len(x), k=1)
    return float(np.mean(distances_in_groups(perceptual, x[i], x[j])))


def write_spread(path: Path, result, n: int) -> Path:
    """mean image | heat map of the per-pixel std (scaled to its maximum), side by side; with one usable
    seed (the others diverged) its image beside a black map, so that the planned file is always there."""
    seeds, _ = chosen_seeds(result, n)
    images = result.images[n, seeds]
    std = pixel_std(images)
    return save_png(np.concatenate([images.mean(axis=0), heat(std, float(std.max()))], axis=1), path)
