"""Dependency targets and the URLs in them: checked before they are stored or run, and shown without their
passwords. Settings, the operator API and the checks all validate a target here."""

from __future__ import annotations

import ipaddress
import shlex
from urllib.parse import urlsplit

from squall.core.rules import DEPENDENCY_KINDS

SQL_SCHEMES = ("postgresql", "postgres", "postgresql+asyncpg")


def redact_url(url: str) -> str:
    """Hide the password of a URL for logs and error messages."""
    if "://" not in url or "@" not in url:
        return url
    scheme, rest = url.split("://", 1)
    credentials, host = rest.rsplit("@", 1)
    user = credentials.split(":", 1)[0]
    return f"{scheme}://{user}:***@{host}" if ":" in credentials else f"{scheme}://{user}@{host}"


def validate_target(kind: str, target: str) -> None:
    """Raise ValueError (a message fit for a 422, without the password) unless ``target`` suits ``kind``."""
    if kind not in DEPENDENCY_KINDS:
        raise ValueError(f"unknown dependency kind {kind!r}: expected one of {', '.join(DEPENDENCY_KINDS)}")
    if not isinstance(target, str) or not target.strip():
        raise ValueError(f"a {kind} dependency needs a non-empty target")
    if "\x00" in target:
        raise ValueError("the target contains a NUL character")
    if kind == "http":
        _validate_http(target)
    elif kind == "tcp":
        split_host_port(target)
    elif kind == "sql":
        _validate_sql(target)
    else:
        split_command(target)


def _validate_http(target: str) -> None:
    try:
        parts = urlsplit(target)
        parts.port  # noqa: B018 - raises ValueError when the port is not a number in range
    except ValueError:
        raise ValueError(f"http target {redact_url(target)!r} is not a valid URL") from None
    if parts.scheme.lower() not in ("http", "https"):
        raise ValueError(f"http target {redact_url(target)!r} must start with http:// or https://")
    if not parts.hostname:
        raise ValueError(f"http target {redact_url(target)!r} names no host")
    if any(c.isspace() for c in target):
        raise ValueError(f"http target {redact_url(target)!r} contains white space")


def split_host_port(target: str) -> tuple[str, int]:
    host, colon, port_text = target.rpartition(":")
    if not colon or not host:
        raise ValueError(f"tcp target {target!r} must be host:port (or [ipv6]:port)")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"tcp target {target!r}: {host!r} is not an IPv6 address") from None
    elif ":" in host or "[" in host or "]" in host:
        raise ValueError(f"tcp target {target!r}: write an IPv6 address in brackets, as [::1]:5432")
    if not host or any(c.isspace() or c == "/" for c in host):
        raise ValueError(f"tcp target {target!r} names no valid host")
    _check_port(port_text, f"tcp target {target!r}")
    return host, int(port_text)


def _check_port(text: str, where: str) -> None:
    if not (text.isascii() and text.isdigit() and 1 <= int(text) <= 65535):
        raise ValueError(f"{where}: port must be a number from 1 to 65535")


def _validate_sql(target: str) -> None:
    scheme, sep, rest = target.partition("://")
    if not sep or scheme.lower() not in SQL_SCHEMES:
        raise ValueError(
            f"sql target {redact_url(target)!r} must be a PostgreSQL URL "
            "(postgresql://, postgres:// or postgresql+asyncpg://)"
        )
    # Hosts (several, comma separated, are allowed) sit between the credentials and the path.
    netloc = rest.split("/", 1)[0].split("?", 1)[0].rsplit("@", 1)[-1]
    for host in netloc.split(","):
        if host.startswith("["):
            _, bracket, after = host[1:].partition("]")
            if not bracket:
                raise ValueError(f"sql target {redact_url(target)!r}: unclosed bracket in the host")
            if after:
                if not after.startswith(":"):
                    raise ValueError(f"sql target {redact_url(target)!r}: malformed host {host!r}")
                _check_port(after[1:], f"sql target {redact_url(target)!r}")
        elif ":" in host:
            _check_port(host.rsplit(":", 1)[1], f"sql target {redact_url(target)!r}")


def split_command(target: str) -> list[str]:
    try:
        argv = shlex.split(target)
    except ValueError as exc:
        raise ValueError(f"command target is not a valid command line: {exc}") from None
    if not argv:
        raise ValueError("command target is empty")
    return argv
