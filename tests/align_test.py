"""Face alignment on a real photo (scikit-image's astronaut), checked by detecting the result again."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from skimage import data

from pulse_jax.align import FaceAligner, align_face, align_photo, face_quad
from pulse_jax.errors import PulseJaxError


@pytest.fixture(scope="module")
def aligner():
    return FaceAligner()


@pytest.fixture(scope="module")
def astronaut(tmp_path_factory):
    path = tmp_path_factory.mktemp("photos") / "astronaut.png"
    Image.fromarray(data.astronaut()).save(path)
    return path


def test_aligned_face_has_level_eyes_in_the_ffhq_place(aligner, astronaut):
    photo = Image.open(astronaut)
    faces = aligner.landmarks(np.asarray(photo))
    assert faces, "dlib finds the astronaut's face"
    face = max(faces, key=lambda lm: np.ptp(lm[:, 0]))  # the largest face
    aligned = align_face(photo, face, 512)
    again = aligner.landmarks((aligned * 255).astype(np.uint8))
    assert again, "the aligned crop is still a detectable face"
    lm = max(again, key=lambda p: np.ptp(p[:, 0]))
    left, right = lm[36:42].mean(0), lm[42:48].mean(0)
    # Eyes level (the crop was rotated) and centred horizontally: within 2% of the side.
    assert abs(left[1] - right[1]) < 0.02 * 512
    assert abs((left[0] + right[0]) / 2 - 256) < 0.02 * 512
    # The square's side is 2 * max(2 |eye_to_eye|, 1.8 |eye_to_mouth|): eyes a quarter of the side apart
    # when the eye distance sets the scale.
    quad, side = face_quad(face)
    assert side == pytest.approx(2 * max(2 * np.hypot(*(face[42:48].mean(0) - face[36:42].mean(0))),
                                         1.8 * np.hypot(*((face[48] + face[54]) / 2 - face[36:48].mean(0)))))


def test_align_photo_downscales_every_face(aligner, astronaut):
    faces = align_photo(aligner, astronaut, 32)
    assert len(faces) >= 1 and all(f.shape == (32, 32, 3) for f in faces)
    assert 0 <= faces[0].min() and faces[0].max() <= 1 and faces[0].std() > 0.05


def test_photo_without_a_face(aligner, tmp_path):
    Image.fromarray(np.full((200, 200, 3), 128, np.uint8)).save(tmp_path / "wall.png")
    with pytest.raises(PulseJaxError, match="no face found"):
        align_photo(aligner, tmp_path / "wall.png", 32)
    with pytest.raises(PulseJaxError, match="must divide 1024"):
        align_photo(aligner, tmp_path / "wall.png", 24)
