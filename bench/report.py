"""`report_vs_sql_floor_100k`: the server's `/api/v1/report` answer at 100,000 requests ÷ raw sqlite3 running
the aggregate queries that report needs, plus what any answer of the same server costs.

The store is filled by `bench.populate` (half pending, half executed: about 250,000 audit records; the
store's triggers keep the report's running totals as the rows go in). The answer is timed at an httpx2
client against a real `hitl serve --http` process on the store, so it holds the server, uvicorn, the JSON
model and HTTP. The floor is the same queries (`hitl_mcp.store.sqlite_report.read`) on a bare `sqlite3`
connection in this process, rows fetched and nothing else, plus the same server's cheapest authenticated
answer (`GET /api/v1/me`, timed in the same round): since the report reads running totals, its queries
take a fraction of a millisecond, and what is left of a report's answer is what every answer of the server
pays (HTTP, the token, JSON), which the figure would otherwise measure instead of the report. The raw
queries alone are printed beside it. Beside them, for the before/after: the
report's definition in Python (`report.build` over every audit record streamed from the store), which is
how `/report` was computed before.
"""

from __future__ import annotations

import logging
import secrets
import sqlite3
import time

import anyio
import httpx2

from bench import populate
from bench.common import APPROVER, HITL, Context, Figure, Stopwatch, median, setup
from bench.serving import free_port, serve
from hitl_mcp.report import build_stream
from hitl_mcp.store import sqlite_report
from hitl_mcp.store.sqlite import SQLiteStore

TARGET = 3.0


def run(ctx: Context) -> list[Figure]:
    watch = Stopwatch()
    token = secrets.token_urlsafe(24)
    env = setup(ctx.folder("report"), tokens={APPROVER: token})
    tpl = populate.template(setup(ctx.folder("template-report")))
    half = ctx.population // 2
    populate.fill(env.db_path, tpl, pending=ctx.population - half, finished=half)
    fill_seconds = watch.elapsed
    count = ctx.reps(20, 5)

    floor: list[float] = []
    served: list[float] = []
    cheapest: list[float] = []
    port = free_port()
    argv = [str(HITL), "serve", "--http", "--host", "127.0.0.1", "--port", str(port)]
    logging.getLogger("httpx2").setLevel(logging.WARNING)
    conn = sqlite3.connect(env.db_path, isolation_level=None)
    try:
        with (
            serve(argv, {**env.env, "HITL_PRINCIPAL": APPROVER}, env.folder / "http.log", port, env.folder),
            httpx2.Client(headers={"Authorization": f"Bearer {token}"}, timeout=60) as http,
        ):
            url = f"http://127.0.0.1:{port}/api/v1/report"
            # Interleaved, one of each per round (the first two rounds warm up): drift on a shared machine
            # hits both series alike.
            for n in range(2 + count):
                start = time.perf_counter()
                conn.execute("BEGIN")
                expected = sqlite_report.read(conn, None)
                conn.execute("COMMIT")
                floor_seconds = time.perf_counter() - start
                start = time.perf_counter()
                answer = http.get(url)
                served_seconds = time.perf_counter() - start
                start = time.perf_counter()
                me = http.get(f"http://127.0.0.1:{port}/api/v1/me")
                me_seconds = time.perf_counter() - start
                if me.status_code != 200:
                    raise RuntimeError(f"/api/v1/me answered {me.status_code}: {me.text[:300]}")
                figures = answer.json()
                if answer.status_code != 200 or figures["requests"] != ctx.population:
                    raise RuntimeError(f"/api/v1/report answered {answer.status_code}: {answer.text[:300]}")
                if figures["approval"]["approved"] != expected.approved:
                    raise RuntimeError("/api/v1/report disagrees with the report's queries")
                if n >= 2:
                    floor.append(floor_seconds)
                    served.append(served_seconds)
                    cheapest.append(me_seconds)
    finally:
        conn.close()

    async def python_build() -> float:
        store = SQLiteStore(env.db_path, readonly=True)
        await store.open()
        try:
            start = time.perf_counter()
            await build_stream(store.audit_records())
            return time.perf_counter() - start
        finally:
            await store.close()

    python_seconds = anyio.run(python_build)
    answer_ms, floor_ms, me_ms = median(served) * 1000, median(floor) * 1000, median(cheapest) * 1000
    ratio = answer_ms / (floor_ms + me_ms)
    return [
        Figure(
            key="report_vs_sql_floor_100k",
            value=round(ratio, 3),
            target=f"≤ {TARGET:g}",
            met=ratio <= TARGET and not ctx.quick,
            measured=f"GET /api/v1/report p50 {answer_ms:.1f} ms",
            baseline=f"the report's queries in raw sqlite3 {floor_ms:.2f} ms + GET /api/v1/me {me_ms:.1f} ms",
            notes=[
                f"{ctx.population:,} requests ({half:,} executed, the rest pending; bulk-filled in "
                f"{fill_seconds:.1f} s); {count} rounds of one of each, interleaved, after two warm-up "
                "rounds; the server is a real `hitl serve --http`, timed at an httpx2 client",
                f"before (the report built in Python over every audit record, in process, no HTTP): "
                f"{python_seconds * 1000:.0f} ms",
            ],
            extra={
                "report_http_p50_ms_100k": round(answer_ms, 1),
                "report_sql_floor_p50_ms_100k": round(floor_ms, 2),
                "cheapest_answer_p50_ms": round(me_ms, 2),
                "report_python_build_ms_100k": round(python_seconds * 1000, 1),
            },
        )
    ]
