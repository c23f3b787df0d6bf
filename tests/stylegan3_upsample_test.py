"""StyleGAN3's upsample job at the sizes NVIDIA publishes (a file of its own: these cases take minutes
together, and a file is what the suite's two workers share out)."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import upsample
from PIL import Image

import pulse_jax as pj
from pulse_jax.generators.stylegan3 import StyleGAN3Config


@pytest.mark.slow  # 10-25 s each on 2 cores (the 1024 px program compiles in about 15 s)
@pytest.mark.parametrize(("resolution", "radial"), [(256, False), (512, True), (1024, False)],
                         ids=["T256", "R512", "T1024"])
def test_upsample_at_the_released_resolutions(resolution, radial, tmp_path):
    """NVIDIA publishes StyleGAN3 at 256 (FFHQ-U), 512 (AFHQv2) and 1024 px (FFHQ, MetFaces): the whole
    upsample job at each size, on a random generator with NVIDIA's layer count and geometry (fewer channels,
    4 at the top, so that a step is seconds here), from a 16 px input: x16 to x64."""
    config = StyleGAN3Config(resolution=resolution, channel_base=4 * resolution, channel_max=8,
                             conv_kernel=1 if radial else 3, radial_filters=radial)
    assert config.layer_specs()[-2].out_channels == 4 and config.num_ws == 16
    model = pj.Model.random(config, seed=0, with_mapping=False).with_gaussian_fit(
        (np.zeros(512, np.float32), np.ones(512, np.float32)))
    face = tmp_path / "in" / "face.png"
    face.parent.mkdir()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(face)
    report = upsample(model, [face], tmp_path / "out", config=pj.PulseConfig(steps=2), seeds=1)
    assert report["searched"] == ["face"] and report["resolution"] == resolution, report
    assert np.isfinite(report["inputs"][0]["seeds"][0]["best_l2"])
    image = np.asarray(Image.open(tmp_path / "out" / "face.png"))
    assert image.shape == (resolution, resolution, 3) and image.std() > 0
