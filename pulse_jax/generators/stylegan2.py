"""StyleGAN2 (NVIDIA's "skip" generator: config-f and ADA) in Flax NNX, NHWC.

Formulas: docs/stylegan.md, "StyleGAN2". Stored parameters are the checkpoint's numbers
in our layout (dense kernels (in, out), conv kernels HWIO, the 4x4 constant (4, 4, C)); the equalised-lr
multipliers are applied here. The modulated convolution is in its shared-weight form: the input scaled
by the style, one convolution with the layer's single weight, the output scaled by the demodulation.
Under vmap that keeps one weight per layer, where the per-sample (grouped) form is slow in XLA's
backward pass (jax-ml/jax#13800).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import ClassVar

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax import lax

from pulse_jax.fields import option
from pulse_jax.generators.base import FlaxGenerator
from pulse_jax.generators.layers import (
    Dense,
    Prepared,
    adjoint_kernel,
    conv_same,
    leaky_relu,
    linear_given_adjoint,
    matmul_operands,
    normalize_2nd_moment,
    per_channel,
    phase_kernel,
    prepare_conv,
    prepared_conv,
    standard_normal,
    use_winograd,
)
from pulse_jax.generators.registry import Family

MAX_RESOLUTION = 4096
SQRT2 = math.sqrt(2.0)
DEMODULATION_EPS = 1e-8
# The resampling filter [1, 3, 3, 1] (outer product, sum 1), times 4 (the gain of a 2x upsampling).
_TAPS = np.array([1.0, 3.0, 3.0, 1.0])
UP_FILTER = (4.0 * np.outer(_TAPS, _TAPS) / np.outer(_TAPS, _TAPS).sum()).astype(np.float32)


@dataclasses.dataclass(frozen=True)
class BlockLayout:
    resolution: int
    num_conv: int   # convolutions: a W+ row and a noise map each
    num_torgb: int  # toRGB layers: a W+ row each, the first of the next block's rows


@dataclasses.dataclass(frozen=True)
class StyleGAN2Config:
    """Architecture of a StyleGAN2 "skip" generator (3 channels, unconditional); channels at resolution r
    are ``min(channel_base // r, channel_max)``. Defaults: NVIDIA's config-f at 1024."""

    resolution: int = 1024
    channel_base: int = 32768
    channel_max: int = 512
    dlatent_size: int = 512   # w_dim (= z_dim)
    mapping_layers: int = 8
    mapping_lr_multiplier: float = 0.01
    conv_clamp: float | None = None

    architecture: ClassVar[str] = "stylegan2"

    def __post_init__(self):
        r = self.resolution
        if not isinstance(r, int) or r < 4 or r > MAX_RESOLUTION or r & (r - 1):
            raise ValueError(f"resolution must be a power of two from 4 to {MAX_RESOLUTION}, got {r!r}")
        for name in ("channel_base", "channel_max", "dlatent_size", "mapping_layers"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if not (isinstance(self.mapping_lr_multiplier, (int, float)) and self.mapping_lr_multiplier > 0):
            raise ValueError(f"mapping_lr_multiplier must be > 0, got {self.mapping_lr_multiplier!r}")
        if self.conv_clamp is not None and not (isinstance(self.conv_clamp, (int, float)) and self.conv_clamp > 0):
            raise ValueError(f"conv_clamp must be None or > 0, got {self.conv_clamp!r}")
        if self.channels(r) < 1:
            raise ValueError(f"channel_base {self.channel_base} leaves the {r}x{r} block with no channels")

    def channels(self, res: int) -> int:
        return min(self.channel_base // res, self.channel_max)

    def block_resolutions(self) -> list[int]:
        return [2**k for k in range(2, int(math.log2(self.resolution)) + 1)]

    def layout(self) -> tuple[BlockLayout, ...]:
        """Each block's convolutions and toRGB layers: what the W+ rows and noise maps are counted from."""
        return tuple(BlockLayout(r, num_conv=1 if r == 4 else 2, num_torgb=1) for r in self.block_resolutions())

    @property
    def num_ws(self) -> int:
        """A row per convolution, and the last block's toRGB: every other toRGB shares its row with the
        next block's first convolution (NVIDIA counts them so). 18 at 1024."""
        layout = self.layout()
        return sum(b.num_conv for b in layout) + layout[-1].num_torgb

    def noise_shapes(self) -> tuple[tuple[int, int], ...]:
        """One map per convolution (none on toRGB): b4.conv1, then conv0 and conv1 of every later block,
        17 maps at 1024."""
        return tuple((b.resolution, b.resolution) for b in self.layout() for _ in range(b.num_conv))

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


PRESETS = {
    "ffhq_1024": StyleGAN2Config(),                                  # config-f, as NVIDIA's FFHQ file
    "small_256": StyleGAN2Config(resolution=256, channel_base=2048, channel_max=64, conv_clamp=256.0),
    "tiny_128": StyleGAN2Config(resolution=128, channel_base=4096, channel_max=64, conv_clamp=256.0),  # the demo's
    "tiny_64": StyleGAN2Config(resolution=64, channel_base=1024, channel_max=32, conv_clamp=256.0),
}


def _conv(x: jax.Array, kernel: jax.Array, precision: str, padding: int) -> jax.Array:
    (x, kernel), kw = matmul_operands(precision, x, kernel)
    return lax.conv_general_dilated(x, kernel, (1, 1), ((padding, padding), (padding, padding)),
                                    dimension_numbers=("NHWC", "HWIO", "NHWC"), **kw)


# The filter [1, 3, 3, 1] is separable: per axis [1, 3, 3, 1] / 4 (the 2-D filter times its gain 4).
# Both uses below are shifted adds along each axis, which XLA fuses; depthwise convolutions are slow
# in XLA (jax-ml/jax#13800), and a dilated one multiplies inserted zeros.


def _filter_axis(p: jax.Array, axis: int, n: int) -> jax.Array:
    """sum_j f[j] p[i + j] for i < n along ``axis``, f = [1, 3, 3, 1] / 4 (p is n + 3 long there)."""
    def part(j):
        return lax.slice_in_dim(p, j, j + n, axis=axis)
    return (part(0) + 3.0 * part(1) + 3.0 * part(2) + part(3)) * 0.25


def blur_4x4(y: jax.Array, h: int, w: int) -> jax.Array:
    """The filter (times 4) over (B, h + 3, w + 3, C), already padded: valid, -> (B, h, w, C)."""
    return _filter_axis(_filter_axis(y, 1, h), 2, w)


def _upsample_axis(x: jax.Array, axis: int) -> jax.Array:
    # Zeros between samples, padding 2 before and 1 after, the 4-tap filter: output 2m is
    # (x[m-1] + 3 x[m]) / 4 and output 2m+1 is (3 x[m] + x[m+1]) / 4, zero beyond the edges.
    n = x.shape[axis]
    p = jnp.pad(x, [(1, 1) if a == axis else (0, 0) for a in range(x.ndim)])
    def at(k):
        return lax.slice_in_dim(p, k, k + n, axis=axis)
    even, odd = (at(0) + 3.0 * at(1)) * 0.25, (3.0 * at(1) + at(2)) * 0.25
    both = jnp.stack([even, odd], axis=axis + 1)
    return both.reshape(x.shape[:axis] + (2 * n,) + x.shape[axis + 1:])


def upsample_2x(x: jax.Array) -> jax.Array:
    """NVIDIA's upsample2d (the image skip path): (B, H, W, C) -> (B, 2H, 2W, C)."""
    return _upsample_axis(_upsample_axis(x, 1), 2)


# conv0's transposed convolution (torch's conv_transpose2d(x, W.transpose(0, 1), stride=2), W as stored),
# all 2H + 2 outputs of each axis (the last is zero): output 2g + a is sum_t x[g - 1 + t] K[a + 2 - 2t],
# K the 3x3 kernel padded to 4 with a zero. So a 2x2 convolution of the input padded by 1, giving the
# four phases (a, b) on an (H + 1, W + 1) grid as 4 * O channels: 16 products per input channel and
# output pixel quartet where the transposed convolution has 9, and none with an inserted zero.
UP_TAPS = (((2,), (0,)), ((3,), (1,)))


def up_phase_kernel(kernel: jax.Array) -> jax.Array:
    """(3, 3, I, O) -> (2, 2, I, 4 * O), output channels (a, b, o)."""
    return phase_kernel(jnp.pad(kernel, ((0, 1), (0, 1), (0, 0), (0, 0))), UP_TAPS)


def _up_grid(x, phases, precision):
    return _conv(x, phases, precision, 1)


def _up_grid_adjoint(g, adjoint, precision):
    # Padded by 1 and cropped, as layers._phase_conv_transpose does (XLA:CPU sends an unpadded 2x2
    # convolution to a slower library).
    return _conv(g, adjoint, precision, 1)[:, 1:-1, 1:-1]


def conv_up(x: jax.Array, phases: jax.Array, adjoint: jax.Array | None, precision: str) -> jax.Array:
    """conv0: the transposed convolution, then the 4x4 filter with padding 1: (B, H, W, I) -> (B, 2H, 2W, O)."""
    b, h, w, _ = x.shape
    o = phases.shape[-1] // 4
    if adjoint is None:
        z = _up_grid(x, phases, precision)
    else:
        z = linear_given_adjoint(_up_grid, _up_grid_adjoint, x, phases, adjoint, precision)
    y = z.reshape(b, h + 1, w + 1, 2, 2, o).transpose(0, 1, 3, 2, 4, 5).reshape(b, 2 * h + 2, 2 * w + 2, o)
    # Padding 1 before the 2H + 1 outputs the transposed convolution has, and the zero 2H + 2nd is the
    # padding after: one more zero before, and the filter.
    return blur_4x4(jnp.pad(y, ((0, 0), (1, 0), (1, 0), (0, 0))), 2 * h, 2 * w)


class Affine(Dense):
    """The style affine of a layer: equalised dense (lr multiplier 1), stored biases near 1 (their init)."""

    def __init__(self, n_in: int, n_out: int, *, rngs: nnx.Rngs):
        super().__init__(n_in, n_out, gain=1.0, lrmul=1.0, rngs=rngs)
        self.bias = nnx.Param(1.0 + 0.1 * standard_normal(rngs.params(), (n_out,)))


class SynthesisLayer(nnx.Module):
    """Modulated, demodulated 3x3 convolution (x2 upsampling for conv0), noise, bias, lrelu, clamp."""

    def __init__(self, c_in: int, c_out: int, w_dim: int, *, up: bool, conv_clamp: float | None,
                 rngs: nnx.Rngs):
        self.affine = Affine(w_dim, c_in, rngs=rngs)
        self.weight = nnx.Param(standard_normal(rngs.params(), (3, 3, c_in, c_out)))
        self.bias = nnx.Param(0.1 * standard_normal(rngs.params(), (c_out,)))
        self.noise_strength = nnx.Param(0.1 * standard_normal(rngs.params(), ()))
        self.up = up
        self.conv_clamp = conv_clamp
        self.prepared = nnx.data(None)  # prepare_for_search: (power, kernel, adjoint) in the step's forms
        self.winograd = False

    def prepare_for_search(self, winograd: bool = False) -> None:
        """The demodulation's sum of squares per (I, O) and the convolution's kernel with its adjoint, once
        (the weight itself is kept: the same function, less work per step)."""
        weight = self.weight[...]
        power = jnp.sum(jnp.square(weight), axis=(0, 1))
        if self.up:
            phases = up_phase_kernel(weight)
            kernel, adjoint = phases, adjoint_kernel(phases)
        else:
            kernel, adjoint = prepare_conv(weight, winograd)
            self.winograd = winograd
        self.prepared = nnx.Dict({"power": Prepared(power), "kernel": Prepared(kernel), "adjoint": Prepared(adjoint)})
        self.affine.prepare_for_search()

    def __call__(self, x: jax.Array, w: jax.Array, noise: jax.Array, precision: str) -> jax.Array:
        styles = self.affine(w, precision)                                       # (B, I)
        weight = self.weight[...]
        if self.prepared is None:
            power = jnp.sum(jnp.square(weight), axis=(0, 1))                     # (I, O)
        else:
            power = self.prepared["power"][...]
        (s2, p), kw = matmul_operands(precision, jnp.square(styles), power)
        demod = lax.rsqrt(jnp.dot(s2, p, **kw) + DEMODULATION_EPS)              # (B, O)
        x = x * styles[:, None, None, :]
        if self.prepared is None:
            x = conv_up(x, up_phase_kernel(weight), None, precision) if self.up else conv_same(x, weight, precision)
        else:
            kernel, adjoint = self.prepared["kernel"][...], self.prepared["adjoint"][...]
            x = conv_up(x, kernel, adjoint, precision) if self.up else prepared_conv(x, kernel, adjoint, precision,
                                                                                      self.winograd)
        x = x * demod[:, None, None, :]
        x = x + noise[..., None] * self.noise_strength[...]
        x = leaky_relu(x + per_channel(self.bias[...], x.ndim)) * SQRT2
        return x if self.conv_clamp is None else jnp.clip(x, -self.conv_clamp, self.conv_clamp)


class ToRGB(nnx.Module):
    """1x1 modulated convolution without demodulation (style / sqrt(I)), bias, clamp."""

    def __init__(self, c_in: int, w_dim: int, *, conv_clamp: float | None, rngs: nnx.Rngs):
        self.affine = Affine(w_dim, c_in, rngs=rngs)
        self.weight = nnx.Param(standard_normal(rngs.params(), (1, 1, c_in, 3)))
        self.bias = nnx.Param(0.1 * standard_normal(rngs.params(), (3,)))
        self.conv_clamp = conv_clamp

    def __call__(self, x: jax.Array, w: jax.Array, precision: str) -> jax.Array:
        styles = self.affine(w, precision) / math.sqrt(x.shape[-1])
        y = _conv(x * styles[:, None, None, :], self.weight[...], precision, 0)
        y = y + per_channel(self.bias[...], y.ndim)
        return y if self.conv_clamp is None else jnp.clip(y, -self.conv_clamp, self.conv_clamp)


class Block(nnx.Module):
    """b4: the constant, conv1, torgb. b_r (r >= 8): conv0 (up), conv1, torgb added to the upsampled image."""

    def __init__(self, config: StyleGAN2Config, layout: BlockLayout, *, rngs: nnx.Rngs):
        res = layout.resolution
        c, d, clamp = config.channels(res), config.dlatent_size, config.conv_clamp
        self.first = res == 4
        self.num_conv, self.num_torgb = layout.num_conv, layout.num_torgb
        if self.first:
            self.const = nnx.Param(standard_normal(rngs.params(), (4, 4, c)))
        else:
            self.conv0 = SynthesisLayer(config.channels(res // 2), c, d, up=True, conv_clamp=clamp, rngs=rngs)
        self.conv1 = SynthesisLayer(c, c, d, up=False, conv_clamp=clamp, rngs=rngs)
        self.torgb = ToRGB(c, d, conv_clamp=clamp, rngs=rngs)

    def prepare_for_search(self, winograd: bool) -> None:
        for name in ("conv0", "conv1"):
            if hasattr(self, name):
                getattr(self, name).prepare_for_search(winograd)
        self.torgb.affine.prepare_for_search()

    def __call__(self, x, img, w, noise, precision: str):
        """w: this block's num_conv + num_torgb rows (conv0?, conv1, torgb); noise: its num_conv maps."""
        if self.first:
            x = jnp.broadcast_to(self.const[...], (w.shape[0], *self.const.shape))
            x = self.conv1(x, w[:, 0], noise[0], precision)
            return x, self.torgb(x, w[:, 1], precision)
        x = self.conv0(x, w[:, 0], noise[0], precision)
        x = self.conv1(x, w[:, 1], noise[1], precision)
        return x, upsample_2x(img) + self.torgb(x, w[:, 2], precision)


class Synthesis(nnx.Module):
    """w (B, num_ws, D) and the noise maps (B, r, r), each times its layer's strength -> (B, R, R, 3)."""

    def __init__(self, config: StyleGAN2Config, *, rngs: nnx.Rngs):
        self.config = config
        self.blocks = nnx.Dict({f"b{b.resolution}": Block(config, b, rngs=rngs) for b in config.layout()})

    def prepare_for_search(self, options: SearchOptions) -> None:
        """In place: the forms a search step uses (layers.Prepared); the same function. ``options.winograd``:
        the 3x3 convolutions of the wide, small blocks by Winograd's F(2x2, 3x3) (None: on a CPU, where the
        StyleGAN v1 measurements say it pays; layers.use_winograd)."""
        winograd = jax.default_backend() == "cpu" if options.winograd is None else options.winograd
        for res in self.config.block_resolutions():
            self.blocks[f"b{res}"].prepare_for_search(winograd and use_winograd(res, self.config.channels(res)))

    def __call__(self, w: jax.Array, noise: Sequence[jax.Array], precision: str = "highest",
                 remat: bool = False) -> jax.Array:
        x = img = None
        first = 0
        for res in self.config.block_resolutions():
            block = self.blocks[f"b{res}"]
            # A block takes a row per convolution and per toRGB, starting at its first convolution's; the
            # next block starts after the convolutions only, so a toRGB shares its row with the next
            # block's first convolution. A map per convolution, in order.
            rows = slice(first, first + block.num_conv + block.num_torgb)
            maps = noise[first: first + block.num_conv]
            first += block.num_conv

            def run(x, img, w_k, maps, block=block):
                return block(x, img, w_k, maps, precision)

            x, img = (jax.checkpoint(run) if remat else run)(x, img, w[:, rows], maps)
        return img


class Mapping(nnx.Module):
    """z (B, D) -> 2nd-moment normalisation -> mapping_layers x (dense, lr x0.01, lrelu x sqrt 2) -> w.
    ``w_avg``: the running mean of w the checkpoint keeps (truncation's centre)."""

    def __init__(self, config: StyleGAN2Config, *, rngs: nnx.Rngs):
        d = config.dlatent_size
        self.num_layers = config.mapping_layers
        for i in range(self.num_layers):  # named as NVIDIA's (fc0, fc1, ...): string keys for orbax
            setattr(self, f"fc{i}", Dense(d, d, gain=1.0, lrmul=config.mapping_lr_multiplier, rngs=rngs))
        self.w_avg = nnx.Param(standard_normal(rngs.params(), (d,)))

    def __call__(self, z: jax.Array, precision: str = "highest") -> jax.Array:
        x = normalize_2nd_moment(z)
        for i in range(self.num_layers):
            x = leaky_relu(getattr(self, f"fc{i}")(x, precision)) * SQRT2
        return x


@dataclasses.dataclass(frozen=True)
class SearchOptions:
    """StyleGAN2's choices for the form its network takes in a search (the same function either way)."""

    winograd: bool | None = option(
        None, "the 3x3 convolutions of the wide, small blocks by Winograd's F(2x2, 3x3): auto (on a CPU, where it "
        "pays: benchmarks/RESULTS.md), on, off")


@dataclasses.dataclass(frozen=True)
class StyleGAN2(FlaxGenerator):
    """StyleGAN2 behind the generator contract: num_ws W+ rows, one noise map fewer (no noise on toRGB)."""

    config: StyleGAN2Config
    architecture: ClassVar[str] = StyleGAN2Config.architecture
    SearchOptions: ClassVar[type] = SearchOptions

    def synthesis_module(self, rngs: nnx.Rngs) -> Synthesis:
        return Synthesis(self.config, rngs=rngs)

    def mapping_module(self, rngs: nnx.Rngs) -> Mapping:
        return Mapping(self.config, rngs=rngs)

    @property
    def num_ws(self) -> int:
        return self.config.num_ws

    def noise_shapes(self) -> tuple[tuple[int, int], ...]:
        return self.config.noise_shapes()


FAMILY = Family(
    name=StyleGAN2Config.architecture, title="StyleGAN2", generator=StyleGAN2, config=StyleGAN2Config,
    presets=PRESETS, demo_preset="tiny_128",
    files="NVIDIA's stylegan2-ada-pytorch network pickles, its TensorFlow stylegan2-*-config-f.pkl and "
          "rosinality's checkpoints (--network)")
