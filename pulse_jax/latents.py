"""Saved latents: what a search found, written as ``<stem>_latents.npz`` and read back to render again.

A file holds, for every seed of one input, the values of the step whose image was returned (the best
step; docs/pulse.md "Success and what is returned"):

- ``w``: float32 (seeds, num_ws, w_dim), the W+ styles the generator took: NVIDIA's ``projected_w.npz``
  layout (which holds one);
- ``latent``: float32 (seeds, Lt, w_dim), what the search optimised (``w = leaky_relu(latent * std +
  mean)``, Lt = num_ws or 1 with tile_latent), and ``noise_<i>``: float32 (seeds, r, r), every noise map
  the generator took, optimised or not: together, what renders the image again exactly;
- ``meta``: JSON text (format, the model's checksum, the search's config and its hash, the run options
  that shape the computation).

Reading refuses anything else: no pickles, every member's declared shape and dtype checked before it is
read (docs/formats.md).
"""

from __future__ import annotations

import io
import json
import math
import zipfile
from dataclasses import dataclass
from pathlib import Path

import jax.numpy as jnp
import numpy as np

from pulse_jax.errors import PulseJaxError
from pulse_jax.npy_header import read_header
from pulse_jax.safe_files import atomic_write_bytes

FORMAT_NAME = "pulse-jax-latents"
FORMAT_VERSION = 1
SUFFIX = "_latents.npz"
# A 1024 px generator's noise maps and W+ per seed hold ~1.4 million numbers: a file may hold a few
# hundred seeds of it; one that declares more is refused before it is read.
MAX_ELEMENTS = 1 << 28


@dataclass(frozen=True)
class Latents:
    """One input's saved values (see the module docstring); ``meta`` the decoded JSON."""

    w: np.ndarray
    latent: np.ndarray | None
    noise: tuple[np.ndarray, ...]
    meta: dict

    @property
    def seeds(self) -> int:
        return self.w.shape[0]


def of_result(result, n: int, model, config, options) -> Latents:
    """Image n's best-step values from a SearchResult (the one the written images show)."""
    from pulse_jax.generators.layers import leaky_relu

    mean, std = (np.asarray(x) for x in model.gaussian_fit)
    latent = np.asarray(result.best_latent[n], np.float32)
    w = np.asarray(leaky_relu(jnp.asarray(latent) * std[None, None] + mean[None, None]))
    w = np.broadcast_to(w, (w.shape[0], model.num_ws, w.shape[-1])).astype(np.float32)
    meta = {"format": FORMAT_NAME, "format_version": FORMAT_VERSION, "model_checksum": model.checksum,
            "architecture": model.generator.architecture, "config": config.to_dict(),
            "config_hash": config.hash(), "precision": options.precision,
            "generator_options": _generator_options(options, model)}
    return Latents(w, latent, tuple(np.asarray(x[n], np.float32) for x in result.best_noise), meta)


def _generator_options(options, model) -> dict:
    chosen = options.generator_options(model.generator)
    return dict(vars(chosen))


def write(latents: Latents, path: Path) -> Path:
    arrays = {"w": latents.w, "meta": np.array(json.dumps(latents.meta, sort_keys=True))}
    if latents.latent is not None:
        arrays["latent"] = latents.latent
    arrays.update({f"noise_{i}": x for i, x in enumerate(latents.noise)})
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    atomic_write_bytes(path, lambda f: f.write(buffer.getvalue()))
    return path


def _member(archive: zipfile.ZipFile, name: str, path: Path) -> np.ndarray:
    """One .npy member, its header checked before its data is read (no pickles, a bounded size)."""
    with archive.open(name) as f:
        shape, fortran, dtype, nbytes = read_header(f, f"{path}: {name}")
        if math.prod(shape) > MAX_ELEMENTS:
            raise PulseJaxError(f"{path}: {name} declares {list(shape)} values, more than any generator's latents; "
                                "refused before reading it")
        data = f.read(nbytes + 1)
    if len(data) != nbytes:
        raise PulseJaxError(f"{path}: {name} holds {len(data)} bytes where its header says {nbytes}: truncated or "
                            "damaged")
    array = np.frombuffer(data, dtype=dtype)
    return (array.reshape(shape[::-1]).T if fortran else array.reshape(shape)).copy()


def read(path: str | Path) -> Latents:
    """A latents file of ours, or NVIDIA's ``projected_w.npz`` (a ``w`` of shape (1, num_ws, w_dim) only).
    PulseJaxError naming what is wrong."""
    path = Path(path)
    try:
        archive = zipfile.ZipFile(path)
    except (OSError, zipfile.BadZipFile) as e:
        raise PulseJaxError(f"{path}: not a readable .npz file ({e})") from None
    with archive:
        names = {n.removesuffix(".npy"): n for n in archive.namelist()}
        if "w" not in names:
            raise PulseJaxError(f"{path}: no 'w' array (a latents file holds w, (seeds, num_ws, w_dim))")
        arrays = {k: _member(archive, n, path) for k, n in names.items()}
    w = arrays.pop("w")
    if w.ndim != 3 or not np.issubdtype(w.dtype, np.floating) or not np.all(np.isfinite(w)):
        raise PulseJaxError(f"{path}: w must be finite real numbers of shape (seeds, num_ws, w_dim), got "
                            f"{w.dtype} {list(w.shape)}")
    meta = {}
    if "meta" in arrays:
        try:
            meta = json.loads(str(arrays.pop("meta")))
        except (json.JSONDecodeError, UnicodeDecodeError):
            meta = None
        if not isinstance(meta, dict) or meta.get("format") != FORMAT_NAME:
            raise PulseJaxError(f"{path}: its meta is not a pulse-jax latents record")
        if not isinstance(meta.get("format_version"), int) or meta["format_version"] > FORMAT_VERSION:
            raise PulseJaxError(f"{path}: latents format version {meta.get('format_version')!r}; this pulse-jax "
                                f"reads up to {FORMAT_VERSION}: upgrade pulse-jax")
    latent = arrays.pop("latent", None)
    noise = []
    while f"noise_{len(noise)}" in arrays:
        noise.append(arrays.pop(f"noise_{len(noise)}"))
    if arrays:
        raise PulseJaxError(f"{path}: unexpected arrays {', '.join(sorted(arrays))}")
    for name, x in [("latent", latent)] + [(f"noise_{i}", x) for i, x in enumerate(noise)]:
        if x is not None and (x.shape[0] != w.shape[0] or not np.issubdtype(x.dtype, np.floating)
                              or not np.all(np.isfinite(x))):
            raise PulseJaxError(f"{path}: {name} must hold finite real numbers for each of the {w.shape[0]} seeds, "
                                f"got {x.dtype} {list(x.shape)}")
    return Latents(w.astype(np.float32), None if latent is None else latent.astype(np.float32),
                   tuple(x.astype(np.float32) for x in noise), meta)


def check_model(latents: Latents, model, path: Path, *, force: bool = False) -> None:
    """Refuse a model other than the one the latents were found with (unless ``force``), and one whose
    shapes do not take them."""
    want = latents.meta.get("model_checksum")
    if want is not None and want != model.checksum and not force:
        raise PulseJaxError(f"{path} was made with another model (checksum {str(want)[:12]}..., this one "
                            f"{model.checksum[:12]}...): pass --force to render it with this one anyway")
    if latents.w.shape[1:] != (model.num_ws, model.generator.dlatent_size):
        raise PulseJaxError(f"{path}: w has shape {list(latents.w.shape[1:])} per seed; this model takes "
                            f"[{model.num_ws}, {model.generator.dlatent_size}]")
    shapes = model.noise_shapes()
    if latents.noise and [x.shape[1:] for x in latents.noise] != [tuple(s) for s in shapes]:
        raise PulseJaxError(f"{path}: its noise maps have shapes {[list(x.shape[1:]) for x in latents.noise]}; this "
                            f"model takes {[list(s) for s in shapes]}")


def render(model, latents: Latents, options=None) -> np.ndarray:
    """(seeds, R, R, 3) images in [0, 1]. A file of ours rendered with the model it was found with goes
    through the search's own image program under the run options the file records: the very images the
    search wrote, bit for bit on the same backend. Otherwise (NVIDIA's ``w`` alone, or another model with
    --force) the generator on w and the noise maps (the file's, else the model's stored maps, else zeros)."""
    from pulse_jax.config import PulseConfig
    from pulse_jax.latent_search import programs
    from pulse_jax.latent_search.core import make_spec

    options = (options or _recorded_options(latents, model)).resolved()
    seeds = latents.seeds
    same_model = latents.meta.get("model_checksum") == model.checksum
    if latents.latent is not None and latents.noise and same_model:
        config = PulseConfig(**_search_fields(latents.meta.get("config", {})))
        spec = make_spec(model.generator, config, model.generator.resolution, options)
        noise = [jnp.asarray(x)[None] for x in latents.noise]  # (1, S, r, r): one image
        params = {"latent": jnp.asarray(latents.latent)[None], "noise": tuple(noise[i][..., None, :, :]
                                                                              for i in spec.trainable)}
        fixed = tuple(noise[i][..., None, :, :] for i in spec.fixed)
        gen = model.search_params(options.generator_options(model.generator))
        return np.asarray(programs.images_of(spec, params, fixed, gen, model.gaussian_fit))[0]
    noise = latents.noise or getattr(model, "stored_noise", None) or [np.zeros((seeds, *s), np.float32)
                                                                       for s in model.noise_shapes()]
    noise = [jnp.broadcast_to(jnp.asarray(x), (seeds, *np.shape(x)[-2:])) for x in noise]
    images = model.synthesize(jnp.asarray(latents.w), noise, precision=options.precision or "highest")
    return np.clip((np.asarray(images) + 1.0) / 2.0, 0.0, 1.0)


def _recorded_options(latents: Latents, model):
    from pulse_jax.config import RunOptions

    family_options = model.generator.SearchOptions
    recorded = latents.meta.get("generator_options") or {}
    generator = family_options(**recorded) if recorded else None
    return RunOptions(precision=latents.meta.get("precision"), generator=generator)


def _search_fields(config: dict) -> dict:
    """The recorded config's fields that PulseConfig takes (a kernel degradation is not read again: the
    image does not depend on it)."""
    from pulse_jax.config import PulseConfig

    fields = {f for f in PulseConfig.__dataclass_fields__ if f != "degradation"}
    return {k: (tuple(v) if isinstance(v, list) else v) for k, v in config.items() if k in fields and k != "eps"}


@dataclass(frozen=True)
class StartValues:
    """Where every search of a run starts (``--init-latents``): one file's latent, per seed or one for all
    seeds, and its noise maps where it has them (else drawn as usual). ``sha256``: the file's bytes, part of
    the run key."""

    latent: np.ndarray                       # (S or 1, Lt, D)
    noise: tuple[np.ndarray, ...] | None     # (S or 1, r, r) per map
    sha256: str

    def for_batch(self, images: int, seeds: int):
        """SearchInit for ``images`` inputs x ``seeds`` seeds."""
        from pulse_jax.latent_search.driver import SearchInit

        tile = lambda x: np.broadcast_to(x[None], (images, seeds, *x.shape[1:]))  # noqa: E731
        return SearchInit(tile(self.latent), None if self.noise is None else [tile(x) for x in self.noise])


def start_values(path: str | Path, model, config, seeds: int) -> StartValues:
    """A latents file as the start of every search of a run: ours (its searched latent and noise maps),
    or a W+ alone (NVIDIA's projected_w.npz: the latent that gives that w under this model's gaussian fit,
    the inverse of w = leaky_relu(latent * std + mean), slope 0.2 below zero). PulseJaxError when it does
    not fit the model, the seeds or tile_latent."""
    import hashlib

    path = Path(path)
    saved = read(path)
    check_model(saved, model, path, force=True)  # another model's latents may start a search: shapes only
    if saved.seeds not in (1, seeds):
        raise PulseJaxError(f"{path} holds {saved.seeds} seeds' latents; give --seeds {saved.seeds}, or a file with "
                            "one (every seed starts from it)")
    if saved.latent is not None:
        latent = saved.latent
    else:
        if model.gaussian_fit is None:
            raise PulseJaxError(f"{path} holds w only, and the model has no gaussian fit to invert")
        mean, std = (np.asarray(x, np.float64) for x in model.gaussian_fit)
        w = saved.w.astype(np.float64)
        latent = ((np.where(w >= 0, w, w / 0.2) - mean[None, None]) / std[None, None]).astype(np.float32)
    rows = 1 if config.tile_latent else model.num_ws
    if latent.shape[1] != rows:
        if rows == 1 and np.all(latent == latent[:, :1]):
            latent = latent[:, :1]  # one style on every row: what tile_latent searches
        else:
            raise PulseJaxError(f"{path} holds {latent.shape[1]} latent rows per seed; this search takes {rows} "
                                + ("(--tile-latent: one row)" if rows == 1 else "(drop --tile-latent)"))
    return StartValues(latent, saved.noise or None, hashlib.sha256(path.read_bytes()).hexdigest())
