"""Slack's Web API through `slack_sdk`'s own client, one call at a time in a worker thread.

Why the synchronous `WebClient` in a thread rather than `AsyncWebClient`: the async client needs aiohttp,
a second HTTP stack beside the SDK's httpx2 that this project would carry for four calls. A call takes one
thread for at most `timeout` seconds; the outbox sends a few at once, and interactions one per press.
"""

from __future__ import annotations

import json
import urllib.error
from functools import partial
from typing import TYPE_CHECKING, Any

import anyio

from hitl_mcp.notify.slack_settings import SlackSettings

if TYPE_CHECKING:
    # slack_sdk is imported by the first Slack call, not when every server (or the CLI) starts.
    from slack_sdk.errors import SlackApiError

# Slack's answers a retry can change: rate limits and its own trouble. Anything else (channel_not_found,
# invalid_auth, not_in_channel…) needs a person to fix the app or the config.
RETRYABLE_ERRORS = frozenset(
    {"ratelimited", "internal_error", "fatal_error", "service_unavailable", "request_timeout"}
)


class SlackCallFailed(Exception):
    """A Web API call that did not succeed, in one line; `permanent` when retrying cannot help."""

    def __init__(self, message: str, *, permanent: bool = False, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.permanent = permanent
        self.retry_after = retry_after


class SlackApi:
    def __init__(self, settings: SlackSettings, *, timeout: float = 10.0) -> None:
        from slack_sdk.web import WebClient

        self._client = WebClient(
            token=settings.bot_token.get_secret_value(),
            base_url=settings.api_url,
            timeout=int(max(1, timeout)),
        )
        # The outbox retries on its own schedule; the SDK's immediate retry would only double a failure.
        self._client.retry_handlers.clear()

    async def call(self, method: str, **arguments: Any) -> dict[str, Any]:
        """`method` (such as "chat.postMessage") with a JSON body; the answer's data when Slack says ok."""
        from slack_sdk.errors import SlackApiError, SlackClientError

        try:
            response = await anyio.to_thread.run_sync(
                partial(self._client.api_call, method, json=arguments), abandon_on_cancel=True
            )
        except SlackApiError as error:
            raise _failure(method, error) from None
        except (SlackClientError, urllib.error.URLError, OSError, json.JSONDecodeError) as error:
            raise SlackCallFailed(f"Slack {method}: {type(error).__name__}: {error}") from None
        data = response.data
        return data if isinstance(data, dict) else {}


def _failure(method: str, error: SlackApiError) -> SlackCallFailed:
    response = error.response
    status = response.status_code
    data = response.data if isinstance(response.data, dict) else {}
    code = str(data.get("error") or f"HTTP {status}")[:200]
    retry_after: float | None = None
    header = (response.headers or {}).get("Retry-After") or (response.headers or {}).get("retry-after")
    if isinstance(header, list):
        header = header[0] if header else None
    try:
        retry_after = None if header is None else max(0.0, float(header))
    except ValueError:
        retry_after = None
    retryable = status >= 500 or status == 429 or code in RETRYABLE_ERRORS
    return SlackCallFailed(
        f"Slack {method}: {code} (HTTP {status})", permanent=not retryable, retry_after=retry_after
    )
