"""Reading and writing images, comparison sheets. Arrays are float32 (H, W, 3) in [0, 1]."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from pulse_jax.errors import PulseJaxError
from pulse_jax.safe_files import atomic_write_bytes

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff", ".gif")  # a GIF: its first frame


def list_inputs(paths: Sequence[str | os.PathLike], log=None) -> list[Path]:
    """Image files named directly, plus the image files inside named folders (sorted). Files in a folder
    that are not images by their name are skipped, and ``log`` (if given) says which."""
    found: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            files = sorted(q for q in p.iterdir() if q.is_file() and not q.name.startswith("."))
            found += [q for q in files if q.suffix.lower() in IMAGE_SUFFIXES]
            other = [q.name for q in files if q.suffix.lower() not in IMAGE_SUFFIXES]
            if other and log is not None:
                names = ", ".join(os.fsencode(n).decode("utf-8", "backslashreplace") for n in other[:5])
                log(f"note: {p}: skipped {len(other)} file(s) that are not images by their name ({names}"
                    f"{', ...' if len(other) > 5 else ''}); name an image file directly to read it anyway")
        elif p.is_file():
            found.append(p)
        else:
            raise PulseJaxError(f"input {p} does not exist")
    if not found:
        raise PulseJaxError(f"no images found in {', '.join(map(str, paths))} (looked for {', '.join(IMAGE_SUFFIXES)})")
    return found


@dataclasses.dataclass(frozen=True)
class LoadedImage:
    pixels: np.ndarray  # (H, W, 3) float32 in [0, 1]
    gray: bool          # the file had no colour (L, LA, I;16, ...): match it against luma
    alpha: bool         # the file had an alpha channel (dropped)


def load_image(path: str | os.PathLike) -> LoadedImage:
    """Any image PIL reads -> RGB float32 in [0, 1] (alpha dropped, gray replicated, 16-bit scaled).

    PIL's decompression-bomb limit stays on: an image over Image.MAX_IMAGE_PIXELS is refused.
    """
    try:
        with opened(path) as im:
            im.load()
            gray = im.mode in ("1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F") or (
                im.mode == "P" and _palette_is_gray(im))
            alpha = "A" in im.getbands() or (im.mode == "P" and "transparency" in im.info)
            if im.mode in ("I;16", "I;16B", "I;16L", "I"):
                scale = 65535.0 if im.mode.startswith("I;16") else max(1.0, float(np.max(im)))
                a = np.repeat((np.asarray(im, np.float32) / scale)[..., None], 3, axis=-1)
            else:
                a = np.asarray(im.convert("RGB"), np.float32) / 255.0
    except Exception as e:  # noqa: BLE001 - damaged files raise OSError, SyntaxError, ValueError, bomb warnings...
        raise PulseJaxError(f"cannot read image {path}: {type(e).__name__}: {e}") from None
    return LoadedImage(np.clip(a, 0.0, 1.0), gray, alpha)


@contextlib.contextmanager
def opened(path: str | os.PathLike):
    """Image.open with PIL's decompression-bomb limit made strict: PIL only warns between
    MAX_IMAGE_PIXELS and twice that (and raises above); both are refused here. Every reader uses this."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        with Image.open(path) as im:
            yield im


def _palette_is_gray(im: Image.Image) -> bool:
    rgb = np.asarray(im.convert("RGB"), np.int16)
    return bool(np.all(rgb[..., 0] == rgb[..., 1]) and np.all(rgb[..., 1] == rgb[..., 2]))


def read_image(path: str | os.PathLike) -> np.ndarray:
    """(H, W, 3) float32 in [0, 1]; see load_image."""
    return load_image(path).pixels


def center_fit(image: np.ndarray, size: int) -> np.ndarray:
    """--fit: the largest centred square, resized to size x size with PIL's bicubic filter (antialiased)."""
    h, w = image.shape[:2]
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    square = image[top:top + side, left:left + side]
    if side == size:
        return square
    resized = Image.fromarray(to_uint8(square)).resize((size, size), Image.Resampling.BICUBIC, reducing_gap=None)
    return np.asarray(resized, np.float32) / 255.0


def to_uint8(image: np.ndarray) -> np.ndarray:
    """[0, 1] floats -> 0..255 bytes; bytes stay as they are."""
    if isinstance(image, np.ndarray) and image.dtype == np.uint8:
        return image
    return np.round(np.clip(np.asarray(image, np.float32), 0.0, 1.0) * 255.0).astype(np.uint8)


def save_png(image: np.ndarray, path: str | os.PathLike) -> Path:
    path = Path(path)
    atomic_write_bytes(path, lambda f: Image.fromarray(to_uint8(image)).save(f, format="PNG"))
    return path


def save_gif(frames: Sequence[np.ndarray], path: str | os.PathLike, ms_per_frame: int = 150) -> Path:
    path = Path(path)
    ims = [Image.fromarray(to_uint8(f)) for f in frames]
    atomic_write_bytes(path, lambda f: ims[0].save(f, format="GIF", save_all=True, append_images=ims[1:],
                                                   duration=ms_per_frame, loop=0))
    return path


def resize(image: np.ndarray, size: int, resample=Image.Resampling.NEAREST) -> np.ndarray:
    return np.asarray(Image.fromarray(to_uint8(image)).resize((size, size), resample), np.float32) / 255.0


def sheet(panels: Sequence[tuple[str, np.ndarray]], tile: int = 256) -> np.ndarray:
    """A row of labelled tiles: [(caption, image), ...] -> (tile + 18, n * tile, 3)."""
    label_h = 18
    out = Image.new("RGB", (tile * len(panels), tile + label_h), "white")
    draw = ImageDraw.Draw(out)
    for i, (caption, image) in enumerate(panels):
        out.paste(Image.fromarray(to_uint8(resize(image, tile))), (i * tile, label_h))
        draw.text((i * tile + 3, 3), caption[:40], fill="black")
    return np.asarray(out, np.float32) / 255.0
