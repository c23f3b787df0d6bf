"""Random StyleGAN3 networks in NVIDIA's names and layouts, as ``training.networks_stylegan3`` keeps them:
every parameter random (affine biases near 1, the input's affine away from the identity), the filters
designed with scipy as NVIDIA designs them, each layer's magnitude average measured on the network's own
activations (the reference run layer by layer in float64)."""

from __future__ import annotations

import math
from collections import OrderedDict

import numpy as np
import scipy.signal
import scipy.special
import torch
from reference import stylegan3_torch as ref


def nvidia_filter(numtaps, cutoff, width, fs, radial=False):
    """NVIDIA's design_lowpass_filter, with scipy (None for one tap)."""
    if numtaps == 1:
        return None
    if not radial:
        return torch.as_tensor(scipy.signal.firwin(numtaps=numtaps, cutoff=cutoff, width=width, fs=fs),
                               dtype=torch.float32)
    x = (np.arange(numtaps) - (numtaps - 1) / 2) / fs
    r = np.hypot(*np.meshgrid(x, x))
    f = scipy.special.j1(2 * cutoff * (np.pi * r)) / (np.pi * r)
    beta = scipy.signal.kaiser_beta(scipy.signal.kaiser_atten(numtaps, width / (fs / 2)))
    w = np.kaiser(numtaps, beta)
    f *= np.outer(w, w)
    return torch.as_tensor(f / np.sum(f), dtype=torch.float32)


def rotation_translation(angle: float, tx: float, ty: float) -> torch.Tensor:
    """A user transform as NVIDIA's gen_images.py builds one (the inverse of rotate-then-translate)."""
    c, s = math.cos(angle), math.sin(angle)
    m = torch.tensor([[c, s, 0.0], [-s, c, 0.0], [0.0, 0.0, 1.0]]) @ torch.tensor([[1.0, 0, tx], [0, 1, ty], [0, 0, 1]])
    return torch.linalg.inv(m)


def random_state(config, seed: int = 0, transform: torch.Tensor | None = None, calibration_samples: int = 4) -> dict:
    """{NVIDIA name: float32 tensor} of a Generator's synthesis and mapping networks."""
    g = torch.Generator().manual_seed(seed)

    def randn(*shape, std=1.0):
        return torch.randn(*shape, generator=g) * std

    d, inp = config.dlatent_size, config.input_spec()
    c = inp.channels
    freqs = randn(c, 2)
    radii = freqs.square().sum(dim=1, keepdim=True).sqrt()
    freqs = freqs / (radii * radii.square().exp().pow(0.25)) * inp.bandwidth
    p = {"synthesis.input.affine.weight": randn(4, d, std=0.3),
         "synthesis.input.affine.bias": torch.tensor([1.0, 0, 0, 0]) + randn(4, std=0.2),
         "synthesis.input.weight": randn(c, c), "synthesis.input.freqs": freqs,
         "synthesis.input.phases": torch.rand(c, generator=g) - 0.5,
         "synthesis.input.transform": torch.eye(3) if transform is None else transform.float()}
    for i, spec in enumerate(config.layer_specs()):
        pre = f"synthesis.{ref.layer_name(i, spec)}"
        k = spec.conv_kernel
        p[f"{pre}.affine.weight"] = randn(spec.in_channels, d)
        p[f"{pre}.affine.bias"] = 1.0 + randn(spec.in_channels, std=0.1)
        p[f"{pre}.weight"] = randn(spec.out_channels, spec.in_channels, k, k)
        p[f"{pre}.bias"] = randn(spec.out_channels, std=0.1)
        p[f"{pre}.magnitude_ema"] = torch.ones(())
        tmp = spec.in_sampling_rate * spec.up
        up = nvidia_filter(spec.up_taps, spec.in_cutoff, spec.in_half_width * 2, tmp)
        down = nvidia_filter(spec.down_taps, spec.out_cutoff, spec.out_half_width * 2, tmp, spec.down_radial)
        if up is not None:
            p[f"{pre}.up_filter"] = up
        if down is not None:
            p[f"{pre}.down_filter"] = down
    for i in range(config.mapping_layers):  # stored divided by the lr multiplier, as NVIDIA stores them
        p[f"mapping.fc{i}.weight"] = randn(d, d, std=1 / config.mapping_lr_multiplier)
        p[f"mapping.fc{i}.bias"] = randn(d, std=0.1 / config.mapping_lr_multiplier)
    p["mapping.w_avg"] = randn(d)
    calibrate(p, config, randn(calibration_samples, config.num_ws, d))
    return p


def calibrate(p: dict, config, ws: torch.Tensor) -> None:
    """Each layer's magnitude_ema: the mean square of its input, in float64, layer by layer."""
    p64 = {k: v.double() for k, v in p.items()}
    ws = ws.double()
    x = ref.synthesis_input(p64, "synthesis.input", ws[:, 0], config.input_spec())
    for i, spec in enumerate(config.layer_specs()):
        pre = f"synthesis.{ref.layer_name(i, spec)}"
        p[f"{pre}.magnitude_ema"] = x.square().mean().float()
        p64[f"{pre}.magnitude_ema"] = x.square().mean()
        x = ref.synthesis_layer(p64, pre, spec, config, x, ws[:, i + 1])


# ---- NVIDIA's network pickle structure (training.networks_stylegan3) ---------------------------------------

MODULE_SRC = "# stands in for training/networks_stylegan3.py: a real file carries the whole source here\n"


def _fc(p, name, lr_multiplier=1.0, activation="linear", module_src=MODULE_SRC):
    from stylegan2_files import Net

    w = p[f"{name}.weight"]
    return Net("FullyConnectedLayer", {"weight": w, "bias": p[f"{name}.bias"]}, module_src=module_src,
               init_kwargs={"in_features": w.shape[1], "out_features": w.shape[0], "activation": activation,
                            "lr_multiplier": lr_multiplier},
               in_features=w.shape[1], out_features=w.shape[0], activation=activation,
               weight_gain=np.float64(lr_multiplier / np.sqrt(w.shape[1])), bias_gain=lr_multiplier)


def nvidia_generator(p: dict, config, *, module_src: str = MODULE_SRC, c_dim: int = 0):
    """The state ``random_state`` drew as NVIDIA's StyleGAN3 G: persistent records with their settings as
    NVIDIA's classes keep them (sizes as numpy arrays, cutoffs as numpy floats, the keyword arguments)."""
    from stylegan2_files import EasyDict, Net

    inp = config.input_spec()
    layer_kwargs = {"conv_kernel": config.conv_kernel, "use_radial_filters": config.radial_filters,
                    "conv_clamp": config.conv_clamp, "filter_size": config.filter_size,
                    "lrelu_upsampling": config.lrelu_upsampling, "magnitude_ema_beta": 0.999}
    synthesis_kwargs = {"channel_base": config.channel_base, "channel_max": config.channel_max,
                        "num_layers": config.num_layers, "num_critical": config.num_critical,
                        "margin_size": config.margin_size, "output_scale": config.output_scale,
                        "num_fp16_res": 4, **layer_kwargs}
    modules = OrderedDict()
    modules["input"] = Net(
        "SynthesisInput", {"weight": p["synthesis.input.weight"]},
        {k: p[f"synthesis.input.{k}"] for k in ("transform", "freqs", "phases")},
        OrderedDict(affine=_fc(p, "synthesis.input.affine", module_src=module_src)), module_src=module_src,
        init_kwargs={"w_dim": config.dlatent_size, "channels": inp.channels, "size": inp.size,
                     "sampling_rate": np.float64(inp.sampling_rate), "bandwidth": np.float64(inp.bandwidth)},
        w_dim=config.dlatent_size, channels=inp.channels, size=np.broadcast_to(np.asarray(inp.size), [2]),
        sampling_rate=np.float64(inp.sampling_rate), bandwidth=np.float64(inp.bandwidth))
    names = []
    for i, s in enumerate(config.layer_specs()):
        name = ref.layer_name(i, s)
        names.append(name)
        pre = f"synthesis.{name}"
        buffers = OrderedDict(magnitude_ema=p[f"{pre}.magnitude_ema"], up_filter=p.get(f"{pre}.up_filter"),
                              down_filter=p.get(f"{pre}.down_filter"))
        modules[name] = Net(
            "SynthesisLayer", {"weight": p[f"{pre}.weight"], "bias": p[f"{pre}.bias"]}, buffers,
            OrderedDict(affine=_fc(p, f"{pre}.affine", module_src=module_src)), module_src=module_src,
            init_kwargs={"w_dim": config.dlatent_size, "is_torgb": s.is_torgb, **layer_kwargs},
            w_dim=config.dlatent_size, is_torgb=s.is_torgb, is_critically_sampled=s.is_critically_sampled,
            use_fp16=False, in_channels=s.in_channels, out_channels=s.out_channels,
            in_size=np.broadcast_to(np.asarray(s.in_size), [2]), out_size=np.broadcast_to(np.asarray(s.out_size), [2]),
            in_sampling_rate=s.in_sampling_rate, out_sampling_rate=s.out_sampling_rate,
            tmp_sampling_rate=np.float64(s.in_sampling_rate * s.up), in_cutoff=np.float64(s.in_cutoff),
            out_cutoff=np.float64(s.out_cutoff), in_half_width=np.float64(s.in_half_width),
            out_half_width=np.float64(s.out_half_width), conv_kernel=s.conv_kernel, conv_clamp=config.conv_clamp,
            magnitude_ema_beta=0.999, up_factor=s.up, up_taps=s.up_taps, down_factor=s.down, down_taps=s.down_taps,
            down_radial=s.down_radial, padding=[s.padding[0], s.padding[1], s.padding[0], s.padding[1]])
    synthesis = Net("SynthesisNetwork", modules=modules, module_src=module_src,
                    init_kwargs={"w_dim": config.dlatent_size, "img_resolution": config.resolution,
                                 "img_channels": 3, **synthesis_kwargs},
                    w_dim=config.dlatent_size, num_ws=config.num_ws, img_resolution=config.resolution,
                    img_channels=3, num_layers=config.num_layers, num_critical=config.num_critical,
                    margin_size=config.margin_size, output_scale=config.output_scale, num_fp16_res=4,
                    layer_names=names)
    mapping = Net("MappingNetwork", buffers={"w_avg": p["mapping.w_avg"]}, module_src=module_src,
                  modules=OrderedDict((f"fc{i}", _fc(p, f"mapping.fc{i}", config.mapping_lr_multiplier, "lrelu",
                                                     module_src)) for i in range(config.mapping_layers)),
                  init_kwargs={"z_dim": 512, "c_dim": c_dim, "w_dim": config.dlatent_size, "num_ws": config.num_ws,
                               "num_layers": config.mapping_layers},
                  z_dim=512, c_dim=c_dim, w_dim=config.dlatent_size, num_ws=config.num_ws,
                  num_layers=config.mapping_layers, w_avg_beta=0.998)
    kwargs = EasyDict(z_dim=512, c_dim=c_dim, w_dim=config.dlatent_size, img_resolution=config.resolution,
                      img_channels=3, mapping_kwargs=EasyDict(num_layers=config.mapping_layers), **synthesis_kwargs)
    return Net("Generator", modules=OrderedDict(synthesis=synthesis, mapping=mapping), init_kwargs=kwargs,
               module_src=module_src, z_dim=512, c_dim=c_dim, w_dim=config.dlatent_size,
               img_resolution=config.resolution, img_channels=3, num_ws=config.num_ws)
