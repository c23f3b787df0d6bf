"""The Flax generator against the PyTorch reference, from converted random checkpoints."""

from __future__ import annotations

import functools
import json

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx
from helpers import DATA, assert_float32_parity, assert_parity, save_checkpoint
from reference import stylegan_torch as ref

import pulse_jax as pj
from convert.pulse import convert
from pulse_jax import pulse_format
from pulse_jax.generators.stylegan1 import PRESETS

# The 1024 layout test's bars, relative to the output's std (the small configs are anchored to float64
# instead: assert_float32_parity). Two float32 implementations of the same 18-layer network differ by
# rounding only: measured 1.3e-4 max / 3.6e-6 mean at 1024. A wrong formula (say the unfused upsampling
# in place of the fused one, or a swapped scale/shift) misses by orders of magnitude.
MAX_REL_TOL = 5e-4
MEAN_REL_TOL = 1e-5


def random_inputs(config, batch, seed):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(batch, config.num_layers, config.dlatent_size, generator=g)
    noise = [torch.randn(batch, 1, *s, generator=g) for s in config.noise_shapes()]
    return w, noise


def in_dtype(sd, dtype):
    return {k: v.to(dtype) for k, v in sd.items()}


def reference_image(sd, w, noise, dtype=torch.float32):
    with torch.no_grad():
        image = ref.synthesis(in_dtype(sd, dtype), w.to(dtype), [n.to(dtype) for n in noise])
    return image.permute(0, 2, 3, 1).double().numpy()


def assert_generator_parity(model, sd, batch=2, seed=5, anchored=True):
    """Our float32 image against the reference's. ``anchored``: against its float64 run, the bar derived
    from its own float32 error (helpers.assert_float32_parity: measured at 256 px, ours 3.4e-5 max /
    1.5e-6 mean of the std from float64, the torch float32 run 2.0e-5 / 1.0e-6); else the fixed bars above."""
    w, noise = random_inputs(model.config, batch, seed)
    got = np.asarray(model.synthesize(w.numpy(), [n[:, 0].numpy() for n in noise]))
    chex.assert_shape(got, (batch, model.config.resolution, model.config.resolution, 3))
    if anchored:
        assert_float32_parity(got, reference_image(sd, w, noise), reference_image(sd, w, noise, torch.float64))
    else:
        assert_parity(got, reference_image(sd, w, noise), MAX_REL_TOL, MEAN_REL_TOL)


def test_reference_state_dict_has_the_real_key_names_and_shapes():
    real = [tuple((k, tuple(s))) for k, s in json.loads((DATA / "stylegan1_ffhq1024_synthesis_keys.json").read_text())]
    sd = ref.random_synthesis_state_dict(1024, 8192, 512)
    assert [(k, tuple(v.shape)) for k, v in sd.items()] == real
    real_map = [(k, tuple(s)) for k, s in json.loads((DATA / "stylegan1_ffhq1024_mapping_keys.json").read_text())]
    assert [(k, tuple(v.shape)) for k, v in ref.random_mapping_state_dict().items()] == real_map
    assert dict(real) == pulse_format.expected_synthesis_shapes(PRESETS["ffhq_1024"])


@pytest.mark.parametrize("fmt", ["zip", "legacy"])
def test_small_generator_matches_reference(small_checkpoints, gaussian_fit_file, tmp_path, fmt):
    files = small_checkpoints["files"]
    out = convert(synthesis=str(files[f"synthesis_{fmt}"]), mapping=str(files[f"mapping_{fmt}"]),
                  gaussian_fit=str(gaussian_fit_file), out=str(tmp_path / "m"), verbose=False)
    model = pj.load_model(out)
    assert model.config == PRESETS["small_256"]
    assert_generator_parity(model, small_checkpoints["synthesis"])
    z = torch.randn(3, 512, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        mapped = [ref.mapping(in_dtype(small_checkpoints["mapping"], t), z.to(t)).double().numpy()
                  for t in (torch.float32, torch.float64)]
    assert_float32_parity(np.asarray(model.map(z.numpy())), *mapped)


def reference_gradients(sd, w, noise, cotangent, dtype):
    """torch autograd's gradients of sum(image * cotangent) w.r.t. w and each noise map, in ``dtype``."""
    w = w.detach().to(dtype).clone().requires_grad_(True)
    noise = [n.detach().to(dtype).clone().requires_grad_(True) for n in noise]
    (ref.synthesis(in_dtype(sd, dtype), w, noise) * cotangent.to(dtype)).sum().backward()
    return [w.grad.double().numpy()] + [n.grad[:, 0].double().numpy() for n in noise]


def test_generator_gradients_match_reference(small_checkpoints):
    """The search differentiates the generator w.r.t. w and every noise map: those gradients equal torch
    autograd's through the reference, so hand-written backward passes (the blur's) and folded forms (the
    epilogue's one affine map) are checked where the search uses them, not only in the forward pass.

    Anchored to the reference's float64 gradients, the bar from its own float32 error: through 14 layers and
    back, float32 rounding of these random weights reaches a few 1e-3 of a gradient's std, by an amount that
    depends on the CPU (a fixed bar of 5e-4 passed on one machine and failed on another). Measured here, the
    w gradient: ours 2.1e-5 max / 2.1e-6 mean of its std from float64, torch's float32 run 1.0e-5 / 1.3e-6;
    the maps' gradients: ours within 3.4x of torch's error, all under 3e-5 max; a blur whose gradient is
    not blurred misses by the whole std."""
    sd = small_checkpoints["synthesis"]
    config, params = pulse_format.synthesis_params({k: v.numpy() for k, v in sd.items()})
    model = pj.Model.from_arrays(config, params)
    w, noise = random_inputs(config, 2, seed=7)
    cotangent = torch.randn(2, 3, config.resolution, config.resolution, generator=torch.Generator().manual_seed(8))
    torch32 = reference_gradients(sd, w, noise, cotangent, torch.float32)
    torch64 = reference_gradients(sd, w, noise, cotangent, torch.float64)

    def weighted_image(w_, noise_):
        image = model.synthesize(w_, noise_)
        return jnp.sum(image * jnp.asarray(cotangent.permute(0, 2, 3, 1).numpy()))

    grad_w, grad_noise = jax.grad(weighted_image, argnums=(0, 1))(
        jnp.asarray(w.numpy()), [jnp.asarray(n[:, 0].numpy()) for n in noise])
    got = [np.asarray(grad_w)] + [np.asarray(g) for g in grad_noise]
    for ours, theirs32, theirs64 in zip(got, torch32, torch64, strict=True):
        assert_float32_parity(ours, theirs32, theirs64)


@pytest.mark.slow
def test_prepared_for_search_is_the_same_function(small_checkpoints):
    """The search runs the generator with its kernels prepared once (scaled, upsampling convolutions as 2x2
    phase kernels, adjoints for the backward pass): the same images and the same gradients w.r.t. w and
    the noise maps as the checkpoint's form, for both upsampling paths, and no checkpoint kernel is left
    to redo that work at every step."""
    sd = small_checkpoints["synthesis"]
    config, params = pulse_format.synthesis_params({k: v.numpy() for k, v in sd.items()})
    model = pj.Model.from_arrays(config, params)
    prepared = model.search_params().state
    kinds = {type(v).__name__ for path, v in nnx.to_flat_state(prepared) if path[-1] == "kernel"}
    assert kinds == {"Prepared"}, kinds
    w, noise = random_inputs(config, 2, seed=9)
    cotangent = np.random.default_rng(3).standard_normal((2, config.resolution, config.resolution, 3))

    # Compared in float64: the phase forms sum the same products in another order, and in float32 these
    # random weights' gradients carry ~1e-2 of their std of rounding either way (the float32 checkpoint
    # form against itself in float64), too much to tell a small mistake from rounding. In float64 the
    # two agree to ~1e-12; a tap or phase out of place, or a wrong adjoint, is off by the whole std.
    with jax.enable_x64(True):
        as64 = functools.partial(jax.tree.map, lambda a: jnp.asarray(a, jnp.float64))
        module = nnx.merge(model.synthesis.graphdef, as64(model.synthesis.state))
        checkpoint_form = nnx.split(module)
        module.prepare_for_search(model.generator.SearchOptions())
        prepared_form = nnx.split(module)
        w64, noise64 = as64(w.numpy()), [as64(n[:, 0].numpy()) for n in noise]

        def image_and_grads(graphdef, state):
            def weighted(w_, noise_):
                image = nnx.merge(graphdef, state)(w_, noise_, "highest")
                return jnp.sum(image * cotangent), image
            return jax.jit(jax.grad(weighted, argnums=(0, 1), has_aux=True))(w64, noise64)

        (gw, gn), image = image_and_grads(*checkpoint_form)
        (pw, pn), prepared_image = image_and_grads(*prepared_form)
        for got, want in zip([prepared_image, pw, *pn], [image, gw, *gn], strict=True):
            err = np.abs(np.asarray(got) - np.asarray(want)) / np.asarray(want).std()
            assert err.max() < 1e-9, err.max()


def test_transposed_conv_forms_agree_with_torch():
    """Both forms of the fused upsampling equal torch's conv_transpose2d(stride 2, padding 1)."""
    from pulse_jax.generators.layers import TRANSPOSED_CONV_IMPLS

    x = np.random.default_rng(0).standard_normal((2, 5, 7, 3)).astype(np.float32)
    k4 = np.random.default_rng(1).standard_normal((4, 4, 3, 6)).astype(np.float32)
    want = torch.nn.functional.conv_transpose2d(torch.from_numpy(x).permute(0, 3, 1, 2),
                                                torch.from_numpy(k4).permute(2, 3, 0, 1), stride=2, padding=1)
    want = want.permute(0, 2, 3, 1).numpy()
    for impl in TRANSPOSED_CONV_IMPLS.values():
        np.testing.assert_allclose(np.asarray(impl(jnp.asarray(x), jnp.asarray(k4), "highest")), want, atol=1e-5)


@pytest.mark.slow
def test_ffhq_1024_layout_matches_reference(tmp_path):
    """The real layer layout (18 layers, fused upsampling from 128), legacy cuda-tagged file as users have."""
    sd = ref.random_synthesis_state_dict(1024, 8192, 512, seed=3)
    path = save_checkpoint(sd, tmp_path / "synthesis.pt", "legacy")
    out = convert(synthesis=str(path), out=str(tmp_path / "ffhq"), verbose=False)
    model = pj.load_model(out)
    assert model.config == PRESETS["ffhq_1024"] and model.config.num_layers == 18
    assert model.gaussian_fit is None
    assert_generator_parity(model, sd, batch=1, anchored=False)


def test_both_upsampling_paths_are_used_and_differ():
    """Below 128 nearest+conv, from 128 the fused transposed form: not the same function."""
    model = pj.Model.random(PRESETS["tiny_128"], seed=0)
    fused = {name: b.fused for name, b in model_blocks(model).items() if name != "4x4"}
    assert fused == {"8x8": False, "16x16": False, "32x32": False, "64x64": False, "128x128": True}
    from pulse_jax.generators.layers import conv_transpose_2x_dilated, fused_upsample_kernel, upsample_nearest_2x

    x = jax.random.normal(jax.random.key(0), (1, 8, 8, 4))
    k = jax.random.normal(jax.random.key(1), (3, 3, 4, 5))
    a = conv_transpose_2x_dilated(x, fused_upsample_kernel(k), "highest")
    b = jax.lax.conv_general_dilated(upsample_nearest_2x(x), k, (1, 1), "SAME",
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"))
    assert a.shape == b.shape == (1, 16, 16, 5)
    assert float(jnp.abs(a - b).max()) > 0.1


def model_blocks(model):
    return model.synthesis.module().blocks


def test_params_are_arguments_not_constants():
    """Changing the params changes the output without a second compile."""
    model = pj.Model.random(PRESETS["tiny_128"], seed=0)
    fn = jax.jit(chex.assert_max_traces(lambda params, w, noise: model.generator.synthesize(params, w, noise), n=1))
    w = jnp.ones((1, model.num_ws, 512))
    noise = [jnp.zeros((1, *s)) for s in model.noise_shapes()]
    a = fn(model.synthesis, w, noise)
    other = jax.tree_util.tree_map(lambda p: p * 1.5, model.synthesis)
    b = fn(other, w, noise)
    assert float(jnp.abs(a - b).max()) > 1e-3


def test_synthesize_rejects_wrong_shapes():
    model = pj.Model.random(PRESETS["tiny_128"], seed=0, with_mapping=False)
    noise = [jnp.zeros((1, *s)) for s in model.config.noise_shapes()]
    with pytest.raises(pj.PulseJaxError, match=r"w must be \(batch, 12, 512\)"):
        model.synthesize(jnp.zeros((1, 18, 512)), noise)
    with pytest.raises(pj.PulseJaxError, match="noise\\[3\\]"):
        model.synthesize(jnp.zeros((1, 12, 512)), noise[:3] + [jnp.zeros((1, 4, 4))] + noise[4:])
    with pytest.raises(pj.PulseJaxError, match="no mapping network"):
        model.map(jnp.zeros((1, 512)))


def test_config_presets_and_validation():
    c = PRESETS["ffhq_1024"]
    assert c.num_layers == 18
    assert c.noise_shapes()[0] == (4, 4) and c.noise_shapes()[17] == (1024, 1024)
    assert [c.block_channels(r) for r in c.block_resolutions()] == [512, 512, 512, 512, 256, 128, 64, 32, 16]
    with pytest.raises(ValueError):
        pj.StyleGANConfig(resolution=100)


@pytest.mark.slow  # 9-20 s on 2 cores: the fast tier keeps its 3 minutes; the full suite runs it
def test_bfloat16_mode_is_close_but_not_float32():
    """bf16 operands, float32 accumulation and output: ~1% of the std off on average (bf16 has 8 bits of
    mantissa, and 12 normalised layers amplify), never a different picture."""
    model = pj.Model.random(PRESETS["tiny_128"], seed=0, with_mapping=False)
    w = jax.random.normal(jax.random.key(0), (2, model.num_ws, 512))
    noise = [jax.random.normal(jax.random.key(i + 1), (2, *s)) for i, s in enumerate(model.config.noise_shapes())]
    a = np.asarray(model.synthesize(w, noise))
    b = model.synthesize(w, noise, precision="bfloat16")
    assert b.dtype == jnp.float32
    err = np.abs(np.asarray(b) - a) / a.std()
    assert 1e-4 < err.mean() < 5e-2


@pytest.mark.slow
def test_both_transposed_conv_forms_give_the_same_search(tiny):
    """RunOptions' StyleGAN v1 options reach the generator's preparation (not a module global): the fused
    upsampling as phases or dilated is the same function, so the first step's loss agrees to float32
    rounding (measured 1e-7; 1e-5), and the two are compiled as two programs."""
    lr = np.random.default_rng(0).random((1, 16, 16, 3), dtype=np.float32)
    config = pj.PulseConfig(steps=1)
    form = tiny.generator.SearchOptions
    a = pj.search(tiny, lr, config, pj.RunOptions(generator=form(transposed_conv="phases")), key=jax.random.key(0))
    b = pj.search(tiny, lr, config, pj.RunOptions(generator=form(transposed_conv="dilated")), key=jax.random.key(0))
    np.testing.assert_allclose(a.loss_history, b.loss_history, rtol=1e-5)
    blocks = tiny.search_params(form(transposed_conv="dilated")).module().blocks
    assert blocks["128x128"].transposed_conv == "dilated" and blocks["128x128"].phases is None
