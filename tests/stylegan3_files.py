"""Random StyleGAN3 networks in NVIDIA's names and layouts, as ``training.networks_stylegan3`` keeps them:
every parameter random (affine biases near 1, the input's affine away from the identity), the filters
designed with scipy as NVIDIA designs them, each layer's magnitude average measured on the network's own
activations (the reference run layer by layer in float64)."""

from __future__ import annotations

import math

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
