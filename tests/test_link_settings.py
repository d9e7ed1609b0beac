"""The settings that send decision links — `email_approvers`, `ntfy`, `ntfy_token`, `principal`,
`link_hours`, `[principals.NAME] email` — refused at start with one line naming the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from hitl_mcp.config import Settings, load_settings
from hitl_mcp.errors import ConfigError

PRINCIPALS = """
[principals.alice]
roles = ["trader"]
email = "Alice@Example.com"
"""
WEB = '\n[web]\npublic_url = "https://hitl.example.com"\n'


def load(tmp_path: Path, text: str) -> Settings:
    config = tmp_path / "hitl.toml"
    config.write_text(text, encoding="utf-8")
    return load_settings({"HITL_CONFIG": str(config), "HITL_DB": str(tmp_path / "hitl.db")})


def test_links_settings_load_and_name_what_they_send(tmp_path: Path) -> None:
    settings = load(
        tmp_path,
        PRINCIPALS
        + WEB
        + """
[[notify]]
on = ["filed"]
email_approvers = true
link_hours = 2

[[notify]]
on = ["filed"]
ntfy = "https://ntfy.example.com/approvals"
ntfy_token = "tk_secret"
principal = "alice"
""",
    )
    mail, push = settings.notifiers
    assert (mail.channel, mail.label, mail.link_hours) == ("email_approvers", "email to each approver", 2)
    # The topic (what keeps a public ntfy topic private) and the token are in no label.
    assert push.label == "ntfy https://ntfy.example.com/… as alice"
    assert settings.principals["alice"].email == "Alice@example.com"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            PRINCIPALS + '[[notify]]\non = ["filed"]\nemail_approvers = true\n',
            r"notify\[0\]\.email_approvers: .*public_url",
        ),
        (
            PRINCIPALS
            + WEB
            + '[[notify]]\non = ["filed"]\nntfy = "https://n.example.com/t"\nprincipal = "zed"\n',
            r"notify\[0\]\.principal: no \[principals\.zed\]",
        ),
        (
            PRINCIPALS
            + '[[notify]]\non = ["filed"]\nwebhook = "https://h.example.com/x"\nntfy_token = "t"\n',
            r"notify\[0\]\.ntfy_token: only an ntfy push",
        ),
        (
            PRINCIPALS + '[[notify]]\non = ["filed"]\nemail = "ops@example.com"\nlink_hours = 1\n',
            r"notify\[0\]\.link_hours: only entries that send decision links",
        ),
        (
            PRINCIPALS + WEB + '[[notify]]\non = ["filed"]\nemail_approvers = true\nlink_hours = 0\n',
            r"notify\[0\]\.link_hours",
        ),
        (PRINCIPALS + '[[notify]]\non = ["filed"]\nntfy = "ftp://n.example.com/t"\n', r"notify\[0\]\.ntfy"),
        ('[principals.bob]\nemail = "bob@example.com\\r\\nBcc: x@evil.example"\n', r"principals\.bob\.email"),
    ],
)
def test_a_bad_link_setting_is_refused_naming_its_key(tmp_path: Path, text: str, expected: str) -> None:
    with pytest.raises(ConfigError, match=expected):
        load(tmp_path, text)
