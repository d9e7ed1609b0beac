"""The gateway across real processes: a terminal approves and the server runs the upstream call; racing
approvers over two servers run each call once; a server killed after it sent the call leaves it of
unknown outcome, never re-sent; and a third-party upstream (the official filesystem server from npm)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import anyio
import pytest
from mcp import Client

from tests.environment import process_env, write_config
from tests.fs_upstream import fs_server_command
from tests.smtp_sink import SmtpSink
from tests.test_auth import serving
from tests.test_cli import HITL, hitl, statuses
from tests.test_gateway import until_listed, writes
from tests.test_server import ok

CALL = {"path": "report.txt", "text": "quarterly"}
RACE_DRIVER = str(Path(__file__).with_name("race_driver.py"))


async def file_over_http(url: str, calls: list[dict[str, str]]) -> list[str]:
    async with Client(url) as agent:
        await until_listed(agent, "notes__write_note")
        return [ok(await agent.call_tool("notes__write_note", call))["request_id"] for call in calls]


def test_a_terminal_approves_and_the_server_runs_the_upstream_call(
    tmp_path: Path, gateway_env: dict[str, str], counter: Path
) -> None:
    with serving(gateway_env, tmp_path / "server.log") as url:
        [request_id] = anyio.run(file_over_http, url, [CALL])
        approved = hitl(gateway_env, "approve", request_id, "--as", "alice", "--yes", "--wait", "30")

    assert approved.returncode == 0, approved.stderr
    # The terminal has no upstream session: it says which process runs the call (how, depends on how far
    # the server got by the time it looks: running, about to, or done).
    assert "a process configured for command " in approved.stderr and "upstream notes" in approved.stderr
    assert f"{request_id} executed" in approved.stdout and "wrote report.txt" in approved.stdout
    assert [effect["text"] for effect in writes(counter)] == ["quarterly"]


def test_racing_approvers_over_two_servers_run_each_upstream_call_once(
    tmp_path: Path, gateway_env: dict[str, str], counter: Path
) -> None:
    calls = [{"path": f"n{number}", "text": f"t{number}"} for number in range(30)]
    db = Path(gateway_env["HITL_DB"])
    with serving(gateway_env, tmp_path / "one.log") as first, serving(gateway_env, tmp_path / "two.log"):
        ids = anyio.run(file_over_http, first, calls)
        listing = tmp_path / "ids.txt"
        listing.write_text("\n".join(ids))
        # Three processes approving every request at once, each in its own order (tests/race_driver.py):
        # none has the upstream, so both servers race to claim and run each approved call.
        racers = [
            subprocess.Popen(
                [sys.executable, RACE_DRIVER, "--as", f"approver{seed}", "--seed", str(seed), str(listing)],
                env={**gateway_env, "PYTHONPATH": str(Path(RACE_DRIVER).parent.parent)},
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
            )
            for seed in range(3)
        ]
        for racer in racers:
            assert racer.stdout is not None and racer.stdout.readline().strip() == "READY"
        for racer in racers:
            assert racer.stdin is not None
            racer.stdin.write("go\n")
            racer.stdin.flush()
        for racer in racers:
            racer.wait(timeout=120)
            assert racer.returncode == 0
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and set(statuses(db).values()) != {"executed"}:
            time.sleep(0.1)

    assert set(statuses(db).values()) == {"executed"}
    written = sorted(effect["path"] for effect in writes(counter))
    assert written == sorted(call["path"] for call in calls)  # each exactly once


def test_a_server_killed_after_sending_leaves_the_call_of_unknown_outcome_never_resent(
    tmp_path: Path, gateway_env: dict[str, str], counter: Path
) -> None:
    log = tmp_path / "paused.log"
    port_env = {**gateway_env, "HITL_TEST_PAUSE_AT": "after-action"}
    with serving(port_env, log) as url:
        [request_id] = anyio.run(file_over_http, url, [CALL])
        approver = subprocess.Popen(
            [HITL, "approve", request_id, "--as", "alice", "--yes", "--wait", "0"],
            env=gateway_env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        approver.wait(timeout=60)
        deadline = time.monotonic() + 30
        paused = None
        while paused is None and time.monotonic() < deadline:
            paused = re.search(r"hitl-test-pause: after-action \w+ (\d+)", log.read_text())
            time.sleep(0.05)
        assert paused is not None, log.read_text()
        assert len(writes(counter)) == 1  # the upstream did it; the server has not recorded it
        os.kill(int(paused[1]), signal.SIGKILL)

    # Another server comes up with the upstream; it never sends the call again.
    with serving(gateway_env, tmp_path / "after.log") as url:

        async def look() -> dict[str, object]:
            async with Client(url) as agent:
                await until_listed(agent, "notes__write_note")
                return ok(await agent.call_tool("get_request", {"request_id": request_id}))

        record = anyio.run(look)
        settled = hitl(
            gateway_env, "settle", request_id, "--executed", "--note", "the note is there", "--as", "bob"
        )

    assert record["status"] == "executing" and record["outcome_unknown"] is True
    assert len(writes(counter)) == 1
    assert settled.returncode == 0, settled.stderr


FS = fs_server_command()


@pytest.mark.skipif(
    FS is None and os.environ.get("CI") != "true",
    reason="the filesystem server is installed by `npm install --prefix interop` (make interop)",
)
async def test_the_official_filesystem_server_gated_and_passed(tmp_path: Path, smtp: SmtpSink) -> None:
    from hitl_mcp.config import load_settings
    from hitl_mcp.server import build_server

    data = tmp_path / "data"
    data.mkdir()
    (data / "a.txt").write_text("the old contents\n")
    command = fs_server_command(data)
    assert command is not None, "CI must install the filesystem server (make interop)"
    table = f"""
[upstreams.fs]
command = {json.dumps(command[0])}
args = {json.dumps(command[1:])}
gate = ["write_*", "edit_*", "move_*", "create_*"]
pass = ["read_*", "list_*", "get_*", "search_*", "directory_*"]

[upstreams.fs.preview.write_file]
tool = "read_text_file"
arguments = {{ path = "{{path}}" }}
"""
    settings = load_settings(
        process_env(tmp_path, write_config(tmp_path / "fs.toml", smtp_port=smtp.port, extra=table))
    )
    target = str(data / "a.txt")
    async with (
        Client(build_server(settings, principal="agent")) as agent,
        Client(build_server(settings, principal="alice")) as alice,
    ):
        await until_listed(agent, "fs__write_file")
        await until_listed(alice, "fs__write_file")
        read = await agent.call_tool("fs__read_text_file", {"path": target})
        filed = ok(await agent.call_tool("fs__write_file", {"path": target, "content": "new contents\n"}))
        unchanged = (data / "a.txt").read_text()
        rejected = ok(await agent.call_tool("fs__write_file", {"path": target, "content": "never\n"}))
        ok(await alice.call_tool("reject", {"request_id": rejected["request_id"], "reason": "no"}))
        decided = ok(await alice.call_tool("approve", {"request_id": filed["request_id"]}))

    assert not read.is_error and "the old contents" in json.dumps(read.model_dump(mode="json"))
    assert filed["status"] == "pending" and unchanged == "the old contents\n"
    assert "the old contents" in json.dumps(filed["preview"]["preview_call"])
    assert decided["status"] == "executed"
    assert (data / "a.txt").read_text() == "new contents\n"
