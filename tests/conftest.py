"""Shared test setup: float32 at highest precision, strict promotion, and the session's fixtures (random
generators and checkpoints). Functions tests share are in helpers.py."""

from __future__ import annotations

import os
import shutil
import tempfile

# XLA's persistent compilation cache, for this test session only (a fresh folder each session, removed at
# the end): the suite compiles the same programs in many processes (every command it runs, the sharding
# and multi-process tests), and compiling is most of their time on a 2-core CPU. Set in the environment
# so that the subprocesses share it; the same executables, so the same numbers.
_OWN_CACHE = "JAX_COMPILATION_CACHE_DIR" not in os.environ
if _OWN_CACHE:
    os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="pulse-jax-tests-xla-")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")

import jax  # noqa: E402 - after the cache settings above, which jax reads when imported
import pytest  # noqa: E402
import torch  # noqa: E402
from helpers import save_checkpoint  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")
jax.config.update("jax_numpy_dtype_promotion", "strict")
jax.config.update("jax_numpy_rank_promotion", "raise")
torch.set_num_threads(2)

@pytest.fixture(scope="session")
def small_checkpoints(tmp_path_factory):
    """small_256 synthesis + mapping state dicts (all random) in both formats."""
    from reference import stylegan_torch as ref

    d = tmp_path_factory.mktemp("small_ckpt")
    sd = ref.random_synthesis_state_dict(256, 1024, 128, seed=0)
    msd = ref.random_mapping_state_dict(seed=1)
    files = {}
    for fmt in ("zip", "legacy"):
        files[f"synthesis_{fmt}"] = save_checkpoint(sd, d / f"synthesis_{fmt}.pt", fmt)
        files[f"mapping_{fmt}"] = save_checkpoint(msd, d / f"mapping_{fmt}.pt", fmt)
    return {"synthesis": sd, "mapping": msd, "files": files, "dir": d}


@pytest.fixture(scope="session")
def gaussian_fit():
    """Random {"mean", "std"} statistics in PULSE's gaussian_fit.pt format (512 float32 each)."""
    from reference import stylegan_torch as ref

    return ref.random_gaussian_fit()


@pytest.fixture(scope="session")
def gaussian_fit_file(gaussian_fit, tmp_path_factory):
    """gaussian_fit saved as users have PULSE's file: legacy (non-zip) format, storages tagged cuda:0."""
    return save_checkpoint(gaussian_fit, tmp_path_factory.mktemp("fit") / "gaussian_fit.pt", "legacy")


@pytest.fixture(scope="session")
def small_model_dir(small_checkpoints, gaussian_fit_file, tmp_path_factory):
    """The small checkpoints converted, with the gaussian fit file (shapes fit: 512)."""
    from convert.pulse import convert

    out = tmp_path_factory.mktemp("models") / "small"
    convert(synthesis=str(small_checkpoints["files"]["synthesis_legacy"]),
            mapping=str(small_checkpoints["files"]["mapping_zip"]),
            gaussian_fit=str(gaussian_fit_file), out=str(out), verbose=False)
    return out


@pytest.fixture(scope="session")
def tiny(gaussian_fit):
    """A cheap random generator (128 px) with the random gaussian fit, for tests of the machinery."""
    import pulse_jax as pj

    model = pj.Model.random(pj.PRESETS["tiny_128"], seed=4, with_mapping=False)
    return model.with_gaussian_fit((gaussian_fit["mean"].numpy(), gaussian_fit["std"].numpy()))


@pytest.fixture(scope="session")
def micro(gaussian_fit):
    """A 32 px random generator (micro_generator.py) with the random gaussian fit."""
    from micro_generator import MICRO

    import pulse_jax as pj

    model = pj.Model.random(MICRO, seed=4, with_mapping=False)
    return model.with_gaussian_fit((gaussian_fit["mean"].numpy(), gaussian_fit["std"].numpy()))


@pytest.fixture(scope="session")
def micro_model_dir(micro, tmp_path_factory):
    import pulse_jax as pj

    return pj.save_model(micro, tmp_path_factory.mktemp("models") / "micro")


@pytest.fixture(scope="session")
def tiny_model_dir(tiny, tmp_path_factory):
    """``tiny`` as a model directory, for command-line runs that must be quick."""
    import pulse_jax as pj

    return pj.save_model(tiny, tmp_path_factory.mktemp("models") / "tiny")


# The day-to-day tier (`-m "not slow"`, as README gives it) is mostly compiling: there XLA's backend skips
# LLVM's optimisation passes (a fifth less time on 2 cores; the programs run slower, but its cases are
# small). CI and the whole suite compile as users' runs do. Set before the workers start, so that they
# and every command a test runs inherit it; jax reads XLA_FLAGS when its backend starts, after this.
FAST_TIER = "not slow"
FAST_COMPILE_FLAG = "--xla_backend_optimization_level=0"


def pytest_configure(config):
    flags = os.environ.get("XLA_FLAGS", "")
    if config.getoption("markexpr") == FAST_TIER and "xla_backend_optimization_level" not in flags:
        os.environ["XLA_FLAGS"] = f"{flags} {FAST_COMPILE_FLAG}".strip()


def pytest_sessionfinish(session, exitstatus):
    if _OWN_CACHE:
        shutil.rmtree(os.environ["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True)
