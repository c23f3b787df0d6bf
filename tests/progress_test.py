"""Progress: a bar redrawn in place on a terminal, a line every few seconds in a log, notes on lines of their own."""

from __future__ import annotations

import io

from pulse_jax.progress import Progress


class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_on_a_terminal_a_note_takes_the_bar_line_and_the_bar_comes_back_below():
    out = Terminal()
    bar = Progress(10, "search", "seed-steps", stream=out)
    bar.update(3)
    bar.write("note: x")
    text = out.getvalue()
    assert text.startswith("\rsearch [")
    before, after = text.split("\r\033[Knote: x\n")
    assert "3/10 seed-steps" in before and after.startswith("\rsearch [") and "3/10" in after


def test_in_a_log_lines_are_whole_and_sparse():
    out = io.StringIO()
    bar = Progress(10, "search", "seed-steps", stream=out)
    for _ in range(9):
        bar.update(1)  # within a few seconds: only the first draws
    bar.write("note: x")
    bar.update(1)  # the end always draws
    lines = out.getvalue().splitlines()
    assert [line.split(" [")[0] for line in lines] == ["search", "note: x", "search"]
    assert "1/10" in lines[0] and "10/10" in lines[2] and "\r" not in out.getvalue()


def test_disabled_draws_nothing_but_notes():
    out = Terminal()
    bar = Progress(10, "search", enabled=False, stream=out)
    bar.update(10)
    bar.write("note: x")
    assert out.getvalue() == "note: x\n"
