"""The ``pulse-jax`` command's entry point: decides how this process runs before anything heavy is imported.

``upsample`` and ``demo`` want malloc's large buffers on huge pages (host_memory.py), which glibc reads
only when a process starts: they run themselves again with the tunable set, and doing that here, before
jax is imported, means jax is imported once, in the process that does the work.

Ctrl-C and SIGTERM are recorded from the first moment (``EARLY``): Python's own KeyboardInterrupt, raised
while jax starts, could land in one of its garbage-collection callbacks and be lost (the run then went on
to the end). The command looks at what arrived once it is ready (cli.main). While the process exits they
are ignored: a Ctrl-C then has nothing left to stop, and would only print a traceback.
"""

from __future__ import annotations

import signal
import sys

from pulse_jax.host_memory import relaunch_with_huge_pages

EARLY: list[int] = []  # signals that arrived before the command set its own handlers
STOPPING = (signal.SIGINT, signal.SIGTERM)


def _record(signum, frame) -> None:
    EARLY.append(signum)


def main() -> int:
    for s in STOPPING:
        signal.signal(s, _record)
    if sys.argv[1:2] in (["upsample"], ["demo"]):
        relaunch_with_huge_pages()
    from pulse_jax.cli import main as cli_main

    try:
        return cli_main(sys.argv[1:], early_signals=EARLY)
    finally:
        for s in STOPPING:
            signal.signal(s, signal.SIG_IGN)


if __name__ == "__main__":
    sys.exit(main())
