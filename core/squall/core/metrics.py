"""Prometheus metrics of every service: prefix ``squall_``, base units, bounded labels (no ids, no paths)."""

from __future__ import annotations

import functools
import weakref
from importlib.metadata import PackageNotFoundError, version
from typing import Any, TypeVar

from prometheus_client import Counter, Gauge, Histogram, disable_created_metrics

# The *_created series double the exposition for no use on dashboards.
disable_created_metrics()  # type: ignore[no-untyped-call]

try:
    VERSION = version("squall")
except PackageNotFoundError:  # running from a source tree without an install
    VERSION = "0.0.0"

# Request handling takes milliseconds; batches of thousands of items take up to seconds.
_FAST_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
_TASK_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)

_Metric = TypeVar("_Metric", Counter, Gauge, Histogram)


@functools.cache
def child(metric: _Metric, *labels: str) -> _Metric:
    """``metric.labels(*labels)``, looked up once: ``labels()`` takes a lock and builds its key on every
    call, which shows on a path taken for every request. Only for labels of a bounded set of values."""
    return metric.labels(*labels)


BUILD_INFO = Gauge("squall_build_info", "Squall build; always 1.", ["version"])
BUILD_INFO.labels(VERSION).set(1)

HTTP_REQUESTS = Counter(
    "squall_http_requests_total", "HTTP requests answered by the gateway.", ["route", "method", "code"]
)
HTTP_DURATION = Histogram(
    "squall_http_request_duration_seconds",
    "Time to answer an HTTP request.",
    ["route", "method"],
    buckets=_FAST_BUCKETS,
)
EVENTS_PUBLISHED = Counter(
    "squall_events_published_total", "Events published to JetStream.", ["subject", "outcome"]
)
PUBLISH_DURATION = Histogram(
    "squall_publish_duration_seconds", "Time for JetStream to ack a publish.", buckets=_FAST_BUCKETS
)
PUBLISH_BATCH = Histogram(
    "squall_publish_batch_requests",
    "Fresh requests whose events the gateway published together (one JetStream message per 256 KiB).",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512),
)
INTAKE_BATCH = Histogram(
    "squall_intake_batch_requests",
    "Submissions the gateway accepted per database statement (concurrent ones share one: group commit).",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512),
)

TASKS = Counter("squall_tasks_total", "Tasks finished by processors.", ["kind", "processing", "outcome"])
TASK_DURATION = Histogram(
    "squall_task_duration_seconds", "Time to run one task.", ["kind", "processing"], buckets=_TASK_BUCKETS
)
ITEMS_PROCESSED = Counter("squall_items_processed_total", "Items given a result.", ["processing", "outcome"])
REDELIVERIES = Counter("squall_task_redeliveries_total", "Messages received more than once.", ["kind"])
IN_FLIGHT = Gauge("squall_processor_in_flight_tasks", "Messages a processor holds unacked.")

SCHEDULER_TICKS = Counter(
    "squall_scheduler_ticks_total", "Ticks recorded by the leader.", ["schedule", "outcome"]
)
RETENTION_DELETED = Counter(
    "squall_retention_deleted_total", "Rows of finished work deleted by retention, by table.", ["table"]
)
RETENTION_OLDEST = Gauge(
    "squall_retention_oldest_seconds",
    "Age of the oldest finished row still kept, dead letters left out: a processed request, a finished poll "
    "task (0: none).",
    ["table"],
)
RETENTION_PERIOD = Gauge(
    "squall_retention_period_seconds",
    "The retention periods in force (finished, dead; 0: forever).",
    ["kind"],
)
DB_TABLE_BYTES = Gauge(
    "squall_db_table_bytes",
    "Bytes on disk of a table of work, its indexes and TOAST included (sampled at each retention pass).",
    ["table"],
)
DB_TABLE_ROWS = Gauge(
    "squall_db_table_rows",
    "Rows of a table of work as PostgreSQL estimates them (sampled at each retention pass): with "
    "squall_db_table_bytes, whether the space of deleted rows is reused.",
    ["table"],
)
SCHEDULER_IS_LEADER = Gauge("squall_scheduler_is_leader", "1 while this scheduler replica leads.")
SCHEDULER_TICK_LAG = Histogram(
    "squall_scheduler_tick_lag_seconds",
    "Emitted at minus due time of emitted ticks.",
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)
DEPENDENCY_UP = Gauge(
    "squall_dependency_up", "1 while a dependency is up, 0 while down, -1 while unknown.", ["dependency"]
)
PROCESSING_PENDING = Gauge(
    "squall_processing_pending_items",
    "Items of a processing recorded and not done or failed yet.",
    ["processing"],
)

# --- observability additions ----------------------------------------------------------------------------

DB_POOL_CONNECTIONS = Gauge(
    "squall_db_pool_connections", "Database pool connections of this process.", ["state"]
)


_POOLS: weakref.WeakSet[Any] = weakref.WeakSet()


def watch_pool(pool: Any) -> None:
    """Report a SQLAlchemy pool's connections with the process's other pools' (read at scrape time: nothing
    to update on the hot path); a pool no longer referenced drops out."""
    _POOLS.add(pool)
    DB_POOL_CONNECTIONS.labels("in_use").set_function(lambda: sum(p.checkedout() for p in list(_POOLS)))
    DB_POOL_CONNECTIONS.labels("idle").set_function(lambda: sum(p.checkedin() for p in list(_POOLS)))


QUEUE_PENDING = Gauge(
    "squall_queue_pending_messages",
    "Messages a JetStream consumer has not delivered yet (sampled by processors).",
    ["consumer"],
)
QUEUE_ACK_PENDING = Gauge(
    "squall_queue_ack_pending_messages",
    "Messages delivered by a JetStream consumer and not acked yet (sampled by processors).",
    ["consumer"],
)
# Immediate processings finish requests in ~15-40 ms; batch processings wait for a poll tick (100 ms to
# seconds), and minutes under a backlog.
REQUEST_END_TO_END = Histogram(
    "squall_request_end_to_end_seconds",
    "From the gateway's acceptance of a request to the moment a processor marked it processed.",
    ["processing"],
    buckets=(0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0),
)

# From the gateway's cached count query (every replica reports the same values).
REQUESTS = Gauge("squall_requests", "Requests accepted, by state (pending, processed).", ["state"])
ITEMS = Gauge(
    "squall_items", "Recorded items by processing and state (pending, done, failed).", ["processing", "state"]
)
BACKLOG_ITEMS = Gauge(
    "squall_backlog_items",
    "Items accepted and not processed yet (in requests not recorded, or recorded and pending).",
)
BACKLOG_LIMIT = Gauge("squall_backlog_limit_items", "The gateway's admission limit on the backlog (0: none).")
ADMISSION_HELD = Counter(
    "squall_admission_held_total",
    "Submissions held because the backlog was over its limit, by outcome (admitted, refused: 503).",
    ["outcome"],
)
DEAD_TASKS = Gauge(
    "squall_dead_tasks", "Poll tasks dead (waiting for a replay), by processing.", ["processing"]
)
