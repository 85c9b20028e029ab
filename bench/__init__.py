"""End-to-end benchmark of Squall: ``python -m bench --help``."""
