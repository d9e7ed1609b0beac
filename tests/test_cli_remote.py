"""`hitl` through a server: HITL_SERVER and HITL_TOKEN, no store in its environment. It prints what it prints
on the store, exits as it does there, and acts as the token's principal, never as `--as`."""

from __future__ import annotations

import json
import re
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

import httpx2
import pytest

from hitl_mcp.config import Settings, load_settings
from hitl_mcp.errors import HitlError
from tests.cli_in_process import hitl
from tests.inbox import Served, Site, csrf_of, make_site, serve
from tests.terminal import Terminal
from tests.test_cli import HITL, file_request, free_port

SMALL_BUY = {"symbol": "GOOGL", "quantity": 10, "price": 150.0}  # one trader
LARGE_BUY = {"symbol": "MSFT", "quantity": 100, "price": 150.0}  # a trader, then a risk manager
DELETE = {"table": "users", "condition": "id = 3"}
EMAIL = {"to": "erin@example.org", "subject": "Hi", "body": "Hello"}
DENY_COMPETITOR = """
[policy.send_email]
rules = [{ when = "to LIKE '%@competitor.com'", approval = "deny" }, { levels = [{ count = 1 }] }]
"""
# Ages and countdowns move between two runs a moment apart (9s, 10s), and the padding after them with them.
DURATION = re.compile(r"\b\d+[smhd]\b *")


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Site:
    return make_site(tmp_path_factory.mktemp("remote"), tokens=True, extra=DENY_COMPETITOR)


@pytest.fixture(scope="module")
def server(site: Site) -> Iterator[Served]:
    with serve(site) as served:
        yield served


@pytest.fixture(scope="module")
def settings(site: Site) -> Settings:
    return load_settings(site.env)


def through(server: str, token: str | None, home: Path) -> dict[str, str]:
    """The environment of a person's machine that has no store: the server's URL and a token only."""
    home.mkdir(parents=True, exist_ok=True)
    env = {"PATH": "/usr/bin:/bin", "HOME": str(home), "HITL_SERVER": server}
    if token is not None:
        env["HITL_TOKEN"] = token
    return env


@pytest.fixture
def remote(server: Served, site: Site, tmp_path: Path) -> dict[str, dict[str, str]]:
    return {name: through(server.base, token, tmp_path / name) for name, token in site.tokens.items()}


def same(text: str) -> str:
    return DURATION.sub("N ", text)


def outputs(env: dict[str, str], *args: str) -> tuple[int, str, str]:
    done = hitl(env, *args)
    return done.returncode, same(done.stdout), same(done.stderr)


# A bound for a stuck run, not a speed figure: its 31 `hitl` processes take ~11 s alone and took 122 s
# beside a full parallel suite and a CI run on 2 cores.
@pytest.mark.timeout(360)
def test_reading_commands_print_through_a_server_what_they_print_on_the_store(
    server: Served, site: Site, settings: Settings, remote: dict[str, dict[str, str]]
) -> None:
    small = file_request(settings, "buy_stock", SMALL_BUY)
    large = file_request(settings, "buy_stock", LARGE_BUY)
    file_request(settings, "delete_database_records", DELETE)
    with pytest.raises(HitlError):
        file_request(settings, "send_email", {**EMAIL, "to": "ceo@competitor.com"})
    decided = hitl(remote["alice"], "approve", large[:10], "--yes", "--reason", "fine by me")
    assert decided.returncode == 0, decided.stderr
    paged = ("list", "--tool", "buy_stock", "--limit", "1")
    commands = [
        ("list",),
        ("list", "--json"),
        ("list", "--all"),
        ("list", "--status", "executed"),
        ("list", "--status", "denied"),
        ("list", "--status", "denied", "--json"),
        paged,
        ("list", "--all-pages", "--all", "--json"),
        ("show", small[:8]),
        ("show", large, "--json"),
        ("report",),
        ("report", "--json", "--since", "2020-01-01"),
        ("audit", "export"),
        ("audit", "verify"),
        ("audit", "export", "--format", "csv", "--request", large[:10]),
    ]
    for command in commands:
        on_store = outputs(site.env, *command)
        on_server = outputs(remote["carol"], *command)
        assert on_store[0] == 0, (command, on_store)
        assert on_server == on_store, command
    # The page's last line names the command for the next page, through the server as on the store.
    assert "more: hitl list --tool buy_stock --limit 1 --cursor" in outputs(remote["carol"], *paged)[2]


def test_a_decision_through_a_server_is_made_as_the_tokens_principal(
    server: Served, site: Site, settings: Settings, remote: dict[str, dict[str, str]]
) -> None:
    request_id = file_request(settings, "buy_stock", SMALL_BUY)

    approved = hitl(remote["alice"], "approve", request_id[:10], "--yes", "--json")

    record = json.loads(approved.stdout)
    assert approved.returncode == 0, approved.stderr
    assert record["status"] == "executed"
    assert [(d["verdict"], d["principal"]) for d in record["decisions"]] == [("approve", "alice")]
    assert (request_id, "GOOGL", 10) in site.orders()
    shown = hitl(site.env, "show", request_id)
    assert "Decision   approve by alice at" in shown.stdout


def test_reject_and_cancel_through_a_server_print_what_the_store_prints(
    server: Served, site: Site, settings: Settings, remote: dict[str, dict[str, str]]
) -> None:
    rejected_id = file_request(settings, "delete_database_records", DELETE)
    cancelled_id = file_request(settings, "buy_stock", SMALL_BUY)

    rejected = hitl(remote["carol"], "reject", rejected_id[:10], "--reason", "not today")
    cancelled = hitl(remote["agent"], "cancel", cancelled_id[:10])

    assert (rejected.returncode, rejected.stdout) == (
        0,
        f"{rejected_id} rejected: {summary(site, rejected_id)}\n",
    )
    assert (cancelled.returncode, cancelled.stdout) == (
        0,
        f"{cancelled_id} cancelled: {summary(site, cancelled_id)}\n",
    )


def summary(site: Site, request_id: str) -> str:
    return str(json.loads(hitl(site.env, "show", request_id, "--json").stdout)["summary"])


def test_a_refused_decision_is_the_gates_one_line_and_exit_status(
    server: Served, site: Site, settings: Settings, remote: dict[str, dict[str, str]]
) -> None:
    own = file_request(settings, "buy_stock", SMALL_BUY)
    rejected = file_request(settings, "buy_stock", SMALL_BUY)
    assert hitl(site.env, "reject", rejected, "--reason", "no", "--as", "alice").returncode == 0
    cases = [
        # The agent approving its own request: not allowed, 5.
        (["approve", own[:10], "--yes"], ["approve", own[:10], "--yes", "--as", "agent"], "agent", 5),
        # Deciding what is decided: not pending, 4.
        (
            ["approve", rejected[:10], "--yes"],
            ["approve", rejected[:10], "--yes", "--as", "alice"],
            "alice",
            4,
        ),
        # Cancelling someone else's request: not allowed, 5.
        (["cancel", own[:10]], ["cancel", own[:10], "--as", "alice"], "alice", 5),
        # No such request: 3.
        (["show", "ffffffffff"], ["show", "ffffffffff"], "alice", 3),
        # Settling what is not of unknown outcome: not pending, 4 (the settle endpoint answers as the gate).
        (
            ["settle", rejected[:10], "--executed", "--note", "checked"],
            ["settle", rejected[:10], "--executed", "--note", "checked", "--as", "alice"],
            "alice",
            4,
        ),
    ]
    for through_server, on_store, who, status in cases:
        remote_run = hitl(remote[who], *through_server)
        store_run = hitl(site.env, *on_store)
        assert (remote_run.returncode, remote_run.stderr) == (store_run.returncode, store_run.stderr)
        assert remote_run.returncode == status, remote_run.stderr
        assert remote_run.stderr.count("\n") == 1 and remote_run.stderr.startswith("hitl: ")
    assert json.loads(hitl(site.env, "show", own, "--json").stdout)["status"] == "pending"


def test_a_failed_email_retried_through_a_server_fails_again_with_exit_6(
    server: Served, site: Site, settings: Settings, remote: dict[str, dict[str, str]]
) -> None:
    # Nothing listens on the site's SMTP port: the send is refused, certainly without effect.
    request_id = file_request(settings, "send_email", EMAIL)
    approved = hitl(remote["alice"], "approve", request_id[:10], "--yes")
    assert approved.returncode == 6, approved.stderr

    retried = hitl(remote["bob"], "retry", request_id[:10])

    assert retried.returncode == 6, retried.stderr
    assert retried.stdout.startswith(f"{request_id} failed: ")
    events = [json.loads(line)["event"] for line in hitl(site.env, "audit", "export").stdout.splitlines()]
    assert "retried" in events
    trail = hitl(site.env, "audit", "export", "--request", request_id).stdout.splitlines()
    assert ("retried", "bob") in [(json.loads(r)["event"], json.loads(r)["actor"]) for r in trail]


def test_as_is_refused_through_a_server(
    server: Served, site: Site, settings: Settings, remote: dict[str, dict[str, str]]
) -> None:
    request_id = file_request(settings, "buy_stock", SMALL_BUY)

    done = hitl(remote["alice"], "approve", request_id[:10], "--yes", "--as", "bob")

    assert done.returncode == 2
    assert done.stderr == (
        "hitl: --as: not through a server (HITL_SERVER): the token is who acts; unset HITL_SERVER to act on "
        "a store as someone else; nothing was done\n"
    )
    assert json.loads(hitl(site.env, "show", request_id, "--json").stdout)["decisions"] == []


def test_a_wrong_or_missing_token_and_an_unreachable_server_are_one_line(
    server: Served, tmp_path: Path
) -> None:
    wrong = hitl(through(server.base, "hitl_not-a-token", tmp_path / "wrong"), "list")
    missing = hitl(through(server.base, None, tmp_path / "missing"), "list")
    nowhere = f"http://127.0.0.1:{free_port()}"
    unreachable = hitl(through(nowhere, "hitl_whatever", tmp_path / "nowhere"), "show", "abc")
    bad_url = hitl(through("ftp://example.com", "t", tmp_path / "bad"), "list")

    assert (wrong.returncode, wrong.stdout) == (5, "")
    assert wrong.stderr.startswith("hitl: the bearer token is not one this server knows")
    assert "HITL_TOKEN" in wrong.stderr
    assert missing.returncode == 5 and "set HITL_TOKEN" in missing.stderr and "hitl login" in missing.stderr
    assert unreachable.returncode == 7
    assert unreachable.stderr.startswith(f"hitl: cannot reach the server at {nowhere} (")
    assert bad_url.returncode == 2 and "HITL_SERVER" in bad_url.stderr
    for done in (wrong, missing, unreachable, bad_url):
        assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr, done.stderr


def test_direct_decisions_off_refuses_deciding_on_the_store_but_not_reading_or_the_server(
    tmp_path: Path,
) -> None:
    site = make_site(tmp_path / "shared", tokens=True, extra="\n[cli]\ndirect_decisions = false\n")
    settings = load_settings(site.env)
    request_id = file_request(settings, "buy_stock", SMALL_BUY)

    direct = hitl(site.env, "approve", request_id, "--yes", "--as", "alice")
    rejected = hitl(site.env, "reject", request_id, "--reason", "x", "--as", "alice")
    listed = hitl(site.env, "list")
    with serve(site) as served:
        through_server = hitl(
            through(served.base, site.tokens["alice"], tmp_path / "a"), "approve", request_id, "--yes"
        )

    refusal = (
        "hitl: decisions on this store go through a server ([cli] direct_decisions = false): set HITL_SERVER "
        "and HITL_TOKEN, or run `hitl login`; nothing was changed\n"
    )
    assert (direct.returncode, direct.stderr) == (5, refusal)
    assert (rejected.returncode, rejected.stderr) == (5, refusal)
    assert listed.returncode == 0 and request_id[:10] in listed.stdout
    assert through_server.returncode == 0, through_server.stderr
    assert f"{request_id} executed" in through_server.stdout


def test_watch_through_a_server_sees_a_request_filed_after_it_started_and_decides_it(
    server: Served, site: Site, settings: Settings, remote: dict[str, dict[str, str]]
) -> None:
    with Terminal([HITL, "watch", "--tool", "buy_stock"], remote["alice"]) as terminal:
        title = terminal.expect("> ")
        assert "acting as alice" in title and server.base in title

        request_id = file_request(settings, "buy_stock", SMALL_BUY)
        terminal.expect(request_id[:10])
        terminal.send(f"a {request_id[:8]}")
        terminal.expect_on_screen(f"{request_id[:10]} executed")

        terminal.send("q")
        assert terminal.wait() == 0
    assert (request_id, "GOOGL", 10) in site.orders()


def test_watch_on_a_store_without_direct_decisions_shows_the_queue_but_refuses_deciding(
    tmp_path: Path,
) -> None:
    site = make_site(tmp_path / "shared", tokens=True, extra="\n[cli]\ndirect_decisions = false\n")
    request_id = file_request(load_settings(site.env), "buy_stock", SMALL_BUY)
    with Terminal([HITL, "watch", "--as", "alice"], site.env) as terminal:
        terminal.expect(request_id[:10])
        terminal.send(f"a {request_id[:8]}")
        terminal.expect("refused:")
        assert "go through a server" in " ".join(terminal.expect_on_screen("> ").split())
        terminal.send("q")
        assert terminal.wait() == 0
    assert json.loads(hitl(site.env, "show", request_id, "--json").stdout)["status"] == "pending"


def test_login_saves_a_token_from_the_inbox_that_commands_then_use_and_logout_deletes_it(
    server: Served, site: Site, settings: Settings, tmp_path: Path
) -> None:
    env = through(server.base, None, tmp_path / "home")
    login = subprocess.Popen(
        [HITL, "login", "--no-browser", "--timeout", "60"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert login.stderr is not None
        found = re.search(r"(http://\S+/auth/cli\?\S+)", login.stderr.readline())
        assert found is not None
        page = found.group(1)
        fields = dict(parse_qsl(urlsplit(page).query))
        with server.signed_in(site.tokens["alice"]) as browser:
            confirm = browser.get(page)
            assert "Allow hitl to act as alice" in confirm.text
            allowed = browser.post("/auth/cli", data={"csrf": csrf_of(confirm.text), **fields})
        assert allowed.status_code == 303
        callback = allowed.headers["location"]
        assert callback.startswith(f"http://127.0.0.1:{fields['port']}/callback?")
        # A callback without our state is refused, and the CLI keeps waiting for the real one.
        forged = httpx2.get(callback.replace(fields["state"], "x" * 32), timeout=10)
        delivered = httpx2.get(callback, timeout=10)
        out, err = login.communicate(timeout=30)
    finally:
        login.kill()
        login.wait()

    assert (forged.status_code, delivered.status_code) == (400, 200)
    assert login.returncode == 0, err
    saved = tmp_path / "home" / ".config" / "hitl-mcp" / "credentials.json"
    assert f"Signed in to {server.base} as alice; the token is saved in {saved}" in out
    assert stat.S_IMODE(saved.stat().st_mode) == 0o600
    request_id = file_request(settings, "buy_stock", SMALL_BUY)
    approved = hitl(env, "approve", request_id, "--yes", "--json")
    assert approved.returncode == 0, approved.stderr
    assert [d["principal"] for d in json.loads(approved.stdout)["decisions"]] == ["alice"]

    logged_out = hitl(env, "logout")
    after = hitl(env, "list")

    assert logged_out.returncode == 0 and "Signed out of" in logged_out.stdout
    assert not saved.exists()
    assert after.returncode == 5 and "hitl login" in after.stderr


def test_a_store_token_works_through_a_server_until_it_is_revoked(
    server: Served, site: Site, tmp_path: Path
) -> None:
    made = hitl(site.env, "token", "new", "bob", "--name", "bob-laptop", "--expires", "1d")
    assert made.returncode == 0, made.stderr
    secret = re.findall(r"^    (\S+)$", made.stdout, re.MULTILINE)[0]
    env = through(server.base, secret, tmp_path / "bob")

    before = hitl(env, "list")
    revoked = hitl(site.env, "token", "revoke", "bob-laptop")
    after = hitl(env, "list")

    assert before.returncode == 0, before.stderr
    assert revoked.returncode == 0, revoked.stderr
    assert (after.returncode, after.stdout) == (5, "")
    assert after.stderr.startswith("hitl: ") and after.stderr.count("\n") == 1
    assert "HITL_TOKEN" in after.stderr
