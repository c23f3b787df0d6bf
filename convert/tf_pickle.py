"""NVIDIA's TensorFlow-era network pickles (StyleGAN, StyleGAN2's first releases), read without running them.

Such a file is a pickle of ``dnnlib.tflib.network.Network`` objects whose state carries the source code
that builds the network (``build_module_src``); NVIDIA's loader execs it on unpickling
(docs/formats.md, "NVIDIA's TensorFlow-era pickles"). Here a restricted unpickler resolves ``Network`` to
``TFNetwork``, a plain record of the state (the source's sha256 kept, the source never run), arrays to
numpy through a checked stand-in for numpy's own reconstruct (plain bytes of a numeric dtype only).
``ALLOWED`` joins nvidia_pickle's restricted unpickler (with the numpy scalars and dtypes it already
reads), which refuses every other global by name.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math

import numpy as np

from pulse_jax.errors import CheckpointError

VERSIONS = {3: "StyleGAN", 4: "StyleGAN2"}  # Network state "version" -> the family that wrote it


class TFNetwork:
    """A ``dnnlib.tflib.network.Network`` as data: its pickled state, checked; nothing of it runs."""

    state: dict | None = None  # stays None if the pickle never gives the object its state
    build_module_src_sha256: str = ""

    def __setstate__(self, state):
        if not isinstance(state, dict):
            raise CheckpointError(f"a Network's state is a {type(state).__name__}, not a dict")
        source = state.get("build_module_src", "")
        if not isinstance(source, (str, bytes)):
            raise CheckpointError("a Network's build_module_src is not text")
        self.state = state
        self.build_module_src_sha256 = hashlib.sha256(
            source.encode() if isinstance(source, str) else source).hexdigest()

    def __repr__(self) -> str:
        return f"TFNetwork({self.name!r}, version {self.version!r})"

    @property
    def name(self) -> str:
        return str((self.state or {}).get("name", "?"))

    @property
    def version(self):
        return (self.state or {}).get("version")

    def _dict(self, key: str) -> dict:
        value = (self.state or {}).get(key) or {}
        if not isinstance(value, dict):
            raise CheckpointError(f"network {self.name}: {key} is a {type(value).__name__}, not a dict")
        return dict(value)

    @property
    def static_kwargs(self) -> dict:
        return self._dict("static_kwargs")

    @property
    def components(self) -> dict:
        return self._dict("components")

    def variables(self) -> dict[str, np.ndarray]:
        """Its own variables, ``{name: float32 array}`` (names relative to the network, as TF keeps them)."""
        pairs = (self.state or {}).get("variables")
        if not isinstance(pairs, (list, tuple)):
            raise CheckpointError(f"network {self.name}: no list of variables")
        out = {}
        for pair in pairs:
            if not (isinstance(pair, (list, tuple)) and len(pair) == 2 and isinstance(pair[0], str)):
                raise CheckpointError(f"network {self.name}: a variable that is not a (name, array) pair")
            name, value = pair
            if isinstance(value, np.generic):  # a scalar variable (lod) comes out of TF as a numpy scalar
                value = np.asarray(value)
            elif isinstance(value, CheckedArray):
                value = value.view(np.ndarray)
            else:
                raise CheckpointError(f"network {self.name}: variable {name} is a {type(value).__name__}, "
                                      "not an array")
            if value.dtype.kind not in "fiu":
                raise CheckpointError(f"network {self.name}: variable {name} has dtype {value.dtype}, not a number")
            if name in out:
                raise CheckpointError(f"network {self.name}: variable {name} appears twice")
            out[name] = np.array(value, dtype=np.float32)
        return out


class CheckedArray(np.ndarray):
    """What numpy's reconstruct gives here: its state is checked before numpy's own setstate sees it."""

    def __setstate__(self, state):
        if not isinstance(state, tuple) or len(state) not in (4, 5):
            raise CheckpointError("an array's pickled state is not (version, shape, dtype, fortran, data)")
        shape, dtype, fortran, data = state[-4:]
        if not isinstance(dtype, np.dtype) or dtype.hasobject:
            raise CheckpointError("an array of object dtype (it would unpickle arbitrary objects) was refused")
        if not (isinstance(shape, tuple) and all(isinstance(n, int) and n >= 0 for n in shape)):
            raise CheckpointError(f"an array's shape {shape!r} is not a tuple of sizes")
        if not isinstance(data, (bytes, bytearray)) or len(data) != math.prod(shape) * dtype.itemsize:
            raise CheckpointError(f"an array {shape} of {dtype} whose data is not {math.prod(shape) * dtype.itemsize} "
                                  "bytes (a damaged file?)")
        super().__setstate__(state)


class _NDArrayType:
    """What ``numpy.ndarray`` resolves to: a marker that only the reconstruct below accepts."""


def _reconstruct(subtype, shape, typecode):
    if subtype is not _NDArrayType:
        raise CheckpointError(f"numpy's reconstruct was asked for a {getattr(subtype, '__name__', subtype)!r}, "
                              "not a plain ndarray")
    return CheckedArray((0,), np.uint8)


# What a TF-era pickle needs beyond the numpy scalars, dtypes and containers nvidia_pickle.ALLOWED has;
# convert/network.py joins the two for its restricted unpickler.
ALLOWED = {
    ("dnnlib.tflib.network", "Network"): TFNetwork,
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy", "ndarray"): _NDArrayType,
}


@dataclasses.dataclass(frozen=True)
class TFGenerator:
    """The networks of a TF-era generator (Gs): the top network, its synthesis and mapping components."""

    top: TFNetwork
    synthesis: TFNetwork
    mapping: TFNetwork

    @property
    def family(self) -> str:
        return VERSIONS[self.top.version]

    def static_kwargs(self) -> dict:
        """The settings the networks were built with: the top's, then each component's (they agree in real
        files; where a component says more, it is the one that built those layers)."""
        return {**self.top.static_kwargs, **self.mapping.static_kwargs, **self.synthesis.static_kwargs}

    def provenance(self) -> dict:
        return {"kind": "nvidia-tensorflow-pickle", "network": self.top.name,
                "build_module_src_sha256": sorted({n.build_module_src_sha256 for n in
                                                   (self.top, self.synthesis, self.mapping)})}


def _component(top: TFNetwork, names: tuple[str, ...], what: str) -> TFNetwork:
    components = top.components
    for name in names:
        if isinstance(components.get(name), TFNetwork):
            return components[name]
    raise CheckpointError(f"{what}: network {top.name} has no {' or '.join(names)} component (it has "
                          f"{sorted(map(str, components)) or 'none'}): not a StyleGAN generator")


def tf_generator(top, what: str) -> TFGenerator:
    """Gs from the unpickled object: a tuple (G, D, Gs) as NVIDIA's training saves, or one Network."""
    if isinstance(top, tuple):
        if len(top) != 3 or not all(isinstance(n, TFNetwork) for n in top):
            kinds = ", ".join(type(n).__name__ for n in top)
            raise CheckpointError(f"{what}: a tuple of ({kinds}), where NVIDIA's TensorFlow pickles hold three "
                                  "networks (G, D, Gs)")
        top = top[2]
    if not isinstance(top, TFNetwork):
        raise CheckpointError(f"{what}: holds a {type(top).__name__}, not a TensorFlow network")
    if top.version not in VERSIONS:
        raise CheckpointError(f"{what}: network {top.name} has state version {top.version!r}; pulse-jax reads "
                              "version 3 (StyleGAN) and 4 (StyleGAN2) networks, and not Progressive GAN's")
    return TFGenerator(top, _component(top, ("synthesis", "G_synthesis"), what),
                       _component(top, ("mapping", "G_mapping"), what))
