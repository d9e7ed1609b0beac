"""A program on a pseudo-terminal, driven like a person would: wait for text on the screen, type a line.

The terminal is the program's controlling terminal (it leads a session of its own), so Ctrl-C typed into it
interrupts the program as it would from a shell, and it has a window size the program can ask for.
"""

from __future__ import annotations

import fcntl
import os
import pty
import select
import struct
import subprocess
import termios
import time
from collections.abc import Callable
from types import TracebackType
from typing import Self

# What `hitl watch` writes first on every redraw: everything after the last one is the current screen.
CLEAR = "\x1b[H\x1b[2J"


def _controlled_by_stdin() -> None:
    # Runs in the child after setsid(): make the terminal on fd 0 this new session's controlling terminal.
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


class Terminal:
    def __init__(self, argv: list[str], env: dict[str, str], *, columns: int = 80, rows: int = 24) -> None:
        self._controller, terminal = pty.openpty()
        fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", rows, columns, 0, 0))
        self.process = subprocess.Popen(
            argv,
            env=env,
            stdin=terminal,
            stdout=terminal,
            stderr=terminal,
            start_new_session=True,
            preexec_fn=_controlled_by_stdin,
        )
        os.close(terminal)
        self.screen = ""

    def _read(self, left: float) -> None:
        ready, _, _ = select.select([self._controller], [], [], min(left, 0.5))
        if not ready:
            return
        try:
            chunk = os.read(self._controller, 65536)
        except OSError:  # the program ended and the terminal closed
            chunk = b""
        if not chunk:
            raise EOFError(f"the program ended; the screen ends with:\n{self.screen[-2000:]}")
        self.screen += chunk.decode(errors="replace")

    def expect(self, text: str, timeout: float = 10.0) -> str:
        """Read output until `text` appears after what was read so far; return the output read."""
        start = len(self.screen)
        deadline = time.monotonic() + timeout
        while text not in self.screen[start:]:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"{text!r} did not appear; the screen ends with:\n{self.screen[-2000:]}")
            self._read(left)
        return self.screen[start:]

    def current(self) -> str:
        """What the screen shows now: the output since the last full redraw."""
        return self.screen.rpartition(CLEAR)[2]

    def expect_on_screen(self, text: str, timeout: float = 10.0) -> str:
        """Read output until the current screen (since the last redraw) shows `text`; return that screen."""
        try:
            return self.until(lambda screen: text in screen, timeout)
        except TimeoutError:
            raise TimeoutError(f"{text!r} is not on the screen:\n{self.current()[-2000:]}") from None

    def until(self, holds: Callable[[str], bool], timeout: float = 10.0) -> str:
        """Read output until `holds` is true of the current screen; return that screen."""
        deadline = time.monotonic() + timeout
        while not holds(self.current()):
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"the screen never became as expected:\n{self.current()[-2000:]}")
            self._read(left)
        return self.current()

    def resize(self, columns: int, rows: int = 24) -> None:
        """Change the window size, as dragging a terminal window does (the program gets SIGWINCH)."""
        fcntl.ioctl(self._controller, termios.TIOCSWINSZ, struct.pack("HHHH", rows, columns, 0, 0))

    def send(self, line: str) -> None:
        os.write(self._controller, line.encode() + b"\n")

    def press(self, keys: str | bytes) -> None:
        """Type keys without Enter: text, or control bytes such as b"\\x03" (Ctrl-C) or b"\\x7f"."""
        os.write(self._controller, keys if isinstance(keys, bytes) else keys.encode())

    def mode(self) -> list[int]:
        """The terminal's local flags and the like, as termios reports them: [iflag, oflag, cflag, lflag]."""
        return [int(flag) for flag in termios.tcgetattr(self._controller)[:4]]

    def wait(self, timeout: float = 10.0) -> int:
        return self.process.wait(timeout=timeout)

    def drain(self, timeout: float = 2.0) -> str:
        """Read what the program writes until it closes the terminal (after it ended); return all output."""
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline:
                self._read(deadline - time.monotonic())
        except EOFError:
            pass
        return self.screen

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)
        os.close(self._controller)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
