"""`send_email`: one plain-text message over real SMTP, its Message-ID derived from the request id."""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Mapping
from email.message import EmailMessage
from email.policy import SMTP as SMTP_POLICY
from email.utils import formatdate
from typing import Any, ClassVar, Self

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from hitl_mcp.actions.base import Action, ActionSettings, Execution
from hitl_mcp.errors import ActionFailed

MAX_ADDRESS_LENGTH = 254
MAX_SUBJECT_LENGTH = 200
MAX_BODY_LENGTH = 100_000
MESSAGE_ID_DOMAIN = "hitl-mcp"

# Cc covers C0, DEL and C1 (including NEL); Zl/Zp are U+2028/U+2029, which str.splitlines() -- and so parts
# of the email package -- treat as line breaks. Any of them in a header is a header-injection vector.
_HEADER_FORBIDDEN_CATEGORIES = frozenset({"Cc", "Zl", "Zp"})
_BODY_ALLOWED_CONTROLS = frozenset("\t\n\r")
_REQUEST_ID_PATTERN = re.compile(r"^[A-Za-z0-9._-]+$")


def _refuse_header_breaks(value: str) -> str:
    if any(unicodedata.category(char) in _HEADER_FORBIDDEN_CATEGORIES for char in value):
        raise ValueError("must not contain line breaks or control characters")
    return value


def _refuse_surrogates(value: str) -> str:
    # JSON can carry lone surrogates ("\ud800"); they cannot be encoded for the wire, so refuse them up front.
    if any(unicodedata.category(char) == "Cs" for char in value):
        raise ValueError("must be valid Unicode text (no lone surrogates)")
    return value


def normalize_address(value: str) -> str:
    """One bare address (no display name), checked for syntax only, as ASCII with an IDNA domain.

    SMTPUTF8 (non-ASCII local parts) is refused: not every relay supports it, and an ASCII address can go in
    a header without encoding. Raises ValueError with email-validator's explanation.
    """
    # Imported here: compiling its grammar is a noticeable share of every `hitl` command's start-up,
    # and most never check an address.
    from email_validator import EmailNotValidError, validate_email

    _refuse_header_breaks(value)
    try:
        result = validate_email(value, check_deliverability=False, allow_smtputf8=False)
    except EmailNotValidError as error:
        raise ValueError(f"not a valid email address: {error}") from None
    return result.ascii_email or result.normalized


class EmailArguments(BaseModel):
    model_config = ConfigDict(extra="forbid")

    to: str = Field(
        max_length=MAX_ADDRESS_LENGTH,
        description="The one recipient: a bare email address such as alice@example.org (no display name, "
        "no list).",
    )
    subject: str = Field(
        min_length=1,
        max_length=MAX_SUBJECT_LENGTH,
        description=f"Subject line, 1-{MAX_SUBJECT_LENGTH} characters, on one line.",
    )
    body: str = Field(
        max_length=MAX_BODY_LENGTH,
        description=f"Plain-text body, up to {MAX_BODY_LENGTH:,} characters; line breaks allowed.",
    )

    @field_validator("to")
    @classmethod
    def _valid_address(cls, value: str) -> str:
        return normalize_address(value)

    @field_validator("subject")
    @classmethod
    def _one_line(cls, value: str) -> str:
        return _refuse_surrogates(_refuse_header_breaks(value))

    @field_validator("body")
    @classmethod
    def _printable_body(cls, value: str) -> str:
        if any(unicodedata.category(char) == "Cc" and char not in _BODY_ALLOWED_CONTROLS for char in value):
            raise ValueError("must not contain control characters other than tab and line breaks")
        return _refuse_surrogates(value)


class SendEmailSettings(ActionSettings):
    smtp_host: str = Field(default="127.0.0.1", min_length=1, description="SMTP server to hand mail to.")
    smtp_port: int = Field(default=1025, ge=1, le=65535)
    sender: str = Field(default="agent@example.com", description="The From address.")
    username: str | None = Field(default=None, description="SMTP AUTH user; set together with password.")
    password: SecretStr | None = None
    starttls: bool = Field(default=False, description="Upgrade the connection with STARTTLS (port 587).")
    use_tls: bool = Field(default=False, description="Connect over implicit TLS (port 465).")
    timeout_seconds: float = Field(default=30, gt=0, allow_inf_nan=False)

    @field_validator("sender")
    @classmethod
    def _valid_sender(cls, value: str) -> str:
        return normalize_address(value)

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if self.starttls and self.use_tls:
            raise ValueError("starttls and use_tls are mutually exclusive: pick one")
        if (self.username is None) != (self.password is None):
            raise ValueError("username and password must be set together")
        return self


def not_sent() -> tuple[type[Exception], ...]:
    """Refusals that certainly left nothing with the server: no connection, or the server said no before
    it accepted the message (a reply to the end of DATA other than 250 refuses it too)."""
    # aiosmtplib is imported where mail is sent: every `hitl` command loads this module, few send mail.
    import aiosmtplib

    return (
        aiosmtplib.SMTPConnectError,
        aiosmtplib.SMTPHeloError,
        aiosmtplib.SMTPAuthenticationError,
        aiosmtplib.SMTPNotSupported,
        aiosmtplib.SMTPSenderRefused,
        aiosmtplib.SMTPRecipientRefused,
        aiosmtplib.SMTPRecipientsRefused,
        aiosmtplib.SMTPDataError,
    )


def message_id_for(request_id: str) -> str:
    """The Message-ID a request's email carries: the same request always yields the same id."""
    if not _REQUEST_ID_PATTERN.match(request_id):
        raise ValueError(f"request id {request_id!r} cannot form a Message-ID")
    return f"<{request_id}@{MESSAGE_ID_DOMAIN}>"


async def deliver(
    message: EmailMessage, settings: SendEmailSettings, *, timeout: float | None = None
) -> tuple[dict[str, Any], str]:
    """Send `message` through the configured SMTP server; aiosmtplib's errors propagate."""
    import aiosmtplib

    return await aiosmtplib.send(
        message,
        hostname=settings.smtp_host,
        port=settings.smtp_port,
        username=settings.username,
        password=None if settings.password is None else settings.password.get_secret_value(),
        use_tls=settings.use_tls,
        # False, not None: None upgrades opportunistically; the config, not the server, decides.
        start_tls=settings.starttls,
        timeout=settings.timeout_seconds if timeout is None else timeout,
    )


class SendEmail(Action[EmailArguments, SendEmailSettings]):
    name = "send_email"
    description = (
        "Request to send a plain-text email to one recipient. This does NOT send anything by itself: it "
        "files a request that a human must approve, and returns at once with a request id. Only after "
        "approval is the email sent, once, exactly as previewed. Use the request id to check the outcome "
        "later. Arguments: to (one email address), subject (one line), body (plain text)."
    )
    arguments_model = EmailArguments
    settings_model = SendEmailSettings
    preview_types: ClassVar[Mapping[str, type]] = {"size_bytes": int}

    def target(self) -> dict[str, str]:
        # The sender is part of what the approver read in the rendered message.
        settings = self.settings
        return {"smtp server": f"{settings.smtp_host}:{settings.smtp_port}", "sender": settings.sender}

    def summary(self, args: EmailArguments) -> str:
        return f'Email {args.to}: "{args.subject}"'

    def _message(self, args: EmailArguments) -> EmailMessage:
        message = EmailMessage()
        message["From"] = self.settings.sender
        message["To"] = args.to
        message["Subject"] = args.subject
        message.set_content(args.body)
        return message

    async def preview(self, args: EmailArguments) -> dict[str, Any]:
        message = self._message(args)
        rendered = message.as_string()
        return {
            "from": self.settings.sender,
            "to": args.to,
            "subject": args.subject,
            "body": args.body,
            "size_bytes": len(message.as_bytes(policy=SMTP_POLICY)),
            "rendered": rendered,
            "message_id": f"<REQUEST_ID@{MESSAGE_ID_DOMAIN}>, derived from the request id when sent",
            "date": "set when sent",
        }

    async def execute(self, args: EmailArguments, execution: Execution) -> dict[str, Any]:
        message = self._message(args)
        message_id = message_id_for(execution.request_id)
        message["Date"] = formatdate(usegmt=True)
        message["Message-ID"] = message_id
        import aiosmtplib

        try:
            errors, response = await deliver(message, self.settings)
        except not_sent() as error:
            raise ActionFailed(f"SMTP delivery failed: {error}; nothing was sent", effect="none") from error
        except (aiosmtplib.SMTPException, OSError) as error:
            # Cut off or timed out once the message may have been handed over: whether it went is unknown.
            raise ActionFailed(f"SMTP delivery failed: {error}") from error
        return {
            "message_id": message_id,
            "recipients": [address for address in (args.to,) if address not in errors],
            "smtp_response": response,
        }
