"""A real OpenID Provider for the sign-in tests: panva's `oidc-provider` (npm, pinned in interop/package.json)
run by interop/oidc_provider.mjs on loopback with its development login. `make interop-deps` installs it;
without it the tests skip, except under CI=true, where a missing provider fails the run."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from html.parser import HTMLParser
from typing import Any
from urllib.parse import parse_qsl, urljoin, urlsplit

import httpx2
import pytest

from tests.fs_upstream import BUNDLED_NODE, INTEROP, MODULES
from tests.postgres_cluster import free_port

SCRIPT = INTEROP / "oidc_provider.mjs"
START_SECONDS = 30.0


@dataclass(frozen=True)
class Provider:
    issuer: str
    client_id: str
    client_secret: str


@contextmanager
def oidc_provider(
    redirect_uris: list[str],
    *,
    accounts: Mapping[str, Mapping[str, Any]] | None = None,
    claims_in_id_token: bool = True,
    client_secret: str = "inbox-secret-for-tests",  # noqa: S107 - a throwaway provider's client
) -> Iterator[Provider]:
    """A provider with one confidential client, `hitl-inbox`, that may return to `redirect_uris`."""
    if not BUNDLED_NODE.is_file() or not (MODULES / "oidc-provider").is_dir():
        missing = "the OpenID Provider (npm oidc-provider) is not installed: make interop-deps"
        if os.environ.get("CI") == "true":
            pytest.fail(missing)
        pytest.skip(missing)
    port = free_port()
    client = {
        "client_id": "hitl-inbox",
        "client_secret": client_secret,
        "redirect_uris": redirect_uris,
        "post_logout_redirect_uris": [urljoin(uri, "/login") for uri in redirect_uris],
        "grant_types": ["authorization_code"],
        "response_types": ["code"],
    }
    env = {
        "PATH": os.environ.get("PATH", ""),
        "OIDC_PORT": str(port),
        "OIDC_CLIENTS": json.dumps([client]),
        "OIDC_ACCOUNTS": json.dumps(accounts or {}),
        "OIDC_ID_TOKEN_CLAIMS": "all" if claims_in_id_token else "none",
    }
    process = subprocess.Popen(
        [str(BUNDLED_NODE), str(SCRIPT)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env=env,
        text=True,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()  # "ready ISSUER", or nothing when it died
        if not line.startswith("ready "):
            raise RuntimeError(f"the OpenID Provider did not start (exit {process.wait(START_SECONDS)})")
        yield Provider(line.split()[1], "hitl-inbox", client_secret)
    finally:
        if process.stdin is not None:
            process.stdin.close()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)


class _Form(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.action: str | None = None
        self.fields: dict[str, str] = {}

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        if tag == "form" and self.action is None:
            self.action = found.get("action")
        elif tag == "input" and found.get("name"):
            self.fields[str(found["name"])] = found.get("value") or ""


async def sign_in_at_provider(authorization_url: str, login: str, redirect_uri: str) -> dict[str, str]:
    """Drive the provider's development login as a browser would, and return the query it sends back to
    `redirect_uri` (code, state, iss) without following it there."""
    async with httpx2.AsyncClient(timeout=20) as browser:
        url = authorization_url
        for _ in range(12):
            response = await browser.get(url)
            if response.status_code in (302, 303) and response.headers["location"].startswith(redirect_uri):
                return dict(parse_qsl(urlsplit(response.headers["location"]).query))
            if response.is_redirect:
                url = urljoin(url, response.headers["location"])
                continue
            form = _Form()
            form.feed(response.text)
            if form.action is None:
                raise AssertionError(f"no form at {url}: {response.status_code} {response.text[:300]}")
            fields = (
                form.fields | {"login": login, "password": "any"} if "login" in form.fields else form.fields
            )
            posted = await browser.post(urljoin(url, form.action), data=fields)
            location = posted.headers.get("location", "")
            if location.startswith(redirect_uri):
                return dict(parse_qsl(urlsplit(location).query))
            url = urljoin(url, location)
    raise AssertionError("the provider never sent the browser back")
