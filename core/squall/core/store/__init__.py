"""Squall's state in PostgreSQL: every statement, grouped by the concern it serves.

Each module serves one concern, so a module's imports show which role runs which SQL: ``intake`` and
``reads`` (gateway), ``recording`` and ``polling`` (processor), ``scheduling`` (scheduler), ``operations``,
``dependencies`` and ``tokens`` (operator API, command line), ``counters`` (gateway and scheduler), and
``driver`` and ``item_rules``, which the others share.
"""
