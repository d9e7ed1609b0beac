"""The README's first walk-through: examples/agent_session.py files requests, and the commands it prints
work as printed from a second terminal that has no configuration of its own."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

from tests.terminal import Terminal

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def test_the_printed_approve_command_works_from_a_bare_terminal(tmp_path: Path) -> None:
    # A copy, so the demo database and ledger the script makes land in the test's folder.
    examples = tmp_path / "examples"
    shutil.copytree(EXAMPLES, examples)
    home = tmp_path / "home"
    bare = {"PATH": os.environ.get("PATH", ""), "HOME": str(home), "HITL_DB": str(tmp_path / "hitl.db")}
    unbuffered = {**bare, "PYTHONUNBUFFERED": "1"}
    agent = subprocess.Popen(
        [sys.executable, str(examples / "agent_session.py")],
        env=unbuffered,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert agent.stdout is not None
        lines: list[str] = []
        while not any("waiting for your decisions" in line for line in lines):
            line = agent.stdout.readline()
            assert line, f"the agent script ended early: {lines}"
            lines.append(line)
        # One printed command per request, in the order filed: the order to buy comes first.
        commands = [line.split("approve: ", 1)[1].strip() for line in lines if "approve: " in line]
        assert len(commands) == 3

        # As a person would: on a terminal, answering the question, with nothing but the printed words
        # (a leading NAME=VALUE sets a variable, as a shell would).
        words = shlex.split(commands[0])
        assignments = [word for word in words if "=" in word.split("/", 1)[0]]
        variables = dict(word.split("=", 1) for word in assignments)
        argv = [word for word in words if word not in assignments]
        with Terminal([*argv, "--as", "alice"], {**bare, **variables}) as terminal:
            terminal.expect("[y/N]")
            terminal.send("y")
            screen = terminal.expect("executed", timeout=30)
            assert terminal.wait(timeout=30) == 0, screen

        deadline = time.monotonic() + 30
        outcome = ""
        while "executed" not in outcome and time.monotonic() < deadline:
            outcome = agent.stdout.readline()
        assert "executed" in outcome and "'total': 15000.0" in outcome
    finally:
        agent.kill()
        agent.wait(timeout=10)
