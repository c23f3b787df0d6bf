"""Test fixtures: the reference StyleGAN2 written as the files users hold.

- ``write_nvidia_pickle``: NVIDIA's stylegan2-ada-pytorch network pickle structure: a dict
  ``{G, D, G_ema, augment_pipe, training_set_kwargs}`` whose networks are persistent objects pickled as
  ``torch_utils.persistence._reconstruct_persistent_obj(meta)`` with ``module_src``, ``class_name`` and a
  ``state`` of ``_parameters`` / ``_buffers`` / ``_modules`` OrderedDicts, ``_init_kwargs`` EasyDicts and
  numpy-scalar attributes: the globals a real file references (docs/formats.md, "NVIDIA's PyTorch network pickles").
- ``write_rosinality``: ``torch.save({"g_ema": state_dict, "latent_avg": ...})`` with rosinality's names
  and conventions (section 3).

The stand-in modules (``torch_utils.persistence``, ``dnnlib.util``) exist only while a file is written, so
that pickle names the globals as the real files do; nothing here can unpickle what it writes.
"""

from __future__ import annotations

import contextlib
import math
import pickle
import sys
import types
from collections import OrderedDict

import numpy as np
import torch
from reference import stylegan2_torch as ref

MODULE_SRC = "# stands in for training/networks.py: a real file carries the whole source here\n"


def _reconstruct_persistent_obj(meta):  # never called: only its name goes into the pickle
    raise AssertionError("the fixture's stand-in must not be called")


class EasyDict(dict):
    pass


_reconstruct_persistent_obj.__module__ = "torch_utils.persistence"
EasyDict.__module__ = "dnnlib.util"


PERSISTENCE_MODULES = {"torch_utils": {}, "torch_utils.persistence": {"_reconstruct_persistent_obj":
                                                                     _reconstruct_persistent_obj},
                       "dnnlib": {}, "dnnlib.util": {"EasyDict": EasyDict}}


@contextlib.contextmanager
def stand_in_modules(names=None):
    """Modules of these names (default: NVIDIA's persistence ones) with these attributes, for the while."""
    names = PERSISTENCE_MODULES if names is None else names
    saved = {n: sys.modules.get(n) for n in names}
    for n, attrs in names.items():
        m = types.ModuleType(n)
        m.__dict__.update(attrs)
        sys.modules[n] = m
    try:
        yield
    finally:
        for n, old in saved.items():
            if old is None:
                sys.modules.pop(n, None)
            else:
                sys.modules[n] = old


class Net:
    """A persistent network object as NVIDIA's pickles store it."""

    def __init__(self, class_name, params=None, buffers=None, modules=None, init_kwargs=None, module_src=MODULE_SRC,
                 **attributes):
        self.meta = {"type": "class", "version": 6, "module_src": module_src, "class_name": class_name,
                     "state": {"training": False,
                               "_parameters": OrderedDict((k, torch.nn.Parameter(v, requires_grad=False))
                                                          for k, v in (params or {}).items()),
                               "_buffers": OrderedDict(buffers or {}), "_non_persistent_buffers_set": set(),
                               "_backward_hooks": OrderedDict(), "_forward_hooks": OrderedDict(),
                               "_forward_pre_hooks": OrderedDict(), "_state_dict_hooks": OrderedDict(),
                               "_load_state_dict_pre_hooks": OrderedDict(), "_modules": OrderedDict(modules or {}),
                               "_init_args": (), "_init_kwargs": EasyDict(init_kwargs or {}), **attributes}}

    def __reduce__(self):
        return _reconstruct_persistent_obj, (self.meta,)


def _fc(sd, p, lr_multiplier=1.0, activation="linear"):
    w = sd[f"{p}.weight"]
    return Net("FullyConnectedLayer", {"weight": w, "bias": sd[f"{p}.bias"]},
               init_kwargs={"in_features": w.shape[1], "out_features": w.shape[0], "activation": activation,
                            "lr_multiplier": lr_multiplier},
               activation=activation, lr_multiplier=lr_multiplier,
               weight_gain=np.float64(lr_multiplier / np.sqrt(w.shape[1])), bias_gain=lr_multiplier)


def nvidia_generator(sd, resolution, channel_base, channel_max, conv_clamp=None, *, architecture="skip",
                     c_dim=0, module_src=MODULE_SRC):
    """The reference state dict as NVIDIA's G (a persistent Generator with its submodules)."""
    num_ws = 2 * int(math.log2(resolution)) - 2
    blocks = OrderedDict()
    for res in ref.block_resolutions(resolution):
        p = f"synthesis.b{res}"
        mods = OrderedDict()
        for name in (["conv1"] if res == 4 else ["conv0", "conv1"]):
            q = f"{p}.{name}"
            mods[name] = Net("SynthesisLayer", {k: sd[f"{q}.{k}"] for k in ("weight", "noise_strength", "bias")},
                             {k: sd[f"{q}.{k}"] for k in ("resample_filter", "noise_const")},
                             OrderedDict(affine=_fc(sd, f"{q}.affine")),
                             {"resolution": res, "up": 2 if name == "conv0" else 1, "conv_clamp": conv_clamp},
                             module_src=module_src, resolution=res, up=2 if name == "conv0" else 1, use_noise=True,
                             activation="lrelu", conv_clamp=conv_clamp, padding=1, act_gain=np.float64(np.sqrt(2)))
        mods["torgb"] = Net("ToRGBLayer", {"weight": sd[f"{p}.torgb.weight"], "bias": sd[f"{p}.torgb.bias"]},
                            modules=OrderedDict(affine=_fc(sd, f"{p}.torgb.affine")), conv_clamp=conv_clamp,
                            weight_gain=np.float64(1 / np.sqrt(sd[f"{p}.torgb.weight"].shape[1])))
        blocks[f"b{res}"] = Net("SynthesisBlock", {"const": sd[f"{p}.const"]} if res == 4 else {},
                                {"resample_filter": sd[f"{p}.resample_filter"]}, mods,
                                {"resolution": res, "architecture": architecture}, module_src=module_src,
                                resolution=res, architecture=architecture, use_fp16=False, is_last=res == resolution)
    layers = sum(1 for k in sd if k.startswith("mapping.fc") and k.endswith(".weight"))
    mapping = Net("MappingNetwork", buffers={"w_avg": sd["mapping.w_avg"]},
                  modules=OrderedDict((f"fc{i}", _fc(sd, f"mapping.fc{i}", 0.01, "lrelu")) for i in range(layers)),
                  init_kwargs={"z_dim": 512, "c_dim": c_dim, "w_dim": 512, "num_ws": num_ws, "num_layers": layers},
                  num_layers=layers, w_avg_beta=np.float64(0.995))
    synthesis = Net("SynthesisNetwork", modules=blocks, init_kwargs={"w_dim": 512, "img_resolution": resolution,
                                                                      "img_channels": 3},
                    num_ws=num_ws, block_resolutions=ref.block_resolutions(resolution))
    kwargs = EasyDict(z_dim=512, c_dim=c_dim, w_dim=512, img_resolution=resolution, img_channels=3,
                      mapping_kwargs=EasyDict(num_layers=layers),
                      synthesis_kwargs=EasyDict(channel_base=channel_base, channel_max=channel_max, num_fp16_res=4,
                                                conv_clamp=conv_clamp, architecture=architecture))
    return Net("Generator", modules=OrderedDict(synthesis=synthesis, mapping=mapping), init_kwargs=kwargs,
               module_src=module_src, z_dim=512, c_dim=c_dim, w_dim=512, img_resolution=resolution, img_channels=3,
               num_ws=num_ws)


STYLEGAN3_REPO_SRC = "# stands in for the stylegan3 repository's training/networks_stylegan2.py\n"


def as_stylegan3_repository(generator: Net) -> Net:
    """The same network as the stylegan3 repository's ``training.networks_stylegan2`` pickles it (its
    StyleGAN2 releases and anything trained there with --cfg=stylegan2): other module source, and the
    attributes its classes add (SynthesisBlock's fused_modconv_default, num_conv, num_torgb, channels_last;
    MappingNetwork's trainable_layers; FullyConnectedLayer's sizes), with 'inference_only' as its
    train.py sets it for that config."""
    def visit(net: Net):
        state = net.meta["state"]
        net.meta["module_src"] = STYLEGAN3_REPO_SRC
        name = net.meta["class_name"]
        if name == "SynthesisBlock":
            state.update(fused_modconv_default="inference_only", channels_last=False,
                         num_conv=len([m for m in state["_modules"] if m.startswith("conv")]),
                         num_torgb=int("torgb" in state["_modules"]))
            state["_init_kwargs"]["fused_modconv_default"] = "inference_only"
        elif name == "MappingNetwork":
            state["trainable_layers"] = state["num_layers"]
        elif name == "FullyConnectedLayer":
            out_features, in_features = state["_parameters"]["weight"].shape
            state.update(in_features=in_features, out_features=out_features)
        for child in state["_modules"].values():
            visit(child)

    visit(generator)
    generator.meta["state"]["_init_kwargs"]["synthesis_kwargs"]["fused_modconv_default"] = "inference_only"
    return generator


def write_nvidia_pickle(path, generator, *, extra=None):
    """{G, D, G_ema, augment_pipe, training_set_kwargs}, as NVIDIA's training loop pickles its snapshots."""
    data = {"G": generator, "D": Net("Discriminator", {"b4.fc.weight": torch.randn(4, 4)}),
            "G_ema": generator, "augment_pipe": None,
            "training_set_kwargs": EasyDict(path="ffhq.zip", resolution=generator.meta["state"]["img_resolution"])}
    data.update(extra or {})
    with stand_in_modules():
        path.write_bytes(pickle.dumps(data, protocol=4))
    return path


def to_rosinality(sd, resolution):
    """The reference state dict under rosinality's names and conventions (weights times sqrt(fan-in))."""
    g = {}
    layers = sum(1 for k in sd if k.startswith("mapping.fc") and k.endswith(".weight"))
    for i in range(layers):
        g[f"style.{i + 1}.weight"], g[f"style.{i + 1}.bias"] = sd[f"mapping.fc{i}.weight"], sd[f"mapping.fc{i}.bias"]
    g["input.input"] = sd["synthesis.b4.const"][None]
    blur = 4 * ref.resample_filter()

    def styled(dst, src, up):
        w = sd[f"{src}.weight"]
        g[f"{dst}.conv.weight"] = (w * math.sqrt(w.shape[1] * 9))[None]
        g[f"{dst}.conv.modulation.weight"] = sd[f"{src}.affine.weight"]
        g[f"{dst}.conv.modulation.bias"] = sd[f"{src}.affine.bias"]
        g[f"{dst}.noise.weight"] = sd[f"{src}.noise_strength"].reshape(1)
        g[f"{dst}.activate.bias"] = sd[f"{src}.bias"]
        if up:
            g[f"{dst}.conv.blur.kernel"] = blur

    def to_rgb(dst, src, up):
        g[f"{dst}.conv.weight"] = sd[f"{src}.weight"][None]
        g[f"{dst}.conv.modulation.weight"] = sd[f"{src}.affine.weight"]
        g[f"{dst}.conv.modulation.bias"] = sd[f"{src}.affine.bias"]
        g[f"{dst}.bias"] = sd[f"{src}.bias"].reshape(1, 3, 1, 1)
        if up:
            g[f"{dst}.upsample.kernel"] = blur

    styled("conv1", "synthesis.b4.conv1", False)
    to_rgb("to_rgb1", "synthesis.b4.torgb", False)
    for j, res in enumerate(ref.block_resolutions(resolution)[1:]):
        styled(f"convs.{2 * j}", f"synthesis.b{res}.conv0", True)
        styled(f"convs.{2 * j + 1}", f"synthesis.b{res}.conv1", False)
        to_rgb(f"to_rgbs.{j}", f"synthesis.b{res}.torgb", True)
    for i, noise in enumerate(ref.const_noise(sd)):
        g[f"noises.noise_{i}"] = noise[None, None]
    return g


def write_rosinality(path, sd, resolution, *, drop=None):
    g = to_rosinality(sd, resolution)
    if drop is not None:
        del g[drop]
    torch.save({"g_ema": g, "latent_avg": sd["mapping.w_avg"]}, path)
    return path
