"""`cli_list_vs_floor`: `hitl list` with 1,000 pending requests, against the least a Python process doing
the same can cost: one that imports click and sqlite3, reads the same page of pending rows and prints
them. Both are spawned from this venv and timed from spawn to exit, interleaved, median of several; one
untimed run of each comes first so both find the OS file cache warm.

What `hitl list` pays beyond the floor is mostly start-up: importing the models, settings and store it
needs (`python -X importtime -m hitl_mcp list` shows which).
"""

from __future__ import annotations

import subprocess
import sys
import time

from bench import populate
from bench.common import HITL, Context, Figure, median, setup

PENDING = 1_000

# The floor: click and sqlite3, the same page (100 rows, oldest first) and the same columns printed.
FLOOR = """\
import sqlite3, sys, time
import click
conn = sqlite3.connect(f"file:{sys.argv[1]}?mode=ro", uri=True)
rows = conn.execute(
    "SELECT id, tool, summary, requested_by, created_at, expires_at FROM requests "
    "WHERE status = 'pending' ORDER BY created_at, id LIMIT 101"
).fetchall()
now = time.time()
click.echo("ID          AGE  TOOL       STATUS   SUMMARY                               BY     EXPIRES")
for rid, tool, summary, by, created, expires in rows[:100]:
    age, left = now - created, expires - now
    click.echo(f"{rid[:10]}  {age:>4.0f}s  {tool:<9}  pending  {summary[:36]:<36}  {by:<5}  {left:.0f}s")
if len(rows) > 100:
    count = conn.execute("SELECT count(*) FROM requests WHERE status = 'pending'").fetchone()[0]
    click.echo(f"{count - 100:,} more", err=True)
"""


def timed(command: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, check=False)
    elapsed = time.perf_counter() - start
    if done.returncode != 0 or done.stdout.count(b"\n") < 100:
        raise RuntimeError(f"{command[0]} failed ({done.returncode}): {done.stderr.decode()[-500:]}")
    return elapsed


def run(ctx: Context) -> list[Figure]:
    env = setup(ctx.folder("cli_list"))
    tpl = populate.template(setup(ctx.folder("template-cli-list")))
    populate.fill(env.db_path, tpl, pending=PENDING, finished=0)
    floor = env.folder / "floor.py"
    floor.write_text(FLOOR, encoding="utf-8")
    ours_command = [str(HITL), "list"]
    floor_command = [sys.executable, str(floor), str(env.db_path)]
    runs = ctx.reps(15, 3)
    timed(ours_command, env.env)  # warm-up
    timed(floor_command, env.env)
    ours: list[float] = []
    theirs: list[float] = []
    for _ in range(runs):
        ours.append(timed(ours_command, env.env))
        theirs.append(timed(floor_command, env.env))
    ratio = median(ours) / median(theirs)
    return [
        Figure(
            key="cli_list_vs_floor",
            value=round(ratio, 3),
            target="≤ 2",
            met=ratio <= 2,
            measured=f"hitl list {median(ours) * 1000:.0f} ms",
            baseline=f"click + sqlite3 printing the same page {median(theirs) * 1000:.0f} ms",
            notes=[f"median of {runs} interleaved runs each, spawn to exit, {PENDING:,} pending"],
        )
    ]
