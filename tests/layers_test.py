"""Layer functions whose formulas are rewritten for speed, against the textbook forms in float64."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from pulse_jax.generators.layers import (
    INSTANCE_NORM_EPS,
    adjoint_kernel,
    instance_norm_stats,
    phase_conv,
    phase_kernel,
    upsample_conv_phase_kernel,
)


def test_instance_norm_stats_stay_exact_when_a_mean_dwarfs_its_spread():
    """Channels with mean / std from 0 to 1000 (1M pixels each): the one-pass moments match two passes in
    float64. Float32 rounding of the inputs alone is ~1e-7 relative; a naive E[x^2] - E[x]^2 misses by
    1.6e-3 at a ratio of 100, so 1e-6 tells the two apart."""
    rng = np.random.default_rng(0)
    ratios = np.array([0.0, 0.5, 10.0, 100.0, 1000.0])
    x = (ratios + rng.standard_normal((2, 1024, 1024, ratios.size))).astype(np.float32)
    x64 = x.astype(np.float64)
    mean = x64.mean(axis=(1, 2))
    inv_std = 1 / np.sqrt(((x64 - mean[:, None, None]) ** 2).mean(axis=(1, 2)) + INSTANCE_NORM_EPS)
    got_mean, got_inv_std = (np.asarray(a)[:, 0, 0] for a in jax.jit(instance_norm_stats)(x))
    assert np.abs(got_inv_std / inv_std - 1).max() < 1e-6
    # The mean to float32's own resolution at each magnitude (1000 has a spacing of 6e-5).
    assert np.all(np.abs(got_mean - mean) < 1e-6 * np.maximum(1.0, np.abs(mean)) + 1e-6)


def _transposed_conv_torch(x, k4):
    return torch.nn.functional.conv_transpose2d(x, k4.permute(2, 3, 0, 1), stride=2, padding=1)


def _nearest_upsample_conv_torch(x, k3):
    up = torch.nn.functional.interpolate(x, scale_factor=2, mode="nearest")
    return torch.nn.functional.conv2d(up, k3.permute(3, 2, 0, 1), padding=1)


UPSAMPLING_CONVS = {  # name: (kernel size, the textbook form in torch, our phase kernel)
    "transposed": (4, _transposed_conv_torch, phase_kernel),
    "nearest then 3x3": (3, _nearest_upsample_conv_torch, upsample_conv_phase_kernel),
}


@pytest.mark.parametrize("upsampling", sorted(UPSAMPLING_CONVS))
@pytest.mark.parametrize("shape", [(2, 6, 8, 5), (1, 5, 7, 3)])
def test_upsampling_convs_and_their_backward_passes_as_phase_convs(upsampling, shape):
    """Both upsampling convolutions (the fused blocks' transposed one, the others' nearest upsampling then
    3x3) as one 2x2 phase convolution of the small input, and its hand-written backward pass (the
    adjoint kernel on the phases put back on their grid), against torch and its autograd in float64, at
    even and odd sizes. Float32 sums of 4 * I products: ~1e-7 of the std; a phase or tap out of place,
    or an unflipped adjoint, is off by the whole std."""
    size, torch_form, our_phase_kernel = UPSAMPLING_CONVS[upsampling]
    rng = np.random.default_rng(sum(shape) + size)
    x = rng.standard_normal(shape)
    kernel = rng.standard_normal((size, size, shape[-1], 4))
    g = rng.standard_normal((shape[0], 2 * shape[1], 2 * shape[2], 4))
    xt = torch.from_numpy(x).permute(0, 3, 1, 2).requires_grad_()
    want = torch_form(xt, torch.from_numpy(kernel))
    want.backward(torch.from_numpy(g).permute(0, 3, 1, 2))
    want, want_grad = want.detach().permute(0, 2, 3, 1).numpy(), xt.grad.permute(0, 2, 3, 1).numpy()

    phases = our_phase_kernel(jnp.asarray(kernel, jnp.float32))
    adjoint = adjoint_kernel(phases)
    got, vjp = jax.vjp(lambda x_: phase_conv(x_, phases, "highest", adjoint), jnp.asarray(x, jnp.float32))
    (got_grad,) = vjp(jnp.asarray(g, jnp.float32))
    for a, b in ((got, want), (got_grad, want_grad)):
        assert np.abs(np.asarray(a) - b).max() < 1e-5 * b.std()
