"""Signing in through a real OpenID Provider (panva's oidc-provider on loopback): who a sign-in names, and
every way a callback that should sign nobody in is refused."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from hitl_mcp.config import OidcSettings
from hitl_mcp.web.sso import SignInRefused, SingleSignOn
from tests.oidc_provider import Provider, oidc_provider, sign_in_at_provider

CALLBACK = "http://127.0.0.1:8000/auth/callback"
ACCOUNTS = {"alice": {"email": "Alice@Example.com", "groups": ["Trader", "risk"]}}
BROWSER = "the-browser-cookie"


def sso_for(provider: Provider, **overrides: object) -> SingleSignOn:
    settings = OidcSettings.model_validate(
        {
            "issuer": provider.issuer,
            "client_id": provider.client_id,
            "client_secret": provider.client_secret,
            "roles_claim": "groups",
            "scopes": ["openid", "email", "groups"],
        }
        | overrides
    )
    return SingleSignOn(settings, CALLBACK)


@pytest.fixture(scope="module")
def provider() -> Iterator[Provider]:
    with oidc_provider([CALLBACK], accounts=ACCOUNTS) as running:
        yield running


async def test_a_sign_in_names_the_principal_and_roles_from_the_claims(provider: Provider) -> None:
    sso = sso_for(provider)
    answer = await sign_in_at_provider(await sso.begin(BROWSER, "/requests/ab12"), "alice", CALLBACK)
    signed_in, next_path = await sso.finish(answer, BROWSER)
    assert signed_in.principal == "alice@example.com"  # case-folded, as every principal
    assert signed_in.roles == ("risk", "trader")
    assert signed_in.subject == "alice"
    assert next_path == "/requests/ab12"


async def test_claims_missing_from_the_id_token_come_from_userinfo() -> None:
    with oidc_provider([CALLBACK], accounts=ACCOUNTS, claims_in_id_token=False) as provider:
        sso = sso_for(provider)
        answer = await sign_in_at_provider(await sso.begin(BROWSER), "alice", CALLBACK)
        signed_in, _ = await sso.finish(answer, BROWSER)
    assert (signed_in.principal, signed_in.roles) == ("alice@example.com", ("risk", "trader"))


async def test_a_replayed_callback_signs_nobody_in(provider: Provider) -> None:
    sso = sso_for(provider)
    answer = await sign_in_at_provider(await sso.begin(BROWSER), "alice", CALLBACK)
    await sso.finish(answer, BROWSER)
    with pytest.raises(SignInRefused, match="already used"):
        await sso.finish(answer, BROWSER)


async def test_a_callback_in_another_browser_signs_nobody_in(provider: Provider) -> None:
    sso = sso_for(provider)
    answer = await sign_in_at_provider(await sso.begin(BROWSER), "alice", CALLBACK)
    with pytest.raises(SignInRefused, match="another browser"):
        await sso.finish(answer, "an-attackers-cookie")
    with pytest.raises(SignInRefused, match="already used"):  # and the attempt spent it
        await sso.finish(answer, BROWSER)


async def test_a_forged_state_signs_nobody_in(provider: Provider) -> None:
    sso = sso_for(provider)
    answer = await sign_in_at_provider(await sso.begin(BROWSER), "alice", CALLBACK)
    with pytest.raises(SignInRefused, match="unknown"):
        await sso.finish(answer | {"state": "forged"}, BROWSER)


async def test_an_answer_claiming_another_issuer_signs_nobody_in(provider: Provider) -> None:
    sso = sso_for(provider)
    answer = await sign_in_at_provider(await sso.begin(BROWSER), "alice", CALLBACK)
    with pytest.raises(SignInRefused, match="another provider"):
        await sso.finish(answer | {"iss": "http://127.0.0.1:1/"}, BROWSER)


async def test_a_code_is_not_redeemed_with_a_wrong_client_secret(provider: Provider) -> None:
    sso = sso_for(provider, client_secret="not-the-secret")
    answer = await sign_in_at_provider(await sso.begin(BROWSER), "alice", CALLBACK)
    with pytest.raises(SignInRefused, match="refused \\(token\\)"):
        await sso.finish(answer, BROWSER)


async def test_a_claim_that_is_no_principal_name_signs_nobody_in(provider: Provider) -> None:
    sso = sso_for(provider, principal_claim="groups")
    answer = await sign_in_at_provider(await sso.begin(BROWSER), "alice", CALLBACK)
    with pytest.raises(SignInRefused, match="no 'groups' claim to name you by"):
        await sso.finish(answer, BROWSER)


async def test_signing_out_offers_the_providers_end_session(provider: Provider) -> None:
    sso = sso_for(provider)
    answer = await sign_in_at_provider(await sso.begin(BROWSER), "alice", CALLBACK)
    signed_in, _ = await sso.finish(answer, BROWSER)
    url = sso.end_session_url(signed_in.id_token, "http://127.0.0.1:8000/login")
    assert url is not None and url.startswith(f"{provider.issuer}/session/end?")
    assert "id_token_hint=" in url
