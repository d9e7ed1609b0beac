"""What an action is: a name, an argument model, a summary, a side-effect-free preview, and `execute`.

For plug-in authors: an action in another package is what the built-ins are, registered the same way.
Subclass `Action[YourArguments, YourSettings]` and set `name` (the MCP tool name: 1-128 of A-Z a-z 0-9
`_ - .`; no `__`, which names upstream servers' tools, and none of the companion tools' names),
`description` (what the agent reads: say that nothing happens until a person approves), `arguments_model`
(pydantic, `extra="forbid"` so a misspelt argument is refused), `settings_model` (an `ActionSettings`
subclass validating `[actions.NAME]`; give each field a default, or the start refuses until it is set, and
type paths `ConfigPath` so relative ones resolve against the config file's folder) and `preview_types` (the
preview values `[policy.NAME]` rules may name). Implement `summary`, `preview` (no side effects: a person
reads it before anything happens), `execute` (idempotent by `execution.request_id`; raise
`ActionFailed(..., effect="none")` only when certainly nothing happened) and `target()` (what it acts on,
so a request runs only where it was previewed); previews and results are JSON-compatible dicts. Then name
the class in your pyproject.toml, the entry point's name being the action's `name`:

    [project.entry-points."hitl_mcp.actions"]
    create_ticket = "your_package:CreateTicket"

Installed beside hitl-mcp, it is served by `hitl serve` and configured like a built-in; one that fails to
import or to pass these checks stops the start with a `ConfigError` naming it and its distribution.
`examples/hitl-action-example` is a complete one.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, ClassVar, Generic, TypeVar

from pydantic import AfterValidator, BaseModel, ConfigDict, ValidationError, ValidationInfo

from hitl_mcp.errors import ActionFailed, ConfigError, InvalidArguments

ArgsT = TypeVar("ArgsT", bound=BaseModel)
SettingsT = TypeVar("SettingsT", bound="ActionSettings")


def _resolve_against_config(value: Path, info: ValidationInfo) -> Path:
    base_dir = (info.context or {}).get("base_dir")
    value = value.expanduser()
    if value.is_absolute() or base_dir is None:
        return value
    return Path(base_dir) / value


ConfigPath = Annotated[Path, AfterValidator(_resolve_against_config)]
"""A path in the config file: relative ones resolve against the config file's folder."""


class ActionSettings(BaseModel):
    """One `[actions.NAME]` table of the config file. Unknown keys are refused."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    ttl_seconds: int | None = None


@dataclass(frozen=True)
class Execution:
    """What the gate hands an action when it runs: the request it runs for and what the approver saw."""

    request_id: str
    preview: Mapping[str, Any]


def describe_target(target: Mapping[str, str]) -> str:
    """A target in words, e.g. `database /srv/app.db`."""
    return ", ".join(f"{key} {value}" for key, value in sorted(target.items())) or "no particular target"


def describe_validation_error(error: ValidationError, prefix: str = "") -> str:
    """One line per failing field: `field: rule`. Pydantic's own text names both; we keep it short."""
    parts = []
    for item in error.errors(include_url=False):
        location = ".".join(str(part) for part in item["loc"]) or "(arguments)"
        parts.append(f"{prefix}{location}: {item['msg']}")
    return "; ".join(parts)


class Action(ABC, Generic[ArgsT, SettingsT]):
    """A gated tool. Subclasses set the class attributes and implement the four methods."""

    name: ClassVar[str]
    description: ClassVar[str]
    arguments_model: ClassVar[type[BaseModel]]
    settings_model: ClassVar[type[ActionSettings]]
    preview_types: ClassVar[Mapping[str, type]] = {}
    """Preview values that policy rules may name beside the arguments (e.g. `total`), with the Python type
    each has, so a rule's `when` is type-checked at load against what it will meet."""

    def __init__(self, settings: SettingsT) -> None:
        self.settings = settings

    @classmethod
    def configure(cls, raw: Mapping[str, Any], base_dir: Path) -> ActionSettings:
        """Validate this action's config table; relative paths resolve against `base_dir`."""
        try:
            settings = cls.settings_model.model_validate(dict(raw), context={"base_dir": base_dir})
        except ValidationError as error:
            raise ConfigError(describe_validation_error(error, prefix=f"actions.{cls.name}.")) from None
        return settings

    @classmethod
    def argument_names(cls) -> frozenset[str]:
        """The arguments it takes (an approver's edit may change only these)."""
        return frozenset(cls.arguments_model.model_fields)

    @classmethod
    def policy_names(cls) -> frozenset[str]:
        """The names a policy rule's `when` may use for this action."""
        return cls.argument_names() | frozenset(cls.preview_types)

    def policy_values(self, args: ArgsT, preview: Mapping[str, Any]) -> dict[str, object]:
        values: dict[str, object] = {name: preview[name] for name in self.preview_types if name in preview}
        values.update(args.model_dump(mode="json"))
        return values

    def parse(self, raw: Mapping[str, Any]) -> ArgsT:
        """Validate agent-supplied arguments; refuse with every failing field named."""
        try:
            return self.arguments_model.model_validate(dict(raw))  # type: ignore[return-value]
        except ValidationError as error:
            raise InvalidArguments(describe_validation_error(error)) from None

    def target(self) -> dict[str, str]:
        """What this action previews and acts on as this process is configured: the ledger, the database,
        the server. A request records it when filed and runs only in a process with the same target, so
        an approver never makes it act on something other than what they were shown. Empty: anywhere."""
        return {}

    def ready(self) -> bool:
        """Whether this process can run it now. An upstream's tool cannot while its session is down; an
        approved request then waits for it rather than failing."""
        return True

    @abstractmethod
    def summary(self, args: ArgsT) -> str:
        """One human sentence saying what would happen."""

    @abstractmethod
    async def preview(self, args: ArgsT) -> dict[str, Any]:
        """The impact, computed without side effects. May refuse with `InvalidArguments`."""

    @abstractmethod
    async def execute(self, args: ArgsT, execution: Execution) -> dict[str, Any]:
        """Do the real thing, idempotently keyed by `execution.request_id`. Refuse with `ActionFailed`."""


# What a plug-in needs, from one module.
__all__ = [
    "Action",
    "ActionFailed",
    "ActionSettings",
    "ConfigPath",
    "Execution",
    "InvalidArguments",
    "describe_target",
    "describe_validation_error",
]
