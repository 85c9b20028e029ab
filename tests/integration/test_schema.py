"""The schema the migrations build, and how the hot statements are planned on it (real PostgreSQL)."""

from __future__ import annotations

import uuid

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import text

from squall.core import db, migrate, store
from squall.core.events import Item, RequestSubmitted
from squall.core.settings import load_settings
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


async def test_recording_is_planned_for_each_batch_not_once_per_connection(database_url: str) -> None:
    """PostgreSQL fixes a generic plan on a connection's sixth execution of a prepared statement. Made
    while the tables were nearly empty, that plan scanned every request (or every dead index entry) to
    record each batch, for as long as the connection lived (migration 0006, db.create_engine)."""
    settings = make_settings("nats://127.0.0.1:1", database_url, database_pool_size=1)
    engine = db.create_engine(settings)
    try:
        for batch in range(8):
            submitted = [
                store.Submitted.of_event(
                    RequestSubmitted(
                        task_id=uuid.uuid4(), rid=f"b{batch}-{n}", items=[Item(number=n, job="sum")]
                    ),
                    False,
                    b"{}",
                )
                for n in range(5)
            ]
            accepted = await store.accept_requests(engine, submitted)
            ids = [a.task_id for a in accepted if isinstance(a, store.Accepted)]
            items = store.NewItems()
            for task_id in ids:
                items.add(task_id, [1], ["sum"], [("done", "3", None, None)])
            recorded = await store.record_requests(engine, ids, items, {})
            assert [r.task_id for r in recorded] == ids
        async with engine.connect() as conn:  # the pool's one connection: the one that recorded
            plans = (
                await conn.execute(
                    text(
                        "SELECT generic_plans, custom_plans FROM pg_prepared_statements "
                        "WHERE statement LIKE '%WITH claimed AS%'"
                        " AND statement NOT LIKE '%pg_prepared_statements%'"
                    )
                )
            ).one()
    finally:
        await engine.dispose()
    assert plans.generic_plans == 0
    assert plans.custom_plans == 8
