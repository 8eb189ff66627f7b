"""Benchmarks, run by ``python -m bench <name>|all [options]`` from the repository root (``make
bench`` runs them all). Each module defines ``add_arguments(parser)`` (optional) and
``run(out, **options)``, and prints its figures; nothing here asserts timings (the test suite
never does either). A benchmark uses sessionadmin as any client would; it never imports the test
suite (it may start ``tests/mcp_servers/server.py`` as a program, by path)."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def command(*args: str) -> list[str]:
    """The command line of ``python -m bench *args``; run it with ``cwd=REPO``."""
    return [sys.executable, "-m", "bench", *args]


@contextlib.contextmanager
def scratch_database(db: str, tmp: Path, pg_admin_url: str, name: str) -> Iterator[str]:
    """The ``DATABASE_URL`` of a database of the benchmark's own: a SQLite file in ``tmp``, or a
    fresh PostgreSQL database ``name`` on the server of ``pg_admin_url``, dropped afterwards."""
    if db == "sqlite":
        yield f"sqlite:///{tmp / 'bench.sqlite3'}"
        return
    if db != "postgres":
        raise ValueError(f"unknown database {db!r} (sqlite or postgres)")
    import psycopg

    admin = psycopg.connect(pg_admin_url.replace("postgres://", "postgresql://", 1), autocommit=True)
    try:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.execute(f'CREATE DATABASE "{name}"')
        yield pg_admin_url.rsplit("/", 1)[0] + f"/{name}"
    finally:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()
