"""The registry of gated actions. Gating a new tool is one new `Action` here, not new server code."""

from __future__ import annotations

from collections.abc import Mapping

from hitl_mcp.actions.base import Action, ActionSettings, Execution
from hitl_mcp.actions.buy_stock import BuyStock
from hitl_mcp.actions.delete_records import DeleteRecords
from hitl_mcp.actions.send_email import SendEmail

ACTION_TYPES: dict[str, type[Action]] = {  # type: ignore[type-arg]
    action.name: action for action in (BuyStock, SendEmail, DeleteRecords)
}


def build_actions(settings: Mapping[str, ActionSettings]) -> dict[str, Action]:  # type: ignore[type-arg]
    """One configured instance per registered action."""
    return {name: action_type(settings[name]) for name, action_type in ACTION_TYPES.items()}


__all__ = ["ACTION_TYPES", "Action", "ActionSettings", "Execution", "build_actions"]
