"""send_email against a real SMTP server (aiosmtpd on 127.0.0.1)."""

from __future__ import annotations

import socket
import subprocess
import sys
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any

import anyio
import pytest

from hitl_mcp.actions.base import Execution
from hitl_mcp.actions.send_email import EmailArguments, SendEmail, SendEmailSettings
from hitl_mcp.errors import ActionFailed, ConfigError, InvalidArguments
from tests.smtp_sink import SmtpSink, read_records, wait_for_records

VALID: dict[str, Any] = {"to": "alice@example.org", "subject": "Quarterly report", "body": "Hello Alice,\n"}


@pytest.fixture
def sink(smtp: SmtpSink) -> SmtpSink:
    """The suite's live SMTP server (conftest's `smtp`), under the name these tests read best with."""
    return smtp


def make_action(**settings: Any) -> SendEmail:
    return SendEmail(SendEmailSettings.model_validate(settings))


@pytest.fixture
def action(sink: SmtpSink) -> SendEmail:
    return make_action(smtp_host=sink.host, smtp_port=sink.port, sender="agent@example.com")


def closed_port() -> int:
    """A port nothing listens on: bound then released, so connecting is refused at once."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


# -- delivery -------------------------------------------------------------------------------------------


async def test_message_is_delivered_with_headers_body_and_request_derived_message_id(
    sink: SmtpSink, action: SendEmail
) -> None:
    body = "Hello Alice,\n\nThe numbers are in — see below.\n"
    args = action.parse({"to": "Alice@Example.org", "subject": "Quarterly report", "body": body})

    result = await action.execute(args, Execution(request_id="0a1b2c3d4e5f", preview={}))

    assert result["message_id"] == "<0a1b2c3d4e5f@hitl-mcp>"
    assert result["recipients"] == ["Alice@example.org"]
    assert isinstance(result["smtp_response"], str)
    [received] = await sink.wait_for_async(1)
    assert received.mail_from == "agent@example.com"
    assert received.rcpt_tos == ("Alice@example.org",)
    message = received.message
    assert message["From"] == "agent@example.com"
    assert message["To"] == "Alice@example.org"
    assert message["Subject"] == "Quarterly report"
    assert message["Message-ID"] == "<0a1b2c3d4e5f@hitl-mcp>"
    assert parsedate_to_datetime(str(message["Date"])).tzinfo is not None
    assert received.body == body


async def test_the_same_request_always_carries_the_same_message_id(sink: SmtpSink, action: SendEmail) -> None:
    args = action.parse(VALID)
    await action.execute(args, Execution(request_id="abc123", preview={}))
    await action.execute(args, Execution(request_id="abc123", preview={}))
    first, second = await sink.wait_for_async(2)
    # SMTP itself cannot deduplicate; a stable Message-ID lets the receiving side do it.
    assert first.message_id == second.message_id == "<abc123@hitl-mcp>"


async def test_long_and_non_ascii_bodies_arrive_intact(sink: SmtpSink, action: SendEmail) -> None:
    body = "Grüße aus Zürich ✓\n" + "x" * 5000 + "\n.\n..leading dots survive\n"
    await action.execute(action.parse({**VALID, "body": body}), Execution(request_id="r1", preview={}))
    [received] = await sink.wait_for_async(1)
    assert received.body == body


async def test_smtp_server_down_is_an_action_failure() -> None:
    action = make_action(smtp_host="127.0.0.1", smtp_port=closed_port(), timeout_seconds=5)
    with pytest.raises(ActionFailed, match=r"^SMTP delivery failed: .*nothing was sent") as failed:
        await action.execute(action.parse(VALID), Execution(request_id="r1", preview={}))
    assert failed.value.effect == "none"


async def test_smtp_refusal_is_an_action_failure(sink: SmtpSink, action: SendEmail) -> None:
    sink.refuse_with = "554 5.7.1 Message rejected"
    with pytest.raises(ActionFailed, match=r"^SMTP delivery failed: .*rejected") as failed:
        await action.execute(action.parse(VALID), Execution(request_id="r1", preview={}))
    assert sink.messages == []
    assert failed.value.effect == "none"


# -- preview and summary --------------------------------------------------------------------------------


async def test_preview_shows_the_rendered_message_and_sends_nothing(
    sink: SmtpSink, action: SendEmail
) -> None:
    args = action.parse(
        {"to": "alice@example.org", "subject": "Quarterly report", "body": "Line 1\nLine 2\n"}
    )
    preview = await action.preview(args)

    assert preview["from"] == "agent@example.com"
    assert preview["to"] == "alice@example.org"
    assert preview["subject"] == "Quarterly report"
    assert preview["body"] == "Line 1\nLine 2\n"
    assert "From: agent@example.com\n" in preview["rendered"]
    assert "To: alice@example.org\n" in preview["rendered"]
    assert "Subject: Quarterly report\n" in preview["rendered"]
    assert preview["rendered"].endswith("\n\nLine 1\nLine 2\n")
    assert preview["size_bytes"] > len(preview["rendered"].splitlines()[-1])
    assert "request id" in preview["message_id"]
    # Nothing was sent: a message sent afterwards is the first and only one the server sees.
    await action.execute(args, Execution(request_id="after", preview=preview))
    [only] = await sink.wait_for_async(1)
    assert only.message_id == "<after@hitl-mcp>"


def test_summary_names_recipient_and_subject() -> None:
    action = make_action()
    assert action.summary(action.parse(VALID)) == 'Email alice@example.org: "Quarterly report"'


# -- argument validation --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("to", "alice@example.org\r\nBcc: eve@example.net"),
        ("to", "alice@example.org\n"),
        ("to", "alice@example.org\x00"),
        ("subject", "Hello\r\nBcc: eve@example.net"),
        ("subject", "Hello\nworld"),
        ("subject", "Hello\rworld"),
        ("subject", "Hello\x0bworld"),
        ("subject", "Hello\x85world"),
        ("subject", "Hello\u2028world"),
    ],
)
def test_line_breaks_in_headers_are_refused(field: str, value: str) -> None:
    with pytest.raises(
        InvalidArguments, match=rf"^{field}: .*must not contain line breaks or control characters"
    ):
        make_action().parse({**VALID, field: value})


@pytest.mark.parametrize(
    "address",
    [
        "",
        "alice",
        "alice@",
        "@example.org",
        "alice@@example.org",
        "alice@example..org",
        "Alice <alice@example.org>",
        "alice@example.org, bob@example.org",
        "a" * 250 + "@example.org",
        "ålice@example.org",
    ],
)
def test_malformed_addresses_are_refused(address: str) -> None:
    with pytest.raises(InvalidArguments, match=r"^to: "):
        make_action().parse({**VALID, "to": address})


@pytest.mark.parametrize(
    ("field", "value"),
    [("subject", ""), ("subject", "s" * 201), ("body", "b" * 100_001), ("body", "nul\x00byte")],
)
def test_out_of_bounds_subject_and_body_are_refused(field: str, value: str) -> None:
    with pytest.raises(InvalidArguments, match=rf"^{field}: "):
        make_action().parse({**VALID, field: value})


def test_address_domain_is_normalised() -> None:
    assert make_action().parse({**VALID, "to": "bob@EXAMPLE.org"}).to == "bob@example.org"
    assert make_action().parse({**VALID, "to": "bob@bücher.example"}).to == "bob@xn--bcher-kva.example"


def test_unknown_arguments_are_refused() -> None:
    with pytest.raises(InvalidArguments, match="bcc: Extra inputs are not permitted"):
        make_action().parse({**VALID, "bcc": "eve@example.net"})


def test_input_schema_documents_every_field_and_forbids_extras() -> None:
    schema = EmailArguments.model_json_schema()
    assert schema["additionalProperties"] is False
    assert set(schema["required"]) == {"to", "subject", "body"}
    assert all(prop.get("description") for prop in schema["properties"].values())


# -- settings -------------------------------------------------------------------------------------------


def test_settings_validate_sender_port_and_tls_choice(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"actions\.send_email\.sender"):
        SendEmail.configure({"sender": "not an address"}, tmp_path)
    with pytest.raises(ConfigError, match=r"actions\.send_email\.smtp_port"):
        SendEmail.configure({"smtp_port": 70000}, tmp_path)
    with pytest.raises(ConfigError, match="mutually exclusive"):
        SendEmail.configure({"starttls": True, "use_tls": True}, tmp_path)
    with pytest.raises(ConfigError, match="set together"):
        SendEmail.configure({"username": "agent"}, tmp_path)


def test_password_is_not_shown_in_settings_repr(tmp_path: Path) -> None:
    settings = SendEmail.configure({"username": "agent", "password": "hunter2"}, tmp_path)
    assert "hunter2" not in repr(settings)


# -- the sink as a separate process ---------------------------------------------------------------------


def test_sink_process_records_deliveries_for_another_process_to_count(tmp_path: Path) -> None:
    record = tmp_path / "deliveries.jsonl"
    sink_script = Path(__file__).with_name("smtp_sink.py")
    process = subprocess.Popen(
        [sys.executable, str(sink_script), "--record", str(record)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        ready, host, port = process.stdout.readline().split()
        assert ready == "READY"
        assert read_records(record) == []
        action = make_action(smtp_host=host, smtp_port=int(port))
        anyio.run(action.execute, action.parse(VALID), Execution(request_id="counted", preview={}))
        [delivered] = wait_for_records(record, 1)
        assert delivered["message_id"] == "<counted@hitl-mcp>"
        assert delivered["rcpt_tos"] == ["alice@example.org"]
    finally:
        process.terminate()
        process.wait(timeout=10)
