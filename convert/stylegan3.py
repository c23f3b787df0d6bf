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


def _named(problems: list[str], what: str) -> None:
    if problems:
        more = f" and {len(problems) - 8} more" if len(problems) > 8 else ""
        raise CheckpointError(f"{what}: " + "; ".join(problems[:8]) + more)


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
        up, down = layer_filters(spec)
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
    _named(problems, "StyleGAN3 synthesis")
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
    _named(problems, "StyleGAN3 mapping")
    return tree


# ---- NVIDIA's network pickle records (training.networks_stylegan3) -> config, params trees ----------------

# NVIDIA's SynthesisNetwork and SynthesisLayer keyword arguments (their defaults) -> our config's fields.
_SYNTHESIS_KWARGS = {"channel_base": ("channel_base", 32768), "channel_max": ("channel_max", 512),
                     "num_layers": ("num_layers", 14), "num_critical": ("num_critical", 2),
                     "first_cutoff": ("first_cutoff", 2.0), "first_stopband": ("first_stopband", 2 ** 2.1),
                     "last_stopband_rel": ("last_stopband_rel", 2 ** 0.3), "margin_size": ("margin_size", 10),
                     "output_scale": ("output_scale", 0.25), "conv_kernel": ("conv_kernel", 3),
                     "filter_size": ("filter_size", 6), "lrelu_upsampling": ("lrelu_upsampling", 2),
                     "use_radial_filters": ("radial_filters", False), "conv_clamp": ("conv_clamp", 256)}
_INTEGER_FIELDS = {"channel_base", "channel_max", "num_layers", "num_critical", "margin_size", "conv_kernel",
                   "filter_size", "lrelu_upsampling"}


def is_stylegan3(generator_record) -> bool:
    """A Generator record whose synthesis starts from Fourier features (an ``input`` SynthesisInput)."""
    synthesis = generator_record.modules().get("synthesis")
    return synthesis is not None and getattr(synthesis.modules().get("input"), "class_name", None) == "SynthesisInput"


def config_from_records(g, what: str) -> StyleGAN3Config:
    """The architecture from the records: the synthesis network's keyword arguments (NVIDIA's defaults
    where absent) give the config; then every layer's stored geometry must be what the config implies,
    each difference named."""
    from convert.record_fields import any_field, float_field, int_field

    synthesis, mapping = g.modules()["synthesis"], g.modules().get("mapping")
    kwargs = synthesis.init_kwargs()
    fields = {}
    for theirs, (ours, default) in _SYNTHESIS_KWARGS.items():
        where = f"{what}: the synthesis network's {theirs}"
        if ours in _INTEGER_FIELDS:
            fields[ours] = int_field(kwargs, theirs, default, where, low=0)
        elif ours == "radial_filters":
            value = any_field(kwargs, theirs, default, where)
            if not isinstance(value, bool):
                raise CheckpointError(f"{where} is {value!r}; true or false belongs there")
            fields[ours] = value
        else:
            fields[ours] = float_field(kwargs, theirs, default, where, optional=ours == "conv_clamp")
    channels = int_field(kwargs, "img_channels", 3, f"{what}: img_channels", low=1)
    if channels != 3:
        raise CheckpointError(f"{what}: a generator of {channels}-channel images; only RGB (3) is supported")
    fields["resolution"] = int_field(kwargs, "img_resolution", None, f"{what}: img_resolution", low=16)
    fields["dlatent_size"] = int_field(kwargs, "w_dim", 512, f"{what}: w_dim", low=1)
    if mapping is None:
        raise CheckpointError(f"{what}: the generator has no mapping network")
    fields["mapping_layers"] = int_field(mapping.state, "num_layers", 2, f"{what}: the mapping's num_layers", low=1)
    fcs = [mapping.modules().get(f"fc{i}") for i in range(fields["mapping_layers"])]
    multipliers = {float_field(fc.state, "bias_gain", 0.01, f"{what}: mapping.fc{i}") for i, fc in enumerate(fcs)
                   if fc is not None}
    if len(multipliers) > 1:
        raise CheckpointError(f"{what}: the mapping layers' learning-rate multipliers differ ({sorted(multipliers)})")
    fields["mapping_lr_multiplier"] = multipliers.pop() if multipliers else 0.01
    try:
        config = StyleGAN3Config(**fields)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{what}: not a StyleGAN3 this pulse-jax can build ({e})") from None
    check_geometry(synthesis, config, what)
    return config


def check_geometry(synthesis, config: StyleGAN3Config, what: str) -> None:
    """Each layer record's sizes, rates, cutoffs, factors, taps and padding against the config's."""
    from convert.record_fields import any_field, float_field, int_field, size_field

    problems = []
    inp = synthesis.modules()["input"].state
    spec = config.input_spec()
    if size_field(inp, "size", None, f"{what}: synthesis.input") != spec.size:
        problems.append(f"input size {any_field(inp, 'size', None, what)} (the config gives {spec.size})")
    for name, want in (("channels", spec.channels), ("sampling_rate", spec.sampling_rate),
                       ("bandwidth", spec.bandwidth)):
        got = float_field(inp, name, None, f"{what}: synthesis.input")
        if abs(got - want) > 1e-6 * max(1.0, abs(want)):
            problems.append(f"input {name} {got:g} (the config gives {want:g})")
    names = [layer_name(i, s) for i, s in enumerate(config.layer_specs())]
    layers = synthesis.modules()
    extra = [n for n in layers if n != "input" and n not in names]
    if extra or any(n not in layers for n in names):
        raise CheckpointError(f"{what}: the synthesis layers are {[n for n in layers if n != 'input']}, where "
                              f"the config read from the file gives {names}")
    for name, s in zip(names, config.layer_specs(), strict=True):
        state, where = layers[name].state, f"{what}: synthesis.{name}"
        for theirs, want in (("in_size", s.in_size), ("out_size", s.out_size)):
            if size_field(state, theirs, None, where) != want:
                problems.append(f"{name}.{theirs} (the config gives {want})")
        for theirs, want in (("in_channels", s.in_channels), ("out_channels", s.out_channels),
                             ("conv_kernel", s.conv_kernel), ("up_factor", s.up), ("down_factor", s.down),
                             ("up_taps", s.up_taps), ("down_taps", s.down_taps),
                             ("in_sampling_rate", s.in_sampling_rate), ("out_sampling_rate", s.out_sampling_rate)):
            got = int_field(state, theirs, None, where, low=0)
            if got != want:
                problems.append(f"{name}.{theirs} is {got} (the config gives {want})")
        for theirs, want in (("in_cutoff", s.in_cutoff), ("out_cutoff", s.out_cutoff),
                             ("in_half_width", s.in_half_width), ("out_half_width", s.out_half_width)):
            got = float_field(state, theirs, None, where)
            if abs(got - want) > 1e-6 * max(1.0, abs(want)):
                problems.append(f"{name}.{theirs} is {got:g} (the config gives {want:g})")
        for theirs, want in (("is_torgb", s.is_torgb), ("down_radial", s.down_radial)):
            if any_field(state, theirs, None, where) != want:
                got = any_field(state, theirs, None, where)
                problems.append(f"{name}.{theirs} is {got!r} (the config gives {want})")
        padding = any_field(state, "padding", None, where)
        if list(padding or []) != [s.padding[0], s.padding[1], s.padding[0], s.padding[1]]:
            problems.append(f"{name}.padding is {padding!r} (the config gives {list(s.padding) * 2})")
        clamp = float_field(state, "conv_clamp", None, where, optional=True)
        if clamp != config.conv_clamp:
            problems.append(f"{name}.conv_clamp is {clamp} (the config gives {config.conv_clamp})")
    _named(problems, f"{what}: the layers' stored geometry is not what the file's settings give")
