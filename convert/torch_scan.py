"""What a torch.save file declares, read before anything is allocated for it.

``torch.load(weights_only=True)`` runs no code from a file, but it allocates what the file says: a storage's
declared size (the legacy format reads a size field, then that many elements), a zip record's declared
size, however little the file holds. A 1 MB file can so make it allocate gigabytes. ``scan`` reads the
file's pickles with an unpickler that builds nothing (every global it meets is an inert stand-in, and
tensors are recorded, not made), then checks every storage against the bytes the file really holds and
every tensor's size, before torch.load is called.

The two formats (facts of torch.serialization): the zip format (torch >= 1.6) holds ``<name>/data.pkl``, a
pickle whose tensors refer by persistent id ``("storage", type, key, location, numel)`` to the records
``<name>/data/<key>``, each the storage's raw bytes, stored uncompressed; the legacy format is a sequence of
pickles (a magic number, a protocol version, system info, the object, the list of storage keys) followed,
for each key, by an 8-byte little-endian element count and the elements.
"""

from __future__ import annotations

import io
import math
import pickle
import struct
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from pulse_jax.errors import CheckpointError

# Element sizes of the storage types a checkpoint may name (torch.<Name>Storage; UntypedStorage counts bytes).
ITEMSIZE = {"FloatStorage": 4, "DoubleStorage": 8, "HalfStorage": 2, "BFloat16Storage": 2, "LongStorage": 8,
            "IntStorage": 4, "ShortStorage": 2, "CharStorage": 1, "ByteStorage": 1, "BoolStorage": 1,
            "UntypedStorage": 1, "ComplexFloatStorage": 8, "ComplexDoubleStorage": 16}
LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
# The largest tensor of a 1024 px StyleGAN holds 2.4 million numbers and the whole generator ~30 million: a
# file that declares far more is refused before anything is made of it.
MAX_TENSOR_ELEMENTS = 1 << 26
MAX_TOTAL_ELEMENTS = 1 << 28


class _Inert:
    """What any global stands for while scanning: callable, subscriptable, takes any state, does nothing."""

    def __init__(self, *args, **kwargs):
        pass

    def __call__(self, *args, **kwargs):
        return _Inert()

    def __setstate__(self, state):
        pass

    def __setitem__(self, key, value):
        pass

    def append(self, value):
        pass

    def extend(self, values):
        pass


@dataclass
class _Storage:
    key: str
    kind: str
    numel: int


@dataclass
class _Tensor:
    storage: object
    offset: object
    size: object
    stride: object


@dataclass
class Scan:
    """A file's declared storages (key -> (kind, numel)) and tensors (storage key, offset, size, stride)."""

    storages: dict[str, tuple[str, int]] = field(default_factory=dict)
    tensors: list[tuple[str, int, tuple, tuple]] = field(default_factory=list)


class _Scanner(pickle.Unpickler):
    def __init__(self, file, scan: Scan, what: str):
        super().__init__(file)
        self.scan, self.what = scan, what

    def find_class(self, module: str, name: str):
        if module == "torch._utils" and name in ("_rebuild_tensor_v2", "_rebuild_tensor"):
            return self._rebuild
        if module.startswith("torch") and name.endswith("Storage"):
            return name
        return _Inert

    def _rebuild(self, storage, offset=0, size=(), stride=(), *rest):
        if isinstance(storage, _Storage):
            if not (isinstance(offset, int) and isinstance(size, tuple) and isinstance(stride, tuple)
                    and all(isinstance(n, int) for n in (*size, *stride)) and len(size) == len(stride)):
                raise CheckpointError(f"{self.what}: a tensor of storage {storage.key} has a malformed size or "
                                      f"stride ({size!r}, {stride!r})")
            self.scan.tensors.append((storage.key, offset, size, stride))
        return _Inert()

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage"):
            raise CheckpointError(f"{self.what}: a persistent record {str(pid)[:80]!r} that is not a storage")
        kind, key, numel = pid[1], str(pid[2]), pid[4]
        kind = kind if isinstance(kind, str) else "UntypedStorage"
        if kind not in ITEMSIZE or not isinstance(numel, int) or numel < 0:
            raise CheckpointError(f"{self.what}: storage {key} has type {kind!r} and size {numel!r}: not a storage "
                                  "of numbers")
        self.scan.storages[key] = (kind, numel)
        return _Storage(key, kind, numel)


def _unpickle(data: io.BufferedIOBase, scan: Scan, what: str):
    try:
        return _Scanner(data, scan, what).load()
    except CheckpointError:
        raise
    except RecursionError:
        raise CheckpointError(f"{what}: nested too deeply to be a checkpoint") from None
    except Exception as e:  # noqa: BLE001 - damage shows as anything; nothing from the file ran
        raise CheckpointError(f"{what} is not a readable PyTorch checkpoint ({type(e).__name__}: {str(e)[:200]}); the "
                              "file may be truncated or damaged") from None


def _check_tensors(scan: Scan, what: str) -> None:
    total = 0
    for key, offset, size, stride in scan.tensors:
        kind, numel = scan.storages.get(key, (None, 0))
        n = math.prod(size)
        if n > MAX_TENSOR_ELEMENTS or any(s < 0 for s in (*size, *stride)) or offset < 0:
            raise CheckpointError(f"{what}: a tensor of storage {key} declares size {list(size)} (stride "
                                  f"{list(stride)}): larger than any generator's tensor; refused before reading it")
        reach = offset + sum((s - 1) * t for s, t in zip(size, stride, strict=True))
        if n and kind not in (None, "UntypedStorage") and reach >= numel:  # (untyped storages count bytes)
            raise CheckpointError(f"{what}: a tensor of storage {key} reaches past the storage's {numel} elements")
        total += n
        if total > MAX_TOTAL_ELEMENTS:
            raise CheckpointError(f"{what}: the tensors declare more than {MAX_TOTAL_ELEMENTS:,} numbers in all: "
                                  "not a generator checkpoint; refused before reading them")


def scan_zip(archive: zipfile.ZipFile, what: str) -> Scan:
    names = archive.namelist()
    pkl = [n for n in names if n.endswith("data.pkl") and n.count("/") == 1]
    if len(pkl) != 1:
        raise CheckpointError(f"{what}: a zip file without one <name>/data.pkl: not a torch.save file")
    prefix = pkl[0][: -len("data.pkl")]
    info = archive.getinfo(pkl[0])
    if info.file_size > 64 * 2**20 or info.compress_type != zipfile.ZIP_STORED:
        raise CheckpointError(f"{what}: its data.pkl is {'compressed' if info.compress_type else 'too large'}: not "
                              "a torch.save file (refused before reading it)")
    scan = Scan()
    _unpickle(io.BytesIO(archive.read(pkl[0])), scan, what)
    for key, (kind, numel) in scan.storages.items():
        name = f"{prefix}data/{key}"
        try:
            record = archive.getinfo(name)
        except KeyError:
            raise CheckpointError(f"{what}: storage {key} has no record {name}: the file is damaged") from None
        want = numel * ITEMSIZE[kind]
        if record.compress_type != zipfile.ZIP_STORED or record.file_size != want:
            raise CheckpointError(f"{what}: storage {key}'s record declares {record.file_size:,} bytes "
                                  f"({'compressed' if record.compress_type else 'stored'}) where {numel:,} "
                                  f"{kind} elements are {want:,}; refused before reading it")
    _check_tensors(scan, what)
    return scan


def scan_legacy(data: io.BufferedIOBase, size: int, what: str) -> Scan:
    scan = Scan()
    magic = _unpickle(data, Scan(), what)
    if magic != LEGACY_MAGIC:
        raise CheckpointError(f"{what}: not a torch.save file (no magic number)")
    _unpickle(data, Scan(), what)  # protocol version
    _unpickle(data, Scan(), what)  # system info
    _unpickle(data, scan, what)
    keys = _unpickle(data, Scan(), what)
    if not isinstance(keys, list) or set(map(str, keys)) != set(scan.storages):
        raise CheckpointError(f"{what}: the list of storages does not match the object's: the file is damaged")
    for key in map(str, keys):
        kind, numel = scan.storages[key]
        head = data.read(8)
        if len(head) != 8:
            raise CheckpointError(f"{what}: the file ends before storage {key}: truncated")
        (declared,) = struct.unpack("<q", head)
        want = declared * ITEMSIZE[kind]
        left = size - data.tell()
        if declared != numel or want > left:
            raise CheckpointError(f"{what}: storage {key} declares {declared:,} {kind} elements ({want:,} bytes) "
                                  f"where the file holds {max(left, 0):,} more bytes: truncated or forged; refused "
                                  "before reading it")
        data.seek(want, io.SEEK_CUR)
    _check_tensors(scan, what)
    return scan


def scan(source: Path | bytes, what: str) -> Scan:
    """Check a torch.save file (a path, or its bytes) before torch.load reads it (CheckpointError naming what
    is wrong)."""
    data = io.BytesIO(source) if isinstance(source, (bytes, bytearray)) else open(source, "rb")  # noqa: SIM115
    with data:
        size = len(source) if isinstance(source, (bytes, bytearray)) else Path(source).stat().st_size
        if zipfile.is_zipfile(data):
            data.seek(0)
            try:
                with zipfile.ZipFile(data) as archive:
                    return scan_zip(archive, what)
            except (zipfile.BadZipFile, UnicodeDecodeError, ValueError, EOFError, struct.error,
                    NotImplementedError) as e:  # what zipfile raises on a damaged directory
                raise CheckpointError(f"{what}: a damaged zip file ({type(e).__name__}: {str(e)[:200]}); the file "
                                      "may be truncated or damaged") from None
        data.seek(0)
        return scan_legacy(data, size, what)
