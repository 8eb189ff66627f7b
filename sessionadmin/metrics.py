"""Prometheus metrics of every sessionadmin process (issue 14).

Names follow JupyterHub's ``<noun>_<verb>_<unit>`` style. Every label value is created here, up
front, so each series exists at zero from the first scrape (a rate over a series that appears
only after its first event misses that event); no label carries a session, user, org or token:
the label sets are the constants below and nothing else.

Processes: web (gunicorn workers), Celery workers and the MCP gateway each write their own
prometheus_client multiprocess directory, ``SESSIONADMIN_METRICS_DIR/<kind>``, named by
``PROMETHEUS_MULTIPROC_DIR`` in the environment of the process (which prometheus_client reads
when it is first imported: the starter sets it, see ``bootstrap.metrics_env``). The web tier's
``/metrics`` merges its own directory and ``worker``; the gateway's own ``/metrics`` reads its
own. Without ``PROMETHEUS_MULTIPROC_DIR`` (runserver, a one-off command) metrics stay in the
process and ``/metrics`` shows that process's own.

Gauges are never written by a process: every gauge is read when Prometheus scrapes (from the
database, or the gateway's live state), so a dead process cannot leave a stale value behind and
no gauge needs a multiprocess aggregation mode.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import REGISTRY, Collector

from sessionadmin.bootstrap import MULTIPROC_ENV

# --- label values (the only ones there will ever be) --------------------------------------------

CREATE_STATUSES = ("success", "limit_global", "limit_org", "limit_user", "invalid", "workspace_error")
# "error": a session ended because something failed. No code path does that today (a removal
# that fails is retried and the session stays terminating), so the series stays at 0; it is
# kept so that such an ending is counted from its first occurrence.
END_REASONS = ("idle", "killed", "api", "error")
REMOVAL_STATUSES = ("ok", "failed")
# lifecycle.INACTIVITY_CLEANUP, WORKSPACE_REMOVAL and maintenance's own task names (MaintenanceRun.task).
MAINTENANCE_TASKS = ("inactivity_cleanup", "workspace_removal", "reconciliation", "history_purge", "mcp_health")
MAINTENANCE_OUTCOMES = ("ok", "partial", "failed")
HTTP_METHODS = ("GET", "POST", "DELETE", "other")
HTTP_CODES = ("2xx", "3xx", "4xx", "5xx")
# The handler of a request nothing resolved (a 404 before any view), and of every admin page: the
# admin has ~80 URL names of its own, which would multiply the series for no operational gain.
HTTP_UNMATCHED = "unmatched"
HTTP_ADMIN = "admin"
MCP_METHODS = ("tools/call", "ping")
MCP_TRANSPORTS = ("stdio", "streamable_http", "sse")
MCP_STATUSES = ("ok", "error")
ACTOR_KINDS = ("agent", "operator")
TOOL_OUTCOMES = ("ok", "error", "failed", "refused", "cancelled")
# upstream.py's connection states.
CLIENT_STATUSES = ("connecting", "connected", "reconnecting", "error", "closed")
LIMITS = ("global", "org", "user")
COMPONENTS = ("worker", "beat")

# The OpenTelemetry MCP semantic conventions' advice for mcp.*.operation.duration.
MCP_BUCKETS = (0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 30, 60, 120, 300)
HTTP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10)
CREATE_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)
RUN_BUCKETS = (0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300, 900)

# --- the metrics ---------------------------------------------------------------------------------

session_create_duration = Histogram(
    "sessionadmin_session_create_duration_seconds",
    "Time to create a session (or refuse it), by outcome.",
    ["status"],
    buckets=CREATE_BUCKETS,
)
sessions_ended = Counter(
    "sessionadmin_sessions_ended",
    "Sessions ended (marked terminating), by why: idle cleanup, an operator, the runtime API.",
    ["reason"],
)
workspace_removal_duration = Histogram(
    "sessionadmin_workspace_removal_duration_seconds",
    "Time to remove one session's workspace, by outcome.",
    ["status"],
    buckets=CREATE_BUCKETS,
)
maintenance_run_duration = Histogram(
    "sessionadmin_maintenance_run_duration_seconds",
    "Wall time of a maintenance task run in a worker, by task and outcome.",
    ["task", "outcome"],
    buckets=RUN_BUCKETS,
)
heartbeats = Counter(
    "sessionadmin_heartbeats",
    "Activity heartbeats of the runtime API accepted, by whether they wrote last_active_at.",
    ["written"],
)
http_request_duration = Histogram(
    "sessionadmin_http_request_duration_seconds",
    "Time to answer an HTTP request of the web tier, by URL name, method and status class.",
    ["handler", "method", "code"],
    buckets=HTTP_BUCKETS,
)
mcp_operation_duration = Histogram(
    "sessionadmin_mcp_operation_duration_seconds",
    "Time of an MCP operation of the gateway against an upstream server.",
    ["method", "transport", "status"],
    buckets=MCP_BUCKETS,
)
mcp_tool_calls = Counter(
    "sessionadmin_mcp_tool_calls",
    "Tool calls through the gateway, by who called (agent or operator) and outcome.",
    ["actor_kind", "outcome"],
)
mcp_reconnects = Counter("sessionadmin_mcp_reconnects", "Upstream MCP connections re-established after a drop.")

for _status in CREATE_STATUSES:
    session_create_duration.labels(_status)
for _reason in END_REASONS:
    sessions_ended.labels(_reason)
for _status in REMOVAL_STATUSES:
    workspace_removal_duration.labels(_status)
for _task in MAINTENANCE_TASKS:
    for _outcome in MAINTENANCE_OUTCOMES:
        maintenance_run_duration.labels(_task, _outcome)
for _written in ("true", "false"):
    heartbeats.labels(_written)
for _method in MCP_METHODS:
    for _transport in MCP_TRANSPORTS:
        for _status in MCP_STATUSES:
            mcp_operation_duration.labels(_method, _transport, _status)
for _kind in ACTOR_KINDS:
    for _outcome in TOOL_OUTCOMES:
        mcp_tool_calls.labels(_kind, _outcome)

# Children of the hot paths, looked up once.
HEARTBEAT_WRITTEN = heartbeats.labels("true")
HEARTBEAT_COALESCED = heartbeats.labels("false")


def precreate_http(handlers: Iterable[str]) -> None:
    """Create every (handler, method, code) series: called once by the middleware, when the URL
    configuration can be read."""
    for handler in [*handlers, HTTP_ADMIN, HTTP_UNMATCHED]:
        for method in HTTP_METHODS:
            for code in HTTP_CODES:
                http_request_duration.labels(handler, method, code)


def end_reason(*, actor: str, idle: bool) -> str:
    """The bounded ``reason`` label of an ending: the caller kind, never the free-text reason."""
    if idle:
        return "idle"
    if actor.startswith("token:"):
        return "api"
    return "killed"


def actor_kind(actor: str) -> str:
    return "agent" if actor.startswith("agent:") else "operator"


def mcp_transport(transport: str) -> str:
    return transport if transport in MCP_TRANSPORTS else "streamable_http"


# --- the multiprocess directories ----------------------------------------------------------------


def metrics_dir() -> Path:
    from django.conf import settings

    return Path(settings.SESSIONADMIN_METRICS_DIR)


class _Merged(Collector):
    """Every ``*.db`` file of several multiprocess directories, merged as one set of processes
    (MultiProcessCollector reads only one directory)."""

    def __init__(self, paths: list[Path]) -> None:
        self.paths = paths

    def collect(self) -> Iterable[Metric]:
        files = sorted(str(f) for path in self.paths if path.is_dir() for f in path.glob("*.db"))
        return MultiProcessCollector.merge(files, accumulate=True)


def registry_for(also: tuple[str, ...] = (), extra: Iterable[Collector] = ()) -> CollectorRegistry:
    """What ``/metrics`` exposes: the counters and histograms of this process and its siblings
    (its own multiprocess directory), of the processes of the kinds in ``also`` (the web tier
    reads the workers'), or only this process's when not in multiprocess mode; plus ``extra``,
    the gauges read now."""
    registry = CollectorRegistry()
    own = os.environ.get(MULTIPROC_ENV)
    if own:
        paths = list(dict.fromkeys(p.resolve() for p in [Path(own), *(metrics_dir() / kind for kind in also)]))
        registry.register(_Merged(paths))
    else:
        registry.register(_Process())
    for collector in extra:
        registry.register(collector)
    return registry


class _Process(Collector):
    """This process's own metrics (the default registry) when not in multiprocess mode."""

    def collect(self) -> Iterable[Metric]:
        return REGISTRY.collect()


# --- gauges read at scrape time ----------------------------------------------------------------


class DatabaseCollector(Collector):
    """The web tier's gauges, from the database at scrape time."""

    def collect(self) -> Iterable[Metric]:
        from sessionadmin.maintenance import last_successes, limit_usage, terminating_count
        from sessionadmin.models import AgentSession, LimitLock, ServiceHeartbeat

        active = LimitLock.objects.filter(pk=1).values_list("active_sessions", flat=True).first()
        if active is None:  # the row the migration creates is missing (a flushed database): count
            active = AgentSession.objects.active().count()
        yield GaugeMetricFamily(
            "sessionadmin_sessions_active", "Active sessions (the trigger-kept counter the global limit uses).", value=active
        )
        yield GaugeMetricFamily(
            "sessionadmin_sessions_terminating",
            "Sessions ended whose workspace removal has not finished (stuck when it stays above 0).",
            value=terminating_count(),
        )
        usage = GaugeMetricFamily(
            "sessionadmin_limit_usage_ratio",
            "Highest usage of each kind of session limit: active/maximum (global; the fullest org; the fullest user).",
            labels=["limit"],
        )
        ratios = limit_usage()
        for limit in LIMITS:
            usage.add_metric([limit], ratios.get(limit, 0.0))
        yield usage
        last = GaugeMetricFamily(
            "sessionadmin_maintenance_last_success_timestamp_seconds",
            "When a run of each maintenance task last finished ok (0: never).",
            labels=["task"],
        )
        successes = last_successes()
        for task in MAINTENANCE_TASKS:
            when = successes.get(task)
            last.add_metric([task], when.timestamp() if when else 0.0)
        yield last
        beats = GaugeMetricFamily(
            "sessionadmin_component_heartbeat_timestamp_seconds",
            "Last heartbeat of the Celery worker and of beat (0: never).",
            labels=["component"],
        )
        rows = dict(ServiceHeartbeat.objects.filter(name__in=COMPONENTS).values_list("name", "beat_at"))
        for component in COMPONENTS:
            beat_at = rows.get(component)
            beats.add_metric([component], beat_at.timestamp() if beat_at else 0.0)
        yield beats


class Fixed(Collector):
    """Families computed just before the scrape (the gateway's, in its event loop)."""

    def __init__(self, families: list[Metric]) -> None:
        self.families = families

    def collect(self) -> Iterable[Metric]:
        return self.families


def live_clients_family(states: Iterable[str]) -> GaugeMetricFamily:
    """``sessionadmin_mcp_live_clients{status}`` from the gateway's upstream connections."""
    counts = dict.fromkeys(CLIENT_STATUSES, 0)
    for state in states:
        if state in counts:
            counts[state] += 1
    family = GaugeMetricFamily(
        "sessionadmin_mcp_live_clients", "Upstream MCP connections the gateway holds, by state.", labels=["status"]
    )
    for status, count in counts.items():
        family.add_metric([status], count)
    return family


def allowed_address(address: str) -> bool:
    """Whether a scrape from ``address`` needs no token (SESSIONADMIN_METRICS_ALLOWED_IPS)."""
    import ipaddress

    from django.conf import settings

    networks = settings.SESSIONADMIN_METRICS_ALLOWED_IPS
    if not networks or not address:
        return False
    try:
        ip = ipaddress.ip_address(address.strip("[]"))
    except ValueError:
        return False
    return any(ip in network for network in networks)


def token_allows(authorization: str) -> bool:
    """Whether ``Authorization: Bearer <token>`` names a usable API token allowed to read metrics."""
    from sessionadmin import tokens

    scheme, _, raw = authorization.partition(" ")
    if scheme.lower() != "bearer":
        return False
    token = tokens.authenticate(raw.strip())
    return token is not None and token.can_read_metrics


def exposition(registry: CollectorRegistry) -> tuple[bytes, str]:
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

    return generate_latest(registry), CONTENT_TYPE_LATEST
