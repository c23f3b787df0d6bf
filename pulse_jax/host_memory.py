"""Large host buffers on transparent huge pages, so that a CPU search does not page-fault every step.

XLA:CPU allocates each step's temporary buffer (most of a GB at 1024 px, one seed) with malloc. glibc
serves an allocation that large from a fresh ``mmap`` and unmaps it when it is freed, so every step faults
in new 4 KiB pages, a large part of a step's time in the kernel (benchmarks/RESULTS.md, the fifth
session's CPU section). glibc >= 2.35 can ask for transparent huge pages on those mappings (the
``glibc.malloc.hugetlb=1`` tunable): 512x fewer faults, and memory is still given back as before. The
tunable is read only when a process starts, so a command that wants it runs itself again with it set.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from pathlib import Path

TUNABLES = "GLIBC_TUNABLES"
HUGETLB = "glibc.malloc.hugetlb"
THP_MODE_FILE = Path("/sys/kernel/mm/transparent_hugepage/enabled")


def glibc_version() -> tuple[int, int] | None:
    """(major, minor) of the C library this process runs on, None if it is not glibc."""
    try:
        name, version = os.confstr("CS_GNU_LIBC_VERSION").split()
    except (AttributeError, ValueError, OSError):
        return None
    if name != "glibc":
        return None
    major, minor = version.split(".")[:2]
    return int(major), int(minor)


def thp_mode() -> str | None:
    """The kernel's transparent huge page mode ("always", "madvise" or "never"), None if unknown."""
    try:
        text = THP_MODE_FILE.read_text()
    except OSError:
        return None
    return text[text.index("[") + 1:text.index("]")] if "[" in text else None


def huge_pages_env(environ: Mapping[str, str], glibc: tuple[int, int] | None,
                   thp: str | None) -> dict[str, str] | None:
    """``environ`` with glibc told to put its large mappings on huge pages; None where it is set already
    (a user's own ``glibc.malloc.hugetlb``, even 0, is kept) or cannot help: ``glibc`` (its version) is
    None or before 2.35, or ``thp`` (the kernel's huge page mode) is not "always" or "madvise"."""
    current = environ.get(TUNABLES, "")
    if HUGETLB in current or glibc is None or glibc < (2, 35) or thp not in ("always", "madvise"):
        return None
    return {**environ, TUNABLES: f"{current}:{HUGETLB}=1" if current else f"{HUGETLB}=1"}


def huge_pages_env_here(environ: Mapping[str, str]) -> dict[str, str] | None:
    """huge_pages_env for this machine's C library and kernel."""
    return huge_pages_env(environ, glibc_version(), thp_mode())


def relaunch_with(env: Mapping[str, str] | None) -> None:
    """Replace this process by the same command line (interpreter options included) in ``env``; with
    None, return and carry on."""
    if env is None or not sys.executable or not sys.orig_argv:  # an embedded interpreter: run as it is
        return
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)
    except OSError:  # the interpreter cannot be run again from here: go on without
        return


def relaunch_with_huge_pages() -> None:
    """Replace this process by the same command line with huge pages on, where that applies (Linux with
    glibc >= 2.35 and huge pages enabled); otherwise return and carry on. Call it first thing in a
    program's entry point: whatever it did before is done again."""
    relaunch_with(huge_pages_env_here(os.environ))
