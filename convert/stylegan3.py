"""NVIDIA's StyleGAN3 tensors (the state of ``training.networks_stylegan3``'s Generator, by NVIDIA's names)
-> our params tree, every tensor checked against the shape the config implies and each mismatch named.

Layouts: dense weights (out, in) -> kernels (in, out); convolution weights (O, I, k, k) -> HWIO; the
input's mixing matrix (out, in) -> (in, out); buffers (filters, frequencies, phases, transform, magnitude
averages, w_avg) as they are. The filters a file stores must be those its layer geometry implies (to
1e-5 of our design of them): anything else means the config read from the file is not the network's.
"""

from __future__ import annotations

import numpy as np

from pulse_jax.errors import CheckpointError
from pulse_jax.generators.stylegan3 import StyleGAN3Config, layer_filters, layer_name

FILTER_TOLERANCE = 1e-5


def _take(state: dict, key: str, shape: tuple, problems: list, used: set):
    used.add(key)
    if key not in state:
        problems.append(f"{key} missing")
        return None
    value = np.asarray(state[key], np.float32)
    if value.shape != tuple(shape):
        problems.append(f"{key} is {value.shape}, expected {tuple(shape)}")
        return None
    return value


def synthesis_arrays(state: dict, config: StyleGAN3Config, prefix: str = "synthesis.") -> dict:
    problems, used, tree = [], set(), {}
    inp = config.input_spec()
    c, d = inp.channels, config.dlatent_size

    def take(key, shape):
        return _take(state, prefix + key, shape, problems, used)

    aw, ab = take("input.affine.weight", (4, d)), take("input.affine.bias", (4,))
    weight = take("input.weight", (c, c))
    tree["input"] = {"affine": {"kernel": None if aw is None else aw.T, "bias": ab},
                     "weight": None if weight is None else weight.T,
                     "freqs": take("input.freqs", (c, 2)), "phases": take("input.phases", (c,)),
                     "transform": take("input.transform", (3, 3))}
    for i, spec in enumerate(config.layer_specs()):
        name, k = layer_name(i, spec), spec.conv_kernel
        aw, ab = take(f"{name}.affine.weight", (spec.in_channels, d)), take(f"{name}.affine.bias", (spec.in_channels,))
        w = take(f"{name}.weight", (spec.out_channels, spec.in_channels, k, k))
        layer = {"affine": {"kernel": None if aw is None else aw.T, "bias": ab},
                 "weight": None if w is None else np.ascontiguousarray(w.transpose(2, 3, 1, 0)),
                 "bias": take(f"{name}.bias", (spec.out_channels,)),
                 "magnitude_ema": take(f"{name}.magnitude_ema", ())}
        up, down = layer_filters(spec, config.filter_size)
        for key, designed in (("up_filter", up), ("down_filter", down)):
            if designed is None:
                if prefix + f"{name}.{key}" in state:
                    problems.append(f"{name}.{key} is in the file, but this layer has no such filter")
                    used.add(prefix + f"{name}.{key}")
                continue
            stored = take(f"{name}.{key}", designed.shape)
            if stored is not None and np.abs(stored - designed).max() > FILTER_TOLERANCE:
                problems.append(f"{name}.{key} differs from the filter its sampling rates and cutoffs imply (by "
                                f"{np.abs(stored - designed).max():.2g})")
            layer[key] = stored
        tree[name] = layer
    problems += [f"{k} is not a tensor of this StyleGAN3 network" for k in state
                 if k.startswith(prefix) and k not in used]
    if problems:
        raise CheckpointError("StyleGAN3 synthesis: " + "; ".join(problems[:8])
                              + (f" and {len(problems) - 8} more" if len(problems) > 8 else ""))
    return tree


def mapping_arrays(state: dict, config: StyleGAN3Config, prefix: str = "mapping.") -> dict:
    problems, used, tree = [], set(), {}
    d = config.dlatent_size
    for i in range(config.mapping_layers):
        w = _take(state, f"{prefix}fc{i}.weight", (d, d), problems, used)
        b = _take(state, f"{prefix}fc{i}.bias", (d,), problems, used)
        tree[f"fc{i}"] = {"kernel": None if w is None else w.T, "bias": b}
    tree["w_avg"] = _take(state, f"{prefix}w_avg", (d,), problems, used)
    problems += [f"{k} is not a tensor of this StyleGAN3 mapping network" for k in state
                 if k.startswith(prefix) and k not in used]
    if problems:
        raise CheckpointError("StyleGAN3 mapping: " + "; ".join(problems[:8])
                              + (f" and {len(problems) - 8} more" if len(problems) > 8 else ""))
    return tree
