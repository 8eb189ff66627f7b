"""Tables of sessionadmin.

Rows are written only through the service layer (``manager.py`` for sessions and the other
service modules for orgs, prompt layers, MCP and maintenance); reads go through the QuerySet
methods defined here, named for their purpose.
"""

from __future__ import annotations

import os
import uuid
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import MaxLengthValidator, MaxValueValidator, MinValueValidator
from django.db import models
from django.db.models import Q
from django.utils import timezone

from sessionadmin.validation import (
    MAX_ID_LENGTH,
    MAX_LAYER_LENGTH,
    MAX_LIMIT,
    MAX_PROMPT_LENGTH,
    MAX_REASON_LENGTH,
    MIN_IDLE_TIMEOUT_SECONDS,
    validate_org_id_field,
    validate_reason,
    validate_text,
    validate_user_id_field,
    validate_variables,
)


class Org(models.Model):
    # The platform's external org id is the primary key, so that ``session.org_id`` *is* the
    # id the platform knows. It never changes (the admin shows it read-only once saved).
    id = models.CharField(primary_key=True, max_length=MAX_ID_LENGTH, validators=[validate_org_id_field])
    name = models.CharField(max_length=200, validators=[validate_text])
    # The org's own prompt, composed after the global layers and before the org's extra layers.
    prompt = models.TextField(
        blank=True, max_length=MAX_LAYER_LENGTH, validators=[MaxLengthValidator(MAX_LAYER_LENGTH), validate_text]
    )
    max_sessions = models.PositiveIntegerField(
        null=True,
        blank=True,
        validators=[MinValueValidator(1), MaxValueValidator(MAX_LIMIT)],
        help_text="Concurrent active sessions in this org; empty = no limit.",
    )
    max_sessions_per_user = models.PositiveIntegerField(
        null=True,
        blank=True,
        validators=[MinValueValidator(1), MaxValueValidator(MAX_LIMIT)],
        help_text="Concurrent active sessions per user in this org; empty = no limit.",
    )
    idle_timeout_seconds = models.PositiveIntegerField(
        null=True,
        blank=True,
        validators=[MinValueValidator(MIN_IDLE_TIMEOUT_SECONDS), MaxValueValidator(MAX_LIMIT)],
        help_text="Seconds; overrides the global idle timeout; empty = global default.",
    )
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["id"]
        constraints = [
            # 0 would mean "no session at all" for a limit and "end at once" for a timeout;
            # "no limit" is NULL.
            models.CheckConstraint(
                name="org_limits_positive",
                condition=(Q(max_sessions__isnull=True) | Q(max_sessions__gte=1))
                & (Q(max_sessions_per_user__isnull=True) | Q(max_sessions_per_user__gte=1))
                & (Q(idle_timeout_seconds__isnull=True) | Q(idle_timeout_seconds__gte=60)),
            ),
        ]

    def __str__(self) -> str:
        return self.id


class LimitLock(models.Model):
    """A single row locked (``SELECT ... FOR UPDATE``) by every session create, so that
    check-then-insert cannot race across processes, and which holds the number of active
    sessions. Database triggers (migration 0005) keep ``active_sessions`` exact on every
    insert, status change and delete of a session row, whatever code path writes it, so the
    global limit check is O(1) instead of a count over every active session."""

    id = models.PositiveSmallIntegerField(primary_key=True, default=1)
    active_sessions = models.IntegerField(default=0)

    def __str__(self) -> str:
        return "global limit lock"


class PromptLayer(models.Model):
    class Scope(models.TextChoices):
        GLOBAL = "global", "Global"
        ORG = "org", "Org"
        USER = "user", "User"

    scope = models.CharField(max_length=8, choices=Scope.choices)
    org = models.ForeignKey(Org, null=True, blank=True, on_delete=models.CASCADE, related_name="prompt_layers")
    # For user layers: the user's external id. With ``org`` empty it applies in every org.
    user_id = models.CharField(max_length=MAX_ID_LENGTH, blank=True)
    name = models.CharField(max_length=200, validators=[validate_text])
    body = models.TextField(max_length=MAX_LAYER_LENGTH, validators=[MaxLengthValidator(MAX_LAYER_LENGTH), validate_text])
    # Lower numbers come first within a layer.
    priority = models.IntegerField(default=100)
    enabled = models.BooleanField(default=True)
    # Bumped on every edit, recorded in a session's prompt provenance.
    version = models.PositiveIntegerField(default=1)
    updated_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["scope", "priority", "id"]
        constraints = [
            models.CheckConstraint(
                name="promptlayer_scope_valid",
                condition=Q(scope="global", org__isnull=True, user_id="")
                | Q(scope="org", org__isnull=False, user_id="")
                | (Q(scope="user") & ~Q(user_id="")),
            ),
        ]
        indexes = [
            # Composition: enabled layers of one scope/org/user, in priority order.
            models.Index(fields=["scope", "org", "user_id", "priority"], name="promptlayer_compose_idx"),
        ]

    def __str__(self) -> str:
        owner = {"global": "global", "org": f"org {self.org_id}", "user": f"user {self.user_id}"}[self.scope]
        return f"{self.name} ({owner}, v{self.version})"


def uuid_prefix_range(text: str) -> tuple[uuid.UUID, uuid.UUID] | None:
    """The UUIDs starting with ``text`` (4 to 32 hex digits, dashes ignored: the 8-character
    short ids the dashboard shows) as an inclusive range, or None if it is no such prefix."""
    digits = text.strip().replace("-", "").lower()
    if 4 <= len(digits) <= 32 and all(c in "0123456789abcdef" for c in digits):
        return uuid.UUID(digits.ljust(32, "0")), uuid.UUID(digits.ljust(32, "f"))
    return None


class AgentSessionQuerySet(models.QuerySet["AgentSession"]):
    def active(self) -> AgentSessionQuerySet:
        return self.filter(status=AgentSession.Status.ACTIVE)

    def live(self) -> AgentSessionQuerySet:
        """Sessions that still own a workspace: active or on their way out."""
        return self.filter(status__in=[AgentSession.Status.ACTIVE, AgentSession.Status.TERMINATING])

    def for_user(self, user_id: str) -> AgentSessionQuerySet:
        return self.filter(user_id=user_id)

    def idle_since(self, cutoff: datetime) -> AgentSessionQuerySet:
        return self.active().filter(last_active_at__lt=cutoff)

    def not_pinned(self, now: datetime) -> AgentSessionQuerySet:
        return self.filter(Q(pinned_until__isnull=True) | Q(pinned_until__lte=now))

    def not_busy(self, now: datetime) -> AgentSessionQuerySet:
        """Without a tool call in flight (the gateway's lease has run out or was never taken)."""
        return self.filter(Q(busy_until__isnull=True) | Q(busy_until__lte=now))

    # --- dashboard reads (sessionadmin/views.py) ---

    def for_dashboard(self) -> AgentSessionQuerySet:
        """List rows: the org (for its idle timeout) joined, the number of open MCP clients as
        a correlated subquery (served by mcpclient_session_idx), big text fields left out."""
        from django.db.models import Count, OuterRef, Subquery
        from django.db.models.functions import Coalesce

        open_clients = (
            McpClient.objects.filter(session=OuterRef("pk"))
            .exclude(status=McpClient.Status.CLOSED)
            .order_by()
            .values("session")
            .annotate(n=Count("*"))
            .values("n")
        )
        return (
            self.select_related("org")
            .annotate(mcp_count=Coalesce(Subquery(open_clients), 0))
            .defer("system_prompt", "prompt_provenance", "variables", "last_error", "org__prompt")
        )

    def search(self, text: str) -> AgentSessionQuerySet:
        """A user id prefix, or a session id / its leading hex digits (4 or more) as a primary
        key range, so both halves are index range scans."""
        text = text.strip()
        if not text:
            return self
        condition = Q(user_id__startswith=text)
        bounds = uuid_prefix_range(text)
        if bounds is not None:
            condition |= Q(pk__gte=bounds[0], pk__lte=bounds[1])
        return self.filter(condition)


class AgentSession(models.Model):
    """One agent session. Named so as not to clash with Django's own ``Session``."""

    class Status(models.TextChoices):
        ACTIVE = "active", "Active"
        TERMINATING = "terminating", "Terminating"
        ENDED = "ended", "Ended"
        FAILED = "failed", "Failed"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    user_id = models.CharField(max_length=MAX_ID_LENGTH, validators=[validate_user_id_field])
    org = models.ForeignKey(Org, on_delete=models.PROTECT, related_name="sessions")
    # Where the workspace was created: removal uses this path (checked to end in
    # {user_id}/{id}), never one rebuilt from today's SESSIONADMIN_WORKSPACE_ROOT.
    workspace_path = models.CharField(max_length=4096)
    # The gateway (one per host holding workspaces) that serves this session's MCP clients.
    gateway = models.CharField(max_length=200, blank=True)
    system_prompt = models.TextField(
        blank=True, max_length=MAX_PROMPT_LENGTH, validators=[MaxLengthValidator(MAX_PROMPT_LENGTH), validate_text]
    )
    # Which layers the prompt was composed from: [{"kind", "id", "name", "version", "sha256"}].
    prompt_provenance = models.JSONField(default=list, blank=True)
    variables = models.JSONField(default=dict, blank=True, validators=[validate_variables])
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.ACTIVE)
    created_at = models.DateTimeField(default=timezone.now)
    created_by = models.CharField(max_length=200, blank=True)
    last_active_at = models.DateTimeField(default=timezone.now)
    ended_at = models.DateTimeField(null=True, blank=True)
    ended_by = models.CharField(max_length=200, blank=True)
    end_reason = models.CharField(max_length=MAX_REASON_LENGTH, blank=True, validators=[validate_reason])
    # The run record that tracks this session's removal (set when it is marked terminating).
    cleanup_run = models.ForeignKey("MaintenanceRun", null=True, blank=True, on_delete=models.SET_NULL, related_name="sessions")
    # The last failure of the cleanup (workspace removal), shown while it is retried.
    last_error = models.TextField(blank=True)
    cleanup_attempts = models.PositiveIntegerField(default=0)
    pinned_until = models.DateTimeField(null=True, blank=True)
    pin_reason = models.CharField(max_length=MAX_REASON_LENGTH, blank=True, validators=[validate_reason])
    pinned_by = models.CharField(max_length=200, blank=True)
    # A tool call is in flight until at least this time (renewed by the MCP gateway while calls
    # run): the inactivity cleanup never ends a session whose lease is in the future, however
    # long ago its last heartbeat was.
    busy_until = models.DateTimeField(null=True, blank=True)

    objects = AgentSessionQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at"]
        permissions = [
            # Viewers have only the built-in view permissions; operators also have these.
            ("operate_sessions", "Can create, kill and pin sessions and attach MCP clients"),
            ("attach_adhoc_mcp", "Can attach an ad-hoc MCP server URL"),
        ]
        constraints = [
            models.CheckConstraint(
                name="agentsession_status_valid",
                condition=Q(status__in=["active", "terminating", "ended", "failed"]),
            ),
            models.CheckConstraint(
                name="agentsession_ended_has_time",
                condition=~Q(status__in=["ended", "failed"]) | Q(ended_at__isnull=False),
            ),
        ]
        indexes = [
            # Limit counts on create: active sessions of one org / one user in an org.
            models.Index(fields=["org", "status", "user_id"], name="session_org_status_user_idx"),
            # Inactivity cleanup: active sessions ordered/filtered by last activity.
            models.Index(fields=["status", "last_active_at"], name="session_status_active_idx"),
            # Dashboard default list and global count: by status, newest first.
            models.Index(fields=["status", "-created_at"], name="session_status_created_idx"),
            # list_sessions(user_id) and the dashboard user filter.
            models.Index(fields=["user_id", "-created_at"], name="session_user_created_idx"),
            # History purge: ended rows older than the retention.
            models.Index(fields=["ended_at"], name="session_ended_at_idx"),
            # Dashboard default list (live sessions, newest first): a small partial index read
            # in order, so the first page never sorts the whole live set.
            models.Index(
                fields=["-created_at", "-id"],
                condition=Q(status__in=["active", "terminating"]),
                name="session_live_created_idx",
            ),
            # Dashboard list over all statuses, newest first, and its deep pages (OFFSET walks it).
            models.Index(fields=["-created_at", "-id"], name="session_created_idx"),
            # Dashboard search by user id prefix (LIKE 'x%' needs pattern ops outside the C
            # collation; other backends ignore the opclass).
            models.Index(fields=["user_id"], opclasses=["varchar_pattern_ops"], name="session_user_pattern_idx"),
            # Dashboard list of live sessions sorted by last activity (either direction).
            models.Index(
                fields=["-last_active_at", "-id"],
                condition=Q(status__in=["active", "terminating"]),
                name="session_live_active_idx",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.id} ({self.user_id}@{self.org_id}, {self.status})"

    @property
    def short_id(self) -> str:
        return str(self.id)[:8]

    @property
    def is_live(self) -> bool:
        return self.status in (self.Status.ACTIVE, self.Status.TERMINATING)

    # --- the seed's Session API -----------------------------------------------------------
    # ``SessionManager`` binds itself to the sessions it hands out; the methods that change
    # state go back through it (and its audit logger). The model knows no service module.
    _manager: Any = None

    def _bound(self) -> Any:
        if self._manager is None:
            raise RuntimeError("this session was not handed out by a SessionManager (use sessionadmin.manager)")
        return self._manager

    def get_system_prompt(self) -> str:
        return self.system_prompt

    def get_workspace_path(self) -> str:
        return self.workspace_path

    def update_system_prompt(self, prompt: str, *, actor: str | None = None) -> None:
        self._bound().update_system_prompt(self, prompt, actor=actor)

    def add_mcp_client(self, server: Any = None, *, actor: str | None = None, **options: Any) -> McpClient:
        return self._bound().add_mcp_client(self, server, actor=actor, **options)

    def remove_mcp_client(self, client_id: str, *, actor: str | None = None) -> McpClient:
        return self._bound().remove_mcp_client(self, client_id, actor=actor)

    def get_mcp_client(self, client_id: str) -> McpClient:
        return self._bound().get_mcp_client(self, client_id)

    def list_mcp_clients(self) -> list[McpClient]:
        return self._bound().list_mcp_clients(self)

    def get_session_info(self) -> dict[str, Any]:
        return {
            "id": str(self.id),
            "user_id": self.user_id,
            "org_id": self.org_id,
            "workspace_path": self.workspace_path,
            "mcp_client_ids": list(
                self.mcp_clients.exclude(status=McpClient.Status.CLOSED).order_by("client_id").values_list("client_id", flat=True)
            ),
            "created_at": self.created_at,
            "last_active_at": self.last_active_at,
            "status": self.status,
        }

    def idle_deadline(self, default_timeout: timedelta) -> datetime | None:
        """When the inactivity cleanup will end this session (None if it is not active)."""
        if self.status != self.Status.ACTIVE:
            return None
        timeout = timedelta(seconds=self.org.idle_timeout_seconds) if self.org.idle_timeout_seconds else default_timeout
        deadline = self.last_active_at + timeout
        if self.pinned_until and self.pinned_until > deadline:
            return self.pinned_until
        return deadline


class AuditChainHead(models.Model):
    """The one row (pk 1) holding the ledger's length and the hash of its last entry. Every
    audit write starts by *writing* it (``UPDATE ... SET length = length + n``): on PostgreSQL
    that takes its row lock, on SQLite the database write lock, so writers from every process
    queue there and the chain stays linear. Declared before AuditEntry on purpose: Django's
    flush empties tables in declaration order, and on SQLite the audit table's delete trigger
    lets a flush through once this row is gone (see migration 0013)."""

    id = models.PositiveSmallIntegerField(primary_key=True, default=1)
    length = models.BigIntegerField(default=0)
    head_hash = models.CharField(max_length=64)

    def __str__(self) -> str:
        return f"audit ledger head at {self.length}"


class AuditPurgeMarker(models.Model):
    """SQLite has no session variables: the retention purge inserts a row here within its
    transaction (and deletes it before commit) so the audit table's delete trigger lets it
    through. PostgreSQL uses ``SET LOCAL sessionadmin.audit_purge`` instead."""

    id = models.PositiveSmallIntegerField(primary_key=True, default=1)

    def __str__(self) -> str:
        return "audit purge in progress"


class AuditEntryQuerySet(models.QuerySet["AuditEntry"]):
    def for_session(self, session_id: uuid.UUID | str) -> AuditEntryQuerySet:
        return self.filter(session_id=session_id).order_by("at", "id")


class AuditEntry(models.Model):
    """Append-only trail. ``session_id`` is a plain UUID, not a foreign key, so entries outlive
    the session rows they describe. The application never updates or deletes a row (the one
    exception is the optional audit retention purge, which is off by default)."""

    at = models.DateTimeField(default=timezone.now)
    actor = models.CharField(max_length=200)
    user_id = models.CharField(max_length=MAX_ID_LENGTH, blank=True)
    org_id = models.CharField(max_length=MAX_ID_LENGTH, blank=True)
    event_type = models.CharField(max_length=64)
    session_id = models.UUIDField(null=True, blank=True)
    details = models.JSONField(default=dict, blank=True)
    # The ledger (sessionadmin/ledger.py): position, the previous entry's hash and this entry's
    # hash over the canonical form of every field above (sessionadmin/ledger_verify.py).
    seq = models.BigIntegerField(unique=True)
    prev_hash = models.CharField(max_length=64, default="")
    entry_hash = models.CharField(max_length=64, default="")

    objects = AuditEntryQuerySet.as_manager()

    class Meta:
        ordering = ["-at", "-id"]
        verbose_name_plural = "audit entries"
        indexes = [
            # Session detail timeline and the admin's search by session id.
            models.Index(fields=["session_id", "at"], name="audit_session_at_idx"),
            # Admin default ordering, date hierarchy and retention purge.
            models.Index(fields=["at"], name="audit_at_idx"),
            # Admin filters by event type / org / actor, newest first.
            models.Index(fields=["event_type", "at"], name="audit_event_at_idx"),
            models.Index(fields=["org_id", "at"], name="audit_org_at_idx"),
            models.Index(fields=["actor", "at"], name="audit_actor_at_idx"),
            models.Index(fields=["user_id", "at"], name="audit_user_at_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.at:%Y-%m-%d %H:%M:%S} {self.event_type} by {self.actor}"

    def save(self, *args: Any, **kwargs: Any) -> None:
        if not self._state.adding:
            raise PermissionError("audit entries are append-only")
        if self.seq is None:
            # Only the ledger numbers and chains an entry (in the caller's transaction).
            from sessionadmin import ledger

            ledger.append([self])
            return
        super().save(*args, **kwargs)

    def delete(self, *args: Any, **kwargs: Any) -> Any:
        raise PermissionError("audit entries are append-only")


class AuditCheckpoint(models.Model):
    """A signed statement of the ledger's state: Ed25519 over (length, head hash, time, the
    previous checkpoint's signature), with a key kept outside the database. Also appended to
    a JSON-lines file outside the database. Append-only (triggers, migration 0013); the oldest
    one still covering purged entries is the anchor verification starts from."""

    length = models.BigIntegerField()
    head_hash = models.CharField(max_length=64)
    at = models.CharField(max_length=32, help_text="UTC time as signed (YYYY-MM-DDTHH:MM:SS.ffffffZ)")
    prev_signature = models.CharField(max_length=128, blank=True)
    signature = models.CharField(max_length=128, unique=True)
    key_id = models.CharField(max_length=16, help_text="First 16 hex digits of the SHA-256 of the raw public key")

    class Meta:
        ordering = ["-id"]
        indexes = [
            # Anchor lookup (length just before the oldest entry) and checkpoint walk by length.
            models.Index(fields=["length"], name="audit_checkpoint_length_idx"),
        ]

    def __str__(self) -> str:
        return f"checkpoint #{self.pk} at length {self.length}"


class AuditVerification(models.Model):
    """One run of ``audit_verify`` (daily beat task, an auditor's request, or the command)."""

    started_at = models.DateTimeField(default=timezone.now)
    finished_at = models.DateTimeField(null=True, blank=True)
    triggered_by = models.CharField(max_length=200)
    ok = models.BooleanField(null=True)
    entries_verified = models.BigIntegerField(default=0)
    head_seq = models.BigIntegerField(default=0)
    head_hash = models.CharField(max_length=64, blank=True)
    last_checkpoint = models.BigIntegerField(null=True, blank=True)
    problem = models.CharField(max_length=64, blank=True)
    failing_seq = models.BigIntegerField(null=True, blank=True)
    failing_entry_id = models.BigIntegerField(null=True, blank=True)
    message = models.TextField(blank=True)

    class Meta:
        ordering = ["-started_at", "-id"]

    def __str__(self) -> str:
        state = "running" if self.ok is None else ("intact" if self.ok else f"FAILED ({self.problem})")
        return f"verification {self.started_at:%Y-%m-%d %H:%M} {state}"


def stdio_command_refusal(command: str) -> str:
    """Why a stdio catalog entry may not run ``command`` here, or "" when it may: it must be
    one of the absolute paths in ``SESSIONADMIN_STDIO_COMMANDS``, written exactly as listed.
    Checked when an entry is saved and again before every connection."""
    allowed = settings.SESSIONADMIN_STDIO_COMMANDS
    if not allowed:
        return "No stdio command may run on this installation (SESSIONADMIN_STDIO_COMMANDS is empty)."
    if not os.path.isabs(command) or os.path.normpath(command) != command:
        return f"The command must be an absolute, normalised path; allowed: {', '.join(allowed)}."
    if command not in allowed:
        return f"{command} is not an allowed stdio command (SESSIONADMIN_STDIO_COMMANDS: {', '.join(allowed)})."
    return ""


class McpServer(models.Model):
    """An operator-managed catalog entry: how to reach one MCP server. Defining one decides
    what runs on the host, so it takes its own permission (``manage_mcp_catalog``)."""

    class Transport(models.TextChoices):
        STDIO = "stdio", "stdio"
        STREAMABLE_HTTP = "streamable_http", "Streamable HTTP"
        SSE = "sse", "SSE"

    name = models.CharField(max_length=100, unique=True)
    description = models.CharField(max_length=500, blank=True)
    transport = models.CharField(max_length=20, choices=Transport.choices)
    url = models.URLField(max_length=2000, blank=True)
    command = models.CharField(max_length=1000, blank=True)
    args = models.JSONField(default=list, blank=True)
    # Encrypted JSON objects (name -> value); see ``sessionadmin/secrets.py``.
    headers_encrypted = models.TextField(blank=True)
    env_encrypted = models.TextField(blank=True)
    # stdio sandbox: host paths the server sees read-only (a venv, node_modules...), and
    # whether it shares the host's network (off: it has none).
    read_only_paths = models.JSONField(default=list, blank=True)
    network = models.BooleanField(default=False)
    enabled = models.BooleanField(default=True)
    created_at = models.DateTimeField(default=timezone.now)

    # Not a column: which stored secrets (``"headers"``, ``"env"``) the last
    # ``mcp_services.save_server`` removed because the target changed, for the page to say so.
    secrets_cleared: tuple[str, ...] = ()

    class Meta:
        ordering = ["name"]
        verbose_name = "MCP server"
        permissions = [
            ("manage_mcp_catalog", "Can create, change and delete MCP catalog entries (what runs)"),
        ]
        constraints = [
            models.CheckConstraint(
                name="mcpserver_target_matches_transport",
                condition=(Q(transport="stdio") & ~Q(command="")) | (Q(transport__in=["streamable_http", "sse"]) & ~Q(url="")),
            ),
        ]

    def __str__(self) -> str:
        return f"{self.name} ({self.get_transport_display()})"

    def clean(self) -> None:
        if self.transport == self.Transport.STDIO and self.command:
            refusal = stdio_command_refusal(self.command)
            if refusal:
                raise ValidationError({"command": refusal})

    @property
    def refusal(self) -> str:
        """Why this entry cannot be attached now ("" when it can): a stdio command that the
        allow-list no longer (or never) held."""
        return stdio_command_refusal(self.command) if self.transport == self.Transport.STDIO else ""


class McpClient(models.Model):
    """One MCP client attached to a session, with what its last handshake found."""

    class Status(models.TextChoices):
        CONNECTED = "connected", "Connected"
        # The live connection dropped; the gateway is connecting again (with backoff).
        RECONNECTING = "reconnecting", "Reconnecting"
        ERROR = "error", "Error"
        CLOSED = "closed", "Closed"

    session = models.ForeignKey(AgentSession, on_delete=models.CASCADE, related_name="mcp_clients")
    client_id = models.SlugField(max_length=100)
    server = models.ForeignKey(McpServer, null=True, blank=True, on_delete=models.SET_NULL, related_name="clients")
    # Set for ad-hoc URL attachments (no catalog entry).
    transport = models.CharField(max_length=20, choices=McpServer.Transport.choices)
    url = models.URLField(max_length=2000, blank=True)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.CONNECTED)
    server_name = models.CharField(max_length=200, blank=True)
    server_version = models.CharField(max_length=100, blank=True)
    protocol_version = models.CharField(max_length=50, blank=True)
    capabilities = models.JSONField(default=dict, blank=True)
    tools = models.JSONField(default=list, blank=True)
    resources = models.JSONField(default=list, blank=True)
    prompts = models.JSONField(default=list, blank=True)
    # How many items of each listing were not stored (over the count or size cap):
    # {"tools": n, "resources": n, "prompts": n}, kinds with none left out omitted.
    listing_omitted = models.JSONField(default=dict, blank=True)
    last_verified_at = models.DateTimeField(null=True, blank=True)
    last_error = models.TextField(blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    created_by = models.CharField(max_length=200, blank=True)
    closed_at = models.DateTimeField(null=True, blank=True)
    # How many times the gateway re-established the live connection after it dropped.
    reconnects = models.PositiveIntegerField(default=0)
    # Tool definitions approved at attach (or by an operator since): {name: {"sha256", "definition"}}.
    pinned_tools = models.JSONField(default=dict, blank=True)
    # Tools whose listed definition differs from the pin (or that appeared after attach), hidden
    # from the agent until an operator approves: {name: {"old_sha256", "new_sha256", "definition", "at"}}.
    quarantined_tools = models.JSONField(default=dict, blank=True)

    class Meta:
        ordering = ["session", "client_id"]
        verbose_name = "MCP client"
        constraints = [
            # One open client per id in a session; closed ones stay as its history, so the same
            # id can be attached again.
            models.UniqueConstraint(
                fields=["session", "client_id"], condition=~Q(status="closed"), name="mcpclient_open_unique_per_session"
            ),
        ]
        indexes = [
            # Health pass: open clients of active sessions.
            models.Index(fields=["status", "session"], name="mcpclient_status_session_idx"),
            # The session page's client list (open and closed) and the dashboard's MCP count.
            models.Index(fields=["session", "client_id"], name="mcpclient_session_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.client_id} on {self.session_id} ({self.status})"

    @property
    def shown_url(self) -> str:
        """The ad-hoc URL for pages: no user info, no query values (a token may travel there)."""
        from sessionadmin.redaction import safe_url

        return safe_url(self.url)


class MaintenanceRun(models.Model):
    """One run of one maintenance task, as operators see it on the dashboard."""

    class Outcome(models.TextChoices):
        RUNNING = "running", "Running"
        OK = "ok", "OK"
        PARTIAL = "partial", "Partial"
        FAILED = "failed", "Failed"

    task = models.CharField(max_length=100)
    started_at = models.DateTimeField(default=timezone.now)
    finished_at = models.DateTimeField(null=True, blank=True)
    outcome = models.CharField(max_length=16, choices=Outcome.choices, default=Outcome.RUNNING)
    triggered_by = models.CharField(max_length=200, blank=True)
    # The Celery worker (hostname) that runs it: a worker that starts again under the same name
    # closes the runs it left open when it died.
    worker = models.CharField(max_length=200, blank=True)
    # {"sessions_ended": n, "directories_removed": n, "errors": n, ...}
    counts = models.JSONField(default=dict, blank=True)
    session_ids = models.JSONField(default=list, blank=True)
    report = models.JSONField(default=dict, blank=True)
    error = models.TextField(blank=True)

    class Meta:
        ordering = ["-started_at", "-id"]
        indexes = [
            # Dashboard "recent runs" per task.
            models.Index(fields=["task", "-started_at"], name="maintrun_task_started_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.task} at {self.started_at:%Y-%m-%d %H:%M:%S} ({self.outcome})"


class ApiTokenQuerySet(models.QuerySet["ApiToken"]):
    def usable(self, now: datetime | None = None) -> ApiTokenQuerySet:
        now = now or timezone.now()
        return self.filter(revoked_at__isnull=True).filter(Q(expires_at__isnull=True) | Q(expires_at__gt=now))


class ApiToken(models.Model):
    """A bearer token of the runtime API. Only a hash of the secret is stored."""

    name = models.CharField(max_length=100, unique=True)
    # The first characters of the token, to find the row without scanning hashes.
    prefix = models.CharField(max_length=16, unique=True)
    token_hash = models.CharField(max_length=128)
    org = models.ForeignKey(Org, null=True, blank=True, on_delete=models.CASCADE, related_name="api_tokens")
    expires_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    created_by = models.CharField(max_length=200, blank=True)
    last_used_at = models.DateTimeField(null=True, blank=True)
    # May scrape /metrics (web tier and gateway). A token for Prometheus needs nothing else, but
    # it is still a runtime API token: give Prometheus a token of its own.
    can_read_metrics = models.BooleanField(default=False)

    objects = ApiTokenQuerySet.as_manager()

    class Meta:
        ordering = ["name"]
        verbose_name = "API token"

    def __str__(self) -> str:
        return self.name

    @property
    def actor(self) -> str:
        return f"token:{self.name}"


class GatewayToken(models.Model):
    """A bearer token of one session's MCP endpoint on the gateway. Only a SHA-256 of it is
    stored; it works only while its session is active (checked on every request)."""

    session = models.ForeignKey(AgentSession, on_delete=models.CASCADE, related_name="gateway_tokens")
    # The first characters of the token, shown in the audit trail; never enough to use it.
    prefix = models.CharField(max_length=16)
    token_hash = models.CharField(max_length=64, unique=True)
    created_at = models.DateTimeField(default=timezone.now)
    created_by = models.CharField(max_length=200, blank=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.prefix}… for {self.session_id}"


class ServiceHeartbeat(models.Model):
    """The last sign of life of a background component ("worker", "beat"), read by /healthz.
    One row per component, overwritten in place: this is state, not history."""

    name = models.CharField(primary_key=True, max_length=100)
    beat_at = models.DateTimeField()
    details = models.JSONField(default=dict, blank=True)

    def __str__(self) -> str:
        return f"{self.name} at {self.beat_at:%Y-%m-%d %H:%M:%S}"
