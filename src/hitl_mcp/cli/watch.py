"""`hitl watch`: the live queue in the terminal, with a prompt to decide without leaving it.

Input is read on the event loop, never in a worker thread: a thread blocked in `readline` outlives a
cancelled loop, so Ctrl-C used to wait for one more Enter and end in a traceback. On a terminal, keys
arrive one at a time (cbreak mode, restored on every way out) into our own line buffer, so the screen can
be redrawn whenever anything changes and still show the half-typed line; from a pipe or a file, commands
are read line by line and the end of input quits.
"""

from __future__ import annotations

import codecs
import os
import shutil
import signal
import sys
import termios
import time
import unicodedata
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from typing import Protocol

import anyio
import click

from hitl_mcp import display
from hitl_mcp.cli.app import main
from hitl_mcp.cli.calls import Calls
from hitl_mcp.cli.common import (
    acting_as,
    deciding_refusal,
    describe,
    duration,
    expires_in,
    load,
    refusals,
    through_server,
)
from hitl_mcp.errors import HitlError
from hitl_mcp.gate import open_gate
from hitl_mcp.models import RequestSummary, Status
from hitl_mcp.store import Store, wait_for_change

# Ages and countdowns move even when nothing changes; redraw at least this often.
TICK_SECONDS = 1.0
# How often the store's change counter is asked between ticks.
POLL_SECONDS = 0.1
HELP = "a ID [reason] approve · r ID reason reject · s ID show · q quit  (ID: a prefix)"
CLEAR = "\x1b[H\x1b[2J"
ERASE_LINE = "\r\x1b[K"
PROMPT = "> "
# Without a terminal to ask (output to a pipe or a file), lines are kept to the classic width.
DEFAULT_COLUMNS = 80
SUMMARY_COLUMNS = 56
# No TOOL column: 80 columns cannot hold it beside a readable summary, which names the action anyway
# ("Buy …", "Email …", "Delete rows …"); `s ID` shows it.
HEADER = ("ID", "AGE", "SUMMARY", "BY", "WAITS ON", "EXPIRES")
# The id is what a command needs and the summary what a person decides on: they give way last.
KEEP_COLUMNS = (0, 2)
READ_BYTES = 4096
QUIT_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
# A resized window and a job brought back to the foreground both need a fresh screen.
REDRAW_SIGNALS = (signal.SIGWINCH, signal.SIGCONT)
ENTER = "\r\n"
ERASE_CHAR = "\x7f\x08"
ERASE_LINE_KEY = "\x15"  # Ctrl-U
ERASE_WORD_KEY = "\x17"  # Ctrl-W
END_KEY = "\x04"  # Ctrl-D: quits on an empty line, like the end of input
INTERRUPT_KEY = "\x03"  # Ctrl-C, when the terminal hands it over as a key rather than as SIGINT
ESC = "\x1b"


@dataclass
class Screen:
    principal: str
    tool: str | None
    store: str
    message: str = ""
    # The full id of the request shown with `s ID`: read again on every redraw, so its detail stays true.
    shown: str | None = None
    # The command being carried out, if any: Ctrl-C lets it finish rather than leave it half done.
    running: str | None = None
    dirty: anyio.Event = field(default_factory=anyio.Event)
    # Why typed decisions are refused here ([cli] direct_decisions = false on a store opened directly).
    no_decisions: str | None = None

    def touch(self) -> None:
        self.dirty.set()


@dataclass
class LineEditor:
    """The line being typed at the prompt, kept here (not by the terminal) so a redraw can show it again."""

    text: str = ""
    ended: bool = False
    _escape: str = ""
    _after_cr: bool = False

    def feed(self, typed: str) -> list[str]:
        """Take typed characters; return the lines they complete with Enter."""
        lines: list[str] = []
        for char in typed:
            after_cr, self._after_cr = self._after_cr, char == "\r"
            if self._escape:
                self._skip_escape(char)
            elif char == ESC:
                self._escape = char
            elif char in ENTER:
                if not (char == "\n" and after_cr):  # CR LF is one Enter
                    lines.append(self.text)
                    self.text = ""
            elif char in ERASE_CHAR:
                self.text = self.text[:-1]
            elif char == ERASE_LINE_KEY:
                self.text = ""
            elif char == ERASE_WORD_KEY:
                kept = self.text.rstrip()
                self.text = kept[: kept.rfind(" ") + 1]
            elif char == INTERRUPT_KEY or (char == END_KEY and not self.text):
                self.ended = True
                break
            elif unicodedata.category(char) != "Cc":
                self.text += char
        return lines

    def end_of_input(self) -> list[str]:
        """The input ended: a last line without its newline still counts."""
        self.ended = True
        last, self.text = self.text, ""
        return [last] if last.strip() else []

    def _skip_escape(self, char: str) -> None:
        # Arrow and function keys send ESC [ … final or ESC O x; Alt+key sends ESC x. None of them edits.
        self._escape += char
        if len(self._escape) == 2:
            if char not in "[O":
                self._escape = ""
        elif self._escape[1] == "O" or "\x40" <= char <= "\x7e":
            self._escape = ""


class Keyboard:
    """Bytes from standard input as they arrive, awaited on the event loop."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self._pollable = True
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    async def read(self) -> str | None:
        """What arrived (possibly less than a character), or None at the end of input."""
        while True:
            if self._pollable:
                try:
                    await anyio.wait_readable(self.fd)
                except PermissionError:  # a regular file or /dev/null: not pollable, and never blocks
                    self._pollable = False
            try:
                data = os.read(self.fd, READ_BYTES)
            except BlockingIOError:
                continue
            except OSError:  # closed or gone: nothing more will come
                data = b""
            if not data:
                return None
            return self._decoder.decode(data)


@contextmanager
def keys_one_at_a_time(fd: int) -> Iterator[bool]:
    """On a terminal, turn off its echo and line editing (signal keys stay) until the block ends, however
    it ends; yield whether it is a terminal."""
    if not os.isatty(fd):
        yield False
        return
    saved = termios.tcgetattr(fd)
    mode = termios.tcgetattr(fd)
    mode[3] &= ~(termios.ECHO | termios.ICANON)
    mode[6][termios.VMIN] = 1
    mode[6][termios.VTIME] = 0
    termios.tcsetattr(fd, termios.TCSANOW, mode)
    try:
        yield True
    finally:
        with suppress(termios.error):  # a terminal that hung up has nothing left to restore
            termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def screen_columns() -> int:
    """The terminal's width when it can be known, else DEFAULT_COLUMNS: every line fits in it."""
    columns = shutil.get_terminal_size((DEFAULT_COLUMNS, 24)).columns
    return columns if columns > 0 else DEFAULT_COLUMNS


def prompt_line(typed: str, columns: int) -> str:
    """The prompt with what is typed; a line too long for the screen shows its end, where the cursor is."""
    pieces = display.pieces(typed)
    room = columns - display.width(PROMPT) - 1  # the cursor takes a column after the text
    if sum(display.width(piece) for piece in pieces) <= room:
        return PROMPT + "".join(pieces)
    room -= display.width(display.ELLIPSIS)
    tail: list[str] = []
    for piece in reversed(pieces):
        room -= display.width(piece)
        if room < 0:
            break
        tail.append(piece)
    return PROMPT + display.ELLIPSIS + "".join(reversed(tail))


def render(screen: Screen, requests: list[RequestSummary], detail: str, now: float, columns: int) -> str:
    """The whole screen above the prompt; no line wider than `columns`."""
    waiting = [r for r in requests if r.status is Status.PENDING]
    title = (
        f"hitl watch — {len(waiting)} waiting · acting as {screen.principal} · "
        f"{time.strftime('%H:%M:%S', time.localtime(now))} · {screen.store}"
    )
    lines = [display.cut(title, columns), ""]
    if waiting:
        rows = [
            (
                r.request_id[:10],
                duration(now - r.created_at.timestamp()),
                ("! " if r.escalated else "") + display.cut(r.summary, SUMMARY_COLUMNS),
                r.requested_by,
                r.waits_on or "-",
                expires_in(r, now),
            )
            for r in waiting
        ]
        lines.append(display.table(HEADER, rows, columns=columns, keep=KEEP_COLUMNS))
    else:
        lines.append("Nothing is waiting for a decision.")
    if detail:
        lines += ["", *display.fold(detail, columns)]
    lines += ["", *display.fold(screen.message, columns), display.cut(HELP, columns)]
    return "\n".join(lines) + "\n"


class Changes(Protocol):
    """Where news of a change comes from: the store's change counter, or a server's event stream."""

    async def mark(self) -> int:
        """A mark to take before reading what is shown: a change after it ends the next `wait`."""
        ...

    async def wait(self, mark: int, timeout: float, local: anyio.Event) -> None:
        """Return once something changed after `mark`, `local` is set, or `timeout` passes."""
        ...


@dataclass
class StoreChanges:
    store: Store

    async def mark(self) -> int:
        return await self.store.change_counter()

    async def wait(self, mark: int, timeout: float, local: anyio.Event) -> None:
        await wait_for_change(self.store, mark, timeout, local=local, poll=POLL_SECONDS)


async def shown_detail(gate: Calls, screen: Screen) -> str:
    if screen.shown is None:
        return ""
    try:
        return describe(await gate.get(screen.shown))
    except HitlError as error:
        return f"cannot show {screen.shown[:10]}: {error}"


async def run_command(gate: Calls, screen: Screen, line: str) -> bool:
    """Carry out one typed command; False when the user asked to quit."""
    verb, _, rest = line.strip().partition(" ")
    ref, _, text = rest.strip().partition(" ")
    try:
        if verb in ("q", "quit", "exit"):
            return False
        if verb in ("a", "approve", "r", "reject") and ref and screen.no_decisions:
            screen.message = f"refused: {screen.no_decisions}"
        elif verb in ("a", "approve") and ref:
            done = await gate.approve(ref, screen.principal, text.strip() or None)
            screen.message = f"{done.request_id[:10]} {done.status.value}: {done.summary}" + (
                f" — error: {done.error}" if done.error else ""
            )
        elif verb in ("r", "reject") and ref:
            done = await gate.reject(ref, screen.principal, text)
            screen.message = f"{done.request_id[:10]} rejected: {done.summary}"
        elif verb in ("s", "show") and ref:
            screen.shown = (await gate.get(ref)).request_id
            screen.message = ""
        elif verb:
            screen.message = f"not a command: {line.strip()!r}"
    except HitlError as error:
        screen.message = f"refused: {error}"
    screen.touch()
    return True


async def watch_queue(
    gate: Calls, changes: Changes, screen: Screen, keyboard: Keyboard, interactive: bool
) -> int:
    """Show the queue and carry out typed commands until `q`, the end of input or a signal to quit;
    return the exit status."""
    editor = LineEditor()
    status = 0

    async def redraw_forever() -> None:
        while True:
            # Taken before the reads, so a change landing while drawing still wakes the next wait.
            dirty = screen.dirty = anyio.Event()
            version = await changes.mark()
            # Summary lines, not whole records: through a server that is one call a redraw.
            page = await gate.summaries(tool=screen.tool, limit=200)
            queue = [RequestSummary.model_validate(line) for line in page.lines]
            detail = await shown_detail(gate, screen)
            columns = screen_columns()
            drawn = render(screen, queue, detail, time.time(), columns)
            click.echo(CLEAR + drawn + prompt_line(editor.text, columns), nl=False)
            await changes.wait(version, TICK_SECONDS, dirty)

    async def follow_signals(quit_now: anyio.CancelScope) -> None:
        nonlocal status
        with anyio.open_signal_receiver(*QUIT_SIGNALS, *REDRAW_SIGNALS) as signals:
            async for signum in signals:
                if signum in REDRAW_SIGNALS:
                    screen.touch()
                    continue
                # Ctrl-C is how a person leaves a live screen: a normal end. Others say what ended it.
                status = 0 if signum == signal.SIGINT else 128 + signum
                if screen.running is not None:
                    click.echo(f"\nfinishing `{display.cut(screen.running, 40)}` first…", nl=False)
                quit_now.cancel()
                return

    async with anyio.create_task_group() as tasks:
        tasks.start_soon(redraw_forever)
        tasks.start_soon(follow_signals, tasks.cancel_scope)
        while not editor.ended:
            typed = await keyboard.read()
            lines = editor.end_of_input() if typed is None else editor.feed(typed)
            for line in lines:
                screen.running = line
                # A decision under way is finished even when Ctrl-C comes meanwhile: cut short, an
                # approval could leave its action running with nobody to see how it ended.
                with anyio.CancelScope(shield=True):
                    going_on = await run_command(gate, screen, line)
                screen.running = None
                if not going_on:
                    editor.ended = True
                    break
            if interactive and not editor.ended and not lines:
                click.echo(ERASE_LINE + prompt_line(editor.text, screen_columns()), nl=False)
        tasks.cancel_scope.cancel()
    return status


@main.command()
@click.option("--as", "as_name", metavar="NAME", help="Decide as this principal (default: your OS user).")
@click.option("--tool", help="Only requests for this gated tool.")
@refusals
def watch(as_name: str | None, tool: str | None) -> None:
    """A live view of what waits for a decision: on whom, and how long until it expires.

    The screen updates as soon as anything changes — a request filed by an agent, a decision made in
    another terminal — and keeps what you have typed so far. Type a command and Enter to decide without
    leaving it:

    \b
      a ID [reason]   approve (the action runs at once when the policy's approvals are complete)
      r ID reason     reject
      s ID            show everything about one request, kept up to date
      q               quit (or Ctrl-C, Ctrl-D, the end of input)
    """
    principal = acting_as(as_name)
    fd = sys.stdin.fileno()

    async def on_store(interactive: bool) -> int:
        settings = load(principal)
        async with open_gate(settings) as gate:
            screen = Screen(principal, tool, settings.store.describe())
            screen.no_decisions = deciding_refusal(settings)
            return await watch_queue(gate, StoreChanges(gate.store), screen, Keyboard(fd), interactive)

    async def on_server(interactive: bool) -> int:
        from hitl_mcp.cli import remote

        found = remote.from_environment()
        assert found is not None
        async with remote.connect(*found) as gate, remote.EventFeed.following(gate) as feed:
            screen = Screen(gate.principal, tool, gate.server)
            return await watch_queue(gate, feed, screen, Keyboard(fd), interactive)

    run = on_server if through_server() else on_store

    with keys_one_at_a_time(fd) as interactive:
        try:
            status = anyio.run(run, interactive)
        except KeyboardInterrupt:  # Ctrl-C before the signal receiver was listening: nothing to finish
            status = 0
    click.echo()
    if status:
        sys.exit(status)
