"""Face alignment as PULSE's reference does it: dlib's detector and 68 landmarks, the FFHQ crop.

Recipe (docs/pulse.md, "Face alignment"): eye centres and mouth corners give an
oriented square of side 2 * max(2 |eye_to_eye|, 1.8 |eye_to_mouth|) centred just below the eyes;
shrink, crop with a border, reflect-pad with blur, quad-transform to 4096, resize to 1024, then our
bicubic operator down to the chosen size. dlib comes from the optional extra ``align``.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

from pulse_jax.errors import PulseJaxError
from pulse_jax.images import opened

TRANSFORM_SIZE = 4096
ALIGNED_SIZE = 1024


def _dlib():
    try:
        import dlib
    except ImportError:
        raise PulseJaxError("alignment needs dlib: pip install 'pulse-jax[align]' "
                            "(dlib-bin and face-recognition-models)") from None
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise PulseJaxError("alignment needs the 68-point model: pip install face-recognition-models")
    model = Path(spec.submodule_search_locations[0]) / "models" / "shape_predictor_68_face_landmarks.dat"
    if not model.is_file():
        raise PulseJaxError(f"the 68-point model is missing at {model}; reinstall face-recognition-models")
    return dlib, model


class FaceAligner:
    """Loads the detector and predictor once; ``landmarks`` and ``align`` per photo."""

    def __init__(self):
        dlib, model = _dlib()
        self.detector = dlib.get_frontal_face_detector()
        self.predictor = dlib.shape_predictor(str(model))

    def landmarks(self, rgb: np.ndarray) -> list[np.ndarray]:
        """(H, W, 3) uint8 -> one (68, 2) array of (x, y) per face found (upsampling the image once)."""
        faces = self.detector(rgb, 1)
        return [np.array([[p.x, p.y] for p in self.predictor(rgb, f).parts()], np.float64) for f in faces]


def face_quad(lm: np.ndarray) -> tuple[np.ndarray, float]:
    """The oriented square (4 corners, x/y) the FFHQ recipe crops, and its side."""
    eye_left, eye_right = lm[36:42].mean(0), lm[42:48].mean(0)
    eye_avg = (eye_left + eye_right) / 2
    eye_to_eye = eye_right - eye_left
    mouth_avg = (lm[48] + lm[54]) / 2
    eye_to_mouth = mouth_avg - eye_avg
    # x: the square's horizontal half-side, perpendicular to the face's vertical axis.
    x = eye_to_eye - np.array([-eye_to_mouth[1], eye_to_mouth[0]])
    x = x / np.hypot(*x) * max(np.hypot(*eye_to_eye) * 2.0, np.hypot(*eye_to_mouth) * 1.8)
    y = np.array([-x[1], x[0]])
    c = eye_avg + eye_to_mouth * 0.1
    quad = np.stack([c - x - y, c - x + y, c + x + y, c + x - y])
    return quad, float(np.hypot(*x) * 2)


def _blend_padding(img: np.ndarray, pad: tuple[int, int, int, int], qsize: float) -> np.ndarray:
    """Soften reflect-padded borders: blur and pull toward the median colour away from the photo."""
    h, w, _ = img.shape
    yy, xx = np.ogrid[:h, :w]
    left, top, right, bottom = (max(p, 1) for p in pad)
    near_start = 1.0 - np.minimum(xx / left, yy / top)
    near_end = 1.0 - np.minimum((w - 1 - xx) / right, (h - 1 - yy) / bottom)
    mask = np.maximum(near_start, near_end)[..., None]
    radius = max(qsize * 0.02, 0.5)
    blurred = np.asarray(Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).filter(
        ImageFilter.GaussianBlur(radius)), np.float64)
    img = img + (blurred - img) * np.clip(mask * 3.0 + 1.0, 0.0, 1.0)
    img = img + (np.median(img, axis=(0, 1)) - img) * np.clip(mask, 0.0, 1.0)
    return img


def align_face(photo: Image.Image, lm: np.ndarray, output_size: int = ALIGNED_SIZE) -> np.ndarray:
    """One face -> (output_size, output_size, 3) float32 in [0, 1]."""
    quad, qsize = face_quad(lm)
    img = photo.convert("RGB")
    shrink = int(np.floor(qsize / output_size * 0.5))
    if shrink > 1:
        img = img.resize((int(np.rint(img.width / shrink)), int(np.rint(img.height / shrink))), Image.LANCZOS)
        quad, qsize = quad / shrink, qsize / shrink
    border = max(int(np.rint(qsize * 0.1)), 3)
    lo, hi = np.floor(quad.min(0)).astype(int), np.ceil(quad.max(0)).astype(int)
    crop = (max(lo[0] - border, 0), max(lo[1] - border, 0),
            min(hi[0] + border, img.width), min(hi[1] + border, img.height))
    if crop[2] - crop[0] < img.width or crop[3] - crop[1] < img.height:
        img = img.crop(crop)
        quad = quad - np.array(crop[:2])
    lo, hi = np.floor(quad.min(0)).astype(int), np.ceil(quad.max(0)).astype(int)
    pad = [max(-lo[0] + border, 0), max(-lo[1] + border, 0),
           max(hi[0] - img.width + border, 0), max(hi[1] - img.height + border, 0)]
    if max(pad) > border - 4:
        pad = [max(p, int(np.rint(qsize * 0.3))) for p in pad]
        arr = np.pad(np.asarray(img, np.float64), ((pad[1], pad[3]), (pad[0], pad[2]), (0, 0)), mode="reflect")
        arr = _blend_padding(arr, tuple(pad), qsize)
        img = Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8))
        quad = quad + np.array(pad[:2])
    img = img.transform((TRANSFORM_SIZE, TRANSFORM_SIZE), Image.QUAD, tuple((quad + 0.5).flatten()),
                        Image.BILINEAR)
    img = img.resize((output_size, output_size), Image.LANCZOS)
    return np.asarray(img, np.float32) / 255.0


def align_photo(aligner: FaceAligner, path: Path, size: int) -> list[np.ndarray]:
    """Every face in a photo, aligned and downscaled to (size, size, 3) with the reference's bicubic D."""
    import jax.numpy as jnp

    from pulse_jax.degrade import bicubic_downsample

    if ALIGNED_SIZE % size:
        raise PulseJaxError(f"--size {size} must divide {ALIGNED_SIZE} (e.g. 16, 32, 64)")
    try:
        with opened(path) as im:  # the same decompression-bomb limit as upsample's inputs
            photo = im.convert("RGB")
    except Exception as e:  # noqa: BLE001 - any damaged file is this file's error
        raise PulseJaxError(f"cannot read photo {path}: {type(e).__name__}: {e}") from None
    faces = aligner.landmarks(np.asarray(photo))
    if not faces:
        raise PulseJaxError(f"{path}: no face found (dlib's frontal detector needs a roughly frontal face)")
    out = []
    for lm in faces:
        aligned = align_face(photo, lm)
        small = np.asarray(bicubic_downsample(jnp.asarray(aligned)[None], ALIGNED_SIZE // size))[0]
        out.append(np.clip(small, 0.0, 1.0))  # the cubic's negative lobes overshoot a little; images live in [0, 1]
    return out
