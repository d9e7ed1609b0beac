"""A program on a pseudo-terminal, driven like a person would: wait for text on the screen, type a line."""

from __future__ import annotations

import os
import pty
import select
import subprocess
import time
from types import TracebackType
from typing import Self


class Terminal:
    def __init__(self, argv: list[str], env: dict[str, str]) -> None:
        self._controller, terminal = pty.openpty()
        self.process = subprocess.Popen(argv, env=env, stdin=terminal, stdout=terminal, stderr=terminal)
        os.close(terminal)
        self.screen = ""

    def expect(self, text: str, timeout: float = 10.0) -> str:
        """Read output until `text` appears after what was read so far; return the output read."""
        start = len(self.screen)
        deadline = time.monotonic() + timeout
        while text not in self.screen[start:]:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"{text!r} did not appear; the screen ends with:\n{self.screen[-2000:]}")
            ready, _, _ = select.select([self._controller], [], [], min(left, 0.5))
            if ready:
                try:
                    chunk = os.read(self._controller, 65536)
                except OSError:  # the program ended and the terminal closed
                    chunk = b""
                if not chunk:
                    raise EOFError(f"the program ended before {text!r} appeared:\n{self.screen[-2000:]}")
                self.screen += chunk.decode(errors="replace")
        return self.screen[start:]

    def send(self, line: str) -> None:
        os.write(self._controller, line.encode() + b"\n")

    def wait(self, timeout: float = 10.0) -> int:
        return self.process.wait(timeout=timeout)

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
