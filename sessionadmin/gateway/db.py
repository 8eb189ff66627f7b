"""The gateway's way to the database: the ORM runs in a small pool of threads of its own, never
on the event loop, and always through ``mcp_services`` (one owner per state change)."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from django.db import close_old_connections, connection

T = TypeVar("T")


class Database:
    def __init__(self, threads: int) -> None:
        self._executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="gateway-db")

    async def run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run ``fn(*args, **kwargs)`` in a database thread and await its result. Cancelling
        the awaiting task does not stop the job (a transaction is never cut in half)."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, functools.partial(_job, fn, args, kwargs))

    def shutdown(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=False)


def _job(fn: Callable[..., T], args: tuple[Any, ...], kwargs: dict[str, Any]) -> T:
    # Each thread keeps its connection between jobs; drop it if it went stale or too old, as a
    # request would.
    close_old_connections()
    try:
        return fn(*args, **kwargs)
    finally:
        if connection.in_atomic_block:  # pragma: no cover - a bug in fn; never leak a transaction
            connection.close()
