"""API keys: parsing, the bearer header, constant-time check, key sources."""

from __future__ import annotations

import pytest

from cluster.core.errors import ConfigError, PermissionDenied, Unauthenticated
from cluster.core.settings import AuthSettings
from ray_apps.serve.auth import ADMIN, SCOPES, ApiKeys, ClientKey, bearer, parse_keys
from ray_apps.serve.services import SCOPE_NAMES, SERVICES

KEY_A, KEY_B = "a" * 16 + "-secret-one", "b" * 16 + "-secret-two"


def test_keys_parse_from_commas_or_lines_with_comments():
    every = {"crm": ClientKey(KEY_A), "bi": ClientKey(KEY_B)}
    assert parse_keys(f"crm:{KEY_A}, bi:{KEY_B}", "env") == every
    assert parse_keys(f"# clients\ncrm:{KEY_A}\n\nbi:{KEY_B}\n", "file") == every
    assert every["crm"].scopes == {ADMIN}


def test_an_entry_may_name_its_scopes():
    keys = parse_keys(f"crm:{KEY_A}:read+events\nbi:{KEY_B}:read", "file")
    assert keys["crm"].scopes == {"read", "events"} and keys["bi"].scopes == {"read"}


@pytest.mark.parametrize("text", [f"crm:{KEY_A}:write", f"crm:{KEY_A}:", f"crm:{KEY_A}:read+"])
def test_an_unknown_or_empty_scope_is_a_config_error_naming_the_client(text):
    with pytest.raises(ConfigError, match="'crm'") as err:
        parse_keys(text, "env")
    assert KEY_A not in err.value.message


def test_a_key_is_granted_only_its_scopes_and_admin_grants_all():
    keys = ApiKeys(parse_keys(f"reader:{KEY_A}:read, ops:{KEY_B}", "env"))
    assert keys.authorize(KEY_A, "read") == "reader"
    with pytest.raises(PermissionDenied, match="lacks scope 'decide'") as err:
        keys.authorize(KEY_A, "decide")
    assert err.value.field == "authorization"
    assert all(keys.authorize(KEY_B, s) == "ops" for s in SCOPE_NAMES)
    with pytest.raises(Unauthenticated):
        keys.authorize(None, "read")


def test_every_rpc_needs_a_known_scope_and_the_decisions_need_decide():
    assert SCOPE_NAMES | {ADMIN} == set(SCOPES)
    needed = {f"{s.service}.{rpc}": s.scope_for(rpc) for s in SERVICES for rpc in s.descriptor.methods_by_name}
    assert set(needed.values()) <= SCOPE_NAMES
    assert needed["OfferService.GenerateOffer"] == needed["BudgetService.OptimizeBudget"] == "decide"
    assert needed["EventService.TrackEvents"] == needed["ChannelService.ReportOutcome"] == "events"
    assert needed["ProfileService.GetProfile"] == "read"


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


def test_an_open_api_is_a_warning_and_a_keyed_one_is_not(caplog):
    from cluster.core.settings import ServeSettings
    from ray_apps.serve.auth import warn_if_open

    sv = ServeSettings()
    with caplog.at_level("WARNING", logger="ray_apps.serve.auth"):
        assert warn_if_open(ApiKeys({}), sv) is True
        assert warn_if_open(ApiKeys({"crm": KEY_A}), sv) is False
    warnings = [r for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and "API keys are off" in warnings[0].getMessage()
    assert str(sv.grpc_port) in warnings[0].getMessage()
