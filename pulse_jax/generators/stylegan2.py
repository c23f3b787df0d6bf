"""StyleGAN2 (NVIDIA's "skip" generator: config-f and ADA) in Flax NNX, NHWC.

Formulas: shared/docs/stylegan2-reference.md, section 1. Stored parameters are the checkpoint's numbers
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

from pulse_jax.generators.base import Generator
from pulse_jax.generators.layers import Dense, leaky_relu, matmul_operands, per_channel

MAX_RESOLUTION = 4096
SQRT2 = math.sqrt(2.0)
DEMODULATION_EPS = 1e-8
# The resampling filter [1, 3, 3, 1] (outer product, sum 1), times 4 (the gain of a 2x upsampling).
_TAPS = np.array([1.0, 3.0, 3.0, 1.0])
UP_FILTER = (4.0 * np.outer(_TAPS, _TAPS) / np.outer(_TAPS, _TAPS).sum()).astype(np.float32)


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

    @property
    def num_ws(self) -> int:
        return 2 * int(math.log2(self.resolution)) - 2

    def noise_shapes(self) -> tuple[tuple[int, int], ...]:
        """b4.conv1, then conv0 and conv1 of every later block: 17 maps at 1024."""
        return ((4, 4),) + tuple((r, r) for r in self.block_resolutions()[1:] for _ in range(2))

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


PRESETS = {
    "ffhq_1024": StyleGAN2Config(),                                  # config-f, as NVIDIA's FFHQ file
    "small_256": StyleGAN2Config(resolution=256, channel_base=2048, channel_max=64, conv_clamp=256.0),
    "tiny_128": StyleGAN2Config(resolution=128, channel_base=4096, channel_max=64, conv_clamp=256.0),  # the demo's
    "tiny_64": StyleGAN2Config(resolution=64, channel_base=1024, channel_max=32, conv_clamp=256.0),
}


def _conv(x: jax.Array, kernel: jax.Array, precision: str, padding, lhs_dilation=(1, 1), groups: int = 1):
    (x, kernel), kw = matmul_operands(precision, x, kernel)
    return lax.conv_general_dilated(x, kernel, (1, 1), padding, lhs_dilation=lhs_dilation,
                                    dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=groups, **kw)


def _filter(x: jax.Array, padding, lhs_dilation=(1, 1)) -> jax.Array:
    """UP_FILTER on every channel (a depthwise 4x4 convolution), float32."""
    c = x.shape[-1]
    f = jnp.broadcast_to(jnp.asarray(UP_FILTER)[:, :, None, None], (4, 4, 1, c))
    return _conv(x, f, "highest", padding, lhs_dilation, groups=c)


def upsample_2x(x: jax.Array) -> jax.Array:
    """NVIDIA's upsample2d: zeros between samples (y -> 2y), pad 2 before and 1 after, the 4x4 filter.
    As a dilated convolution: the dilated signal is 2H - 1 long, so 1 more zero after (2, 2)."""
    return _filter(x, ((2, 2), (2, 2)), (2, 2))


def conv_transpose_up(x: jax.Array, kernel: jax.Array, precision: str) -> jax.Array:
    """torch's ``conv_transpose2d(x, W.transpose(0, 1), stride=2)`` (W as stored), H -> 2H + 1, then the
    4x4 filter with padding 1 -> 2H. The transposed convolution is the dilated input correlated with the
    spatially flipped kernel, padded by k - 1."""
    k = kernel.shape[0]
    y = _conv(x, kernel[::-1, ::-1], precision, ((k - 1, k - 1), (k - 1, k - 1)), (2, 2))
    return _filter(y, ((1, 1), (1, 1)))


class Affine(Dense):
    """The style affine of a layer: equalised dense (lr multiplier 1), stored biases near 1 (their init)."""

    def __init__(self, n_in: int, n_out: int, *, rngs: nnx.Rngs):
        super().__init__(n_in, n_out, gain=1.0, lrmul=1.0, rngs=rngs)
        self.bias = nnx.Param(1.0 + 0.1 * jax.random.normal(rngs.params(), (n_out,), jnp.float32))


class SynthesisLayer(nnx.Module):
    """Modulated, demodulated 3x3 convolution (x2 upsampling for conv0), noise, bias, lrelu, clamp."""

    def __init__(self, c_in: int, c_out: int, w_dim: int, *, up: bool, conv_clamp: float | None,
                 rngs: nnx.Rngs):
        self.affine = Affine(w_dim, c_in, rngs=rngs)
        self.weight = nnx.Param(jax.random.normal(rngs.params(), (3, 3, c_in, c_out), jnp.float32))
        self.bias = nnx.Param(0.1 * jax.random.normal(rngs.params(), (c_out,), jnp.float32))
        self.noise_strength = nnx.Param(0.1 * jax.random.normal(rngs.params(), (), jnp.float32))
        self.up = up
        self.conv_clamp = conv_clamp

    def __call__(self, x: jax.Array, w: jax.Array, noise: jax.Array, precision: str) -> jax.Array:
        styles = self.affine(w, precision)                                       # (B, I)
        weight = self.weight[...]
        power = jnp.sum(jnp.square(weight), axis=(0, 1))                         # (I, O)
        (s2, p), kw = matmul_operands(precision, jnp.square(styles), power)
        demod = lax.rsqrt(jnp.dot(s2, p, **kw) + DEMODULATION_EPS)              # (B, O)
        x = x * styles[:, None, None, :]
        x = conv_transpose_up(x, weight, precision) if self.up else _conv(x, weight, precision, ((1, 1), (1, 1)))
        x = x * demod[:, None, None, :]
        x = x + noise[..., None] * self.noise_strength[...]
        x = leaky_relu(x + per_channel(self.bias[...], x.ndim)) * SQRT2
        return x if self.conv_clamp is None else jnp.clip(x, -self.conv_clamp, self.conv_clamp)


class ToRGB(nnx.Module):
    """1x1 modulated convolution without demodulation (style / sqrt(I)), bias, clamp."""

    def __init__(self, c_in: int, w_dim: int, *, conv_clamp: float | None, rngs: nnx.Rngs):
        self.affine = Affine(w_dim, c_in, rngs=rngs)
        self.weight = nnx.Param(jax.random.normal(rngs.params(), (1, 1, c_in, 3), jnp.float32))
        self.bias = nnx.Param(0.1 * jax.random.normal(rngs.params(), (3,), jnp.float32))
        self.conv_clamp = conv_clamp

    def __call__(self, x: jax.Array, w: jax.Array, precision: str) -> jax.Array:
        styles = self.affine(w, precision) / math.sqrt(x.shape[-1])
        y = _conv(x * styles[:, None, None, :], self.weight[...], precision, ((0, 0), (0, 0)))
        y = y + per_channel(self.bias[...], y.ndim)
        return y if self.conv_clamp is None else jnp.clip(y, -self.conv_clamp, self.conv_clamp)


class Block(nnx.Module):
    """b4: the constant, conv1, torgb. b_r (r >= 8): conv0 (up), conv1, torgb added to the upsampled image."""

    def __init__(self, config: StyleGAN2Config, res: int, *, rngs: nnx.Rngs):
        c, d, clamp = config.channels(res), config.dlatent_size, config.conv_clamp
        self.first = res == 4
        if self.first:
            self.const = nnx.Param(jax.random.normal(rngs.params(), (4, 4, c), jnp.float32))
        else:
            self.conv0 = SynthesisLayer(config.channels(res // 2), c, d, up=True, conv_clamp=clamp, rngs=rngs)
        self.conv1 = SynthesisLayer(c, c, d, up=False, conv_clamp=clamp, rngs=rngs)
        self.torgb = ToRGB(c, d, conv_clamp=clamp, rngs=rngs)

    def __call__(self, x, img, w, noise, precision: str):
        """w: this block's rows (conv0?, conv1, torgb); noise: its maps (conv0?, conv1)."""
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
        self.blocks = nnx.Dict({f"b{r}": Block(config, r, rngs=rngs) for r in config.block_resolutions()})

    def prepare_for_search(self, winograd: bool | None = None, transposed_conv: str = "phases") -> None:
        """Nothing to precompute yet: the options of the StyleGAN v1 search are accepted and change nothing."""
        del winograd, transposed_conv

    def __call__(self, w: jax.Array, noise: Sequence[jax.Array], precision: str = "highest",
                 remat: bool = False) -> jax.Array:
        x = img = None
        for k, res in enumerate(self.config.block_resolutions()):
            block = self.blocks[f"b{res}"]
            # W+ rows: b4 takes 0 (conv1), 1 (torgb); block k >= 1 takes 2k-1, 2k, 2k+1: its torgb
            # shares a row with the next block's conv0. Noise: b4 map 0, block k maps 2k-1 and 2k.
            rows = slice(0, 2) if k == 0 else slice(2 * k - 1, 2 * k + 2)
            maps = noise[0:1] if k == 0 else noise[2 * k - 1: 2 * k + 1]

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
        self.w_avg = nnx.Param(jax.random.normal(rngs.params(), (d,), jnp.float32))

    def __call__(self, z: jax.Array, precision: str = "highest") -> jax.Array:
        x = z * lax.rsqrt(jnp.mean(jnp.square(z), axis=-1, keepdims=True) + 1e-8)
        for i in range(self.num_layers):
            x = leaky_relu(getattr(self, f"fc{i}")(x, precision)) * SQRT2
        return x


@dataclasses.dataclass(frozen=True)
class StyleGAN2(Generator):
    """StyleGAN2 behind the generator interface: num_ws W+ rows, one noise map fewer (no noise on toRGB)."""

    config: StyleGAN2Config
    architecture: ClassVar[str] = StyleGAN2Config.architecture

    def synthesis_module(self, rngs: nnx.Rngs) -> Synthesis:
        return Synthesis(self.config, rngs=rngs)

    def mapping_module(self, rngs: nnx.Rngs) -> Mapping:
        return Mapping(self.config, rngs=rngs)

    @property
    def num_ws(self) -> int:
        return self.config.num_ws

    def noise_shapes(self) -> tuple[tuple[int, int], ...]:
        return self.config.noise_shapes()
