"""`/healthz` and `/readyz` of a real `hitl serve --http`, as a load balancer and an operator read them."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx2
import pytest

from tests.inbox import make_site, serve, until
from tests.postgres_cluster import Cluster, started_cluster
from tests.test_stored_tokens import made


def get(base: str, path: str, token: str | None = None) -> httpx2.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx2.get(f"{base}{path}", headers=headers, timeout=30)


def test_a_tokenless_loopback_server_is_alive_and_ready_and_says_what_it_checked(tmp_path: Path) -> None:
    site = make_site(tmp_path, tokens=False)
    with serve(site) as server:
        alive = get(server.base, "/healthz")
        assert (alive.status_code, alive.json()) == (200, {"status": "ok"})
        ready = get(server.base, "/readyz")
        assert ready.status_code == 200, ready.text
        body = ready.json()
        assert body["status"] == "ready" and body["not_ready"] == []
        assert body["checks"]["store"]["ok"] is True
        assert ready.headers["cache-control"] == "no-store"


def test_with_tokens_readiness_details_need_a_token_and_the_status_does_not(tmp_path: Path) -> None:
    site = make_site(tmp_path, tokens=True)
    with serve(site) as server:
        assert get(server.base, "/healthz").status_code == 200
        bare = get(server.base, "/readyz")
        assert (bare.status_code, bare.json()) == (200, {"status": "ready"})
        assert get(server.base, "/readyz", "not-a-token").json() == {"status": "ready"}
        detailed = get(server.base, "/readyz", site.tokens["agent"]).json()
        assert detailed["checks"]["store"]["ok"] is True


def test_once_a_token_is_made_a_tokenless_servers_details_close(tmp_path: Path) -> None:
    site = make_site(tmp_path, tokens=False)
    with serve(site) as server:
        assert "checks" in get(server.base, "/readyz").json()
        secret = made(site.env, "dan")
        assert get(server.base, "/readyz").json() == {"status": "ready"}
        assert "checks" in get(server.base, "/readyz", secret).json()


def test_an_upstream_that_cannot_start_makes_the_server_not_ready_naming_it(tmp_path: Path) -> None:
    extra = '\n[upstreams.files]\ncommand = "hitl-test-no-such-command"\n'
    site = make_site(tmp_path, tokens=False, extra=extra)
    with serve(site) as server:
        until(lambda: get(server.base, "/readyz").status_code == 503, timeout=30)
        body = get(server.base, "/readyz").json()
        assert body["status"] == "not ready"
        assert body["checks"]["upstreams"]["files"]["status"] == "failed"
        assert [line for line in body["not_ready"] if line.startswith("upstream files: failed")]
        assert body["checks"]["store"]["ok"] is True
        # Alive all the same: a supervisor must not restart it for what a restart cannot fix.
        assert get(server.base, "/healthz").status_code == 200


@pytest.fixture
def own_cluster() -> Iterator[Cluster]:
    """A cluster of this test's own: it is halted, which the suite's shared one must not see."""
    cluster = started_cluster()
    try:
        yield cluster
    finally:
        if not (cluster.data / "postmaster.pid").exists():
            cluster.resume()
        cluster.stop()


def test_readiness_follows_a_postgresql_outage_and_recovery(tmp_path: Path, own_cluster: Cluster) -> None:
    # Tokens from the config: they are checked without the store, so the details stay readable in the outage.
    site = make_site(tmp_path, tokens=True)
    site.env["HITL_DB"] = own_cluster.create_database()
    token = site.tokens["agent"]
    with serve(site) as server:
        assert get(server.base, "/readyz", token).status_code == 200
        own_cluster.halt()
        try:
            down = get(server.base, "/readyz", token)
            assert down.status_code == 503, down.text
            [reason] = down.json()["not_ready"]
            assert reason.startswith("store: ") and "PostgreSQL" in reason, reason
            assert down.json()["checks"]["store"]["ok"] is False
            assert get(server.base, "/readyz").json() == {"status": "not ready"}
            assert get(server.base, "/healthz").status_code == 200
        finally:
            own_cluster.resume()
        until(lambda: get(server.base, "/readyz").status_code == 200, timeout=30)
