"""`[[notify]]` entries: which events go where, validated at start; every error names its key.

```toml
[[notify]]
on = ["filed", "escalated"]
webhook = "https://hooks.example.com/approvals"   # a JSON POST
secret = "…"                                       # X-Hitl-Signature: sha256=HMAC-SHA256(secret, body)
tools = ["buy_stock"]                              # only these actions (default: all)
levels = [2]                                       # only while the request is at its 2nd policy level
roles = ["risk_manager"]                           # only levels these roles may decide

[[notify]]
on = ["filed"]
slack_webhook = "https://hooks.slack.com/services/…"

[[notify]]
on = ["filed", "escalated"]
slack_channel = "C0123APPROVALS"                   # posted by the [slack] bot, with Approve/Reject buttons

[[notify]]
on = ["failed", "expired"]
email = "oncall@example.com"                       # sent with [actions.send_email]'s SMTP settings
sender = "hitl@example.com"                        # its From (default: hitl@localhost)

[[notify]]
on = ["filed", "escalated"]
email_approvers = true        # each [principals.NAME] with an email who may decide gets their own links
link_hours = 24               # a link lasts this long, or until its request expires (sooner wins)

[[notify]]
on = ["filed", "escalated"]
ntfy = "https://ntfy.example.com/approvals"        # an ntfy topic: a push with a View action
ntfy_token = "tk_…"                                # optional: Authorization: Bearer
principal = "alice"                                # optional: Approve / Reject actions open alice's link
```

A notification's From is its own `sender`, never the `send_email` action's: a message about a request is
from hitl, not from the agent whose mail is being approved. Set it to an address your SMTP server accepts.

`levels` (1-based, as `hitl show` numbers them) and `roles` look at the level a request waits on after the
event — for `filed`, `escalated` and an approval that leaves it waiting on a next level — and at every
level of its policy otherwise (a decision, an outcome, expiry, withdrawal). A level without roles admits
anyone, so it matches any `roles`. A request whose policy needs no approval has no levels: a notifier with
`levels` or `roles` never hears of it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from typing import Annotated, Any, Literal, get_args
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator
from pydantic_core import PydanticCustomError

from hitl_mcp.actions import ACTION_TYPES
from hitl_mcp.actions.base import describe_validation_error
from hitl_mcp.actions.send_email import normalize_address
from hitl_mcp.errors import ConfigError

# `tool-changed` is about no request: an upstream's tool whose definition changed while served (no `levels`
# or `roles` filter admits it, as none admits a request without levels).
# `granted` is a request's: a call a standing approval covered, which ran without waiting. `grant-created` and
# `grant-revoked` are about no request, like `tool-changed`.
Event = Literal[
    "filed",
    "escalated",
    "approved",
    "rejected",
    "executed",
    "failed",
    "expired",
    "cancelled",
    "tool-changed",
    "granted",
    "grant-created",
    "grant-revoked",
]
EVENTS: tuple[str, ...] = get_args(Event)
Channel = Literal["webhook", "slack", "email", "slack_bot", "email_approvers", "ntfy"]
TARGET_KEYS: dict[str, Channel] = {
    "webhook": "webhook",
    "slack_webhook": "slack",
    "email": "email",
    "slack_channel": "slack_bot",
    "email_approvers": "email_approvers",
    "ntfy": "ntfy",
}
# A message posted with buttons is updated in place when its request is decided, whichever face decided:
# a `slack_channel` notifier hears these events of every request, whatever its `on` and filters say.
SLACK_UPDATE_EVENTS = frozenset({"approved", "rejected", "executed", "failed", "expired", "cancelled"})
MAX_URL_LENGTH = 2000
# Deliberately not [actions.send_email]'s sender: that one speaks for the agent.
DEFAULT_SENDER = "hitl@localhost"


def email_address(value: str | None) -> str | None:
    """A settings field's email address in its normal form, or the validation error that names it."""
    if value is None:
        return None
    try:
        return normalize_address(value)
    except ValueError as error:
        raise PydanticCustomError("email", str(error)) from None


def _http_url(value: str) -> str:
    parts = urlsplit(value)
    if (
        parts.scheme not in ("http", "https")
        or not parts.hostname
        or any(char.isspace() or ord(char) < 32 or ord(char) == 127 for char in value)
    ):
        raise PydanticCustomError("url", "must be an http:// or https:// URL with a host")
    return value


class Notifier(BaseModel):
    """One `[[notify]]` table: the events it wants, one target, and optional filters."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    on: tuple[Event, ...] = Field(min_length=1, description="The events to send")
    webhook: str | None = Field(default=None, max_length=MAX_URL_LENGTH, description="A generic JSON POST")
    secret: SecretStr | None = Field(
        default=None, min_length=1, description="Signs a webhook's body: X-Hitl-Signature: sha256=<hex>"
    )
    slack_webhook: str | None = Field(
        default=None, max_length=MAX_URL_LENGTH, description="A Slack incoming-webhook URL"
    )
    email: str | None = Field(default=None, description="One address, sent with [actions.send_email]'s SMTP")
    slack_channel: str | None = Field(
        default=None,
        pattern=r"^[CGDU][A-Z0-9]{2,31}$",
        description="A Slack channel id the [slack] bot posts to, with buttons",
    )
    email_approvers: Literal[True] | None = Field(
        default=None, description="Mail each principal who may decide the waiting level their own links"
    )
    ntfy: str | None = Field(default=None, max_length=MAX_URL_LENGTH, description="An ntfy topic's URL")
    ntfy_token: SecretStr | None = Field(default=None, min_length=1, description="The ntfy access token")
    principal: str | None = Field(
        default=None, description="The one principal an ntfy push's Approve / Reject actions act as"
    )
    link_hours: float = Field(
        default=24.0, gt=0, le=24 * 90, allow_inf_nan=False, description="How long a decision link lasts"
    )
    sender: str = Field(default=DEFAULT_SENDER, description="The From of an email notification")
    tools: tuple[str, ...] = Field(default=(), description="Only these actions; none: all")
    levels: tuple[Annotated[int, Field(ge=1, le=100)], ...] = Field(
        default=(), description="Only these policy levels (1-based); none: any"
    )
    roles: tuple[str, ...] = Field(default=(), description="Only levels these roles may decide; none: any")

    @field_validator("webhook", "slack_webhook", "ntfy")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        return None if value is None else _http_url(value)

    @field_validator("email", "sender")
    @classmethod
    def _address(cls, value: str | None) -> str | None:
        return email_address(value)

    @field_validator("tools")
    @classmethod
    def _known_tools(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for tool in value:
            if tool not in ACTION_TYPES:
                raise PydanticCustomError(
                    "tool",
                    "no such action {tool!r}; known actions: {known}",
                    {"tool": tool, "known": ", ".join(sorted(ACTION_TYPES))},
                )
        return value

    @property
    def channel(self) -> Channel:
        if self.webhook is not None:
            return "webhook"
        if self.slack_channel is not None:
            return "slack_bot"
        if self.email_approvers:
            return "email_approvers"
        if self.ntfy is not None:
            return "ntfy"
        return "slack" if self.slack_webhook is not None else "email"

    @property
    def target(self) -> str:
        if self.email_approvers:
            return "approvers"
        target = self.webhook or self.slack_webhook or self.email or self.slack_channel or self.ntfy
        assert target is not None
        return target

    @property
    def key(self) -> str:
        """Names the target in the outbox without storing it: a Slack URL is itself a credential."""
        # Two ntfy entries on one topic bound to different principals are two messages, not one.
        bound = "" if self.principal is None else f"\n{self.principal}"
        return target_key(self.channel, self.target + bound)

    @property
    def label(self) -> str:
        """The target as `hitl notify status` shows it, with nothing secret in it."""
        if self.channel == "email":
            return f"email {self.target}"
        if self.channel == "slack_bot":
            return f"slack channel {self.target}"
        if self.channel == "email_approvers":
            return "email to each approver"
        parts = urlsplit(self.target)
        if self.channel == "slack":
            return f"slack {parts.scheme}://{parts.netloc}/…"
        if self.channel == "ntfy":
            # On a public ntfy server the topic's name is what keeps others from reading it.
            return f"ntfy {parts.scheme}://{parts.netloc}/…" + (
                f" as {self.principal}" if self.principal else ""
            )
        # A path or query may carry a token; keep the path's first segment only.
        first = parts.path.strip("/").split("/", 1)[0]
        more = "/…" if parts.path.strip("/").count("/") or parts.query else ""
        return f"webhook {parts.scheme}://{parts.netloc}/{first}{more}"

    @property
    def hears(self) -> frozenset[str]:
        """The events this notifier gets rows for: its `on`, and a Slack bot's updates of its messages."""
        return frozenset(self.on) | (SLACK_UPDATE_EVENTS if self.slack_channel is not None else frozenset())

    def matches(self, event: str, tool: str, levels: Iterable[tuple[int, tuple[str, ...]]]) -> bool:
        """Whether this notifier wants `event` for `tool`, given the levels in question (0-based index and
        the roles each admits; no roles: anyone)."""
        if self.slack_channel is not None and event in SLACK_UPDATE_EVENTS:
            return True
        if event not in self.on or (self.tools and tool not in self.tools):
            return False
        if not self.levels and not self.roles:
            return True
        return any(
            (not self.levels or index + 1 in self.levels)
            and (not self.roles or not roles or any(role in roles for role in self.roles))
            for index, roles in levels
        )


def check_link_notifiers(notifiers: Iterable[Notifier], public_url: str | None) -> None:
    """Decision links point at the inbox: entries that send them need `[web] public_url`."""
    for index, notifier in enumerate(notifiers):
        if public_url is None and (notifier.email_approvers or notifier.principal is not None):
            key = "email_approvers" if notifier.email_approvers else "principal"
            raise ConfigError(
                f"notify[{index}].{key}: decision links need [web] public_url (where people reach the inbox)"
            )


def target_key(channel: str, target: str) -> str:
    return hashlib.sha256(f"{channel}\n{target}".encode()).hexdigest()[:24]


def load_notifiers(raw: Any, principals: Mapping[str, Any]) -> tuple[Notifier, ...]:
    """Validate the `[[notify]]` array; roles must be held by some principal, like the policy's."""
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise ConfigError('notify: must be an array of tables, written [[notify]] (e.g. on = ["filed"])')
    known_roles = {role for principal in principals.values() for role in principal.roles}
    notifiers: list[Notifier] = []
    secrets: dict[str, tuple[str, SecretStr | None]] = {}
    senders: dict[str, tuple[str, str]] = {}
    for index, table in enumerate(raw):
        where = f"notify[{index}]"
        if not isinstance(table, dict):
            raise ConfigError(f"{where}: must be a table")
        targets = [name for name in TARGET_KEYS if name in table]
        if len(targets) != 1:
            given = f" (it has {' and '.join(targets)})" if targets else ""
            raise ConfigError(
                f"{where}: give exactly one target: webhook, slack_webhook, slack_channel, email, "
                f"email_approvers or ntfy{given}"
            )
        if "secret" in table and targets != ["webhook"]:
            raise ConfigError(f"{where}.secret: only a webhook is signed; {targets[0]} takes no secret")
        if "sender" in table and targets[0] not in ("email", "email_approvers"):
            raise ConfigError(f"{where}.sender: only an email has a sender; {targets[0]} takes none")
        for key in ("ntfy_token", "principal"):
            if key in table and targets != ["ntfy"]:
                raise ConfigError(f"{where}.{key}: only an ntfy push takes {key}; {targets[0]} does not")
        if "link_hours" in table and targets[0] != "email_approvers" and "principal" not in table:
            raise ConfigError(
                f"{where}.link_hours: only entries that send decision links take it (email_approvers, or "
                "ntfy with a principal)"
            )
        if table.get("email_approvers") is False:
            raise ConfigError(f"{where}.email_approvers: write true, or remove the entry")
        try:
            notifier = Notifier.model_validate(table)
        except ValidationError as error:
            raise ConfigError(describe_validation_error(error, prefix=f"{where}.")) from None
        if notifier.principal is not None and notifier.principal.lower() not in principals:
            raise ConfigError(
                f"{where}.principal: no [principals.{notifier.principal}] in the config; a push's Approve / "
                "Reject act as a principal the config knows"
            )
        for number, role in enumerate(notifier.roles):
            if role not in known_roles:
                raise ConfigError(
                    f"{where}.roles[{number}]: no principal holds role {role!r}; give a [principals.NAME] "
                    "that role, or remove it"
                )
        # Entries with one target share its outbox rows, so they must agree on how it is signed.
        earlier = secrets.setdefault(notifier.key, (where, notifier.secret))
        if earlier[1] != notifier.secret:
            raise ConfigError(
                f"{where}.secret: {earlier[0]} sends to the same webhook with another secret; use one"
            )
        first = senders.setdefault(notifier.key, (where, notifier.sender))
        if first[1] != notifier.sender:
            raise ConfigError(
                f"{where}.sender: {first[0]} sends to the same address from another sender; use one"
            )
        notifiers.append(notifier)
    return tuple(notifiers)
