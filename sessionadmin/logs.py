"""Log lines: text by default, or one JSON object per line with SESSIONADMIN_LOG_FORMAT=json
(``time``, ``level``, ``logger``, ``message``, and ``request_id`` / ``session_id`` when the line
was written while serving a request or a session). The ids live in context variables, set by
``RequestIdMiddleware`` (web) and the gateway's session endpoint, so they follow a request
through threads started with ``contextvars.copy_context`` and through asyncio tasks."""

from __future__ import annotations

import contextvars
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

request_id: contextvars.ContextVar[str] = contextvars.ContextVar("sessionadmin_request_id", default="")
session_id: contextvars.ContextVar[str] = contextvars.ContextVar("sessionadmin_session_id", default="")


_VARS = {"request_id": request_id, "session_id": session_id}


@contextmanager
def context(**ids: str) -> Iterator[None]:
    """Set ``request_id`` and/or ``session_id`` for the lines written inside the block."""
    tokens = [(_VARS[name], _VARS[name].set(value)) for name, value in ids.items()]
    try:
        yield
    finally:
        for var, token in reversed(tokens):
            var.reset(token)


def clear_ids(**_: Any) -> None:
    """``request_finished``: the lines of whatever the thread does next carry no stale id."""
    request_id.set("")
    session_id.set("")


class ContextFilter(logging.Filter):
    """Copies the ids of the current context onto every record (empty when unknown)."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id.get()
        record.session_id = session_id.get()
        return True


def json_formatter() -> Any:
    """python-json-logger's formatter with our field names; ids left out when empty."""
    from pythonjsonlogger.json import JsonFormatter

    class Formatter(JsonFormatter):
        def add_fields(self, log_record: dict[str, Any], record: logging.LogRecord, message_dict: dict[str, Any]) -> None:
            super().add_fields(log_record, record, message_dict)
            for key in ("request_id", "session_id"):
                if not log_record.get(key):
                    log_record.pop(key, None)

    return Formatter(
        "{asctime}{levelname}{name}{message}{request_id}{session_id}",
        style="{",
        rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
        datefmt="%Y-%m-%dT%H:%M:%S%z",
    )
