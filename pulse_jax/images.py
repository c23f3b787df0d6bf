"""Reading and writing images, comparison sheets. Arrays are float32 (H, W, 3) in [0, 1]."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import os
import stat
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from pulse_jax.errors import PulseJaxError
from pulse_jax.safe_files import atomic_write_bytes

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff", ".gif")  # a GIF: its first frame


def _kind(path: Path) -> str:
    """What a path that is not a regular file is, in words."""
    try:
        mode = path.lstat().st_mode
    except OSError:
        return "does not exist"
    if stat.S_ISLNK(mode):
        return "is a link to nothing" if not path.exists() else "is a link to something that is not a file"
    if stat.S_ISFIFO(mode):
        return "is a FIFO (a named pipe), not an image file"
    if stat.S_ISSOCK(mode):
        return "is a socket, not an image file"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "is a device, not an image file"
    return "is not a regular file"


def _names(paths: Sequence[Path]) -> str:
    shown = ", ".join(os.fsencode(q.name).decode("utf-8", "backslashreplace") for q in paths[:5])
    return shown + (", ..." if len(paths) > 5 else "")


def list_inputs(paths: Sequence[str | os.PathLike], log=None) -> list[Path]:
    """Image files named directly, plus the image files inside named folders (sorted). What a folder holds
    besides (files that are not images by their name, hidden files, subfolders, pipes, broken links) is
    skipped, and ``log`` (if given) says what."""
    found: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            entries = sorted(p.iterdir())
            files = [q for q in entries if q.is_file() and not q.name.startswith(".")]
            found += [q for q in files if q.suffix.lower() in IMAGE_SUFFIXES]
            skipped = {
                "file(s) that are not images by their name": [q for q in files
                                                               if q.suffix.lower() not in IMAGE_SUFFIXES],
                "hidden file(s)": [q for q in entries if q.name.startswith(".") and q.is_file()],
                "subfolder(s) (not searched; name them to read them)": [q for q in entries if q.is_dir()],
                "entries that are not files (pipes, devices, broken links)": [
                    q for q in entries if not q.is_file() and not q.is_dir()],
            }
            for what, which in skipped.items():
                if which and log is not None:
                    hint = "; name an image file directly to read it anyway" if "by their name" in what else ""
                    log(f"note: {p}: skipped {len(which)} {what} ({_names(which)}){hint}")
        elif p.is_file():
            found.append(p)
        else:
            raise PulseJaxError(f"input {p} {_kind(p)}")
    if not found:
        raise PulseJaxError(f"no images found in {', '.join(map(str, paths))} (looked for {', '.join(IMAGE_SUFFIXES)})")
    return found


@dataclasses.dataclass(frozen=True)
class LoadedImage:
    pixels: np.ndarray  # (H, W, 3) float32 in [0, 1]
    gray: bool          # the file had no colour (L, LA, I;16, ...): match it against luma
    alpha: bool         # the file had an alpha channel (dropped)


@dataclasses.dataclass(frozen=True)
class ImageHeader:
    width: int
    height: int
    gray: bool   # no colour: match it against luma
    alpha: bool


def _is_gray(im: Image.Image) -> bool:
    return im.mode in ("1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F") or (
        im.mode == "P" and _palette_is_gray(im))


def _has_alpha(im: Image.Image) -> bool:
    return "A" in im.getbands() or (im.mode == "P" and "transparency" in im.info)


def probe_image(path: str | os.PathLike) -> ImageHeader:
    """What an image file says of itself (size, colour, alpha), its pixels not decoded (but a palette's)."""
    try:
        with opened(path) as im:
            return ImageHeader(im.width, im.height, _is_gray(im), _has_alpha(im))
    except PulseJaxError:
        raise
    except Exception as e:  # noqa: BLE001 - damaged files raise OSError, SyntaxError, ValueError, bomb warnings...
        raise PulseJaxError(f"cannot read image {path}: {type(e).__name__}: {e}") from None


def load_image(path: str | os.PathLike, data: bytes | None = None) -> LoadedImage:
    """Any image PIL reads -> RGB float32 in [0, 1] (alpha dropped, gray replicated, 16-bit scaled); from
    ``data`` (the file's bytes, already read) when given, ``path`` then naming it in messages.

    PIL's decompression-bomb limit stays on: an image over Image.MAX_IMAGE_PIXELS is refused.
    """
    try:
        with opened(path if data is None else io.BytesIO(data)) as im:
            im.load()
            gray, alpha = _is_gray(im), _has_alpha(im)
            if im.mode in ("I;16", "I;16B", "I;16L", "I"):
                scale = 65535.0 if im.mode.startswith("I;16") else max(1.0, float(np.max(im)))
                a = np.repeat((np.asarray(im, np.float32) / scale)[..., None], 3, axis=-1)
            else:
                a = np.asarray(im.convert("RGB"), np.float32) / 255.0
    except PulseJaxError:
        raise
    except Exception as e:  # noqa: BLE001 - damaged files raise OSError, SyntaxError, ValueError, bomb warnings...
        raise PulseJaxError(f"cannot read image {path}: {type(e).__name__}: {e}") from None
    return LoadedImage(np.clip(a, 0.0, 1.0), gray, alpha)


@contextlib.contextmanager
def opened(path: str | os.PathLike):
    """Image.open with PIL's decompression-bomb limit made strict: PIL only warns between
    MAX_IMAGE_PIXELS and twice that (and raises above); both are refused here. A path must be a regular file
    (a FIFO would block the read forever). Every reader uses this."""
    if isinstance(path, (str, os.PathLike)) and not Path(path).is_file():
        raise PulseJaxError(f"{path} {_kind(Path(path))}")
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


def png_bytes(image: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(to_uint8(image)).save(out, format="PNG")
    return out.getvalue()


def save_png_keeping_others(image: np.ndarray, path: str | os.PathLike) -> Path:
    """Write the PNG unless a different file is there already (a file of the same bytes is this very result,
    written by an earlier run, and stays): what the user had, or another input's result, is never replaced."""
    path = Path(path)
    data = png_bytes(image)
    if path.exists() or path.is_symlink():
        try:
            same = path.is_file() and not path.is_symlink() and path.read_bytes() == data
        except OSError:
            same = False
        if not same:
            raise PulseJaxError(f"{path} exists and holds something else; it is not replaced: move it, or choose "
                                "another --out")
        return path
    atomic_write_bytes(path, lambda f: f.write(data))
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
