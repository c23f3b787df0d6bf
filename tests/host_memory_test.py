"""Huge pages for malloc's large buffers: when the environment asks for them, what it changes, and the
relaunch that sets it (fresh processes: glibc reads its tunables when a process starts)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from pulse_jax.host_memory import HUGETLB, TUNABLES, huge_pages_env, huge_pages_env_here

ROOT = Path(__file__).resolve().parents[1]

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
    r = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, timeout=60)
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


def test_huge_pages_stop_the_faults_of_each_fresh_buffer():
    env = huge_pages_env_here(os.environ)
    default = faults_per_round({k: v for k, v in os.environ.items() if k != TUNABLES})
    # Without it every round maps fresh 4 KiB pages: one fault each (25,600), every round.
    assert all(f > 0.9 * PAGES for f in default), default
    if env is None:  # this machine cannot have them: nothing is asked for, so nothing to measure
        return
    # With it a round faults in 50 huge pages; a quarter of the small-page count leaves room for the
    # kernel falling back to small pages where it finds no free 2 MiB block.
    assert all(f < 0.25 * PAGES for f in faults_per_round(env)), env[TUNABLES]


def test_relaunch_runs_the_same_command_once_with_huge_pages():
    script = ("import os, sys\nfrom pulse_jax.host_memory import relaunch_with_huge_pages\n"
              "print('run', sys.argv[1:], os.environ.get('GLIBC_TUNABLES'), flush=True)\n"
              "relaunch_with_huge_pages()\n")
    env = {k: v for k, v in os.environ.items() if k != TUNABLES}
    r = subprocess.run([sys.executable, "-c", script, "a", "--b"], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    runs = r.stdout.splitlines()
    if huge_pages_env_here(env) is None:
        assert runs == ["run ['a', '--b'] None"]
    else:
        assert runs == ["run ['a', '--b'] None", f"run ['a', '--b'] {HUGETLB}=1"]
