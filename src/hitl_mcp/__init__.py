"""hitl-mcp: a human between an AI agent and the actions it must not take alone."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from hitl_mcp.errors import HitlError
    from hitl_mcp.models import Decision, Request, RequestPage, Status

    __version__: str

__all__ = ["Decision", "HitlError", "Request", "RequestPage", "Status", "__version__"]

# Loaded when first asked for (PEP 562): importing any part of hitl runs this file, and the models cost
# pydantic (about 0.2 s), which a short command such as `hitl list` never needs.
_EXPORTS = {
    "Decision": "hitl_mcp.models",
    "HitlError": "hitl_mcp.errors",
    "Request": "hitl_mcp.models",
    "RequestPage": "hitl_mcp.models",
    "Status": "hitl_mcp.status",
}


def __getattr__(name: str) -> Any:
    if name == "__version__":
        from importlib.metadata import version

        found = globals()["__version__"] = version("hitl-mcp-gateway")  # read once: it scans metadata
        return found
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'hitl_mcp' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
