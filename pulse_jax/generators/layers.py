"""StyleGAN v1 building blocks in Flax NNX, NHWC, with equalised learning rate.

Stored parameters are the checkpoint's numbers (only transposed to NHWC/HWIO);
the run-time multipliers (``w_mul``, ``b_mul``) are applied here, as in the
reference (docs/stylegan.md, "Shared pieces").
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from flax import nnx
from jax import lax

from pulse_jax.generators import winograd as winograd_conv

LEAKY_SLOPE = 0.2
INSTANCE_NORM_EPS = 1e-5

# Precision of every convolution and matmul in the generator. "highest" is float32 on every backend
# (no TF32 on GPU); "default" lets the backend choose (TF32 on NVIDIA GPUs); "bfloat16" feeds bf16
# operands and accumulates in float32. Normalisation, noise and the losses stay float32 throughout.
PRECISIONS = {
    "highest": lax.Precision.HIGHEST,
    "default": lax.Precision.DEFAULT,
    "bfloat16": lax.Precision.DEFAULT,
}


def matmul_operands(precision: str, *arrays: jax.Array) -> tuple[list[jax.Array], dict]:
    """Operands and keyword arguments for a dot or convolution at the named precision."""
    if precision == "bfloat16":
        return [a.astype(jnp.bfloat16) for a in arrays], {"preferred_element_type": jnp.float32}
    return list(arrays), {"precision": PRECISIONS[precision]}


def leaky_relu(x: jax.Array, slope: float = LEAKY_SLOPE) -> jax.Array:
    return jnp.where(x >= 0, x, x * slope)


def normalize_2nd_moment(z: jax.Array) -> jax.Array:
    """The mapping networks' first step: each latent over the root of its mean square (+ 1e-8)."""
    return z * lax.rsqrt(jnp.mean(jnp.square(z), axis=-1, keepdims=True) + 1e-8)


def per_channel(v: jax.Array, ndim: int) -> jax.Array:
    """A (C,) vector shaped to broadcast over the last axis of an ndim array (no rank promotion)."""
    return v.reshape((1,) * (ndim - 1) + (-1,))


def standard_normal(key: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    """``jax.random.normal(key, shape, float32)``, the same bits, drawn flat and reshaped: XLA:CPU compiles
    the multi-dimensional form of the (partitionable) threefry draw far slower, and every init and search
    start draws (benchmarks/RESULTS.md, "Measurements behind the code")."""
    return jax.random.normal(key, (math.prod(shape),), jnp.float32).reshape(shape)


def _normal(rngs: nnx.Rngs, shape: tuple[int, ...], std: float = 1.0) -> nnx.Param:
    return nnx.Param(std * standard_normal(rngs.params(), shape))


class Prepared(nnx.Variable):
    """A form of a parameter computed once for a search (scaled, rearranged), not a checkpoint value.

    ``prepare_for_search`` swaps the checkpoint's kernels for the forms each step uses, so that a step
    does not redo per-parameter work whose result never changes: on XLA:CPU, where each step is its own
    compiled call, scaling every kernel and transposing it for the backward pass was a seventh of a step
    (benchmarks/RESULTS.md, "Measurements behind the code"). Same function, same numbers: only where they
    are computed moves.
    """


class Dense(nnx.Module):
    """Equalised-lr linear layer: ``x @ (kernel * w_mul) + bias * b_mul``.

    kernel (in, out) is the transpose of the torch weight (out, in).
    """

    def __init__(self, n_in: int, n_out: int, *, gain: float, lrmul: float, rngs: nnx.Rngs):
        self.kernel = _normal(rngs, (n_in, n_out), 1.0 / lrmul)
        self.bias = _normal(rngs, (n_out,), 0.1 / lrmul)
        self.w_mul = gain / math.sqrt(n_in) * lrmul
        self.b_mul = lrmul

    def __call__(self, x: jax.Array, precision: str) -> jax.Array:
        (a, b), kw = matmul_operands(precision, x, self.kernel[...] * self.w_mul)
        y = jnp.dot(a, b, **kw)
        return y + per_channel(self.bias[...] * self.b_mul, y.ndim)

    def prepare_for_search(self) -> None:
        self.kernel = Prepared(self.kernel[...] * self.w_mul)
        self.bias = Prepared(self.bias[...] * self.b_mul)
        self.w_mul = self.b_mul = 1.0  # XLA drops a multiplication by 1


class Conv(nnx.Module):
    """Equalised-lr k x k convolution, stride 1, 'same' zero padding, HWIO kernel."""

    def __init__(self, c_in: int, c_out: int, k: int, *, gain: float, rngs: nnx.Rngs):
        self.kernel = _normal(rngs, (k, k, c_in, c_out))
        self.bias = _normal(rngs, (c_out,), 0.1)
        self.w_mul = gain / math.sqrt(c_in * k * k)
        self.adjoint = nnx.data(None)  # set by prepare_for_search
        self.winograd = False

    def scaled_kernel(self) -> jax.Array:
        return self.kernel[...] * self.w_mul

    def __call__(self, x: jax.Array, precision: str, *, add_bias: bool = True) -> jax.Array:
        if self.adjoint is None:
            y = conv_same(x, self.scaled_kernel(), precision)
        else:
            y = prepared_conv(x, self.kernel[...], self.adjoint[...], precision, self.winograd)
        return y + per_channel(self.bias[...], y.ndim) if add_bias else y

    def prepare_for_search(self, winograd: bool = False) -> None:
        """``winograd``: run this 3x3 convolution by Winograd's F(2x2, 3x3) (pulse_jax.generators.winograd); the
        kernel and its adjoint are kept in its transformed form."""
        kernel, adjoint = prepare_conv(self.scaled_kernel(), winograd)
        self.kernel, self.adjoint = Prepared(kernel), Prepared(adjoint)
        self.w_mul = 1.0
        self.winograd = winograd


def use_winograd(res: int, channels: int) -> bool:
    """Where Winograd's F(2x2, 3x3) beat XLA:CPU's own 3x3 convolution, one layer at a time: 512 channels at
    8-32 px, 256 at 64 px; at 128 px and 128 channels it lost (benchmarks/RESULTS.md, "Measurements behind
    the code"). Not measured on a GPU, where it is off by default."""
    return res <= 32 and channels >= 256


def prepare_conv(kernel: jax.Array, winograd: bool = False) -> tuple[jax.Array, jax.Array]:
    """A 'same' convolution's (kernel, adjoint) in the form ``prepared_conv`` takes: as they are, or for a 3x3
    kernel with ``winograd``, both transformed for Winograd's F(2x2, 3x3)."""
    adjoint = adjoint_kernel(kernel)
    if winograd:
        return winograd_conv.transform_kernel(kernel), winograd_conv.transform_kernel(adjoint)
    return kernel, adjoint


def prepared_conv(x: jax.Array, kernel: jax.Array, adjoint: jax.Array, precision: str, winograd: bool) -> jax.Array:
    """The 'same' convolution with what ``prepare_conv`` gave; the backward pass uses the adjoint."""
    if winograd:
        return _linear_given_adjoint(_winograd_conv, _winograd_conv, x, kernel, adjoint, precision)
    return conv_same(x, kernel, precision, adjoint)


def _winograd_conv(x: jax.Array, transformed: jax.Array, precision: str) -> jax.Array:
    # The transforms stay float32; only the matmuls take the precision's operands.
    (transformed,), kw = matmul_operands(precision, transformed)
    return winograd_conv.conv3x3(x, transformed, kw)


def _conv(x: jax.Array, kernel: jax.Array, precision: str, padding: int | None = None) -> jax.Array:
    """Stride-1 convolution, NHWC x HWIO, zero padding ``padding`` (default: 'same' for odd kernels)."""
    pad = kernel.shape[0] // 2 if padding is None else padding
    (x, k), kw = matmul_operands(precision, x, kernel)
    return lax.conv_general_dilated(x, k, (1, 1), ((pad, pad), (pad, pad)),
                                    dimension_numbers=("NHWC", "HWIO", "NHWC"), **kw)


def adjoint_kernel(kernel: jax.Array) -> jax.Array:
    """The HWIO kernel whose convolution is the transpose of ``kernel``'s: flipped in space, input and
    output channels swapped (for a 'same' convolution, and for the phase convolution below)."""
    return jnp.swapaxes(kernel[::-1, ::-1], 2, 3)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1, 5))
def _linear_given_adjoint(apply, apply_adjoint, x, kernel, adjoint, precision):
    return apply(x, kernel, precision)


def _linear_given_adjoint_fwd(apply, apply_adjoint, x, kernel, adjoint, precision):
    return apply(x, kernel, precision), (x, kernel, adjoint)


def _linear_given_adjoint_bwd(apply, apply_adjoint, precision, residuals, g):
    x, kernel, adjoint = residuals
    # The kernel's gradient as autodiff has it; a search never asks for it, and XLA drops it then.
    kernel_grad = jax.vjp(lambda k: apply(x, k, precision), kernel)[1](g)[0]
    # The output does not depend on ``adjoint``: it only stands in for ``kernel`` in the line below.
    return apply_adjoint(g, adjoint, precision), kernel_grad, jnp.zeros_like(adjoint)


_linear_given_adjoint.defvjp(_linear_given_adjoint_fwd, _linear_given_adjoint_bwd)
linear_given_adjoint = _linear_given_adjoint  # for the other families' own linear maps


def conv_same(x: jax.Array, kernel: jax.Array, precision: str, adjoint: jax.Array | None = None) -> jax.Array:
    """Stride-1 'same' convolution, NHWC x HWIO. Given ``adjoint_kernel(kernel)`` (computed once, see
    Prepared), the backward pass convolves with it, instead of transposing ``kernel`` at every step."""
    if adjoint is None:
        return _conv(x, kernel, precision)
    return _linear_given_adjoint(_conv, _conv, x, kernel, adjoint, precision)


def upsample_nearest_2x(x: jax.Array) -> jax.Array:
    b, h, w, c = x.shape
    x = jnp.broadcast_to(x[:, :, None, :, None, :], (b, h, 2, w, 2, c))
    return x.reshape(b, 2 * h, 2 * w, c)


def fused_upsample_kernel(k3: jax.Array) -> jax.Array:
    """The reference's fused-upscale kernel: (3, 3, I, O) -> transposed-conv (4, 4, I, O).

    Zero-pad to 5x5, then k4[a, b] = k5[a+1, b+1] + k5[a, b+1] + k5[a+1, b] + k5[a, b].
    """
    k5 = jnp.pad(k3, ((1, 1), (1, 1), (0, 0), (0, 0)))
    return k5[1:, 1:] + k5[:-1, 1:] + k5[1:, :-1] + k5[:-1, :-1]


def conv_transpose_2x_dilated(x: jax.Array, k4: jax.Array, precision: str) -> jax.Array:
    """torch's ``conv_transpose2d(x, k, stride=2, padding=1)`` with k (4, 4, I, O), the textbook way.

    A transposed convolution is a convolution of the 2x-dilated input with the
    spatially flipped kernel, padded by kernel - 1 - padding = 2 on each side.
    Three quarters of its products are with inserted zeros, and XLA:CPU runs it
    several times slower than the phase form below (benchmarks/RESULTS.md).
    """
    (x, k), kw = matmul_operands(precision, x, k4[::-1, ::-1])
    return lax.conv_general_dilated(x, k, (1, 1), ((2, 2), (2, 2)), lhs_dilation=(2, 2),
                                    dimension_numbers=("NHWC", "HWIO", "NHWC"), **kw)


# A 2x upsampling followed by a convolution, written as one 2x2 convolution per output phase: output
# pixel 2m + p is input pixels m - 1 + p (tap 0) and m + p (tap 1), each through the sum of the kernel
# rows listed for that phase and tap. The transposed convolution's even outputs take rows 3 and 1 of
# its 4x4 kernel, odd ones rows 2 and 0; nearest-neighbour upsampling then a 3x3 convolution reads
# input m - 1 through row 0 and input m through rows 1 and 2 for an even output, and so on.
TRANSPOSED_CONV_TAPS = (((3,), (1,)), ((2,), (0,)))
NEAREST_UPSAMPLE_CONV_TAPS = (((0,), (1, 2)), ((0, 1), (2,)))


def phase_kernel(kernel: jax.Array, taps=TRANSPOSED_CONV_TAPS) -> jax.Array:
    """(K, K, I, O) kernel -> (2, 2, I, 4*O) phase kernel, output channels (py, px, o); by default from
    the (4, 4, I, O) kernel of the transposed convolution."""
    def tap(py, px, ty, tx):
        return sum(kernel[a, b] for a in taps[py][ty] for b in taps[px][tx])

    return jnp.stack([
        jnp.stack([jnp.concatenate([tap(py, px, ty, tx) for py in (0, 1) for px in (0, 1)], axis=-1)
                   for tx in (0, 1)])
        for ty in (0, 1)
    ])


def upsample_conv_phase_kernel(k3: jax.Array) -> jax.Array:
    """(3, 3, I, O) -> the phase kernel of ``conv_same(upsample_nearest_2x(x), k3)``: 4 products per
    output pixel and input channel instead of 9."""
    return phase_kernel(k3, NEAREST_UPSAMPLE_CONV_TAPS)


def _phase_conv(x: jax.Array, phases: jax.Array, precision: str) -> jax.Array:
    # One 2x2 convolution of the input, zero-padded by 1, gives every phase on an (H+1, W+1) grid:
    # phase (py, px) of output pixel (m, n) sits at (m + py, n + px).
    b, h, w, _ = x.shape
    o = phases.shape[-1] // 4
    z = _conv(x, phases, precision, padding=1).reshape(b, h + 1, w + 1, 2, 2, o)
    rows = [jnp.stack([z[:, py:py + h, px:px + w, py, px] for px in (0, 1)], axis=3) for py in (0, 1)]
    return jnp.stack(rows, axis=2).reshape(b, 2 * h, 2 * w, o)


def _phase_conv_transpose(g: jax.Array, adjoint: jax.Array, precision: str) -> jax.Array:
    # The forward pass backwards: each phase of g back to its place on the (H+1, W+1) grid, then a 2x2
    # convolution with the adjoint kernel. An unpadded one would do, but XLA:CPU sends an unpadded 2x2
    # convolution to YNNPACK, slower here than Eigen, which gets the padded one (benchmarks/RESULTS.md):
    # pad by 1 and drop the first and last rows and columns of the result.
    b, h2, w2, o = g.shape
    h, w = h2 // 2, w2 // 2
    g = g.reshape(b, h, 2, w, 2, o)
    grid = jnp.stack([jnp.stack([jnp.pad(g[:, :, py, :, px], ((0, 0), (py, 1 - py), (px, 1 - px), (0, 0)))
                                 for px in (0, 1)], axis=3) for py in (0, 1)], axis=3)
    return _conv(grid.reshape(b, h + 1, w + 1, 4 * o), adjoint, precision, padding=1)[:, 1:h + 1, 1:w + 1]


def conv_transpose_2x_phases(x: jax.Array, k4: jax.Array, precision: str) -> jax.Array:
    """The same function as one 2x2 convolution to 4*O channels (one per output phase), then
    depth-to-space: every product is with a kernel tap, none with an inserted zero."""
    return phase_conv(x, phase_kernel(k4), precision)


def phase_conv(x: jax.Array, phases: jax.Array, precision: str, adjoint: jax.Array | None = None) -> jax.Array:
    """x (B, H, W, I) and a phase kernel (2, 2, I, 4*O) -> (B, 2H, 2W, O). Given
    ``adjoint_kernel(phases)``, the backward pass convolves with it (see conv_same)."""
    if adjoint is None:
        return _phase_conv(x, phases, precision)
    return _linear_given_adjoint(_phase_conv, _phase_conv_transpose, x, phases, adjoint, precision)


TRANSPOSED_CONV_IMPLS = {"phases": conv_transpose_2x_phases, "dilated": conv_transpose_2x_dilated}


def conv_transpose_2x(x: jax.Array, k4: jax.Array, precision: str, impl: str = "phases") -> jax.Array:
    """torch's ``conv_transpose2d(x, k, stride=2, padding=1)``: x (B, H, W, I), k4 (4, 4, I, O)."""
    return TRANSPOSED_CONV_IMPLS[impl](x, k4, precision)


def _blur_shifted_adds(x: jax.Array) -> jax.Array:
    p = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    v = p[:, :-2] + 2.0 * p[:, 1:-1] + p[:, 2:]
    return (v[:, :, :-2] + 2.0 * v[:, :, 1:-1] + v[:, :, 2:]) * (1.0 / 16.0)


@jax.custom_vjp
def blur(x: jax.Array) -> jax.Array:
    """Depthwise [1,2,1] x [1,2,1] / 16 filter with zero padding 1, as shifted adds.

    XLA's depthwise convolutions are slow (jax-ml/jax#13800); shifted adds fuse instead.
    The filter is symmetric and zero-padded, so it is its own adjoint: the backward pass
    is the same one fused pass, where autodiff of the pads and slices would write three
    padded copies of the gradient (fewer bytes per search step: benchmarks/RESULTS.md).
    """
    return _blur_shifted_adds(x)


blur.defvjp(lambda x: (_blur_shifted_adds(x), None), lambda _, g: (_blur_shifted_adds(g),))


def instance_norm_stats(x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Per sample and channel over H, W: (mean, 1 / sqrt(biased variance + eps)), each (B, 1, 1, C).

    One pass over x for both moments, taken about each channel's first pixel: as exact as the textbook
    two passes (the variance is shift-invariant, and a shift near the mean keeps E[d^2] - E[d]^2 from
    cancelling; E[x^2] - E[x]^2 would be off by 1e-3 where a channel's mean is 100x its std), without
    writing the centred copy that the second pass needs (fewer bytes per step: benchmarks/RESULTS.md).
    """
    shift = lax.stop_gradient(x[:, :1, :1])
    d = jnp.mean(x - shift, axis=(1, 2), keepdims=True)
    var = jnp.maximum(jnp.mean(jnp.square(x - shift), axis=(1, 2), keepdims=True) - jnp.square(d), 0.0)
    return shift + d, lax.rsqrt(var + INSTANCE_NORM_EPS)


class Epilogue(nnx.Module):
    """noise -> leaky ReLU -> instance norm -> style modulation."""

    def __init__(self, channels: int, dlatent_size: int, *, rngs: nnx.Rngs):
        self.noise_weight = _normal(rngs, (channels,), 0.1)
        self.style = Dense(dlatent_size, 2 * channels, gain=1.0, lrmul=1.0, rngs=rngs)

    def prepare_for_search(self) -> None:
        self.style.prepare_for_search()

    def __call__(self, x: jax.Array, w: jax.Array, noise: jax.Array, precision: str) -> jax.Array:
        """x (B, H, W, C); w (B, dlatent); noise (B, H, W)."""
        c = x.shape[-1]
        x = x + noise[..., None] * per_channel(self.noise_weight[...], x.ndim)
        x = leaky_relu(x)
        mean, inv_std = instance_norm_stats(x)
        style = self.style(w, precision)
        scale, shift = style[:, None, None, :c], style[:, None, None, c:]
        # (x - mean) * inv_std * (scale + 1) + shift, folded into one per-channel affine map: one pass
        # over the activations instead of a centred copy, a normalised copy and a modulated one (fewer
        # bytes per search step: benchmarks/RESULTS.md).
        gain = inv_std * (scale + 1.0)
        return x * gain + (shift - mean * gain)
