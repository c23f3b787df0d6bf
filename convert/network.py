"""``--network FILE``: a generator from NVIDIA's network pickles (stylegan2-ada-pytorch, or the TensorFlow-era
StyleGAN / StyleGAN2 releases) or rosinality's checkpoint, the kind recognised from the content -> a model
directory. Nothing in the file runs."""

from __future__ import annotations

import dataclasses
import hashlib
import pickle
import sys
import zipfile
from pathlib import Path

import numpy as np

from convert import nvidia_pickle, stylegan2, stylegan3, tf_pickle, torch_scan
from convert.converted import Converted
from convert.nvidia_pickle import Persistent, flatten, read_network_pickle, records
from convert.pulse import check_out
from convert.record_fields import any_field, dict_field, float_field, int_field
from convert.tf_stylegan import convert_tf_generator
from convert.torch_io import load_state_dict
from pulse_jax import pulse_format
from pulse_jax.errors import CheckpointError, PulseJaxError
from pulse_jax.model import Model, compute_gaussian_fit, save_model
from pulse_jax.progress import Progress

# torch.save's legacy (non-zip) files open with a pickled magic number (protocol 2, a 10-byte long).
TORCH_LEGACY_MAGIC = b"\x80\x02\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19"


def file_kind(path: Path) -> str:
    """'torch' (a torch.save file: rosinality's) or 'pickle' (a plain pickle: NVIDIA's), from its bytes."""
    with open(path, "rb") as f:
        head = f.read(len(TORCH_LEGACY_MAGIC))
    if zipfile.is_zipfile(path) or head == TORCH_LEGACY_MAGIC:
        return "torch"
    if head[:1] == b"\x80":
        return "pickle"
    raise CheckpointError(f"--network {path} is neither a pickle nor a torch.save file (it starts with "
                          f"{head[:8]!r}); give an NVIDIA network pickle (.pkl) or a rosinality checkpoint (.pt)")


def _arrays(tensors: dict, what: str) -> dict[str, np.ndarray]:
    import torch

    out = {}
    for name, t in tensors.items():
        if not isinstance(t, torch.Tensor) or not t.is_floating_point():
            raise CheckpointError(f"{what}: {name} is a {type(t).__name__} {getattr(t, 'dtype', '')}, "
                                  "expected a floating-point tensor")
        out[name] = t.detach().to(torch.float32).numpy()
    return out


def _setting(layers: list[Persistent], name: str, what: str, default=None):
    """One setting every listed record keeps as a plain attribute (they must agree)."""
    values = {repr(r.state.get(name, default)): r.state.get(name, default) for r in layers}
    if len(values) > 1:
        raise CheckpointError(f"{what}: the layers disagree on {name} ({', '.join(values)}): not supported")
    value = next(iter(values.values()), default)
    return value.item() if isinstance(value, np.generic) else value


def generator_record(top, what: str) -> Persistent:
    """G_ema (else G) of a network pickle: NVIDIA's Generator record, unconditional, of RGB images."""
    if isinstance(top, dict):
        g = top.get("G_ema", top.get("G"))
        if g is None:
            raise CheckpointError(f"{what}: holds {sorted(map(str, top))[:8]}, no G_ema or G generator")
    elif isinstance(top, (list, tuple)):
        raise CheckpointError(f"{what}: holds a {type(top).__name__} of {len(top)}, where NVIDIA's network pickles "
                              "hold a dict (G, D, G_ema, ...)")
    else:
        g = top
    if not isinstance(g, Persistent) or g.class_name != "Generator":
        raise CheckpointError(f"{what}: the generator is a {getattr(g, 'class_name', type(g).__name__)}, "
                              "not NVIDIA's Generator")
    kwargs = g.init_kwargs()
    synthesis, mapping = g.modules().get("synthesis"), g.modules().get("mapping")
    if not isinstance(synthesis, Persistent) or not isinstance(mapping, Persistent):
        raise CheckpointError(f"{what}: the generator has no synthesis and mapping networks")
    c_dim = int_field(kwargs, "c_dim", any_field(g.state, "c_dim", 0, what) or 0, f"{what}: G", low=0)
    if c_dim > 0:
        raise CheckpointError(f"{what}: a conditional generator (c_dim {c_dim}: it needs a class label); "
                              "only unconditional generators are supported")
    channels = int_field(kwargs, "img_channels", any_field(g.state, "img_channels", 3, what), f"{what}: G", low=1)
    if channels != 3:
        raise CheckpointError(f"{what}: a generator of {channels}-channel images; only RGB (3) is supported")
    return g


def _provenance(g: Persistent) -> dict:
    return {"kind": "nvidia-network-pickle",
            "module_src_sha256": sorted({r.module_src_sha256 for _, r in records(g)})}


def nvidia_stylegan3(g: Persistent, what: str) -> tuple:
    """(config, synthesis tree, mapping tree, provenance) of a StyleGAN3 Generator record."""
    what = f"{what} (StyleGAN3)"
    config = stylegan3.config_from_records(g, what)
    tensors = {}
    for name in ("synthesis", "mapping"):
        tensors.update({f"{name}.{k}": v for k, v in flatten(g.modules()[name]).items()})
    arrays = _arrays(tensors, what)
    try:
        return (config, stylegan3.synthesis_arrays(arrays, config), stylegan3.mapping_arrays(arrays, config),
                _provenance(g))
    except CheckpointError as e:
        raise CheckpointError(f"{what}: {e}") from None


def nvidia_generator(top, what: str) -> tuple[dict, dict, dict]:
    """(NVIDIA-named arrays, architecture settings, provenance) of the StyleGAN2 generator in a network pickle."""
    g = generator_record(top, what)
    kwargs = g.init_kwargs()
    synthesis, mapping = g.modules()["synthesis"], g.modules()["mapping"]
    all_records = dict(records(g))
    blocks = [r for name, r in all_records.items() if name.startswith("synthesis.b")
              and name.count(".") == 1]
    architecture = _setting(blocks, "architecture", what, "skip")
    if architecture != "skip":
        raise CheckpointError(f"{what}: a StyleGAN2 generator of architecture {architecture!r}; only NVIDIA's "
                              "'skip' generator (config-f, ADA) is supported")
    layers = [r for name, r in all_records.items() if r.class_name in ("SynthesisLayer", "ToRGBLayer")]
    fcs = [r for name, r in all_records.items() if name.startswith("mapping.fc")]
    synthesis_kwargs = dict_field(kwargs, "synthesis_kwargs", f"{what}: G")
    clamp = {"conv_clamp": _setting(layers, "conv_clamp", what)}
    settings = {
        "conv_clamp": float_field(clamp, "conv_clamp", None, f"{what}: the synthesis layers", optional=True),
        "lr_multiplier": float_field({"lr_multiplier": _setting(fcs, "lr_multiplier", what, 0.01)}, "lr_multiplier",
                                     0.01, f"{what}: the mapping layers"),
        "channel_base": None if synthesis_kwargs.get("channel_base") is None else int_field(
            synthesis_kwargs, "channel_base", None, f"{what}: G.synthesis_kwargs", low=1),
    }
    if _setting(fcs, "activation", what, "lrelu") != "lrelu":
        raise CheckpointError(f"{what}: the mapping layers' activation is not lrelu: not supported")
    tensors = {}
    for name, net in (("synthesis", synthesis), ("mapping", mapping)):
        tensors.update({f"{name}.{k}": v for k, v in flatten(net).items()})
    return _arrays(tensors, what), settings, _provenance(g)


def rosinality_generator(obj, what: str) -> tuple[dict, dict, dict]:
    if not isinstance(obj, dict) or "g_ema" not in obj:
        keys = sorted(map(str, obj))[:8] if isinstance(obj, dict) else type(obj).__name__
        raise CheckpointError(f"{what}: a torch checkpoint without g_ema ({keys}): not a rosinality StyleGAN2 "
                              "checkpoint (for PULSE's synthesis.pt use --synthesis and --mapping)")
    if not isinstance(obj["g_ema"], dict):
        raise CheckpointError(f"{what}: g_ema is a {type(obj['g_ema']).__name__}, where a state dict of tensors "
                              "belongs")
    if "latent_avg" not in obj:
        raise CheckpointError(f"{what}: no latent_avg beside g_ema: a rosinality checkpoint keeps both")
    g_ema = _arrays(obj["g_ema"], f"{what} g_ema")
    latent_avg = _arrays({"latent_avg": obj["latent_avg"]}, what)["latent_avg"]
    sd = stylegan2.rosinality_to_nvidia(g_ema, latent_avg, what)
    return sd, {"conv_clamp": None, "lr_multiplier": 0.01, "channel_base": None}, {"kind": "rosinality-checkpoint"}


def _load_torch(path: Path, what: str):
    import torch

    torch_scan.scan(path, what)  # what it declares, checked before torch allocates it
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{what} was refused: it holds objects other than tensors and plain containers "
                              f"(torch said: {first[:300]}); nothing from it ran") from None
    except Exception as e:  # noqa: BLE001 - weights_only unpickling runs nothing; any error is damage
        raise CheckpointError(f"{what} is not a readable torch checkpoint ({type(e).__name__}: "
                              f"{str(e).strip()[:200]}); the file may be truncated") from None


# A network pickle of either era: the PyTorch records' globals and the TensorFlow ones, nothing else.
NETWORK_PICKLE_GLOBALS = {**nvidia_pickle.ALLOWED, **tf_pickle.ALLOWED}


def _is_tf(top) -> bool:
    return isinstance(top, tf_pickle.TFNetwork) or (
        isinstance(top, tuple) and any(isinstance(n, tf_pickle.TFNetwork) for n in top))


def read_network(path: str) -> Converted:
    """The generator in any of the files --network takes, in our terms. What a file's records hold is
    checked field by field where it is read; a record of a type no check foresaw still ends as one
    CheckpointError naming the file, not a traceback."""
    file = Path(path)
    what = f"--network {path}"
    if not file.is_file():
        raise CheckpointError(f"{what}: no such file" if not file.exists() else f"{what}: not a regular file")
    if file.stat().st_size == 0:
        raise CheckpointError(f"{what}: the file is empty")
    try:
        return _read_network(file, what)
    except RecursionError:
        raise CheckpointError(f"{what}: nested too deeply to be a network file") from None
    except (TypeError, ValueError, KeyError, IndexError, AttributeError) as e:
        raise CheckpointError(f"{what}: a record of an unexpected type or shape ({type(e).__name__}: "
                              f"{str(e)[:200]}); not a generator pulse-jax reads") from None


def _read_network(file: Path, what: str) -> Converted:
    if file_kind(file) == "pickle":
        top = read_network_pickle(file, "--network", NETWORK_PICKLE_GLOBALS)
        if _is_tf(top):
            converted = convert_tf_generator(tf_pickle.tf_generator(top, what), what)
            return dataclasses.replace(converted, source={**converted.source, "file_sha256": _sha256(file)})
        if stylegan3.is_stylegan3(generator_record(top, what)):
            config, synthesis, mapping, provenance = nvidia_stylegan3(generator_record(top, what), what)
            return Converted(config, synthesis, mapping, None, None, {**provenance, "file_sha256": _sha256(file)})
        sd, settings, provenance = nvidia_generator(top, what)
    else:
        sd, settings, provenance = rosinality_generator(_load_torch(file, what), what)
    config = stylegan2.config_from_state(sd, what, conv_clamp=settings["conv_clamp"],
                                         channel_base=settings["channel_base"],
                                         lr_multiplier=settings["lr_multiplier"])
    synthesis, mapping = stylegan2.to_params(sd, config, what)
    return Converted(config, synthesis, mapping, stylegan2.stored_noise(sd, config), None,
                     {**provenance, "file_sha256": _sha256(file)})


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def convert_network(*, network: str, out: str, gaussian_fit: str | None = None, overwrite: bool = False,
                    gaussian_fit_samples: int = 1_000_000, verbose: bool = True) -> Path:
    """Read, check, fit (PULSE's recipe) and save; every check runs before anything is written."""
    log = (lambda msg: print(msg, file=sys.stderr)) if verbose else (lambda msg: None)
    check_out(out, overwrite, {"--network": network, "--gaussian-fit": gaussian_fit})
    if gaussian_fit is None and gaussian_fit_samples < 2:
        raise PulseJaxError(f"--fit-samples must be at least 2 (a standard deviation needs two samples), "
                            f"got {gaussian_fit_samples}")
    network_file = read_network(network)
    config = network_file.config
    log(f"network ({network_file.source['kind']}): {config}")
    fit = None
    if gaussian_fit is not None:
        fit = pulse_format.gaussian_fit_arrays(load_state_dict(gaussian_fit, "gaussian fit"), config.dlatent_size,
                                               f"gaussian fit {gaussian_fit}")
    model = Model.from_arrays(config, network_file.synthesis, network_file.mapping, fit,
                              stored_noise=network_file.noise, stored_w_avg=network_file.w_avg)
    if fit is None:
        bar = Progress(gaussian_fit_samples, "gaussian fit", "samples", enabled=verbose)
        fit = compute_gaussian_fit(model, num_samples=gaussian_fit_samples,
                                   progress=lambda done, total: bar.update(done - bar.count))
        model = model.with_gaussian_fit(fit)
    return save_model(model, out, overwrite=overwrite, source=network_file.source)
