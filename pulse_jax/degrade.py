"""Forward models: how a generated image becomes the observation it must match.

Pure functions of an image batch (B, H, W, C): a user's blur kernel, downscaling (PULSE's bicubic, box,
gaussian), a colour-filter-array mosaic or luma, and what the observation's noise means for eps.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import math
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from pulse_jax.errors import PulseJaxError
from pulse_jax.generators.layers import standard_normal
from pulse_jax.npy_header import read_header


def keys_cubic(t: np.ndarray, a: float = -0.5) -> np.ndarray:
    t = np.abs(t)
    near = (a + 2) * t**3 - (a + 3) * t**2 + 1
    far = a * t**3 - 5 * a * t**2 + 8 * a * t - 4 * a
    return np.where(t <= 1, near, np.where(t < 2, far, 0.0))


def bicubic_taps(factor: int) -> np.ndarray:
    """The reference's filter: length 4f, tap i = cubic((i - floor(4f/2) + 0.5) / f), summing to 1."""
    n = 4 * factor
    taps = keys_cubic((np.arange(n) - n // 2 + 0.5) / factor)
    return taps / taps.sum()


@functools.lru_cache(maxsize=64)
def bicubic_matrix(size: int, factor: int) -> np.ndarray:
    """(size // f, size) matrix of the 1-D operator: reflect-pad by 3f (3f // 2 before), stride-f filter.

    Folding the padding into one small matrix makes D two matmuls, exact and fast
    on every backend (no strided or depthwise convolutions).
    """
    taps = bicubic_taps(factor)
    before = 3 * factor // 2
    padded_index = np.pad(np.arange(size), (before, 3 * factor - before), mode="reflect")
    m = np.zeros((size // factor, size), np.float64)
    for o in range(size // factor):
        np.add.at(m[o], padded_index[o * factor: o * factor + len(taps)], taps)
    return m.astype(np.float32)


def bicubic_downsample(images: jax.Array, factor: int) -> jax.Array:
    """(B, H, W, C) -> (B, H/f, W/f, C), PULSE's BicubicDownSample for any integer factor f."""
    if images.ndim != 4:
        raise PulseJaxError(f"images must be (batch, height, width, channels), got shape {images.shape}")
    _, h, w, _ = images.shape
    if factor < 1 or h % factor or w % factor:
        raise PulseJaxError(f"factor {factor} must be a positive integer dividing the image size {h}x{w}")
    if factor == 1:
        return images
    return separable(images, bicubic_matrix(h, factor), bicubic_matrix(w, factor))


def separable(images: jax.Array, rows: np.ndarray, cols: np.ndarray) -> jax.Array:
    """Apply (h', h) along the height and (w', w) along the width of (B, h, w, C): two float32 matmuls."""
    hi = jax.lax.Precision.HIGHEST
    # Width first: the order in which XLA:CPU lays out both products and their transposes without
    # transposing the full-size image (the loss and its gradient about 3x faster: benchmarks/RESULTS.md,
    # "Measurements behind the code").
    x = jnp.einsum("jw,bhwc->bhjc", jnp.asarray(cols), images, precision=hi)
    return jnp.einsum("ih,bhjc->bijc", jnp.asarray(rows), x, precision=hi)


def box_downsample(images: jax.Array, factor: int) -> jax.Array:
    """(B, H, W, C) -> mean over each f x f block (area averaging)."""
    b, h, w, c = images.shape
    return images.reshape(b, h // factor, factor, w // factor, factor, c).mean(axis=(2, 4))


@functools.lru_cache(maxsize=64)
def gaussian_matrix(size: int, factor: int, sigma: float) -> np.ndarray:
    """(size // f, size): Gaussian blur of std ``sigma`` (high-res pixels), sampled at each f-block's centre.

    Weights are normalised over the pixels inside the image (no padding to invent).
    """
    centres = np.arange(size // factor) * factor + (factor - 1) / 2.0
    d = np.arange(size)[None, :] - centres[:, None]
    m = np.exp(-0.5 * (d / sigma) ** 2)
    return (m / m.sum(axis=1, keepdims=True)).astype(np.float32)


def gaussian_downsample(images: jax.Array, factor: int, sigma: float | None = None) -> jax.Array:
    """Gaussian blur (default sigma = f / 2) then subsample at block centres; separable, two matmuls."""
    _, h, w, _ = images.shape
    sigma = factor / 2.0 if sigma is None else sigma
    return separable(images, gaussian_matrix(h, factor, sigma), gaussian_matrix(w, factor, sigma))


LUMA_WEIGHTS = (0.299, 0.587, 0.114)  # ITU-R BT.601, as PIL's convert("L")


def to_luma(images: jax.Array) -> jax.Array:
    """(..., 3) RGB -> (..., 1) luma."""
    w = jnp.asarray(LUMA_WEIGHTS, images.dtype)
    return jnp.sum(images * w.reshape((1,) * (images.ndim - 1) + (3,)), axis=-1, keepdims=True)


def conv_same(images: jax.Array, kernel: np.ndarray) -> jax.Array:
    """Each channel convolved with a 2-D kernel (k_h, k_w), zero boundary, output the input's size:
    ``out[y, x] = sum_ij K[i, j] * in[y + (k_h - 1) // 2 - i, x + (k_w - 1) // 2 - j]`` (scipy's
    ``convolve2d(mode="same")``), for odd and even sizes."""
    kh, kw = kernel.shape
    c = images.shape[-1]
    flipped = np.ascontiguousarray(kernel[::-1, ::-1], np.float32)
    weights = jnp.broadcast_to(jnp.asarray(flipped)[:, :, None, None], (kh, kw, 1, c))
    return jax.lax.conv_general_dilated(
        images, weights, (1, 1), ((kh // 2, (kh - 1) // 2), (kw // 2, (kw - 1) // 2)),
        dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=c, precision=jax.lax.Precision.HIGHEST)


@dataclasses.dataclass(frozen=True, eq=False)
class Kernel:
    """A blur kernel, read once: its normalised values, the file they came from, and their sha256.

    Equal (and hashed) by the values' digest, which is what the run key records: the search, the
    report and the decision to skip finished work all see the one array read at the start.
    """

    values: np.ndarray  # (kh, kw) float32, sums to 1, read-only
    file: str
    sha256: str

    @classmethod
    def of(cls, values: np.ndarray, file: str) -> Kernel:
        values = np.array(values, np.float32)  # a copy of ours, made read-only below
        values.setflags(write=False)
        return cls(values, file, hashlib.sha256(values.tobytes()).hexdigest())

    @property
    def shape(self) -> tuple[int, int]:
        return self.values.shape

    def __array__(self, dtype=None, copy=None):
        return self.values if dtype is None else self.values.astype(dtype)

    def __eq__(self, other) -> bool:
        return isinstance(other, Kernel) and other.sha256 == self.sha256

    def __hash__(self) -> int:
        return hash(self.sha256)


def _read_npy(file: Path, what: str) -> np.ndarray:
    """A .npy file's array, its header checked first: NumPy's magic, a plain (not object) dtype, and a size
    that the file holds and that is no larger than MAX_KERNEL_BYTES: nothing is allocated for a header's
    claim alone."""
    try:
        with open(file, "rb") as f:
            if f.read(6) != b"\x93NUMPY":
                raise PulseJaxError(f"{what}: not a .npy file (it does not start with NumPy's header); save the "
                                    "kernel with numpy.save, or give an image")
            f.seek(0)
            shape, _, dtype, size = read_header(f, what)
            if size > MAX_KERNEL_BYTES:
                raise PulseJaxError(f"{what}: the header says {shape} {dtype} ({size / 2**20:,.0f} MB); a kernel is at "
                                    f"most {MAX_KERNEL_BYTES // 2**20} MB")
            left = file.stat().st_size - f.tell()
            if left < size:
                raise PulseJaxError(f"{what}: the header says {shape} {dtype} but the file holds {left} of its {size} "
                                    "bytes (truncated?)")
        return np.load(file, allow_pickle=False)
    except PulseJaxError:
        raise
    except (ValueError, OSError) as e:
        raise PulseJaxError(f"{what}: not a plain .npy array ({e})") from None


def load_kernel(path: str) -> Kernel:
    """A blur kernel from a .npy file (a 2-D array, read without pickle) or an image (as grayscale),
    normalised to sum 1."""
    file = Path(path)
    if not file.is_file():
        raise PulseJaxError(f"kernel:{path}: no such file (give a .npy 2-D array or a grayscale image)")
    if file.suffix.lower() == ".npy":
        k = _read_npy(file, f"kernel:{path}")
    else:
        from pulse_jax.images import opened

        try:
            with opened(file) as im:
                k = np.asarray(im.convert("F"), np.float64)
        except Exception as e:  # noqa: BLE001 - a damaged image is this kernel's error
            raise PulseJaxError(f"kernel:{path}: cannot read the image ({type(e).__name__}: {e})") from None
    if k.ndim != 2 or not (np.issubdtype(k.dtype, np.integer) or np.issubdtype(k.dtype, np.floating)) or \
            min(k.shape) < 1:
        raise PulseJaxError(f"kernel:{path}: a kernel is a 2-D array of real numbers, got shape {k.shape} {k.dtype}")
    k = np.asarray(k, np.float64)
    with np.errstate(over="ignore", invalid="ignore"):
        total = k.sum()
    if not np.all(np.isfinite(k)) or not 0 < total < math.inf:
        raise PulseJaxError(f"kernel:{path}: the kernel's values must be finite with a positive sum (got sum "
                            f"{total:g}); it is normalised to sum 1")
    return Kernel.of(k / total, str(path))


BAYER_PATTERNS = ("RGGB", "BGGR", "GRBG", "GBRG")  # the 2x2 tile read row by row


def bayer_channels(pattern: str, h: int, w: int) -> np.ndarray:
    """(h, w, 3) one-hot: which colour each pixel of a ``pattern`` mosaic records."""
    tile = np.array([["RGB".index(c) for c in pattern[:2]], ["RGB".index(c) for c in pattern[2:]]])
    index = np.tile(tile, (-(-h // 2), -(-w // 2)))[:h, :w]
    return np.eye(3, dtype=np.float32)[index]


def mosaic(images: jax.Array, pattern: str) -> jax.Array:
    """(B, h, w, 3) -> (B, h, w, 1): each pixel's value in its filter's colour only."""
    _, h, w, _ = images.shape
    onehot = jnp.asarray(bayer_channels(pattern, h, w))[None]
    return jnp.sum(images * onehot, axis=-1, keepdims=True)


DOWNSCALERS = ("bicubic", "box", "gaussian")
MIN_SIGMA, MAX_SIGMA = 0.05, 1e4  # a narrower gaussian is a point sample; a wider one, a constant
MAX_NOISE = 0.5
MAX_KERNEL_BYTES = 64 * 2**20     # a blur kernel file (a 4096 x 4096 float32 kernel is 64 MB)
PULSE_EPS = 2e-3  # the reference's default


@dataclasses.dataclass(frozen=True)
class Degradation:
    """How a high-resolution image becomes the observation it must match, in this order:

    kernel (a user's blur, ``kernel:FILE``) -> one downscaler (bicubic: PULSE's; box; gaussian[:sigma])
    -> ``bayer[:PATTERN]`` (the observation is a colour-filter-array mosaic) or ``gray`` (luma only, so
    a grayscale input also colourises) -> ``mask`` (compare only where the per-image mask is 1:
    inpainting). ``noise:SIGMA``: the observation carries Gaussian noise of std SIGMA (pixel units), so
    eps defaults to what a perfect image scores against it. Written ``"kernel:k.npy+box+noise:0.05"``.
    """

    downscale: str = "bicubic"
    sigma: float | None = None
    gray: bool = False
    mask: bool = False
    kernel: Kernel | None = None    # read when the text is parsed, never again
    spelled: str | None = dataclasses.field(default=None, compare=False)  # the text it was parsed from
    bayer: str | None = None
    noise: float | None = None

    @classmethod
    def of(cls, spec: str | Degradation) -> Degradation:
        """A spec as text (read now: a kernel file is read here, once) or one already parsed (as it is)."""
        if isinstance(spec, Degradation):
            return spec
        if not isinstance(spec, str):
            raise PulseJaxError(f"degradation must be text such as 'bicubic+gray', got {type(spec).__name__}")
        return cls.parse(spec)

    @classmethod
    def parse(cls, text: str) -> Degradation:
        fields: dict = {}

        def once(name, part):
            if name in fields:
                raise PulseJaxError(f"degradation {text!r} names {part.split(':')[0]} twice")

        for part in (p.strip() for p in text.split("+")):
            name, _, arg = part.partition(":")
            if name in DOWNSCALERS:
                if "downscale" in fields:
                    raise PulseJaxError(f"degradation {text!r} names two downscalers; use one of {DOWNSCALERS}")
                fields["downscale"] = name
                if arg:
                    if name != "gaussian":
                        raise PulseJaxError(f"only gaussian takes a parameter (gaussian:SIGMA), got {part!r}")
                    fields["sigma"] = _number(arg, part, text)
                    if not MIN_SIGMA <= fields["sigma"] <= MAX_SIGMA:
                        raise PulseJaxError(f"degradation {text!r}: gaussian sigma is in high-resolution pixels and "
                                            f"must be from {MIN_SIGMA:g} to {MAX_SIGMA:g}, got {fields['sigma']:g}")
            elif name in ("gray", "mask") and not arg:
                once(name, part)
                fields[name] = True
            elif name == "kernel":
                once("kernel", part)
                if not arg:
                    raise PulseJaxError(f"degradation {text!r}: write kernel:FILE (a .npy array or an image)")
                fields["kernel"] = load_kernel(arg)
            elif name == "bayer":
                once("bayer", part)
                pattern = (arg or "RGGB").upper()
                if pattern not in BAYER_PATTERNS:
                    raise PulseJaxError(f"degradation {text!r}: unknown Bayer pattern {arg!r}; use one of "
                                        f"{', '.join(BAYER_PATTERNS)}")
                fields["bayer"] = pattern
            elif name == "noise":
                once("noise", part)
                if not arg:
                    raise PulseJaxError(f"degradation {text!r}: write noise:SIGMA, SIGMA in [0, 1]")
                fields["noise"] = _number(arg, part, text)
                if not 0 <= fields["noise"] <= MAX_NOISE:
                    raise PulseJaxError(f"degradation {text!r}: noise SIGMA must be from 0 to {MAX_NOISE:g} (pixel "
                                        f"units, images are in [0, 1]; eps becomes SIGMA^2, and beyond {MAX_NOISE:g} "
                                        f"every image would be within it), got {fields['noise']:g}")
            else:
                raise PulseJaxError(f"unknown degradation {part!r} in {text!r}; use one of {', '.join(DOWNSCALERS)}, "
                                    "optionally with kernel:FILE, bayer[:RGGB|BGGR|GRBG|GBRG], noise:SIGMA, gray "
                                    "and mask, e.g. 'gaussian:1.5+gray' or 'kernel:blur.npy+box+noise:0.05'")
        if fields.get("gray") and fields.get("bayer"):
            raise PulseJaxError(f"degradation {text!r}: bayer and gray exclude each other (a mosaic already has "
                                "one colour per pixel)")
        return cls(**fields, spelled=text)

    def __str__(self) -> str:
        """As the user wrote it (what reports show and config hashes name), else in canonical form."""
        return self.canonical() if self.spelled is None else self.spelled

    def canonical(self) -> str:
        parts = [f"kernel:{self.kernel.file}"] if self.kernel is not None else []
        parts.append(self.downscale + (f":{self.sigma:g}" if self.sigma is not None else ""))
        if self.bayer:
            parts.append(f"bayer:{self.bayer}")
        if self.noise is not None:
            parts.append(f"noise:{self.noise:g}")
        return "+".join(parts + [p for p in ("gray", "mask") if getattr(self, p)])

    def check(self, resolution: int, lr_size: int | None = None) -> None:
        """What images of these sizes need: a kernel no larger than the generator's images, an even
        mosaic (when the observation's size ``lr_size`` is given)."""
        if self.kernel is not None:
            kh, kw = self.kernel.shape
            if kh > resolution or kw > resolution:
                raise PulseJaxError(f"kernel:{self.kernel.file} is {kh}x{kw}, larger than the generator's "
                                    f"{resolution}x{resolution} images")
        if self.bayer and lr_size is not None and lr_size % 2:
            raise PulseJaxError(f"a {self.bayer} mosaic is made of 2x2 tiles: the observation's side must be even, "
                                f"got {lr_size}")

    def apply(self, images: jax.Array, factor: int) -> jax.Array:
        """(B, R, R, 3) -> (B, R/f, R/f, 3, or 1 for gray and bayer)."""
        x = images if self.kernel is None else conv_same(images, self.kernel.values)
        if self.downscale == "bicubic":
            x = bicubic_downsample(x, factor)
        elif self.downscale == "box":
            x = box_downsample(x, factor)
        else:
            x = gaussian_downsample(x, factor, self.sigma)
        return self.observe(x)

    def observe(self, lr_images: jax.Array) -> jax.Array:
        """An image at the observation's size as the loss sees it: luma when gray, the mosaic's samples
        with bayer (a 1-channel mosaic file, read as three equal channels, gives its own values)."""
        if self.bayer:
            return mosaic(lr_images, self.bayer)
        return to_luma(lr_images) if self.gray else lr_images

    def noise_eps(self) -> float | None:
        """The downscaling MSE a perfect image is expected to score against an observation with this noise.

        SIGMA is the noise's std in each value the loss compares (each RGB value; each pixel's luma with
        gray; each mosaic sample with bayer), and the loss averages over exactly the values it compares
        (the known pixels with mask), so the fraction of channels it sees is 1 in every case and the
        figure is SIGMA^2. Clipping a noisy observation to [0, 1] only lowers it.
        """
        return None if self.noise is None else self.noise**2

    def simulate(self, images: jax.Array, factor: int, key: jax.Array | None = None) -> jax.Array:
        """(B, R, R, 3) ground truths -> (B, R/f, R/f, 3) observations as files would hold them: a 1-channel
        result (gray, bayer) in all three channels, the noise drawn with ``key``, clipped to [0, 1]."""
        x = self.apply(images, factor)
        if self.noise:  # on each compared value: the noise eps assumes exactly this (noise_eps)
            if key is None:
                raise PulseJaxError(f"degradation {self}: simulating its noise needs a random key")
            x = x + self.noise * standard_normal(key, x.shape)
        return jnp.clip(jnp.broadcast_to(x, (*x.shape[:3], 3)), 0.0, 1.0)


def _number(arg: str, part: str, text: str) -> float:
    try:
        value = float(arg)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise PulseJaxError(f"degradation {text!r}: {part!r} needs a finite number, got {arg!r}")
    return value
