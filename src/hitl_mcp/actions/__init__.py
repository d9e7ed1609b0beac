"""The registry of gated actions: every `Action` an installed distribution registers under the entry-point
group `hitl_mcp.actions`, hitl-mcp's own three included. Gating a new tool is one `Action` subclass in any
package and one entry point naming it (see `hitl_mcp.actions.base`), not new server code.

The registry is read once per process, on first use (`registry()`), and every problem with it is a
`ConfigError` at start naming the entry point and its distribution.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from functools import cache
from importlib.metadata import EntryPoint, entry_points
from typing import Any

from pydantic import BaseModel

from hitl_mcp.actions.base import Action, ActionSettings, Execution
from hitl_mcp.errors import ConfigError, InvalidArguments

ENTRY_POINT_GROUP = "hitl_mcp.actions"

ActionType = type[Action[Any, Any]]

BUILT_INS = ("buy_stock", "send_email", "delete_database_records")
"""hitl-mcp's own actions, in the order they have always been listed. Hatchling writes entry points sorted
by name, so the listing order is kept here: these first, then every other action by name."""

# The server's companion tools: an action of the same name would shadow one of them or be shadowed.
COMPANION_TOOLS = frozenset(
    {"list_pending", "get_request", "approve", "reject", "wait_for_decision", "cancel_request"}
)
# SEP-986's rule, as mcp.shared.tool_name_validation checks it (tests/test_plugins.py holds the two equal).
# Copied rather than imported: importing any `mcp` module loads the whole SDK, which CLI commands like
# `hitl list` never need and should not wait for.
TOOL_NAME = re.compile(r"[A-Za-z0-9._-]{1,128}")
# `server__tool` names an upstream MCP server's tool proxied through the gate.
RESERVED_SEPARATOR = "__"


@dataclass(frozen=True)
class Registration:
    """One registered action and the entry point it came from."""

    action: ActionType
    entry_point: EntryPoint

    @property
    def name(self) -> str:
        return self.action.name

    @property
    def distribution(self) -> str:
        """The distribution that registered it, e.g. `hitl-mcp 0.1.0`. Read only when asked: a distribution's
        metadata is parsed for nothing else at start."""
        return distribution_of(self.entry_point)


class Registry(Mapping[str, ActionType]):
    """Tool name → `Action` subclass, in listing order; `registration(name)` says where each came from."""

    def __init__(self, registrations: Iterable[Registration]) -> None:
        self._registrations = {registration.name: registration for registration in registrations}

    def __getitem__(self, name: str) -> ActionType:
        return self._registrations[name].action

    def __iter__(self) -> Iterator[str]:
        return iter(self._registrations)

    def __len__(self) -> int:
        return len(self._registrations)

    def registration(self, name: str) -> Registration:
        return self._registrations[name]


def discover() -> tuple[EntryPoint, ...]:
    """The group's entry points as installed: one pass over the environment's distributions (the first of
    a name on `sys.path` wins, as for imports)."""
    return tuple(entry_points(group=ENTRY_POINT_GROUP))


def load_registry(found: Iterable[EntryPoint]) -> Registry:
    """Import and check each entry point in `found`; refuse the first that cannot be served.

    A broken plug-in stops the start (fail closed) rather than being skipped: the operator installed it on
    purpose, agents and `[policy.NAME]` rules expect its tool, and a server that quietly lacks it, or
    serves a module that half-imported, would be found out at the first call instead of now.
    """
    claimed: dict[str, EntryPoint] = {}
    for entry_point in found:
        _check_name(entry_point)
        earlier = claimed.get(entry_point.name)
        if earlier is not None:
            first, second = distribution_of(earlier), distribution_of(entry_point)
            if first == second:
                by, remedy = f"another entry point of {first}", "fix that distribution's entry points"
            else:
                by, remedy = first, "uninstall one of the two distributions"
            raise ConfigError(
                f"{_where(entry_point)}: the action name {entry_point.name!r} is already registered by "
                f"{by} ({earlier.value}); {remedy}"
            )
        claimed[entry_point.name] = entry_point
    registrations = [Registration(_load(entry_point), entry_point) for entry_point in claimed.values()]
    return Registry(sorted(registrations, key=_listing_position))


@cache
def registry() -> Registry:
    """The installed registry, loaded once per process on first use. A refusal is not cached: each use
    raises it again, the same way."""
    loaded = load_registry(discover())
    if not any(name in loaded for name in BUILT_INS):
        raise ConfigError(
            f"entry-point group {ENTRY_POINT_GROUP}: hitl-mcp's own actions are not registered, so its "
            "installed metadata is older than its code; reinstall it (make, or pip install -e .)"
        )
    return loaded


class _Installed(Mapping[str, ActionType]):
    """`registry()` as a module-level mapping, for code that names `ACTION_TYPES`; loaded on first use."""

    def __getitem__(self, name: str) -> ActionType:
        return registry()[name]

    def __iter__(self) -> Iterator[str]:
        return iter(registry())

    def __len__(self) -> int:
        return len(registry())

    def __repr__(self) -> str:
        return "<the installed hitl_mcp.actions registry>"  # repr never loads it: a debugger calls it


ACTION_TYPES: Mapping[str, ActionType] = _Installed()


def find(actions: Mapping[str, Action], tool: str) -> Action:  # type: ignore[type-arg]
    """The action named `tool`, or a refusal that lists the known ones."""
    try:
        return actions[tool]
    except KeyError:
        raise InvalidArguments(
            f"tool: no gated action is named {tool!r}; known: {', '.join(sorted(actions))}"
        ) from None


def build_actions(settings: Mapping[str, ActionSettings]) -> dict[str, Action]:  # type: ignore[type-arg]
    """One configured instance per registered action."""
    return {name: action_type(settings[name]) for name, action_type in registry().items()}


def distribution_of(entry_point: EntryPoint) -> str:
    """`name version` of the distribution that declares `entry_point`, for messages."""
    dist = entry_point.dist
    if dist is None:
        return "an unknown distribution"
    metadata = dist.metadata  # parsed once for both fields
    return f"{metadata['Name']} {metadata['Version']}"


def _where(entry_point: EntryPoint) -> str:
    return f"entry point {entry_point.name} = {entry_point.value} (from {distribution_of(entry_point)})"


def _check_name(entry_point: EntryPoint) -> None:
    name = entry_point.name
    if not TOOL_NAME.fullmatch(name):
        raise ConfigError(
            f"{_where(entry_point)}: {name!r} is not a valid MCP tool name (1 to 128 of A-Z a-z 0-9 _ - .)"
        )
    if RESERVED_SEPARATOR in name:
        raise ConfigError(
            f"{_where(entry_point)}: {name!r} contains {RESERVED_SEPARATOR!r}, which is reserved for the "
            "tools of upstream MCP servers (server__tool); rename the action"
        )
    if name in COMPANION_TOOLS:
        raise ConfigError(
            f"{_where(entry_point)}: {name!r} is one of the server's own tools; rename the action"
        )


def _load(entry_point: EntryPoint) -> ActionType:
    try:
        loaded = entry_point.load()
    except Exception as error:
        # One line, whatever the plug-in raised: the start's refusal is read in a terminal or a client log.
        lines = str(error).strip().splitlines()
        reason = f"{type(error).__name__}: {lines[0]}" if lines else type(error).__name__
        raise ConfigError(f"{_where(entry_point)}: cannot be imported: {reason}") from None
    if not (isinstance(loaded, type) and issubclass(loaded, Action)):
        raise ConfigError(
            f"{_where(entry_point)}: loads {loaded!r}, which is not a subclass of "
            "hitl_mcp.actions.base.Action"
        )
    problem = _class_problem(loaded, entry_point.name)
    if problem:
        raise ConfigError(f"{_where(entry_point)}: {problem}")
    return loaded


def _class_problem(action: ActionType, name: str) -> str | None:
    """What keeps `action` from being served under `name`; checked now so that it is not found out later,
    half-way through building the server or filing the first call."""
    declared = getattr(action, "name", None)
    if declared != name:
        return (
            f"the action's name is {declared!r}; an entry point's name must be its action's name (the tool "
            "name agents call)"
        )
    if not isinstance(getattr(action, "description", None), str):
        return "the action sets no description (the text agents read to choose the tool)"
    for attribute, base in (("arguments_model", BaseModel), ("settings_model", ActionSettings)):
        model = getattr(action, attribute, None)
        if not (isinstance(model, type) and issubclass(model, base)):
            return f"{attribute} must be a subclass of {base.__module__}.{base.__qualname__}, not {model!r}"
    if inspect.isabstract(action):
        missing = ", ".join(sorted(getattr(action, "__abstractmethods__", ())))
        return f"the action does not implement {missing}"
    return None


def _listing_position(registration: Registration) -> tuple[int, str]:
    name = registration.name
    return (BUILT_INS.index(name) if name in BUILT_INS else len(BUILT_INS), name)


__all__ = [
    "ACTION_TYPES",
    "BUILT_INS",
    "ENTRY_POINT_GROUP",
    "Action",
    "ActionSettings",
    "ActionType",
    "Execution",
    "Registration",
    "Registry",
    "build_actions",
    "discover",
    "distribution_of",
    "find",
    "load_registry",
    "registry",
]
