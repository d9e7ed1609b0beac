"""`[slack]`, `[principals.NAME] slack_user` and `[[notify]] slack_channel`: a config that cannot work is
refused at start, in one line naming the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from hitl_mcp.config import Settings, load_settings
from hitl_mcp.errors import ConfigError
from hitl_mcp.web.slack import principal_of

SLACK = """
[slack]
bot_token = "${SLACK_BOT_TOKEN}"
signing_secret = "${SLACK_SIGNING_SECRET}"
"""
SECRETS = {"SLACK_BOT_TOKEN": "xoxb-1", "SLACK_SIGNING_SECRET": "s3cret"}


def load(tmp_path: Path, text: str, env: dict[str, str] | None = None) -> Settings:
    config = tmp_path / "hitl.toml"
    config.write_text(text, encoding="utf-8")
    return load_settings(
        {"HITL_CONFIG": str(config), "HITL_DB": str(tmp_path / "hitl.db"), **(env or SECRETS)}
    )


def test_a_slack_app_takes_its_secrets_from_the_environment_and_maps_users_to_principals(
    tmp_path: Path,
) -> None:
    settings = load(
        tmp_path,
        SLACK
        + """api_url = "http://127.0.0.1:9/api"
[[notify]]
on = ["filed"]
slack_channel = "C0123APPROVALS"
[principals.Alice]
slack_user = "U0ALICE"
""",
    )

    assert settings.slack is not None
    assert settings.slack.bot_token.get_secret_value() == "xoxb-1"
    assert settings.slack.signing_secret.get_secret_value() == "s3cret"
    assert settings.slack.api_url == "http://127.0.0.1:9/api/"
    assert principal_of(settings, "U0ALICE") == "alice"
    assert principal_of(settings, "U0BOB") is None
    [notifier] = settings.notifiers
    assert notifier.label == "slack channel C0123APPROVALS"
    # Decisions update the posted messages whatever `on` says.
    assert {"filed", "approved", "rejected", "executed", "expired"} <= notifier.hears


@pytest.mark.parametrize(
    ("text", "env", "refusal"),
    [
        (
            '[[notify]]\non = ["filed"]\nslack_channel = "C0123"\n',
            SECRETS,
            r"^notify\[0\]\.slack_channel: posting to Slack needs a \[slack\] table",
        ),
        (
            SLACK,
            {"SLACK_BOT_TOKEN": "xoxb-1"},
            r"^slack\.signing_secret: \$\{SLACK_SIGNING_SECRET\} is not set",
        ),
        (
            SLACK + '[principals.alice]\nslack_user = "U0SAME"\n[principals.bob]\nslack_user = "U0SAME"\n',
            SECRETS,
            r"^principals\.bob\.slack_user: U0SAME is already principals\.alice's",
        ),
        ('[principals.alice]\nslack_user = "alice"\n', SECRETS, r"^principals\.alice\.slack_user"),
        (
            '[[notify]]\non = ["filed"]\nslack_channel = "#approvals"\n',
            SECRETS,
            r"^notify\[0\]\.slack_channel",
        ),
        ('[slack]\nbot_token = "x"\n', SECRETS, r"^slack\.signing_secret"),
    ],
    ids=[
        "channel without app",
        "secret not set",
        "one user two principals",
        "not a user id",
        "a name",
        "no secret",
    ],
)
def test_a_slack_config_that_cannot_work_is_refused_naming_the_key(
    tmp_path: Path, text: str, env: dict[str, str], refusal: str
) -> None:
    with pytest.raises(ConfigError, match=refusal):
        load(tmp_path, text, env)
