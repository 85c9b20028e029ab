"""Items of ``claim="lock"`` batch processings wait for their first poll as chunks (one row per request and
processing) and are written once, with their outcome; a request's done items of one processing are one
result row (real NATS JetStream and PostgreSQL)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable

import asyncpg
from alembic import command
from prometheus_client import REGISTRY

from squall.core import db, migrate
from squall.core.settings import load_settings
from squall.core.store import polling
from tests.integration import effect_processings
from tests.integration.harness import System, make_settings, plain_dsn, wait_for

MODULE = "tests.integration.effect_processings"


async def _system(
    nats_url: str, database_url: str, system_factory: Callable[..., Awaitable[System]]
) -> System:
    return await system_factory(make_settings(nats_url, database_url, processing_modules=[MODULE]))


async def test_lock_claimed_items_wait_in_chunks_and_are_written_once_with_their_outcome(
    nats_url: str, database_url: str, system_factory: Callable[..., Awaitable[System]]
) -> None:
    effect_processings.RECORDED.clear()
    system = await _system(nats_url, database_url, system_factory)
    # 250 items of a lock-claimed processing (batch_size 100), two of a leased one, interleaved.
    items = [{"number": n, "job": "record_locked"} for n in range(250)]
    items[10:10] = [{"number": 1000, "job": "record"}]
    items[200:200] = [{"number": 2000, "job": "record"}]
    await system.submit({"rid": "mixed", "items": items})

    async def recorded() -> bool:
        return bool((await system.request_state("mixed"))["recorded"])

    await wait_for(recorded, what="recorded")
    chunks = await system.fetch("SELECT part, job, item_count, positions FROM item_chunks ORDER BY part")
    assert [(c["part"], c["job"], c["item_count"]) for c in chunks] == [
        (0, "record_locked", 100),
        (1, "record_locked", 100),
        (2, "record_locked", 50),
    ]
    locked_positions = [p for c in chunks for p in c["positions"]]
    assert locked_positions == [p for p, item in enumerate(items) if item["job"] == "record_locked"]
    # Only the leased processing's items are rows; the request reads whole and in order.
    assert await system.fetchval("SELECT count(*) FROM items") == 2
    state = await system.request_state("mixed")
    assert [i["number"] for i in state["items"]] == [i["number"] for i in items]
    assert {i["state"] for i in state["items"]} == {"pending"}
    assert state["counts"] == {"pending": 252, "done": 0, "failed": 0}
    assert await _stats_of(system, "record_locked") == {"pending": 250, "done": 0, "failed": 0}
    processings = (await system.client.get("/v1/processings")).json()
    assert {p["name"]: p["pending"] for p in processings["processings"]}["record_locked"] == 250

    first = await system.publish_poll("record_locked", batch_size=150)  # two chunks would exceed it

    async def finished(task_id: uuid.UUID) -> dict[str, object] | None:
        task = (await system.client.get(f"/v1/tasks/{task_id}")).json()
        return task if task["state"] == "succeeded" else None

    assert (await wait_for(lambda: finished(first), what="the first poll"))["items_processed"] == 100
    assert await system.fetchval("SELECT count(*) FROM item_chunks") == 2
    await system.publish_poll("record_locked", batch_size=300)
    await system.publish_poll("record", batch_size=100)
    state = await system.wait_processed("mixed")
    assert [i["result"] for i in state["items"]] == [i["number"] + 1 for i in items]
    rows = await system.fetch(
        "SELECT attempts, claim_task_id, state FROM all_items WHERE job = 'record_locked' ORDER BY position"
    )
    assert len(rows) == 250 and all(r["attempts"] == 1 and r["state"] == "done" for r in rows)
    assert rows[0]["claim_task_id"] == first
    # Every item of each chunk done: each chunk became a result row (its part kept); no item row written.
    assert await system.fetchval("SELECT count(*) FROM item_chunks") == 0
    results = await system.fetch("SELECT part, item_count, claim_task_id FROM item_results ORDER BY part")
    assert [(r["part"], r["item_count"]) for r in results] == [(0, 100), (1, 100), (2, 50)]
    assert results[0]["claim_task_id"] == first != results[1]["claim_task_id"]
    assert await system.fetchval("SELECT count(*) FROM items WHERE job = 'record_locked'") == 0
    assert sorted(effect_processings.RECORDED) == sorted(i["number"] for i in items)
    assert await _stats_of(system, "record_locked") == {"pending": 0, "done": 250, "failed": 0}


async def _stats_of(system: System, processing: str) -> dict[str, int]:
    """The processing's counts once /v1/stats (cached by the gateway for a second) has them."""

    async def counted() -> dict[str, int] | None:
        stats = (await system.client.get("/v1/stats")).json()
        counts = stats["items"].get(processing)
        return counts if counts and counts == await _counted_by_postgres(system, processing) else None

    return await wait_for(counted, what=f"/v1/stats counting {processing}")


async def _counted_by_postgres(system: System, processing: str) -> dict[str, int]:
    row = (
        await system.fetch(
            """
            SELECT count(*) FILTER (WHERE state IN ('pending', 'running')) AS pending,
                   count(*) FILTER (WHERE state = 'done') AS done,
                   count(*) FILTER (WHERE state = 'failed') AS failed
            FROM all_items WHERE job = $1
            """,
            processing,
        )
    )[0]
    return {key: int(row[key]) for key in ("pending", "done", "failed")}


async def _add_chunks(conn: asyncpg.Connection, job: str, sizes: list[int]) -> list[uuid.UUID]:
    """Chunks of one item-less request each, oldest first (the statements under test take them by age)."""
    ids = []
    for index, size in enumerate(sizes):
        request = uuid.uuid4()
        ids.append(request)
        await conn.execute(
            "INSERT INTO item_chunks "
            "(request_task_id, part, job, item_count, positions, numbers, created_at) "
            "VALUES ($1, 0, $2, $3, $4, $5, now() - make_interval(secs => $6))",
            request,
            job,
            size,
            list(range(size)),
            [index * 1000 + n for n in range(size)],
            100.0 - index,
        )
    return ids


async def test_a_poll_takes_whole_chunks_up_to_its_batch_size_and_skips_locked_ones(
    database_url: str,
) -> None:
    engine = db.create_engine(load_settings(database_url=database_url))
    setup = await asyncpg.connect(plain_dsn(database_url))
    try:
        a, b, c = await _add_chunks(setup, "sum", [60, 60, 30])

        async def take(conn: object, limit: int) -> polling.Claimed:
            return await polling.lock_items(conn, "sum", uuid.uuid4(), limit)  # type: ignore[arg-type]

        async with engine.connect() as conn:
            async with conn.begin():
                taken = await take(conn, 100)  # 60, then 60 more would exceed it
                assert taken.chunks == [(a, 0, 60)] and taken.rows == []
                assert taken.numbers == list(range(60)) and taken.attempts == [1] * 60
                async with engine.connect() as other, other.begin():
                    # Another transaction skips the locked chunk and fits the next two in its 100.
                    taken_by_other = await take(other, 100)
                    assert taken_by_other.chunks == [(b, 0, 60), (c, 0, 30)]
                    assert taken_by_other.numbers == [*range(1000, 1060), *range(2000, 2030)]
                await conn.rollback()
            async with conn.begin():
                # A batch size below the first chunk takes that chunk alone; nothing else fits beside it.
                assert len(await take(conn, 10)) == 60
                await conn.rollback()
            async with conn.begin():
                assert len(await take(conn, 150)) == 150
                await conn.rollback()
        # Item rows (small requests, retries) and chunks are taken oldest first: a row younger than every
        # chunk fills what room the whole chunks leave; one older than them comes first.
        young, old = uuid.uuid4(), uuid.uuid4()
        await setup.execute(
            "INSERT INTO items (request_task_id, position, number, job, state, attempts, created_at) "
            "VALUES ($1, 0, 7, 'sum', 'pending', 1, now()), "
            "($2, 0, 8, 'sum', 'pending', 0, now() - interval '1 h')",
            young,
            old,
        )
        async with engine.connect() as conn:
            async with conn.begin():
                taken = await take(conn, 62)
                assert taken.rows == [(old, 0), (young, 0)] and taken.chunks == [(a, 0, 60)]
                assert taken.numbers[:3] == [8, 7, 0] and taken.attempts[:3] == [1, 2, 1] and len(taken) == 62
                await conn.rollback()
            async with conn.begin():
                taken = await take(conn, 60)  # the old row, then chunk a would exceed the batch
                assert taken.rows == [(old, 0), (young, 0)] and taken.chunks == []
                await conn.rollback()
    finally:
        await setup.close()
        await engine.dispose()


async def test_a_leased_claim_turns_chunks_into_pending_items_first(database_url: str) -> None:
    """A processing whose claim changed from lock to lease (a setting) finds its chunks as items."""
    engine = db.create_engine(load_settings(database_url=database_url))
    setup = await asyncpg.connect(plain_dsn(database_url))
    try:
        a, b = await _add_chunks(setup, "sum", [3, 2])
        task = uuid.uuid4()
        async with engine.begin() as conn:
            claimed = await polling.claim_items(conn, "sum", task, 4, lease_seconds=60)
        # Whole chunks up to the batch: b's two items would exceed it and stay a chunk.
        assert sorted(claimed.rows) == [(a, 0), (a, 1), (a, 2)] and sorted(claimed.numbers) == [0, 1, 2]
        rows = await setup.fetch("SELECT request_task_id, position, state, claim_task_id FROM items")
        assert sorted((r["position"], r["state"], r["claim_task_id"]) for r in rows) == [
            (0, "running", task),
            (1, "running", task),
            (2, "running", task),
        ]
        assert await setup.fetchval("SELECT request_task_id FROM item_chunks") == b
        async with engine.begin() as conn:
            claimed = await polling.claim_items(conn, "sum", uuid.uuid4(), 4, lease_seconds=60)
        assert sorted(claimed.rows) == [(b, 0), (b, 1)] and sorted(claimed.numbers) == [1000, 1001]
        assert await setup.fetchval("SELECT count(*) FROM item_chunks") == 0
    finally:
        await setup.close()
        await engine.dispose()


async def test_a_failed_locked_batch_leaves_its_items_pending_for_a_retry(
    nats_url: str, database_url: str, system_factory: Callable[..., Awaitable[System]]
) -> None:
    effect_processings.FLAKY_LOCKED_CALLS.clear()
    system = await _system(nats_url, database_url, system_factory)
    # Enough items for a chunk (item_rules.CHUNK_MIN_ITEMS): the failure turns it into pending item rows.
    await system.submit({"rid": "f", "items": [{"number": n, "job": "flaky_locked"} for n in range(10)]})

    async def recorded() -> bool:
        return bool((await system.request_state("f"))["recorded"])

    await wait_for(recorded, what="recorded")
    assert await system.fetchval("SELECT item_count FROM item_chunks") == 10
    retried = _processed("flaky_locked", "retried")
    first = await system.publish_poll("flaky_locked", batch_size=100)

    async def failed_once() -> bool:
        return (await system.client.get(f"/v1/tasks/{first}")).json()["state"] == "failed"

    await wait_for(failed_once, what="the first batch failed")
    assert await system.fetchval("SELECT count(*) FROM item_chunks") == 0
    rows = await system.fetch("SELECT state, attempts, error, not_before > now() AS waiting FROM items")
    assert len(rows) == 10
    assert all(r["state"] == "pending" and r["attempts"] == 1 for r in rows)
    assert all("ConnectionError" in r["error"] for r in rows)
    assert _processed("flaky_locked", "retried") - retried == 10

    async def backoff_over() -> bool:
        return bool(await system.fetchval("SELECT bool_and(not_before <= now()) FROM items"))

    await wait_for(backoff_over, timeout=5, what="the backoff to pass")
    await system.publish_poll("flaky_locked", batch_size=100)
    state = await system.wait_processed("f")
    assert [i["result"] for i in state["items"]] == [n * 10 for n in range(10)]
    assert await system.fetchval("SELECT max(attempts) FROM items") == 2


async def test_done_items_of_an_immediate_processing_are_one_result_row(
    nats_url: str, database_url: str, system_factory: Callable[..., Awaitable[System]]
) -> None:
    system = await _system(nats_url, database_url, system_factory)
    items = [{"number": n, "job": "picky_now"} for n in range(20)]  # 0, 5, 10 and 15 fail
    items[3:3] = [{"number": 1000 + n, "job": "record"} for n in range(3)]  # pending for a poll
    await system.submit({"rid": "now", "items": items})

    async def recorded() -> dict[str, object] | None:
        state = await system.request_state("now")
        return state if state["recorded"] else None

    state = await wait_for(recorded, what="recorded")
    expected = [
        ("pending", None)
        if i["job"] == "record"
        else ("failed", None)
        if i["number"] % 5 == 0
        else ("done", i["number"] * 2)
        for i in items
    ]
    assert [(i["state"], i["result"]) for i in state["items"]] == expected
    assert [i["number"] for i in state["items"]] == [i["number"] for i in items]
    assert state["counts"] == {"pending": 3, "done": 16, "failed": 4}
    task_id = uuid.UUID(state["task_id"])
    results = await system.fetch("SELECT part, item_count, claim_task_id, results FROM item_results")
    assert [(r["part"], r["item_count"]) for r in results] == [(0, 16)]
    assert results[0]["claim_task_id"] is None
    rows = await system.fetch(
        "SELECT job, state FROM items WHERE request_task_id = $1 ORDER BY position", task_id
    )
    # Only the items not done are rows.
    assert [(r["job"], r["state"]) for r in rows] == [
        (i["job"], state) for i, (state, _) in zip(items, expected, strict=True) if state != "done"
    ]
    assert await _stats_of(system, "picky_now") == {"pending": 0, "done": 16, "failed": 4}
    assert await system.fetchval("SELECT max(attempts) FROM all_items WHERE job = 'picky_now'") == 1

    await system.publish_poll("record", batch_size=100)
    state = await system.wait_processed("now")
    assert state["counts"] == {"pending": 0, "done": 19, "failed": 4}


async def test_a_chunk_is_one_result_row_only_when_all_its_items_are_done(
    nats_url: str, database_url: str, system_factory: Callable[..., Awaitable[System]]
) -> None:
    system = await _system(nats_url, database_url, system_factory)
    clean = [1, 2, 3, 4, 6, 7, 8, 9]  # no multiple of five: all done
    await system.submit({"rid": "clean", "items": [{"number": n, "job": "picky_locked"} for n in clean]})
    await system.submit({"rid": "picky", "items": [{"number": n, "job": "picky_locked"} for n in range(10)]})

    async def chunked() -> bool:
        return await system.fetchval("SELECT count(*) FROM item_chunks") == 2

    await wait_for(chunked, what="both requests recorded as chunks")
    before = {outcome: _processed("picky_locked", outcome) for outcome in ("done", "failed")}
    task = await system.publish_poll("picky_locked", batch_size=100)
    picky = await system.wait_processed("picky")
    assert [(i["state"], i["result"]) for i in picky["items"]] == [
        ("failed", None) if n % 5 == 0 else ("done", n * 2) for n in range(10)
    ]
    assert [i["result"] for i in (await system.wait_processed("clean"))["items"]] == [n * 2 for n in clean]
    results = await system.fetch("SELECT request_task_id, item_count, claim_task_id FROM item_results")
    assert [(str(r["request_task_id"]), r["item_count"], r["claim_task_id"]) for r in results] == [
        ((await system.request_state("clean"))["task_id"], 8, task)
    ]
    rows = await system.fetch("SELECT state, count(*) AS n FROM items GROUP BY state ORDER BY state")
    assert [(r["state"], r["n"]) for r in rows] == [("done", 8), ("failed", 2)]
    assert await _stats_of(system, "picky_locked") == {"pending": 0, "done": 16, "failed": 2}
    # squall_items_processed_total counts the poll's items by outcome.
    assert {o: _processed("picky_locked", o) - n for o, n in before.items()} == {"done": 16, "failed": 2}


def _processed(processing: str, outcome: str) -> float:
    sample = REGISTRY.get_sample_value(
        "squall_items_processed_total", {"processing": processing, "outcome": outcome}
    )
    return sample or 0.0


def test_undoing_the_result_rows_migration_keeps_their_items_as_done_items(database_url: str) -> None:
    request, task = uuid.uuid4(), uuid.uuid4()

    async def run(statement: str, *args: object) -> list[asyncpg.Record]:
        conn = await asyncpg.connect(plain_dsn(database_url))
        try:
            return await conn.fetch(statement, *args)
        finally:
            await conn.close()

    asyncio.run(
        run(
            "INSERT INTO item_results (request_task_id, part, job, item_count, positions, numbers, results, "
            "claim_task_id) VALUES ($1, 0, 'sum', 2, '{0,2}', '{7,9}', '[8, {\"a\": null}]', $2)",
            request,
            task,
        )
    )
    config = migrate.alembic_config(load_settings(database_url=database_url))
    command.downgrade(config, "0009")
    rows = asyncio.run(
        run(
            "SELECT request_task_id, position, number, job, state, result, attempts, claim_task_id FROM items"
        )
    )
    assert sorted(tuple(r) for r in rows) == [
        (request, 0, 7, "sum", "done", "8", 1, task),
        (request, 2, 9, "sum", "done", '{"a": null}', 1, task),
    ]
    command.upgrade(config, "head")


def test_undoing_the_chunks_migration_keeps_their_items_as_pending_items(database_url: str) -> None:
    async def add() -> uuid.UUID:
        conn = await asyncpg.connect(plain_dsn(database_url))
        try:
            return (await _add_chunks(conn, "sum", [2]))[0]
        finally:
            await conn.close()

    async def items() -> list[tuple[object, ...]]:
        conn = await asyncpg.connect(plain_dsn(database_url))
        try:
            rows = await conn.fetch("SELECT request_task_id, position, number, job, state FROM items")
            return [tuple(r) for r in rows]
        finally:
            await conn.close()

    request = asyncio.run(add())
    config = migrate.alembic_config(load_settings(database_url=database_url))
    command.downgrade(config, "0007")
    assert sorted(asyncio.run(items())) == [
        (request, 0, 0, "sum", "pending"),
        (request, 1, 1, "sum", "pending"),
    ]
    command.upgrade(config, "head")
