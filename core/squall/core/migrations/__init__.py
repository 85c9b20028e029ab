"""Alembic migrations: the only way Squall's schema changes. Run with ``squall migrate``."""
