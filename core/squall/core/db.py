"""Database schema (SQLAlchemy Core) and engine. Schema changes go through Alembic migrations only."""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    DateTime,
    Float,
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
from sqlalchemy.dialects.postgresql import ARRAY, JSONB, UUID
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from squall.core import metrics
from squall.core.rules import (
    DEPENDENCY_KINDS,
    DEPENDENCY_STATES,
    ITEM_STATES,
    MISFIRE_POLICIES,
    SCOPES,
    TASK_KINDS,
    TASK_STATES,
    TICK_OUTCOMES,
)
from squall.core.settings import Settings

metadata = MetaData()


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
    Index("tasks_dead_processing", "processing", postgresql_where=text("state = 'dead'")),
    # GET /v1/tasks pages newest first: read from here, not by sorting the whole table (migration 0014).
    Index("tasks_newest_first", "created_at", "id"),
    # Retention takes the oldest finished poll tasks first (migration 0015).
    Index(
        "tasks_poll_finished_at",
        "finished_at",
        postgresql_where=text("kind = 'poll' AND finished_at IS NOT NULL"),
    ),
)

requests = Table(
    "requests",
    metadata,
    Column("rid", Text, primary_key=True),
    Column("rid_is_int", Boolean, nullable=False, server_default="false"),
    # No foreign key to tasks: the task row is inserted by the same statement (migration 0007).
    Column("task_id", UUID(as_uuid=True), nullable=False, unique=True),
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
    # Defined by the payload, not recorded_at: statements that find requests by key and say "recorded_at IS
    # NULL" must not be planned on this index (migration 0006).
    Index(
        "requests_awaiting_record",
        "created_at",
        postgresql_include=["item_count"],
        postgresql_where=text("payload IS NOT NULL"),
    ),
    # Retention takes the oldest processed requests first (migration 0015).
    Index("requests_processed_at", "processed_at", postgresql_where=text("processed")),
    # Rows up to a page are stored uncompressed: pglz on every payload cost a fifth of PostgreSQL's CPU on
    # 100-item requests (migration 0013).
    postgresql_with={"toast_tuple_target": 8160},
)

items = Table(
    "items",
    metadata,
    # No foreign key: checked row by row, it tripled the cost of inserting items, and the one statement that
    # inserts them does so for requests it has just recorded, whose task exists (migration 0007).
    Column("request_task_id", UUID(as_uuid=True), nullable=False),
    Column("position", Integer, nullable=False),
    Column("number", BigInteger, nullable=False),
    Column("job", Text, nullable=False),
    Column("state", Text, nullable=False, server_default="pending"),
    Column("result", JSONB),
    Column("error", Text),
    Column("attempts", Integer, nullable=False, server_default="0"),
    Column("claim_task_id", UUID(as_uuid=True), comment="The task that claimed (or last processed) it."),
    Column("lease_until", DateTime(timezone=True)),
    Column(
        "not_before",
        DateTime(timezone=True),
        comment="A pending item retried after a failure waits until then.",
    ),
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
    # Retention tells a request with a failed item (a dead letter, kept longer) by index (migration 0016).
    Index("items_failed", "request_task_id", postgresql_where=text("state = 'failed'")),
)


# Items of a ``claim="lock"`` batch processing wait for their first poll as one row per request and
# processing (at most the processing's batch_size items each): recorded, then written once into ``items``
# with their outcome, instead of inserted pending and updated (migration 0008).
item_chunks = Table(
    "item_chunks",
    metadata,
    Column("request_task_id", UUID(as_uuid=True), nullable=False),
    Column("part", Integer, nullable=False, comment="The chunk's index among its request's chunks."),
    Column("job", Text, nullable=False),
    Column("item_count", Integer, nullable=False),
    Column("positions", ARRAY(Integer), nullable=False),
    Column("numbers", ARRAY(BigInteger), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    PrimaryKeyConstraint("request_task_id", "part", name="item_chunks_pkey"),
    CheckConstraint(
        "item_count = cardinality(positions) AND item_count = cardinality(numbers) AND item_count > 0",
        name="item_chunks_counts",
    ),
    # take_item_chunks: a job's chunks, oldest first.
    Index("item_chunks_queue", "job", "created_at", postgresql_include=["item_count"]),
)


# A request's items of one processing that are all done — computed when recorded, or a chunk all done by
# one poll task — are one row: the arrays in item order (migration 0010). The view ``all_items`` (same
# migration) shows every item, whichever of items, item_chunks and item_results holds it.
item_results = Table(
    "item_results",
    metadata,
    Column("request_task_id", UUID(as_uuid=True), nullable=False),
    Column(
        "part",
        Integer,
        nullable=False,
        comment="Unique among the request's chunks and result rows (a chunk done keeps its part).",
    ),
    Column("job", Text, nullable=False),
    Column("item_count", Integer, nullable=False),
    Column("positions", ARRAY(Integer), nullable=False),
    Column("numbers", ARRAY(BigInteger), nullable=False),
    Column("results", JSONB, nullable=False),
    Column(
        "claim_task_id",
        UUID(as_uuid=True),
        comment="The poll task that computed them; NULL: computed when recorded.",
    ),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    PrimaryKeyConstraint("request_task_id", "part", name="item_results_pkey"),
    CheckConstraint(
        "item_count > 0 AND item_count = cardinality(positions) AND item_count = cardinality(numbers) "
        "AND item_count = jsonb_array_length(results)",
        name="item_results_counts",
    ),
    postgresql_with={"toast_tuple_target": 8160},  # as requests (migration 0013)
)


# --- counts (see store.counters.read_stats) ----------------------------------------------------------

# requests_accepted and items_accepted are kept by triggers on requests (migration 0011), the others by the
# statements that record requests and finish items.
STAT_COUNTERS = (
    "requests_accepted",
    "items_accepted",
    "requests_recorded",
    "requests_processed",
    "items_recorded",
    "items_done",
    "items_failed",
)
_COUNTER_CHECK = f"counter IN {STAT_COUNTERS}"

stat_totals = Table(
    "stat_totals",
    metadata,
    Column("counter", Text, nullable=False),
    Column("processing", Text, nullable=False, comment="'' for request counters."),
    Column("n", BigInteger, nullable=False),
    PrimaryKeyConstraint("counter", "processing", name="stat_totals_pkey"),
    CheckConstraint(_COUNTER_CHECK, name="stat_totals_counter"),
    comment="Folded counts (see stat_deltas).",
)

# Appended to by every transaction that changes a count (no row lock: concurrent writers never wait on a
# counter row), folded into stat_totals every few seconds by the processors.
stat_deltas = Table(
    "stat_deltas",
    metadata,
    Column("counter", Text, nullable=False),
    Column("processing", Text, nullable=False),
    Column("n", BigInteger, nullable=False),
    CheckConstraint(_COUNTER_CHECK, name="stat_deltas_counter"),
    comment="Changes of the counts not folded into stat_totals yet.",
)


# Every statement is planned for its parameters (a generic plan is fixed on a connection's sixth execution
# of a statement, from the statistics of that moment, and a plan made while a table was nearly empty, a
# sequential scan, then stays for the connection's life as the table grows) ...
_PLANNED_PER_EXECUTION = {"plan_cache_mode": "force_custom_plan"}
# ... except on the connections that run only the hot statements (the gateway's intake INSERT, the
# processors' recording), found by key: planning was a large share of PostgreSQL's time on them
# (docs/history/benchmarks.md), so each is planned once per connection, and with sequential scans disabled
# that one plan finds rows by index whatever the tables held when it was made (joins stay free: between the
# statement's own row sets a nested loop would cost rows x rows). JIT off: a disabled path's cost would make
# every execution compile.
_PLANNED_ONCE_BY_INDEX = {"plan_cache_mode": "force_generic_plan", "enable_seqscan": "off", "jit": "off"}


def create_engine(
    settings: Settings, *, pool_size: int | None = None, hot_statements: bool = False
) -> AsyncEngine:
    """The process's connection pool; ``hot_statements``: a pool for the hot statements alone (above)."""
    planning = _PLANNED_ONCE_BY_INDEX if hot_statements else _PLANNED_PER_EXECUTION
    engine = create_async_engine(
        settings.database_url,
        pool_size=pool_size or settings.database_pool_size,
        max_overflow=0,
        # No ping per checkout (a round trip per request): a connection found dead when used is
        # invalidated with every older one, so a database restart costs each pool one failed call.
        pool_pre_ping=settings.database_pool_pre_ping,
        pool_recycle=1800,
        # Every wait on PostgreSQL is bounded: a server that stops answering (frozen, or a network that
        # drops packets without a reset) would otherwise hold a submission until TCP gives up.
        pool_timeout=settings.database_timeout_seconds,
        # Statements are built per call from text(); asyncpg's own prepared-statement cache does the rest.
        connect_args={
            "server_settings": {"application_name": "squall", **planning},
            "command_timeout": settings.database_timeout_seconds,
            "timeout": settings.database_timeout_seconds,
        },
    )
    metrics.watch_pool(engine.pool)
    return engine


# --- scheduler ---------------------------------------------------------------------------------------------


schedules = Table(
    "schedules",
    metadata,
    Column("name", Text, primary_key=True),
    Column("processing", Text, nullable=False),
    Column("interval_seconds", Float),
    Column("cron", Text),
    Column("timezone", Text, nullable=False, server_default="UTC"),
    Column("enabled", Boolean, nullable=False, server_default="true"),
    Column("batch_size", Integer, nullable=False),
    Column("max_batches_per_tick", Integer, nullable=False, server_default="64"),
    Column("misfire_policy", Text, nullable=False, server_default="run_once"),
    Column("catch_up_limit", Integer, nullable=False, server_default="10"),
    Column("jitter_seconds", Float, nullable=False, server_default="0"),
    Column("next_due_at", DateTime(timezone=True), nullable=False),
    Column(
        "origin", Text, nullable=False, server_default="api", comment="default (from a registration) or api"
    ),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    CheckConstraint("(interval_seconds IS NULL) <> (cron IS NULL)", name="schedules_interval_xor_cron"),
    CheckConstraint("interval_seconds > 0", name="schedules_interval_positive"),
    CheckConstraint("batch_size >= 1", name="schedules_batch_size"),
    CheckConstraint("max_batches_per_tick >= 1", name="schedules_max_batches"),
    CheckConstraint(f"misfire_policy IN {MISFIRE_POLICIES}", name="schedules_misfire_policy"),
    CheckConstraint("catch_up_limit >= 1", name="schedules_catch_up_limit"),
    CheckConstraint("jitter_seconds >= 0", name="schedules_jitter"),
    CheckConstraint("origin IN ('default', 'api')", name="schedules_origin"),
)

schedule_ticks = Table(
    "schedule_ticks",
    metadata,
    Column("schedule", Text, ForeignKey("schedules.name", ondelete="CASCADE"), nullable=False),
    Column("due_at", DateTime(timezone=True), nullable=False),
    Column("outcome", Text, nullable=False),
    Column("tasks", Integer, nullable=False, server_default="0"),
    Column("detail", Text),
    Column("leader_epoch", BigInteger, nullable=False),
    Column("emitted_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    PrimaryKeyConstraint("schedule", "due_at", name="schedule_ticks_pkey"),
    CheckConstraint(f"outcome IN {TICK_OUTCOMES}", name="schedule_ticks_outcome"),
    Index("schedule_ticks_emitted_at", "emitted_at"),
)

scheduler_leader = Table(
    "scheduler_leader",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("holder", Text),
    Column("epoch", BigInteger, nullable=False, server_default="0"),
    Column("expires_at", DateTime(timezone=True)),
    Column("acquired_at", DateTime(timezone=True)),
    CheckConstraint("id = 1", name="scheduler_leader_single_row"),
    comment="The leadership lease: one row; the epoch grows at every change of leader (a fencing token).",
)

scheduler_instances = Table(
    "scheduler_instances",
    metadata,
    Column("id", Text, primary_key=True),
    Column("host", Text, nullable=False),
    Column("started_at", DateTime(timezone=True), nullable=False),
    Column("last_seen", DateTime(timezone=True), nullable=False),
)

dependencies = Table(
    "dependencies",
    metadata,
    Column("name", Text, primary_key=True),
    Column("kind", Text, nullable=False),
    Column("target", Text, nullable=False),
    Column("interval_seconds", Float, nullable=False, server_default="10"),
    Column("timeout_seconds", Float, nullable=False, server_default="5"),
    Column("failure_threshold", Integer, nullable=False, server_default="1"),
    Column("recovery_threshold", Integer, nullable=False, server_default="1"),
    Column("state", Text, nullable=False, server_default="unknown"),
    Column("since", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("last_error", Text),
    Column("last_checked_at", DateTime(timezone=True)),
    Column("consecutive_failures", Integer, nullable=False, server_default="0"),
    Column("consecutive_successes", Integer, nullable=False, server_default="0"),
    Column("origin", Text, nullable=False, server_default="api", comment="config (may run commands) or api"),
    CheckConstraint(f"kind IN {DEPENDENCY_KINDS}", name="dependencies_kind"),
    CheckConstraint(f"state IN {DEPENDENCY_STATES}", name="dependencies_state"),
    CheckConstraint("kind <> 'command' OR origin = 'config'", name="dependencies_command_only_from_config"),
    CheckConstraint("interval_seconds > 0 AND timeout_seconds > 0", name="dependencies_timing"),
    CheckConstraint("failure_threshold >= 1 AND recovery_threshold >= 1", name="dependencies_thresholds"),
    CheckConstraint("origin IN ('config', 'api')", name="dependencies_origin"),
)

processing_settings = Table(
    "processing_settings",
    metadata,
    Column("name", Text, primary_key=True),
    Column("paused", Boolean, nullable=False, server_default="false"),
    Column("dependencies", ARRAY(Text), comment="Overrides the registration's dependencies when set."),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
)


api_tokens = Table(
    "api_tokens",
    metadata,
    Column("name", Text, primary_key=True),
    Column("token_sha256", Text, nullable=False, unique=True, comment="The token itself is never stored."),
    Column("scopes", ARRAY(Text), nullable=False),
    Column("rate_per_second", Float, comment="Overrides the default rate limit; 0 means unlimited."),
    Column("burst", Integer),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("revoked_at", DateTime(timezone=True)),
    CheckConstraint("name ~ '^[a-z0-9][a-z0-9_.-]{0,62}$'", name="api_tokens_name"),
    CheckConstraint("token_sha256 ~ '^[0-9a-f]{64}$'", name="api_tokens_digest"),
    CheckConstraint(
        f"cardinality(scopes) >= 1 AND scopes <@ ARRAY{list(SCOPES)}::text[]", name="api_tokens_scopes"
    ),
    CheckConstraint("rate_per_second IS NULL OR rate_per_second >= 0", name="api_tokens_rate"),
    CheckConstraint("burst IS NULL OR burst >= 1", name="api_tokens_burst"),
)


schema_compatibility = Table(
    "schema_compatibility",
    metadata,
    Column("single", Boolean, primary_key=True, server_default="true"),
    Column(
        "oldest_code_revision",
        Text,
        nullable=False,
        comment="Code whose newest migration is older than this cannot run against this schema.",
    ),
    CheckConstraint("single", name="schema_compatibility_single"),
    CheckConstraint("oldest_code_revision ~ '^[0-9]{4}$'", name="schema_compatibility_revision"),
)
