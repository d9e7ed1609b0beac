"""The inbox's pages as a person reads them: previews in each action's terms, the edit form, history and the
report — rendered by the real templates, and served by a real `hitl serve --http` where a page reads the
store."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from typing import Any

import anyio
import pytest

from hitl_mcp.actions.buy_stock import BuyStock, BuyStockSettings
from hitl_mcp.actions.send_email import SendEmail, SendEmailSettings
from hitl_mcp.config import load_settings
from hitl_mcp.gate import open_gate
from hitl_mcp.web import forms
from hitl_mcp.web.previews import preview_view
from hitl_mcp.web.rendering import environment
from tests.cli_in_process import hitl
from tests.inbox import Served, Site, csrf_of, make_site, serve
from tests.test_cli import file_request

UPSTREAM_PREVIEW = {
    "upstream": "tickets",
    "tool": "close_ticket",
    "description": "Close a ticket\u202e for good",
    "annotations": {"destructiveHint": True},
    "arguments": {"ticket": 42, "note": "<b>done</b>"},
    "preview_call": {
        "tool": "get_ticket",
        "arguments": {"ticket": 42},
        "content": [{"type": "text", "text": "Ticket 42: printer on fire <script>x()</script>"}],
        "is_error": False,
    },
}


def rendered(tool: str, preview: dict[str, Any]) -> str:
    view = preview_view(tool, preview)
    return environment().get_template(view.template).render(values=view.values)


def test_an_upstream_tools_preview_shows_its_arguments_and_its_preview_calls_answer_as_text() -> None:
    html = rendered("tickets__close_ticket", UPSTREAM_PREVIEW)

    assert "Preview call: get_ticket" in html
    assert "Ticket 42: printer on fire &lt;script&gt;x()&lt;/script&gt;" in html
    assert "&#34;note&#34;: &#34;&lt;b&gt;done&lt;/b&gt;&#34;" in html
    assert "Close a ticket\\u202e for good" in html and "\u202e" not in html


def test_each_built_in_preview_speaks_in_its_actions_terms_and_any_other_shape_is_json() -> None:
    order = {"total": 1500.0, "cash_before": 2000.0, "cash_after": 500.0, "position_before": 0}
    order |= {"position_after": 10, "sufficient_cash": True}
    delete = {"table": "users", "condition": "age < 30", "matching_rows": 2, "columns": ["id", "email"]}
    delete |= {"sample": [{"id": 1, "email": "a@b.c"}, {"id": 3, "email": "c@d.e"}]}

    bought = rendered("buy_stock", order)
    deleted = rendered("delete_database_records", delete)
    shapeless = rendered("buy_stock", {"total": "lots"})

    assert "$1,500.00" in bought and "$2,000.00" in bought and "$500.00" in bought
    assert "<strong>2</strong> rows of <code>users</code> match <code>age &lt; 30</code>" in deleted
    assert re.search(r"<td>a@b\.c</td>.*<td>c@d\.e</td>", deleted, re.DOTALL)
    assert '<pre class="json">{\n  &#34;total&#34;: &#34;lots&#34;\n}</pre>' in shapeless


def test_the_edit_form_has_a_labelled_input_per_argument_and_reads_back_what_changed() -> None:
    buy = BuyStock(BuyStockSettings())
    email = SendEmail(SendEmailSettings())
    arguments = {"symbol": "NVDA", "quantity": 10, "price": 150.0}

    shown = {field.name: (field.kind, field.value) for field in forms.fields(buy, arguments)}
    mail = {
        field.name: field.kind for field in forms.fields(email, {"to": "a@b.c", "subject": "s", "body": "x"})
    }
    submitted = {"arg:symbol": "NVDA", "arg:quantity": "4", "arg:price": "150"}

    assert shown == {"symbol": ("text", "NVDA"), "quantity": ("integer", "10"), "price": ("number", "150.0")}
    assert mail == {"to": "text", "subject": "text", "body": "textarea"}
    assert forms.changes(buy, arguments, submitted) == {"quantity": 4}
    assert forms.changes(buy, arguments, {**submitted, "arg:quantity": "four"}) == {"quantity": "four"}
    # A browser sends a textarea's line breaks as CRLF: a body left alone is not an edit.
    body = {"to": "a@b.c", "subject": "s", "body": "one\ntwo"}
    assert forms.changes(email, body, {"arg:body": "one\r\ntwo", "arg:to": "a@b.c", "arg:subject": "s"}) == {}


def test_a_value_left_alone_in_the_edit_form_is_kept_exactly_as_html_sends_it_back() -> None:
    email = SendEmail(SendEmailSettings())
    # HTML reads a lone CR as a line break and a NUL as U+FFFD; a form sends line breaks as CRLF.
    held = {"to": "a@b.c", "subject": "a\u202eb", "body": "x\ry\x00z"}
    sent_back = {"arg:to": "a@b.c", "arg:subject": "a\u202eb", "arg:body": "x\r\ny\ufffdz"}
    fields = {field.name: field for field in forms.fields(email, held)}

    assert forms.changes(email, held, sent_back) == {}
    assert forms.changes(email, held, {**sent_back, "arg:body": "new"}) == {"body": "new"}
    assert fields["body"].kind == "textarea" and fields["body"].escaped == "x\\ry\\x00z"
    assert fields["subject"].escaped == "a\\u202eb" and fields["to"].escaped is None


def test_an_upstream_schemas_arguments_get_inputs_of_their_kinds() -> None:
    from mcp_types import Tool

    from hitl_mcp.gateway.action import upstream_tool

    schema = {
        "type": "object",
        "properties": {
            "priority": {"type": "string", "enum": ["low", "high"]},
            "notify": {"type": "boolean"},
            "labels": {"type": "array", "items": {"type": "string"}},
            "due": {"anyOf": [{"type": "integer"}, {"type": "null"}]},
        },
        "required": ["priority"],
    }
    action_type = upstream_tool("tickets", Tool(name="update", input_schema=schema), target={"server": "t"})
    action = action_type(calls=None)  # type: ignore[arg-type]
    arguments = {"priority": "low", "notify": True, "labels": ["a"], "due": None}

    kinds = {field.name: field.kind for field in forms.fields(action, arguments)}
    submitted = {"arg:priority": "high", "arg:notify": "false", "arg:labels": '["a", "b"]', "arg:due": "7"}

    assert kinds == {"priority": "choice", "notify": "boolean", "labels": "json", "due": "integer"}
    assert forms.changes(action, arguments, submitted) == {
        "priority": "high",
        "notify": False,
        "labels": ["a", "b"],
        "due": 7,
    }


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Site, Served]]:
    site = make_site(tmp_path_factory.mktemp("pages"), tokens=True)
    with serve(site) as server:
        yield site, server


def test_history_lists_finished_requests_filtered_by_tool_status_requester_and_date(
    served: tuple[Site, Served],
) -> None:
    site, server = served
    settings = load_settings(site.env)
    bought = file_request(settings, "buy_stock", {"symbol": "IBM", "quantity": 1, "price": 100.0})
    mailed = file_request(settings, "send_email", {"to": "erin@example.org", "subject": "Hi", "body": "x"})
    with server.api(site.tokens["alice"]) as alice:
        alice.post(f"/api/v1/requests/{bought}/approve", json={})
        alice.post(f"/api/v1/requests/{mailed}/reject", json={"reason": "no"})

    with server.signed_in(site.tokens["bob"]) as bob:
        finished = bob.get("/history").text
        rejected = bob.get("/history", params={"status": "rejected"}).text
        email_only = bob.get("/history", params={"tool": "send_email", "status": "all"}).text
        by_someone_else = bob.get("/history", params={"requested_by": "carol"}).text
        tomorrow = bob.get("/history", params={"since": "2999-01-01"}).text
        bad = bob.get("/history", params={"since": "soon"})

    assert bought in finished and mailed in finished
    assert mailed in rejected and bought not in rejected
    assert mailed in email_only and bought not in email_only
    assert bought not in by_someone_else and "No requests match." in by_someone_else
    assert "No requests match." in tomorrow
    assert bad.status_code == 400 and "since: give an ISO date or time" in bad.text


def test_the_report_draws_its_charts_and_gives_the_chains_state_as_hitl_audit_verify_does(
    served: tuple[Site, Served],
) -> None:
    site, server = served
    settings = load_settings(site.env)
    request_id = file_request(settings, "buy_stock", {"symbol": "IBM", "quantity": 2, "price": 100.0})
    with server.api(site.tokens["alice"]) as alice:
        alice.post(f"/api/v1/requests/{request_id}/approve", json={})

    with server.signed_in(site.tokens["bob"]) as bob:
        page = bob.get("/report").text
    verified = hitl(site.env, "audit", "verify")

    assert verified.returncode == 0, verified.stderr
    records, head = re.fullmatch(r"OK: (\d+) records, head ([0-9a-f]{64})\n", verified.stdout).groups()  # type: ignore[union-attr]
    assert f"<strong>OK</strong>: {records} records, head <code>{head}</code>" in page
    assert page.count("<svg") == 3
    for title in ("Outcomes per tool", "Time to decision", "Decisions per approver"):
        assert f">{title}</title>" in page
    assert re.search(r'<rect [^>]*class="series-executed"><title>executed: \d+</title>', page)
    assert '<th scope="row">alice</th>' in page


def test_an_approval_is_of_what_the_approver_read_and_a_stale_page_is_refused(
    served: tuple[Site, Served],
) -> None:
    site, server = served
    large = {"symbol": "MSFT", "quantity": 100, "price": 150.0}  # a trader, then a risk manager
    request_id = file_request(load_settings(site.env), "buy_stock", large)
    with server.signed_in(site.tokens["bob"]) as bob:
        read = bob.get(f"/requests/{request_id}").text
        # Meanwhile alice approves with another quantity: what bob read is no longer what would run.
        with server.api(site.tokens["alice"]) as alice:
            edited = alice.post(
                f"/api/v1/requests/{request_id}/approve", json={"arguments": {"quantity": 90}}
            )
        form = {"csrf": csrf_of(read), "digest": re.search(r'name="digest" value="(\w+)"', read).group(1)}  # type: ignore[union-attr]
        stale = bob.post(f"/requests/{request_id}/approve", data=form, headers={"Origin": server.base})
        fresh = bob.get(f"/requests/{request_id}").text
        form["digest"] = re.search(r'name="digest" value="(\w+)"', fresh).group(1)  # type: ignore[union-attr]
        approved = bob.post(f"/requests/{request_id}/approve", data=form, headers={"Origin": server.base})
        outcome = bob.get(approved.headers["location"]).text

    assert edited.json()["approval"]["waiting_on"] == 1
    assert stale.status_code == 409 and "changed since you read it" in stale.text
    assert "Buy 90 MSFT" in fresh
    assert approved.status_code == 303 and "Executed: the action ran once." in outcome
    assert [order for order in site.orders() if order[0] == request_id] == [(request_id, "MSFT", 90)]


def test_a_form_sent_after_the_session_ended_asks_to_sign_in_and_then_shows_the_request(
    served: tuple[Site, Served],
) -> None:
    site, server = served
    request_id = file_request(
        load_settings(site.env), "buy_stock", {"symbol": "IBM", "quantity": 1, "price": 1.0}
    )
    with server.api(None) as anonymous:
        sent = anonymous.post(f"/requests/{request_id}/approve", data={"csrf": "x"})

    assert sent.status_code == 303
    assert sent.headers["location"] == f"/login?next=%2Frequests%2F{request_id}"


def test_a_token_revoked_after_the_session_ended_asks_to_sign_in_and_then_shows_the_tokens(
    served: tuple[Site, Served],
) -> None:
    _, server = served
    with server.api(None) as anonymous:
        sent = anonymous.post("/tokens/0123abcd/revoke", data={"csrf": "x"})

    assert sent.status_code == 303
    assert sent.headers["location"] == "/login?next=%2Ftokens"


def test_the_queue_marks_an_escalated_request_and_says_who_it_waits_on(served: tuple[Site, Served]) -> None:
    site, server = served
    settings = load_settings(site.env)

    async def file_and_escalate() -> str:
        async with open_gate(settings) as gate:
            request = await gate.file(
                "delete_database_records", {"table": "users", "condition": "id = 2"}, "agent"
            )
            # As if its level had waited past escalate_after_seconds.
            assert request.request_id in await gate.store.escalate_due(time.time() + 601)
            return request.request_id

    request_id = anyio.run(file_and_escalate)
    with server.signed_in(site.tokens["carol"]) as carol:
        queue = carol.get("/").text
        mine = carol.get("/", params={"waiting_on": "me"}).text
    with server.signed_in(site.tokens["bob"]) as bob:
        not_bobs = bob.get("/", params={"waiting_on": "me"}).text

    row = re.search(rf'<tr data-request="{request_id}" class="escalated">.*?</tr>', queue, re.DOTALL)
    assert row is not None, queue
    assert "escalated</span>" in row.group(0) and "1 × engineer" in row.group(0)
    assert request_id in mine and request_id not in not_bobs
