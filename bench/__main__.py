"""`python -m bench`: run every benchmark, print the table, end with one line of JSON."""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path

from bench import (
    cli_list,
    cold_start,
    engine,
    first_paint,
    gateway,
    listing,
    mcp_cycle,
    mcp_file,
    mcp_http,
    postgres,
    report,
    rss,
    storage,
    wake,
)
from bench.common import Context, Figure

# Each benchmark with the rows it reports (the first names it in the progress lines); `--only` takes any.
BENCHMARKS: list[tuple[tuple[str, ...], Callable[[Context], list[Figure]]]] = [
    (("engine_cycle_ratio",), engine.run),
    (("mcp_file_ratio", "mcp_file_ratio_vs_durable_noop"), mcp_file.run),
    (("mcp_cycle_vs_langgraph",), mcp_cycle.run),
    (
        (
            "http_file_ratio_32",
            "http_file_p99_ms_32",
            "http_cycle_vs_langgraph_32",
            "commits_per_transition_32",
        ),
        mcp_http.run,
    ),
    (("list_page_p50_ms_100k", "list_page_server_ms_100k"), listing.run),
    (("report_vs_sql_floor_100k",), report.run),
    (("queue_first_paint_ms_100k",), first_paint.run),
    (("bytes_per_request",), storage.run),
    (("wake_p99_ms",), wake.run),
    (("cold_start_ratio",), cold_start.run),
    (("cli_list_vs_floor",), cli_list.run),
    (("rss_mb_100k",), rss.run),
    (("gateway_pass_ratio", "gateway_cycle_ratio"), gateway.run),
    (("pg_cycles_3proc_vs_sqlite_1proc", "pg_wake_p99_ms"), postgres.run),
]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument(
        "--only",
        nargs="+",
        metavar="KEY",
        choices=[key for keys, _ in BENCHMARKS for key in keys],
        help="run only the benchmarks reporting these figures",
    )
    parser.add_argument(
        "--quick", action="store_true", help="few repetitions and 10,000 requests: a smoke test, not figures"
    )
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder and print its path")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    root = Path(tempfile.mkdtemp(prefix="hitl-bench-"))
    ctx = Context(root=root, quick=args.quick)
    figures: list[Figure] = []
    failed = False
    try:
        for keys, bench in BENCHMARKS:
            key = keys[0]
            if args.only and not set(keys) & set(args.only):
                continue
            sys.stdout.flush()
            print(f"… {key}", file=sys.stderr, flush=True)
            watch = time.perf_counter()
            try:
                figures.extend(bench(ctx))
            except Exception as error:
                failed = True
                traceback.print_exc()
                # Each of its rows appears, null: the JSON line always holds every figure.
                figures.append(Figure(key, None, "", None, notes=[f"the benchmark failed: {error!r}"]))
                figures.extend(Figure(other, None, "", None) for other in keys[1:])
            print(f"  {key}: {time.perf_counter() - watch:.1f} s", file=sys.stderr, flush=True)
    finally:
        if args.keep:
            print(f"temporary files kept in {root}", file=sys.stderr)
        else:
            shutil.rmtree(root, ignore_errors=True)
    print(render(figures))
    print(f"\n{len(figures)} figures in {time.perf_counter() - started:.0f} s", end="")
    print(" (--quick: not comparable with the targets)" if args.quick else "")
    print(json.dumps(collect(figures), separators=(",", ":")))
    return 1 if failed else 0


def render(figures: list[Figure]) -> str:
    header = ("figure", "value", "measured", "baseline (same run)", "target", "met?")
    rows = [
        (
            f.key,
            "null" if f.value is None else f"{f.value:g}",
            f.measured,
            f.baseline,
            f.target,
            "-" if f.met is None else ("yes" if f.met else "NO"),
        )
        for f in figures
    ]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)) for row in rows]
    rule = "  ".join("-" * width for width in widths)
    table = ["  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)), rule, *lines]
    notes = [f"- {f.key}: {note}" for f in figures for note in f.notes]
    return "\n".join([*table, "", *notes]) if notes else "\n".join(table)


def collect(figures: list[Figure]) -> dict[str, float | None]:
    found: dict[str, float | None] = {}
    for f in figures:
        found[f.key] = f.value
        found.update(f.extra)
    return found


if __name__ == "__main__":
    sys.exit(main())
