"""The registry of gated actions. Gating a new tool is one new `Action` here, not new server code."""

from __future__ import annotations

from collections.abc import Mapping

from hitl_mcp.actions.base import Action, ActionSettings, Execution
from hitl_mcp.actions.buy_stock import BuyStock
from hitl_mcp.actions.delete_records import DeleteRecords
from hitl_mcp.actions.send_email import SendEmail
from hitl_mcp.errors import InvalidArguments

ACTION_TYPES: dict[str, type[Action]] = {  # type: ignore[type-arg]
    action.name: action for action in (BuyStock, SendEmail, DeleteRecords)
}


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
    return {name: action_type(settings[name]) for name, action_type in ACTION_TYPES.items()}


__all__ = ["ACTION_TYPES", "Action", "ActionSettings", "Execution", "build_actions", "find"]
