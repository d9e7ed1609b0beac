"""How approvals fill a policy's levels, over plain values: who counted at each level, which level a
request waits on, and how a level reads to a person.

No pydantic here: `policy.Level` describes and counts through these, and so does a queue line built
straight from a stored row (`hitl_mcp.queue_rows`), which must not cost a command the models."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

# The approvals that make a request wait on levels (a confirm rule's waits, until its requester confirms).
NEEDS_DECISION = frozenset({"required", "confirm"})


class LevelLike(Protocol):
    @property
    def roles(self) -> tuple[str, ...]: ...

    @property
    def count(self) -> int: ...


@dataclass(frozen=True)
class StoredLevel:
    """A level as a stored policy snapshot holds it."""

    roles: tuple[str, ...]
    count: int


@dataclass(frozen=True)
class Approver:
    principal: str
    roles: tuple[str, ...]


@dataclass(frozen=True)
class Progress:
    """How far a request's approvals go: who counted at each level, and the level it waits on."""

    counted: tuple[tuple[str, ...], ...]
    waiting_on: int | None

    @property
    def complete(self) -> bool:
        return self.waiting_on is None


def admits(level: LevelLike, roles: Iterable[str]) -> bool:
    """Whether a principal holding `roles` may count toward `level` (a level without roles: anyone)."""
    return not level.roles or any(role in level.roles for role in roles)


def describe(level: LevelLike) -> str:
    who = " or ".join(level.roles) if level.roles else "anyone but the requester"
    return f"{level.count} × {who}"


def progress(levels: Sequence[LevelLike], approvers: Sequence[Approver]) -> Progress:
    """Assign approvers to levels in order; each principal counts once, at the first level it fits."""
    unused = list(approvers)
    counted: list[tuple[str, ...]] = []
    for index, level in enumerate(levels):
        fits = [approver for approver in unused if admits(level, approver.roles)][: level.count]
        counted.append(tuple(approver.principal for approver in fits))
        for approver in fits:
            unused.remove(approver)
        if len(fits) < level.count:
            counted.extend(() for _ in levels[index + 1 :])
            return Progress(tuple(counted), index)
    return Progress(tuple(counted), None)
