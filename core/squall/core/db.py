"""Database schema (SQLAlchemy Core) and engine. Schema changes go through Alembic migrations only."""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    PrimaryKeyConstraint,
    Table,
    Text,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB, UUID
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from squall.core.settings import Settings

metadata = MetaData()

TASK_KINDS = ("request", "poll")
TASK_STATES = ("queued", "running", "succeeded", "failed", "dead")
ITEM_STATES = ("pending", "running", "done", "failed")


tasks = Table(
    "tasks",
    metadata,
    Column("id", UUID(as_uuid=True), primary_key=True),
    Column("kind", Text, nullable=False),
    Column("state", Text, nullable=False, server_default="queued"),
    Column("attempts", Integer, nullable=False, server_default="0"),
    Column("error", Text),
    Column("rid", Text, comment="The request of a request task."),
    Column("processing", Text, comment="The processing of a poll task."),
    Column("batch_size", Integer),
    Column("items_processed", Integer, nullable=False, server_default="0"),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("started_at", DateTime(timezone=True)),
    Column("finished_at", DateTime(timezone=True)),
    CheckConstraint(f"kind IN {TASK_KINDS}", name="tasks_kind"),
    CheckConstraint(f"state IN {TASK_STATES}", name="tasks_state"),
    CheckConstraint("attempts >= 0", name="tasks_attempts"),
    CheckConstraint("(kind = 'request') = (rid IS NOT NULL)", name="tasks_request_has_rid"),
    CheckConstraint("(kind = 'poll') = (processing IS NOT NULL)", name="tasks_poll_has_processing"),
    Index("tasks_state_kind", "state", "kind"),
)

requests = Table(
    "requests",
    metadata,
    Column("rid", Text, primary_key=True),
    Column("rid_is_int", Boolean, nullable=False, server_default="false"),
    Column("task_id", UUID(as_uuid=True), ForeignKey("tasks.id"), nullable=False, unique=True),
    Column("items_hash", LargeBinary, nullable=False, comment="sha256 of the canonical items."),
    Column("item_count", Integer, nullable=False),
    Column(
        "payload",
        LargeBinary,
        comment="The items as accepted, kept until a processor records them (lets a lost event be re-sent).",
    ),
    Column("processed", Boolean, nullable=False, server_default="false"),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("recorded_at", DateTime(timezone=True)),
    Column("processed_at", DateTime(timezone=True)),
    CheckConstraint("item_count >= 1", name="requests_item_count"),
    CheckConstraint("(recorded_at IS NULL) = (payload IS NOT NULL)", name="requests_payload_until_recorded"),
    Index("requests_unrecorded", "created_at", postgresql_where=text("recorded_at IS NULL")),
)

items = Table(
    "items",
    metadata,
    Column("request_task_id", UUID(as_uuid=True), ForeignKey("tasks.id"), nullable=False),
    Column("position", Integer, nullable=False),
    Column("number", BigInteger, nullable=False),
    Column("job", Text, nullable=False),
    Column("state", Text, nullable=False, server_default="pending"),
    Column("result", JSONB),
    Column("error", Text),
    Column("attempts", Integer, nullable=False, server_default="0"),
    Column("claim_task_id", UUID(as_uuid=True), comment="The task that claimed (or last processed) it."),
    Column("lease_until", DateTime(timezone=True)),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    PrimaryKeyConstraint("request_task_id", "position", name="items_pkey"),
    CheckConstraint(f"state IN {ITEM_STATES}", name="items_state"),
    CheckConstraint("position >= 0", name="items_position"),
    CheckConstraint("(state = 'done') <= (result IS NOT NULL)", name="items_done_has_result"),
    CheckConstraint("(state = 'running') = (lease_until IS NOT NULL)", name="items_running_has_lease"),
    # The claim query: pending (or lease-expired running) items of one job, oldest first.
    Index(
        "items_claimable",
        "job",
        "created_at",
        postgresql_where=text("state IN ('pending', 'running')"),
    ),
)


def create_engine(settings: Settings, *, pool_size: int | None = None) -> AsyncEngine:
    return create_async_engine(
        settings.database_url,
        pool_size=pool_size or settings.database_pool_size,
        max_overflow=0,
        pool_pre_ping=True,
        pool_recycle=1800,
        # Statements are built per call from text(); asyncpg's own prepared-statement cache does the rest.
        connect_args={"server_settings": {"application_name": "squall"}},
    )
