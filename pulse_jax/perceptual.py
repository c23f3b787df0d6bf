"""LPIPS (Zhang et al. 2018, version 0.1, VGG16 trunk): a learned perceptual distance, for ONE pair of
images and vmapped over a batch; its model directory; the loss term's view of it (docs/perceptual.md).

The distance of images a, b (H, W, 3) in [0, 1]: both to [-1, 1], then shifted and scaled per channel
(the trunk's input convention); VGG16's convolutions to the last ReLU of each of its five stages; at each
of those five taps the features unit-normalised over channels, squared differences weighted per channel
by that tap's linear head, averaged over the tap's pixels; the five summed.

A pair smaller than 64 px on a side is first resized, both images alike, bilinearly by a whole factor to
at least 64 px: the heads were fitted on 64x64 patches, and below 32 px VGG's four poolings leave the
last tap less than one pixel wide.
"""

from __future__ import annotations

import dataclasses
import math
import os
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from pulse_jax.errors import CheckpointError
from pulse_jax.model import FORMAT_NAME, MODEL_JSON, load_tree, params_checksum, read_model_json, save_tree

ARCHITECTURE = "lpips-vgg16"
KIND = "perceptual"
VERSION = "0.1"

# VGG16's convolutions (3x3, stride 1, padding 1, each followed by a ReLU), stage by stage: output channels.
# A 2x2 max pool (stride 2) comes before every stage but the first; LPIPS reads the last ReLU of each stage.
VGG16_STAGES = ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512))
# LPIPS v0.1's input scaling (per RGB channel): x -> (x - shift) / scale, for x in [-1, 1].
INPUT_SHIFT = (-0.030, -0.088, -0.188)
INPUT_SCALE = (0.458, 0.448, 0.450)
# The side below which a pair is enlarged before the distance (the heads' 64x64 training patches).
MIN_SIDE = 64


def conv_channels() -> list[tuple[int, int]]:
    """(in, out) channels of every convolution of the trunk, in order (13 for VGG16)."""
    out, cin = [], 3
    for stage in VGG16_STAGES:
        for cout in stage:
            out.append((cin, cout))
            cin = cout
    return out


def tap_channels() -> list[int]:
    """Channels at each of the five taps: the width of each linear head."""
    return [stage[-1] for stage in VGG16_STAGES]


def abstract_params() -> dict:
    """The params tree's shapes: {"trunk": {"conv00": {"kernel" (3, 3, in, out), "bias" (out,)}, ...},
    "heads": {"tap0": (C0,), ...}} (kernels HWIO)."""
    f32 = jnp.float32
    trunk = {f"conv{i:02d}": {"kernel": jax.ShapeDtypeStruct((3, 3, cin, cout), f32),
                              "bias": jax.ShapeDtypeStruct((cout,), f32)}
             for i, (cin, cout) in enumerate(conv_channels())}
    heads = {f"tap{k}": jax.ShapeDtypeStruct((c,), f32) for k, c in enumerate(tap_channels())}
    return {"trunk": trunk, "heads": heads}


def random_params(seed: int = 0) -> dict:
    """A trunk with He-normal random weights and random non-negative heads (as trained heads are): for
    tests and benchmarks; says nothing about perception."""
    rng = np.random.default_rng(seed)
    trunk = {}
    for i, (cin, cout) in enumerate(conv_channels()):
        std = math.sqrt(2.0 / (9 * cin))
        trunk[f"conv{i:02d}"] = {"kernel": (rng.standard_normal((3, 3, cin, cout)) * std).astype(np.float32),
                                 "bias": (rng.standard_normal(cout) * 0.01).astype(np.float32)}
    heads = {f"tap{k}": (np.abs(rng.standard_normal(c)) / c).astype(np.float32) for k, c in enumerate(tap_channels())}
    return {"trunk": trunk, "heads": heads}


def _conv3x3(x, layer):
    y = jax.lax.conv_general_dilated(x, layer["kernel"], (1, 1), ((1, 1), (1, 1)),
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                     precision=jax.lax.Precision.HIGHEST)
    return jax.nn.relu(y + layer["bias"][None, None, None, :])


def _max_pool(x):
    # 2x2, stride 2, the odd last row/column dropped (as a floor-mode pool does).
    return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "VALID")


def trunk_taps(trunk: dict, x: jax.Array) -> list[jax.Array]:
    """(B, H, W, 3) scaled input -> the five taps (B, h_k, w_k, C_k)."""
    taps, i = [], 0
    for s, stage in enumerate(VGG16_STAGES):
        if s:
            x = _max_pool(x)
        for _ in stage:
            x = _conv3x3(x, trunk[f"conv{i:02d}"])
            i += 1
        taps.append(x)
    return taps


def _unit(f: jax.Array) -> jax.Array:
    """f / (|f| + 1e-10) over channels, as LPIPS normalises; where a pixel's features are all zero (a dead
    ReLU) the value is the same 0 and the gradient 0 instead of the NaN sqrt(0)'s derivative gives."""
    sq = jnp.sum(jnp.square(f), axis=-1, keepdims=True)
    positive = sq > 0
    norm = jnp.where(positive, jnp.sqrt(jnp.where(positive, sq, 1.0)), 0.0)
    return f / (norm + 1e-10)


def enlarged_size(h: int, w: int) -> tuple[int, int]:
    """The size the distance compares an (h, w) pair at: enlarged by the smallest whole factor that makes
    the short side at least MIN_SIDE (unchanged when it already is)."""
    k = max(1, -(-MIN_SIDE // min(h, w)))
    return h * k, w * k


def enlarged(x: jax.Array) -> jax.Array:
    """(H, W, 3) -> the same image at enlarged_size, bilinearly with half-pixel centres."""
    size = enlarged_size(*x.shape[:2])
    if size == x.shape[:2]:
        return x
    return jax.image.resize(x, (*size, x.shape[2]), "linear", antialias=False)


def distance_one(params: dict, a: jax.Array, b: jax.Array) -> jax.Array:
    """LPIPS of one pair of (H, W, 3) images in [0, 1]: a scalar (0 for identical images)."""
    a, b = enlarged(a), enlarged(b)
    shift = jnp.asarray(INPUT_SHIFT, jnp.float32)[None, None, None, :]
    scale = jnp.asarray(INPUT_SCALE, jnp.float32)[None, None, None, :]
    x = (jnp.stack([a, b]) * 2.0 - 1.0 - shift) / scale
    total = jnp.zeros((), jnp.float32)
    for k, tap in enumerate(trunk_taps(params["trunk"], x)):
        n = _unit(tap)
        diff = jnp.square(n[0] - n[1])
        total = total + jnp.mean(jnp.tensordot(diff, params["heads"][f"tap{k}"], axes=([2], [0])))
    return total


def distance(params: dict, a: jax.Array, b: jax.Array) -> jax.Array:
    """(n, H, W, 3), (n, H, W, 3) in [0, 1] -> (n,) LPIPS, pair by pair."""
    return jax.vmap(distance_one, in_axes=(None, 0, 0))(params, a, b)


_distance = jax.jit(distance)

# Pairs times (enlarged) pixels in one call of distances_in_groups: VGG16's first layers hold 128 values per
# pixel of each image, so pairs per call fall with the size (16 at 256 px, one at 1024 px).
PIXELS_PER_CALL = 1 << 20
MOST_PAIRS_PER_CALL = 16


def distances_in_groups(model: Perceptual, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(N, H, W, C) host arrays of pairs -> (N,) LPIPS, a few pairs per call, every call the same shape
    (the last group padded), so one compile serves a whole folder; one-channel images compared as grey
    RGB."""
    h, w = enlarged_size(*a.shape[1:3])
    per_call = max(1, min(MOST_PAIRS_PER_CALL, PIXELS_PER_CALL // (h * w)))
    if a.shape[-1] == 1:
        a, b = (np.broadcast_to(x, (*x.shape[:3], 3)) for x in (a, b))
    out = []
    for i in range(0, len(a), per_call):
        x, y = a[i:i + per_call], b[i:i + per_call]
        pad = per_call - len(x)
        if pad:
            x, y = (np.concatenate([v, np.zeros((pad, *v.shape[1:]), v.dtype)]) for v in (x, y))
        out.append(np.asarray(model(x, y))[:per_call - pad])
    return np.concatenate(out) if out else np.zeros(0, np.float32)


@dataclasses.dataclass(frozen=True, eq=False)
class Perceptual:
    """A loaded perceptual model: ``model(a, b)`` -> (n,) LPIPS of NHWC images in [0, 1] (jitted; the params
    are an argument, so ``jax.grad`` and ``jax.jit`` of a function calling it work as with any array)."""

    params: dict
    checksum: str
    source: dict | None = None

    def __call__(self, a, b) -> jax.Array:
        return _distance(self.params, jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32))

    @classmethod
    def from_arrays(cls, params: dict, source: dict | None = None) -> Perceptual:
        check_params(params)
        tree = jax.tree_util.tree_map(lambda x: np.asarray(x, np.float32), params)
        return cls(jax.tree_util.tree_map(jnp.asarray, tree), params_checksum(tree), source)

    @classmethod
    def random(cls, seed: int = 0) -> Perceptual:
        return cls.from_arrays(random_params(seed), {"random": seed})


def check_params(params: dict) -> None:
    """Every array the distance needs, at its shape, and nothing else: each mismatch named."""
    want = {jax.tree_util.keystr(p): s.shape for p, s in jax.tree_util.tree_flatten_with_path(abstract_params())[0]}
    got = {jax.tree_util.keystr(p): np.shape(x) for p, x in jax.tree_util.tree_flatten_with_path(params)[0]}
    problems = [f"{k} missing" for k in want if k not in got]
    problems += [f"{k} unexpected" for k in got if k not in want]
    problems += [f"{k} is {got[k]}, expected {want[k]}" for k in want if k in got and got[k] != want[k]]
    if problems:
        raise CheckpointError("LPIPS parameters do not fit VGG16: " + "; ".join(problems[:8])
                              + (f" and {len(problems) - 8} more" if len(problems) > 8 else ""))


def save_perceptual(model: Perceptual, directory: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """A perceptual-model directory: model.json (kind "perceptual") and the params, written as a generator's
    is (atomically, with a manifest and checksum)."""
    meta = {"format": FORMAT_NAME, "format_version": 3, "kind": KIND, "architecture": ARCHITECTURE,
            "config": {"lpips_version": VERSION}}
    return save_tree(model.params, meta, directory, overwrite=overwrite, source=model.source)


def load_perceptual(directory: str | os.PathLike) -> Perceptual:
    """Load and verify a directory written by ``pulse-jax convert --vgg16 ... --lpips-heads ...``."""
    directory = Path(directory).absolute()
    meta = read_model_json(directory)
    if meta.get("kind") != KIND or meta.get("architecture") != ARCHITECTURE:
        raise CheckpointError(f"{directory} is not a perceptual model directory ({MODEL_JSON} says "
                              f"{meta.get('kind', 'generator')} {meta.get('architecture')!r}); make one with: "
                              "pulse-jax convert --vgg16 vgg16-397923af.pth --lpips-heads vgg.pth --out DIR")
    tree = load_tree(directory, meta, abstract_params())
    return Perceptual(jax.tree_util.tree_map(jnp.asarray, tree), meta["checksum"], meta.get("source"))
