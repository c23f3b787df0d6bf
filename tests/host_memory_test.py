"""Huge pages for malloc's large buffers: when the environment asks for them, what it changes, and the
relaunch that sets it (fresh processes: glibc reads its tunables when a process starts)."""

from __future__ import annotations

import os

import pytest
from helpers import run_python

from pulse_jax.host_memory import HUGETLB, TUNABLES, huge_pages_env, huge_pages_env_here

# On a worker thread, as XLA:CPU allocates: malloc, touch and free 100 MiB three times; print the page
# faults of each round.
PROBE = """
import ctypes, resource, threading
libc = ctypes.CDLL(None)
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, (ctypes.c_size_t,)
libc.free.argtypes = (ctypes.c_void_p,)
faults = []
def rounds(n=100 * 2**20):
    for _ in range(3):
        before = resource.getrusage(resource.RUSAGE_THREAD).ru_minflt
        p = libc.malloc(n)
        ctypes.memset(p, 1, n)
        libc.free(p)
        faults.append(resource.getrusage(resource.RUSAGE_THREAD).ru_minflt - before)
t = threading.Thread(target=rounds)
t.start()
t.join()
print(*faults)
"""

PAGES = 100 * 2**20 // 4096


def faults_per_round(env: dict) -> list[int]:
    r = run_python("-c", PROBE, env=env, timeout=60)
    assert r.returncode == 0, r.stderr
    return [int(x) for x in r.stdout.split()]


def test_environment_asks_for_huge_pages_only_where_they_apply():
    base = {"PATH": "/bin"}
    assert huge_pages_env(base, (2, 36), "madvise") == {"PATH": "/bin", TUNABLES: f"{HUGETLB}=1"}
    assert huge_pages_env(base, (2, 35), "always")[TUNABLES] == f"{HUGETLB}=1"
    # Other tunables are kept; a user's own choice, even 0, is not overridden.
    other = {TUNABLES: "glibc.malloc.arena_max=2"}
    assert huge_pages_env(other, (2, 36), "madvise")[TUNABLES] == f"glibc.malloc.arena_max=2:{HUGETLB}=1"
    assert huge_pages_env({TUNABLES: f"{HUGETLB}=0"}, (2, 36), "madvise") is None
    # glibc before 2.35 has no such tunable; a kernel with huge pages off has none to give; not glibc: none.
    assert huge_pages_env(base, (2, 31), "madvise") is None
    assert huge_pages_env(base, (2, 36), "never") is None
    assert huge_pages_env(base, None, "madvise") is None


def without_tunables() -> dict:
    return {k: v for k, v in os.environ.items() if k != TUNABLES}


def test_each_fresh_buffer_faults_every_page_by_default():
    # Every round maps fresh 4 KiB pages: one fault each (25,600), every round: what huge pages are for.
    default = faults_per_round(without_tunables())
    assert all(f > 0.9 * PAGES for f in default), default


@pytest.mark.skipif(huge_pages_env_here(without_tunables()) is None,
                    reason="this machine gives no huge pages to malloc (glibc before 2.35, or transparent huge pages "
                           "off), so pulse-jax asks for none and there is nothing to measure")
def test_huge_pages_stop_the_faults_of_each_fresh_buffer():
    env = huge_pages_env_here(without_tunables())
    # With it a round faults in 50 huge pages; a quarter of the small-page count leaves room for the
    # kernel falling back to small pages where it finds no free 2 MiB block.
    assert all(f < 0.25 * PAGES for f in faults_per_round(env)), env[TUNABLES]


def test_relaunch_runs_the_same_command_once_with_huge_pages():
    script = ("import os, sys\nfrom pulse_jax.host_memory import relaunch_with_huge_pages\n"
              "print('run', sys.argv[1:], os.environ.get('GLIBC_TUNABLES'), flush=True)\n"
              "relaunch_with_huge_pages()\n")
    env = without_tunables()
    r = run_python("-c", script, "a", "--b", env=env, timeout=60)
    assert r.returncode == 0, r.stderr
    runs = r.stdout.splitlines()
    if huge_pages_env_here(env) is None:
        assert runs == ["run ['a', '--b'] None"]
    else:
        assert runs == ["run ['a', '--b'] None", f"run ['a', '--b'] {HUGETLB}=1"]
