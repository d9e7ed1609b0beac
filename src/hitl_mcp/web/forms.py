"""The edit form: one labelled input per argument in the action's schema, and what a person typed read back
as the JSON types the schema names.

What a value may be is the gate's business, not the form's: inputs carry no `min`, `pattern` or `required`
of their own (a browser would refuse in other words than the CLI's), a value that does not parse as its type
is passed on as typed, and the gate's refusal names the field.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from hitl_mcp import display, json_input
from hitl_mcp.actions import Action
from hitl_mcp.errors import InvalidArguments

Kind = Literal["text", "textarea", "integer", "number", "boolean", "choice", "json"]
FIELD_PREFIX = "arg:"
# Text longer than this may be, or holding a line break, is edited in a textarea.
SHORT_TEXT = 300
INTEGER = re.compile(r"[+-]?[0-9]{1,30}")


@dataclass(frozen=True)
class ArgumentField:
    name: str
    kind: Kind
    value: str
    """The current value as the input shows it."""
    description: str
    index: int
    required: bool
    choices: tuple[str, ...] = ()

    @property
    def key(self) -> str:
        """The form field's name: argument names are the upstream's to choose, so they are kept apart."""
        return FIELD_PREFIX + self.name

    @property
    def element_id(self) -> str:
        return f"arg-{self.index}"

    @property
    def escaped(self) -> str | None:
        """The value with its hidden characters (bidi overrides, zero-width and control characters) shown
        as escapes, when it holds any; None when it holds none. The input must hold the exact value, so
        it obeys them: a U+202E reverses what follows it. This is shown beside it, to be read instead."""
        allowed = "\n\t" if self.kind in ("textarea", "json") else ""
        if not any(display.is_hidden(char) for char in self.value if char not in allowed):
            return None
        return display.visible_lines(self.value) if allowed else display.visible(self.value)


def argument_schema(action: Action) -> dict[str, Any]:  # type: ignore[type-arg]
    """The JSON Schema of the action's arguments: an upstream tool's own, or the argument model's."""
    from hitl_mcp.gateway.action import UpstreamTool

    if isinstance(action, UpstreamTool):
        return dict(action.tool.input_schema)
    return action.arguments_model.model_json_schema()


def _resolved(schema: Mapping[str, Any], prop: Mapping[str, Any]) -> Mapping[str, Any]:
    """A property's own schema: through a local `$ref`, and past the `null` of an optional value."""
    ref = prop.get("$ref")
    if isinstance(ref, str) and ref.startswith("#/$defs/"):
        target = schema.get("$defs", {}).get(ref.removeprefix("#/$defs/"))
        if isinstance(target, Mapping):
            prop = {**target, **{k: v for k, v in prop.items() if k != "$ref"}}
    for combinator in ("anyOf", "oneOf"):
        options = prop.get(combinator)
        if isinstance(options, list):
            real = [
                option for option in options if isinstance(option, Mapping) and option.get("type") != "null"
            ]
            if len(real) == 1:
                return _resolved(schema, {**real[0], **{k: v for k, v in prop.items() if k != combinator}})
    return prop


def _kind(prop: Mapping[str, Any], value: Any) -> Kind:
    enum = prop.get("enum")
    if isinstance(enum, list) and enum and all(isinstance(item, str) for item in enum):
        return "choice"
    kind = prop.get("type")
    if isinstance(kind, list):
        kind = next((item for item in kind if item != "null"), None)
    if kind == "string":
        limit = prop.get("maxLength")
        long = not isinstance(limit, int) or limit > SHORT_TEXT
        # A text input drops line breaks (a lone CR among them) from its value: those are edited whole.
        broken = isinstance(value, str) and ("\n" in value or "\r" in value)
        return "textarea" if long or broken else "text"
    if kind == "integer":
        return "integer"
    if kind == "number":
        return "number"
    if kind == "boolean":
        return "boolean"
    return "json"


def _shown(kind: Kind, value: Any) -> str:
    if value is None:
        return ""
    if kind in ("text", "textarea", "choice") and isinstance(value, str):
        return value
    if kind == "json":
        return json.dumps(value, indent=2, ensure_ascii=False)
    return json.dumps(value, ensure_ascii=False)


def fields(action: Action, arguments: Mapping[str, Any]) -> list[ArgumentField]:  # type: ignore[type-arg]
    """The form for `action`, filled with `arguments`."""
    schema = argument_schema(action)
    properties = schema.get("properties")
    required = schema.get("required")
    found: list[ArgumentField] = []
    for index, (name, raw) in enumerate((properties or {}).items()):
        prop = _resolved(schema, raw if isinstance(raw, Mapping) else {})
        value = arguments.get(name)
        kind = _kind(prop, value)
        choices = tuple(prop.get("enum") or ()) if kind == "choice" else ()
        description = prop.get("description")
        found.append(
            ArgumentField(
                name=name,
                kind=kind,
                value=_shown(kind, value),
                description=description if isinstance(description, str) else "",
                index=index,
                required=isinstance(required, list) and name in required,
                choices=choices,
            )
        )
    return found


def _read(kind: Kind, text: str, name: str) -> Any:
    """A submitted value as the type its input stands for; as typed when it is not one."""
    if kind == "integer" and INTEGER.fullmatch(text.strip()):
        return int(text)
    if kind == "number":
        try:
            number = float(text)
        except ValueError:
            return text
        return number if math.isfinite(number) else text
    if kind == "boolean" and text in ("true", "false"):
        return text == "true"
    if kind == "json":
        try:
            return json_input.loads(text)
        except json_input.TooDeep as error:
            raise InvalidArguments(f"{name}: {error}") from None
        except ValueError:
            return text
    return text


def _as_submitted(text: str) -> str:
    """`text` as a browser sends it back from an input that showed it: HTML reads every CR (lone or before
    LF) as LF and every NUL as U+FFFD, and a form sends line breaks as CRLF. A value that comes back so is
    unchanged, and keeps its exact characters."""
    return text.replace("\r\n", "\n").replace("\r", "\n").replace("\0", "\ufffd")


def changes(
    action: Action,  # type: ignore[type-arg]
    arguments: Mapping[str, Any],
    submitted: Mapping[str, str],
) -> dict[str, Any]:
    """The arguments a person changed in the form, with their new values; unchanged ones are left out.
    JSON nested too deeply to parse safely is refused (`InvalidArguments`) rather than passed on."""
    found: dict[str, Any] = {}
    for field in fields(action, arguments):
        if field.key not in submitted:
            continue
        text = submitted[field.key].replace("\r\n", "\n")
        current = arguments.get(field.name)
        if _as_submitted(text) == _as_submitted(field.value):
            continue
        if text == "" and current is None:
            continue
        # Emptied: an optional argument goes back to having no value; a required one is refused by the gate.
        value = None if text == "" and not field.required else _read(field.kind, text, field.name)
        if value == current and type(value) is type(current):
            continue
        found[field.name] = value
    return found
