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


def require_code_from(revision: str) -> None:
    """For a contract migration (one that breaks code older than ``revision``: a dropped column, say): code
    whose newest migration is older than ``revision`` then refuses to start against this schema instead of
    failing on its first statement. Never in the release right after ``revision``'s: its previous release
    must keep running during the rolling upgrade (docs/design.md, "Releases and upgrades")."""
    op.execute(
        f"UPDATE schema_compatibility SET oldest_code_revision = '{revision}' "
        f"WHERE oldest_code_revision < '{revision}'"
    )
