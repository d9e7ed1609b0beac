"""The inbox's Tokens page: a signed-in person makes a token of their own (shown once, with at most the
roles their session holds), sees it listed without the secret, and revokes it — against a real server."""

from __future__ import annotations

import json
import re
from pathlib import Path

import httpx2

from tests.cli_in_process import hitl
from tests.inbox import csrf_of, make_site, serve
from tests.test_stored_sessions import signed_in
from tests.test_stored_tokens import initialize, made

NEW_TOKEN = re.compile(r'<code class="secret" id="new-token">([^<]+)</code>')


def test_a_person_makes_and_revokes_their_own_tokens_with_only_the_roles_they_hold(tmp_path: Path) -> None:
    site = make_site(tmp_path, tokens=True)
    dans = made(site.env, "dan", "--roles", "trader")
    with serve(site) as server, httpx2.Client(timeout=30) as dan, httpx2.Client(timeout=30) as alice:
        signed_in(dan, server.base, dans)
        page = dan.get(f"{server.base}/tokens")
        assert page.status_code == 200 and 'name="role:trader"' in page.text

        forged = dan.post(f"{server.base}/tokens", data={"name": "forged", "csrf": "wrong"})
        assert forged.status_code == 403
        made_page = dan.post(
            f"{server.base}/tokens",
            data={
                "csrf": csrf_of(page.text),
                "name": "dans-bot",
                "expires": "30d",
                "role:trader": "on",
                "role:risk_manager": "on",  # a role dan's session does not hold: never granted
            },
        )
        assert made_page.status_code == 200, made_page.text
        [secret] = NEW_TOKEN.findall(made_page.text)
        assert initialize(server.mcp, secret) == 200
        assert secret not in dan.get(f"{server.base}/tokens").text  # shown once

        listed = json.loads(hitl(site.env, "token", "list", "--json").stdout)
        [bot] = [row for row in listed if row["name"] == "dans-bot"]
        assert (bot["principal"], bot["roles"], bot["created_by"]) == ("dan", ["trader"], "dan")
        assert "forged" not in {row["name"] for row in listed}

        # Another person cannot revoke it, even knowing its id.
        signed_in(alice, server.base, site.tokens["alice"])
        theirs = alice.get(f"{server.base}/tokens")
        assert "dans-bot" not in theirs.text
        refused = alice.post(f"{server.base}/tokens/{bot['id']}/revoke", data={"csrf": csrf_of(theirs.text)})
        assert refused.status_code == 404 and initialize(server.mcp, secret) == 200

        mine = dan.get(f"{server.base}/tokens")
        revoked = dan.post(f"{server.base}/tokens/{bot['id']}/revoke", data={"csrf": csrf_of(mine.text)})
        assert revoked.status_code == 200 and "Revoked dans-bot" in revoked.text
        assert initialize(server.mcp, secret) == 401
