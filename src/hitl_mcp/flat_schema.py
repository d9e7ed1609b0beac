"""An output schema as a client checks it cheaply: the same documents accepted, fewer subschemas to visit.

A client that checks every answer against the tool's `outputSchema` (the Python SDK's does, with
`jsonschema`) pays for each subschema it descends into and, far more, for each `$ref` it resolves. The
schemas pydantic writes for hitl's answers spend both on nothing: the request's status is a `$ref` to a
one-line enum, every optional field is an `anyOf` of two bare types, every free-form object says
`additionalProperties: true`. Written flat, checking a filed request's answer or a decision costs a
client about half as much (`python -m bench.profile_cycle` counts it; docs/performance.md).

Every rewrite here keeps the set of accepted documents exactly; where one could change it (a `$ref`
beside other assertions, a recursive model, `unevaluatedProperties`) the schema is left as written.
"""

from __future__ import annotations

from typing import Any

# Keywords that describe and never assert: merged freely beside an inlined definition.
ANNOTATIONS = frozenset(
    {"title", "description", "default", "examples", "deprecated", "readOnly", "writeOnly"}
)
LOCAL = "#/$defs/"


def flattened(schema: dict[str, Any]) -> dict[str, Any]:
    """`schema` with its local definitions inlined, optional bare types as a type list, and
    `additionalProperties: true` left out; `$defs` kept only if a reference to it remains."""
    defs = schema.get("$defs", {})
    kept: list[bool] = []

    def node(value: Any, resolving: frozenset[str]) -> Any:
        if isinstance(value, list):
            return [node(item, resolving) for item in value]
        if not isinstance(value, dict):
            return value
        ref = value.get("$ref")
        if isinstance(ref, str) and ref.startswith(LOCAL):
            name = ref[len(LOCAL) :]
            siblings = {k: v for k, v in value.items() if k not in ("$ref", "$defs")}
            target = defs.get(name)
            # Inlined only when nothing beside the reference asserts (it would apply as well as the
            # definition) and the definition does not contain itself.
            if isinstance(target, dict) and name not in resolving and set(siblings) <= ANNOTATIONS:
                return node(target, resolving | {name}) | siblings
            kept.append(True)
            return {"$ref": ref} | {k: node(v, resolving) for k, v in siblings.items()}
        out = {k: node(v, resolving) for k, v in value.items() if k != "$defs"}
        if out.get("additionalProperties") is True and "unevaluatedProperties" not in out:
            del out["additionalProperties"]
        branches = out.get("anyOf")
        if (
            isinstance(branches, list)
            and "type" not in out
            and branches
            and all(_bare_type(branch) for branch in branches)
        ):
            del out["anyOf"]
            out["type"] = [b["type"] for b in branches]
        return out

    flat: dict[str, Any] = node(schema, frozenset())
    if kept and defs:
        flat["$defs"] = {name: node(body, frozenset({name})) for name, body in defs.items()}
    return flat


def _bare_type(branch: Any) -> bool:
    """`{"type": "string"}` and nothing else: one of several such branches is one name in a type list."""
    return isinstance(branch, dict) and set(branch) == {"type"} and isinstance(branch["type"], str)
