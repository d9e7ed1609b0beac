"""The Slack messages posted about a request, so that a decision from any face updates each of them.

A row is written by the server that posted the message (`chat.postMessage` answered with its channel and
`ts`) and read by whichever server delivers a later event of that request — possibly another one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable


@dataclass(frozen=True)
class SlackMessage:
    channel: str
    ts: str
    request_id: str
    posted_at: float


@runtime_checkable
class SlackMessageStore(Protocol):
    """Part of the SQLite and PostgreSQL stores."""

    async def slack_message_add(self, message: SlackMessage) -> None:
        """Remember a posted message; the same (channel, ts) again changes nothing."""

    async def slack_messages_of(self, request_id: str) -> list[SlackMessage]:
        """The messages posted about `request_id`, oldest first."""
