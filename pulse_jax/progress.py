"""A one-line progress bar on stderr: count, rate, ETA. Quiet when ``enabled`` is False."""

from __future__ import annotations

import sys
import time


class Progress:
    def __init__(self, total: int, desc: str, unit: str = "it", *, enabled: bool = True, stream=None):
        self.total, self.desc, self.unit, self.enabled = total, desc, unit, enabled
        self.stream = stream or sys.stderr
        self.count = 0
        self.start = time.perf_counter()
        self._tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self._last_draw = 0.0

    def update(self, n: int = 1, note: str = "") -> None:
        self.count += n
        now = time.perf_counter()
        # On a terminal redraw in place; in a log, one line every few seconds and at the end.
        if self.enabled and (self._tty or now - self._last_draw > 5 or self.count >= self.total):
            self._last_draw = now
            self._draw(now, note)

    def write(self, message: str) -> None:
        """A line of its own: on a terminal the bar is cleared first and drawn again below it."""
        if self._tty and self.enabled:
            self.stream.write("\r\033[K" + message + "\n")
            self._draw(time.perf_counter(), "")
        else:
            self.stream.write(message + "\n")
        self.stream.flush()

    def _draw(self, now: float, note: str) -> None:
        elapsed = now - self.start
        rate = self.count / elapsed if elapsed > 0 else 0.0
        eta = (self.total - self.count) / rate if rate > 0 else float("nan")
        frac = self.count / self.total if self.total else 1.0
        bar = "#" * int(20 * frac)
        line = (f"{self.desc} [{bar:<20}] {self.count}/{self.total} {self.unit} "
                f"{rate:.2f} {self.unit}/s elapsed {elapsed:.0f}s ETA {eta:.0f}s {note}")
        self.stream.write(("\r" + line + "\033[K") if self._tty else line + "\n")
        if self._tty and self.count >= self.total:
            self.stream.write("\n")
        self.stream.flush()


def seed_step_progress(bar: Progress, then=None):
    """An ``on_chunk`` for search(): advance ``bar`` by the seed-steps done, then call ``then(chunk)``."""
    done_before = [0]

    def on_chunk(chunk):
        done = chunk.steps_done
        if done < done_before[0]:  # a new part of a search split after running out of memory
            done_before[0] = 0
        bar.update((done - done_before[0]) * chunk.state.step.size)  # state arrays are (N, S, ...)
        done_before[0] = done
        if then is not None:
            then(chunk)

    return on_chunk
