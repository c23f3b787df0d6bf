"""The contracts that make a new generator family, loss or option a local change: the family registry and
the generator Protocol (a family written in the tests, with no noise maps, works end to end), the loss
registry, W+ rows and noise maps counted from the blocks, and flags made from the option fields."""

from __future__ import annotations

import argparse
import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import toy_family
from helpers import upsample
from micro_generator import MICRO
from PIL import Image

import pulse_jax as pj
from pulse_jax import cli, losses
from pulse_jax.fields import is_flag, option
from pulse_jax.generators import registry
from pulse_jax.generators.base import Generator
from pulse_jax.job import OutputOptions
from pulse_jax.model import compute_gaussian_fit


@pytest.fixture(scope="module")
def toy():
    registry.register(toy_family.FAMILY)
    model = pj.Model.random(toy_family.ToyConfig(), seed=0)
    yield model.with_gaussian_fit(compute_gaussian_fit(model, num_samples=2000, batch_size=1000))
    registry.unregister(toy_family.FAMILY.name)


def test_every_family_satisfies_the_generator_contract(toy):
    for family in registry.families():
        generator = family.generator(family.presets[family.demo_preset])
        assert isinstance(generator, Generator), family.name
        assert generator.architecture == family.name
        assert dataclasses.is_dataclass(generator.SearchOptions)


def test_a_family_without_noise_maps_searches_with_the_default_options(toy):
    lr = np.random.default_rng(0).random((2, 4, 4, 3), dtype=np.float32)
    result = pj.search(toy, lr, pj.PulseConfig(steps=6), seeds=2, key=jax.random.key(0))
    assert result.noise == [] and result.latent.shape == (2, 2, 3, 512)
    assert np.all(np.isfinite(result.loss_history)) and not result.diverged.any()
    assert np.all(result.best_loss < result.loss_history[0])  # the search moves it


def test_a_family_without_noise_maps_upsamples_end_to_end(toy, tmp_path):
    model_dir = pj.save_model(toy, tmp_path / "toy")
    assert json.loads((model_dir / "model.json").read_text())["architecture"] == "toy"
    loaded = pj.load_model(model_dir)
    assert loaded.noise_shapes() == () and loaded.checksum == toy.checksum
    inputs = tmp_path / "in"
    inputs.mkdir()
    for i in range(2):
        Image.fromarray(np.random.default_rng(i).integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(inputs / f"{i}.png")
    report = upsample(loaded, sorted(inputs.iterdir()), tmp_path / "out", config=pj.PulseConfig(steps=3))
    assert report["architecture"] == "toy" and not report["failed"]
    assert [e["input"] for e in report["inputs"]] == ["0", "1"]
    assert Image.open(tmp_path / "out" / "0.png").size == (16, 16)


def test_options_that_name_noise_maps_are_refused_where_there_are_none(toy, tmp_path):
    lr = np.zeros((1, 4, 4, 3), np.float32)
    with pytest.raises(pj.PulseJaxError, match="has no noise maps"):
        pj.search(toy, lr, pj.PulseConfig(steps=1, bad_noise_layers=(3,)))
    with pytest.raises(pj.PulseJaxError, match="stored_noise: this generator has no noise maps"):
        pj.search(toy, lr, pj.PulseConfig(steps=1, stored_noise=True))
    assert pj.search(toy, lr, pj.PulseConfig(steps=1, bad_noise_layers="")).noise == []  # "none": nothing to refuse
    with pytest.raises(pj.PulseJaxError, match="has no noise maps"):  # before any input is read
        upsample(toy, [], tmp_path / "out", config=pj.PulseConfig(bad_noise_layers="2"))


def test_the_registry_drives_arch_the_demo_and_model_json(toy, tmp_path, capsys):
    assert cli.build_parser().parse_args(["demo", "--arch", "toy"]).arch == "toy"
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["demo", "--arch", "nope"])
    err = capsys.readouterr().err
    assert "choose from 'stylegan1', 'stylegan2', 'stylegan3', 'stylegan3-t', 'stylegan3-r', 'toy'" in err
    model_dir = pj.save_model(toy, tmp_path / "toy")
    meta = json.loads((model_dir / "model.json").read_text())
    (model_dir / "model.json").write_text(json.dumps({**meta, "architecture": "stylegan9"}))
    with pytest.raises(pj.CheckpointError, match="unknown architecture 'stylegan9'; this pulse-jax knows "
                                                 "stylegan1, stylegan2, stylegan3, toy"):
        pj.load_model(model_dir)
    (model_dir / "model.json").write_text(json.dumps({**meta, "architecture": ["x"]}))
    with pytest.raises(pj.CheckpointError, match=r"unknown architecture \['x'\]"):
        pj.load_model(model_dir)
    assert "Toy: nothing (made in the tests)" in registry.known_files()


def option_classes():
    return [pj.PulseConfig, pj.RunOptions, OutputOptions] + [f.generator.SearchOptions for f in registry.families()]


@pytest.mark.parametrize("cls", option_classes(), ids=lambda c: c.__qualname__)
def test_every_option_has_help_and_a_flag_that_reads_it(cls):
    """An option is declared once, with its help beside it: a field without help, or of a type no flag
    reads, fails here rather than in a user's hands."""
    for f in dataclasses.fields(cls):
        assert f.metadata.get("help"), f"{cls.__qualname__}.{f.name} has no help (pulse_jax.fields.option)"
        if is_flag(f):
            cli._flag_kind(cls, f)  # raises TypeError for a type no flag can read


def test_flags_read_what_the_field_types_say():
    @dataclasses.dataclass(frozen=True)
    class Options:
        count: int | None = option(None, "a count")
        rate: float = option(0.5, "a rate")
        mode: str = option("a", "a mode", choices=("a", "b"))
        split: bool | None = option(None, "auto, on or off")
        fast: bool = option(False, "a switch")

    def parse(*argv):
        p = argparse.ArgumentParser(exit_on_error=False)
        cli.add_fields(p, Options)
        return Options(**vars(p.parse_args(argv)))

    assert parse() == Options()
    assert parse("--count", "3", "--rate", "2", "--mode", "b", "--split", "off", "--fast") == \
        Options(3, 2.0, "b", False, True)
    assert isinstance(parse("--count", "3").count, int)  # an int | None field is an int flag, not text
    for bad in (["--count", "x"], ["--mode", "c"], ["--split", "maybe"]):
        with pytest.raises((argparse.ArgumentError, SystemExit)):
            parse(*bad)


def test_a_family_option_is_refused_for_another_family():
    args = cli.build_parser().parse_args(["upsample", "x.png", "--model", "m", "--out", "o", "--transposed-conv",
                                          "dilated"])
    stylegan1 = pj.Model.random(pj.PRESETS["tiny_128"], with_mapping=False).generator
    stylegan2 = registry.family("stylegan2").generator(pj.STYLEGAN2_PRESETS["tiny_64"])
    assert cli.run_options_from_args(args, stylegan1).generator == stylegan1.SearchOptions(transposed_conv="dilated")
    with pytest.raises(pj.PulseJaxError, match="--transposed-conv does not apply to this model"):
        cli.run_options_from_args(args, stylegan2)
    with pytest.raises(pj.PulseJaxError, match="run options for"):
        pj.RunOptions(generator=stylegan1.SearchOptions()).generator_options(stylegan2)
    plain = cli.build_parser().parse_args(["upsample", "x.png", "--model", "m", "--out", "o"])
    assert cli.run_options_from_args(plain, stylegan2).generator is None  # the family's defaults


def test_objective_sums_the_registered_loss_terms(micro, monkeypatch):
    """A new term is one entry in losses.LOSSES: the parser accepts it and the search adds it, weighted."""
    monkeypatch.setitem(losses.LOSSES, "CONST", losses.LossTerm(lambda x: jnp.float32(3.0), "3, always"))
    lr = np.random.default_rng(0).random((1, 8, 8, 3), dtype=np.float32)
    init = pj.SearchInit(np.zeros((1, 1, micro.num_ws, 512), np.float32) + 0.1,
                         [np.zeros((1, 1, *s), np.float32) for s in micro.noise_shapes()])
    plain = pj.search(micro, lr, pj.PulseConfig(steps=1, loss_str="100*L2"), init=init)
    more = pj.search(micro, lr, pj.PulseConfig(steps=1, loss_str="100*L2+2*CONST"), init=init)
    np.testing.assert_allclose(more.loss_history, plain.loss_history + 6.0, rtol=1e-6)
    with pytest.raises(pj.PulseJaxError, match="unknown loss 'NOPE'.*known: L2, L1, GEOCROSS, NOISEREG, LPIPS, CONST"):
        pj.PulseConfig(loss_str="1*NOPE")


@pytest.mark.parametrize(("resolution", "num_ws", "maps"), [(1024, 18, 17), (256, 14, 13), (4, 2, 1)])
def test_stylegan2_counts_rows_and_maps_from_its_blocks(resolution, num_ws, maps):
    config = pj.StyleGAN2Config(resolution=resolution)
    assert config.num_ws == num_ws and len(config.noise_shapes()) == maps
    assert sum(b.num_conv for b in config.layout()) == maps  # a map per convolution


def test_every_w_row_reaches_the_image():
    """The blocks take exactly num_ws rows: a change to any one row changes the image (a row sliced past,
    or two blocks reading one row twice while another is unread, would leave some row without effect)."""
    for config in (pj.StyleGAN2Config(resolution=16, channel_base=256, channel_max=16), MICRO):
        model = pj.Model.random(config, seed=1, with_mapping=False)
        w = jax.random.normal(jax.random.key(0), (1, model.num_ws, 512))
        noise = [jnp.zeros((1, *s)) for s in model.noise_shapes()]
        batch = jnp.concatenate([w] + [w.at[:, i].add(1.0) for i in range(model.num_ws)])
        images = np.asarray(model.synthesize(batch, [jnp.broadcast_to(n, (len(batch), *n.shape[1:]))
                                                     for n in noise]))
        moved = np.abs(images[1:] - images[:1]).reshape(model.num_ws, -1).max(axis=1)
        assert np.all(moved > 1e-4), (config, moved)
