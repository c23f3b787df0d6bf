"""PULSE's PyTorch state dicts (as numpy arrays) -> our parameter trees.

Small pure functions: infer the config from names and shapes, list the
expected keys, name every mismatch, rename one key, transpose one array.
No torch here: ``convert/`` reads the files and hands us numpy arrays.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping

import numpy as np

from pulse_jax.errors import CheckpointError
from pulse_jax.generators.stylegan1 import MAPPING_LAYERS, StyleGANConfig, block_name
from pulse_jax.tree_check import check_shapes as _check_shapes

BLUR_KERNEL = (np.outer([1.0, 2.0, 1.0], [1.0, 2.0, 1.0]) / 16.0).astype(np.float32)[None, None]
_BLOCK_KEY = re.compile(r"^blocks\.(\d+)x\1\.")


def expected_synthesis_shapes(config: StyleGANConfig) -> dict[str, tuple[int, ...]]:
    """Every key of a PULSE ``synthesis.pt`` for this config, with its torch shape."""
    d = config.dlatent_size
    shapes = {"torgb.weight": (3, config.block_channels(config.resolution), 1, 1), "torgb.bias": (3,)}
    for res in config.block_resolutions():
        c = config.block_channels(res)
        p = f"blocks.{block_name(res)}."
        if res == 4:
            shapes[p + "const"] = (1, c, 4, 4)
            shapes[p + "bias"] = (c,)
        else:
            c_in = config.block_channels(res // 2)
            shapes[p + "conv0_up.weight"] = (c, c_in, 3, 3)
            shapes[p + "conv0_up.bias"] = (c,)
            shapes[p + "conv0_up.intermediate.kernel"] = (1, 1, 3, 3)
        conv = "conv" if res == 4 else "conv1"
        shapes[p + conv + ".weight"] = (c, c, 3, 3)
        shapes[p + conv + ".bias"] = (c,)
        for epi in ("epi1", "epi2"):
            shapes[p + epi + ".noise.weight"] = (c,)
            shapes[p + epi + ".style_mod.lin.weight"] = (2 * c, d)
            shapes[p + epi + ".style_mod.lin.bias"] = (2 * c,)
    return shapes


def expected_mapping_shapes(dlatent_size: int = 512) -> dict[str, tuple[int, ...]]:
    shapes = {}
    for i in range(MAPPING_LAYERS):
        shapes[f"dense{i}.weight"] = (dlatent_size, dlatent_size)
        shapes[f"dense{i}.bias"] = (dlatent_size,)
    return shapes


def check_shapes(got: Mapping[str, tuple], expected: Mapping[str, tuple], what: str) -> None:
    """Raise naming every missing, unexpected and mis-shaped key."""
    _check_shapes(got, expected, what, kind="a PULSE StyleGAN v1 checkpoint")


def infer_synthesis_config(shapes: Mapping[str, tuple], what: str = "synthesis checkpoint") -> StyleGANConfig:
    """Read resolution, channels and dlatent size off the key names and shapes."""
    resolutions = sorted({int(m.group(1)) for k in shapes if (m := _BLOCK_KEY.match(k))})
    if not resolutions or resolutions[0] != 4:
        raise CheckpointError(
            f"{what} has no 'blocks.4x4.*' keys: it is not a PULSE StyleGAN v1 synthesis state dict "
            f"(first keys: {', '.join(list(shapes)[:5]) or 'none'})"
        )
    top = resolutions[-1]
    channels = {}
    for res in resolutions:
        key = f"blocks.{block_name(res)}.epi1.noise.weight"
        if key not in shapes or len(shapes[key]) != 1:
            raise CheckpointError(f"{what}: missing or malformed key {key}")
        channels[res] = int(shapes[key][0])
    style_key = "blocks.4x4.epi1.style_mod.lin.weight"
    if style_key not in shapes or len(shapes[style_key]) != 2:
        raise CheckpointError(f"{what}: missing or malformed key {style_key}")
    fmap_max = channels[4]
    last_stage = int(math.log2(top)) - 1
    # With fmap_decay 1 the last block has fmap_base / 2**stage channels unless capped.
    fmap_base = channels[top] * 2**last_stage
    try:
        config = StyleGANConfig(resolution=top, fmap_base=fmap_base, fmap_max=fmap_max,
                                dlatent_size=int(shapes[style_key][1]))
    except ValueError as e:
        raise CheckpointError(f"{what}: {e}") from None
    check_shapes(shapes, expected_synthesis_shapes(config), what)
    return config


def _nested_set(tree: dict, path: tuple[str, ...], value) -> None:
    for part in path[:-1]:
        tree = tree.setdefault(part, {})
    tree[path[-1]] = value


def synthesis_path(key: str) -> tuple[str, ...] | None:
    """Torch key -> our parameter path (None for the fixed blur kernel, which is checked, not stored)."""
    parts = key.split(".")
    if parts[-1] == "kernel" and parts[-2] == "intermediate":
        return None
    if parts[0] == "torgb":
        return ("torgb", "kernel" if parts[1] == "weight" else "bias")
    _, block, *rest = parts
    if rest[0] in ("epi1", "epi2"):
        if rest[1] == "noise":
            return ("blocks", block, rest[0], "noise_weight")
        return ("blocks", block, rest[0], "style", "kernel" if rest[-1] == "weight" else "bias")
    if rest == ["const"] or rest == ["bias"]:
        return ("blocks", block, rest[0])
    return ("blocks", block, rest[0], "kernel" if rest[1] == "weight" else "bias")


def to_ours(key: str, value: np.ndarray) -> np.ndarray:
    """Torch layout -> ours: conv (O, I, kh, kw) -> (kh, kw, I, O); linear (out, in) -> (in, out)."""
    value = np.asarray(value, dtype=np.float32)
    if key.endswith(".const"):
        return np.ascontiguousarray(value[0].transpose(1, 2, 0))
    if value.ndim == 4:
        return np.ascontiguousarray(value.transpose(2, 3, 1, 0))
    if value.ndim == 2:
        return np.ascontiguousarray(value.T)
    return value


def synthesis_params(state: Mapping[str, np.ndarray], what: str = "synthesis checkpoint"):
    """PULSE synthesis state dict -> (config, nested params dict in our layout)."""
    config = infer_synthesis_config({k: tuple(v.shape) for k, v in state.items()}, what)
    return config, synthesis_tree(state, what)


def synthesis_tree(state: Mapping[str, np.ndarray], what: str = "synthesis checkpoint") -> dict:
    """PULSE synthesis state dict (its keys already checked) -> nested params in our layout; the fixed
    blur kernels are checked, not kept."""
    params: dict = {}
    for key, value in state.items():
        path = synthesis_path(key)
        if path is None:
            if not np.allclose(value, BLUR_KERNEL, rtol=0, atol=1e-7):
                raise CheckpointError(
                    f"{what}: {key} is not the fixed [1,2,1]x[1,2,1]/16 blur kernel PULSE's "
                    "StyleGAN uses; this generator is a different architecture"
                )
            continue
        _nested_set(params, path, to_ours(key, value))
    return params


def mapping_params(state: Mapping[str, np.ndarray], dlatent_size: int, what: str = "mapping checkpoint"):
    check_shapes({k: tuple(v.shape) for k, v in state.items()}, expected_mapping_shapes(dlatent_size), what)
    params: dict = {}
    for key, value in state.items():
        layer, name = key.split(".")
        _nested_set(params, (layer, "kernel" if name == "weight" else "bias"), to_ours(key, value))
    return params


def gaussian_fit_arrays(state: Mapping[str, np.ndarray], dlatent_size: int, what: str = "gaussian fit"):
    expected = {"mean": (dlatent_size,), "std": (dlatent_size,)}
    check_shapes({k: tuple(v.shape) for k, v in state.items()}, expected, what)
    std = np.asarray(state["std"], np.float32)
    if not np.all(np.isfinite(std)) or np.any(std <= 0) or not np.all(np.isfinite(state["mean"])):
        raise CheckpointError(f"{what}: 'std' must be positive and both arrays finite")
    return np.asarray(state["mean"], np.float32), std
