"""`queue_first_paint_ms_100k`: the inbox's queue page (`/`) at 100,000 pending requests, from navigation to
the browser's first contentful paint, against the same server's sign-in page (`/login`, which reads no
store) in the same browser: what the queue's size and the store's reads add to a page of this face.

A real `hitl serve --http` on a store filled by `bench.populate` (every request pending), Debian's Chromium
headless through Playwright, signed in as a person does (the token in the sign-in form). Each round loads
both pages once, interleaved, after two warm-up rounds; the figure is the median of the paint timings the
browser itself reports (`performance.getEntriesByType("paint")`), and beside it the median time until the
page's `load` event.
"""

from __future__ import annotations

import logging
import secrets
from pathlib import Path
from typing import Any

import anyio

from bench import populate
from bench.common import APPROVER, HITL, Context, Figure, median, setup
from bench.serving import free_port, serve

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking"]
TIMING = """() => new Promise((resolve) => {
    const nav = performance.getEntriesByType("navigation")[0];
    const done = (paint) => resolve({paint, load: nav ? nav.loadEventEnd : null});
    new PerformanceObserver((list) => {
        const fcp = list.getEntries().find((e) => e.name === "first-contentful-paint");
        if (fcp) done(fcp.startTime);
    }).observe({type: "paint", buffered: true});
    setTimeout(() => done(null), 5000);
})"""


def run(ctx: Context) -> list[Figure]:
    try:
        from playwright.async_api import async_playwright
    except ImportError:
        return [_missing("playwright is not installed (pip install -e '.[dev]')")]
    if not CHROMIUM.exists():
        return [_missing(f"no Chromium at {CHROMIUM} (apt-get install -y chromium)")]
    token = secrets.token_urlsafe(24)
    env = setup(ctx.folder("first-paint"), tokens={APPROVER: token})
    tpl = populate.template(setup(ctx.folder("template-first-paint")))
    populate.fill(env.db_path, tpl, pending=ctx.population, finished=0)
    rounds = ctx.reps(15, 3)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    argv = [str(HITL), "serve", "--http", "--host", "127.0.0.1", "--port", str(port)]
    logging.getLogger("httpx2").setLevel(logging.WARNING)
    timings: dict[str, list[dict[str, Any]]] = {"/": [], "/login": []}

    async def measure() -> None:
        async with async_playwright() as playwright:
            browser = await playwright.chromium.launch(
                executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
            )
            try:
                signed_in = await browser.new_context(viewport={"width": 1100, "height": 900})
                signed_out = await browser.new_context(viewport={"width": 1100, "height": 900})
                page = await signed_in.new_page()
                await page.goto(f"{base}/login")
                await page.fill("#token", token)
                await page.get_by_role("button", name="Sign in").click()
                await page.wait_for_url(f"{base}/")
                login = await signed_out.new_page()
                for n in range(2 + rounds):
                    for tab, path in ((page, "/"), (login, "/login")):
                        await tab.goto(f"{base}{path}", wait_until="load")
                        timing = await tab.evaluate(TIMING)
                        if tab is page and "Waiting for a decision" not in await tab.content():
                            raise RuntimeError("the queue page did not show the queue")
                        if n >= 2:
                            timings[path].append(timing)
            finally:
                await browser.close()

    with serve(argv, {**env.env, "HITL_PRINCIPAL": APPROVER}, env.folder / "http.log", port, env.folder):
        anyio.run(measure)

    def p50(path: str, field: str) -> float:
        return median([t[field] for t in timings[path] if t[field] is not None])

    queue, login = p50("/", "paint"), p50("/login", "paint")
    return [
        Figure(
            key="queue_first_paint_ms_100k",
            value=round(queue, 1),
            target="-",
            met=None,
            measured=f"queue page first paint p50 {queue:.0f} ms (load {p50('/', 'load'):.0f} ms)",
            baseline=f"sign-in page first paint p50 {login:.0f} ms (load {p50('/login', 'load'):.0f} ms)",
            notes=[
                f"{ctx.population:,} pending; {rounds} rounds of both pages, interleaved, after two "
                "warm-up rounds; headless Chromium via Playwright against a real `hitl serve --http`"
            ],
            extra={"login_first_paint_ms": round(login, 1), "queue_load_ms_100k": round(p50("/", "load"), 1)},
        )
    ]


def _missing(why: str) -> Figure:
    return Figure(
        key="queue_first_paint_ms_100k",
        value=None,
        target="-",
        met=None,
        measured="not measured",
        baseline="-",
        notes=[why],
    )
