"""Audit entries: built here, written by the service layer in the same transaction as the change
they describe. A custom logger (the seed's ``AuditLogger`` interface) can be attached to a
manager as an extra sink; it is called after commit, so it never sees a change that was rolled
back and its failures cannot undo or corrupt one."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterable
from datetime import datetime
from typing import Any, Protocol

from django.db import transaction
from django.utils import timezone

from sessionadmin import ledger
from sessionadmin.models import AuditEntry

logger = logging.getLogger(__name__)

SYSTEM_ACTOR = "system"
MAX_DETAIL_TEXT = 2000


class AuditLogger(Protocol):
    def log_session_event(self, user_id: str, org_id: str, event_type: str, session_id: str, details: dict[str, Any]) -> None: ...


def entry(
    event_type: str,
    *,
    actor: str,
    user_id: str = "",
    org_id: str = "",
    session_id: uuid.UUID | str | None = None,
    details: dict[str, Any] | None = None,
    at: datetime | None = None,
) -> AuditEntry:
    """An unsaved audit entry. Ids that failed validation are never stored raw: callers pass
    ``safe_repr`` of them inside ``details`` instead."""
    return AuditEntry(
        at=at or timezone.now(),
        actor=(actor or SYSTEM_ACTOR)[:200],
        user_id=user_id,
        org_id=org_id,
        event_type=event_type,
        session_id=session_id,
        details=details or {},
    )


def session_entry(
    event_type: str, session: Any, actor: str, details: dict[str, Any] | None = None, at: datetime | None = None
) -> AuditEntry:
    """An unsaved entry about one session (its user, org and id filled in)."""
    return entry(
        event_type, actor=actor, user_id=session.user_id, org_id=session.org_id, session_id=session.id, details=details, at=at
    )


def write(entries: Iterable[AuditEntry], *, sink: AuditLogger | None = None) -> list[AuditEntry]:
    """Insert entries in the caller's transaction, chained into the ledger (``ledger.append``:
    call this last in the transaction, it serialises every audit writer); forward them to
    ``sink`` after commit."""
    rows = ledger.append(list(entries))
    if sink is not None and rows:
        transaction.on_commit(lambda: forward(sink, rows))
    return rows


def forward(sink: AuditLogger, rows: list[AuditEntry]) -> None:
    for row in rows:
        try:
            sink.log_session_event(row.user_id, row.org_id, row.event_type, str(row.session_id or ""), dict(row.details))
        except Exception:
            # The change is committed and recorded in AuditEntry; a broken external sink must
            # not turn that into an error for the caller.
            logger.exception("custom audit logger failed on %s", row.event_type)


def safe_repr(value: object, limit: int = 80) -> str:
    """A bounded, printable rendering of untrusted input for audit details."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
