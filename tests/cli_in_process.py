"""`hitl` run inside the test's own process, for tests about what a command does, not about its process.

A `hitl` subprocess costs 0.4-0.8 s of CPU before it reads a single row (the interpreter and the imports), and
the suite starts hundreds of them: on a small machine that was most of `make test`. Here the command runs on
click's own runner with the environment the subprocess would have had (that environment and nothing else
of the worker's), its stdout and stderr kept apart, and its answer shaped like `subprocess.run`'s, so a test
switches by importing this `hitl` instead of `tests.test_cli`'s.

Keep the subprocess (tests.test_cli.hitl) where the process is the point: signals, stdio, what a process
imports, processes racing, or a command that must not share the test's interpreter.
"""

from __future__ import annotations

import os
import subprocess
import threading
import traceback

from click.testing import CliRunner, Result

from hitl_mcp.cli import main


def hitl(env: dict[str, str], *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    """What `tests.test_cli.hitl` returns for the same call, without starting a process."""
    outcome: list[Result] = []
    # A command runs its own event loop (anyio.run), which cannot start on a thread whose loop is running,
    # as an async test's is: it gets a thread of its own, and the test waits for it as it waited for the
    # subprocess.
    worker = threading.Thread(target=lambda: outcome.append(_invoke(env, args, stdin)))
    worker.start()
    worker.join()
    [result] = outcome
    stderr = result.stderr
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        # What the interpreter would have printed on its way out: a test that says "no traceback"
        # must see one when there is one.
        stderr += "".join(traceback.format_exception(result.exception))
    return subprocess.CompletedProcess(["hitl", *args], result.exit_code, result.stdout, stderr)


def _invoke(env: dict[str, str], args: tuple[str, ...], stdin: str | None) -> Result:
    # The subprocess saw only `env`; everything else of the worker's environment (HITL_SERVER from a
    # developer's shell, COLUMNS) is hidden for the call and restored after it.
    hidden: dict[str, str | None] = {name: None for name in os.environ if name not in env}
    return CliRunner().invoke(
        main, list(args), input=stdin, env={**hidden, **env}, prog_name="hitl", catch_exceptions=True
    )
