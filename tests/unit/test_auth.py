"""Pure pieces of access control: token format, scopes, rate limiter arithmetic, secret settings."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

from squall.core.broker import auth_options
from squall.core.settings import SettingsError, load_settings
from squall.gateway import auth


def test_tokens_are_random_and_stored_as_digests() -> None:
    first, second = auth.new_token(), auth.new_token()
    assert first != second and first.startswith("sqt_") and len(first) == 4 + 43
    assert auth.token_digest(first) != auth.token_digest(second)
    assert len(auth.token_digest(first)) == 64 and first not in auth.token_digest(first)


@pytest.mark.parametrize(
    ("scopes", "needed", "granted"),
    [
        ({"submit"}, "submit", True),
        ({"submit"}, "read", False),
        ({"read"}, "submit", False),
        ({"read"}, "admin", False),
        ({"admin"}, "submit", True),
        ({"admin"}, "read", True),
        ({"submit", "read"}, "admin", False),
    ],
)
def test_scopes(scopes: set[str], needed: str, granted: bool) -> None:
    assert auth.grants(frozenset(scopes), needed) is granted  # type: ignore[arg-type]


def test_rate_limiter_allows_a_burst_then_the_rate() -> None:
    limiter = auth.RateLimiter()
    assert [limiter.take("a", rate=2, burst=3, now=100.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert limiter.take("a", rate=2, burst=3, now=100.0) == pytest.approx(0.5)
    assert limiter.take("b", rate=2, burst=3, now=100.0) == 0.0  # clients are separate
    assert limiter.take("a", rate=2, burst=3, now=100.5) == 0.0  # half a second refills one
    assert limiter.take("a", rate=2, burst=3, now=100.5) > 0
    assert [limiter.take("a", rate=2, burst=3, now=200.0) for _ in range(4)][-1] > 0  # refill caps at burst
    assert limiter.take("a", rate=0, burst=1, now=200.0) == 0.0  # 0: unlimited


def test_rate_limiter_forgets_the_oldest_clients() -> None:
    limiter = auth.RateLimiter(max_clients=2)
    for key in ("a", "b", "c"):
        limiter.take(key, rate=1, burst=1, now=0.0)
    assert limiter.take("a", rate=1, burst=1, now=0.0) == 0.0  # "a" was dropped: a fresh bucket
    assert limiter.take("c", rate=1, burst=1, now=0.0) > 0


def test_database_password_from_a_file(tmp_path: Path) -> None:
    secret = tmp_path / "password"
    secret.write_text("p@ss:word/1\n")
    settings = load_settings(
        database_url="postgresql://squall@db.example:5432/squall", database_password_file=str(secret)
    )
    url = make_url(settings.database_url)
    assert url.password == "p@ss:word/1" and url.host == "db.example" and url.username == "squall"
    with pytest.raises(SettingsError) as missing:
        load_settings(database_password_file=str(tmp_path / "absent"))
    assert "SQUALL_DATABASE_PASSWORD_FILE" in str(missing.value)


@pytest.mark.parametrize(
    ("nats", "message"),
    [
        ({"password": "hunter22"}, "password needs user"),
        ({"user": "a", "credentials_file": "/x.creds"}, "choose one of"),
        ({"tls_cert_file": "/c.pem"}, "go together"),
    ],
)
def test_nats_credentials_are_checked_and_never_echoed(nats: dict[str, str], message: str) -> None:
    with pytest.raises(SettingsError) as caught:
        load_settings(nats=nats)
    assert "SQUALL_NATS" in str(caught.value) and message in str(caught.value)
    assert "hunter22" not in str(caught.value)


def test_a_bad_secret_value_is_not_echoed() -> None:
    with pytest.raises(SettingsError) as caught:
        load_settings(nats={"user": "a", "password": ["not", "a", "string", "hunter22"]})
    assert "SQUALL_NATS__PASSWORD" in str(caught.value) and "hunter22" not in str(caught.value)


def test_nats_connect_options() -> None:
    assert auth_options(load_settings().nats) == {}
    options = auth_options(load_settings(nats={"user": "squall", "password": "pw"}).nats)
    assert options == {"user": "squall", "password": "pw"}
    assert "pw" not in repr(load_settings(nats={"user": "squall", "password": "pw"}).nats)
    assert auth_options(load_settings(nats={"credentials_file": "/run/nats.creds"}).nats) == {
        "user_credentials": "/run/nats.creds"
    }
    assert auth_options(load_settings(nats={"nkey_seed_file": "/run/seed"}).nats) == {
        "nkeys_seed": "/run/seed"
    }


def test_legacy_networks_are_validated() -> None:
    with pytest.raises(SettingsError) as caught:
        load_settings(auth={"legacy_trusted_networks": "10.0.0.0/8,nonsense"})
    assert "SQUALL_AUTH__LEGACY_TRUSTED_NETWORKS" in str(caught.value)
    parsed = load_settings(auth={"legacy_trusted_networks": "10.0.0.0/8, ::1"}).auth.legacy_trusted_networks
    assert parsed == ["10.0.0.0/8", "::1"]
