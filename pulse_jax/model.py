"""The model: config + parameters + gaussian fit, and its directory format.

A model directory holds ``model.json`` (format version, architecture, config, checksum) and
``params/`` (an orbax checkpoint of ``{"synthesis", "mapping"?, "gaussian_fit"?, "noise"?, "w_avg"?}``:
the last two what a generator's file kept beside its weights).
It is written to a temporary sibling and renamed into place, so a crash never
leaves a half-written model under the final name.
"""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import errno
import functools
import hashlib
import json
import logging
import os
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from pulse_jax.errors import CheckpointError, DiskFull, PulseJaxError
from pulse_jax.generators import Generator, NetworkParams, StyleGANConfig, generator_for, generator_from_dict
from pulse_jax.safe_files import (
    TEMP_MARK,
    atomic_write_bytes,
    exchange,
    os_error,
    remove_stale_temporaries,
    staging_dir,
    writer_is_gone,
)
from pulse_jax.tree_check import check_finite

FORMAT_NAME = "pulse-jax-model"
# 2: model.json names the generator family ("architecture"); format 1 directories are StyleGAN v1.
# 3: "noise" and "w_avg" may be among the contents. A model without them is still written as format 2,
# so that an older pulse-jax reads it; one with them says format 3, which an older one refuses by name.
FORMAT_VERSION = 3
FORMAT_VERSION_OF_EXTRAS = {"noise": 3, "w_avg": 3}
ARCHITECTURE_BEFORE_VERSION_2 = StyleGANConfig.architecture
MODEL_JSON = "model.json"
# model.json's "kind": a generator (absent in directories of earlier versions) or a perceptual model (LPIPS).
GENERATOR_KIND = "generator"
PARAMS_DIR = "params"


@functools.partial(jax.jit, static_argnames=("generator", "precision"))
def _run_synthesis(generator: Generator, params: NetworkParams, w, noise, precision):
    return generator.synthesize(params, w, noise, precision=precision)


@functools.partial(jax.jit, static_argnames=("generator", "options"))
def _prepare(generator: Generator, params: NetworkParams, options) -> NetworkParams:
    """The preparation as one compiled program: run op by op, each of its many small operations was a
    compile of its own (benchmarks/RESULTS.md, "Measurements behind the code")."""
    return generator.prepare(params, options)


@functools.partial(jax.jit, static_argnames=("generator", "precision"))
def _run_mapping(generator: Generator, params: NetworkParams, z, precision):
    return generator.map(params, z, precision=precision)


@dataclasses.dataclass(frozen=True, eq=False)
class Model:
    """A loaded generator: its family (architecture and config), params and gaussian fit.

    Params are pytrees passed to jitted functions, never baked in.
    """

    generator: Generator
    synthesis: NetworkParams
    mapping: NetworkParams | None = None
    gaussian_fit: tuple[jax.Array, jax.Array] | None = None
    stored_noise: tuple[jax.Array, ...] | None = None  # the generator's own noise maps, (r, r) each
    stored_w_avg: jax.Array | None = None  # a file's mean w where the mapping has none (StyleGAN v1's TF pickles)
    _prepared: dict = dataclasses.field(default_factory=dict, repr=False)

    @classmethod
    def from_arrays(cls, config, synthesis: dict, mapping: dict | None = None,
                    gaussian_fit: tuple[np.ndarray, np.ndarray] | None = None, *,
                    stored_noise: Sequence[np.ndarray] | None = None, stored_w_avg: np.ndarray | None = None) -> Model:
        """Bind nested dicts of arrays (our layout) to the architecture of ``config`` (e.g. a
        StyleGANConfig), checking every path and shape."""
        generator = generator_for(config)
        mapping_params = None if mapping is None else generator.bind("mapping", mapping)
        if gaussian_fit is not None:
            gaussian_fit = (jnp.asarray(gaussian_fit[0]), jnp.asarray(gaussian_fit[1]))
        if stored_noise is not None:
            shapes = generator.noise_shapes()
            got = [tuple(np.shape(n)) for n in stored_noise]
            if got != list(shapes):
                raise CheckpointError(f"stored noise maps {got} do not match this generator's {list(shapes)}")
            stored_noise = tuple(jnp.asarray(n, jnp.float32) for n in stored_noise)
        if stored_w_avg is not None:
            if tuple(np.shape(stored_w_avg)) != (generator.dlatent_size,):
                raise CheckpointError(f"w_avg is {tuple(np.shape(stored_w_avg))}, expected ({generator.dlatent_size},)")
            stored_w_avg = jnp.asarray(stored_w_avg, jnp.float32)
        check_finite({"noise": stored_noise or (), "w_avg": () if stored_w_avg is None else stored_w_avg},
                     "stored arrays")
        return cls(generator, generator.bind("synthesis", synthesis), mapping_params, gaussian_fit,
                   stored_noise, stored_w_avg)

    @classmethod
    def random(cls, config, seed: int = 0, *, with_mapping: bool = True) -> Model:
        """Random weights (every parameter random), for demos and tests."""
        generator = generator_for(config)
        return cls(generator, *generator.random_params(seed, with_mapping=with_mapping))

    def with_gaussian_fit(self, fit: tuple[np.ndarray, np.ndarray]) -> Model:
        return dataclasses.replace(self, gaussian_fit=(jnp.asarray(fit[0]), jnp.asarray(fit[1])), _prepared={})

    @property
    def config(self):
        """The architecture config (``config.architecture`` names the family)."""
        return self.generator.config

    @property
    def num_ws(self) -> int:
        """W+ rows: (B, num_ws, 512) is what ``synthesize`` takes."""
        return self.generator.num_ws

    def noise_shapes(self) -> tuple[tuple[int, int], ...]:
        return self.generator.noise_shapes()

    @functools.cached_property
    def checksum(self) -> str:
        """params_checksum of every array (what model.json records): names the weights in run keys."""
        return params_checksum(jax.tree_util.tree_map(np.asarray, self.pure_params()))

    def search_params(self, options=None) -> NetworkParams:
        """The synthesis params as a search runs them, every kernel prepared once (Generator.prepare);
        ``options``: the family's SearchOptions (None: its defaults). One preparation per options, kept."""
        options = self.generator.SearchOptions() if options is None else options
        if options not in self._prepared:
            self._prepared[options] = _prepare(self.generator, self.synthesis, options)
        return self._prepared[options]

    def synthesize(self, w, noise: Sequence, precision: str = "highest") -> jax.Array:
        """w (B, num_ws, D) float32; noise: one (B, r, r) array per noise map -> (B, R, R, 3), raw (about
        [-1, 1])."""
        w = jnp.asarray(w, jnp.float32)
        expected = (self.num_ws, self.generator.dlatent_size)
        if w.ndim != 3 or w.shape[1:] != expected:
            raise PulseJaxError(f"w must be (batch, {expected[0]}, {expected[1]}), got {tuple(w.shape)}")
        shapes = self.noise_shapes()
        if len(noise) != len(shapes):
            raise PulseJaxError(f"noise must be a sequence of {len(shapes)} maps, got {len(noise)}")
        noise = [jnp.asarray(n, jnp.float32) for n in noise]
        for i, (n, s) in enumerate(zip(noise, shapes, strict=True)):
            if n.shape != (w.shape[0], *s):
                raise PulseJaxError(f"noise[{i}] must be {(w.shape[0], *s)}, got {tuple(n.shape)}")
        return _run_synthesis(self.generator, self.synthesis, w, noise, precision)

    def map(self, z, precision: str = "highest") -> jax.Array:
        """z (B, D) -> w (B, D) through the mapping network."""
        if self.mapping is None:
            raise PulseJaxError(
                "this model has no mapping network; convert it with --mapping mapping.pt to use map()"
            )
        return _run_mapping(self.generator, self.mapping, jnp.asarray(z, jnp.float32), precision)

    @property
    def w_avg(self) -> jax.Array:
        """(D,): the running mean of w the generator's file kept (the centre of truncation): StyleGAN2's
        mapping network holds it; of StyleGAN v1 files, NVIDIA's pickle keeps it (dlatent_avg), PULSE's not."""
        tree = None if self.mapping is None else self.mapping.pure()
        if tree and "w_avg" in tree:
            return jnp.asarray(tree["w_avg"])
        if self.stored_w_avg is not None:
            return self.stored_w_avg
        raise PulseJaxError(f"this {self.generator.architecture} model has no w_avg (its mapping network "
                            "is missing, or its files do not keep one: PULSE's do not, NVIDIA's pickle does)")

    def pure_params(self) -> dict:
        tree = {"synthesis": self.synthesis.pure()}
        if self.mapping is not None:
            tree["mapping"] = self.mapping.pure()
        if self.gaussian_fit is not None:
            tree["gaussian_fit"] = {"mean": self.gaussian_fit[0], "std": self.gaussian_fit[1]}
        if self.stored_noise is not None:
            tree["noise"] = {noise_key(i): n for i, n in enumerate(self.stored_noise)}
        if self.stored_w_avg is not None:
            tree["w_avg"] = self.stored_w_avg
        return tree


def noise_key(i: int) -> str:
    """The name of noise map i in the params tree (zero-padded: the files list in order)."""
    return f"{i:02d}"


def params_checksum(tree) -> str:
    """sha256 over every leaf's path, dtype, shape and bytes, in path order."""
    h = hashlib.sha256()
    flat = jax.tree_util.tree_flatten_with_path(tree)[0]
    for path, leaf in sorted(flat, key=lambda kv: jax.tree_util.keystr(kv[0])):
        a = np.ascontiguousarray(np.asarray(leaf))
        h.update(f"{jax.tree_util.keystr(path)}|{a.dtype.str}|{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def _model_json(path: Path) -> dict | None:
    """model.json of a model directory of ours (read only if it is a small regular file: a FIFO would block)."""
    file = path / MODEL_JSON
    try:
        if file.is_symlink() or not file.is_file() or file.stat().st_size > 16 * 2**20:
            return None
        meta = json.loads(file.read_text())
    except (OSError, ValueError):
        return None
    return meta if isinstance(meta, dict) and meta.get("format") == FORMAT_NAME else None


def is_model_directory(path: Path) -> bool:
    """A folder this program wrote: our model.json and nothing but what save_model puts there."""
    return _model_json(path) is not None


def _replaceable(directory: Path) -> None:
    """--overwrite replaces only a model directory of ours, holding only what we wrote: model.json and the
    parameter files its manifest lists, nothing else at any depth."""
    meta = _model_json(directory) if directory.is_dir() and not directory.is_symlink() else None
    if meta is None:
        raise PulseJaxError(f"{directory} exists and is not a pulse-jax model directory (it has no model.json "
                            "of ours); --overwrite only replaces a model directory this program wrote: choose "
                            "another --out")
    manifest = meta.get("files")
    if not isinstance(manifest, dict):
        raise PulseJaxError(f"{directory} was written by an older pulse-jax, whose model.json does not list its "
                            "files: --overwrite cannot tell them from yours; delete it yourself, or choose another "
                            "--out")
    ours = {PARAMS_DIR, MODEL_JSON} | {f"{PARAMS_DIR}/{rel}" for rel in manifest}
    ours |= {f"{PARAMS_DIR}/{parent}" for rel in manifest for parent in map(str, Path(rel).parents) if parent != "."}
    others = sorted(p.relative_to(directory).as_posix() for p in directory.rglob("*")
                    if p.relative_to(directory).as_posix() not in ours)
    if others:
        shown = ", ".join(others[:5]) + (f" and {len(others) - 5} more" if len(others) > 5 else "")
        raise PulseJaxError(f"{directory} holds files that are not part of the model ({shown}); replacing it would "
                            "delete them: move them out, or choose another --out")


def save_model(model: Model, directory: str | os.PathLike, *, overwrite: bool = False,
               source: dict | None = None) -> Path:
    """Write the model directory atomically; refuse to replace one unless ``overwrite``, and never replace
    anything but a model directory this program wrote (checked before any work). ``source``: where the
    weights came from (kept in model.json as provenance)."""
    tree = jax.tree_util.tree_map(np.asarray, model.pure_params())
    meta = {
        "format": FORMAT_NAME,
        "format_version": max([2] + [FORMAT_VERSION_OF_EXTRAS[k] for k in tree if k in FORMAT_VERSION_OF_EXTRAS]),
        "architecture": model.generator.architecture,
        "config": model.config.to_dict(),
    }
    return save_tree(tree, meta, directory, overwrite=overwrite, source=source)


def save_tree(tree: dict, meta: dict, directory: str | os.PathLike, *, overwrite: bool = False,
              source: dict | None = None) -> Path:
    """Write ``tree`` (nested dicts of arrays) and model.json (``meta`` plus contents, checksum and the files'
    manifest) as one directory, atomically: a generator's (save_model) or a perceptual model's
    (perceptual.save_perceptual). Never replaces anything but a directory this program wrote."""
    import orbax.checkpoint as ocp

    directory = Path(directory).absolute()
    try:
        recover_interrupted(directory)
        remove_stale_temporaries(directory.parent)  # what killed conversions left there
    except OSError as e:
        raise os_error(directory, e) from None
    if directory.exists() or directory.is_symlink():
        if not overwrite:
            raise PulseJaxError(f"{directory} already exists; choose another --out or pass --overwrite")
        _replaceable(directory)
    tree = jax.tree_util.tree_map(np.asarray, tree)
    meta = {**meta, "contents": sorted(tree), "checksum": params_checksum(tree)}
    if source is not None:
        meta["source"] = source
    _check_room(directory, sum(a.nbytes for a in jax.tree_util.tree_leaves(tree)))
    staging = staging_dir(directory)
    old = None
    try:
        with _orbax_failures_quiet():
            checkpointer = ocp.StandardCheckpointer()
            try:
                checkpointer.save(staging / PARAMS_DIR, tree)
                checkpointer.wait_until_finished()
            finally:  # also after a failed write: an unclosed one prints asyncio tracebacks at exit
                checkpointer.close()
        meta["files"] = params_manifest(staging / PARAMS_DIR)
        atomic_write_bytes(staging / MODEL_JSON, lambda f: f.write((json.dumps(meta, indent=2) + "\n").encode()))
        if directory.exists() and exchange(staging, directory):
            old, staging = staging, None  # the old model now lies at the staging name: it goes
        else:
            if directory.exists():  # no swap in one step here: the old model moves aside, the new one in
                old = staging_dir(directory)
                os.replace(directory, old)
            os.replace(staging, directory)
            staging = None
    except OSError as e:
        raise os_error(directory, e) from None
    except Exception as e:
        if isinstance(e, PulseJaxError) or not _is_write_failure(e):
            raise
        if _is_disk_full(e):
            raise DiskFull(f"cannot write {directory}: the disk is full (free space or choose another --out); "
                           "nothing was replaced") from None
        raise PulseJaxError(f"cannot write {directory}: {type(e).__name__}: {str(e)[:300]} (a read-only "
                            "folder?); nothing was replaced") from None
    finally:
        if staging is not None:
            _remove_after_late_writers(staging)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    return directory


def recover_interrupted(directory: Path) -> Path | None:
    """A conversion killed between moving the old model aside and the new one in (where the two could not
    be swapped in one step) leaves --out missing and a whole model under a hidden name of a dead writer:
    put the newest such model back under its name."""
    if directory.exists() or directory.is_symlink() or not directory.parent.is_dir():
        return None
    left = [p for p in directory.parent.iterdir() if p.name.startswith(f".{directory.name}{TEMP_MARK}")
            and writer_is_gone(p.name) and p.is_dir() and is_model_directory(p)]
    if not left:
        return None
    newest = max(left, key=lambda p: (p / MODEL_JSON).stat().st_mtime_ns)
    os.replace(newest, directory)
    return directory


def params_manifest(params_dir: Path) -> dict[str, dict]:
    """Size and sha256 of every file orbax wrote: checked before orbax reads them, so a truncated or
    damaged copy is one clear message (orbax's own errors come with asyncio tracebacks from its threads)."""
    manifest = {}
    for path in sorted(p for p in params_dir.rglob("*") if p.is_file()):
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        manifest[path.relative_to(params_dir).as_posix()] = {"size": path.stat().st_size, "sha256": h.hexdigest()}
    return manifest


def check_manifest(directory: Path, manifest) -> None:
    if not isinstance(manifest, dict):
        raise CheckpointError(f"{directory / MODEL_JSON}: 'files' must be an object, got {type(manifest).__name__}")
    params_dir = directory / PARAMS_DIR
    for rel, want in manifest.items():
        path = params_dir / rel
        if not path.is_file():
            raise CheckpointError(f"{directory}: the parameters file {PARAMS_DIR}/{rel} is missing: the model "
                                  "directory is incomplete; copy it again or convert the checkpoints again")
        size = path.stat().st_size
        if not isinstance(want, dict) or size != want.get("size"):
            raise CheckpointError(f"{directory}: {PARAMS_DIR}/{rel} is {size} bytes where {want.get('size')} were "
                                  "written (a truncated copy?); copy it again or convert the checkpoints again")
    got = params_manifest(params_dir)
    changed = [rel for rel, want in manifest.items() if got.get(rel, {}).get("sha256") != want.get("sha256")]
    if changed:
        raise CheckpointError(f"{directory}: {PARAMS_DIR}/{changed[0]} does not match the checksum in {MODEL_JSON}: "
                              "the files are damaged or were changed; convert the checkpoints again")


# Room asked for beyond the arrays' bytes: orbax's metadata and the manifest (a few KB per array).
ROOM_MARGIN = 1.05
ROOM_EXTRA_BYTES = 4 << 20


def _check_room(directory: Path, nbytes: int) -> None:
    """Refuse before writing when the disk cannot hold the model: orbax's own full-disk failure comes as
    tracebacks from its threads."""
    try:
        free = shutil.disk_usage(directory.parent).free
    except OSError:
        return  # the folder's own errors are said where it is written
    need = int(nbytes * ROOM_MARGIN) + ROOM_EXTRA_BYTES
    if free < need:
        raise DiskFull(f"cannot write {directory}: the disk is full ({free / 1e6:.1f} MB free, the model needs "
                       f"{need / 1e6:.1f} MB): free space or choose another --out")


LATE_WRITES_SETTLE_S = 0.3  # a failed staging folder must stay gone this long before we trust it is gone
LATE_WRITES_GIVE_UP_S = 10.0


def _remove_after_late_writers(staging: Path) -> None:
    """After a failed write orbax's storage threads can still be writing into the staging folder (its
    close() does not wait for them): one removal can race a file created after it. Remove until the
    folder has stayed gone a while, and once more at exit, so that a full disk leaves nothing behind."""
    deadline = time.monotonic() + LATE_WRITES_GIVE_UP_S
    gone_since = None
    while time.monotonic() < deadline:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
            gone_since = None
        elif gone_since is None:
            gone_since = time.monotonic()
        elif time.monotonic() - gone_since >= LATE_WRITES_SETTLE_S:
            break
        time.sleep(0.05)
    atexit.register(shutil.rmtree, staging, ignore_errors=True)


@contextlib.contextmanager
def _orbax_failures_quiet():
    """A failed orbax write or read logs the failure from each of its threads, and its storage threads,
    finishing after orbax closed their event loop, report 'Event loop is closed' through
    sys.unraisablehook (dozens of tracebacks for one full disk). The failure itself reaches the caller as
    one exception, said once: meanwhile orbax's loggers keep quiet, and after a failure they stay quiet
    (its tasks' exceptions are logged again when they are collected, at exit); those late loop reports
    are dropped from then on."""
    loggers = [logging.getLogger(name) for name in ("absl", "asyncio")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.CRITICAL)
    previous = sys.unraisablehook

    def drop_closed_loop_reports(report):
        if not (isinstance(report.exc_value, RuntimeError) and "Event loop is closed" in str(report.exc_value)):
            previous(report)

    sys.unraisablehook = drop_closed_loop_reports
    yield  # after a failure the hook and the quiet loggers stay: the late reports come after it
    sys.unraisablehook = previous
    for lg, level in zip(loggers, levels, strict=True):
        lg.setLevel(level)


def _chain(e: BaseException | None):
    while e is not None:
        yield e
        e = e.__cause__ or e.__context__


def _is_disk_full(e: BaseException) -> bool:
    """orbax (tensorstore) reports a full disk as a ValueError whose text carries the errno."""
    return any((isinstance(x, OSError) and x.errno == errno.ENOSPC) or "No space left on device" in str(x)
               for x in _chain(e))


def _is_write_failure(e: BaseException) -> bool:
    """orbax wraps the OSError of a failed write in its own types: find it in the chain."""
    return _is_disk_full(e) or any(isinstance(x, OSError) for x in _chain(e))


def read_model_json(directory: Path) -> dict:
    path = directory / MODEL_JSON
    if not path.is_file():
        raise CheckpointError(
            f"{directory} is not a pulse-jax model directory (no {MODEL_JSON}); "
            "create one with: pulse-jax convert --synthesis synthesis.pt --out DIR"
        )
    try:
        meta = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path} is not valid JSON ({e}); convert the model again") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT_NAME:
        raise CheckpointError(f"{path} is not a pulse-jax model description")
    version = meta.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise CheckpointError(
            f"{directory} was written in model format {version!r}; this pulse-jax reads format "
            f"{FORMAT_VERSION} and older: upgrade pulse-jax, or convert the checkpoints again"
        )
    return meta


def load_tree(directory: Path, meta: dict, expected: dict) -> dict:
    """The arrays of a directory save_tree wrote, shaped as ``expected`` (ShapeDtypeStructs): manifest,
    then orbax, then the checksum over what was read; every failure one CheckpointError."""
    import orbax.checkpoint as ocp

    if "files" in meta:  # directories written before the manifest existed go straight to orbax
        check_manifest(directory, meta["files"])
    try:
        # Alone even in a job of several processes: each reads the whole model, and one whose peer
        # failed must not wait on it (orbax otherwise synchronises every process around a restore).
        me = jax.process_index()
        alone = ocp.options.MultiprocessingOptions(primary_host=me, active_processes={me})
        with _orbax_failures_quiet():
            checkpointer = ocp.StandardCheckpointer(multiprocessing_options=alone)
            try:
                tree = checkpointer.restore(directory / PARAMS_DIR, expected)
            finally:  # also after a failed read: an unclosed one prints asyncio tracebacks at exit
                checkpointer.close()
    except Exception as e:  # orbax raises many types for damaged or mismatched files
        raise CheckpointError(
            f"could not read the parameters in {directory / PARAMS_DIR} ({type(e).__name__}: "
            f"{str(e)[:300]}); convert the checkpoints again"
        ) from None
    tree = jax.tree_util.tree_map(np.asarray, tree)
    if params_checksum(tree) != meta.get("checksum"):
        raise CheckpointError(
            f"the parameters in {directory} do not match the checksum in {MODEL_JSON}: the files are "
            "damaged or were changed; convert the checkpoints again"
        )
    return tree


def load_model(directory: str | os.PathLike) -> Model:
    """Load and verify a model directory written by ``save_model`` / ``pulse-jax convert``."""
    directory = Path(directory).absolute()
    meta = read_model_json(directory)
    if meta.get("kind", GENERATOR_KIND) != GENERATOR_KIND:
        raise CheckpointError(f"{directory} holds a {meta.get('kind')} model ({meta.get('architecture')}), not a "
                              "generator: give it as --perceptual DIR, and a generator's directory as --model")
    generator = generator_from_dict(meta.get("architecture", ARCHITECTURE_BEFORE_VERSION_2), meta.get("config"),
                                    str(directory / MODEL_JSON))
    contents = meta.get("contents", [])
    if not isinstance(contents, list):
        raise CheckpointError(f"{directory / MODEL_JSON}: 'contents' must be a list of names, got {contents!r}")
    expected = {"synthesis": generator.abstract_params("synthesis").pure()}
    if "mapping" in contents:
        expected["mapping"] = generator.abstract_params("mapping").pure()
    if "gaussian_fit" in contents:
        shape = jax.ShapeDtypeStruct((generator.dlatent_size,), jnp.float32)
        expected["gaussian_fit"] = {"mean": shape, "std": shape}
    if "noise" in contents:
        expected["noise"] = {noise_key(i): jax.ShapeDtypeStruct(s, jnp.float32)
                             for i, s in enumerate(generator.noise_shapes())}
    if "w_avg" in contents:
        expected["w_avg"] = jax.ShapeDtypeStruct((generator.dlatent_size,), jnp.float32)
    tree = load_tree(directory, meta, expected)
    fit = tree.get("gaussian_fit")
    noise = tree.get("noise")
    model = Model.from_arrays(generator.config, tree["synthesis"], tree.get("mapping"),
                              None if fit is None else (fit["mean"], fit["std"]),
                              stored_noise=None if noise is None else [noise[k] for k in sorted(noise)],
                              stored_w_avg=tree.get("w_avg"))
    model.__dict__["checksum"] = meta["checksum"]  # just verified: the cached_property need not hash again
    return model


def compute_gaussian_fit(model: Model, *, num_samples: int = 1_000_000, batch_size: int = 10_000,
                         seed: int = 0, progress: Callable[[int, int], None] | None = None):
    """Per-dimension mean and std (unbiased) of ``leaky_relu_5(mapping(z))``, z ~ N(0, I).

    As the reference computes ``gaussian_fit``; batched, and combined in float64
    (Chan's parallel variance) so that a million samples lose no precision.
    """
    if model.mapping is None:
        raise PulseJaxError("computing the gaussian fit needs the mapping network (--mapping mapping.pt)")
    if num_samples < 2:
        raise PulseJaxError(f"the gaussian fit needs at least 2 samples (a standard deviation), got {num_samples}")
    d = model.generator.dlatent_size
    generator = model.generator

    @jax.jit
    def batch_stats(params, key, n):
        z = jax.random.normal(key, (batch_size, d), jnp.float32)
        w = generator.map(params, z)
        x = jnp.where(w >= 0, w, w * 5.0)  # slope 5 undoes the mapping's final slope 0.2
        valid = (jnp.arange(batch_size) < n)[:, None]
        mean = jnp.sum(jnp.where(valid, x, 0.0), 0) / n
        m2 = jnp.sum(jnp.where(valid, jnp.square(x - mean[None]), 0.0), 0)
        return mean, m2

    key = jax.random.key(seed)
    count, mean, m2 = 0, np.zeros(d), np.zeros(d)
    while count < num_samples:
        n = min(batch_size, num_samples - count)
        stats = batch_stats(model.mapping, jax.random.fold_in(key, count), n)
        bm, bm2 = (np.asarray(a, np.float64) for a in stats)
        total = count + n
        delta = bm - mean
        mean = mean + delta * n / total
        m2 = m2 + bm2 + delta**2 * count * n / total
        count = total
        if progress is not None:
            progress(count, num_samples)
    std = np.sqrt(m2 / (count - 1))
    if not (np.all(np.isfinite(mean)) and np.all(np.isfinite(std)) and np.all(std > 0)):
        raise CheckpointError("the mapping network's outputs give a gaussian fit with NaN, infinite or zero "
                              "standard deviations: the mapping weights are damaged, or pass --gaussian-fit")
    return mean.astype(np.float32), std.astype(np.float32)
