"""Files -> search inputs: list, check sizes and masks, align faces (a bad file is one failure entry).

A file's pixels are read when its batch is searched, not when the run starts: a run over 100,000 inputs
holds a few batches of images, not all of them. What the plan needs (size, colour, the file's hash) comes
from the header and the bytes."""

from __future__ import annotations

import dataclasses
import hashlib
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from pulse_jax.degrade import Degradation
from pulse_jax.errors import PulseJaxError
from pulse_jax.images import center_fit, load_image, probe_image, save_png_keeping_others


@dataclasses.dataclass
class InputImage:
    path: Path          # the file it came from
    name: str           # output stem: the file's stem, or <stem>_<k> for the k-th aligned face
    size: int           # the side it is searched at (after --fit)
    gray: bool = False  # match luma only (the file had no colour)
    sha256: str = ""    # of the file's bytes: an edited input is not "already done"
    fit: int | None = None            # --fit: centre-crop and resize when loaded
    pixels: np.ndarray | None = None  # kept only for what the run made itself (aligned faces)

    def load(self) -> np.ndarray:
        """(size, size, 3) in [0, 1], read now (PulseJaxError if the file cannot be, or has changed)."""
        if self.pixels is not None:
            return self.pixels
        try:
            data = self.path.read_bytes()
        except OSError as e:
            raise PulseJaxError(f"cannot read {printable(self.path)}: {e.strerror or e}") from None
        if hashlib.sha256(data).hexdigest() != self.sha256:  # what is searched is what the run key records
            raise PulseJaxError(f"{printable(self.path)} changed while the run went on; run again to search it as it "
                                "is now")
        loaded = load_image(self.path, data)
        image = center_fit(loaded.pixels, self.fit) if self.fit else loaded.pixels
        if image.shape[:2] != (self.size, self.size):
            raise PulseJaxError(f"{printable(self.path)}: read as {image.shape[1]}x{image.shape[0]}, listed as "
                                f"{self.size}x{self.size}")
        return image


@dataclasses.dataclass(frozen=True, eq=False)
class InputOptions:
    """How files become search inputs (``pulse-jax upsample`` flags)."""

    fit: int | None = None          # centre-crop and resize every input to fit x fit
    mask: np.ndarray | None = None  # (h, h) in {0, 1}: with degradation "+mask", known pixels
    align: int | None = None        # inputs are photos: align each face and downscale to align x align


def check_size(h: int, w: int, resolution: int, path: Path, degradation: Degradation) -> None:
    if h != w:
        raise PulseJaxError(f"{path}: image is {w}x{h}; PULSE needs a square input (crop it to a square, "
                            f"e.g. with pulse-jax align for faces)")
    if resolution % h:
        sizes = ", ".join(str(resolution >> k) for k in range(0, 8))
        raise PulseJaxError(f"{path}: size {h} does not divide the generator's resolution {resolution}; "
                            f"resize it to one of {sizes}")
    try:
        degradation.check(resolution, h)
    except PulseJaxError as e:
        raise PulseJaxError(f"{path}: {e}") from None


def read_inputs(paths: Sequence[Path], resolution: int, options: InputOptions, out_dir: Path,
                log: Callable[[str], None], degradation: Degradation) -> tuple[list[InputImage], list[dict]]:
    """Files -> search inputs (their headers and bytes read, their pixels when searched), and a failure entry
    per file that cannot be one (never fatal).

    Options that cannot work for any file are one PulseJaxError before any file is read (check_options)."""
    check_options(options, resolution)
    items, failed, said_alpha = [], [], False
    aligner = None
    if options.align:
        from pulse_jax.align import FaceAligner, align_photo

        aligner = FaceAligner()
    for path in paths:
        try:
            shown = printable(path)
            if shown != str(path):
                raise PulseJaxError(f"{shown}: the file name is not valid UTF-8 (the report and the outputs "
                                    "could not name it); rename the file")
            digest = file_sha256(path)
            if aligner is not None:
                faces = align_photo(aligner, path, options.align)
                for k, face in enumerate(faces):
                    save_png_keeping_others(face, out_dir / "aligned" / f"{path.stem}_{k}.png")
                    items.append(InputImage(path, f"{path.stem}_{k}", face.shape[0], sha256=digest, pixels=face))
                log(f"{path}: {len(faces)} face(s) aligned to {options.align}x{options.align}")
                continue
            probe = probe_image(path)
            if probe.alpha and not said_alpha:
                log(f"note: alpha channels are dropped (first in {path})")
                said_alpha = True
            h, w = (options.fit, options.fit) if options.fit else (probe.height, probe.width)
            check_size(h, w, resolution, path, degradation)
            if options.mask is not None and options.mask.shape != (h, w):
                raise PulseJaxError(f"{path}: the mask is {options.mask.shape[1]}x{options.mask.shape[0]}, "
                                    f"the image {w}x{h}; they must match")
            items.append(InputImage(path, path.stem, h, probe.gray, digest, fit=options.fit))
        except PulseJaxError as e:
            failed.append({"input": printable(path), "error": str(e)})
            log(f"skipped: {e}")
    return items, failed


def check_options(options: InputOptions, resolution: int) -> None:
    """What cannot work for any file: a --fit or --align size that is not a positive divisor of the
    resolution, a mask of another size than --fit makes the inputs."""
    check_fit_size(options.fit or options.align, resolution, "--fit")
    if options.mask is not None and (options.fit or options.align):
        size = options.fit or options.align
        if options.mask.shape != (size, size):
            raise PulseJaxError(f"the mask is {options.mask.shape[1]}x{options.mask.shape[0]}, but --fit makes every "
                                f"input {size}x{size}; they must match")


def check_fit_size(size: int | None, resolution: int, flag: str) -> None:
    """A --fit (or --align) size must be a positive divisor of the resolution: checked before any resize."""
    if size is None:
        return
    if size < 1 or size > resolution or resolution % size:
        sizes = ", ".join(str(resolution >> k) for k in range(0, 8) if resolution >> k >= 1)
        raise PulseJaxError(f"{flag} {size}: the size must divide the generator's resolution {resolution}; "
                            f"use one of {sizes}")


def printable(path: Path) -> str:
    """The path as text that can be written anywhere (a name that is not UTF-8 gets escapes)."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    except OSError as e:
        raise PulseJaxError(f"cannot read {printable(path)}: {e.strerror or e}") from None
    return h.hexdigest()
