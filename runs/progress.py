"""Progress bars in logs: one plain line per step when stderr is not a terminal."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

# --------------------------------------------------------------------------- progress in logs
PROGRESS_LINE_PERCENT = 5  # piped progress: one line each time a bar crosses another 5%
PERCENT = 100


def is_terminal(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


@contextlib.contextmanager
def progress_lines_when_piped() -> Iterator[None]:
    """While a command runs, progress bars writing to a pipe or file print whole lines, one per 5%.

    tqdm redraws a line with carriage returns up to ten times a second, which in a CI log or `2> log`
    becomes megabytes of one-line noise. Every bar in the stack (ours, diffusers', the fit loop's) is a
    tqdm, so this swaps tqdm's `display` for one that, for a non-terminal stream only, writes a line
    when the bar enters a new 5% step (or doubles its count when the total is unknown) and never a
    carriage return. Terminals keep the live bars.
    """
    from tqdm import std

    terminal_display = std.tqdm.display

    def step_of(bar: Any) -> int:
        if bar.total:
            return min(int(bar.n * PERCENT / bar.total), PERCENT) // PROGRESS_LINE_PERCENT
        return max(int(bar.n), 1).bit_length()  # unknown length: a line per doubling

    def display(bar: Any, msg: str | None = None, pos: int | None = None) -> bool:
        if is_terminal(bar.fp):
            return terminal_display(bar, msg, pos)
        if msg is None or msg == "":  # an update, or close() clearing the bar: log a new step once
            if getattr(bar, "_logged_step", None) != step_of(bar):
                bar._logged_step = step_of(bar)
                bar.fp.write(str(bar).strip() + "\n")
                bar.fp.flush()
        else:
            bar.fp.write(msg.strip() + "\n")
        return False  # nothing to clear: close() must not write its carriage return

    std.tqdm.display = display
    try:
        yield
    finally:
        std.tqdm.display = terminal_display
