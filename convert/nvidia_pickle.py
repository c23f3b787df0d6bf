"""NVIDIA's stylegan2-ada-pytorch / stylegan3 network pickles, read without running anything from them.

NVIDIA's loader execs the ``module_src`` every persistent object carries (docs/formats.md, "NVIDIA's
PyTorch network pickles"). Here a restricted unpickler resolves only an allowlist of globals, each to a
function of ours:
persistent objects become plain ``Persistent`` records (class name, state, the sha256 of their source,
never executed), storages load through ``torch.load(weights_only=True)``, numpy scalars and dtypes are
rebuilt from their bytes with object dtypes refused. Any other global is refused by name.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import io
import math
import pickle
import warnings
from pathlib import Path

import numpy as np

from convert import torch_scan
from convert.record_fields import dict_field
from pulse_jax.errors import CheckpointError


@dataclasses.dataclass
class Persistent:
    """A persistent object of NVIDIA's code as data: what its class is called and its ``__dict__``."""

    class_name: str
    state: dict
    module_src_sha256: str

    def modules(self) -> dict:
        return dict_field(self.state, "_modules", f"a {self.class_name} record")

    def init_kwargs(self) -> dict:
        return dict_field(self.state, "_init_kwargs", f"a {self.class_name} record")


class EasyDict(dict):
    """Stands in for ``dnnlib.util.EasyDict`` (a dict with attribute access): just its items."""


def _persistent(meta) -> Persistent:
    if not isinstance(meta, dict) or not isinstance(meta.get("state"), dict):
        raise CheckpointError("a persistent object's record is not {type, version, module_src, class_name, state}")
    source = meta.get("module_src", "")
    if not isinstance(source, (str, bytes)):
        raise CheckpointError(f"a persistent object's module_src is a {type(source).__name__}, not source text")
    digest = hashlib.sha256(source.encode() if isinstance(source, str) else bytes(source)).hexdigest()
    return Persistent(str(meta.get("class_name")), meta["state"], digest)


def _load_storage(data: bytes):
    import torch

    if not isinstance(data, (bytes, bytearray)):
        raise CheckpointError("a tensor storage is not stored as bytes")
    torch_scan.scan(bytes(data), "a tensor storage")  # its declared size, checked before torch allocates it
    try:
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"a tensor storage was refused: it holds objects other than a storage and may carry "
                              f"code (torch said: {first[:200]}); nothing from it ran") from None


def _rebuild_tensor(storage, offset, size, stride, requires_grad=False, hooks=None, metadata=None):
    import torch

    if not isinstance(storage, (torch.TypedStorage, torch.UntypedStorage)):
        raise CheckpointError(f"a tensor's storage is a {type(storage).__name__}")
    if not (isinstance(offset, int) and isinstance(size, (tuple, torch.Size)) and isinstance(stride, tuple)
            and len(size) == len(stride) and all(isinstance(n, int) and n >= 0 for n in (offset, *size, *stride))):
        raise CheckpointError(f"a tensor with a malformed size or stride ({size!r}, {stride!r}) was refused")
    n = math.prod(size)
    reach = offset + sum((s - 1) * t for s, t in zip(size, stride, strict=True))
    with warnings.catch_warnings():  # TypedStorage (what torch.load gives a storage as) warns when asked its size
        warnings.simplefilter("ignore", UserWarning)
        elements = storage.size() if isinstance(storage, torch.TypedStorage) else storage.nbytes()
    if n > torch_scan.MAX_TENSOR_ELEMENTS or (n and reach >= elements):
        raise CheckpointError(f"a tensor of size {list(size)} (stride {list(stride)}) over a storage of {elements:,} "
                              "elements was refused before it was made (larger than any generator's tensor, or "
                              "reaching past its storage)")
    return torch._utils._rebuild_tensor_v2(storage, offset, size, stride, False, collections.OrderedDict())


def _rebuild_parameter(data, requires_grad=False, hooks=None, *state):
    return data


def numpy_dtype(name, align=False, copy=False):
    dtype = np.dtype(name)
    if dtype.hasobject:
        raise CheckpointError("a numpy value of object dtype (it would unpickle arbitrary objects) was refused")
    return dtype


def numpy_scalar(dtype, data=None):
    if not isinstance(dtype, np.dtype) or dtype.hasobject or not isinstance(data, (bytes, bytearray)):
        raise CheckpointError("a numpy scalar that is not plain bytes of a numeric dtype was refused")
    return np.frombuffer(data, dtype=dtype, count=1)[0]


class NumpyArray:
    """A numeric numpy array of a record (NVIDIA's layers keep their sizes so), rebuilt from its bytes by
    pickle's ``__setstate__`` step: the dtype must be numeric and the bytes exactly what the shape
    declares; an object array (whose items would be unpickled objects) is refused."""

    MAX_ELEMENTS = 1 << 16  # settings, not weights: weights are tensors

    def __init__(self):
        self.value = None

    def __setstate__(self, state):
        if not isinstance(state, tuple) or len(state) != 5:
            raise CheckpointError("a numpy array's state is not (version, shape, dtype, fortran order, bytes)")
        _, shape, dtype, fortran, raw = state
        if not isinstance(dtype, np.dtype) or dtype.hasobject or dtype.kind not in "biuf":
            raise CheckpointError("a numpy array that is not of a plain numeric dtype was refused")
        if not (isinstance(shape, tuple) and all(isinstance(n, int) and n >= 0 for n in shape)):
            raise CheckpointError(f"a numpy array declares the shape {shape!r}")
        count = math.prod(shape)
        if count > self.MAX_ELEMENTS or not isinstance(raw, (bytes, bytearray)) or len(raw) != count * dtype.itemsize:
            raise CheckpointError(f"a numpy array of shape {shape} does not hold its {count} values of {dtype} "
                                  "(or is larger than a setting is)")
        order = "F" if fortran else "C"
        self.value = np.frombuffer(bytes(raw), dtype=dtype).reshape(shape, order=order).copy()


def numpy_array(cls, shape=(0,), dtype_code=b"b"):
    """numpy's ``_reconstruct(ndarray, shape, code)``: an empty array that ``__setstate__`` fills."""
    if cls is not NDARRAY:
        raise CheckpointError("a numpy array of a subclass was refused")
    return NumpyArray()


NDARRAY = object()  # what ("numpy", "ndarray") resolves to: only a marker for numpy_array


ALLOWED = {
    ("torch_utils.persistence", "_reconstruct_persistent_obj"): _persistent,
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("dnnlib.util", "EasyDict"): EasyDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch.storage", "_load_from_bytes"): _load_storage,
    ("numpy.core.multiarray", "scalar"): numpy_scalar,
    ("numpy._core.multiarray", "scalar"): numpy_scalar,
    ("numpy", "dtype"): numpy_dtype,
    ("numpy.core.multiarray", "_reconstruct"): numpy_array,
    ("numpy._core.multiarray", "_reconstruct"): numpy_array,
    ("numpy", "ndarray"): NDARRAY,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
}


class RestrictedUnpickler(pickle.Unpickler):
    """Resolves only the globals in ``allowed``, each to a function of ours; names any other and stops."""

    def __init__(self, file, allowed: dict):
        super().__init__(file)
        self.allowed = allowed

    def find_class(self, module: str, name: str):
        found = self.allowed.get((module, name))
        if found is None:
            raise CheckpointError(
                f"the pickle asks for {module}.{name}, which a network pickle has no need of; it was refused "
                "and nothing from the file ran. pulse-jax reads NVIDIA's network pickles (stylegan2-ada-pytorch, "
                "and the TensorFlow-era StyleGAN / StyleGAN2 releases) and names every other global it meets")
        return found

    def persistent_load(self, pid):
        raise CheckpointError("the pickle uses persistent ids (a torch.save zip?): not a network pickle")


def read_network_pickle(path: Path, what: str, allowed: dict | None = None):
    """The unpickled top-level object, with every network a record (``allowed``: default ALLOWED)."""
    try:
        with open(path, "rb") as f:
            return RestrictedUnpickler(f, ALLOWED if allowed is None else allowed).load()
    except CheckpointError as e:
        raise CheckpointError(f"{what} {path}: {e}") from None
    except RecursionError:
        raise CheckpointError(f"{what} {path}: nested too deeply to be a network pickle") from None
    except Exception as e:  # noqa: BLE001 - damage shows as anything from EOFError to UnicodeDecodeError
        raise CheckpointError(f"{what} {path} is not a readable network pickle ({type(e).__name__}: "
                              f"{str(e).strip()[:200]}); the file may be truncated or damaged") from None


MAX_DEPTH = 32  # submodules within submodules: a generator is a few levels deep


def flatten(record: Persistent, prefix: str = "") -> dict:
    """Every parameter and buffer of a network record and its submodules, under their dotted names."""
    if prefix.count(".") > MAX_DEPTH:
        raise CheckpointError(f"submodule {prefix[:80]}...: nested more than {MAX_DEPTH} deep: not a generator")
    out = {}
    for kind in ("_parameters", "_buffers"):
        for name, value in dict_field(record.state, kind, f"{prefix or 'the network'}").items():
            if value is not None:
                out[prefix + str(name)] = value
    for name, sub in record.modules().items():
        if isinstance(sub, Persistent):
            out.update(flatten(sub, f"{prefix}{name}."))
        elif sub is not None:
            raise CheckpointError(f"submodule {prefix}{name} is a {type(sub).__name__}, not a network record")
    return out


def records(record: Persistent, prefix: str = ""):
    """(dotted name, record) of the network and every submodule."""
    if prefix.count(".") > MAX_DEPTH:
        raise CheckpointError(f"submodule {prefix[:80]}...: nested more than {MAX_DEPTH} deep: not a generator")
    yield prefix.rstrip("."), record
    for name, sub in record.modules().items():
        if isinstance(sub, Persistent):
            yield from records(sub, f"{prefix}{name}.")
