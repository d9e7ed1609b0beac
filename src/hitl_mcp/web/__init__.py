"""The web face of `hitl serve --http`: the approval inbox (server-rendered pages) and the REST API
(`/api/v1`), two renderings of the same Gate calls and the same models, beside `/mcp`.

    app.py       mounting beside the MCP app; security headers, Host check, body limit; the page saying why
                 the inbox is off when it cannot be served safely
    auth.py      sign-in links and tokens, sessions, cookies, CSRF
    api.py       the REST handlers; openapi.py their document; events.py the change stream (SSE)
    queries.py   the reads both faces make, returning the API's models (models.py)
    pages.py     the inbox's views; forms.py the edit form; previews.py, charts.py, rendering.py
"""

from hitl_mcp.web.app import inbox_app, inbox_off_app
from hitl_mcp.web.auth import InboxOff, SignIn

__all__ = ["InboxOff", "SignIn", "inbox_app", "inbox_off_app"]
