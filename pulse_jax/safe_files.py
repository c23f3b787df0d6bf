"""Writing files so that nothing is ever half-written, clobbered, or left behind by a crash.

Every file the program writes goes through a temporary sibling (hidden, marked as ours) and a rename;
modes follow the user's umask as a plain open() would (mkstemp/mkdtemp alone give 0600/0700).
"""

from __future__ import annotations

import errno
import os
import shutil
import socket
import tempfile
from pathlib import Path

from pulse_jax.errors import DiskFull, PulseJaxError

TEMP_MARK = ".pulse-jax-tmp-"  # in the name of every temporary file or folder we make, and only ours
_HOST = socket.gethostname().replace("-", "_").replace(".", "_")


def _temp_prefix(final: Path) -> str:
    """Hidden, marked as ours, and naming the writer (host and pid), so that a later run can tell a dead
    writer's leftovers from a live one's work in progress."""
    return f".{final.name}{TEMP_MARK}{_HOST}-{os.getpid()}-"


def umask() -> int:
    """The process's umask: from /proc where Linux shows it (thread-safe), else by setting and restoring
    it (a moment in which another thread's new file would get 022)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def os_error(path: Path, e: OSError, doing: str = "write") -> PulseJaxError:
    """An OSError as one line for the user: what, where, and what to do."""
    if e.errno == errno.ENOSPC:
        hint = "the disk is full: free space or choose another folder"
    elif e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        hint = "no permission (or a read-only filesystem): choose another folder"
    elif e.errno in (errno.ENOTDIR, errno.EEXIST):
        hint = "a file is in the way where a folder is needed: choose another folder"
    else:
        hint = "check the path"
    kind = DiskFull if e.errno == errno.ENOSPC else PulseJaxError
    return kind(f"cannot {doing} {path}: {e.strerror or e} ({hint})")


def atomic_write_bytes(path: Path, write) -> None:
    """Write through a temporary file in the same folder, then rename: never half a file."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=_temp_prefix(path), dir=path.parent)
    except OSError as e:
        raise os_error(path, e) from None
    try:
        os.fchmod(fd, 0o666 & ~umask())
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.replace(tmp, path)
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(e, OSError):
            raise os_error(path, e) from None
        raise


def staging_dir(final: Path) -> Path:
    """A fresh, empty, hidden sibling of ``final`` to build it in (renamed onto it when complete)."""
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=_temp_prefix(final), dir=final.parent))
        staging.chmod(0o777 & ~umask())
    except OSError as e:
        raise os_error(final, e) from None
    return staging


_RENAME_EXCHANGE = 2  # linux/fs.h


def exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one step (Linux's renameat2 with RENAME_EXCHANGE): at no moment is either missing.
    False where the system or the filesystem cannot (the caller then renames in two steps)."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd = -100
    renameat2.argtypes = (ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint)
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(b))


def writer_is_gone(name: str) -> bool:
    return _writer_is_gone(name)


def _writer_is_gone(name: str) -> bool:
    """A temporary of ours whose writer (on this host) no longer runs. Other hosts' are left alone."""
    try:
        host, pid = name.split(TEMP_MARK, 1)[1].split("-")[:2]
        pid = int(pid)
    except (IndexError, ValueError):
        return False
    if host != _HOST or pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, another user's
        return False
    return False


def remove_stale_temporaries(folder: Path) -> list[Path]:
    """Delete what a killed run left half-written in ``folder``: only temporaries of ours (TEMP_MARK in the
    name) whose writer is dead; a concurrent run's files in progress are left alone."""
    removed = []
    if not folder.is_dir():
        return removed
    for p in folder.iterdir():
        if p.name.startswith(".") and TEMP_MARK in p.name and _writer_is_gone(p.name):
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)
            removed.append(p)
    return removed


def check_writable_folder(folder: Path) -> None:
    """Create ``folder`` if needed and prove a file can be written there, before any long work."""
    if folder.exists() and not folder.is_dir():
        raise PulseJaxError(f"{folder} is a file, not a folder: choose another output folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise os_error(folder, e, "create the folder") from None
    atomic_write_bytes(folder / ".pulse-jax-write-check", lambda f: f.write(b"ok\n"))
    (folder / ".pulse-jax-write-check").unlink(missing_ok=True)


def is_inside(path: Path, folder: Path) -> bool:
    """``path`` is ``folder`` or lies below it (both resolved)."""
    path, folder = Path(path).resolve(), Path(folder).resolve()
    return path == folder or folder in path.parents
