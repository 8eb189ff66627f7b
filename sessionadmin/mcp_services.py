"""Service layer for MCP clients attached to sessions: every write to McpClient goes here, with
its audit entry in the same transaction. Connections are opened per operation by
``mcp_client.py`` (the only module that imports the SDK)."""

from __future__ import annotations

import uuid
from collections.abc import Sequence

from django.db import transaction
from django.utils import timezone

from sessionadmin import audit
from sessionadmin.models import McpClient


def close_clients_of_sessions(session_ids: Sequence[uuid.UUID], *, actor: str) -> int:
    """Close every open client of these sessions (session cleanup calls this before the
    workspace goes). One ``mcp_client_closed`` entry per client. Returns how many closed."""
    now = timezone.now()
    with transaction.atomic():
        clients = list(
            McpClient.objects.select_for_update()
            .filter(session_id__in=list(session_ids))
            .exclude(status=McpClient.Status.CLOSED)
            .select_related("session")
        )
        if not clients:
            return 0
        McpClient.objects.filter(pk__in=[c.pk for c in clients]).update(status=McpClient.Status.CLOSED, closed_at=now)
        audit.write(
            audit.entry(
                "mcp_client_closed", actor=actor, user_id=c.session.user_id, org_id=c.session.org_id,
                session_id=c.session_id, details={"client_id": c.client_id, "reason": "session cleanup"}, at=now,
            )
            for c in clients
        )
    return len(clients)
