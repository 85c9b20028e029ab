"""API access: bearer tokens with scopes, and per-client rate limits.

A token is ``sqt_`` and 43 URL-safe characters (256 random bits); only its SHA-256 digest is stored, in
PostgreSQL (``squall tokens create``) or in a tokens file (a mounted Secret). The scope ``admin`` grants
everything; ``submit`` and ``read`` are separate.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import logging
import os
import re
import secrets
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, TypeAdapter, ValidationError
from sqlalchemy.ext.asyncio import AsyncEngine

from squall.core.lifecycle import StartupError
from squall.core.rules import Scope
from squall.core.settings import AuthSettings
from squall.core.store import tokens

log = logging.getLogger(__name__)

TOKEN_PREFIX = "sqt_"
TOKEN_NAME = re.compile(r"[a-z0-9][a-z0-9_.-]{0,62}")
_CACHE_SIZE = 10_000


def new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def grants(scopes: frozenset[str], needed: Scope) -> bool:
    return needed in scopes or "admin" in scopes


@dataclass(frozen=True)
class Principal:
    """Who is calling: a token's name (or a client address when no token is needed) and its rights."""

    name: str
    scopes: frozenset[str]
    rate_per_second: float | None = None  # None: the default
    burst: int | None = None


class TokenEntry(BaseModel):
    """One token of a tokens file: its digest (preferred) or the token itself."""

    model_config = ConfigDict(extra="forbid")

    name: Annotated[str, StringConstraints(pattern=TOKEN_NAME.pattern + "$")]
    scopes: list[Scope] = Field(min_length=1)
    sha256: Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")] | None = None
    token: Annotated[str, StringConstraints(min_length=16, max_length=512)] | None = None
    rate_per_second: float | None = Field(None, ge=0)
    burst: int | None = Field(None, ge=1)

    def digest(self) -> str:
        if self.sha256:
            return self.sha256
        if self.token:
            return token_digest(self.token)
        raise ValueError(f"token {self.name!r}: give sha256 or token")

    def principal(self) -> Principal:
        return Principal(self.name, frozenset(self.scopes), self.rate_per_second, self.burst)


_ENTRIES = TypeAdapter(list[TokenEntry])


class TokensFileError(StartupError):
    pass


def read_tokens_file(path: str) -> dict[str, Principal]:
    """Tokens by digest; TokensFileError names what is wrong (never a token)."""
    try:
        entries = _ENTRIES.validate_python(json.loads(Path(path).read_bytes()))
        by_digest = {entry.digest(): entry.principal() for entry in entries}
    except OSError as exc:
        raise TokensFileError(f"tokens file {path}: cannot read it ({exc.strerror})") from None
    except json.JSONDecodeError as exc:
        raise TokensFileError(f"tokens file {path}: not JSON ({exc.msg} at line {exc.lineno})") from None
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors(include_input=False)
        )
        raise TokensFileError(f"tokens file {path}: {problems}") from None
    except ValueError as exc:
        raise TokensFileError(f"tokens file {path}: {exc}") from None
    if len(by_digest) != len(entries):
        raise TokensFileError(f"tokens file {path}: the same token appears twice")
    return by_digest


class TokensFile:
    """A tokens file read again when it changes (Kubernetes updates mounted Secrets in place)."""

    CHECK_EVERY_SECONDS = 5.0

    def __init__(self, path: str) -> None:
        self.path = path
        self._stamp: tuple[float, int] | None = None
        self._checked = 0.0
        self.tokens = read_tokens_file(path)  # a bad file at start stops the gateway
        self._stamp = self._file_stamp()

    def _file_stamp(self) -> tuple[float, int] | None:
        try:
            stat = os.stat(self.path)
        except OSError:
            return None
        return (stat.st_mtime, stat.st_size)

    def lookup(self, digest: str) -> Principal | None:
        now = time.monotonic()
        if now - self._checked >= self.CHECK_EVERY_SECONDS:
            self._checked = now
            stamp = self._file_stamp()
            if stamp != self._stamp:
                try:
                    self.tokens = read_tokens_file(self.path)
                    self._stamp = stamp
                    log.info("tokens file %s reloaded: %d tokens", self.path, len(self.tokens))
                except TokensFileError as exc:  # keep the last good tokens
                    log.error("%s; keeping the previous tokens", exc)
        return self.tokens.get(digest)


class RateLimiter:
    """Token buckets per client, in this process (each gateway replica limits on its own)."""

    def __init__(self, max_clients: int = 100_000) -> None:
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # key -> (tokens, at)
        self._max_clients = max_clients

    def take(self, key: str, rate: float, burst: int, now: float | None = None) -> float:
        """Spend one request; 0 when allowed, else the seconds until the next one is."""
        if rate <= 0:
            return 0.0
        now = time.monotonic() if now is None else now
        capacity = float(max(burst, 1))
        tokens, at = self._buckets.pop(key, (capacity, now))
        tokens = min(capacity, tokens + (now - at) * rate)
        if tokens >= 1.0:
            tokens -= 1.0
            wait = 0.0
        else:
            wait = (1.0 - tokens) / rate
        self._buckets[key] = (tokens, now)
        if len(self._buckets) > self._max_clients:
            self._buckets.popitem(last=False)  # the least recently seen client starts afresh
        return wait


class Authenticator:
    """Resolves bearer tokens (tokens file first, then PostgreSQL, cached) and applies rate limits."""

    def __init__(self, settings: AuthSettings, engine: AsyncEngine) -> None:
        self.settings = settings
        self.engine = engine
        self.file = TokensFile(settings.tokens_file) if settings.tokens_file else None
        self.limiter = RateLimiter()
        self._cache: OrderedDict[str, tuple[float, Principal | None]] = OrderedDict()
        self._legacy_networks = [
            ipaddress.ip_network(n, strict=False) for n in settings.legacy_trusted_networks
        ]

    async def principal(self, token: str) -> Principal | None:
        digest = token_digest(token)
        if self.file is not None and (found := self.file.lookup(digest)) is not None:
            return found
        now = time.monotonic()
        cached = self._cache.get(digest)
        if cached is not None and cached[0] > now:
            return cached[1]
        row = await tokens.find_token(self.engine, digest)
        principal = (
            Principal(row.name, frozenset(row.scopes), row.rate_per_second, row.burst) if row else None
        )
        if self.settings.cache_seconds > 0:
            self._cache[digest] = (now + self.settings.cache_seconds, principal)
            self._cache.move_to_end(digest)
            if len(self._cache) > _CACHE_SIZE:
                self._cache.popitem(last=False)
        return principal

    def legacy_trusted(self, address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ip in network for network in self._legacy_networks)

    def retry_after(self, principal: Principal) -> float:
        """Spend one request of ``principal``'s rate; the seconds to wait when over it, else 0."""
        if principal.name.startswith("address:"):
            rate = self.settings.anonymous_rate_per_second
            burst = self.settings.burst or max(1, round(rate))
        else:
            rate = (
                self.settings.rate_per_second
                if principal.rate_per_second is None
                else principal.rate_per_second
            )
            burst = principal.burst or self.settings.burst or max(1, round(rate))
        return self.limiter.take(principal.name, rate, burst)
