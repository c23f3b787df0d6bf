"""Useful FLOPs of one search step for one seed, counted from the architecture.

Convolutions and style linears dominate; a step is the forward pass plus the
backward pass for the data gradients only (the generator's weights are fixed,
so no weight gradients): about twice the forward FLOPs. Both upsampling
convolutions are counted as we run them, one 2x2 phase convolution of the small
input per output phase (pulse_jax.generators.layers.phase_conv): 4 products per output
pixel and input channel. The reference runs the non-fused blocks' convolution
on the upsampled image, 9 products per output pixel (2.25x these layers'
count), and may run the fused one as a zero-dilated convolution.
"""

from __future__ import annotations

from pulse_jax.generators.stylegan1 import StyleGANConfig


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
        total += 2 * res * res * c_in * ch * 4  # upsampling convolution, fused or not
        total += 2 * res * res * ch * ch * 9
    total += 2 * c.resolution**2 * c.block_channels(c.resolution) * 3
    return total


def search_step_flops(c: StyleGANConfig) -> int:
    return 2 * synthesis_forward_flops(c)
