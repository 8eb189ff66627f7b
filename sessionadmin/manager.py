"""The seed's ``SessionManagerV2`` API in Python: a thin facade over ``lifecycle`` (which owns
every state change) with the seed's configuration (workspace root, global limit, prompt
composer, audit logger) and its semantics: ``cleanup_session`` returns once the workspace is
gone, ``cleanup_inactive_sessions`` ends idle sessions in-process. The rest of sessionadmin
(dashboard, API, tasks) calls ``lifecycle`` directly.

The manager hands out session rows bound to itself, so that the seed's methods on a session
(prompt, MCP clients) go back through the same manager (and its audit logger).
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from django.conf import settings
from django.utils import timezone

from sessionadmin import audit, lifecycle
from sessionadmin.audit import AuditLogger
from sessionadmin.lifecycle import (  # noqa: F401  (the seed's errors live here too)
    INACTIVITY_ACTOR,
    InvalidInput,
    InvalidOrgID,
    InvalidUserID,
    MaxSessionsReached,
    MCPClientNotFound,
    SessionError,
    SessionNotFound,
    WorkspaceCreationError,
    WorkspaceRemovalError,
    parse_session_id,
)
from sessionadmin.models import AgentSession, McpClient
from sessionadmin.prompts import DefaultPromptComposer, PromptComposer
from sessionadmin.validation import MAX_REASON_LENGTH  # noqa: F401


class SessionManager:
    def __init__(
        self,
        workspace_root: Path | str | None = None,
        max_concurrent: int | None = None,
        *,
        prompt_composer: PromptComposer | None = None,
        audit_logger: AuditLogger | None = None,
    ) -> None:
        self.workspace_root = Path(workspace_root or settings.SESSIONADMIN_WORKSPACE_ROOT).resolve()
        self.max_concurrent = settings.SESSIONADMIN_MAX_CONCURRENT if max_concurrent is None else max_concurrent
        if self.max_concurrent < 0:
            raise ValueError("max_concurrent must be >= 0 (0 = no global limit)")
        self.prompt_composer: PromptComposer = prompt_composer or DefaultPromptComposer()
        self.audit_logger = audit_logger

    def set_prompt_composer(self, composer: PromptComposer) -> None:
        self.prompt_composer = composer

    def set_audit_logger(self, audit_logger: AuditLogger | None) -> None:
        self.audit_logger = audit_logger

    def _wrap(self, row: AgentSession) -> AgentSession:
        row._manager = self
        return row

    # --- create and read -------------------------------------------------------------------

    def create_session(
        self, user_id: str, org_id: str, *, actor: str | None = None, variables: dict[str, Any] | None = None
    ) -> AgentSession:
        row = lifecycle.create(
            user_id=user_id,
            org_id=org_id,
            actor=actor or audit.SYSTEM_ACTOR,
            limits=lifecycle.Limits(workspace_root=str(self.workspace_root), max_concurrent=self.max_concurrent),
            variables=variables,
            composer=self.prompt_composer,
            sink=self.audit_logger,
        )
        return self._wrap(row)

    def get_session(self, session_id: uuid.UUID | str) -> AgentSession:
        """An active session; counts as activity (``last_active_at`` moves, coalesced)."""
        sid = parse_session_id(session_id)
        row = AgentSession.objects.select_related("org").active().filter(pk=sid).first()
        if row is None:
            raise SessionNotFound(f"session {sid} not found")
        now = timezone.now()
        if lifecycle.touch(session_id=sid, now=now):
            row.last_active_at = now
        return self._wrap(row)

    def count_user_sessions(self, user_id: str) -> int:
        return AgentSession.objects.active().for_user(user_id).count()

    def count_all_sessions(self) -> int:
        return AgentSession.objects.active().count()

    def list_sessions(self, user_id: str) -> list[AgentSession]:
        rows = AgentSession.objects.select_related("org").active().for_user(user_id).order_by("created_at")
        return [self._wrap(s) for s in rows]

    # --- activity, prompt, pin -------------------------------------------------------------

    def touch(self, session_id: uuid.UUID | str, *, now: datetime | None = None) -> bool:
        return lifecycle.touch(session_id=session_id, now=now)

    def update_system_prompt(
        self, session: AgentSession | uuid.UUID | str, prompt: str, *, actor: str | None = None
    ) -> AgentSession:
        session_id = session.id if isinstance(session, AgentSession) else session
        row = lifecycle.update_prompt(
            session_id=session_id, prompt=prompt, actor=actor or audit.SYSTEM_ACTOR, sink=self.audit_logger
        )
        if isinstance(session, AgentSession):
            session.system_prompt = prompt
        return self._wrap(row)

    def pin_session(
        self, session_id: uuid.UUID | str, *, until: datetime, reason: str, actor: str, now: datetime | None = None
    ) -> AgentSession:
        """Keep an active session from idle cleanup until ``until``."""
        row = lifecycle.pin(session_id=session_id, until=until, reason=reason, actor=actor, now=now, sink=self.audit_logger)
        return self._wrap(row)

    def unpin_session(self, session_id: uuid.UUID | str, *, actor: str) -> AgentSession:
        return self._wrap(lifecycle.unpin(session_id=session_id, actor=actor, sink=self.audit_logger))

    # --- cleanup: the seed's synchronous semantics over the one pipeline ---------------------

    def cleanup_session(self, session_id: uuid.UUID | str, *, actor: str | None = None, reason: str = "") -> None:
        """End a session and return once it is cleaned up: marked terminating (``lifecycle.end``)
        then, in this process, MCP clients closed, workspace removed, marked ended
        (``lifecycle.finish``). A second call is SessionNotFound. If the removal fails the
        session stays ``terminating`` with the error and WorkspaceRemovalError is raised."""
        actor = actor or audit.SYSTEM_ACTOR
        sid = parse_session_id(session_id)
        ended = lifecycle.end(session_ids=[sid], actor=actor, reason=reason, enqueue=False, sink=self.audit_logger)
        # A session already terminating (its removal failed before) is retried, not refused.
        if not ended.sessions and not AgentSession.objects.filter(pk=sid, status=AgentSession.Status.TERMINATING).exists():
            raise SessionNotFound(f"session {sid} not found")
        result = lifecycle.finish(session_ids=[sid], actor=actor, sink=self.audit_logger)
        if str(sid) in result.failed:
            raise WorkspaceRemovalError(result.failed[str(sid)])

    def cleanup_inactive_sessions(
        self,
        threshold: timedelta,
        *,
        now: datetime | None = None,
        actor: str = INACTIVITY_ACTOR,
        batch_size: int | None = None,
    ) -> list[str]:
        """End active sessions idle longer than ``threshold`` (an org's idle timeout overrides
        it; pinned and busy sessions are skipped), in this process. Returns the ids ended."""
        ended: list[str] = []
        for batch in lifecycle.end_idle(
            threshold=threshold, actor=actor, batch_size=batch_size, enqueue=False, now=now, sink=self.audit_logger
        ):
            ended += lifecycle.finish(session_ids=batch.ids, actor=actor, sink=self.audit_logger).ended
        return ended

    # --- MCP clients (the seed's AddMCPClient/RemoveMCPClient/GetMCPClient/ListMCPClients) ---
    # Done by ``mcp_services``; an unknown client id raises MCPClientNotFound.

    def add_mcp_client(self, session: AgentSession, server: Any = None, *, actor: str | None = None, **options: Any) -> McpClient:
        from sessionadmin import mcp_services  # the MCP layer imports lifecycle, not this facade

        return mcp_services.add_client(session.id, server=server, actor=actor or audit.SYSTEM_ACTOR, **options)

    def remove_mcp_client(self, session: AgentSession, client_id: str, *, actor: str | None = None) -> McpClient:
        from sessionadmin import mcp_services

        return mcp_services.remove_client(session.id, client_id, actor=actor or audit.SYSTEM_ACTOR)

    def get_mcp_client(self, session: AgentSession, client_id: str) -> McpClient:
        from sessionadmin import mcp_services

        return mcp_services.get_client(session.id, client_id)

    def list_mcp_clients(self, session: AgentSession) -> list[McpClient]:
        from sessionadmin import mcp_services

        return mcp_services.list_clients(session.id)

    def end_sessions(self, session_ids: Sequence[uuid.UUID | str], *, actor: str, reason: str) -> lifecycle.Ended:
        """End sessions the way the dashboard does: marked now, removed by the workers."""
        return lifecycle.end(session_ids=session_ids, actor=actor, reason=reason, sink=self.audit_logger)
