"""A clock the test moves by hand, for the gate's `clock`: expiry and escalation without waiting."""

from __future__ import annotations


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now
