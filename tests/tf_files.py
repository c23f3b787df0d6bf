"""Test fixtures: NVIDIA's TensorFlow-era network pickles (docs/formats.md, "NVIDIA's TensorFlow-era pickles").

A real file is ``pickle.dump((G, D, Gs), f)`` (protocol 3, Python 3.6) of ``dnnlib.tflib.network.Network``
objects, whose ``__getstate__`` gives ``{version, name, static_kwargs, components, build_module_src,
build_func_name, variables}``; variables are (name relative to the network, numpy array) pairs in TF's
layouts; components are the sub-networks ("synthesis", "mapping", named G_synthesis / G_mapping). Arrays
pickle through ``numpy.core.multiarray._reconstruct``, as numpy 1.x wrote them in 2019; numpy 2 writes
``numpy._core``, and ``numpy_spelling`` chooses.

The weights come from the reference state dicts (PULSE's layout for v1, NVIDIA's PyTorch one for v2),
turned into TF's names and layouts here, from the spec, independently of convert/.
"""

from __future__ import annotations

import math
import pickle

import numpy as np
import stylegan2_files

BUILD_SRC = "# stands in for training/networks_stylegan.py: a real file carries the whole source here\n"


class Network:
    """Pickles as dnnlib.tflib.network.Network does: its class by name, then the state dict."""

    def __init__(self, state: dict):
        self._state = state

    def __getstate__(self) -> dict:
        return self._state


Network.__module__ = "dnnlib.tflib.network"


def stand_in_modules():
    return stylegan2_files.stand_in_modules({"dnnlib": {}, "dnnlib.tflib": {},
                                             "dnnlib.tflib.network": {"Network": Network}})


def network(name, version, variables, *, static_kwargs=None, components=None, build_src=BUILD_SRC,
            func="G_style"):
    return Network({"version": version, "name": name, "static_kwargs": dict(static_kwargs or {}),
                    "components": dict(components or {}), "build_module_src": build_src,
                    "build_func_name": func,
                    # as tflib.run gives them: arrays, and numpy scalars for scalar variables
                    "variables": [(k, v if isinstance(v, np.generic) else np.asarray(v, np.float32))
                                  for k, v in variables.items()]})


def dumps(top, numpy_spelling: str = "numpy.core") -> bytes:
    with stand_in_modules():
        data = pickle.dumps(top, protocol=3)
    here = b"c" + np.ndarray.__reduce__(np.zeros(1))[0].__module__.encode() + b"\n"
    return data.replace(here, b"c" + numpy_spelling.encode() + b".multiarray\n")


def write(path, top, numpy_spelling: str = "numpy.core"):
    path.write_bytes(dumps(top, numpy_spelling))
    return path


def _np(t):
    return t.detach().cpu().numpy().astype(np.float32) if hasattr(t, "detach") else np.asarray(t, np.float32)


def _conv(w):  # (O, I, kh, kw) -> TF (kh, kw, I, O)
    return _np(w).transpose(2, 3, 1, 0)


# ---- StyleGAN v1 ---------------------------------------------------------------------------------------

def v1_synthesis_variables(sd, resolution, noise, rng) -> dict:
    """PULSE's synthesis state dict -> G_synthesis's variables (TF names and layouts), with the lower
    lods' ToRGB layers, the lod variable and the noise maps a real file has."""
    v = {}
    for res in [2**k for k in range(2, int(math.log2(resolution)) + 1)]:
        p, b = f"{res}x{res}", f"blocks.{res}x{res}"
        if res == 4:
            v[f"{p}/Const/const"] = _np(sd[f"{b}.const"])
            v[f"{p}/Const/bias"] = _np(sd[f"{b}.bias"])
            layers = (("Const", None, "epi1"), ("Conv", "conv", "epi2"))
        else:
            layers = (("Conv0_up", "conv0_up", "epi1"), ("Conv1", "conv1", "epi2"))
        for tf, conv, epi in layers:
            if conv is not None:
                v[f"{p}/{tf}/weight"] = _conv(sd[f"{b}.{conv}.weight"])
                v[f"{p}/{tf}/bias"] = _np(sd[f"{b}.{conv}.bias"])
            v[f"{p}/{tf}/Noise/weight"] = _np(sd[f"{b}.{epi}.noise.weight"])
            v[f"{p}/{tf}/StyleMod/weight"] = _np(sd[f"{b}.{epi}.style_mod.lin.weight"]).T
            v[f"{p}/{tf}/StyleMod/bias"] = _np(sd[f"{b}.{epi}.style_mod.lin.bias"])
    lods = int(math.log2(resolution)) - 1
    for lod in range(lods):
        if lod == 0:
            v["ToRGB_lod0/weight"], v["ToRGB_lod0/bias"] = _conv(sd["torgb.weight"]), _np(sd["torgb.bias"])
        else:  # progressive growing's lower outputs: in the file, unused at lod 0
            c = v[f"{resolution >> lod}x{resolution >> lod}/Conv1/bias" if lod < lods - 1 else "4x4/Conv/bias"].shape[0]
            v[f"ToRGB_lod{lod}/weight"] = rng.standard_normal((1, 1, c, 3)).astype(np.float32)
            v[f"ToRGB_lod{lod}/bias"] = rng.standard_normal(3).astype(np.float32)
    v["lod"] = np.float32(0.0)
    for i, n in enumerate(noise):
        v[f"noise{i}"] = _np(n)[None, None]
    return v


def v1_mapping_variables(msd) -> dict:
    out = {}
    for i in range(8):
        out[f"Dense{i}/weight"] = _np(msd[f"dense{i}.weight"]).T
        out[f"Dense{i}/bias"] = _np(msd[f"dense{i}.bias"])
    return out


def v1_noise(resolution, rng) -> list[np.ndarray]:
    return [rng.standard_normal((2 ** (i // 2 + 2),) * 2).astype(np.float32)
            for i in range(2 * int(math.log2(resolution)) - 2)]


def stylegan1_pickle(sd, msd, w_avg, noise, resolution, *, static=None, build_src=BUILD_SRC, seed=0,
                     synthesis_variables=None):
    """(G, D, Gs) as karras2019stylegan-ffhq-1024x1024.pkl holds them; ``static``: Gs's extra static_kwargs
    (what the training config passed in G_args)."""
    rng = np.random.default_rng(seed)
    kwargs = {"num_channels": 3, "resolution": resolution, "label_size": 0, **(static or {})}
    syn_vars = synthesis_variables or v1_synthesis_variables(sd, resolution, noise, rng)

    def gen(name):
        synthesis = network("G_synthesis", 3, syn_vars, static_kwargs=kwargs, build_src=build_src,
                            func="G_synthesis")
        mapping = network("G_mapping", 3, v1_mapping_variables(msd), build_src=build_src, func="G_mapping",
                          static_kwargs={**kwargs, "dlatent_broadcast": 2 * int(math.log2(resolution)) - 2})
        return network(name, 3, {"dlatent_avg": _np(w_avg)}, static_kwargs=kwargs, build_src=build_src,
                       components={"synthesis": synthesis, "mapping": mapping})

    d = network("D", 3, {"4x4/Conv/weight": rng.standard_normal((3, 3, 4, 4))}, static_kwargs=kwargs,
                build_src=build_src, func="D_basic")
    return gen("G"), d, gen("Gs")


# ---- StyleGAN2 (from NVIDIA's PyTorch names: the inverse of the spec's renaming) ------------------------

def v2_variables(sd, resolution) -> tuple[dict, dict, dict]:
    """NVIDIA's PyTorch state dict -> (synthesis, mapping, Gs) variables in TF's names and layouts."""
    syn, mapping = {}, {}
    layers = sum(1 for k in sd if k.startswith("mapping.fc") and k.endswith(".weight"))
    for i in range(layers):
        mapping[f"Dense{i}/weight"] = _np(sd[f"mapping.fc{i}.weight"]).T
        mapping[f"Dense{i}/bias"] = _np(sd[f"mapping.fc{i}.bias"])
    syn["4x4/Const/const"] = _np(sd["synthesis.b4.const"])[None]
    noise_index = 0
    for res in [2**k for k in range(2, int(math.log2(resolution)) + 1)]:
        p, b = f"{res}x{res}", f"synthesis.b{res}"
        convs = [("Conv", "conv1")] if res == 4 else [("Conv0_up", "conv0"), ("Conv1", "conv1")]
        for tf, ours in convs + [("ToRGB", "torgb")]:
            w = _conv(sd[f"{b}.{ours}.weight"])
            syn[f"{p}/{tf}/weight"] = w[::-1, ::-1].copy() if tf == "Conv0_up" else w
            syn[f"{p}/{tf}/bias"] = _np(sd[f"{b}.{ours}.bias"])
            syn[f"{p}/{tf}/mod_weight"] = _np(sd[f"{b}.{ours}.affine.weight"]).T
            syn[f"{p}/{tf}/mod_bias"] = _np(sd[f"{b}.{ours}.affine.bias"]) - np.float32(1)
            if tf != "ToRGB":
                syn[f"{p}/{tf}/noise_strength"] = np.float32(_np(sd[f"{b}.{ours}.noise_strength"]))  # a scalar
                syn[f"noise{noise_index}"] = _np(sd[f"{b}.{ours}.noise_const"])[None, None]
                noise_index += 1
    return syn, mapping, {"dlatent_avg": _np(sd["mapping.w_avg"])}


def stylegan2_pickle(sd, resolution, channel_base, channel_max, *, static=None, synthesis_extra=None):
    """(G, D, Gs) as stylegan2-ffhq-config-f.pkl holds them (Gs's static_kwargs: what run_training passed)."""
    syn, mapping, top = v2_variables(sd, resolution)
    syn.update(synthesis_extra or {})
    kwargs = {"num_channels": 3, "resolution": resolution, "label_size": 0, "fmap_base": channel_base // 2,
              "fmap_max": channel_max, **(static or {})}

    def gen(name):
        return network(name, 4, top, static_kwargs=kwargs, func="G_main", components={
            "synthesis": network("G_synthesis", 4, syn, static_kwargs=kwargs, func="G_synthesis_stylegan2"),
            "mapping": network("G_mapping", 4, mapping, static_kwargs=kwargs, func="G_mapping")})

    d = network("D", 4, {"4x4/Conv/weight": np.ones((3, 3, 4, 4))}, static_kwargs=kwargs, func="D_stylegan2")
    return gen("G"), d, gen("Gs")
