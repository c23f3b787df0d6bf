"""TF-era generators' variables -> our trees: StyleGAN v1 through PULSE's names, StyleGAN2 through NVIDIA's.

docs/formats.md, "NVIDIA's TensorFlow-era pickles". A table maps each TF variable name to the name it has in
PULSE's (v1) or NVIDIA's PyTorch (v2) files and the transform between the layouts; the table is built
from the architecture the file's ``static_kwargs`` describe, so that every missing, unexpected or
mis-shaped variable is named as the TF file names it. The renamed arrays then take the paths the other
readers take (pulse_format, convert/stylegan2), so that one set of weights reads the same from any file.
"""

from __future__ import annotations

import dataclasses
import re

import numpy as np

from convert import stylegan2
from convert.converted import Converted
from convert.record_fields import float_field, int_field
from convert.tf_pickle import TFGenerator
from pulse_jax import pulse_format
from pulse_jax.errors import CheckpointError
from pulse_jax.generators.stylegan1 import MAPPING_LAYERS, MAPPING_LRMUL, StyleGANConfig
from pulse_jax.generators.stylegan2 import StyleGAN2Config
from pulse_jax.tree_check import check_shapes

# name -> (TF value -> target value, target shape -> TF shape). TF: dense [in, out], conv [kh, kw, in, out].
TRANSFORMS = {
    "same": (lambda a: a, lambda s: s),
    "dense": (lambda a: a.T, lambda s: s[::-1]),
    "conv": (lambda a: a.transpose(3, 2, 0, 1), lambda s: (s[2], s[3], s[1], s[0])),
    # StyleGAN2's Conv0_up stores the kernel of a transposed convolution: flipped against NVIDIA's PyTorch.
    "conv_flipped": (lambda a: a[::-1, ::-1].transpose(3, 2, 0, 1), lambda s: (s[2], s[3], s[1], s[0])),
    "plus_one": (lambda a: a + np.float32(1), lambda s: s),  # StyleGAN2's mod_bias: PyTorch's bias_init 1
    "first": (lambda a: a[0], lambda s: (1, *s)),
    "first_first": (lambda a: a[0, 0], lambda s: (1, 1, *s)),
}


@dataclasses.dataclass(frozen=True)
class Entry:
    """Where one TF variable goes: ``target`` (a key of the other format), its shape there, the transform."""

    target: str
    shape: tuple[int, ...]
    transform: str

    @property
    def tf_shape(self) -> tuple[int, ...]:
        return tuple(TRANSFORMS[self.transform][1](tuple(self.shape)))


def variables(g: TFGenerator, synthesis_prefix: str, mapping_prefix: str) -> dict[str, np.ndarray]:
    """Every variable of Gs and its two components, under the prefixes the spec writes them with."""
    out = dict(g.top.variables())
    for prefix, net in ((synthesis_prefix, g.synthesis), (mapping_prefix, g.mapping)):
        for name, value in net.variables().items():
            # Names are relative to the network; a file that kept them absolute says the prefix itself.
            out[name if name.startswith(prefix) else prefix + name] = value
    return out


def _setting(kwargs: dict, name: str, default):
    value = kwargs.get(name, default)
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, (list, tuple, np.ndarray)):
        value = [float(v) for v in np.asarray(value).reshape(-1)]
    return value


def check_settings(kwargs: dict, supported: dict, family: str, what: str) -> None:
    """Refuse, naming each, the static_kwargs that build something pulse-jax does not (absent: NVIDIA's
    default, which is the supported value)."""
    wrong = [f"{name}={_setting(kwargs, name, want)!r} (supported: {want!r})" for name, want in supported.items()
             if _setting(kwargs, name, want) != want]
    if wrong:
        raise CheckpointError(f"{what}: a {family} generator built with {', '.join(wrong)}: not supported")


def convert_entries(table: dict[str, Entry], found: dict[str, np.ndarray], what: str, kind: str) -> dict:
    """{target: array} after checking ``found`` against the table by TF name and TF shape."""
    check_shapes({k: v.shape for k, v in found.items()}, {k: e.tf_shape for k, e in table.items()}, what,
                 kind=kind)
    out = {}
    for name, entry in table.items():
        out[entry.target] = np.array(TRANSFORMS[entry.transform][0](found[name]), dtype=np.float32, order="C")
    return out


def _take_lod(found: dict[str, np.ndarray], name: str, what: str) -> None:
    """The progressive-growing level StyleGAN keeps: a finished network shows its full resolution (0)."""
    if name in found:
        lod = found.pop(name)
        if lod.shape != () or float(lod) != 0.0:
            raise CheckpointError(f"{what}: {name} is {lod.tolist()}, not 0: a network caught mid-way through "
                                  "progressive growing, whose output blends resolutions; use a finished one")


def _conditional_or_not_rgb(kwargs: dict, what: str) -> None:
    labels = int_field(kwargs, "label_size", 0, what, low=0)
    if labels:
        raise CheckpointError(f"{what}: a conditional generator (label_size {labels}: it needs a class label); "
                              "only unconditional generators are supported")
    channels = int_field(kwargs, "num_channels", 3, what, low=1)
    if channels != 3:
        raise CheckpointError(f"{what}: a generator of {channels}-channel images; only RGB (3) is supported")


def checked_settings(g: TFGenerator, supported: dict, family: str, what: str) -> tuple[dict, int]:
    """(static_kwargs, w's size) after the checks both families share."""
    kwargs = g.static_kwargs()
    _conditional_or_not_rgb(kwargs, what)
    check_settings(kwargs, supported, family, what)
    return kwargs, mapping_width(kwargs, what)


def architecture(config_class, what: str, **settings):
    try:
        return config_class(**settings)
    except (ValueError, TypeError) as e:
        raise CheckpointError(f"{what}: unsupported architecture ({e})") from None


def mapping_width(kwargs: dict, what: str) -> int:
    """w's size; z and the mapping's hidden layers must have it too (both families build them so)."""
    d = int_field(kwargs, "dlatent_size", 512, what, low=1)
    for name in ("latent_size", "mapping_fmaps"):
        if int_field(kwargs, name, 512, what, low=1) != d:
            raise CheckpointError(f"{what}: {name} {_setting(kwargs, name, 512)} differs from dlatent_size {d}: "
                                  "a mapping network pulse-jax does not build")
    return d


# ---- StyleGAN v1: TF names -> PULSE's ------------------------------------------------------------------

V1_SYNTHESIS, V1_MAPPING = "G_synthesis/", "G_mapping/"
V1_SUPPORTED = {
    "fmap_decay": 1.0, "use_styles": True, "const_input_layer": True, "use_noise": True, "nonlinearity": "lrelu",
    "use_wscale": True, "use_pixel_norm": False, "use_instance_norm": True, "blur_filter": [1.0, 2.0, 1.0],
    "mapping_layers": MAPPING_LAYERS, "mapping_lrmul": MAPPING_LRMUL, "mapping_nonlinearity": "lrelu",
    "normalize_latents": True, "dtype": "float32",
}


def _v1_name(key: str) -> str | None:
    """PULSE synthesis key -> the TF variable it came from (None: PULSE's fixed blur kernel, not a variable)."""
    if key.endswith("intermediate.kernel"):
        return None
    if key.startswith("torgb."):
        return f"ToRGB_lod0/{key.split('.')[1]}"
    _, block, *rest = key.split(".")
    first, second = ("Const", "Conv") if block == "4x4" else ("Conv0_up", "Conv1")
    if rest[0] in ("epi1", "epi2"):
        layer = first if rest[0] == "epi1" else second
        return f"{block}/{layer}/Noise/weight" if rest[1] == "noise" else f"{block}/{layer}/StyleMod/{rest[-1]}"
    if rest in (["const"], ["bias"]):
        return f"{block}/Const/{rest[0]}"
    return f"{block}/{first if rest[0] == 'conv0_up' else second}/{rest[1]}"


def stylegan1_table(config: StyleGANConfig) -> dict[str, Entry]:
    table = {}
    for key, shape in pulse_format.expected_synthesis_shapes(config).items():
        name = _v1_name(key)
        if name is not None:
            kind = {4: "conv", 2: "dense"}.get(len(shape), "same") if not key.endswith(".const") else "same"
            table[V1_SYNTHESIS + name] = Entry(f"synthesis:{key}", shape, kind)
    for key, shape in pulse_format.expected_mapping_shapes(config.dlatent_size).items():
        layer, part = key.split(".")
        table[f"{V1_MAPPING}Dense{layer[len('dense'):]}/{part}"] = Entry(f"mapping:{key}", shape,
                                                                        "dense" if len(shape) == 2 else "same")
    for i, shape in enumerate(config.noise_shapes()):
        table[f"{V1_SYNTHESIS}noise{i}"] = Entry(f"noise:{i}", shape, "first_first")
    table["dlatent_avg"] = Entry("w_avg", (config.dlatent_size,), "same")
    return table


def _drop_lower_lods(found: dict[str, np.ndarray], config: StyleGANConfig) -> None:
    """ToRGB_lod1... make the lower-resolution outputs of progressive growing: unused at lod 0."""
    for name in [n for n in found if (m := re.fullmatch(V1_SYNTHESIS + r"ToRGB_lod(\d+)/(weight|bias)", n))
                 and 1 <= int(m[1]) <= config.log2_resolution - 2]:
        del found[name]


def stylegan1_from_tf(g: TFGenerator, what: str) -> Converted:
    kwargs, d = checked_settings(g, V1_SUPPORTED, "StyleGAN", what)
    config = architecture(StyleGANConfig, what, resolution=int_field(kwargs, "resolution", 1024, what, low=1),
                          fmap_base=int_field(kwargs, "fmap_base", 8192, what, low=1),
                          fmap_max=int_field(kwargs, "fmap_max", 512, what, low=1), dlatent_size=d)
    found = variables(g, V1_SYNTHESIS, V1_MAPPING)
    _take_lod(found, V1_SYNTHESIS + "lod", what)
    _drop_lower_lods(found, config)
    out = convert_entries(stylegan1_table(config), found, what, f"a StyleGAN generator of {config}")
    synthesis = {k.split(":", 1)[1]: v for k, v in out.items() if k.startswith("synthesis:")}
    for res in config.block_resolutions()[1:]:
        synthesis[f"blocks.{res}x{res}.conv0_up.intermediate.kernel"] = pulse_format.BLUR_KERNEL
    mapping = {k.split(":", 1)[1]: v for k, v in out.items() if k.startswith("mapping:")}
    return Converted(config, pulse_format.synthesis_tree(synthesis, what),
                     pulse_format.mapping_params(mapping, d, what),
                     [out[f"noise:{i}"] for i in range(config.num_layers)], out["w_avg"], g.provenance())


# ---- StyleGAN2: TF names -> NVIDIA's PyTorch names (NVIDIA's legacy.py does the same renaming) --------

V2_SYNTHESIS, V2_MAPPING = "synthesis/", "mapping/"
V2_SUPPORTED = {
    "architecture": "skip", "fmap_decay": 1.0, "nonlinearity": "lrelu", "resample_kernel": [1.0, 3.0, 3.0, 1.0],
    "mapping_nonlinearity": "lrelu", "normalize_latents": True, "dtype": "float32",
}


def _v2_layer(table: dict, shapes: dict, tf: str, ours: str, *, up: bool, noise: bool) -> None:
    parts = {"weight": ("weight", "conv_flipped" if up else "conv"), "bias": ("bias", "same"),
             "mod_weight": ("affine.weight", "dense"), "mod_bias": ("affine.bias", "plus_one")}
    if noise:
        parts["noise_strength"] = ("noise_strength", "same")
    for tf_part, (part, kind) in parts.items():
        table[f"{tf}/{tf_part}"] = Entry(f"{ours}.{part}", shapes[f"{ours}.{part}"], kind)


def stylegan2_table(config: StyleGAN2Config) -> dict[str, Entry]:
    shapes = stylegan2.expected_shapes(config)
    table = {f"{V2_MAPPING}Dense{i}/{part}": Entry(f"mapping.fc{i}.{part}", shapes[f"mapping.fc{i}.{part}"],
                                                   "dense" if part == "weight" else "same")
             for i in range(config.mapping_layers) for part in ("weight", "bias")}
    table["dlatent_avg"] = Entry("mapping.w_avg", shapes["mapping.w_avg"], "same")
    table[f"{V2_SYNTHESIS}4x4/Const/const"] = Entry("synthesis.b4.const", shapes["synthesis.b4.const"], "first")
    for r in config.block_resolutions():
        tf, ours = f"{V2_SYNTHESIS}{r}x{r}", f"synthesis.b{r}"
        if r == 4:
            _v2_layer(table, shapes, f"{tf}/Conv", f"{ours}.conv1", up=False, noise=True)
        else:
            _v2_layer(table, shapes, f"{tf}/Conv0_up", f"{ours}.conv0", up=True, noise=True)
            _v2_layer(table, shapes, f"{tf}/Conv1", f"{ours}.conv1", up=False, noise=True)
        _v2_layer(table, shapes, f"{tf}/ToRGB", f"{ours}.torgb", up=False, noise=False)
    for i, layer in enumerate(stylegan2.noise_layers(config.resolution)):
        table[f"{V2_SYNTHESIS}noise{i}"] = Entry(f"{layer}.noise_const", shapes[f"{layer}.noise_const"],
                                                 "first_first")
    return table


def stylegan2_from_tf(g: TFGenerator, what: str) -> Converted:
    found = variables(g, V2_SYNTHESIS, V2_MAPPING)
    if any(re.match(V2_SYNTHESIS + r"ToRGB_lod\d+/", n) for n in found) or _setting(
            g.static_kwargs(), "architecture", "skip") == "orig":
        raise CheckpointError(f"{what}: an 'orig' StyleGAN2 generator (ToRGB_lod layers: configs a-d of the "
                              "StyleGAN2 paper): not supported; pulse-jax reads the 'skip' generator (config-e, "
                              "config-f: every file on NVIDIA's StyleGAN2 page)")
    kwargs, d = checked_settings(g, V2_SUPPORTED, "StyleGAN2", what)
    config = architecture(StyleGAN2Config, what, resolution=int_field(kwargs, "resolution", 1024, what, low=1),
                          channel_base=2 * int_field(kwargs, "fmap_base", 16384, what, low=1),
                          channel_max=int_field(kwargs, "fmap_max", 512, what, low=1), dlatent_size=d,
                          mapping_layers=int_field(kwargs, "mapping_layers", 8, what, low=1),
                          mapping_lr_multiplier=float_field(kwargs, "mapping_lrmul", 0.01, what))
    fmap_min = int_field(kwargs, "fmap_min", 1, what, low=1)
    if any(config.channels(r) < fmap_min for r in config.block_resolutions()):
        raise CheckpointError(f"{what}: fmap_min {fmap_min} raises some blocks' channels: not supported")
    _take_lod(found, V2_SYNTHESIS + "lod", what)
    sd = convert_entries(stylegan2_table(config), found, what, f"a StyleGAN2 generator of {config}")
    sd.update({k: stylegan2.FILTER for k in stylegan2.expected_shapes(config) if k.endswith("resample_filter")})
    synthesis, mapping = stylegan2.to_params(sd, config, what)
    return Converted(config, synthesis, mapping, stylegan2.stored_noise(sd, config), None, g.provenance())


def convert_tf_generator(g: TFGenerator, what: str) -> Converted:
    return stylegan1_from_tf(g, what) if g.family == "StyleGAN" else stylegan2_from_tf(g, what)

