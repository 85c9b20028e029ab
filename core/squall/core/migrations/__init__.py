"""Alembic migrations: the only way Squall's schema changes. Run with ``squall migrate``."""

from alembic import op


def drop_index_if_invalid(name: str) -> None:
    """Drop the index if a concurrent build of it failed: that leaves an invalid index behind, which
    ``CREATE INDEX ... IF NOT EXISTS`` would keep. For migrations that build indexes concurrently."""
    op.execute(
        f"""
        DO $$ BEGIN
            IF EXISTS (SELECT 1 FROM pg_index
                       WHERE indexrelid = to_regclass('{name}') AND NOT indisvalid) THEN
                EXECUTE 'DROP INDEX {name}';
            END IF;
        END $$
        """
    )
