"""`[slack]`: the Slack app hitl posts approval messages as, and the secret Slack signs presses with.

```toml
[slack]
bot_token = "${SLACK_BOT_TOKEN}"          # xoxb-…, scopes chat:write (and im:write for direct messages)
signing_secret = "${SLACK_SIGNING_SECRET}"
# api_url = "https://slack.com/api/"      # default; tests point it at a local stand-in
```

Both secrets are usually `${VARIABLE}`s, expanded from the environment hitl runs in. Who pressed a button
is a Slack user id, mapped to a principal by `[principals.NAME] slack_user = "U…"`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator
from pydantic_core import PydanticCustomError

from hitl_mcp.actions.base import describe_validation_error
from hitl_mcp.errors import ConfigError
from hitl_mcp.upstream.settings import expand

DEFAULT_API_URL = "https://slack.com/api/"
# Slack's ids: a user U… or W…, a channel C…, G… or D… (upper-case letters and digits).
SLACK_USER_PATTERN = r"^[UW][A-Z0-9]{2,31}$"
SLACK_CHANNEL_PATTERN = r"^[CGDU][A-Z0-9]{2,31}$"


class SlackSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    bot_token: SecretStr = Field(min_length=1, description="The bot's token (xoxb-…)")
    signing_secret: SecretStr = Field(
        min_length=1, description="The app's signing secret: every interaction request is checked with it"
    )
    api_url: str = Field(default=DEFAULT_API_URL, description="Slack's Web API (a stand-in in tests)")

    @field_validator("api_url")
    @classmethod
    def _api_url(cls, value: str) -> str:
        if not value.startswith(("https://", "http://")) or any(c.isspace() for c in value):
            raise PydanticCustomError("url", "must be an http:// or https:// URL")
        return value if value.endswith("/") else value + "/"


def load_slack(raw: Any, env: Mapping[str, str]) -> SlackSettings | None:
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise ConfigError("slack: must be a table with bot_token and signing_secret")
    expanded = {
        key: expand(value, f"slack.{key}", env) if isinstance(value, str) else value
        for key, value in raw.items()
    }
    try:
        return SlackSettings.model_validate(expanded)
    except ValidationError as error:
        raise ConfigError(describe_validation_error(error, prefix="slack.")) from None


def check_slack_users(users: Mapping[str, str | None]) -> None:
    """One Slack user for two principals could not be told apart: refuse it. `users`: principal → id."""
    owners: dict[str, str] = {}
    for principal, user in users.items():
        if user is None:
            continue
        first = owners.setdefault(user, principal)
        if first != principal:
            raise ConfigError(
                f"principals.{principal}.slack_user: {user} is already principals.{first}'s; one Slack user "
                "is one principal"
            )


def check_slack_channels(channels: list[str | None], slack: SlackSettings | None) -> None:
    """A `slack_channel` notifier posts as the `[slack]` bot: refuse one without it. `channels`: per
    `[[notify]]` entry, its slack_channel or None."""
    if slack is not None:
        return
    for index, channel in enumerate(channels):
        if channel is not None:
            raise ConfigError(
                f"notify[{index}].slack_channel: posting to Slack needs a [slack] table with bot_token and "
                "signing_secret"
            )
