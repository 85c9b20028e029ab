"""Settings: one object per process, read from ``SQUALL_*`` environment variables (``__`` nests).

Built in the entry point and passed down; nothing reads the environment at import time.
"""

from __future__ import annotations

import ipaddress
import json
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict
from pydantic_settings import SettingsError as PydanticSettingsError
from sqlalchemy.engine import make_url

from squall.core.rules import ProcessingMode
from squall.core.targets import redact_url, validate_target

DEFAULT_NATS_URL = "nats://127.0.0.1:4222"
DEFAULT_DATABASE_URL = "postgresql+asyncpg://postgres@127.0.0.1:5432/squall"


class GatewaySettings(BaseModel):
    host: str = Field("0.0.0.0", description="Address the HTTP API listens on.")
    max_connections: int = Field(
        10_000, ge=1, le=1_000_000, description="Open client connections; more are answered 503 and closed."
    )
    trust_forwarded_headers: bool = Field(
        False,
        description="Take the client address from X-Forwarded-For / X-Real-Ip (only behind a proxy that "
        "sets them): it decides per-address rate limits and legacy trusted networks.",
    )
    port: int = Field(8888, ge=0, le=65535, description="Port of the HTTP API (also /metrics, /healthz).")
    reuse_port: bool = Field(
        False,
        description="Let several gateway processes listen on one port (SO_REUSEPORT; Linux spreads the "
        "connections over them): one Python process uses one core. `squall dev --gateways N` sets it.",
    )
    max_items: int = Field(10_000, ge=1, le=1_000_000, description="Most items one request may carry (413).")
    max_body_bytes: int = Field(
        4 * 1024 * 1024, ge=1024, le=256 * 1024 * 1024, description="Largest request body accepted (413)."
    )
    max_rid_length: int = Field(128, ge=1, le=1024, description="Longest string rid accepted.")
    legacy_post_answer: Literal["original", "object"] = Field(
        "original",
        description="What POST /number_request answers: `original`, the original application's 201 body "
        '(the JSON text {"task_id": …} encoded again as a JSON string, which its own scripts send back '
        'as their status lookup); `object`, a plain JSON object {"task_id", "rid"}.',
    )
    publish_timeout_seconds: float = Field(
        5.0,
        gt=0,
        le=60,
        description="How long to wait for JetStream to ack an event before answering 503 (a broker that "
        "stops reading: up to twice this, the client's flush and then the ack wait).",
    )
    header_timeout_seconds: float = Field(
        10.0,
        gt=0,
        le=3600,
        description="Time a client has to send a request's headers (and idle keep-alive).",
    )
    body_timeout_seconds: float = Field(
        30.0,
        gt=0,
        le=3600,
        description="Time a client has to send a request's body (slow bodies are cut off).",
    )
    shutdown_delay_seconds: float = Field(
        2.0,
        ge=0,
        le=120,
        description="On SIGTERM, keep serving this long while /readyz answers 503, so load balancers stop "
        "sending new requests before the listener closes.",
    )
    max_backlog_items: int = Field(
        1_000_000,
        ge=0,
        description="Admission control: while more items than this wait to be processed (in requests not "
        "recorded yet, or recorded and pending), submissions are held, then answered 503 with Retry-After. "
        "Bounds the time from acceptance to processing; 0: no limit.",
    )
    admission_wait_seconds: float = Field(
        10.0,
        ge=0,
        le=300,
        description="How long a submission is held while the backlog is over its limit before it is answered "
        "503 (0: at once).",
    )


class OpsServerSettings(BaseModel):
    """Where a processor or a scheduler serves /metrics, /healthz and /readyz."""

    http_host: str = Field("0.0.0.0", description="Address serving /metrics, /healthz, /readyz.")


def _ops_port(default: int) -> Any:
    return Field(default, ge=0, le=65535, description="Port serving /metrics, /healthz, /readyz.")


class ProcessorSettings(OpsServerSettings):
    http_port: int = _ops_port(9101)
    fetch_batch: int = Field(256, ge=1, le=10_000, description="Request events fetched per pull.")
    max_ack_pending: int = Field(
        4096, ge=1, le=1_000_000, description="In-flight messages per consumer (bounds memory)."
    )
    ack_wait_seconds: float = Field(
        60.0, gt=0, le=3600, description="Redelivery delay for an unacked message (crash recovery)."
    )
    lease_seconds: float = Field(
        120.0,
        gt=0,
        le=86_400,
        description="How long a claimed batch stays owned before another processor may reclaim it.",
    )
    shutdown_grace_seconds: float = Field(
        20.0, ge=0, le=3600, description="Time to finish in-flight work on SIGTERM before handing it back."
    )
    stall_seconds: float = Field(
        900.0,
        gt=0,
        le=86_400,
        description="/readyz fails while a batch has been running this long (keep it above the longest "
        "processing timeout): a stuck worker is restarted instead of looking healthy.",
    )


class SchedulerSettings(OpsServerSettings):
    http_port: int = _ops_port(9102)
    default_interval_seconds: float = Field(
        2.0, gt=0, le=86_400, description="Polling interval of a batch processing with none of its own."
    )
    lease_seconds: float = Field(
        3.0,
        ge=1.5,
        le=60,
        description="Leadership lease; a dead leader is replaced within this plus one second.",
    )


class RetentionSettings(BaseModel):
    """How long finished work is kept in PostgreSQL; the scheduler's leader deletes what is older."""

    finished_seconds: float = Field(
        7 * 86_400,
        ge=0,
        description="A request whose items are all done is deleted, with its items, results and task, this "
        "long after it was processed; a finished poll task this long after it finished (0: kept forever).",
    )
    dead_seconds: float = Field(
        30 * 86_400,
        ge=0,
        description="Dead letters (a request with a failed item or a dead task, a dead poll task) are kept "
        "this long, for replay (0: kept forever).",
    )
    interval_seconds: float = Field(
        60.0, gt=0, le=86_400, description="How often the scheduler's leader runs a retention pass."
    )
    batch_size: int = Field(
        1000,
        ge=1,
        le=100_000,
        description="Requests (or poll tasks) deleted per statement: each statement is short, so intake and "
        "processing wait on none of its locks for long; a pass repeats until nothing expired is left.",
    )
    pause_seconds: float = Field(
        0.0,
        ge=0,
        le=60,
        description="Pause after each full batch of a pass, leaving the database to intake while a large "
        "backlog of expired work is cleared.",
    )


class NatsSettings(BaseModel):
    stream_replicas: int = Field(1, ge=1, le=5, description="JetStream replicas of Squall's streams.")
    duplicate_window_seconds: float = Field(
        120.0, gt=0, le=86_400, description="JetStream de-duplication window for message ids."
    )
    stream_max_bytes: int = Field(
        -1, ge=-1, description="Size limit of each stream in bytes (-1: unlimited)."
    )
    connect_timeout_seconds: float = Field(5.0, gt=0, le=120, description="Timeout of one connect attempt.")
    connect_retry_seconds: float = Field(
        60.0, ge=0, le=3600, description="How long to keep retrying the first connection before exiting."
    )
    ping_interval_seconds: float = Field(
        5.0,
        gt=0,
        le=600,
        description="How often a service pings its NATS server: one that answers no ping for "
        "max_outstanding_pings intervals (frozen, or cut off by the network with the TCP connection open) "
        "is left for another server of SQUALL_NATS_URL within about max_outstanding_pings + 1 intervals.",
    )
    max_outstanding_pings: int = Field(
        2, ge=1, le=100, description="Unanswered pings after which the NATS connection counts as dead."
    )
    user: str | None = Field(None, description="NATS user (user/password authentication).")
    password: SecretStr | None = Field(None, description="NATS password (user/password authentication).")
    credentials_file: str | None = Field(
        None, description="NATS .creds file (JWT and nkey seed), e.g. mounted from a Secret."
    )
    nkey_seed_file: str | None = Field(None, description="File holding an nkey seed (nkey authentication).")
    tls_ca_file: str | None = Field(None, description="CA bundle that signs the NATS server's certificate.")
    tls_cert_file: str | None = Field(None, description="Client certificate for mutual TLS.")
    tls_key_file: str | None = Field(None, description="Client key for mutual TLS.")

    @model_validator(mode="after")
    def _auth_choices(self) -> NatsSettings:
        if self.password is not None and self.user is None:
            raise ValueError("password needs user")
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError("tls_cert_file and tls_key_file go together")
        if sum(x is not None for x in (self.user, self.credentials_file, self.nkey_seed_file)) > 1:
            raise ValueError("choose one of user/password, credentials_file and nkey_seed_file")
        return self


class OtelSettings(BaseModel):
    """OpenTelemetry trace export (``pip install squall[otel]``); off by default. The exporter also honours
    the standard ``OTEL_EXPORTER_OTLP_*`` variables (headers, certificates, timeout, compression)."""

    enabled: bool = Field(False, description="Export spans over OTLP/HTTP (protobuf).")
    endpoint: str | None = Field(
        None,
        description="Full URL of the collector's traces endpoint, e.g. http://otel-collector:4318/v1/traces "
        "(default: OTEL_EXPORTER_OTLP_TRACES_ENDPOINT, else OTEL_EXPORTER_OTLP_ENDPOINT + /v1/traces, else "
        "http://localhost:4318/v1/traces).",
    )
    service_name: str | None = Field(
        None, description="service.name of the spans (default: OTEL_SERVICE_NAME, else squall-<role>)."
    )
    sample_ratio: float = Field(
        1.0,
        ge=0,
        le=1,
        description="Share of new traces exported (a caller's traceparent sampled flag decides for its "
        "trace).",
    )

    @field_validator("endpoint")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("http://", "https://")):
            raise ValueError("must be an http:// or https:// URL (OTLP over HTTP)")
        return value


class AuthSettings(BaseModel):
    required: bool = Field(
        True,
        description="Every API route but /v1/openapi.json and the probes needs a bearer token "
        "(squall dev turns this off).",
    )
    tokens_file: str | None = Field(
        None,
        description="JSON list of tokens ({name, scopes, sha256 or token, rate_per_second}), e.g. a "
        "mounted Secret; read again when it changes. Tokens made by `squall tokens create` live in "
        "PostgreSQL and work too.",
    )
    cache_seconds: float = Field(
        5.0, ge=0, le=3600, description="How long a token lookup is cached: a revocation takes this long."
    )
    rate_per_second: float = Field(
        1000.0, ge=0, description="Default requests per second per token (0: unlimited); tokens may override."
    )
    burst: int = Field(0, ge=0, description="Requests a token may send at once (0: one second's rate).")
    anonymous_rate_per_second: float = Field(
        0.0,
        ge=0,
        description="Requests per second per client address when no token is needed (0: unlimited).",
    )
    legacy_trusted_networks: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Opt-in for old clients that cannot send a token: addresses in these networks "
        "(comma separated CIDRs) may use /number_request without one.",
    )

    @field_validator("legacy_trusted_networks", mode="before")
    @classmethod
    def _networks(cls, value: object) -> object:
        if isinstance(value, str):
            value = [part.strip() for part in value.split(",") if part.strip()]
        if isinstance(value, list):
            for network in value:
                ipaddress.ip_network(str(network), strict=False)  # ValueError names the bad one
        return value


class ProcessingOverride(BaseModel):
    """Per-processing settings that override its registration, e.g. ``SQUALL_PROCESSINGS__SUM__MODE``."""

    mode: ProcessingMode | None = None
    batch_size: int | None = Field(None, ge=1, le=100_000)
    timeout_seconds: float | None = Field(None, gt=0, le=86_400)
    interval_seconds: float | None = Field(None, gt=0, le=86_400)
    claim: Literal["lease", "lock"] | None = Field(
        None, description="How a poll task holds the items it computes: lease (two writes) or lock (one)."
    )
    dependencies: list[str] | None = Field(
        None, description="Dependencies it needs (replaces the registration's)."
    )


class DependencyConfig(BaseModel):
    """A dependency from configuration (``SQUALL_DEPENDENCIES__<NAME>__KIND`` …): may be a command."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["http", "tcp", "sql", "command"]
    target: str = Field(min_length=1, max_length=2000)
    interval_seconds: float = Field(10.0, gt=0, le=86_400)
    timeout_seconds: float = Field(5.0, gt=0, le=3600)
    failure_threshold: int = Field(1, ge=1, le=1000)
    recovery_threshold: int = Field(1, ge=1, le=1000)

    @model_validator(mode="after")
    def _target(self) -> DependencyConfig:
        validate_target(self.kind, self.target)
        return self


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="SQUALL_", env_nested_delimiter="__", extra="ignore", validate_default=True
    )

    nats_url: str = Field(DEFAULT_NATS_URL, description="NATS server URL(s), comma separated.")
    database_url: str = Field(DEFAULT_DATABASE_URL, description="SQLAlchemy URL of PostgreSQL (asyncpg).")
    database_password_file: str | None = Field(
        None,
        description="File holding the PostgreSQL password (e.g. a mounted Secret); it replaces the URL's.",
    )
    database_pool_size: int = Field(10, ge=1, le=200, description="Connections per process.")
    database_timeout_seconds: float = Field(
        10.0,
        gt=0,
        le=3600,
        description="Longest wait for PostgreSQL on one call: a statement, a connection from the pool or a "
        "new connection. Past it the statement is cancelled and the caller answers 503 (intake) or retries "
        "later (processors), rather than hang on a database that stopped answering.",
    )
    database_pool_pre_ping: bool = Field(
        False,
        description="Test each pooled connection before use (a round trip each time); only for networks "
        "that drop idle connections silently.",
    )
    log_format: Literal["json", "text"] = Field("json", description="json in containers, text locally.")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    event_loop: Literal["uvloop", "asyncio"] = Field(
        "uvloop",
        description="The services' event loop: uvloop (less CPU per request; asyncio's own where uvloop "
        "is not installed) or asyncio.",
    )
    instance_id: str = Field(
        "", description="Name of this process in logs and task claims (default: host-pid)."
    )
    processing_modules: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Python modules (or module:attribute) whose Processing objects are registered: "
        "comma separated, or a JSON list.",
    )
    processings: dict[str, ProcessingOverride] = Field(default_factory=dict)
    dependencies: dict[str, DependencyConfig] = Field(
        default_factory=dict,
        description="Dependencies defined by the operator (the only ones that may be commands).",
    )
    gateway: GatewaySettings = Field(default_factory=GatewaySettings)  # type: ignore[arg-type]
    processor: ProcessorSettings = Field(default_factory=ProcessorSettings)  # type: ignore[arg-type]
    scheduler: SchedulerSettings = Field(default_factory=SchedulerSettings)  # type: ignore[arg-type]
    nats: NatsSettings = Field(default_factory=NatsSettings)  # type: ignore[arg-type]
    auth: AuthSettings = Field(default_factory=AuthSettings)  # type: ignore[arg-type]
    otel: OtelSettings = Field(default_factory=OtelSettings)  # type: ignore[arg-type]
    retention: RetentionSettings = Field(default_factory=RetentionSettings)  # type: ignore[arg-type]

    @field_validator("database_url")
    @classmethod
    def _asyncpg_url(cls, value: str) -> str:
        if value.startswith("postgresql://") or value.startswith("postgres://"):
            value = "postgresql+asyncpg://" + value.split("://", 1)[1]
        if not value.startswith("postgresql+asyncpg://"):
            raise ValueError("must be a PostgreSQL URL (postgresql:// or postgresql+asyncpg://)")
        return value

    @model_validator(mode="after")
    def _password_from_file(self) -> Settings:
        if self.database_password_file:
            try:
                password = Path(self.database_password_file).read_text().rstrip("\r\n")
            except OSError as exc:
                raise ValueError(f"SQUALL_DATABASE_PASSWORD_FILE: cannot read it ({exc.strerror})") from None
            url = make_url(self.database_url).set(password=password)
            self.database_url = url.render_as_string(hide_password=False)
        return self

    @field_validator("nats_url")
    @classmethod
    def _nats_url(cls, value: str) -> str:
        for server in value.split(","):
            if not server.strip().startswith(("nats://", "tls://", "ws://", "wss://")):
                raise ValueError("each server must start with nats://, tls://, ws:// or wss://")
        return value

    @field_validator("processing_modules", mode="before")
    @classmethod
    def _module_list(cls, value: object) -> object:
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                return json.loads(text)
            return [part.strip() for part in text.split(",") if part.strip()]
        return value

    @field_validator("processings", "dependencies", mode="before")
    @classmethod
    def _lower_names(cls, value: object) -> object:
        # Environment variable names arrive upper-cased on some platforms; processing names are lower case.
        if isinstance(value, dict):
            return {str(k).lower(): v for k, v in value.items()}
        return value


class SettingsError(SystemExit):
    """A bad setting: the process exits with a message naming the variable."""


def load_settings(**overrides: object) -> Settings:
    """Read and validate settings; on a bad value exit with a message naming the environment variable."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        lines = ["invalid settings:"]
        for err in exc.errors():
            given = err.get("input")
            if not err["loc"]:  # a rule across fields: its message names the variables
                lines.append(f"  {err['msg'].removeprefix('Value error, ')}")
                continue
            variable = "SQUALL_" + "__".join(str(part) for part in err["loc"]).upper()
            # Never echo a secret: URLs lose their password, secrets and whole sections are not repeated.
            if isinstance(given, dict | list) or any(w in variable for w in ("PASSWORD", "SECRET", "TOKEN")):
                lines.append(f"  {variable}: {err['msg']}")
                continue
            shown = redact_url(given)[:200] if isinstance(given, str) else repr(given)[:200]
            lines.append(f"  {variable}: {err['msg']} (got {shown!r})")
        raise SettingsError("\n".join(lines)) from None
    except PydanticSettingsError as exc:  # a value the environment source could not even parse
        raise SettingsError(f"invalid settings: {redact_url(str(exc))[:300]}") from None
