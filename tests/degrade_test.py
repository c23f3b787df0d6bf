"""bicubic_downsample against the reference operator (torch, written from the spec)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from PIL import Image
from reference.pulse_torch import bicubic_down

import pulse_jax as pj
from pulse_jax.degrade import Degradation, bicubic_matrix, bicubic_taps, gaussian_downsample


@pytest.mark.parametrize("factor", [2, 3, 4, 5, 8, 16, 32, 64])
def test_matches_reference(factor):
    size = 128 if factor <= 32 else 256
    size -= size % factor
    x = np.random.default_rng(factor).random((2, size, size, 3), dtype=np.float32)
    got = np.asarray(pj.bicubic_downsample(x, factor))
    with torch.no_grad():
        want = bicubic_down(torch.from_numpy(x).permute(0, 3, 1, 2), factor).permute(0, 2, 3, 1).numpy()
    assert got.shape == want.shape == (2, size // factor, size // factor, 3)
    # Sums of 4f products of numbers in [0, 1], float32 in both: rounding is ~1e-7.
    np.testing.assert_allclose(got, want, atol=2e-6)


def test_operator_properties():
    for f in (2, 4, 32):
        assert np.isclose(bicubic_taps(f).sum(), 1.0)
        m = bicubic_matrix(256, f)
        np.testing.assert_allclose(m.sum(1), 1.0, atol=1e-6)  # a constant image stays constant
    flat = np.full((1, 64, 64, 3), 0.3, np.float32)
    np.testing.assert_allclose(np.asarray(pj.bicubic_downsample(flat, 8)), 0.3, atol=1e-6)
    # Non-square images work too (the operator is separable); bad factors are refused.
    assert pj.bicubic_downsample(np.zeros((1, 64, 32, 1), np.float32), 4).shape == (1, 16, 8, 1)
    with pytest.raises(pj.PulseJaxError, match="must be a positive integer dividing"):
        pj.bicubic_downsample(np.zeros((1, 30, 30, 3), np.float32), 4)


def test_box_is_the_block_mean():
    x = np.random.default_rng(0).random((1, 8, 8, 3), dtype=np.float32)
    want = x.reshape(1, 2, 4, 2, 4, 3).mean(axis=(2, 4))
    np.testing.assert_allclose(np.asarray(Degradation.parse("box").apply(x, 4)), want, atol=1e-6)


def test_gaussian_is_a_normalised_blur_sampled_at_block_centres():
    x = np.random.default_rng(1).random((1, 16, 16, 1), dtype=np.float32)
    got = np.asarray(Degradation.parse("gaussian:1.5").apply(np.repeat(x, 3, -1), 4))[0, :, :, 0]
    ys = np.arange(16)
    for i, j in [(0, 0), (1, 2), (3, 3)]:
        cy, cx = i * 4 + 1.5, j * 4 + 1.5
        wy, wx = np.exp(-0.5 * ((ys - cy) / 1.5) ** 2), np.exp(-0.5 * ((ys - cx) / 1.5) ** 2)
        w = np.outer(wy / wy.sum(), wx / wx.sum())
        assert got[i, j] == pytest.approx(float((w * x[0, :, :, 0]).sum()), abs=1e-5)
    flat = np.full((1, 32, 32, 3), 0.25, np.float32)
    np.testing.assert_allclose(np.asarray(gaussian_downsample(flat, 8)), 0.25, atol=1e-6)


def test_gray_is_luma_and_composes():
    x = np.random.default_rng(2).random((2, 8, 8, 3), dtype=np.float32)
    d = Degradation.parse("box+gray")
    got = np.asarray(d.apply(x, 2))
    want = (x.reshape(2, 4, 2, 4, 2, 3).mean(axis=(2, 4)) * np.array([0.299, 0.587, 0.114])).sum(-1, keepdims=True)
    np.testing.assert_allclose(got, want, atol=1e-6)
    assert str(Degradation.parse("gaussian:2+gray+mask")) == "gaussian:2+gray+mask"
    for bad in ("bicubic+box", "blur", "box:3", "gaussian:x", "gray:1"):
        with pytest.raises(pj.PulseJaxError):
            Degradation.parse(bad)


def test_mask_limits_the_loss_to_known_pixels():
    """Changing the input where the mask is 0 changes nothing; where it is 1, it does."""
    from pulse_jax.losses import mse

    gen = np.random.default_rng(3).random((8, 8, 3), dtype=np.float32)
    ref = np.random.default_rng(4).random((8, 8, 3), dtype=np.float32)
    mask = np.zeros((8, 8, 1), np.float32)
    mask[2:6, 2:6] = 1
    other = ref.copy()
    other[0] += 0.5
    assert float(mse(gen, ref, mask)) == pytest.approx(float(mse(gen, other, mask)))
    other[3, 3] += 0.5
    assert float(mse(gen, ref, mask)) != pytest.approx(float(mse(gen, other, mask)))
    assert float(mse(gen, ref, mask)) == pytest.approx(float(((gen - ref) ** 2)[2:6, 2:6].mean()), rel=1e-5)


def direct_conv_same(x, k):
    """scipy.signal.convolve2d(mode="same") per channel, as loops: the definition conv_same follows."""
    b, h, w, c = x.shape
    kh, kw = k.shape
    out = np.zeros_like(x, dtype=np.float64)
    for y in range(h):
        for xx in range(w):
            for i in range(kh):
                for j in range(kw):
                    sy, sx = y + (kh - 1) // 2 - i, xx + (kw - 1) // 2 - j
                    if 0 <= sy < h and 0 <= sx < w:
                        out[:, y, xx] += k[i, j] * x[:, sy, sx]
    return out


@pytest.mark.parametrize("shape", [(3, 3), (4, 4), (5, 2), (1, 6)])
def test_kernel_is_the_convolution_it_says(tmp_path, shape):
    from pulse_jax.degrade import conv_same

    rng = np.random.default_rng(sum(shape))
    k = rng.random(shape)
    np.save(tmp_path / "k.npy", k)
    d = Degradation.parse(f"kernel:{tmp_path / 'k.npy'}")
    np.testing.assert_allclose(np.asarray(d.kernel).sum(), 1.0, rtol=1e-6)  # normalised
    x = rng.random((2, 12, 10, 3)).astype(np.float32)
    got = np.asarray(conv_same(jnp.asarray(x), np.asarray(d.kernel, np.float32)))
    # float32 sums of <= 36 products of numbers in [0, 1]: rounding ~1e-7.
    np.testing.assert_allclose(got, direct_conv_same(x, k / k.sum()), atol=1e-6)


def test_kernel_comes_before_the_downscaling(tmp_path):
    k = np.random.default_rng(0).random((5, 5))
    np.save(tmp_path / "k.npy", k)
    x = np.random.default_rng(1).random((1, 32, 32, 3)).astype(np.float32)
    got = np.asarray(Degradation.parse(f"kernel:{tmp_path / 'k.npy'}+bicubic").apply(jnp.asarray(x), 4))
    m = bicubic_matrix(32, 4).astype(np.float64)
    want = np.einsum("ih,bhwc,jw->bijc", m, direct_conv_same(x, k / k.sum()), m)
    np.testing.assert_allclose(got, want, atol=2e-6)
    # A PNG kernel reads as grayscale, the same kernel up to its 8-bit rounding.
    Image.fromarray(np.round(k / k.max() * 255).astype(np.uint8)).save(tmp_path / "k.png")
    png = np.asarray(Degradation.parse(f"kernel:{tmp_path / 'k.png'}").kernel)
    np.testing.assert_allclose(png, k / k.sum(), atol=3 / 255 / (k / k.max()).sum())


@pytest.mark.parametrize("pattern", ["RGGB", "BGGR", "GRBG", "GBRG"])
def test_bayer_samples_each_pixel_through_its_filter(pattern):
    x = np.random.default_rng(2).random((2, 6, 8, 3)).astype(np.float32)
    d = Degradation.parse(f"bayer:{pattern}")
    got = np.asarray(d.apply(jnp.asarray(x), 1))
    tile = [["RGB".index(pattern[0]), "RGB".index(pattern[1])], ["RGB".index(pattern[2]), "RGB".index(pattern[3])]]
    want = np.array([[[x[b, y, xx, tile[y % 2][xx % 2]] for xx in range(8)] for y in range(6)] for b in range(2)])
    np.testing.assert_array_equal(got[..., 0], want)
    # A 1-channel mosaic file is read as three equal channels: the loss sees its own values.
    gray = np.repeat(want[..., None], 3, axis=-1).astype(np.float32)
    np.testing.assert_array_equal(np.asarray(d.observe(jnp.asarray(gray)))[..., 0], want)
    # The same mosaic as a 3-channel image counts each pixel's filter colour only.
    np.testing.assert_array_equal(np.asarray(d.observe(jnp.asarray(x))), got)


def test_noise_sets_what_eps_means():
    assert Degradation.parse("noise:0.1").noise_eps() == pytest.approx(0.01)
    # SIGMA is the noise in each compared value, and the loss averages over what it compares.
    assert Degradation.parse("noise:0.1+gray").noise_eps() == pytest.approx(0.01)
    assert Degradation.parse("bayer+noise:0.1+mask").noise_eps() == pytest.approx(0.01)
    assert pj.PulseConfig(degradation="box+noise:0.1").effective_eps == pytest.approx(0.01)
    assert "SIGMA^2 = 0.01" in pj.PulseConfig(degradation="box+noise:0.1").eps_reason
    given = pj.PulseConfig(degradation="box+noise:0.1", eps=0.5)
    assert (given.effective_eps, given.eps_reason) == (0.5, "given")  # given wins
    assert (pj.PulseConfig().effective_eps, pj.PulseConfig().eps_reason) == (2e-3, "PULSE's default")
    assert pj.PulseConfig().to_dict()["eps"] == 2e-3  # reports and hashes carry the number used
    x = jnp.asarray(np.random.default_rng(3).random((1, 16, 16, 3)).astype(np.float32))
    assert np.array_equal(np.asarray(Degradation.parse("box+noise:0.2").apply(x, 2)),
                          np.asarray(Degradation.parse("box").apply(x, 2)))  # the operator itself is unchanged


def test_composition_round_trips_in_canonical_order(tmp_path):
    np.save(tmp_path / "k.npy", np.ones((3, 3)))
    text = f"mask+noise:0.05+bayer:GRBG+box+kernel:{tmp_path / 'k.npy'}"
    d = Degradation.parse(text)
    assert d.canonical() == f"kernel:{tmp_path / 'k.npy'}+box+bayer:GRBG+noise:0.05+mask"
    assert Degradation.parse(d.canonical()) == d
    assert str(d) == text  # as the user wrote it: what reports show and the config hash names


@pytest.mark.parametrize(("spec", "message"), [
    ("blur", "unknown degradation 'blur'"),
    ("noise:1.5", "noise SIGMA must be from 0 to 0.5"),
    ("noise:-0.1", "noise SIGMA must be from 0 to 0.5"),
    ("noise:abc", "needs a finite number"),
    ("kernel:/no/such.npy", "kernel:/no/such.npy: no such file"),
    ("bayer:RGBG", "unknown Bayer pattern"),
    ("bayer+gray", "bayer and gray exclude each other"),
    ("noise:0.1+noise:0.2", "names noise twice"),
])
def test_bad_specs_name_the_spec(spec, message):
    with pytest.raises(pj.PulseJaxError, match=message):
        Degradation.parse(spec)


def test_bad_kernels_and_sizes_are_refused(tmp_path):
    np.save(tmp_path / "zeros.npy", np.zeros((3, 3)))
    with pytest.raises(pj.PulseJaxError, match="positive sum"):
        Degradation.parse(f"kernel:{tmp_path / 'zeros.npy'}")
    np.save(tmp_path / "cube.npy", np.ones((2, 2, 2)))
    with pytest.raises(pj.PulseJaxError, match="2-D array"):
        Degradation.parse(f"kernel:{tmp_path / 'cube.npy'}")
    np.save(tmp_path / "objects.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(pj.PulseJaxError, match="array of Python objects"):
        Degradation.parse(f"kernel:{tmp_path / 'objects.npy'}")
    np.save(tmp_path / "big.npy", np.ones((9, 9)))
    with pytest.raises(pj.PulseJaxError, match="larger than the generator's 8x8"):
        Degradation.parse(f"kernel:{tmp_path / 'big.npy'}").check(8, 8)
    with pytest.raises(pj.PulseJaxError, match="side must be even"):
        Degradation.parse("bayer").check(128, 15)


def test_mosaic_comes_after_the_downscaling_and_mask_last():
    x = np.random.default_rng(4).random((1, 16, 16, 3)).astype(np.float32)
    got = np.asarray(Degradation.parse("box+bayer:BGGR").apply(jnp.asarray(x), 2))
    small = x.reshape(1, 8, 2, 8, 2, 3).mean(axis=(2, 4))
    pick = np.asarray([[2, 1], [1, 0]])  # BGGR: B G / G R
    want = np.take_along_axis(small, np.tile(pick, (4, 4))[None, :, :, None], axis=-1)
    np.testing.assert_allclose(got, want, atol=1e-7)  # float32 means of 4 values


def test_simulate_makes_observations_as_files_hold_them():
    x = jnp.asarray(np.random.default_rng(5).random((2, 64, 64, 3)).astype(np.float32))
    clean = Degradation.parse("bayer").simulate(x, 1)
    assert clean.shape == (2, 64, 64, 3)
    np.testing.assert_array_equal(clean[..., 0], clean[..., 2])  # a 1-channel mosaic in all three channels
    noisy = np.asarray(Degradation.parse("noise:0.05").simulate(x * 0.5 + 0.25, 1, jax.random.key(0)))
    residual = noisy - np.asarray(x * 0.5 + 0.25)
    # 24576 draws: the sample variance is within 3% of SIGMA^2 = 2.5e-3 with probability > 0.999.
    assert residual.var() == pytest.approx(2.5e-3, rel=0.03)
    with pytest.raises(pj.PulseJaxError, match="needs a random key"):
        Degradation.parse("noise:0.05").simulate(x, 1)


def test_factor_one_is_the_identity_downscaling():
    x = jnp.asarray(np.random.default_rng(6).random((1, 32, 32, 3)).astype(np.float32))
    for name in ("bicubic", "box"):
        np.testing.assert_array_equal(np.asarray(Degradation.parse(name).apply(x, 1)), np.asarray(x))
    # gaussian stays a blur (of its sigma, default f / 2) at factor 1: it is a blur before a subsampling.
    assert not np.allclose(np.asarray(Degradation.parse("gaussian").apply(x, 1)), np.asarray(x), atol=1e-3)
