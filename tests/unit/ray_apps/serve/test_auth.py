"""API keys: parsing, the bearer header, constant-time check, key sources."""

from __future__ import annotations

import pytest

from cluster.core.errors import ConfigError, Unauthenticated
from cluster.core.settings import AuthSettings
from ray_apps.serve.auth import ApiKeys, bearer, parse_keys

KEY_A, KEY_B = "a" * 16 + "-secret-one", "b" * 16 + "-secret-two"


def test_keys_parse_from_commas_or_lines_with_comments():
    assert parse_keys(f"crm:{KEY_A}, bi:{KEY_B}", "env") == {"crm": KEY_A, "bi": KEY_B}
    assert parse_keys(f"# clients\ncrm:{KEY_A}\n\nbi:{KEY_B}\n", "file") == {"crm": KEY_A, "bi": KEY_B}


@pytest.mark.parametrize("text", ["crm", f":{KEY_A}", "crm:", "crm:short", f"crm:{KEY_A},crm:{KEY_B}"])
def test_malformed_keys_are_config_errors(text):
    with pytest.raises(ConfigError):
        parse_keys(text, "env")


def test_bearer_reads_the_authorization_entry_case_insensitively():
    assert bearer([("x-other", "1"), ("authorization", "Bearer tok")]) == "tok"
    assert bearer({"Authorization": "bearer  tok "}) == "tok"
    assert bearer([("authorization", "Basic tok")]) is None
    assert bearer([("authorization", "Bearer ")]) is None
    assert bearer(None) is None


def test_no_keys_means_an_open_api_and_keys_mean_every_call_is_checked():
    assert ApiKeys({}).check(None) is None and not ApiKeys({}).enabled
    keys = ApiKeys({"crm": KEY_A, "bi": KEY_B})
    assert keys.check(KEY_B) == "bi" and keys.check(KEY_A) == "crm"
    for token in (None, "", KEY_A + "x", KEY_A.upper()):
        with pytest.raises(Unauthenticated) as err:
            keys.check(token)
        assert err.value.field == "authorization"


def test_keys_come_from_the_environment_and_a_private_file(tmp_path):
    path = tmp_path / "api.keys"
    path.write_text(f"crm:{KEY_A}\n", encoding="utf-8")
    path.chmod(0o600)
    keys = ApiKeys.from_settings(AuthSettings(keys_file=path), env={"PMKT_API_KEYS": f"bi:{KEY_B}"})
    assert keys.clients == ["bi", "crm"]
    path.chmod(0o644)
    with pytest.raises(ConfigError, match="chmod 600"):
        ApiKeys.from_settings(AuthSettings(keys_file=path), env={})


def test_required_auth_without_keys_refuses_to_start():
    with pytest.raises(ConfigError, match="no API key"):
        ApiKeys.from_settings(AuthSettings(required=True), env={})
    assert not ApiKeys.from_settings(AuthSettings(), env={}).enabled
