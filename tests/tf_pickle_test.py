"""NVIDIA's TensorFlow-era pickles (StyleGAN's karras2019stylegan-*.pkl, StyleGAN2's first releases): read
without running them, and giving the generator the other files of the same weights give.

Fixtures (tests/tf_files.py) write the real container: protocol 3, (G, D, Gs) Network states, numpy arrays
in TF's layouts, built from random reference state dicts (every parameter random)."""

from __future__ import annotations

import hashlib
import json
import os

import numpy as np
import pytest
import stylegan2_files
import tf_files
from helpers import DATA, save_checkpoint
from reference import stylegan2_torch as ref2
from reference import stylegan_torch as ref1

import pulse_jax as pj
from convert import __main__ as convert_main
from convert.network import convert_network, read_network
from convert.pulse import convert
from pulse_jax.errors import CheckpointError, PulseJaxError

# A small StyleGAN v1: 32 px, both epilogue kinds, 16-32 channels; its own dlatent 512 (PULSE's files' width).
V1 = {"resolution": 32, "fmap_base": 256, "fmap_max": 32}


@pytest.fixture(scope="module")
def v1_weights():
    sd = ref1.random_synthesis_state_dict(V1["resolution"], V1["fmap_base"], V1["fmap_max"], seed=3)
    msd = ref1.random_mapping_state_dict(seed=4)
    rng = np.random.default_rng(5)
    return {"sd": sd, "msd": msd, "w_avg": rng.standard_normal(512).astype(np.float32),
            "noise": tf_files.v1_noise(V1["resolution"], rng)}


def v1_networks(w, **kwargs):
    static = {"fmap_base": V1["fmap_base"], "fmap_max": V1["fmap_max"], **kwargs.pop("static", {})}
    return tf_files.stylegan1_pickle(w["sd"], w["msd"], w["w_avg"], w["noise"], V1["resolution"], static=static,
                                     **kwargs)


def v1_pickle(w, path, numpy_spelling="numpy.core", **kwargs):
    return tf_files.write(path, v1_networks(w, **kwargs), numpy_spelling)


def flat(tree) -> dict:
    import jax

    return {jax.tree_util.keystr(p): np.asarray(v) for p, v in jax.tree_util.tree_flatten_with_path(tree)[0]}


def assert_trees_equal(a, b):
    fa, fb = flat(a), flat(b)
    assert sorted(fa) == sorted(fb)
    for k in fa:
        assert fa[k].dtype == fb[k].dtype and np.array_equal(fa[k], fb[k]), k


def test_stylegan1_pickle_gives_the_model_pulse_files_give(v1_weights, gaussian_fit_file, tmp_path):
    """The same random weights as PULSE's synthesis.pt / mapping.pt and as NVIDIA's TF pickle: equal bit
    for bit (a renaming and transposes only), so equal outputs; the pickle adds w_avg and its noise maps."""
    w = v1_weights
    pulse_dir = convert(synthesis=str(save_checkpoint(w["sd"], tmp_path / "synthesis.pt", "legacy")),
                        mapping=str(save_checkpoint(w["msd"], tmp_path / "mapping.pt", "zip")),
                        gaussian_fit=str(gaussian_fit_file), out=str(tmp_path / "pulse"), verbose=False)
    rc = convert_main.main(["--network", str(v1_pickle(w, tmp_path / "karras2019stylegan-ffhq.pkl")),
                            "--gaussian-fit", str(gaussian_fit_file), "--out", str(tmp_path / "tf"), "--quiet"])
    assert rc == 0
    ours, theirs = pj.load_model(tmp_path / "tf"), pj.load_model(pulse_dir)
    assert ours.config == theirs.config == pj.StyleGANConfig(**V1)
    assert_trees_equal(ours.synthesis.pure(), theirs.synthesis.pure())
    assert_trees_equal(ours.mapping.pure(), theirs.mapping.pure())
    rng = np.random.default_rng(0)
    wplus = rng.standard_normal((2, ours.num_ws, 512)).astype(np.float32)
    noise = [rng.standard_normal((2, *s)).astype(np.float32) for s in ours.noise_shapes()]
    assert np.array_equal(np.asarray(ours.synthesize(wplus, noise)), np.asarray(theirs.synthesize(wplus, noise)))
    np.testing.assert_array_equal(np.asarray(ours.w_avg), w["w_avg"])
    assert [np.asarray(n).tolist() for n in ours.stored_noise] == [n.tolist() for n in w["noise"]]
    with pytest.raises(PulseJaxError, match="PULSE's do not"):
        theirs.w_avg  # noqa: B018 - the property is what is tested
    meta = json.loads((tmp_path / "tf" / "model.json").read_text())
    assert meta["format_version"] == 3 and {"noise", "w_avg"} <= set(meta["contents"])
    assert meta["source"]["kind"] == "nvidia-tensorflow-pickle" and meta["source"]["network"] == "Gs"
    assert json.loads((pulse_dir / "model.json").read_text())["format_version"] == 2


def test_stylegan1_1024_is_pulse_layout_key_for_key(tmp_path):
    """karras2019stylegan-ffhq-1024x1024.pkl's layout: its variables rename to exactly the keys of PULSE's
    real synthesis.pt (tests/data, from the real file) and the arrays to PULSE's bit for bit."""
    sd = ref1.random_synthesis_state_dict(1024, seed=7)
    msd = ref1.random_mapping_state_dict(seed=8)
    rng = np.random.default_rng(9)
    noise = tf_files.v1_noise(1024, rng)
    path = tf_files.write(tmp_path / "karras2019stylegan-ffhq-1024x1024.pkl",
                          tf_files.stylegan1_pickle(sd, msd, rng.standard_normal(512), noise, 1024))
    read = read_network(str(path))
    real_keys = {k for k, _ in json.loads((DATA / "stylegan1_ffhq1024_synthesis_keys.json").read_text())}
    assert set(sd) == real_keys  # the reference writes the real file's keys, so the next line is about them
    assert read.config == pj.StyleGANConfig()
    from pulse_jax import pulse_format

    config, want = pulse_format.synthesis_params({k: v.numpy() for k, v in sd.items()})
    assert config == read.config
    assert_trees_equal(read.synthesis, want)
    assert_trees_equal(read.mapping, pulse_format.mapping_params({k: v.numpy() for k, v in msd.items()}, 512))
    assert len(read.noise) == 18 and read.noise[17].shape == (1024, 1024)
    model = pj.Model.from_arrays(read.config, read.synthesis, read.mapping, stored_noise=read.noise)
    assert model.num_ws == 18


def test_numpy_2_spelling_reads_the_same(v1_weights, tmp_path):
    a = read_network(str(v1_pickle(v1_weights, tmp_path / "a.pkl")))
    b = read_network(str(v1_pickle(v1_weights, tmp_path / "b.pkl", numpy_spelling="numpy._core")))
    assert b"numpy.core.multiarray\n_reconstruct" in (tmp_path / "a.pkl").read_bytes()
    assert b"numpy._core.multiarray\n_reconstruct" in (tmp_path / "b.pkl").read_bytes()
    assert_trees_equal(a.synthesis, b.synthesis)


@pytest.fixture(scope="module")
def v2_sd():
    return ref2.random_generator_state_dict(32, 512, 32, seed=11)


def test_stylegan2_pickle_matches_nvidia_pytorch_pickle(v2_sd, tmp_path):
    """TF's layouts (transposes, the flipped Conv0_up kernels, mod_bias + 1, the noise indices) against
    NVIDIA's PyTorch layout of the same weights: equal outputs. Tolerance 1e-6 of the output's std: the
    only arithmetic is mod_bias - 1 + 1 in float32 (one rounding of numbers near 1, ~6e-8 each)."""
    tf_path = tf_files.write(tmp_path / "stylegan2-ffhq-config-f.pkl", tf_files.stylegan2_pickle(v2_sd, 32, 512, 32))
    pt_path = stylegan2_files.write_nvidia_pickle(tmp_path / "pt.pkl",
                                                  stylegan2_files.nvidia_generator(v2_sd, 32, 512, 32))
    tf, pt = read_network(str(tf_path)), read_network(str(pt_path))
    assert tf.config == pt.config == pj.StyleGAN2Config(resolution=32, channel_base=512, channel_max=32)
    assert tf.source["kind"] == "nvidia-tensorflow-pickle"
    a = pj.Model.from_arrays(tf.config, tf.synthesis, tf.mapping, stored_noise=tf.noise)
    b = pj.Model.from_arrays(pt.config, pt.synthesis, pt.mapping, stored_noise=pt.noise)
    for x, y in zip(tf.noise, pt.noise, strict=True):
        np.testing.assert_array_equal(x, y)
    rng = np.random.default_rng(1)
    ws = rng.standard_normal((2, a.num_ws, 512)).astype(np.float32)
    noise = [np.broadcast_to(n, (2, *n.shape)) for n in tf.noise]  # the stored maps: their indices tested too
    got, want = np.asarray(a.synthesize(ws, noise)), np.asarray(b.synthesize(ws, noise))
    assert np.abs(got - want).max() <= 1e-6 * want.std()
    z = rng.standard_normal((3, 512)).astype(np.float32)
    np.testing.assert_array_equal(np.asarray(a.map(z)), np.asarray(b.map(z)))
    np.testing.assert_array_equal(np.asarray(a.w_avg), np.asarray(b.w_avg))


@pytest.mark.parametrize(("change", "message"), [
    ({"synthesis_extra": {"ToRGB_lod1/weight": np.ones((1, 1, 32, 3))}}, "'orig' StyleGAN2"),
    ({"static": {"label_size": 10}}, "conditional generator"),
    ({"static": {"resample_kernel": [1, 2, 1]}}, "resample_kernel"),
    ({"static": {"architecture": "resnet"}}, "architecture='resnet'"),
    ({"synthesis_extra": {"8x8/Skip/weight": np.ones((1, 1, 32, 32))}}, "unexpected key synthesis/8x8/Skip"),
    ({"synthesis_extra": {"4x4/Conv/weight": np.ones((3, 3, 32, 31))}}, r"synthesis/4x4/Conv/weight has shape"),
])
def test_stylegan2_files_not_built_here_are_named(v2_sd, tmp_path, change, message):
    path = tf_files.write(tmp_path / "g.pkl", tf_files.stylegan2_pickle(v2_sd, 32, 512, 32, **change))
    with pytest.raises(CheckpointError, match=message):
        read_network(str(path))


def test_stylegan1_variables_missing_unknown_and_lod_are_named(v1_weights, tmp_path):
    rng = np.random.default_rng(0)
    good = tf_files.v1_synthesis_variables(v1_weights["sd"], 32, v1_weights["noise"], rng)
    cases = [({k: v for k, v in good.items() if k != "8x8/Conv1/StyleMod/bias"},
              "missing key G_synthesis/8x8/Conv1/StyleMod/bias"),
             ({**good, "8x8/Conv1/Extra/weight": np.ones(3)}, "unexpected key G_synthesis/8x8/Conv1/Extra/weight"),
             ({**good, "lod": np.float32(1.0)}, "mid-way through progressive growing"),
             ({**good, "noise3": np.ones((1, 1, 4, 4))}, r"G_synthesis/noise3 has shape \[1, 1, 4, 4\]")]
    for i, (variables, message) in enumerate(cases):
        path = v1_pickle(v1_weights, tmp_path / f"{i}.pkl", synthesis_variables=variables)
        with pytest.raises(CheckpointError, match=message):
            read_network(str(path))
    with pytest.raises(CheckpointError, match=r"use_pixel_norm=True \(supported: False\)"):
        read_network(str(v1_pickle(v1_weights, tmp_path / "pn.pkl", static={"use_pixel_norm": True})))


class System:
    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


def refused(path, tmp_path, capsys, *needles):
    out = tmp_path / "model"
    assert convert_main.main(["--network", str(path), "--fit-samples", "100", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    for needle in needles:
        assert needle in err, err
    assert not out.exists() and not list(tmp_path.glob(".model*"))  # nothing written, not even a staging dir
    return err


def test_hostile_tf_pickles_run_nothing_and_write_nothing(v1_weights, tmp_path, capsys):
    trace = tmp_path / "ran"
    src = f"import pathlib\npathlib.Path({str(trace)!r}).write_text('build_module_src ran')\n"
    # The build source a real loader execs: read as text, hashed, never run (the conversion succeeds).
    path = v1_pickle(v1_weights, tmp_path / "src.pkl", build_src=src)
    out = convert_network(network=str(path), out=str(tmp_path / "m"), gaussian_fit_samples=100, verbose=False)
    assert not trace.exists()
    digest = hashlib.sha256(src.encode()).hexdigest()
    assert json.loads((out / "model.json").read_text())["source"]["build_module_src_sha256"] == [digest]
    exec(compile(src, "planted", "exec"), {})  # the plant is live: run as NVIDIA's loader would, it leaves a trace
    assert trace.exists()
    trace.unlink()

    g, d, gs = v1_networks(v1_weights)
    gs._state["static_kwargs"]["hook"] = System(f"touch {trace}")
    refused(tf_files.write(tmp_path / "system.pkl", (g, d, gs)), tmp_path, capsys, "system", "refused",
            "nothing from the file ran")
    assert not trace.exists()

    gs._state["static_kwargs"]["hook"] = np.array([None, "x"], dtype=object)
    refused(tf_files.write(tmp_path / "object.pkl", (g, d, gs)), tmp_path, capsys, "object dtype")

    whole = v1_pickle(v1_weights, tmp_path / "whole.pkl").read_bytes()
    for cut in (len(whole) // 3, len(whole) - 5):
        (tmp_path / "cut.pkl").write_bytes(whole[:cut])
        refused(tmp_path / "cut.pkl", tmp_path, capsys, "truncated or damaged")


def test_tuple_that_is_not_g_d_gs_is_named(tmp_path):
    net = tf_files.network("Gs", 4, {})
    with pytest.raises(CheckpointError, match=r"three networks \(G, D, Gs\)"):
        read_network(str(tf_files.write(tmp_path / "two.pkl", (net, net))))
    with pytest.raises(CheckpointError, match="state version 2"):
        read_network(str(tf_files.write(tmp_path / "pggan.pkl", (net, net, tf_files.network("Gs", 2, {})))))


def test_stored_noise_starts_the_search_from_the_generators_maps(micro):
    """--stored-noise with fixed noise: the maps the search uses are the model's own (bad layer zero)."""
    rng = np.random.default_rng(2)
    maps = [rng.standard_normal(s).astype(np.float32) for s in micro.noise_shapes()]
    model = pj.Model.from_arrays(micro.config, micro.synthesis.pure(), None,
                                 tuple(np.asarray(a) for a in micro.gaussian_fit), stored_noise=maps)
    lr = np.random.default_rng(3).random((1, 8, 8, 3), dtype=np.float32)
    config = pj.PulseConfig(steps=1, noise_type="fixed", stored_noise=True)
    result = pj.search(model, lr, config, seeds=2)
    last = len(maps) - 1
    for i, m in enumerate(maps):
        want = np.zeros_like(m) if i == last else m
        for s in range(2):
            np.testing.assert_array_equal(result.noise[i][0, s], want)
    assert config.hash() != pj.PulseConfig(steps=1, noise_type="fixed").hash()
    with pytest.raises(PulseJaxError, match="keeps no noise maps"):
        pj.search(micro, lr, config)


def test_model_with_stored_noise_and_w_avg_round_trips(micro, tmp_path):
    rng = np.random.default_rng(4)
    maps = [rng.standard_normal(s).astype(np.float32) for s in micro.noise_shapes()]
    w_avg = rng.standard_normal(micro.generator.dlatent_size).astype(np.float32)
    model = pj.Model.from_arrays(micro.config, micro.synthesis.pure(), stored_noise=maps, stored_w_avg=w_avg)
    loaded = pj.load_model(pj.save_model(model, tmp_path / "m"))
    for a, b in zip(loaded.stored_noise, maps, strict=True):
        np.testing.assert_array_equal(np.asarray(a), b)
    np.testing.assert_array_equal(np.asarray(loaded.w_avg), w_avg)
    assert loaded.checksum == model.checksum
    with pytest.raises(CheckpointError, match="stored noise maps"):
        pj.Model.from_arrays(micro.config, micro.synthesis.pure(), stored_noise=maps[:-1])
    maps[3][0, 0] = np.nan
    with pytest.raises(CheckpointError, match=r"NaN or infinite values in 1 arrays: noise/\[3\]"):
        pj.Model.from_arrays(micro.config, micro.synthesis.pure(), stored_noise=maps)


def test_a_network_without_its_state_is_named(tmp_path):
    # PROTO 3, GLOBAL Network, EMPTY_TUPLE, NEWOBJ, STOP: the object made, no BUILD giving it a state.
    (tmp_path / "bare.pkl").write_bytes(b"\x80\x03cdnnlib.tflib.network\nNetwork\n)\x81.")
    with pytest.raises(CheckpointError, match="state version None"):
        read_network(str(tmp_path / "bare.pkl"))
