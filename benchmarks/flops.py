"""Useful FLOPs of one search step for one seed, counted from the architecture.

Convolutions and style linears dominate; a step is the forward pass plus the
backward pass for the data gradients only (the generator's weights are fixed,
so no weight gradients): about twice the forward FLOPs. The fused upsampling
is counted as the transposed convolution it is (each input pixel times a
4x4 kernel), not as the zero-dilated convolution XLA may run.
"""

from __future__ import annotations

from pulse_jax.stylegan import FUSED_UPSAMPLE_FROM, StyleGANConfig


def synthesis_forward_flops(c: StyleGANConfig) -> int:
    d = c.dlatent_size
    total = 0
    for res in c.block_resolutions():
        ch = c.block_channels(res)
        total += 2 * (2 * d * 2 * ch)  # two style linears (512 -> 2C)
        if res == 4:
            total += 2 * res * res * ch * ch * 9
            continue
        c_in = c.block_channels(res // 2)
        if res >= FUSED_UPSAMPLE_FROM:
            total += 2 * (res // 2) ** 2 * c_in * ch * 16
        else:
            total += 2 * res * res * c_in * ch * 9
        total += 2 * res * res * ch * ch * 9
    total += 2 * c.resolution**2 * c.block_channels(c.resolution) * 3
    return total


def search_step_flops(c: StyleGANConfig) -> int:
    return 2 * synthesis_forward_flops(c)
