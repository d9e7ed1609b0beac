"""Where the CLI's commands act: through a server's API (HITL_SERVER), or on a store opened directly.

Stdlib only, for `hitl list`'s quick path, which must hand a listing through a server to the full path."""

from __future__ import annotations

import os


def through_server() -> bool:
    """Whether the CLI acts through a server's API (HITL_SERVER) rather than on a store."""
    return bool(os.environ.get("HITL_SERVER", "").strip())
