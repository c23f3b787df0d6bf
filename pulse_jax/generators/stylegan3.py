"""StyleGAN3 (Karras et al. 2021, "Alias-Free Generative Adversarial Networks"), configs T and R, in Flax
NNX, NHWC.

Formulas: docs/stylegan.md, "StyleGAN3". The layers' sizes, sampling rates, cutoffs and filters follow
from a few numbers of the config (``layer_specs``); the filters are designed here in numpy (a Kaiser-
windowed sinc for each axis, or a Kaiser-windowed jinc for R's radial downsampling filter) and kept in
the params as fixed arrays, so that a converted model carries the very filters its file stored. There
are no noise maps. Layers NVIDIA runs in float16 run in float32 here.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Sequence
from typing import ClassVar

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax import lax

from pulse_jax.generators.base import FlaxGenerator
from pulse_jax.generators.layers import Dense, leaky_relu, matmul_operands, standard_normal
from pulse_jax.generators.registry import Family
from pulse_jax.generators.stylegan2 import Affine, Mapping

SQRT2 = math.sqrt(2.0)
DEMODULATION_EPS = 1e-8


@dataclasses.dataclass(frozen=True)
class InputSpec:
    channels: int
    size: int
    sampling_rate: float
    bandwidth: float


@dataclasses.dataclass(frozen=True)
class LayerSpec:
    """One synthesis layer's geometry, all derived from the config (NVIDIA's SynthesisLayer arguments)."""

    in_channels: int
    out_channels: int
    in_size: int
    out_size: int
    in_sampling_rate: int
    out_sampling_rate: int
    in_cutoff: float
    out_cutoff: float
    in_half_width: float
    out_half_width: float
    is_torgb: bool
    is_critically_sampled: bool
    conv_kernel: int
    up: int
    down: int
    up_taps: int      # 1: no filter
    down_taps: int
    down_radial: bool
    padding: tuple[int, int]  # (before, after) along each axis, around the upsampled signal


@dataclasses.dataclass(frozen=True)
class StyleGAN3Config:
    """Architecture of a StyleGAN3 generator (3 channels, unconditional). Defaults: config T at 1024;
    config R is ``conv_kernel=1, radial_filters=True`` with twice the channels (``channel_base=65536,
    channel_max=1024``)."""

    resolution: int = 1024
    channel_base: int = 32768
    channel_max: int = 512
    dlatent_size: int = 512
    num_layers: int = 14           # excluding the Fourier-feature input and ToRGB
    num_critical: int = 2          # critically sampled layers at the end
    first_cutoff: float = 2.0
    first_stopband: float = 2 ** 2.1
    last_stopband_rel: float = 2 ** 0.3
    margin_size: int = 10
    output_scale: float = 0.25
    conv_kernel: int = 3
    filter_size: int = 6
    lrelu_upsampling: int = 2
    radial_filters: bool = False
    conv_clamp: float | None = 256.0
    mapping_layers: int = 2
    mapping_lr_multiplier: float = 0.01

    architecture: ClassVar[str] = "stylegan3"

    def __post_init__(self):
        r = self.resolution
        if not isinstance(r, int) or r < 16 or r & (r - 1):
            raise ValueError(f"resolution must be a power of two of at least 16, got {r!r}")
        for name in ("channel_base", "channel_max", "dlatent_size", "num_layers", "mapping_layers", "filter_size",
                     "lrelu_upsampling", "conv_kernel"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if not (isinstance(self.num_critical, int) and 0 <= self.num_critical < self.num_layers):
            raise ValueError(f"num_critical must be from 0 to num_layers - 1, got {self.num_critical!r}")
        if not isinstance(self.margin_size, int) or self.margin_size < 0:
            raise ValueError(f"margin_size must be a whole number >= 0, got {self.margin_size!r}")
        if self.conv_clamp is not None and not self.conv_clamp > 0:
            raise ValueError(f"conv_clamp must be None or > 0, got {self.conv_clamp!r}")

    def input_spec(self) -> InputSpec:
        return self._geometry()[0]

    def layer_specs(self) -> tuple[LayerSpec, ...]:
        return self._geometry()[1]

    def _geometry(self) -> tuple[InputSpec, tuple[LayerSpec, ...]]:
        """NVIDIA's SynthesisNetwork: cutoffs and minimum stopbands in a geometric progression from the first
        layer to the last non-critical one, then flat; sampling rates the smallest power of two holding
        the stopband (at most the resolution); sizes the rate plus the margin on each side (the last two
        layers the resolution); channels from the cutoff (docs/stylegan.md, "StyleGAN3")."""
        n = self.num_layers
        last_cutoff = self.resolution / 2
        last_stopband = last_cutoff * self.last_stopband_rel
        exponents = np.minimum(np.arange(n + 1) / (n - self.num_critical), 1)
        cutoffs = self.first_cutoff * (last_cutoff / self.first_cutoff) ** exponents
        stopbands = self.first_stopband * (last_stopband / self.first_stopband) ** exponents
        rates = np.exp2(np.ceil(np.log2(np.minimum(stopbands * 2, self.resolution))))
        half_widths = np.maximum(stopbands, rates / 2) - cutoffs
        sizes = rates + self.margin_size * 2
        sizes[-2:] = self.resolution
        channels = np.rint(np.minimum((self.channel_base / 2) / cutoffs, self.channel_max))
        channels[-1] = 3
        inp = InputSpec(int(channels[0]), int(sizes[0]), float(rates[0]), float(cutoffs[0]))
        layers = []
        for i in range(n + 1):
            prev = max(i - 1, 0)
            torgb = i == n
            critical = i >= n - self.num_critical
            tmp_rate = max(rates[prev], rates[i]) * (1 if torgb else self.lrelu_upsampling)
            up = int(np.rint(tmp_rate / rates[prev]))
            down = int(np.rint(tmp_rate / rates[i]))
            up_taps = self.filter_size * up if up > 1 and not torgb else 1
            down_taps = self.filter_size * down if down > 1 and not torgb else 1
            kernel = 1 if torgb else self.conv_kernel
            # The padding that centres the result (NVIDIA's symmetric interpretation, their appendix C.3).
            total = (int(sizes[i]) - 1) * down + 1 - (int(sizes[prev]) + kernel - 1) * up + up_taps + down_taps - 2
            lo = (total + up) // 2
            layers.append(LayerSpec(
                in_channels=int(channels[prev]), out_channels=int(channels[i]), in_size=int(sizes[prev]),
                out_size=int(sizes[i]), in_sampling_rate=int(rates[prev]), out_sampling_rate=int(rates[i]),
                in_cutoff=float(cutoffs[prev]), out_cutoff=float(cutoffs[i]),
                in_half_width=float(half_widths[prev]), out_half_width=float(half_widths[i]),
                is_torgb=torgb, is_critically_sampled=critical, conv_kernel=kernel, up=up, down=down,
                up_taps=up_taps, down_taps=down_taps, down_radial=self.radial_filters and not critical,
                padding=(lo, total - lo)))
        return inp, tuple(layers)

    @property
    def num_ws(self) -> int:
        """A W+ row for the input and one per layer (ToRGB included): 16 with 14 layers."""
        return 1 + len(self.layer_specs())

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# ---- filter design (numpy: scipy is not a dependency) ------------------------------------------------


def kaiser_beta(numtaps: int, width: float) -> float:
    """Kaiser's beta for the attenuation a filter of ``numtaps`` and transition ``width`` (as a fraction of
    the Nyquist rate) reaches (Kaiser's formulas, as scipy.signal.kaiser_atten and kaiser_beta)."""
    a = 2.285 * (numtaps - 1) * math.pi * width + 7.95
    if a > 50:
        return 0.1102 * (a - 8.7)
    if a > 21:
        return 0.5842 * (a - 21) ** 0.4 + 0.07886 * (a - 21)
    return 0.0


def lowpass_filter(numtaps: int, cutoff: float, width: float, fs: float) -> np.ndarray | None:
    """A linear-phase low-pass FIR of ``numtaps`` taps: the ideal response at ``cutoff`` (a sinc) times a
    Kaiser window for a transition band of ``width``, scaled to unit gain at DC (scipy.signal.firwin with
    a Kaiser window of that width); None for one tap (no filter)."""
    if numtaps == 1:
        return None
    nyq = fs / 2
    beta = kaiser_beta(numtaps, width / nyq)
    m = np.arange(numtaps) - (numtaps - 1) / 2
    h = (cutoff / nyq) * np.sinc((cutoff / nyq) * m)
    h *= np.kaiser(numtaps, beta)
    return (h / h.sum()).astype(np.float32)


def _bessel_j1(x: np.ndarray) -> np.ndarray:
    """J1(x) = (1/pi) int_0^pi cos(t - x sin t) dt, by the trapezoid rule: its integrand is smooth and
    periodic, so 256 points are exact to float64 rounding for the |x| < 40 a filter needs."""
    t = np.linspace(0.0, np.pi, 257)
    values = np.cos(t[None, :] - np.asarray(x, np.float64).reshape(-1, 1) * np.sin(t[None, :]))
    integral = (values[:, 1:-1].sum(axis=1) + 0.5 * (values[:, 0] + values[:, -1])) * (np.pi / 256)
    return (integral / np.pi).reshape(np.shape(x))


def radial_lowpass_filter(numtaps: int, cutoff: float, width: float, fs: float) -> np.ndarray:
    """R's radially symmetric 2-D low-pass: a jinc, J1(2 pi fc r) / (pi r), times the outer product of two
    Kaiser windows, scaled to sum 1."""
    x = (np.arange(numtaps) - (numtaps - 1) / 2) / fs
    r = np.hypot(*np.meshgrid(x, x))
    f = _bessel_j1(2 * cutoff * np.pi * r) / (np.pi * r)
    window = np.kaiser(numtaps, kaiser_beta(numtaps, width / (fs / 2)))
    f *= np.outer(window, window)
    return (f / f.sum()).astype(np.float32)


def layer_filters(spec: LayerSpec) -> tuple[np.ndarray | None, np.ndarray | None]:
    """(up filter (taps,) or None, down filter (taps,), (taps, taps) radial, or None) of one layer."""
    tmp_rate = spec.in_sampling_rate * spec.up
    up = lowpass_filter(spec.up_taps, spec.in_cutoff, spec.in_half_width * 2, tmp_rate)
    if spec.down_taps == 1:
        return up, None
    if spec.down_radial:
        return up, radial_lowpass_filter(spec.down_taps, spec.out_cutoff, spec.out_half_width * 2, tmp_rate)
    return up, lowpass_filter(spec.down_taps, spec.out_cutoff, spec.out_half_width * 2, tmp_rate)


# ---- resampling: NVIDIA's upfirdn2d (zero insertion, padding, convolution, decimation) without zeros ----


# Outputs per tile of the separable resampling. Each tile is one small dense matrix (the filter's taps at
# their places) applied to a window of the input: the same matrix for every tile, as the operation repeats
# with its period. The windows are cut by slicing and the tiles multiplied as one batched matrix product
# along the height (a width pass runs on the transposed signal), so that XLA moves no window in or out of
# the product and the backward pass scatters nothing. Measured on 2 CPU cores, fwd+bwd of a layer's
# filtered leaky ReLU (docs/stylegan.md, "StyleGAN3"): 256 px config T, 148 px layer of 512 channels, 9.6 s
# as shifted adds, 1.2 s as windows gathered into tiles of 64, 0.7 s sliced into batched tiles of 32;
# config R's 148 px layer of 1024 channels 8.1 s gathered, 2.9 s batched; the 1024 px layer of 1044 px and
# 81 channels 15.7 s, 9.2 s and 4.2 s. With the batched form small tiles win (less of each matrix is zeros):
# 16, 32 and 64 outputs took 2.7, 2.9 and 3.9 s on that R layer.
TILE = 32
HIGHEST = lax.Precision.HIGHEST


def _windows(x: jax.Array, starts: np.ndarray, width: int) -> jax.Array:
    """(B, H, ...) -> (B, T, width, ...): window t is rows ``starts[t]`` to ``starts[t] + width`` (zeros
    outside x), for evenly spaced starts; cut from blocks of the spacing, without a gather."""
    count, first = len(starts), int(starts[0])
    stride = int(starts[1] - starts[0]) if count > 1 else width
    extra = -(-max(width - stride, 0) // stride)                 # further blocks a window reaches into
    span = (count + extra) * stride
    before, after = max(0, -first), max(0, first + span - x.shape[1])
    x = jnp.pad(x, [(0, 0), (before, after)] + [(0, 0)] * (x.ndim - 2))
    x = lax.slice_in_dim(x, first + before, first + before + span, axis=1)
    blocks = x.reshape(x.shape[0], count + extra, stride, *x.shape[2:])
    parts = [lax.slice_in_dim(blocks, j, j + count, axis=1) for j in range(extra + 1)]
    return lax.slice_in_dim(jnp.concatenate(parts, axis=2), 0, width, axis=2)


def _tiled(x: jax.Array, axis: int, starts: np.ndarray, matrix: jax.Array, length: int) -> jax.Array:
    """Along ``axis`` (1 or 2 of (B, H, W, C)): tile t's outputs are ``matrix @ x[starts[t] : starts[t] +
    width]`` (zeros outside x); the first ``length`` outputs."""
    if axis == 2:
        return jnp.swapaxes(_tiled(jnp.swapaxes(x, 1, 2), 1, starts, matrix, length), 1, 2)
    windows = _windows(x, starts, matrix.shape[1])                # (B, T, width, W, C)
    b, t, width = windows.shape[:3]
    batched = jnp.broadcast_to(matrix, (b * t, *matrix.shape))    # small: B T copies of the tile's matrix
    y = lax.dot_general(batched, windows.reshape(b * t, width, -1), (((2,), (1,)), ((0,), (0,))),
                        precision=HIGHEST)                        # (B T, tile, W C)
    return lax.slice_in_dim(y.reshape(b, t * matrix.shape[0], *x.shape[2:]), 0, length, axis=1)


def _tap_matrix(flipped: jax.Array, k_index: np.ndarray) -> jax.Array:
    """The taps placed where ``k_index`` (static) names a tap in [0, K), zero elsewhere."""
    k = flipped.shape[0]
    return jnp.where((k_index >= 0) & (k_index < k), flipped[np.clip(k_index, 0, k - 1)], 0.0)


def _up_axis(x: jax.Array, taps: jax.Array, up: int, pad: tuple[int, int], axis: int) -> jax.Array:
    """Along ``axis``: insert up - 1 zeros after each sample, pad (negative: crop), convolve with ``taps``,
    times ``up`` (the gain that keeps a signal's level); computed in tiles over x itself, no zeros:
    output j = tile t, row r meets input s = t T / up + c0 + m through tap ``up (c0 + m) + pad - r``."""
    n, k = x.shape[axis], taps.shape[0]
    tile = -(-TILE // up) * up
    length = n * up + pad[0] + pad[1] - k + 1
    c0 = (-pad[0]) // up
    width = -(-(tile + k - 1) // up) + 1
    r, m = np.meshgrid(np.arange(tile), np.arange(width), indexing="ij")
    matrix = _tap_matrix(taps[::-1], up * (c0 + m) + pad[0] - r) * up
    starts = np.arange(-(-length // tile)) * (tile // up) + c0
    return _tiled(x, axis, starts, matrix, length)


def _down_axis(x: jax.Array, taps: jax.Array, down: int, axis: int) -> jax.Array:
    """Along ``axis``: convolve with ``taps`` (no padding), keep every ``down``-th output: only those are
    computed, in tiles (output row r of a tile reads its window from r down on)."""
    n, k = x.shape[axis], taps.shape[0]
    count = (n - k + down) // down
    width = down * (TILE - 1) + k
    r, m = np.meshgrid(np.arange(TILE), np.arange(width), indexing="ij")
    matrix = _tap_matrix(taps[::-1], m - down * r)
    starts = np.arange(-(-count // TILE)) * (TILE * down)
    return _tiled(x, axis, starts, matrix, count)


# R's 2-D down filter (a jinc times two Kaiser windows) is nearly separable: its singular values fall to
# 1e-9 of the largest within four terms (3e-2, 2e-4, 4e-7 at 256 px). As a sum of that many separable
# filters it runs on the tiled passes above: 11x faster than the k^2 shifted products on 2 cores (a 140-row
# strip of R256's 276 px layer, fwd+bwd) and a third of their memory. Terms under RADIAL_RANK_TOL change no
# float32 result (float32's rounding is 6e-8).
RADIAL_RANK_TOL = 1e-8


@functools.cache
def radial_rank(spec: LayerSpec) -> int:
    """Separable terms kept for a layer's radial down filter: the designed filter's singular values above
    RADIAL_RANK_TOL of the largest (static: the stored filter is checked against the design on loading)."""
    values = np.linalg.svd(layer_filters(spec)[1].astype(np.float64), compute_uv=False)
    return int(np.sum(values > RADIAL_RANK_TOL * values[0]))


def _down_2d(x: jax.Array, f: jax.Array, down: int, rank: int) -> jax.Array:
    """(B, H, W, C) convolved with the 2-D filter f (K, K), no padding, every ``down``-th output kept:
    f's first ``rank`` singular terms, each a separable pass along the width, then the height."""
    u, values, vt = jnp.linalg.svd(f.astype(jnp.float32))
    out = None
    for i in range(rank):
        term = _down_axis(_down_axis(x, vt[i] * values[i], down, 2), u[:, i], down, 1)
        out = term if out is None else out + term
    return out


def _crop_or_pad(x: jax.Array, pad: tuple[int, int], axis: int) -> jax.Array:
    lo, hi = pad
    if lo < 0:
        x = lax.slice_in_dim(x, -lo, x.shape[axis], axis=axis)
    if hi < 0:
        x = lax.slice_in_dim(x, 0, x.shape[axis] + hi, axis=axis)
    widths = [(0, 0)] * x.ndim
    widths[axis] = (max(lo, 0), max(hi, 0))
    return jnp.pad(x, widths)


def _filtered_rows(x: jax.Array, up_filter, down_filter, spec: LayerSpec, clamp, pad_h: tuple[int, int]) -> jax.Array:
    """The filtered leaky ReLU after the bias, with ``pad_h`` as the padding along the height (the layer's
    own for the whole signal; a strip's, below)."""
    for axis, pad in ((2, spec.padding), (1, pad_h)):  # width, then height, as NVIDIA's separable pass
        if up_filter is None:
            x = _crop_or_pad(x, pad, axis)
            if spec.up > 1:
                raise ValueError("an upsampling layer without an up filter")
        else:
            x = _up_axis(x, up_filter, spec.up, pad, axis)
    if not spec.is_torgb:
        x = leaky_relu(x) * SQRT2
    if clamp is not None:
        x = jnp.clip(x, -clamp, clamp)
    if down_filter is None:
        return x if spec.down == 1 else x[:, ::spec.down, ::spec.down]
    if down_filter.ndim == 2:
        return _down_2d(x, down_filter, spec.down, radial_rank(spec))
    return _down_axis(_down_axis(x, down_filter, spec.down, 2), down_filter, spec.down, 1)


# A layer's filtered leaky ReLU holds its upsampled signal: at 1024 px (config T) 2128^2 x 81 channels, 1.5
# GB an example, several such in the backward pass (XLA's plan for one seed's step: 20 GB). Where that
# signal has more than STRIP_ELEMENTS per example, the layer runs in strips of STRIP_ROWS output rows, each
# recomputed in the backward pass (jax.checkpoint), so that one strip's signal is held at a time. Measured
# on 2 cores, that layer's fwd+bwd: 6.6 GB of XLA's temporaries at once, 1.5 GB in strips of 128 rows
# (1.0 GB in 64), 2% slower (5%); docs/stylegan.md, "StyleGAN3".
STRIP_ELEMENTS = 2**26
STRIP_ROWS = 128  # at most; a multiple of every up factor (1, 2, 4), so that every strip has the same padding


def upsampled_side(spec: LayerSpec) -> int:
    """Side of a layer's upsampled signal (before the down filter): the convolution's output ("full": k - 1
    wider) upsampled and padded, less the up filter's reach."""
    return (spec.in_size + spec.conv_kernel - 1) * spec.up + sum(spec.padding) - spec.up_taps + 1


def upsampled_elements(spec: LayerSpec) -> int:
    """Elements per example of a layer's upsampled signal."""
    return upsampled_side(spec) ** 2 * spec.out_channels


def held_elements(spec: LayerSpec) -> int:
    """Elements per example of the upsampled signal a layer holds at once: all of it, or one strip's."""
    rows = strip_rows(spec)
    if rows is None:
        return upsampled_elements(spec)
    return (rows * spec.down + spec.down_taps) * upsampled_side(spec) * spec.out_channels


def strip_rows(spec: LayerSpec) -> int | None:
    """Output rows per strip for this layer, or None: the whole signal at once. The strips share the rows
    evenly (a multiple of 4, every up factor's), so that the last is not mostly past the edge: 148 rows
    are two strips of 76, not of 128 (which computed 73% more than the layer)."""
    if upsampled_elements(spec) <= STRIP_ELEMENTS or spec.out_size <= STRIP_ROWS:
        return None
    strips = -(-spec.out_size // STRIP_ROWS)
    return -(-spec.out_size // (4 * strips)) * 4


def filtered_lrelu(x: jax.Array, bias: jax.Array, up_filter, down_filter, spec: LayerSpec, clamp,
                   rows: int | None = None) -> jax.Array:
    """NVIDIA's filtered leaky ReLU on (B, H, W, C): bias; upsampling by ``spec.up`` through the up filter
    (gain up^2 over the two axes), with the layer's padding; leaky ReLU (slope 0.2, gain sqrt 2; ToRGB:
    linear); clamp; downsampling by ``spec.down`` through the down filter (per axis, or R's 2-D one).
    ``rows``: output rows per strip (a multiple of ``spec.up``), None for the whole signal at once."""
    x = x + bias.reshape(1, 1, 1, -1)  # before any padding: the signal is zero outside, bias and all
    if rows is None:
        return _filtered_rows(x, up_filter, down_filter, spec, clamp, spec.padding)
    if rows % spec.up or rows < 1:
        raise ValueError(f"strips of {rows} rows: not a multiple of the up factor {spec.up}")
    # Strip t's rows of the upsampled signal start at j0 = t * rows * down; they read the input from row
    # s0 = floor((j0 - pad0) / up) on, the same offset in every strip (rows * down is a multiple of up),
    # through the padding pad0 + up * c0 (<= 0: the zero-inserted signal cropped) and the count below.
    up, down = spec.up, spec.down
    up_taps = 1 if up_filter is None else up_filter.shape[0]
    down_taps = 1 if down_filter is None else down_filter.shape[0]
    height, out_rows = x.shape[1], spec.out_size
    needed = rows * down + down_taps - down                   # upsampled rows behind one strip's output
    c0 = (-spec.padding[0]) // up
    pad0 = spec.padding[0] + up * c0
    window = (needed + up_taps - 2 - pad0) // up + 1          # input rows one strip reads
    pad1 = needed + up_taps - 1 - window * up - pad0
    strips = -(-out_rows // rows)
    step = rows * down // up
    top = max(0, -c0)
    bottom = max(0, (strips - 1) * step + c0 + window - height)
    padded = jnp.pad(x, ((0, 0), (top, bottom), (0, 0), (0, 0)))  # zeros: what the whole signal reads there

    @jax.checkpoint
    def strip(t):
        rows_in = lax.dynamic_slice_in_dim(padded, t * step + c0 + top, window, axis=1)
        return _filtered_rows(rows_in, up_filter, down_filter, spec, clamp, (pad0, pad1))

    out = lax.map(strip, jnp.arange(strips))                  # (strips, B, rows, W, C)
    out = jnp.moveaxis(out, 0, 1).reshape(x.shape[0], strips * rows, *out.shape[3:])
    return out[:, :out_rows]


# ---- the networks ---------------------------------------------------------------------------------------


class Buffer(nnx.Variable):
    """A fixed array of the network that no search changes: a designed filter, the input's frequencies and
    phases, its transform, a layer's input-magnitude average. Stored, so that a converted model keeps its
    file's values."""


class InputAffine(Dense):
    """The input's W -> (rotation cos, sin, translation x, y), equalised dense; NVIDIA initialises it to the
    identity (weights 0, bias [1, 0, 0, 0]); random models here start away from it."""

    def __init__(self, w_dim: int, *, rngs: nnx.Rngs):
        super().__init__(w_dim, 4, gain=1.0, lrmul=1.0, rngs=rngs)
        self.kernel = nnx.Param(0.3 * standard_normal(rngs.params(), (w_dim, 4)))
        self.bias = nnx.Param(jnp.asarray([1.0, 0.0, 0.0, 0.0]) + 0.2 * standard_normal(rngs.params(), (4,)))


class FourierInput(nnx.Module):
    """W -> (B, size, size, C) Fourier features: sinusoids of fixed frequencies and phases, rotated and
    translated per w, damped where the user's transform pushes them out of band, mixed by a C x C matrix."""

    def __init__(self, spec: InputSpec, w_dim: int, *, rngs: nnx.Rngs):
        c = spec.channels
        self.spec = spec
        self.affine = InputAffine(w_dim, rngs=rngs)
        self.weight = nnx.Param(standard_normal(rngs.params(), (c, c)))  # (in, out): NVIDIA's transposed
        freqs = standard_normal(rngs.params(), (c, 2))
        radii = jnp.sqrt(jnp.sum(jnp.square(freqs), axis=1, keepdims=True))
        self.freqs = Buffer(freqs / (radii * jnp.exp(jnp.square(radii)) ** 0.25) * spec.bandwidth)
        self.phases = Buffer(jax.random.uniform(rngs.params(), (c,)) - 0.5)
        self.transform = Buffer(jnp.eye(3))

    def __call__(self, w: jax.Array, precision: str) -> jax.Array:
        spec = self.spec
        t = self.affine(w, precision)                                          # (B, 4)
        t = t / jnp.sqrt(jnp.sum(jnp.square(t[:, :2]), axis=1, keepdims=True))
        cos, sin, tx, ty = t[:, 0], t[:, 1], t[:, 2], t[:, 3]
        zero, one = jnp.zeros_like(cos), jnp.ones_like(cos)
        rotation = jnp.stack([jnp.stack([cos, -sin, zero], -1), jnp.stack([sin, cos, zero], -1),
                              jnp.stack([zero, zero, one], -1)], 1)
        translation = jnp.stack([jnp.stack([one, zero, -tx], -1), jnp.stack([zero, one, -ty], -1),
                                 jnp.stack([zero, zero, one], -1)], 1)
        hi = lax.Precision.HIGHEST
        transforms = jnp.einsum("bij,bjk,kl->bil", rotation, translation, self.transform[...], precision=hi)
        freqs0 = self.freqs[...]
        phases = self.phases[...][None, :] + jnp.einsum("ck,bk->bc", freqs0, transforms[:, :2, 2], precision=hi)
        freqs = jnp.einsum("ck,bkj->bcj", freqs0, transforms[:, :2, :2], precision=hi)   # (B, C, 2)
        norm = jnp.sqrt(jnp.sum(jnp.square(freqs), axis=2))
        amplitudes = jnp.clip(1 - (norm - spec.bandwidth) / (spec.sampling_rate / 2 - spec.bandwidth), 0, 1)
        # Sample positions: pixel centres of a size x size grid spanning size / sampling_rate units.
        grid = ((2 * jnp.arange(spec.size) + 1) / spec.size - 1) * (0.5 * spec.size / spec.sampling_rate)
        x = (grid[None, None, :, None] * freqs[:, None, None, :, 0]      # x along the width
             + grid[None, :, None, None] * freqs[:, None, None, :, 1]    # y along the height
             + phases[:, None, None, :])
        x = jnp.sin(x * (2 * math.pi)) * amplitudes[:, None, None, :]
        (a, b), kw = matmul_operands(precision, x, self.weight[...] / math.sqrt(spec.channels))
        return jnp.dot(a, b, **kw)


class SynthesisLayer(nnx.Module):
    """Modulated convolution ("full" padding: k - 1 on each side) with demodulation and the input's
    magnitude normalisation (ToRGB: 1x1, styles / sqrt(I), no demodulation), then the filtered leaky ReLU."""

    def __init__(self, spec: LayerSpec, w_dim: int, conv_clamp, *, rngs: nnx.Rngs):
        k = spec.conv_kernel
        self.spec = spec
        self.conv_clamp = conv_clamp
        self.affine = Affine(w_dim, spec.in_channels, rngs=rngs)
        self.weight = nnx.Param(standard_normal(rngs.params(), (k, k, spec.in_channels, spec.out_channels)))
        self.bias = nnx.Param(0.1 * standard_normal(rngs.params(), (spec.out_channels,)))
        self.magnitude_ema = Buffer(jnp.ones(()))
        up, down = layer_filters(spec)
        self.up_filter = None if up is None else Buffer(jnp.asarray(up))
        self.down_filter = None if down is None else Buffer(jnp.asarray(down))

    def __call__(self, x: jax.Array, w: jax.Array, precision: str) -> jax.Array:
        spec = self.spec
        styles = self.affine(w, precision)                                       # (B, I)
        weight = self.weight[...]
        k = spec.conv_kernel
        if spec.is_torgb:
            styles = styles / math.sqrt(spec.in_channels * k * k)
            demod = None
        else:
            # NVIDIA's pre-normalisation: each output's kernel to unit mean square, the styles to unit mean
            # square (per example: NVIDIA's over the batch cancels in the demodulation up to its 1e-8).
            weight = weight * lax.rsqrt(jnp.mean(jnp.square(weight), axis=(0, 1, 2), keepdims=True))
            styles = styles * lax.rsqrt(jnp.mean(jnp.square(styles), axis=1, keepdims=True))
            power = jnp.sum(jnp.square(weight), axis=(0, 1))                    # (I, O)
            (s2, p), kw = matmul_operands(precision, jnp.square(styles), power)
            demod = lax.rsqrt(jnp.dot(s2, p, **kw) + DEMODULATION_EPS)          # (B, O)
        gain = lax.rsqrt(self.magnitude_ema[...])
        x = x * (styles * gain)[:, None, None, :]
        (a, b), kw = matmul_operands(precision, x, weight)
        x = lax.conv_general_dilated(a, b, (1, 1), ((k - 1, k - 1), (k - 1, k - 1)),
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"), **kw)
        if demod is not None:
            x = x * demod[:, None, None, :]
        up = None if self.up_filter is None else self.up_filter[...]
        down = None if self.down_filter is None else self.down_filter[...]
        return filtered_lrelu(x, self.bias[...], up, down, spec, self.conv_clamp, strip_rows(spec))


def layer_name(index: int, spec: LayerSpec) -> str:
    """NVIDIA's name of a synthesis layer: L<index>_<output size>_<output channels>."""
    return f"L{index}_{spec.out_size}_{spec.out_channels}"


class Synthesis(nnx.Module):
    def __init__(self, config: StyleGAN3Config, *, rngs: nnx.Rngs):
        self.output_scale = config.output_scale
        self.input = FourierInput(config.input_spec(), config.dlatent_size, rngs=rngs)
        self.layer_names = tuple(layer_name(i, spec) for i, spec in enumerate(config.layer_specs()))
        for name, spec in zip(self.layer_names, config.layer_specs(), strict=True):  # NVIDIA's names: string keys
            setattr(self, name, SynthesisLayer(spec, config.dlatent_size, config.conv_clamp, rngs=rngs))

    @property
    def layers(self) -> list[SynthesisLayer]:
        return [getattr(self, name) for name in self.layer_names]

    def prepare_for_search(self, options) -> None:
        del options  # nothing to rearrange yet: the search runs the same function as synthesize

    def __call__(self, w: jax.Array, noise: Sequence[jax.Array] = (), precision: str = "highest",
                 remat: bool = False) -> jax.Array:
        del noise  # StyleGAN3 has no noise inputs
        x = self.input(w[:, 0], precision)
        for i, layer in enumerate(self.layers):
            def run(x, w_i, layer=layer):
                return layer(x, w_i, precision)

            x = (jax.checkpoint(run) if remat else run)(x, w[:, i + 1])
        return x * self.output_scale


@dataclasses.dataclass(frozen=True)
class StyleGAN3(FlaxGenerator):
    """StyleGAN3 behind the generator contract: num_ws W+ rows (input, every layer, ToRGB), no noise maps."""

    config: StyleGAN3Config
    architecture: ClassVar[str] = StyleGAN3Config.architecture

    def synthesis_module(self, rngs: nnx.Rngs) -> Synthesis:
        return Synthesis(self.config, rngs=rngs)

    def mapping_module(self, rngs: nnx.Rngs) -> nnx.Module:
        # StyleGAN2's: z normalised, mapping_layers dense layers (lr x0.01, lrelu x sqrt 2), w_avg kept.
        return Mapping(self.config, rngs=rngs)

    @property
    def num_ws(self) -> int:
        return self.config.num_ws

    def noise_shapes(self) -> tuple[tuple[int, int], ...]:
        return ()

    @property
    def work_pixels(self) -> int:
        """What one example's step holds, in 3-channel output pixels: the largest upsampled signal a layer
        holds at once (its channels at up to 4x its side; one strip's rows where the layer runs in strips),
        for the CPU's seeds per call (latent_search.programs). At 256 px (config T) 290x the image (four
        seeds in one call asked for 26.7 GB), at 1024 px 20x, where StyleGAN v1 and 2 hold about the
        image's own."""
        return max(held_elements(s) for s in self.config.layer_specs()) // 3

    def random_params(self, seed: int = 0, *, with_mapping: bool = True):
        """Random weights, with each layer's input-magnitude average measured on the network's own
        activations (as training leaves it), so that every layer sees signals of unit mean square."""
        synthesis, mapping = super().random_params(seed, with_mapping=with_mapping)
        return calibrate_magnitudes(synthesis, jax.random.key(seed + 7)), mapping


def calibrate_magnitudes(params, key, samples: int = 4):
    """Set each layer's magnitude_ema to the mean square of its input over ``samples`` random W+ (unit
    normal rows), layer by layer, as NVIDIA's training tracks it; one compiled program."""
    from pulse_jax.generators.base import NetworkParams

    module = params.module()
    w = standard_normal(key, (samples, len(module.layer_names) + 1, module.input.affine.kernel.shape[0]))
    return NetworkParams(params.graphdef, _calibrated_state(params.graphdef, params.state, w))


@functools.partial(jax.jit, static_argnums=0)
def _calibrated_state(graphdef, state, w):
    module = nnx.merge(graphdef, state)
    x = module.input(w[:, 0], "highest")
    for i, layer in enumerate(module.layers):
        layer.magnitude_ema.set_value(jnp.mean(jnp.square(x)))
        # One sample at a time: a layer holds one example's upsampled signal, not all the samples' (R at
        # 1024 px, four at once, ran out of 24 GiB).
        x = lax.map(lambda xw, layer=layer: layer(xw[0][None], xw[1][None], "highest")[0], (x, w[:, i + 1]))
    return nnx.split(module)[1]


PRESETS = {
    "t_ffhq_1024": StyleGAN3Config(),
    "r_ffhq_1024": StyleGAN3Config(channel_base=65536, channel_max=1024, conv_kernel=1, radial_filters=True),
    "t_tiny_64": StyleGAN3Config(resolution=64, channel_base=1024, channel_max=32, num_layers=8),
    "r_tiny_64": StyleGAN3Config(resolution=64, channel_base=1024, channel_max=32, num_layers=8, conv_kernel=1,
                                 radial_filters=True),
}

FAMILY = Family(
    name=StyleGAN3Config.architecture, title="StyleGAN3", generator=StyleGAN3, config=StyleGAN3Config,
    presets=PRESETS, demo_preset="t_tiny_64", variants={"stylegan3-t": "t_tiny_64", "stylegan3-r": "r_tiny_64"},
    files="NVIDIA's stylegan3-t-*.pkl and stylegan3-r-*.pkl network pickles (--network)")
