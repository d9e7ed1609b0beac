"""Spans of time as the CLI writes them: an age (`3m`) and a time left (`1h 59m`).

Stdlib only: `hitl list`'s quick path prints them without loading the rest of the CLI's shared code."""

from __future__ import annotations

import itertools

_UNITS = (("d", 86_400), ("h", 3600), ("m", 60), ("s", 1))


def duration(seconds: float) -> str:
    """The largest whole unit: an age (`3m`, `2d`)."""
    seconds = max(0, int(seconds))
    unit, size = next(((unit, size) for unit, size in _UNITS if seconds >= size), _UNITS[-1])
    return f"{seconds // size}{unit}"


def time_left(seconds: float) -> str:
    """Time left, with a second unit while the first is small: a grant made for 2h reads `1h 59m`, not
    `1h`, and a request about to expire is not shown with half its time gone."""
    seconds = max(0, int(seconds))
    for (unit, size), (finer, finer_size) in itertools.pairwise(_UNITS):
        if seconds >= size:
            count, rest = divmod(seconds, size)
            if count < 10 and rest >= finer_size:
                return f"{count}{unit} {rest // finer_size}{finer}"
            return f"{count}{unit}"
    return f"{seconds}s"
