"""StyleGAN v1 (the generator PULSE searches): its config, synthesis and mapping networks, and family.

Formulas: docs/stylegan.md, "StyleGAN v1". Layout inside: NHWC. Parameter names
follow the PULSE state dict (``blocks/8x8/conv0_up/kernel`` for
``blocks.8x8.conv0_up.weight``) so that a mismatch reads the same in both.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import ClassVar

import jax
import jax.numpy as jnp
from flax import nnx

from pulse_jax.errors import PulseJaxError
from pulse_jax.fields import option
from pulse_jax.generators.base import FlaxGenerator
from pulse_jax.generators.layers import (
    TRANSPOSED_CONV_IMPLS,
    Conv,
    Dense,
    Epilogue,
    Prepared,
    adjoint_kernel,
    blur,
    conv_transpose_2x,
    fused_upsample_kernel,
    leaky_relu,
    normalize_2nd_moment,
    per_channel,
    phase_conv,
    phase_kernel,
    standard_normal,
    upsample_conv_phase_kernel,
    upsample_nearest_2x,
    use_winograd,
)
from pulse_jax.generators.registry import Family

MAX_RESOLUTION = 4096  # a 4096 px StyleGAN would already take ~16 GB per seed to search
FUSED_UPSAMPLE_FROM = 128  # blocks at this resolution and above use the fused transposed conv
MAPPING_LAYERS = 8
MAPPING_LRMUL = 0.01
LAYERS_PER_BLOCK = 2  # each block: two convolutions (or the constant and one), each with its style and noise


@dataclasses.dataclass(frozen=True)
class StyleGANConfig:
    """Architecture of a StyleGAN v1 generator; everything else follows from it."""

    resolution: int = 1024
    fmap_base: int = 8192
    fmap_decay: float = 1.0
    fmap_max: int = 512
    dlatent_size: int = 512

    def __post_init__(self):
        r = self.resolution
        if not isinstance(r, int) or r < 8 or r > MAX_RESOLUTION or r & (r - 1):
            raise ValueError(f"resolution must be a power of two from 8 to {MAX_RESOLUTION}, got {r!r}")
        for name in ("fmap_base", "fmap_max", "dlatent_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if not (isinstance(self.fmap_decay, (int, float)) and self.fmap_decay >= 0):
            raise ValueError(f"fmap_decay must be a number >= 0, got {self.fmap_decay!r}")
        if self.channels(self.log2_resolution - 1) < 1:
            raise ValueError(f"fmap_base {self.fmap_base} leaves the {r}x{r} block with no channels")

    @property
    def log2_resolution(self) -> int:
        return int(math.log2(self.resolution))

    architecture: ClassVar[str] = "stylegan1"

    @property
    def num_layers(self) -> int:
        """Style inputs / noise maps, counted from the blocks: 2 per block, 18 at 1024."""
        return sum(LAYERS_PER_BLOCK for _ in self.block_resolutions())

    def channels(self, stage: int) -> int:
        return min(int(self.fmap_base / (2.0 ** (stage * self.fmap_decay))), self.fmap_max)

    def block_resolutions(self) -> list[int]:
        return [2**k for k in range(2, self.log2_resolution + 1)]

    def block_channels(self, res: int) -> int:
        """Channels of the block at resolution ``res`` (2**k has nf(k-1))."""
        return self.channels(int(math.log2(res)) - 1)

    def noise_shapes(self) -> tuple[tuple[int, int], ...]:
        """One map per layer, at its block's resolution: layer i's side is 2**(i//2 + 2)."""
        return tuple((res, res) for res in self.block_resolutions() for _ in range(LAYERS_PER_BLOCK))

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


PRESETS = {
    # The FFHQ generator PULSE ships.
    "ffhq_1024": StyleGANConfig(),
    # Same key layout, both upsampling paths, cheap enough for CPU tests.
    "small_256": StyleGANConfig(resolution=256, fmap_base=1024, fmap_max=128),
    "tiny_128": StyleGANConfig(resolution=128, fmap_base=512, fmap_max=64),
}


@dataclasses.dataclass(frozen=True)
class SearchOptions:
    """StyleGAN v1's choices for the form its network takes in a search (the same function either way)."""

    winograd: bool | None = option(
        None, "the 3x3 convolutions of the wide, small blocks by Winograd's F(2x2, 3x3): auto (on a CPU, where it "
        "pays: benchmarks/RESULTS.md), on, off")
    transposed_conv: str = option(
        "phases", "form of StyleGAN v1's fused upsampling: phases (one 2x2 phase convolution) or dilated (kept to "
        "compare speed on a device); the same numbers", choices=tuple(TRANSPOSED_CONV_IMPLS))

    def __post_init__(self):
        if self.transposed_conv not in TRANSPOSED_CONV_IMPLS:
            raise PulseJaxError(f"transposed_conv must be one of {tuple(TRANSPOSED_CONV_IMPLS)}, got "
                                f"{self.transposed_conv!r}")


def block_name(res: int) -> str:
    return f"{res}x{res}"


class InputBlock(nnx.Module):
    """4x4: learned constant + bias, epilogue, 3x3 conv, epilogue."""

    def __init__(self, channels: int, dlatent_size: int, *, rngs: nnx.Rngs):
        self.const = nnx.Param(standard_normal(rngs.params(), (4, 4, channels)))
        self.bias = nnx.Param(0.1 * standard_normal(rngs.params(), (channels,)))
        self.epi1 = Epilogue(channels, dlatent_size, rngs=rngs)
        self.conv = Conv(channels, channels, 3, gain=math.sqrt(2), rngs=rngs)
        self.epi2 = Epilogue(channels, dlatent_size, rngs=rngs)

    def prepare_for_search(self, winograd: bool = False) -> None:
        self.conv.prepare_for_search(winograd)
        for layer in (self.epi1, self.epi2):
            layer.prepare_for_search()

    def __call__(self, w: jax.Array, noise: Sequence[jax.Array], precision: str) -> jax.Array:
        batch = w.shape[0]
        x = jnp.broadcast_to(self.const[...] + per_channel(self.bias[...], 3), (batch, *self.const.shape))
        x = self.epi1(x, w[:, 0], noise[0], precision)
        x = self.conv(x, precision)
        return self.epi2(x, w[:, 1], noise[1], precision)


class UpBlock(nnx.Module):
    """r x r, r >= 8: upsample + 3x3 conv, blur, bias, epilogue, 3x3 conv, epilogue."""

    def __init__(self, c_in: int, c_out: int, dlatent_size: int, *, fused: bool, rngs: nnx.Rngs):
        self.fused = fused
        self.conv0_up = Conv(c_in, c_out, 3, gain=math.sqrt(2), rngs=rngs)
        self.epi1 = Epilogue(c_out, dlatent_size, rngs=rngs)
        self.conv1 = Conv(c_out, c_out, 3, gain=math.sqrt(2), rngs=rngs)
        self.epi2 = Epilogue(c_out, dlatent_size, rngs=rngs)
        self.phases = nnx.data(None)  # set by prepare_for_search
        self.phases_adjoint = nnx.data(None)
        self.transposed_conv = "phases"  # the fused upsampling's form when phases is None (layers)

    def prepare_for_search(self, winograd: bool = False, transposed_conv: str = "phases") -> None:
        # The upsampling convolution as one 2x2 phase convolution of the small input (layers.phase_conv):
        # its phase kernel and that kernel's adjoint replace conv0_up's kernel.
        if self.fused and transposed_conv != "phases":  # the dilated form, to compare on a device
            self.transposed_conv = transposed_conv
            self.conv0_up.prepare_for_search()
        else:
            kernel = self.conv0_up.scaled_kernel()
            phases = phase_kernel(fused_upsample_kernel(kernel)) if self.fused else upsample_conv_phase_kernel(kernel)
            self.phases, self.phases_adjoint = Prepared(phases), Prepared(adjoint_kernel(phases))
            del self.conv0_up.kernel
        self.conv1.prepare_for_search(winograd)
        for layer in (self.epi1, self.epi2):
            layer.prepare_for_search()

    def __call__(self, x, w, noise, precision: str) -> jax.Array:
        if self.phases is not None:
            x = phase_conv(x, self.phases[...], precision, self.phases_adjoint[...])
        elif self.fused:
            k4 = fused_upsample_kernel(self.conv0_up.scaled_kernel())
            x = conv_transpose_2x(x, k4, precision, self.transposed_conv)
        else:
            x = self.conv0_up(upsample_nearest_2x(x), precision, add_bias=False)
        x = blur(x) + per_channel(self.conv0_up.bias[...], x.ndim)
        x = self.epi1(x, w[:, 0], noise[0], precision)
        x = self.conv1(x, precision)
        return self.epi2(x, w[:, 1], noise[1], precision)


class Synthesis(nnx.Module):
    """w (B, L, D) and L noise maps (B, r_i, r_i) -> image (B, R, R, 3), about [-1, 1]."""

    def __init__(self, config: StyleGANConfig, *, rngs: nnx.Rngs):
        self.config = config
        d = config.dlatent_size
        blocks = {}
        for res in config.block_resolutions():
            c_out = config.block_channels(res)
            if res == 4:
                blocks[block_name(res)] = InputBlock(c_out, d, rngs=rngs)
            else:
                c_in = config.block_channels(res // 2)
                fused = res >= FUSED_UPSAMPLE_FROM
                blocks[block_name(res)] = UpBlock(c_in, c_out, d, fused=fused, rngs=rngs)
        self.blocks = nnx.Dict(blocks)
        self.torgb = Conv(config.block_channels(config.resolution), 3, 1, gain=1.0, rngs=rngs)

    def prepare_for_search(self, options: SearchOptions) -> None:
        """In place: every kernel in the form a search step uses (layers.Prepared); same function.
        ``options.winograd``: the 3x3 convolutions of the wide, small blocks by Winograd's F(2x2, 3x3)
        (None: on a CPU, where it pays; see use_winograd). ``options.transposed_conv``: the fused
        upsampling as one 2x2 phase convolution ("phases") or as a dilated one ("dilated")."""
        winograd = jax.default_backend() == "cpu" if options.winograd is None else options.winograd
        transposed_conv = options.transposed_conv
        for res in self.config.block_resolutions():
            channels = self.config.block_channels(res)
            block = self.blocks[block_name(res)]
            if res == 4:
                block.prepare_for_search(winograd and use_winograd(res, channels))
            else:
                block.prepare_for_search(winograd and use_winograd(res, channels), transposed_conv)
        self.torgb.prepare_for_search()

    def __call__(self, w: jax.Array, noise: Sequence[jax.Array], precision: str = "highest",
                 remat: bool = False) -> jax.Array:
        """``remat``: keep only each block's output for the backward pass and recompute the inside
        (less memory per seed, about one more forward pass of work)."""
        x, first = None, 0
        for res in self.config.block_resolutions():  # each block takes the next LAYERS_PER_BLOCK rows and maps
            block = self.blocks[block_name(res)]
            layers = slice(first, first + LAYERS_PER_BLOCK)
            first += LAYERS_PER_BLOCK
            if x is None:
                def run(w_i, n_i, block=block):
                    return block(w_i, n_i, precision)
                args = (w[:, layers], noise[layers])
            else:
                def run(x_in, w_i, n_i, block=block):
                    return block(x_in, w_i, n_i, precision)
                args = (x, w[:, layers], noise[layers])
            x = jax.checkpoint(run)(*args) if remat else run(*args)
        return self.torgb(x, precision)


class Mapping(nnx.Module):
    """z (B, 512) -> pixel norm -> 8 x (dense, lrmul 0.01; leaky ReLU 0.2) -> w (B, 512)."""

    def __init__(self, dlatent_size: int = 512, *, rngs: nnx.Rngs):
        for i in range(MAPPING_LAYERS):
            setattr(self, f"dense{i}", Dense(dlatent_size, dlatent_size, gain=math.sqrt(2),
                                             lrmul=MAPPING_LRMUL, rngs=rngs))

    def __call__(self, z: jax.Array, precision: str = "highest") -> jax.Array:
        x = normalize_2nd_moment(z)
        for i in range(MAPPING_LAYERS):
            x = leaky_relu(getattr(self, f"dense{i}")(x, precision))
        return x


@dataclasses.dataclass(frozen=True)
class StyleGAN1(FlaxGenerator):
    """StyleGAN v1 behind the generator contract: one W+ row and one noise map per layer."""

    config: StyleGANConfig
    architecture: ClassVar[str] = StyleGANConfig.architecture
    SearchOptions: ClassVar[type] = SearchOptions

    def synthesis_module(self, rngs: nnx.Rngs) -> Synthesis:
        return Synthesis(self.config, rngs=rngs)

    def mapping_module(self, rngs: nnx.Rngs) -> Mapping:
        return Mapping(self.config.dlatent_size, rngs=rngs)

    @property
    def num_ws(self) -> int:
        return self.config.num_layers

    def noise_shapes(self) -> tuple[tuple[int, int], ...]:
        return self.config.noise_shapes()


FAMILY = Family(
    name=StyleGANConfig.architecture, title="StyleGAN v1", generator=StyleGAN1, config=StyleGANConfig,
    presets=PRESETS, demo_preset="tiny_128",
    files="PULSE's synthesis.pt and mapping.pt (--synthesis, --mapping), NVIDIA's TensorFlow "
          "karras2019stylegan-*.pkl (--network)")
