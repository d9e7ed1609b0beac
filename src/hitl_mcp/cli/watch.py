"""`hitl watch`: the live queue in the terminal, with a prompt to decide without leaving it."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field

import anyio
import anyio.to_thread
import click

from hitl_mcp.cli.app import main
from hitl_mcp.cli.common import acting_as, describe, duration, expires_in, load, refusals, table, truncate
from hitl_mcp.errors import HitlError
from hitl_mcp.gate import Gate, open_gate
from hitl_mcp.models import Request, Status
from hitl_mcp.store import wait_for_change

# Ages and countdowns move even when nothing changes; redraw at least this often.
TICK_SECONDS = 1.0
# How often the store's change counter is asked between ticks.
POLL_SECONDS = 0.1
HELP = "a ID [reason] approve · r ID reason reject · s ID show · q quit   (ID: any unique prefix)"
CLEAR = "\x1b[H\x1b[2J"


@dataclass
class Screen:
    principal: str
    tool: str | None
    store: str
    message: str = ""
    detail: str = ""
    dirty: anyio.Event = field(default_factory=anyio.Event)

    def touch(self) -> None:
        self.dirty.set()


def render(screen: Screen, requests: list[Request], now: float) -> str:
    waiting = [r for r in requests if r.status is Status.PENDING]
    title = (
        f"hitl watch — {len(waiting)} waiting · acting as {screen.principal} · {screen.store} · "
        f"{time.strftime('%H:%M:%S', time.localtime(now))}"
    )
    lines = [title, ""]
    if waiting:
        rows = [
            (
                r.request_id[:10],
                duration(now - r.created_at.timestamp()),
                r.tool,
                ("! " if r.approval.escalated else "") + truncate(r.summary, 56),
                r.requested_by,
                r.approval.may_decide or "-",
                expires_in(r, now),
            )
            for r in waiting
        ]
        lines.append(table(("ID", "AGE", "TOOL", "SUMMARY", "BY", "WAITS ON", "EXPIRES IN"), rows))
    else:
        lines.append("Nothing is waiting for a decision.")
    if screen.detail:
        lines += ["", screen.detail]
    lines += ["", screen.message, HELP, "> "]
    return "\n".join(lines)


async def run_command(gate: Gate, screen: Screen, line: str) -> bool:
    """Carry out one typed command; False when the user asked to quit."""
    verb, _, rest = line.strip().partition(" ")
    ref, _, text = rest.strip().partition(" ")
    try:
        if verb in ("q", "quit", "exit"):
            return False
        if verb in ("a", "approve") and ref:
            done = await gate.approve(ref, screen.principal, text.strip() or None)
            screen.message = f"{done.request_id[:10]} {done.status.value}: {done.summary}" + (
                f" — error: {done.error}" if done.error else ""
            )
        elif verb in ("r", "reject") and ref:
            done = await gate.reject(ref, screen.principal, text)
            screen.message = f"{done.request_id[:10]} rejected: {done.summary}"
        elif verb in ("s", "show") and ref:
            screen.detail = describe(await gate.get(ref))
            screen.message = ""
        elif verb:
            screen.message = f"not a command: {line.strip()!r}"
    except HitlError as error:
        screen.message = f"refused: {error}"
    screen.touch()
    return True


async def watch_queue(gate: Gate, screen: Screen) -> None:
    async def redraw_forever() -> None:
        while True:
            # Taken before the read, so a change landing while drawing still wakes the next wait.
            dirty = screen.dirty = anyio.Event()
            version = await gate.store.change_counter()
            page = await gate.list(tool=screen.tool, limit=200)
            click.echo(CLEAR + render(screen, page.requests, time.time()), nl=False)
            await wait_for_change(gate.store, version, TICK_SECONDS, local=dirty, poll=POLL_SECONDS)

    async with anyio.create_task_group() as tasks:
        tasks.start_soon(redraw_forever)
        while True:
            line = await anyio.to_thread.run_sync(sys.stdin.readline, abandon_on_cancel=True)
            if not line or not await run_command(gate, screen, line):
                break
        tasks.cancel_scope.cancel()


@main.command()
@click.option("--as", "as_name", metavar="NAME", help="Decide as this principal (default: your OS user).")
@click.option("--tool", help="Only requests for this gated tool.")
@refusals
def watch(as_name: str | None, tool: str | None) -> None:
    """A live view of what waits for a decision: on whom, and how long until it expires.

    The screen updates as soon as anything changes — a request filed by an agent, a decision made in
    another terminal. Type a command and Enter to decide without leaving it:

    \b
      a ID [reason]   approve (the action runs at once when the policy's approvals are complete)
      r ID reason     reject
      s ID            show everything about one request
      q               quit (or end of input)
    """
    principal = acting_as(as_name)
    settings = load(principal)

    async def run() -> None:
        async with open_gate(settings) as gate:
            await watch_queue(gate, Screen(principal, tool, str(settings.db_path)))

    anyio.run(run)
    click.echo()
