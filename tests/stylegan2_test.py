"""StyleGAN2: converted from NVIDIA's pickles and rosinality's checkpoints, against the PyTorch reference
(tests/reference/stylegan2_torch.py, written from the spec, every parameter and buffer random)."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest
import stylegan2_files as files
import torch
from helpers import assert_float32_parity, assert_parity, convert_here, counting_compiles, pulse_jax_here
from reference import pulse_torch
from reference import stylegan2_torch as ref

import pulse_jax as pj
from convert.network import convert_network, read_network
from pulse_jax.errors import CheckpointError

ROOT = Path(__file__).parents[1]
# A small config whose clamp is reached (asserted below): 64 px, 16-32 channels, conv_clamp 2.
SMALL = {"resolution": 64, "channel_base": 1024, "channel_max": 32, "conv_clamp": 2.0}


@pytest.fixture(scope="module")
def small_sd():
    return ref.random_generator_state_dict(64, 1024, 32, seed=0)


@pytest.fixture(scope="module")
def small_pickle(small_sd, tmp_path_factory):
    g = files.nvidia_generator(small_sd, 64, 1024, 32, SMALL["conv_clamp"])
    return files.write_nvidia_pickle(tmp_path_factory.mktemp("sg2") / "network-snapshot-000100.pkl", g)


@pytest.fixture(scope="module")
def stylegan2_model_dir(small_pickle, tmp_path_factory):
    return convert_network(network=str(small_pickle), out=str(tmp_path_factory.mktemp("m") / "sg2"),
                           gaussian_fit_samples=20_000, verbose=False)


def inputs(config, batch=2, seed=1):
    g = torch.Generator().manual_seed(seed)
    ws = torch.randn(batch, config.num_ws, 512, generator=g)
    return ws, [torch.randn(batch, *s, generator=g) for s in config.noise_shapes()]


def assert_layout_parity(got, want):
    """The 1024 layout's bar, relative to the output's std: max 5e-4, mean 1e-5. Both sides float32,
    different forms (ours the shared-weight modulation, the reference the grouped per-sample one). The
    64 px tests are anchored to float64 instead (reference_runs)."""
    assert_parity(got, want, 5e-4, 1e-5)


def reference_runs(fn, sd, *args):
    """``fn(sd, *args)`` of the torch reference in float32 and in float64 (NHWC for images), for
    assert_float32_parity: measured at 64 px, ours 4.4e-6 max / 5.7e-7 mean of the std from float64, the
    torch float32 run 2.7e-6 / 3.8e-7; the mapping 7.2e-6 / 6.3e-7 against 4.3e-6 / 5.7e-7."""
    runs = []
    for dtype in (torch.float32, torch.float64):
        with torch.no_grad():
            out = fn({k: v.to(dtype) for k, v in sd.items()},
                     *[[t.to(dtype) for t in a] if isinstance(a, list) else a.to(dtype) if torch.is_tensor(a) else a
                       for a in args])
        runs.append((out.permute(0, 2, 3, 1) if out.ndim == 4 else out).double().numpy())
    return runs


def test_nvidia_pickle_converts_to_the_reference(small_sd, stylegan2_model_dir):
    model = pj.load_model(stylegan2_model_dir)
    config = model.config
    assert config.architecture == "stylegan2" and config == pj.StyleGAN2Config(**SMALL)
    assert model.num_ws == 10 and len(model.noise_shapes()) == 9  # rows and maps counted apart
    ws, noise = inputs(config)
    want = reference_runs(ref.synthesis, small_sd, ws, noise, SMALL["conv_clamp"])
    with torch.no_grad():
        unclamped = ref.synthesis(small_sd, ws, noise, None).permute(0, 2, 3, 1).numpy()
    assert np.abs(unclamped - want[0]).max() > 0.1  # the clamp is reached, so it is tested
    assert_float32_parity(np.asarray(model.synthesize(ws.numpy(), [n.numpy() for n in noise])), *want)
    z = torch.randn(4, 512, generator=torch.Generator().manual_seed(3))
    assert_float32_parity(np.asarray(model.map(z.numpy())), *reference_runs(ref.mapping, small_sd, z))
    np.testing.assert_array_equal(np.asarray(model.w_avg), small_sd["mapping.w_avg"].numpy())
    source = json.loads((stylegan2_model_dir / "model.json").read_text())["source"]
    assert source["kind"] == "nvidia-network-pickle"
    assert source["module_src_sha256"] == [hashlib.sha256(files.MODULE_SRC.encode()).hexdigest()]


def test_rosinality_checkpoint_gives_the_same_generator(small_sd, tmp_path):
    path = files.write_rosinality(tmp_path / "550000.pt", small_sd, 64)
    read = read_network(str(path))
    config = read.config
    assert read.source["kind"] == "rosinality-checkpoint"
    assert config == pj.StyleGAN2Config(**{**SMALL, "conv_clamp": None})
    model = pj.Model.from_arrays(config, read.synthesis, read.mapping)
    ws, noise = inputs(config)
    want = reference_runs(ref.synthesis, small_sd, ws, noise, None)
    assert_float32_parity(np.asarray(model.synthesize(ws.numpy(), [n.numpy() for n in noise])), *want)
    np.testing.assert_array_equal(np.asarray(model.w_avg), small_sd["mapping.w_avg"].numpy())


def test_a_stylegan2_pickle_of_the_stylegan3_repository_converts(small_sd, tmp_path):
    """NVIDIA's stylegan3 repository pickles its StyleGAN2 networks (stylegan2-*.pkl of that release, and
    --cfg=stylegan2 runs) from ``training.networks_stylegan2``: the same records with a few attributes
    more. They are StyleGAN2, not refused as StyleGAN3, and give the reference's images."""
    g = files.as_stylegan3_repository(files.nvidia_generator(small_sd, 64, 1024, 32, SMALL["conv_clamp"]))
    read = read_network(str(files.write_nvidia_pickle(tmp_path / "stylegan2-ffhqu-64x64.pkl", g)))
    assert read.config == pj.StyleGAN2Config(**SMALL)
    assert read.source["module_src_sha256"] == [hashlib.sha256(files.STYLEGAN3_REPO_SRC.encode()).hexdigest()]
    model = pj.Model.from_arrays(read.config, read.synthesis, read.mapping)
    ws, noise = inputs(read.config)
    want = reference_runs(ref.synthesis, small_sd, ws, noise, SMALL["conv_clamp"])
    assert_float32_parity(np.asarray(model.synthesize(ws.numpy(), [n.numpy() for n in noise])), *want)


@pytest.mark.slow
def test_1024_config_f_layout(tmp_path):
    """NVIDIA's FFHQ layout (config-f: 1024 px, channel_base 32768, 512 channels up to 64 px)."""
    sd = ref.random_generator_state_dict(1024, 32768, 512, seed=5)
    path = files.write_nvidia_pickle(tmp_path / "stylegan2-ffhq-1024x1024.pkl",
                                     files.nvidia_generator(sd, 1024, 32768, 512, 256.0))
    read = read_network(str(path))
    config, synthesis, mapping = read.config, read.synthesis, read.mapping
    assert config == pj.StyleGAN2Config(conv_clamp=256.0)
    assert config.num_ws == 18 and len(config.noise_shapes()) == 17
    model = pj.Model.from_arrays(config, synthesis, mapping)
    ws, noise = inputs(config, batch=1)
    with torch.no_grad():
        want = ref.synthesis(sd, ws, noise, 256.0).permute(0, 2, 3, 1).numpy()
    assert_layout_parity(np.asarray(model.synthesize(ws.numpy(), [n.numpy() for n in noise])), want)


class System:
    """Pickles as a call of os.system: what a hostile file would hide in its data."""

    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


def test_code_in_a_network_pickle_never_runs(small_sd, tmp_path):
    trace = tmp_path / "ran"
    src = f"import pathlib\npathlib.Path({str(trace)!r}).write_text('module_src ran')\n"
    g = files.nvidia_generator(small_sd, 64, 1024, 32, 2.0, module_src=src)
    out = convert_network(network=str(files.write_nvidia_pickle(tmp_path / "src.pkl", g)), out=str(tmp_path / "m"),
                          gaussian_fit_samples=100, verbose=False)
    assert not trace.exists()  # read as a record; its sha256 kept as provenance
    digest = hashlib.sha256(src.encode()).hexdigest()
    assert digest in json.loads((out / "model.json").read_text())["source"]["module_src_sha256"]
    hostile = files.write_nvidia_pickle(tmp_path / "system.pkl", files.nvidia_generator(small_sd, 64, 1024, 32),
                                        extra={"augment_pipe": System(f"touch {trace}")})
    r = convert_here("--network", hostile, "--out", tmp_path / "m2", "--fit-samples", "100")
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert f"{os.system.__module__}.system" in r.stderr and "refused" in r.stderr
    assert not trace.exists() and not (tmp_path / "m2").exists()


def test_damaged_files_are_refused_and_nothing_is_written(small_pickle, small_sd, tmp_path):
    data = small_pickle.read_bytes()
    rng = np.random.default_rng(0)
    cases = {f"cut{n}": data[:n] for n in (1, 2, 50, len(data) // 3, len(data) - 1)}
    for k in range(12):  # flipped bytes anywhere
        b = bytearray(data)
        for i in rng.integers(0, len(b), 4):
            b[i] ^= int(rng.integers(1, 256))
        cases[f"flip{k}"] = bytes(b)
    for name, content in cases.items():
        path = tmp_path / f"{name}.pkl"
        path.write_bytes(content)
        try:
            read_network(str(path))
        except CheckpointError as e:
            assert str(path) in str(e), (name, e)
        # A flip inside a tensor's bytes leaves a readable file with other numbers: that is not damage
        # the reader can see, and it is not an error.
    cut = tmp_path / "cut.pkl"
    cut.write_bytes(data[: len(data) // 2])
    r = convert_here("--network", cut, "--out", tmp_path / "o", "--fit-samples", "100")
    assert r.returncode == 2 and "truncated" in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert not (tmp_path / "o").exists()
    missing = files.write_rosinality(tmp_path / "missing.pt", small_sd, 64, drop="convs.3.noise.weight")
    r = convert_here("--network", missing, "--out", tmp_path / "o", "--fit-samples", "100")
    assert r.returncode == 2 and "convs.3.noise.weight" in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(("change", "message"), [
    ({"c_dim": 10}, "conditional generator"),
    ({"architecture": "orig"}, "architecture 'orig'"),
])
def test_unsupported_generators_are_named(small_sd, tmp_path, change, message):
    g = files.nvidia_generator(small_sd, 64, 1024, 32, **change)
    with pytest.raises(CheckpointError, match=message):
        read_network(str(files.write_nvidia_pickle(tmp_path / "g.pkl", g)))


def test_stylegan2_blocks_under_a_stylegan3_input_are_refused_naming_stylegan3(small_sd, tmp_path):
    """A file whose synthesis starts from Fourier features is read as StyleGAN3: records that are not
    StyleGAN3's then fail by name, under that title."""
    g = files.nvidia_generator(small_sd, 64, 1024, 32)
    g.meta["state"]["_modules"]["synthesis"].meta["state"]["_modules"]["input"] = files.Net("SynthesisInput")
    with pytest.raises(CheckpointError, match=r"\(StyleGAN3\): synthesis.input: size is None"):
        read_network(str(files.write_nvidia_pickle(tmp_path / "g.pkl", g)))


@pytest.mark.slow
def test_search_follows_the_torch_loop(small_sd, stylegan2_model_dir):
    """As search_test.test_short_run_follows_reference for StyleGAN v1 (same tolerances, same reasons:
    step 0 is one forward pass, rounding only; Adam's first update is almost lr * sign(g), so gradient
    entries near zero flip between two float32 implementations and the runs drift a little)."""
    model = pj.load_model(stylegan2_model_dir)
    config = pj.PulseConfig(steps=4)
    n, s = 1, 2
    rng = np.random.default_rng(0)
    init = pj.SearchInit(rng.standard_normal((n, s, model.num_ws, 512)).astype(np.float32),
                         [rng.standard_normal((n, s, *shape)).astype(np.float32) for shape in model.noise_shapes()])
    lr = np.random.default_rng(1).random((n, 16, 16, 3), dtype=np.float32)
    result = pj.search(model, lr, config, seeds=s, init=init)
    zero = set(config.zero_layers(len(model.noise_shapes())))
    assert zero == {8}  # the last map (64 px), as bad_noise_layers' default names it
    noise = [torch.from_numpy(np.where(i in zero, 0.0, x).reshape(n * s, 1, *x.shape[2:]))
             for i, x in enumerate(init.noise)]
    mean, std = (torch.from_numpy(np.array(a)) for a in model.gaussian_fit)
    loss, l2, _, _ = pulse_torch.run(
        small_sd, (mean, std), torch.from_numpy(np.repeat(lr, s, axis=0)).permute(0, 3, 1, 2).contiguous(),
        torch.from_numpy(init.latent.reshape(n * s, model.num_ws, 512)), noise,
        trainable_layers=config.trainable_layers(len(model.noise_shapes())), steps=config.steps,
        synthesis=lambda sd, w, maps: ref.synthesis(sd, w, maps, SMALL["conv_clamp"]), num_ws=model.num_ws)
    ours = result.loss_history.reshape(config.steps, n * s)
    theirs = loss.numpy()
    rel = np.abs(ours - theirs) / np.abs(theirs)
    assert rel[0].max() < 1e-5 and rel[1].max() < 2e-3 and rel.max() < 1e-2, rel
    # Seeds are independent: seed 1 searched alone follows seed 1 of the pair (float32 rounding of a
    # batch of 1 against 2; 1e-5 as at step 0).
    one = pj.search(model, lr, config, seeds=1, init=pj.SearchInit(init.latent[:, 1:], [x[:, 1:] for x in init.noise]))
    np.testing.assert_allclose(one.loss_history[:, 0, 0], result.loss_history[:, 0, 1], rtol=1e-5)
    # remat (each block recomputed in the backward pass) changes memory, not the search: the same program
    # up to XLA's fusion choices (measured equal to float32 rounding; 1e-5 as at step 0).
    again = pj.search(model, lr, config, pj.RunOptions(remat=True), seeds=s, init=init)
    np.testing.assert_allclose(again.loss_history, result.loss_history, rtol=1e-5)
    # A second search of the same shapes compiles nothing new.
    with counting_compiles() as compiled:
        pj.search(model, lr * 0.25, config, seeds=2, init=init)
    assert compiled == {}, compiled


@pytest.mark.slow
def test_demo_and_upsample_on_a_converted_stylegan2(stylegan2_model_dir, tmp_path):
    from PIL import Image

    Image.fromarray(np.random.default_rng(0).integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(tmp_path / "f.png")
    r = pulse_jax_here("upsample", tmp_path / "f.png", "--model", stylegan2_model_dir, "--out", tmp_path / "o",
                  "--steps", "3", "--seeds", "2", "--quiet")
    assert r.returncode == 0, r.stderr
    report = json.loads((tmp_path / "o" / "report.json").read_text())
    assert report["architecture"] == "stylegan2" and report["resolution"] == 64
    assert Image.open(tmp_path / "o" / "f.png").size == (64, 64)


@pytest.mark.slow
def test_demo_runs_a_random_stylegan2(tmp_path):
    from pulse_jax.demo import run_demo

    report = run_demo(tmp_path / "d", seeds=2, lr_size=8, steps=12, architecture="stylegan2", show_progress=False)
    assert report["architecture"] == "stylegan2" and len(report["seeds"]) == 2
    assert all(s["min_l2"] < s["first_l2"] for s in report["seeds"])
    assert (tmp_path / "d" / "sheet.png").is_file()


@pytest.mark.slow
def test_prepared_for_search_is_the_same_function():
    """The forms a search step uses (the demodulation's sums of squares, the upsampling's phase kernel,
    kernels' adjoints, Winograd's transforms where the CPU default picks them, as here: 256 channels at
    4 and 8 px) give the plain function's values and gradients, checked against the plain function in
    float64. Outputs: measured within 4.2e-6 of the std; 2e-5. Gradients (relative L2 norm): 1.1e-6 in
    a process of its own, 2.2e-4 inside the full suite, and the plain function itself in float32 strays
    up to 2.6e-3 from float64 here (XLA:CPU's float32 convolutions round differently from run to run
    of the process); 5e-3. A wrong tap, flip or transform in a prepared form is off by O(1)."""
    import jax
    import jax.numpy as jnp

    config = pj.StyleGAN2Config(resolution=8, channel_base=2048, channel_max=256)
    model = pj.Model.random(config, 0)
    g = model.generator
    prepared = g.prepare(model.synthesis, g.SearchOptions(winograd=True))
    w = jax.random.normal(jax.random.key(0), (2, g.num_ws, 512))
    noise = [jax.random.normal(jax.random.key(i + 1), (2, *s)) for i, s in enumerate(g.noise_shapes())]

    def loss(params):
        return lambda w, n: jnp.sum(jnp.sin(g.synthesize(params, w, n)))

    # Jitted: op by op, every operation of the forward and backward passes compiled on its own (~1 min).
    fast = jax.jit(g.synthesize)(prepared, w, noise)
    fast_grads = jax.jit(jax.grad(loss(prepared), argnums=(0, 1)))(w, noise)
    with jax.enable_x64(True):
        params64 = jax.tree_util.tree_map(lambda a: a.astype(jnp.float64), model.synthesis)
        w64, noise64 = w.astype(jnp.float64), [n.astype(jnp.float64) for n in noise]
        exact = jax.jit(g.synthesize)(params64, w64, noise64)
        exact_grads = jax.jit(jax.grad(loss(params64), argnums=(0, 1)))(w64, noise64)
    exact = np.asarray(exact)
    assert float(np.abs(np.asarray(fast, np.float64) - exact).max() / exact.std()) < 2e-5
    for a, b in zip(jax.tree_util.tree_leaves(fast_grads), jax.tree_util.tree_leaves(exact_grads), strict=True):
        a, b = np.asarray(a, np.float64), np.asarray(b)
        assert float(np.linalg.norm(a - b) / np.linalg.norm(b)) < 5e-3
