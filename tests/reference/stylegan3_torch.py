"""PyTorch reference of StyleGAN3's generator, written from docs/stylegan.md ("StyleGAN3") in the plain form
NVIDIA's reference paths take: NCHW, resampling by inserting zeros, padding and a grouped convolution,
decimation by slicing; the modulated convolution per sample (grouped). Parameters are given as a dict in
NVIDIA's names and layouts (``synthesis.input.weight`` (C, C) out x in, ``synthesis.L<i>_<size>_<C>.weight``
(O, I, k, k), ...): the tests draw them, write them to files, and compare.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F


def upfirdn2d(x: torch.Tensor, f: torch.Tensor | None, up: int = 1, down: int = 1, padding=(0, 0, 0, 0),
              gain: float = 1.0) -> torch.Tensor:
    """NVIDIA's upfirdn2d (reference path): zeros inserted, padded (x0, x1, y0, y1; negative crops), convolved
    with f (1-D: separable, each pass times sqrt(gain); 2-D: times gain), every down-th sample kept."""
    b, c, h, w = x.shape
    if f is None:
        f = torch.ones(1, 1, dtype=x.dtype)
    x = x.reshape(b, c, h, 1, w, 1)
    x = F.pad(x, [0, up - 1, 0, 0, 0, up - 1])
    x = x.reshape(b, c, h * up, w * up)
    x0, x1, y0, y1 = padding
    x = F.pad(x, [max(x0, 0), max(x1, 0), max(y0, 0), max(y1, 0)])
    x = x[:, :, max(-y0, 0): x.shape[2] - max(-y1, 0), max(-x0, 0): x.shape[3] - max(-x1, 0)]
    f = (f * gain ** (f.ndim / 2)).to(x.dtype).flip(list(range(f.ndim)))
    if f.ndim == 2:
        x = F.conv2d(x, f[None, None].repeat(c, 1, 1, 1), groups=c)
    else:
        x = F.conv2d(x, f[None, None, None].repeat(c, 1, 1, 1), groups=c)       # along the width
        x = F.conv2d(x, f[None, None, :, None].repeat(c, 1, 1, 1), groups=c)    # along the height
    return x[:, :, ::down, ::down]


def filtered_lrelu(x, fu, fd, b, up, down, padding, gain, slope, clamp):
    x = x + b[None, :, None, None]
    x = upfirdn2d(x, fu, up=up, padding=padding, gain=up ** 2)
    x = torch.where(x >= 0, x, x * slope) * gain
    if clamp is not None:
        x = x.clamp(-clamp, clamp)
    return upfirdn2d(x, fd, down=down)


def dense(x, weight, bias, lr_multiplier=1.0, act=None):
    y = x @ (weight * (lr_multiplier / math.sqrt(weight.shape[1]))).t() + bias * lr_multiplier
    if act == "lrelu":
        y = torch.where(y >= 0, y, y * 0.2) * math.sqrt(2)
    return y


def modulated_conv2d(x, weight, styles, demodulate, padding, input_gain):
    b = x.shape[0]
    o, i, kh, kw = weight.shape
    if demodulate:
        weight = weight * weight.square().mean([1, 2, 3], keepdim=True).rsqrt()
        styles = styles * styles.square().mean(dim=1, keepdim=True).rsqrt()  # per sample (see docs)
    w = weight[None] * styles[:, None, :, None, None]
    if demodulate:
        w = w * (w.square().sum(dim=[2, 3, 4]) + 1e-8).rsqrt()[:, :, None, None, None]
    w = w * input_gain
    x = F.conv2d(x.reshape(1, b * i, *x.shape[2:]), w.reshape(b * o, i, kh, kw), padding=padding, groups=b)
    return x.reshape(b, o, *x.shape[2:])


def synthesis_input(p, prefix, w, spec):
    t = dense(w, p[f"{prefix}.affine.weight"], p[f"{prefix}.affine.bias"])
    t = t / t[:, :2].norm(dim=1, keepdim=True)
    b = w.shape[0]
    m_r = torch.eye(3, dtype=w.dtype).repeat(b, 1, 1)
    m_r[:, 0, 0], m_r[:, 0, 1], m_r[:, 1, 0], m_r[:, 1, 1] = t[:, 0], -t[:, 1], t[:, 1], t[:, 0]
    m_t = torch.eye(3, dtype=w.dtype).repeat(b, 1, 1)
    m_t[:, 0, 2], m_t[:, 1, 2] = -t[:, 2], -t[:, 3]
    transforms = m_r @ m_t @ p[f"{prefix}.transform"][None]
    freqs, phases = p[f"{prefix}.freqs"][None], p[f"{prefix}.phases"][None]
    phases = phases + (freqs @ transforms[:, :2, 2:]).squeeze(2)
    freqs = freqs @ transforms[:, :2, :2]
    amplitudes = (1 - (freqs.norm(dim=2) - spec.bandwidth) / (spec.sampling_rate / 2 - spec.bandwidth)).clamp(0, 1)
    theta = torch.eye(2, 3, dtype=w.dtype)
    theta[0, 0] = theta[1, 1] = 0.5 * spec.size / spec.sampling_rate
    grids = F.affine_grid(theta[None], [1, 1, spec.size, spec.size], align_corners=False)
    x = (grids.unsqueeze(3) @ freqs.permute(0, 2, 1).unsqueeze(1).unsqueeze(2)).squeeze(3)
    x = torch.sin((x + phases[:, None, None]) * (2 * np.pi)) * amplitudes[:, None, None]
    weight = p[f"{prefix}.weight"] / math.sqrt(spec.channels)
    return (x @ weight.t()).permute(0, 3, 1, 2)


def layer_name(index: int, spec) -> str:
    return f"L{index}_{spec.out_size}_{spec.out_channels}"


def synthesis_layer(p: dict, pre: str, spec, config, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    styles = dense(w, p[f"{pre}.affine.weight"], p[f"{pre}.affine.bias"])
    if spec.is_torgb:
        styles = styles / math.sqrt(spec.in_channels * spec.conv_kernel ** 2)
    x = modulated_conv2d(x, p[f"{pre}.weight"], styles, demodulate=not spec.is_torgb,
                         padding=spec.conv_kernel - 1, input_gain=p[f"{pre}.magnitude_ema"].rsqrt())
    pad = [spec.padding[0], spec.padding[1], spec.padding[0], spec.padding[1]]
    return filtered_lrelu(x, p.get(f"{pre}.up_filter"), p.get(f"{pre}.down_filter"), p[f"{pre}.bias"],
                          spec.up, spec.down, pad, gain=1.0 if spec.is_torgb else math.sqrt(2),
                          slope=1.0 if spec.is_torgb else 0.2, clamp=config.conv_clamp)


def synthesis(p: dict, config, ws: torch.Tensor) -> torch.Tensor:
    """ws (B, num_ws, D) -> (B, 3, R, R), NVIDIA's synthesis in float32 or float64 (the params' dtype)."""
    x = synthesis_input(p, "synthesis.input", ws[:, 0], config.input_spec())
    for idx, spec in enumerate(config.layer_specs()):
        x = synthesis_layer(p, f"synthesis.{layer_name(idx, spec)}", spec, config, x, ws[:, idx + 1])
    return x * config.output_scale


def mapping(p: dict, config, z: torch.Tensor) -> torch.Tensor:
    x = z * (z.square().mean(1, keepdim=True) + 1e-8).rsqrt()
    for i in range(config.mapping_layers):
        x = dense(x, p[f"mapping.fc{i}.weight"], p[f"mapping.fc{i}.bias"], config.mapping_lr_multiplier, "lrelu")
    return x
