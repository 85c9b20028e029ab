"""Settings: defaults, ``SQUALL_*`` environment variables, and errors naming the variable."""

from __future__ import annotations

import pytest

from squall.core.settings import (
    DEFAULT_DATABASE_URL,
    DEFAULT_NATS_URL,
    ProcessingOverride,
    Settings,
    SettingsError,
    load_settings,
    redact_url,
)


def test_defaults() -> None:
    settings = load_settings()
    assert isinstance(settings, Settings)
    assert settings.nats_url == DEFAULT_NATS_URL
    assert settings.database_url == DEFAULT_DATABASE_URL
    assert settings.database_pool_size == 10
    assert settings.log_format == "json"
    assert settings.log_level == "INFO"
    assert settings.instance_id == ""
    assert settings.processing_modules == []
    assert settings.processings == {}
    assert settings.gateway.host == "0.0.0.0"
    assert settings.gateway.port == 8888
    assert settings.gateway.max_items == 10_000
    assert settings.gateway.max_body_bytes == 4 * 1024 * 1024
    assert settings.gateway.max_rid_length == 128
    assert settings.processor.http_port == 9101
    assert settings.scheduler.http_port == 9102
    assert settings.scheduler.default_interval_seconds == 2.0
    assert settings.nats.stream_replicas == 1
    assert settings.nats.stream_max_bytes == -1
    assert (settings.nats.ping_interval_seconds, settings.nats.max_outstanding_pings) == (5.0, 2)


def test_nested_environment_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SQUALL_GATEWAY__PORT", "9000")
    monkeypatch.setenv("SQUALL_GATEWAY__MAX_ITEMS", "20")
    monkeypatch.setenv("SQUALL_PROCESSOR__FETCH_BATCH", "32")
    monkeypatch.setenv("SQUALL_NATS__CONNECT_TIMEOUT_SECONDS", "1.5")
    monkeypatch.setenv("SQUALL_LOG_FORMAT", "text")
    settings = load_settings()
    assert settings.gateway.port == 9000
    assert settings.gateway.max_items == 20
    assert settings.gateway.host == "0.0.0.0"  # the rest of the group keeps its defaults
    assert settings.processor.fetch_batch == 32
    assert settings.nats.connect_timeout_seconds == 1.5
    assert settings.log_format == "text"


def test_environment_variable_names_are_case_insensitive(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("squall_gateway__port", "9001")
    assert load_settings().gateway.port == 9001


def test_processing_override_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SQUALL_PROCESSINGS__SUM__MODE", "immediate")
    monkeypatch.setenv("SQUALL_PROCESSINGS__MUL__BATCH_SIZE", "7")
    monkeypatch.setenv("SQUALL_PROCESSINGS__MUL__CLAIM", "lease")
    settings = load_settings()
    assert settings.processings == {
        "sum": ProcessingOverride(mode="immediate"),
        "mul": ProcessingOverride(batch_size=7, claim="lease"),
    }
    assert settings.processings["sum"].batch_size is None


def test_processing_override_names_are_lower_cased() -> None:
    settings = load_settings(processings={"SUM": {"mode": "immediate"}})
    assert list(settings.processings) == ["sum"]


def test_processing_modules_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SQUALL_PROCESSING_MODULES", '["pkg.mod", "pkg.other:PROCESSINGS"]')
    assert load_settings().processing_modules == ["pkg.mod", "pkg.other:PROCESSINGS"]


def test_keyword_overrides() -> None:
    settings = load_settings(gateway={"port": 1234}, log_level="DEBUG")
    assert settings.gateway.port == 1234
    assert settings.log_level == "DEBUG"


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("SQUALL_GATEWAY__PORT", "abc"),
        ("SQUALL_GATEWAY__PORT", "70000"),
        ("SQUALL_GATEWAY__PORT", "-1"),
        ("SQUALL_GATEWAY__MAX_ITEMS", "0"),
        ("SQUALL_DATABASE_URL", "mysql://x"),
        ("SQUALL_DATABASE_URL", "sqlite:///tmp/db"),
        ("SQUALL_DATABASE_POOL_SIZE", "0"),
        ("SQUALL_NATS_URL", "http://127.0.0.1:4222"),
        ("SQUALL_NATS_URL", "nats://a:4222,http://b:4222"),
        ("SQUALL_LOG_FORMAT", "xml"),
        ("SQUALL_LOG_LEVEL", "LOUD"),
        ("SQUALL_PROCESSOR__ACK_WAIT_SECONDS", "0"),
        ("SQUALL_PROCESSINGS__SUM__MODE", "fast"),
        ("SQUALL_PROCESSINGS__SUM__BATCH_SIZE", "0"),
        ("SQUALL_PROCESSINGS__SUM__CLAIM", "grab"),
    ],
)
def test_bad_value_names_the_variable(monkeypatch: pytest.MonkeyPatch, variable: str, value: str) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(SettingsError) as info:
        load_settings()
    assert isinstance(info.value, SystemExit)
    message = str(info.value)
    assert message.startswith("invalid settings:")
    assert f"{variable}:" in message
    assert repr(value) in message


def test_every_bad_value_is_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SQUALL_GATEWAY__PORT", "abc")
    monkeypatch.setenv("SQUALL_DATABASE_URL", "mysql://x")
    with pytest.raises(SettingsError) as info:
        load_settings()
    assert "SQUALL_GATEWAY__PORT" in str(info.value)
    assert "SQUALL_DATABASE_URL" in str(info.value)


def test_bad_keyword_override_names_the_variable() -> None:
    with pytest.raises(SettingsError, match="SQUALL_GATEWAY__MAX_RID_LENGTH"):
        load_settings(gateway={"max_rid_length": 0})


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("mypackage.processings", ["mypackage.processings"]),
        ("a.b, c.d:PROCS", ["a.b", "c.d:PROCS"]),
        ('["a.b", "c"]', ["a.b", "c"]),
        ("", []),
    ],
)
def test_processing_modules_plain_comma_separated_or_json(
    monkeypatch: pytest.MonkeyPatch, value: str, expected: list[str]
) -> None:
    monkeypatch.setenv("SQUALL_PROCESSING_MODULES", value)
    assert load_settings().processing_modules == expected


def test_malformed_processing_modules_list_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SQUALL_PROCESSING_MODULES", '["unterminated')
    with pytest.raises(SettingsError, match="SQUALL_PROCESSING_MODULES"):
        load_settings()


def test_settings_error_does_not_reveal_a_database_password(monkeypatch: pytest.MonkeyPatch) -> None:
    # The message echoes the rejected value; redact_url exists to keep passwords out of error messages.
    monkeypatch.setenv("SQUALL_DATABASE_URL", "mysql://squall:hunter2@db.internal/squall")
    with pytest.raises(SettingsError) as info:
        load_settings()
    assert "SQUALL_DATABASE_URL" in str(info.value)
    assert "hunter2" not in str(info.value)


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("postgresql://u:p@h:5432/db", "postgresql+asyncpg://u:p@h:5432/db"),
        ("postgres://u@h/db", "postgresql+asyncpg://u@h/db"),
        ("postgresql+asyncpg://u@h/db", "postgresql+asyncpg://u@h/db"),
    ],
)
def test_database_url_is_made_asyncpg(monkeypatch: pytest.MonkeyPatch, given: str, expected: str) -> None:
    monkeypatch.setenv("SQUALL_DATABASE_URL", given)
    assert load_settings().database_url == expected
    monkeypatch.delenv("SQUALL_DATABASE_URL")
    assert load_settings(database_url=given).database_url == expected


@pytest.mark.parametrize(
    "url", ["nats://a:4222", "nats://a:4222, nats://b:4222", "tls://a:4222", "ws://a:8080", "wss://a"]
)
def test_nats_urls_accepted(monkeypatch: pytest.MonkeyPatch, url: str) -> None:
    monkeypatch.setenv("SQUALL_NATS_URL", url)
    assert load_settings().nats_url == url


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        (
            "postgresql+asyncpg://squall:s3cret@db:5432/squall",
            "postgresql+asyncpg://squall:***@db:5432/squall",
        ),
        ("postgresql://squall:p@ss:w@rd@db/squall", "postgresql://squall:***@db/squall"),
        ("postgresql://squall@db/squall", "postgresql://squall@db/squall"),
        ("nats://user:token@nats:4222", "nats://user:***@nats:4222"),
        ("nats://127.0.0.1:4222", "nats://127.0.0.1:4222"),
        ("not a url", "not a url"),
        ("", ""),
    ],
)
def test_redact_url(url: str, expected: str) -> None:
    assert redact_url(url) == expected


def test_redact_url_never_shows_the_password() -> None:
    for url in ["postgresql://u:topsecret@h/db", "nats://u:topsecret@h", "x://:topsecret@h"]:
        assert "topsecret" not in redact_url(url)
