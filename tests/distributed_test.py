"""Several processes joined by jax.distributed (two local processes, virtual CPU devices):
the inputs dealt between them, the CLI's outputs identical to one process's, and search() as one
program over both processes' devices identical to the search on one process."""

from __future__ import annotations

import json
import socket
import subprocess
from pathlib import Path

import numpy as np
import pytest
from helpers import command_env, finish_all, pulse_jax, run_python, start_python
from PIL import Image

import pulse_jax as pj
from pulse_jax.distributed import ProcessGroup, initialize

ROOT = Path(__file__).parents[1]


def env(devices: int) -> dict:
    """Each process sees ``devices`` CPU devices."""
    return command_env(XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}", JAX_PLATFORMS="cpu")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_processes(argv_of, devices: int, count: int = 2, timeout: int = 600) -> list[subprocess.CompletedProcess]:
    """Start ``count`` Python processes, with the arguments argv_of(i, coordinator_address) each, at once and
    wait for all.

    The coordinator listens on 127.0.0.1 only (JAX's default, every interface over IPv6, is not
    available on every test machine)."""
    address = f"127.0.0.1:{free_port()}"
    process_env = {**env(devices), "JAX_COORDINATOR_BIND_ADDRESS": address}
    return finish_all([start_python(*argv_of(i, address), env=process_env) for i in range(count)], timeout)


def test_share_deals_every_name_to_exactly_one_process():
    names = ["b", "a", "c", "a", "d", "e"]  # "a" twice: two files with one output name stay together
    shares = [ProcessGroup(i, 3).share(names) for i in range(3)]
    assert set().union(*shares) == set(names)
    assert sum(len(s) for s in shares) == len(set(names))
    assert [len(s) for s in shares] == [2, 2, 1]  # dealt in turn: balanced
    assert ProcessGroup().share(names) == set(names)


def test_partial_coordinates_are_refused_before_joining():
    with pytest.raises(pj.PulseJaxError, match="all of --coordinator"):
        initialize("localhost:1234", None, 0)
    with pytest.raises(pj.PulseJaxError, match="process-id must be in 0..1"):
        initialize("localhost:1234", 2, 2)


def write_inputs(folder: Path, count: int, size: int = 16) -> None:
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(count):
        pixels = (rng.random((size, size, 3)) * 255).astype(np.uint8)
        Image.fromarray(pixels).save(folder / f"face{i}.png")


@pytest.mark.slow
def test_cli_over_two_processes_equals_one_process(micro_model_dir, tmp_path):
    write_inputs(tmp_path / "in", 3)
    common = ["-m", "pulse_jax.cli", "upsample", str(tmp_path / "in"), "--model", str(micro_model_dir), "--seeds",
              "2", "--steps", "3", "--quiet"]
    # One device per process, as in the usual one-process-per-GPU job.
    single = run_python(*common, "--out", tmp_path / "one", env=env(1))
    assert single.returncode == 0, single.stderr
    runs = run_processes(lambda i, address: [*common, "--out", str(tmp_path / "two"), "--coordinator", address,
                                    "--num-processes", "2", "--process-id", str(i)], devices=1)
    for r in runs:
        assert r.returncode == 0, r.stdout + r.stderr
    assert "all processes: 3 upsampled" in runs[0].stdout
    assert "process 1/2: 1 upsampled" in runs[1].stdout  # 3 names dealt in turn: 2 and 1

    report = json.loads((tmp_path / "two" / "report.json").read_text())
    assert [e["input"] for e in report["inputs"]] == ["face0", "face1", "face2"]
    assert report["processes"] == 2 and report["failed"] == []
    assert not list((tmp_path / "two").glob("report.part*"))  # merged, then removed
    assert "3 inputs" in (tmp_path / "two" / "index.html").read_text()
    # An input's keys come from its name, and here each ran alone on one CPU device either way: the
    # same program on the same values, so the same bits.
    for i in range(3):
        one = np.asarray(Image.open(tmp_path / "one" / f"face{i}.png"))
        two = np.asarray(Image.open(tmp_path / "two" / f"face{i}.png"))
        np.testing.assert_array_equal(one, two)

    # A rerun skips what is done, whichever process finds it.
    again = run_processes(lambda i, address: [*common, "--out", str(tmp_path / "two"), "--coordinator", address,
                                     "--num-processes", "2", "--process-id", str(i)], devices=1)
    assert all(r.returncode == 0 for r in again), [r.stderr for r in again]
    assert "3 already done" in again[0].stdout


@pytest.mark.slow
def test_a_failing_process_does_not_take_the_others_down(micro_model_dir, tmp_path):
    write_inputs(tmp_path / "in", 2)
    out = tmp_path / "out"
    out.mkdir()
    # Left by an earlier job with the same process count: not this job's, so not merged.
    (out / "report.part1of2.json").write_text(json.dumps({"job": "earlier", "inputs": [{"input": "stale"}]}))
    runs = run_processes(lambda i, address: ["-m", "pulse_jax.cli", "upsample", str(tmp_path / "in"),
                                    "--model", str(micro_model_dir) if i == 0 else str(tmp_path / "missing"),
                                    "--out", str(out), "--steps", "2", "--quiet", "--coordinator",
                                    address, "--num-processes", "2", "--process-id", str(i)], devices=1)
    assert runs[1].returncode == 2 and "not a pulse-jax model directory" in runs[1].stderr, runs[1].stderr
    assert runs[0].returncode == 1, runs[0].stderr  # its own share done; the job as a whole is not
    report = json.loads((out / "report.json").read_text())
    assert [e["input"] for e in report["inputs"]] == ["face0"]  # process 0's share of face0, face1
    assert [f["input"] for f in report["failed"]] == ["process 1"]
    assert "run again" in report["failed"][0]["error"]
    assert (out / "face0.png").is_file() and not (out / "face1.png").exists()


GLOBAL_SEARCH = r"""
import sys
import jax
import numpy as np
import pulse_jax as pj
from micro_generator import MICRO
from pulse_jax.distributed import initialize
group = initialize(sys.argv[1], 2, int(sys.argv[2]))
assert len(jax.devices()) == 4 and len(jax.local_devices()) == 2
m = pj.Model.random(MICRO, seed=4, with_mapping=False)
m = pj.Model.from_arrays(m.config, m.synthesis.pure(), gaussian_fit=(np.zeros(512, np.float32),
                                                                     np.ones(512, np.float32)))
config = pj.PulseConfig(steps=2)
lr = np.random.default_rng(1).random((4, 8, 8, 3), dtype=np.float32)
everywhere = pj.search(m, lr, config, pj.RunOptions(devices=jax.devices()), seeds=2, key=jax.random.key(0))
here = pj.search(m, lr, config, pj.RunOptions(shard=False), seeds=2, key=jax.random.key(0))
assert everywhere.images.shape == (4, 2, 32, 32, 3)
# The tolerances of sharding_test: one program per example either way, but convolutions partitioned
# differently round differently, and Adam's first (almost sign(g)) update magnifies that.
np.testing.assert_allclose(everywhere.loss_history[0], here.loss_history[0], rtol=1e-5)
np.testing.assert_allclose(everywhere.loss_history, here.loss_history, rtol=1e-3)
assert np.abs(everywhere.images - here.images).mean() < 1e-3
print("global search ok", group.index)
mine = lr if group.index == 0 else lr[::-1]
try:
    pj.search(m, mine, config, pj.RunOptions(devices=jax.devices()), seeds=2)
    raise SystemExit("different inputs per process must be refused")
except pj.PulseJaxError as e:
    assert "same images" in str(e)
print("refused", group.index)
"""


@pytest.mark.slow
def test_search_as_one_program_over_two_processes():
    runs = run_processes(lambda i, address: ["-c", GLOBAL_SEARCH, address, str(i)], devices=2)
    for i, r in enumerate(runs):
        assert r.returncode == 0, r.stdout + r.stderr
        assert f"global search ok {i}" in r.stdout and f"refused {i}" in r.stdout


@pytest.mark.slow
def test_distributed_outside_a_cluster_says_what_to_pass(tmp_path):
    clean = {k: v for k, v in env(1).items() if not k.startswith(("SLURM_", "OMPI_", "JAX_COORDINATOR", "TPU_"))}
    r = pulse_jax("upsample", tmp_path, "--model", tmp_path, "--out", tmp_path / "out", "--distributed", env=clean,
                  timeout=300)
    assert r.returncode == 2, r.stderr
    assert "could not join the distributed job" in r.stderr and "--coordinator HOST:PORT" in r.stderr
    assert "Traceback" not in r.stderr and not (tmp_path / "out").exists()
