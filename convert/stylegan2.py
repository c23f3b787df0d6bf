"""StyleGAN2 weights under NVIDIA's names -> our params trees; rosinality's names -> NVIDIA's.

Small pure functions over ``{name: array}`` dicts (docs/stylegan.md, docs/formats.md).
Every tensor of the generator is used or checked (the fixed filters are checked, not kept; the stored
noise maps are kept apart from the params); every missing, unexpected or mis-shaped one is named.
"""

from __future__ import annotations

import math
import re

import numpy as np

from pulse_jax.errors import CheckpointError
from pulse_jax.generators.stylegan2 import UP_FILTER, StyleGAN2Config

FILTER = UP_FILTER / 4.0  # NVIDIA's stored resample_filter: outer([1, 3, 3, 1]) / 64


def _leading_dim(sd: dict[str, np.ndarray], key: str, what: str) -> int:
    shape = np.shape(sd[key])
    if len(shape) < 2:
        raise CheckpointError(f"{what}: {key} has shape {list(shape)}, where a weight matrix or kernel belongs")
    return int(shape[0])


def config_from_state(sd: dict[str, np.ndarray], what: str, *, conv_clamp=None, channel_base=None,
                      lr_multiplier: float = 0.01) -> StyleGAN2Config:
    """The architecture the shapes say (resolution, channels, mapping depth); settings no shape shows
    (conv_clamp, the mapping's lr multiplier) come from the file's own records."""
    blocks = sorted({int(m[1]) for k in sd if (m := re.match(r"synthesis\.b(\d+)\.", k))})
    if not blocks or blocks[0] != 4:
        raise CheckpointError(f"{what}: no synthesis.b4 block: not a StyleGAN2 generator")
    resolution = blocks[-1]
    if blocks != [2**k for k in range(2, int(math.log2(resolution)) + 1)]:
        raise CheckpointError(f"{what}: synthesis blocks {blocks} are not 4, 8, ..., {resolution}")
    layers = 0
    while f"mapping.fc{layers}.weight" in sd:
        layers += 1
    if layers == 0:
        raise CheckpointError(f"{what}: no mapping.fc0.weight: the mapping network is missing")
    w_dim = _leading_dim(sd, "mapping.fc0.weight", what)
    chans = {r: _leading_dim(sd, f"synthesis.b{r}.conv1.weight", what) for r in blocks
             if f"synthesis.b{r}.conv1.weight" in sd}
    if len(chans) != len(blocks):
        raise CheckpointError(f"{what}: missing conv1 weights in blocks {[r for r in blocks if r not in chans]}")
    channel_max = max(chans.values())
    if channel_base is None:
        channel_base = chans[resolution] * resolution if chans[resolution] < channel_max else channel_max * resolution
    try:
        config = StyleGAN2Config(resolution=resolution, channel_base=int(channel_base), channel_max=channel_max,
                                 dlatent_size=w_dim, mapping_layers=layers,
                                 mapping_lr_multiplier=float(lr_multiplier),
                                 conv_clamp=None if conv_clamp is None else float(conv_clamp))
    except (ValueError, TypeError) as e:
        raise CheckpointError(f"{what}: unsupported architecture ({e})") from None
    wrong = {r: c for r, c in chans.items() if config.channels(r) != c}
    if wrong:
        raise CheckpointError(f"{what}: block channels {wrong} do not follow min(channel_base // r, channel_max) "
                              f"with channel_base {channel_base}, channel_max {channel_max}: an architecture "
                              "pulse-jax does not build")
    return config


def expected_shapes(config: StyleGAN2Config) -> dict[str, tuple[int, ...]]:
    """Every tensor of NVIDIA's generator of this config, under its name, in its stored shape."""
    d = config.dlatent_size
    shapes = {"mapping.w_avg": (d,)}
    for i in range(config.mapping_layers):
        shapes[f"mapping.fc{i}.weight"] = (d, d)
        shapes[f"mapping.fc{i}.bias"] = (d,)
    for r in config.block_resolutions():
        p, c = f"synthesis.b{r}", config.channels(r)
        shapes[f"{p}.resample_filter"] = (4, 4)
        layers = [("conv1", c)] if r == 4 else [("conv0", config.channels(r // 2)), ("conv1", c)]
        if r == 4:
            shapes[f"{p}.const"] = (c, 4, 4)
        for name, c_in in layers:
            shapes.update({f"{p}.{name}.weight": (c, c_in, 3, 3), f"{p}.{name}.bias": (c,),
                           f"{p}.{name}.noise_strength": (), f"{p}.{name}.noise_const": (r, r),
                           f"{p}.{name}.resample_filter": (4, 4), f"{p}.{name}.affine.weight": (c_in, d),
                           f"{p}.{name}.affine.bias": (c_in,)})
        shapes.update({f"{p}.torgb.weight": (3, c, 1, 1), f"{p}.torgb.bias": (3,),
                       f"{p}.torgb.affine.weight": (c, d), f"{p}.torgb.affine.bias": (c,)})
    return shapes


def check_state(sd: dict[str, np.ndarray], config: StyleGAN2Config, what: str) -> None:
    expected = expected_shapes(config)
    problems = [f"missing {k} {list(s)}" for k, s in expected.items() if k not in sd]
    problems += [f"unexpected {k}" for k in sd if k not in expected]
    problems += [f"{k} is {list(np.shape(sd[k]))}, expected {list(s)}" for k, s in expected.items()
                 if k in sd and tuple(np.shape(sd[k])) != s]
    if problems:
        shown = "; ".join(problems[:12]) + (f"; and {len(problems) - 12} more" if len(problems) > 12 else "")
        raise CheckpointError(f"{what}: does not match a StyleGAN2 generator of {config}: {shown}")
    filters = [k for k in sd if k.endswith("resample_filter")]
    bad = [k for k in filters if not np.allclose(sd[k], FILTER, atol=1e-6)]
    if bad:
        raise CheckpointError(f"{what}: {bad[0]} is not the [1, 3, 3, 1] filter StyleGAN2 uses (another "
                              "resample_filter is not supported)")


def noise_layers(resolution: int) -> list[str]:
    """NVIDIA's layer of each noise map, in our (and every file's) order: b4.conv1, then conv0 and conv1
    of each later block."""
    blocks = [2**k for k in range(3, int(math.log2(resolution)) + 1)]
    return ["synthesis.b4.conv1"] + [f"synthesis.b{r}.{conv}" for r in blocks for conv in ("conv0", "conv1")]


def stored_noise(sd: dict[str, np.ndarray], config: StyleGAN2Config) -> list[np.ndarray]:
    """The generator's own noise maps (NVIDIA's noise_const, used with noise_mode='const'), (r, r) each."""
    return [np.asarray(sd[f"{layer}.noise_const"], np.float32) for layer in noise_layers(config.resolution)]


def _dense(sd, p):
    return {"kernel": np.ascontiguousarray(sd[f"{p}.weight"].T), "bias": sd[f"{p}.bias"]}


def _layer(sd, p):
    return {"affine": _dense(sd, f"{p}.affine"),
            "weight": np.ascontiguousarray(sd[f"{p}.weight"].transpose(2, 3, 1, 0)),
            "bias": sd[f"{p}.bias"], "noise_strength": np.asarray(sd[f"{p}.noise_strength"], np.float32).reshape(())}


def to_params(sd: dict[str, np.ndarray], config: StyleGAN2Config, what: str) -> tuple[dict, dict]:
    """NVIDIA-named float32 arrays -> (synthesis, mapping) trees in our layout, after check_state."""
    check_state(sd, config, what)
    blocks = {}
    for r in config.block_resolutions():
        p = f"synthesis.b{r}"
        block = {"conv1": _layer(sd, f"{p}.conv1"), "torgb": {"affine": _dense(sd, f"{p}.torgb.affine"),
                 "weight": np.ascontiguousarray(sd[f"{p}.torgb.weight"].transpose(2, 3, 1, 0)),
                 "bias": sd[f"{p}.torgb.bias"]}}
        if r == 4:
            block["const"] = np.ascontiguousarray(sd[f"{p}.const"].transpose(1, 2, 0))
        else:
            block["conv0"] = _layer(sd, f"{p}.conv0")
        blocks[f"b{r}"] = block
    mapping = {f"fc{i}": _dense(sd, f"mapping.fc{i}") for i in range(config.mapping_layers)}
    mapping["w_avg"] = sd["mapping.w_avg"]
    return {"blocks": blocks}, mapping


def rosinality_to_nvidia(g_ema: dict[str, np.ndarray], latent_avg: np.ndarray, what: str) -> dict[str, np.ndarray]:
    """rosinality's ``g_ema`` (+ ``latent_avg``) renamed to NVIDIA's names and conventions: the conv weights
    times 1/sqrt(I k k) (rosinality applies it at run time), its fixed blur kernels checked and turned into
    NVIDIA's stored filter, noise buffers to noise_const. Keys it does not know stay, to be named."""
    sd, rest = {}, dict(g_ema)

    def take(key):
        if key not in rest:
            raise CheckpointError(f"{what}: missing g_ema key {key}")
        return rest.pop(key)

    i = 1
    while f"style.{i}.weight" in rest:
        sd[f"mapping.fc{i - 1}.weight"] = take(f"style.{i}.weight")
        sd[f"mapping.fc{i - 1}.bias"] = take(f"style.{i}.bias")
        i += 1
    sd["mapping.w_avg"] = np.asarray(latent_avg, np.float32).reshape(-1)
    const = take("input.input")
    sd["synthesis.b4.const"] = const[0]
    n_blocks = 1 + len({int(m[1]) for k in rest if (m := re.match(r"to_rgbs\.(\d+)\.", k))})

    def styled(src, dst, up):
        weight = take(f"{src}.conv.weight")[0]                   # (O, I, k, k)
        fan_in = weight.shape[1] * weight.shape[2] * weight.shape[3]
        sd[f"{dst}.weight"] = weight / np.float32(math.sqrt(fan_in))
        sd[f"{dst}.affine.weight"] = take(f"{src}.conv.modulation.weight")
        sd[f"{dst}.affine.bias"] = take(f"{src}.conv.modulation.bias")
        sd[f"{dst}.noise_strength"] = take(f"{src}.noise.weight").reshape(())
        sd[f"{dst}.bias"] = take(f"{src}.activate.bias")
        sd[f"{dst}.resample_filter"] = FILTER
        if up:
            _check_blur(take(f"{src}.conv.blur.kernel"), f"{src}.conv.blur.kernel", what)

    def to_rgb(src, dst, up):
        sd[f"{dst}.weight"] = take(f"{src}.conv.weight")[0]
        sd[f"{dst}.affine.weight"] = take(f"{src}.conv.modulation.weight")
        sd[f"{dst}.affine.bias"] = take(f"{src}.conv.modulation.bias")
        sd[f"{dst}.bias"] = take(f"{src}.bias").reshape(-1)
        if up:
            _check_blur(take(f"{src}.upsample.kernel"), f"{src}.upsample.kernel", what)

    styled("conv1", "synthesis.b4.conv1", False)
    to_rgb("to_rgb1", "synthesis.b4.torgb", False)
    sd["synthesis.b4.resample_filter"] = FILTER
    for j in range(n_blocks - 1):
        res = 2 ** (j + 3)
        styled(f"convs.{2 * j}", f"synthesis.b{res}.conv0", True)
        styled(f"convs.{2 * j + 1}", f"synthesis.b{res}.conv1", False)
        to_rgb(f"to_rgbs.{j}", f"synthesis.b{res}.torgb", True)
        sd[f"synthesis.b{res}.resample_filter"] = FILTER
    for i, layer in enumerate(noise_layers(2 ** (n_blocks + 1))):
        sd[f"{layer}.noise_const"] = take(f"noises.noise_{i}")[0, 0]
    sd.update({f"g_ema.{k}": v for k, v in rest.items()})  # named as unexpected by check_state
    return sd


def _check_blur(kernel, name, what):
    if not np.allclose(kernel, UP_FILTER, atol=1e-5):
        raise CheckpointError(f"{what}: {name} is not the [1, 3, 3, 1] blur (times 4) StyleGAN2 uses")
