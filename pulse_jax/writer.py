"""A bounded background writer: the next batch searches while this one's images are encoded and written.

Work is a function per input that writes its files and returns its report entry; the writer runs them on
its own threads (PNG encoding releases the GIL, and so does the search) and keeps at most ``max_waiting``
of them queued, so memory stays bounded: ``submit`` blocks while the queue is full. A write that fails is
that input's failure, kept with the message and returned by ``finished``; it is never dropped.
``close`` waits for everything queued, so that a stopped run's finished outputs are whole.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable

from pulse_jax.errors import DiskFull, PulseJaxError

_STOP = object()


class OutputWriter:
    def __init__(self, max_waiting: int, threads: int = 1):
        if max_waiting < 1 or threads < 1:
            raise ValueError("max_waiting and threads must be at least 1")
        self._queue: queue.Queue = queue.Queue(maxsize=max_waiting)
        self._done: list[tuple[str, dict | None, str | None]] = []
        self.disk_full: DiskFull | None = None  # the first write that found no space: the run stops
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._work, name=f"pulse-jax-writer-{i}", daemon=True)
                         for i in range(threads)]
        self._closed = False
        for t in self._threads:
            t.start()

    def submit(self, name: str, write: Callable[[], dict]) -> None:
        """Queue ``write`` (-> the input's entry) for ``name``; blocks while ``max_waiting`` are queued."""
        if self._closed:
            raise RuntimeError("the writer is closed")
        self._queue.put((name, write))

    def _work(self) -> None:
        while True:
            job = self._queue.get()
            try:
                if job is _STOP:
                    return
                name, write = job
                try:
                    if self.disk_full is not None:  # every write after a full disk would fail: none is tried
                        raise DiskFull(f"{name}: not written: {self.disk_full}")
                    entry, error = write(), None
                except DiskFull as e:
                    entry, error = None, str(e)
                    self.disk_full = self.disk_full or e
                except PulseJaxError as e:
                    entry, error = None, str(e)
                except Exception as e:  # noqa: BLE001 - any failure to write is this input's, reported
                    entry, error = None, f"{name}: writing its outputs failed ({type(e).__name__}: {e})"
                with self._lock:
                    self._done.append((name, entry, error))
            finally:
                self._queue.task_done()

    def finished(self) -> list[tuple[str, dict | None, str | None]]:
        """(name, entry or None, error or None) of every input written (or failed) since the last call."""
        with self._lock:
            done, self._done = self._done, []
        return done

    def wait(self) -> None:
        """Until everything submitted is written."""
        self._queue.join()

    def close(self) -> None:
        """Write everything queued, then stop the threads."""
        if self._closed:
            return
        self._closed = True
        for _ in self._threads:
            self._queue.put(_STOP)
        for t in self._threads:
            t.join()
