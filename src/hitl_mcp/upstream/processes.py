"""Stopping a child process and whatever it started: signals to its process group (it leads the session
it was started in), and waits bounded by a deadline."""

from __future__ import annotations

import contextlib
import os
import signal
import sys

import anyio
import anyio.abc

EXIT_POLL_SECONDS = 0.01
TERM_GRACE_SECONDS = 2.0
"""How long a process group has after SIGTERM before SIGKILL."""


async def close_quietly(stream: anyio.abc.AsyncResource) -> None:
    with contextlib.suppress(OSError, anyio.BrokenResourceError, anyio.ClosedResourceError):
        await stream.aclose()


def signal_group(process: anyio.abc.Process, sent: signal.Signals) -> bool:
    """Signal the child's process group (its pid: it leads the session it was started in). False when
    nothing of it is left."""
    if sys.platform == "win32":  # no process groups: the child alone
        try:
            if sent == signal.SIGKILL:
                process.kill()
            else:
                process.terminate()
        except ProcessLookupError:
            return False
        return True
    try:
        os.killpg(process.pid, sent)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # something of it is left that we may not signal; keep going as if alive
    return True


async def stop_group(process: anyio.abc.Process) -> None:
    """Whatever the child started and left behind in its group ends too."""
    if sys.platform == "win32" or not signal_group(process, signal.SIGTERM):
        return
    with anyio.move_on_after(TERM_GRACE_SECONDS):
        while group_alive(process.pid):  # noqa: ASYNC110 - only a signal 0 can tell
            await anyio.sleep(EXIT_POLL_SECONDS)
        return
    signal_group(process, signal.SIGKILL)


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"
