"""Django's SQLite backend, with one change: a flush (``manage.py flush``, the test runner
between transactional tests) empties the audit ledger's head table first. SQLite has no
session variables, so the audit table's delete trigger (migration 0014) lets a DELETE through
only while the retention purge's marker row exists or once the head row is gone; Django flushes
tables in no particular order, so without this the trigger would refuse the flush."""

from __future__ import annotations

from typing import Any

from django.db.backends.sqlite3 import base, operations

HEAD_TABLE = "sessionadmin_auditchainhead"


class DatabaseOperations(operations.DatabaseOperations):
    def sql_flush(self, style: Any, tables: Any, *, reset_sequences: bool = False, allow_cascade: bool = False) -> list[str]:
        statements = super().sql_flush(style, tables, reset_sequences=reset_sequences, allow_cascade=allow_cascade)
        if statements and HEAD_TABLE in tables:
            statements.insert(0, f"DELETE FROM {self.quote_name(HEAD_TABLE)};")
        return statements


class DatabaseWrapper(base.DatabaseWrapper):
    ops_class = DatabaseOperations
