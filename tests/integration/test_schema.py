"""The schema the migrations build, and how the hot statements are planned on it (real PostgreSQL)."""

from __future__ import annotations

import asyncio
import itertools
import uuid
from typing import Any

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from squall.core import db, migrate
from squall.core.events import Item, RequestSubmitted
from squall.core.settings import load_settings
from squall.core.store import counters, driver, intake, item_rules, polling, reads, recording, scheduling
from tests.integration.harness import make_settings


async def test_the_migrated_schema_is_the_one_the_code_declares(database_url: str) -> None:
    engine = db.create_engine(load_settings(database_url=database_url))
    try:
        async with engine.connect() as conn:
            differences = await conn.run_sync(
                lambda sync: compare_metadata(MigrationContext.configure(sync), db.metadata)
            )
    finally:
        await engine.dispose()
    assert differences == []


def test_every_migration_can_be_undone_and_redone(database_url: str) -> None:
    config = migrate.alembic_config(load_settings(database_url=database_url))
    command.downgrade(config, "base")
    command.upgrade(config, "head")
    command.downgrade(config, "0005")  # the last steps alone, back and forth once more
    command.upgrade(config, "head")


async def _accept(engine: AsyncEngine, rids: list[str], item_count: int) -> list[uuid.UUID]:
    """Accept one request per rid with ``item_count`` items; the task ids of those created now."""
    submitted = [
        intake.Submitted.of_event(
            RequestSubmitted(
                task_id=uuid.uuid4(), rid=rid, items=[Item(number=n, job="sum") for n in range(item_count)]
            ),
            False,
            b"{}",
        )
        for rid in rids
    ]
    accepted = await intake.accept_requests(engine, submitted)
    return [a.task_id for a in accepted if isinstance(a, intake.Accepted) and a.created]


async def _record_batches(engine: AsyncEngine, prefix: str, batches: int = 8) -> None:
    """Accept and record ``batches`` batches of five one-item requests through ``engine``."""
    for batch in range(batches):
        ids = await _accept(engine, [f"{prefix}{batch}-{n}" for n in range(5)], 1)
        items = recording.NewItems()
        for task_id in ids:
            items.add(task_id, [1], ["sum"], [("done", "3", None, None)])
        recorded = await recording.record_requests(engine, ids, items, {})
        assert [r.task_id for r in recorded] == ids


async def _recording_plans(engine: AsyncEngine) -> Any:
    async with engine.connect() as conn:  # the pool's one connection: the one that recorded
        return (
            await conn.execute(
                text(
                    "SELECT generic_plans, custom_plans FROM pg_prepared_statements "
                    "WHERE statement LIKE '%UPDATE requests r SET recorded_at%'"
                    " AND statement NOT LIKE '%pg_prepared_statements%'"
                )
            )
        ).one()


async def test_the_main_pool_plans_each_execution_not_once_per_connection(database_url: str) -> None:
    """PostgreSQL fixes a generic plan on a connection's sixth execution of a prepared statement. Made
    while the tables were nearly empty, that plan scanned every request (or every dead index entry) to
    record each batch, for as long as the connection lived (migration 0006, db.create_engine): every
    statement but the hot ones is planned for its parameters."""
    engine = db.create_engine(make_settings("nats://127.0.0.1:1", database_url, database_pool_size=1))
    try:
        await _record_batches(engine, "b")
        plans = await _recording_plans(engine)
    finally:
        await engine.dispose()
    assert (plans.generic_plans, plans.custom_plans) == (0, 8)


async def test_the_hot_pool_plans_once_and_keeps_index_plans_as_the_tables_grow(database_url: str) -> None:
    """The hot statements' pool (the intake INSERT, the recording) plans each statement once per
    connection, on tables that are empty then, and still finds rows by index once they hold thousands."""
    settings = make_settings("nats://127.0.0.1:1", database_url, database_pool_size=1)
    hot = db.create_engine(settings, hot_statements=True)
    engine = db.create_engine(settings)

    async def scans() -> dict[str, tuple[int, int, int]]:
        async with hot.connect() as conn:  # the recording backend reports its scans now
            await conn.execute(text("SELECT pg_stat_force_next_flush()"))
        async with engine.connect() as conn:
            rows = await conn.execute(
                text(
                    "SELECT relname, seq_scan, idx_scan, idx_tup_fetch FROM pg_stat_user_tables "
                    "WHERE relname IN ('requests', 'tasks')"
                )
            )
            return {r.relname: (r.seq_scan, r.idx_scan, r.idx_tup_fetch) for r in rows}

    try:
        await _record_batches(hot, "empty")  # the plans are made now, on empty tables
        async with engine.begin() as conn:  # then the tables grow: 20,000 recorded requests
            await conn.execute(
                text(
                    "INSERT INTO requests (rid, rid_is_int, task_id, items_hash, item_count, recorded_at) "
                    "SELECT 'bulk-' || g, false, gen_random_uuid(), '\\x00', 1, now() "
                    "FROM generate_series(1, 20000) AS g"
                )
            )
            await conn.execute(
                text(
                    "INSERT INTO tasks (id, kind, rid) "
                    "SELECT task_id, 'request', rid FROM requests WHERE rid LIKE 'bulk-%'"
                )
            )
        before = await scans()
        await _record_batches(hot, "grown")
        after = await scans()
        plans = await _recording_plans(hot)
    finally:
        await hot.dispose()
        await engine.dispose()
    assert plans.custom_plans == 0 and plans.generic_plans == 16
    for table in ("requests", "tasks"):
        assert after[table][0] == before[table][0], f"{table} read by a sequential scan: {before} → {after}"
        assert after[table][1] >= before[table][1] + 8, f"{table} not read by index: {before} → {after}"
        # By key: the 40 requests recorded (and their intake), not the whole index (20,000 rows).
        assert after[table][2] - before[table][2] < 1_000, f"{table} read whole: {before} → {after}"


@pytest.mark.parametrize(
    ("rows", "chunks", "done"), [s for s in itertools.product([False, True], repeat=3) if any(s)]
)
async def test_each_shape_of_the_recording_statement_records_and_counts_its_items(
    database_url: str, rows: bool, chunks: bool, done: bool
) -> None:
    """A batch's recording statement holds only the parts its items need (item rows, chunks, result rows):
    each combination records every item where it belongs and counts it."""
    engine = db.create_engine(make_settings("nats://127.0.0.1:1", database_url))
    kinds = [kind for kind, present in (("rows", rows), ("chunks", chunks), ("done", done)) if present]
    submitted = [_shaped_submission(kind) for kind in kinds]
    try:
        async with engine.connect() as conn:
            before = await _recording_counters(conn)
        accepted = await intake.accept_requests(engine, submitted)
        ids = [a.task_id for a in accepted if isinstance(a, intake.Accepted)]
        items = _shaped_items(kinds, ids)
        assert (bool(items.request_task_id), bool(items.chunks), bool(items.done)) == (rows, chunks, done)
        recorded = await recording.record_requests(engine, ids, items, {})
        assert sorted(r.task_id for r in recorded) == sorted(ids)
        async with engine.connect() as conn:
            after = await _recording_counters(conn)
            states = await _item_states(conn, ids)
            held = await _rows_per_part(conn, ids)
    finally:
        await engine.dispose()
    expected = {"rows": ["done"], "chunks": ["pending"] * 10, "done": ["done"] * 10}
    assert states == {task_id: expected[kind] for kind, task_id in zip(kinds, ids, strict=True)}
    assert held == {"rows": int(rows), "chunks": 2 * int(chunks), "done": int(done)}

    def grew(counter: str) -> int:
        return int(after.get(counter, 0)) - int(before.get(counter, 0))

    assert grew("requests_recorded") == len(kinds)
    assert grew("requests_processed") == len(kinds) - int(chunks)  # pending chunks: not processed yet
    assert grew("items_recorded") == sum(1 if kind == "rows" else 10 for kind in kinds)
    assert grew("items_done") == int(rows) + 10 * int(done)


def _shaped_submission(kind: str) -> intake.Submitted:
    """A request of one item for ``rows``, of ten for ``chunks`` and ``done``."""
    return intake.Submitted.of_event(
        RequestSubmitted(
            task_id=uuid.uuid4(),
            rid=f"shape-{uuid.uuid4().hex}",
            items=[Item(number=n, job="sum") for n in range(1 if kind == "rows" else 10)],
        ),
        False,
        b"{}",
    )


def _shaped_items(kinds: list[str], ids: list[uuid.UUID]) -> recording.NewItems:
    """Items that the recording statement stores as item rows, chunks or result rows, one kind a request."""
    items = recording.NewItems({"sum": 5})
    for kind, task_id in zip(kinds, ids, strict=True):
        if kind == "rows":  # one item: below the chunk size, a row
            items.add(task_id, [0], ["sum"], [("done", "1", None, None)])
        elif kind == "chunks":  # ten pending items of a chunked processing: two chunks
            items.add(task_id, list(range(10)), ["sum"] * 10, [item_rules.PENDING] * 10)
        else:  # ten done items: one result row
            items.add(
                task_id,
                list(range(10)),
                ["sum"] * 10,
                [("done", str(n + 1), None, None) for n in range(10)],
            )
    return items


async def _recording_counters(conn: AsyncConnection) -> dict[Any, Any]:
    counters = text(
        "SELECT counter, sum(n) FROM stat_deltas WHERE counter IN ('items_recorded', 'items_done', "
        "'requests_recorded', 'requests_processed') GROUP BY counter"
    )
    return dict((await conn.execute(counters)).all())


async def _item_states(conn: AsyncConnection, ids: list[uuid.UUID]) -> dict[Any, Any]:
    """Each request's item states, in position order."""
    return dict(
        (
            await conn.execute(
                text(
                    "SELECT request_task_id, array_agg(state ORDER BY position) FROM all_items "
                    "WHERE request_task_id = ANY(:ids) GROUP BY request_task_id"
                ),
                {"ids": ids},
            )
        ).all()
    )


async def _rows_per_part(conn: AsyncConnection, ids: list[uuid.UUID]) -> dict[Any, Any]:
    """How many item rows, chunks and result rows the requests hold."""
    return dict(
        (
            await conn.execute(
                text(
                    "SELECT 'rows', count(*) FROM items WHERE request_task_id = ANY(:ids) UNION ALL "
                    "SELECT 'chunks', count(*) FROM item_chunks WHERE request_task_id = ANY(:ids) "
                    "UNION ALL "
                    "SELECT 'done', count(*) FROM item_results WHERE request_task_id = ANY(:ids)"
                ),
                {"ids": ids},
            )
        ).all()
    )


async def test_acceptances_are_counted_by_triggers_seeded_by_their_migration(database_url: str) -> None:
    """Requests accepted and their items are counted by triggers on ``requests`` (migration 0011), whoever
    inserts them: the migration counts the rows already there, a withdrawn acceptance is taken back, a
    purge of recorded history is not; and reading the counts never reads ``requests``."""
    # One connection: the scans it reports (forced out before each look) are all there are.
    settings = make_settings("nats://127.0.0.1:1", database_url, database_pool_size=1)
    await asyncio.to_thread(command.downgrade, migrate.alembic_config(settings), "0010")
    engine = db.create_engine(settings)

    async def truth() -> tuple[int, int, int]:
        async with engine.connect() as conn:
            row = (
                await conn.execute(
                    text(
                        "SELECT count(*), count(recorded_at), "
                        "coalesce(sum(item_count) FILTER (WHERE recorded_at IS NULL), 0) FROM requests"
                    )
                )
            ).one()
        return int(row[0]), int(row[1]), int(row[2])

    async def counted() -> tuple[int, int, int]:
        stats = await counters.read_stats(engine)
        return stats.accepted, stats.recorded, stats.unrecorded_items

    async def scans_of_requests() -> int:
        async with engine.connect() as conn:  # the backend reports its scans when this transaction ends
            await conn.execute(text("SELECT pg_stat_force_next_flush()"))
        async with engine.connect() as conn:
            return int(
                (
                    await conn.execute(
                        text(
                            "SELECT seq_scan + coalesce(idx_scan, 0) FROM pg_stat_user_tables "
                            "WHERE relname = 'requests'"
                        )
                    )
                ).scalar_one()
            )

    try:
        # Before the migration: four requests of three items, one of them recorded.
        old = await _accept(engine, [f"old-{n}" for n in range(4)], 3)
        items = recording.NewItems()
        items.add(old[0], [0, 1, 2], ["sum"] * 3, [("done", "1", None, None)] * 3)
        assert len(await recording.record_requests(engine, old[:1], items, {})) == 1
        await engine.dispose()
        await migrate.upgrade_async(settings)
        assert await counted() == await truth() == (4, 1, 9)

        # After it: two of three new requests (two items each) accepted, one withdrawn; a rid submitted
        # again is no acceptance.
        new = await _accept(engine, ["new-0", "new-1", "new-2", "old-1"], 2)
        assert len(new) == 3
        await intake.withdraw_request(engine, new[0])
        await intake.withdraw_request(engine, old[0])  # recorded: not withdrawn
        assert await counted() == await truth() == (6, 1, 13)
        assert await counters.fold_stat_deltas(engine)
        assert await counted() == (6, 1, 13)

        # Deleting recorded history leaves the counts of what happened.
        async with engine.begin() as conn:
            await conn.execute(text("DELETE FROM requests WHERE task_id = :t"), {"t": old[0]})
        assert await counted() == (6, 1, 13)

        before = await scans_of_requests()
        for _ in range(3):
            await counters.read_stats(engine)
        assert await scans_of_requests() == before
    finally:
        await engine.dispose()


async def test_a_poll_task_plans_its_transaction_as_a_queue_and_reads_its_gate(database_url: str) -> None:
    """A poll task's transaction plans on the queue's indexes (``plan_as_a_queue``), and only that
    transaction; ``gate`` answers why its processing must wait; a finished task is not started again."""
    engine = db.create_engine(make_settings("nats://127.0.0.1:1", database_url, database_pool_size=1))
    queue_settings = text(
        "SELECT current_setting('enable_seqscan'), current_setting('enable_bitmapscan'), "
        "current_setting('enable_sort')"
    )
    try:
        first = uuid.uuid4()
        async with engine.begin() as conn:
            await polling.plan_as_a_queue(conn)
            assert await polling.start_poll_task(conn, first, "sum", 10)
            assert tuple((await conn.execute(queue_settings)).one()) == ("off", "off", "off")
            assert await scheduling.gate(conn, "sum", ["db"]) is None
            await polling.finish_poll_task(conn, first, "succeeded", 0, None)
        async with engine.begin() as conn:
            assert tuple((await conn.execute(queue_settings)).one()) == ("on", "on", "on")
            assert not await polling.start_poll_task(conn, first, "sum", 10)  # finished: not run again
            await conn.execute(
                text(
                    "INSERT INTO dependencies (name, kind, target, state) VALUES ('db', 'tcp', 'x:1', 'down')"
                )
            )
            assert await scheduling.gate(conn, "sum", ["db"]) == "dependency down: db"
            assert await scheduling.gate(conn, "sum", []) is None
            await conn.execute(text("INSERT INTO processing_settings (name, paused) VALUES ('sum', true)"))
            assert await scheduling.gate(conn, "sum", ["db"]) == "paused"
    finally:
        await engine.dispose()


async def test_the_builtin_default_schedules_are_raised_to_batches_of_5000(database_url: str) -> None:
    """Migration 0012: the default schedules of ``sum`` and ``mul`` made with 1,000-item batches poll 5,000
    at a time, like their registrations now; a schedule made through the API, or given another size, keeps
    its own."""
    settings = make_settings("nats://127.0.0.1:1", database_url)
    await asyncio.to_thread(command.downgrade, migrate.alembic_config(settings), "0011")
    engine = db.create_engine(settings)
    try:
        async with engine.begin() as conn:
            await conn.execute(
                text(
                    "INSERT INTO schedules (name, processing, interval_seconds, batch_size, next_due_at, "
                    "origin) SELECT name, processing, 2, 1000, now(), origin FROM (VALUES "
                    "('sum', 'sum', 'default'), ('mul', 'mul', 'default'), ('square', 'square', 'default'), "
                    "('sum-nightly', 'sum', 'api')) AS s(name, processing, origin)"
                )
            )
        await engine.dispose()
        await migrate.upgrade_async(settings)
        async with engine.connect() as conn:
            sizes = dict((await conn.execute(text("SELECT name, batch_size FROM schedules"))).all())
    finally:
        await engine.dispose()
    assert sizes == {"sum": 5000, "mul": 5000, "square": 1000, "sum-nightly": 1000}


async def test_payloads_and_result_rows_up_to_a_page_are_stored_uncompressed(database_url: str) -> None:
    """Migration 0013: a 100-item request's payload and its result row are stored as they are (pglz was
    a fifth of PostgreSQL's CPU on such requests); a 1,000-item payload, longer than a page, is still
    compressed, and every one reads back whole."""

    def submitted(count: int) -> intake.Submitted:
        event = RequestSubmitted(
            task_id=uuid.uuid4(),
            rid=f"stored-{uuid.uuid4().hex}",
            items=[Item(number=10_000 + n, job="sum") for n in range(count)],
        )
        return intake.Submitted.of_event(event, False, event.model_dump_json().encode())

    engine = db.create_engine(make_settings("nats://127.0.0.1:1", database_url))
    medium, large = submitted(100), submitted(1000)
    assert 2500 < len(medium.payload) < 8000 < len(large.payload)
    try:
        accepted = await intake.accept_requests(engine, [medium, large])
        assert all(isinstance(a, intake.Accepted) for a in accepted)
        payloads = text(
            "SELECT task_id, pg_column_compression(payload), payload FROM requests WHERE task_id = ANY(:ids)"
        )
        async with engine.connect() as conn:
            stored = {
                row[0]: row[1:]
                for row in await conn.execute(payloads, {"ids": [medium.task_id, large.task_id]})
            }
        assert stored == {
            medium.task_id: (None, medium.payload),
            large.task_id: (stored[large.task_id][0], large.payload),
        }
        assert stored[large.task_id][0] is not None  # compressed, as before

        numbers = [10_000 + n for n in range(100)]
        results = driver.results_array([n + 2 for n in numbers])
        assert results is not None
        items = recording.NewItems()
        items.add_done(medium.task_id, "sum", numbers, results)
        await recording.record_requests(engine, [medium.task_id], items, {})
        async with engine.connect() as conn:
            row = (
                await conn.execute(
                    text(
                        "SELECT pg_column_compression(results), pg_column_size(results), results "
                        "FROM item_results WHERE request_task_id = :t"
                    ),
                    {"t": medium.task_id},
                )
            ).one()
    finally:
        await engine.dispose()
    compression, size, read_back = row
    assert compression is None and size > 1000
    assert read_back == [n + 2 for n in numbers]


async def test_tasks_are_listed_newest_first_from_an_index_not_by_sorting_them_all(database_url: str) -> None:
    """Migration 0014: a page of ``GET /v1/tasks``, the first or one after a cursor, reads the tasks it
    shows from the index on (created_at, id); it used to read and sort every task (317 ms at 2,000,000)."""
    engine = db.create_engine(make_settings("nats://127.0.0.1:1", database_url, database_pool_size=1))

    async def tasks_read() -> tuple[int, int]:
        async with engine.connect() as conn:  # the pool's one connection: the one that listed
            await conn.execute(text("SELECT pg_stat_force_next_flush()"))
        async with engine.connect() as conn:
            row = (
                await conn.execute(
                    text("SELECT seq_scan, idx_tup_fetch FROM pg_stat_user_tables WHERE relname = 'tasks'")
                )
            ).one()
        return row.seq_scan, row.idx_tup_fetch

    try:
        async with engine.begin() as conn:  # 20,000 tasks, a second apart, the newest a day ago
            await conn.execute(
                text(
                    "INSERT INTO tasks (id, kind, state, rid, created_at) "
                    "SELECT gen_random_uuid(), 'request', 'succeeded', 'listed-' || g, "
                    "now() - interval '1 day' - make_interval(secs => 20000 - g) "
                    "FROM generate_series(1, 20000) AS g"
                )
            )
            await conn.execute(text("ANALYZE tasks"))
        before = await tasks_read()
        first, cursor = await reads.list_tasks(engine, None, None, None, 50, None)
        assert cursor is not None
        second, _ = await reads.list_tasks(engine, None, None, None, 50, cursor)
        after = await tasks_read()
    finally:
        await engine.dispose()
    listed = [t["created_at"] for t in first + second]
    assert listed == sorted(listed, reverse=True) and len(set(listed)) == 100
    assert after[0] == before[0], f"tasks read by a sequential scan: {before} → {after}"
    assert after[1] - before[1] < 1_000, f"tasks read whole: {before} → {after}"
