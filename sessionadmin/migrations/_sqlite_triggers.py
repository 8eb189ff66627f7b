"""SQLite rebuilds a table for many ALTERs (a NOT NULL column, a changed column definition),
and the rebuilt table has lost its triggers. A migration that may rebuild the session table
ends with ``RunPython(reinstall_counter_triggers, noop)``: it reinstalls the active-session
counter's triggers (0005) and reseeds the counter. PostgreSQL keeps triggers across ALTERs."""

import importlib

_counter = importlib.import_module("sessionadmin.migrations.0005_active_session_counter")


def reinstall_counter_triggers(apps, schema_editor):
    if schema_editor.connection.vendor != "sqlite":
        return
    for sql in [*_counter.SQLITE_DOWN, *_counter.SQLITE_UP, _counter.SEED]:
        schema_editor.execute(sql)
