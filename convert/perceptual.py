"""torchvision's VGG16 weights and the lpips package's v0.1 linear heads -> a perceptual-model directory.

Both files are plain state dicts, read with torch.load(weights_only=True) after their declared sizes are
checked (convert.torch_io). torchvision names VGG16's layers by their index in its ``features`` sequence,
where each convolution is followed by a ReLU and a max pool ends every stage but the last one LPIPS reads
(docs/formats.md, "Perceptual models"); the heads are 1x1 convolutions without bias, one per tap.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from convert.torch_io import load_state_dict
from pulse_jax.errors import CheckpointError
from pulse_jax.perceptual import VGG16_STAGES, Perceptual, conv_channels, save_perceptual, tap_channels


def torchvision_conv_indices() -> list[int]:
    """The index in torchvision's ``vgg16().features`` of each convolution: two entries (conv, ReLU) per
    convolution, one (max pool) after each stage."""
    indices, i = [], 0
    for stage in VGG16_STAGES:
        for _ in stage:
            indices.append(i)
            i += 2
        i += 1
    return indices


def _named(problems: list[str], what: str) -> None:
    if problems:
        raise CheckpointError(f"{what}: " + "; ".join(problems[:8])
                              + (f" and {len(problems) - 8} more" if len(problems) > 8 else ""))


def trunk_from_torchvision(state: dict[str, np.ndarray], what: str = "VGG16 weights") -> dict:
    """{"features.<i>.weight" (out, in, 3, 3), "features.<i>.bias"} -> {"conv00": {"kernel" HWIO, "bias"}, ...}.
    The classifier's tensors are not used; any other name, or a missing or misshapen tensor, is named."""
    trunk, used, problems = {}, set(), []
    for n, (index, (cin, cout)) in enumerate(zip(torchvision_conv_indices(), conv_channels(), strict=True)):
        layer = {}
        for part, shape in (("weight", (cout, cin, 3, 3)), ("bias", (cout,))):
            key = f"features.{index}.{part}"
            used.add(key)
            if key not in state:
                problems.append(f"{key} missing")
            elif state[key].shape != shape:
                problems.append(f"{key} is {tuple(state[key].shape)}, expected {shape}")
            else:
                layer[part] = state[key]
        if len(layer) == 2:
            trunk[f"conv{n:02d}"] = {"kernel": np.ascontiguousarray(layer["weight"].transpose(2, 3, 1, 0)),
                                     "bias": layer["bias"]}
    problems += [f"{k} is not a VGG16 tensor" for k in state if k not in used and not k.startswith("classifier.")]
    _named(problems, f"{what} are not torchvision's VGG16 (vgg16-397923af.pth)")
    return trunk


_HEAD = re.compile(r"^lin(\d)\.model\.[01]\.weight$")


def heads_from_lpips(state: dict[str, np.ndarray], what: str = "LPIPS heads") -> dict:
    """{"lin<k>.model.1.weight" (1, C_k, 1, 1)} (``model.0`` in heads trained without dropout) ->
    {"tap<k>": (C_k,)}."""
    heads, problems = {}, []
    channels = tap_channels()
    for key, value in state.items():
        m = _HEAD.match(key)
        if m is None or int(m.group(1)) >= len(channels):
            problems.append(f"{key} is not an LPIPS VGG head")
            continue
        k = int(m.group(1))
        if value.shape != (1, channels[k], 1, 1):
            problems.append(f"{key} is {tuple(value.shape)}, expected {(1, channels[k], 1, 1)}")
        elif f"tap{k}" in heads:
            problems.append(f"head {k} is given twice")
        else:
            heads[f"tap{k}"] = np.ascontiguousarray(value.reshape(-1))
    problems += [f"lin{k}.model.1.weight missing" for k in range(len(channels)) if f"tap{k}" not in heads
                 and not any(p.startswith(f"lin{k}.") for p in problems)]
    _named(problems, f"{what} are not the lpips package's VGG heads (lpips/weights/v0.1/vgg.pth)")
    return heads


def convert_lpips(*, vgg16: str | Path, lpips_heads: str | Path, out: str | Path, overwrite: bool = False,
                  verbose: bool = True) -> Path:
    trunk = trunk_from_torchvision(load_state_dict(vgg16, "VGG16 weights"), f"VGG16 weights {vgg16}")
    heads = heads_from_lpips(load_state_dict(lpips_heads, "LPIPS heads"), f"LPIPS heads {lpips_heads}")
    source = {"vgg16": Path(vgg16).name, "lpips_heads": Path(lpips_heads).name}
    model = Perceptual.from_arrays({"trunk": trunk, "heads": heads}, source)
    if verbose:
        print(f"LPIPS v0.1 (VGG16): {len(trunk)} convolutions, {len(heads)} heads")
    return save_perceptual(model, out, overwrite=overwrite)
