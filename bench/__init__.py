"""Benchmarks, run by ``python -m bench <name>|all [options]`` from the repository root (``make
bench`` runs them all). Each module defines ``add_arguments(parser)`` (optional) and
``run(out, **options)``, and prints its figures; nothing here asserts timings (the test suite
never does either). A benchmark uses sessionadmin as any client would; it never imports the test
suite (it may start ``tests/mcp_servers/server.py`` as a program, by path)."""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def command(*args: str) -> list[str]:
    """The command line of ``python -m bench *args``; run it with ``cwd=REPO``."""
    return [sys.executable, "-m", "bench", *args]
