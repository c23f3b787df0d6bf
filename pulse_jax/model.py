"""The model: config + parameters + gaussian fit, and its directory format.

A model directory holds ``model.json`` (format version, config, checksum) and
``params/`` (an orbax checkpoint of ``{"synthesis", "mapping"?, "gaussian_fit"?}``).
It is written to a temporary sibling and renamed into place, so a crash never
leaves a half-written model under the final name.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from pulse_jax.errors import CheckpointError, PulseJaxError
from pulse_jax.stylegan import Mapping, StyleGANConfig, Synthesis

FORMAT_NAME = "pulse-jax-model"
FORMAT_VERSION = 1
MODEL_JSON = "model.json"
PARAMS_DIR = "params"


def _abstract_state(module_fn: Callable[[], nnx.Module]):
    return nnx.split(nnx.eval_shape(module_fn))


def _flat_shapes(tree) -> dict[str, tuple[int, ...]]:
    flat = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {"/".join(str(getattr(k, "key", k)) for k in path): tuple(np.shape(v)) for path, v in flat}


def check_tree(got, expected, what: str) -> None:
    """Compare two parameter trees by path and shape; raise naming every mismatch."""
    g, e = _flat_shapes(got), _flat_shapes(expected)
    problems = [f"missing {k} {list(s)}" for k, s in e.items() if k not in g]
    problems += [f"unexpected {k} {list(s)}" for k, s in g.items() if k not in e]
    problems += [f"{k} is {list(g[k])}, expected {list(s)}" for k, s in e.items() if k in g and g[k] != s]
    if problems:
        raise CheckpointError(f"{what} does not fit the model ({len(problems)} problems): " + "; ".join(problems[:20]))


def _bind(module_fn, pure_params, what: str):
    graphdef, state = _abstract_state(module_fn)
    check_tree(pure_params, nnx.to_pure_dict(state), what)
    nnx.replace_by_pure_dict(state, jax.tree_util.tree_map(jnp.asarray, pure_params))
    return graphdef, state


@functools.partial(jax.jit, static_argnames=("graphdef", "precision"))
def _run_synthesis(graphdef, params, w, noise, precision):
    return nnx.merge(graphdef, params)(w, noise, precision)


@functools.partial(jax.jit, static_argnames=("graphdef", "precision"))
def _run_mapping(graphdef, params, z, precision):
    return nnx.merge(graphdef, params)(z, precision)


@dataclasses.dataclass(frozen=True, eq=False)
class Model:
    """A loaded generator. Params are pytrees passed to jitted functions, never baked in."""

    config: StyleGANConfig
    synthesis_graphdef: nnx.GraphDef
    synthesis_params: nnx.State
    mapping_graphdef: nnx.GraphDef | None = None
    mapping_params: nnx.State | None = None
    gaussian_fit: tuple[jax.Array, jax.Array] | None = None

    @classmethod
    def from_arrays(cls, config: StyleGANConfig, synthesis: dict, mapping: dict | None = None,
                    gaussian_fit: tuple[np.ndarray, np.ndarray] | None = None) -> Model:
        """Bind nested dicts of arrays (our layout) to the architecture, checking every path and shape."""
        sg, sp = _bind(lambda: Synthesis(config, rngs=nnx.Rngs(0)), synthesis, "synthesis params")
        mg = mp = None
        if mapping is not None:
            mg, mp = _bind(lambda: Mapping(config.dlatent_size, rngs=nnx.Rngs(0)), mapping, "mapping params")
        if gaussian_fit is not None:
            gaussian_fit = (jnp.asarray(gaussian_fit[0]), jnp.asarray(gaussian_fit[1]))
        return cls(config, sg, sp, mg, mp, gaussian_fit)

    @classmethod
    def random(cls, config: StyleGANConfig, seed: int = 0, *, with_mapping: bool = True) -> Model:
        """Random weights (every parameter random), for demos and tests."""
        sg, sp = nnx.split(Synthesis(config, rngs=nnx.Rngs(seed)))
        mg = mp = None
        if with_mapping:
            mg, mp = nnx.split(Mapping(config.dlatent_size, rngs=nnx.Rngs(seed + 1)))
        return cls(config, sg, sp, mg, mp, None)

    @functools.cached_property
    def search_synthesis(self) -> tuple[nnx.GraphDef, nnx.State]:
        """The synthesis network as a search runs it, every kernel prepared once (layers.Prepared)."""
        module = nnx.merge(self.synthesis_graphdef, self.synthesis_params)
        module.prepare_for_search()
        return nnx.split(module)

    @property
    def num_layers(self) -> int:
        return self.config.num_layers

    def synthesis_fn(self, precision: str = "highest") -> Callable:
        """A pure ``f(params, w, noise) -> image`` for use inside the caller's jit."""
        graphdef = self.synthesis_graphdef

        def synthesize(params, w, noise):
            return nnx.merge(graphdef, params)(w, noise, precision)

        return synthesize

    def synthesize(self, w, noise: Sequence, precision: str = "highest") -> jax.Array:
        """w (B, L, D) float32; noise: L arrays (B, r_i, r_i) -> (B, R, R, 3), raw (about [-1, 1])."""
        w = jnp.asarray(w, jnp.float32)
        expected = (self.num_layers, self.config.dlatent_size)
        if w.ndim != 3 or w.shape[1:] != expected:
            raise PulseJaxError(f"w must be (batch, {expected[0]}, {expected[1]}), got {tuple(w.shape)}")
        shapes = self.config.noise_shapes()
        if len(noise) != len(shapes):
            raise PulseJaxError(f"noise must be a sequence of {len(shapes)} maps, got {len(noise)}")
        noise = [jnp.asarray(n, jnp.float32) for n in noise]
        for i, (n, s) in enumerate(zip(noise, shapes, strict=True)):
            if n.shape != (w.shape[0], *s):
                raise PulseJaxError(f"noise[{i}] must be {(w.shape[0], *s)}, got {tuple(n.shape)}")
        return _run_synthesis(self.synthesis_graphdef, self.synthesis_params, w, noise, precision)

    def map(self, z, precision: str = "highest") -> jax.Array:
        """z (B, D) -> w (B, D) through the mapping network."""
        if self.mapping_params is None:
            raise PulseJaxError(
                "this model has no mapping network; convert it with --mapping mapping.pt to use map()"
            )
        return _run_mapping(self.mapping_graphdef, self.mapping_params, jnp.asarray(z, jnp.float32), precision)

    def pure_params(self) -> dict:
        tree = {"synthesis": nnx.to_pure_dict(self.synthesis_params)}
        if self.mapping_params is not None:
            tree["mapping"] = nnx.to_pure_dict(self.mapping_params)
        if self.gaussian_fit is not None:
            tree["gaussian_fit"] = {"mean": self.gaussian_fit[0], "std": self.gaussian_fit[1]}
        return tree


def params_checksum(tree) -> str:
    """sha256 over every leaf's path, dtype, shape and bytes, in path order."""
    h = hashlib.sha256()
    flat = jax.tree_util.tree_flatten_with_path(tree)[0]
    for path, leaf in sorted(flat, key=lambda kv: jax.tree_util.keystr(kv[0])):
        a = np.ascontiguousarray(np.asarray(leaf))
        h.update(f"{jax.tree_util.keystr(path)}|{a.dtype.str}|{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def save_model(model: Model, directory: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """Write the model directory atomically; refuse to replace one unless ``overwrite``."""
    import orbax.checkpoint as ocp

    directory = Path(directory).absolute()
    if directory.exists() and not overwrite:
        raise PulseJaxError(f"{directory} already exists; choose another --out or pass --overwrite")
    directory.parent.mkdir(parents=True, exist_ok=True)
    tree = jax.tree_util.tree_map(np.asarray, model.pure_params())
    meta = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "config": model.config.to_dict(),
        "contents": sorted(tree),
        "checksum": params_checksum(tree),
    }
    staging = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
    try:
        checkpointer = ocp.StandardCheckpointer()
        checkpointer.save(staging / PARAMS_DIR, tree)
        checkpointer.wait_until_finished()
        checkpointer.close()
        (staging / MODEL_JSON).write_text(json.dumps(meta, indent=2) + "\n")
        if directory.exists():
            old = directory.with_name(directory.name + ".old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(directory, old)
            os.replace(staging, directory)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(staging, directory)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return directory


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


def load_model(directory: str | os.PathLike) -> Model:
    """Load and verify a model directory written by ``save_model`` / ``pulse-jax convert``."""
    import orbax.checkpoint as ocp

    directory = Path(directory).absolute()
    meta = read_model_json(directory)
    try:
        config = StyleGANConfig(**meta["config"])
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{directory / MODEL_JSON}: bad config ({e})") from None
    contents = set(meta.get("contents", []))
    expected = {"synthesis": nnx.to_pure_dict(_abstract_state(lambda: Synthesis(config, rngs=nnx.Rngs(0)))[1])}
    if "mapping" in contents:
        expected["mapping"] = nnx.to_pure_dict(
            _abstract_state(lambda: Mapping(config.dlatent_size, rngs=nnx.Rngs(0)))[1])
    if "gaussian_fit" in contents:
        shape = jax.ShapeDtypeStruct((config.dlatent_size,), jnp.float32)
        expected["gaussian_fit"] = {"mean": shape, "std": shape}
    try:
        # Alone even in a job of several processes: each reads the whole model, and one whose peer
        # failed must not wait on it (orbax otherwise synchronises every process around a restore).
        me = jax.process_index()
        alone = ocp.options.MultiprocessingOptions(primary_host=me, active_processes={me})
        checkpointer = ocp.StandardCheckpointer(multiprocessing_options=alone)
        tree = checkpointer.restore(directory / PARAMS_DIR, expected)
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
    fit = tree.get("gaussian_fit")
    return Model.from_arrays(config, tree["synthesis"], tree.get("mapping"),
                             None if fit is None else (fit["mean"], fit["std"]))


def compute_gaussian_fit(model: Model, *, num_samples: int = 1_000_000, batch_size: int = 10_000,
                         seed: int = 0, progress: Callable[[int, int], None] | None = None):
    """Per-dimension mean and std (unbiased) of ``leaky_relu_5(mapping(z))``, z ~ N(0, I).

    As the reference computes ``gaussian_fit``; batched, and combined in float64
    (Chan's parallel variance) so that a million samples lose no precision.
    """
    if model.mapping_params is None:
        raise PulseJaxError("computing the gaussian fit needs the mapping network (--mapping mapping.pt)")
    d = model.config.dlatent_size

    @jax.jit
    def batch_stats(params, key, n):
        z = jax.random.normal(key, (batch_size, d), jnp.float32)
        w = nnx.merge(model.mapping_graphdef, params)(z, "highest")
        x = jnp.where(w >= 0, w, w * 5.0)  # slope 5 undoes the mapping's final slope 0.2
        valid = (jnp.arange(batch_size) < n)[:, None]
        mean = jnp.sum(jnp.where(valid, x, 0.0), 0) / n
        m2 = jnp.sum(jnp.where(valid, jnp.square(x - mean[None]), 0.0), 0)
        return mean, m2

    key = jax.random.key(seed)
    count, mean, m2 = 0, np.zeros(d), np.zeros(d)
    while count < num_samples:
        n = min(batch_size, num_samples - count)
        stats = batch_stats(model.mapping_params, jax.random.fold_in(key, count), n)
        bm, bm2 = (np.asarray(a, np.float64) for a in stats)
        total = count + n
        delta = bm - mean
        mean = mean + delta * n / total
        m2 = m2 + bm2 + delta**2 * count * n / total
        count = total
        if progress is not None:
            progress(count, num_samples)
    std = np.sqrt(m2 / max(count - 1, 1))
    return mean.astype(np.float32), std.astype(np.float32)
