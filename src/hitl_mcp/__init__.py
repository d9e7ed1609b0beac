"""hitl-mcp: a human between an AI agent and the actions it must not take alone."""

from importlib.metadata import version

from hitl_mcp.errors import HitlError
from hitl_mcp.models import Decision, Request, RequestPage, Status

__version__ = version("hitl-mcp-gateway")

__all__ = ["Decision", "HitlError", "Request", "RequestPage", "Status", "__version__"]
