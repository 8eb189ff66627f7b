"""The one settings file of sessionadmin.

Every knob is an environment variable read here, and only here, through the small typed helpers
below: a value that does not parse is an ``ImproperlyConfigured`` naming the variable, never a
silent default. Every default works with nothing installed but the runtime requirements: SQLite
and the workspaces under ``./var``, Celery on kombu's ``filesystem://`` broker.
``DATABASE_URL`` and ``CELERY_BROKER_URL`` switch to PostgreSQL and Redis/RabbitMQ in production.

Importing this module writes nothing. ``python manage.py setup`` (which ``make run`` and the
``run`` command call) creates ``var/``, the secret key file and the broker's folders.
"""

from __future__ import annotations

import ipaddress
import math
import os
from pathlib import Path
from urllib.parse import parse_qsl, unquote, urlsplit

from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent

TRUE_WORDS = frozenset({"1", "true", "yes", "on"})
FALSE_WORDS = frozenset({"0", "false", "no", "off"})


def _raw(name: str) -> str:
    return os.environ.get(name, "").strip()


def env_str(name: str, default: str) -> str:
    return os.environ.get(name, default)


def env_int(name: str, default: int, *, minimum: int | None = None) -> int:
    raw = _raw(name)
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ImproperlyConfigured(f"{name} must be an integer, not {raw!r}") from None
    if minimum is not None and value < minimum:
        raise ImproperlyConfigured(f"{name} must be at least {minimum}, not {value}")
    return value


def env_float(name: str, default: float, *, minimum: float | None = None) -> float:
    raw = _raw(name)
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ImproperlyConfigured(f"{name} must be a number, not {raw!r}") from None
    if not math.isfinite(value):
        raise ImproperlyConfigured(f"{name} must be a finite number, not {raw!r}")
    if minimum is not None and value < minimum:
        raise ImproperlyConfigured(f"{name} must be at least {minimum}, not {value}")
    return value


def env_bool(name: str, default: bool) -> bool:
    raw = _raw(name).lower()
    if not raw:
        return default
    if raw in TRUE_WORDS:
        return True
    if raw in FALSE_WORDS:
        return False
    raise ImproperlyConfigured(f"{name} must be one of {', '.join(sorted(TRUE_WORDS | FALSE_WORDS))}, not {raw!r}")


def env_list(name: str, default: str) -> list[str]:
    return [item.strip() for item in env_str(name, default).split(",") if item.strip()]


def env_path(name: str, default: Path) -> Path:
    raw = _raw(name)
    return Path(raw).expanduser().resolve() if raw else default


VAR_DIR = env_path("SESSIONADMIN_VAR_DIR", BASE_DIR / "var")
SECRET_KEY_FILE = VAR_DIR / "secret_key"


def _read_secret(path: Path) -> str:
    """The key ``manage.py setup`` wrote, or "" when there is none yet: web, worker and beat
    must share one key, so nothing here makes up an ephemeral one. An empty SECRET_KEY lets
    commands that need no key (setup, migrate) run; the web, worker and beat processes refuse
    to start without one (``sessionadmin.bootstrap.require_secret_key``)."""
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        return ""


def database_from_url(url: str) -> dict[str, object]:
    """``sqlite:///abs/path`` or ``postgres://user:pass@host:port/name?opt=val``."""
    parts = urlsplit(url)
    options: dict[str, object] = dict(parse_qsl(parts.query))
    if parts.scheme == "sqlite":
        name = unquote(parts.path)
        if name.startswith("//"):  # sqlite:////abs/path
            name = name[1:]
        return sqlite_database(Path(name or VAR_DIR / "db.sqlite3"))
    if parts.scheme in {"postgres", "postgresql", "pgsql"}:
        return {
            "ENGINE": "django.db.backends.postgresql",
            "NAME": unquote(parts.path.lstrip("/")) or "sessionadmin",
            "USER": unquote(parts.username or ""),
            "PASSWORD": unquote(parts.password or ""),
            "HOST": parts.hostname or "",
            "PORT": str(parts.port or ""),
            "CONN_MAX_AGE": env_int("SESSIONADMIN_CONN_MAX_AGE", 60, minimum=0),
            # A SELECT 1 before a reused connection's first query in each request: survives a
            # database restart at the cost of one round trip per request.
            "CONN_HEALTH_CHECKS": env_bool("SESSIONADMIN_CONN_HEALTH_CHECKS", True),
            "OPTIONS": options,
            "TEST": {"NAME": env_str("SESSIONADMIN_TEST_DB_NAME", "test_sessionadmin")},
        }
    raise ImproperlyConfigured(f"DATABASE_URL: scheme {parts.scheme!r} is not supported (sqlite or postgres)")


def sqlite_database(path: Path) -> dict[str, object]:
    return {
        # Django's SQLite backend, flushing the audit ledger's head first (see the module).
        "ENGINE": "sessionadmin.backends.sqlite3",
        "NAME": path,
        "OPTIONS": {
            # BEGIN IMMEDIATE takes the write lock at the start of every transaction, so the
            # count-then-insert of a session create is serialised across processes.
            "transaction_mode": "IMMEDIATE",
            "timeout": 30,
            "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
        },
        # A file, as in production: Django's shared in-memory test database would make a
        # second writer fail at once and concurrency tests would prove nothing.
        "TEST": {"NAME": VAR_DIR / f"{env_str('SESSIONADMIN_TEST_DB_NAME', 'test-' + path.stem)}.sqlite3"},
    }


SECRET_KEY = env_str("SESSIONADMIN_SECRET_KEY", "").strip() or _read_secret(SECRET_KEY_FILE)
DEBUG = env_bool("SESSIONADMIN_DEBUG", False)
ALLOWED_HOSTS = env_list("SESSIONADMIN_ALLOWED_HOSTS", "localhost,127.0.0.1,[::1],testserver")
CSRF_TRUSTED_ORIGINS = env_list("SESSIONADMIN_CSRF_TRUSTED_ORIGINS", "")

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "django.contrib.humanize",
    "django_htmx",
    "template_partials",
    "django_celery_beat",
    "sessionadmin",
]

MIDDLEWARE = [
    # First: the duration covers every other middleware, and every line has the request id.
    "sessionadmin.middleware.RequestMetricsMiddleware",
    "sessionadmin.middleware.RequestIdMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "sessionadmin.middleware.RejectNulMiddleware",
    "sessionadmin.middleware.NoContentTypeOn204Middleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.auth.middleware.LoginRequiredMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "sessionadmin.csp.ContentSecurityPolicyMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
]

ROOT_URLCONF = "sessionadmin.urls"
WSGI_APPLICATION = "sessionadmin.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

DATABASES = {
    "default": database_from_url(env_str("DATABASE_URL", ""))
    if os.environ.get("DATABASE_URL")
    else sqlite_database(VAR_DIR / "db.sqlite3")
}

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
]
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "session_list"
LOGOUT_REDIRECT_URL = "login"

LANGUAGE_CODE = "en-us"
TIME_ZONE = env_str("SESSIONADMIN_TIME_ZONE", "UTC")
USE_I18N = False
USE_TZ = True

STATIC_URL = "static/"
# WhiteNoise scans it at start-up (and warns when it is missing): `manage.py setup` creates it.
STATIC_ROOT = env_path("SESSIONADMIN_STATIC_ROOT", VAR_DIR / "staticfiles")
STATICFILES_DIRS = [BASE_DIR / "static"]
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
}
# Serve straight from the app and project static folders, so no collectstatic step is needed
# for a zero-setup run; production may run collectstatic and turn this off.
WHITENOISE_USE_FINDERS = env_bool("SESSIONADMIN_WHITENOISE_USE_FINDERS", True)

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
# The one body limit: Django's for forms (a 256 KiB prompt, urlencoded) and the runtime API's
# (413 above it).
SESSIONADMIN_MAX_BODY_BYTES = env_int("SESSIONADMIN_MAX_BODY_BYTES", 1024 * 1024, minimum=1024)
DATA_UPLOAD_MAX_MEMORY_SIZE = SESSIONADMIN_MAX_BODY_BYTES

# Content-Security-Policy of every response (sessionadmin/csp.py): scripts and styles only from
# our own static files, nothing inline, no plugins, no <base>, never framed. Pages carry
# server-sent text (MCP results, descriptions): even an escaping slip could not run a script.
SESSIONADMIN_CSP: dict[str, list[str]] = {
    "default-src": ["'self'"],
    "script-src": ["'self'"],
    "style-src": ["'self'"],
    "img-src": ["'self'", "data:"],
    # Audio in tool results plays from data: URLs (safe audio types only, mcp_client.INLINE_AUDIO_TYPES).
    "media-src": ["'self'", "data:"],
    "font-src": ["'self'"],
    "connect-src": ["'self'"],
    "object-src": ["'none'"],
    "base-uri": ["'none'"],
    "frame-ancestors": ["'none'"],
    "form-action": ["'self'"],
}

SESSION_COOKIE_HTTPONLY = True
SESSION_COOKIE_SECURE = env_bool("SESSIONADMIN_SECURE_COOKIES", False)
CSRF_COOKIE_SECURE = SESSION_COOKIE_SECURE

# --- sessionadmin -------------------------------------------------------------------------
SESSIONADMIN_WORKSPACE_ROOT = env_path("SESSIONADMIN_WORKSPACE_ROOT", VAR_DIR / "workspaces")
# 0 means no global limit; orgs may still set their own.
SESSIONADMIN_MAX_CONCURRENT = env_int("SESSIONADMIN_MAX_CONCURRENT", 100, minimum=0)
# Sessions idle longer than this are ended by the inactivity cleanup (an org may override it).
SESSIONADMIN_IDLE_TIMEOUT_SECONDS = env_int("SESSIONADMIN_IDLE_TIMEOUT_SECONDS", 24 * 3600, minimum=1)
# last_active_at is written at most once per session per this many seconds.
SESSIONADMIN_ACTIVITY_RESOLUTION_SECONDS = env_int("SESSIONADMIN_ACTIVITY_RESOLUTION_SECONDS", 30, minimum=0)
SESSIONADMIN_MCP_TIMEOUT_SECONDS = env_float("SESSIONADMIN_MCP_TIMEOUT_SECONDS", 10.0, minimum=0.1)
# stdio MCP servers run in a bubblewrap sandbox; "off" only where bwrap cannot run (the
# maintenance and catalog pages then say that stdio servers are not isolated).
SESSIONADMIN_STDIO_SANDBOX = env_bool("SESSIONADMIN_STDIO_SANDBOX", True)
# Hosts exempt from the outbound URL policy (which refuses loopback, private, link-local,
# metadata... addresses): host names, IP addresses or networks, comma-separated.
SESSIONADMIN_MCP_ALLOWED_HOSTS = env_list("SESSIONADMIN_MCP_ALLOWED_HOSTS", "")
# Any message from an MCP server above this (a tool result, a listing page) is cut as it arrives.
SESSIONADMIN_MCP_MAX_RESULT_BYTES = env_int("SESSIONADMIN_MCP_MAX_RESULT_BYTES", 4 * 1024 * 1024, minimum=1024)
# A tool call (agent or dashboard) through the gateway may run this long; handshakes, listings and
# pings use the timeout above.
SESSIONADMIN_MCP_CALL_TIMEOUT_SECONDS = env_float("SESSIONADMIN_MCP_CALL_TIMEOUT_SECONDS", 300.0, minimum=0.1)
# What is stored of a server's listings, per client and per kind (tools, resources, prompts):
# at most this many items and this many bytes; the page says how many were left out.
SESSIONADMIN_MCP_MAX_LIST_ITEMS = env_int("SESSIONADMIN_MCP_MAX_LIST_ITEMS", 1000, minimum=1)
SESSIONADMIN_MCP_MAX_LISTING_BYTES = env_int("SESSIONADMIN_MCP_MAX_LISTING_BYTES", 2 * 1024 * 1024, minimum=1024)
# Absolute paths of the executables a stdio catalog entry may run (comma-separated). Empty, the
# default, means no stdio entry can be saved or run. Checked when an entry is saved and again
# before every connection, so narrowing the list stops entries saved before. An interpreter
# (python, node) runs whatever its arguments say: prefer dedicated server executables.
SESSIONADMIN_STDIO_COMMANDS = [os.path.normpath(c) for c in env_list("SESSIONADMIN_STDIO_COMMANDS", "") if os.path.isabs(c)]
# Key for MCP header/env secrets at rest; derived from SECRET_KEY when not given.
SESSIONADMIN_SECRETS_KEY = env_str("SESSIONADMIN_SECRETS_KEY", "")
# Ended session rows older than this are purged; 0 keeps them forever.
SESSIONADMIN_HISTORY_RETENTION_DAYS = env_int("SESSIONADMIN_HISTORY_RETENTION_DAYS", 90, minimum=0)
# Audit entries older than this are purged; 0 (the default) keeps them forever.
SESSIONADMIN_AUDIT_RETENTION_DAYS = env_int("SESSIONADMIN_AUDIT_RETENTION_DAYS", 0, minimum=0)
# The audit ledger's Ed25519 signing key (PKCS#8 PEM, 0600), written by ``manage.py setup``
# like the secret key; keep it outside the database (and its backups).
SESSIONADMIN_AUDIT_SIGNING_KEY_FILE = env_path("SESSIONADMIN_AUDIT_SIGNING_KEY_FILE", VAR_DIR / "audit_signing_key.pem")
# Where each signed checkpoint is also appended (``audit-checkpoints.jsonl``). In production,
# ship that file to storage the database's users cannot rewrite (see the README).
SESSIONADMIN_AUDIT_CHECKPOINT_DIR = env_path("SESSIONADMIN_AUDIT_CHECKPOINT_DIR", VAR_DIR / "audit_checkpoints")
# Workspace directories with no live session are removed once older than this.
SESSIONADMIN_ORPHAN_GRACE_SECONDS = env_int("SESSIONADMIN_ORPHAN_GRACE_SECONDS", 3600, minimum=0)
SESSIONADMIN_CLEANUP_BATCH_SIZE = env_int("SESSIONADMIN_CLEANUP_BATCH_SIZE", 500, minimum=1)

# --- MCP gateway (sessionadmin/gateway/, ``python manage.py mcp_gateway``) ---------------------
# Where the gateway listens, and the URL the agent runtime reaches it at (written into each
# session's .mcp.json and the runtime API's mcp-config).
SESSIONADMIN_GATEWAY_BIND = env_str("SESSIONADMIN_GATEWAY_BIND", "127.0.0.1:8001")
SESSIONADMIN_GATEWAY_URL = env_str("SESSIONADMIN_GATEWAY_URL", "http://127.0.0.1:8001").rstrip("/")
# Where web processes and workers reach the gateway's internal API (same host by default).
SESSIONADMIN_GATEWAY_INTERNAL_URL = env_str(
    "SESSIONADMIN_GATEWAY_INTERNAL_URL", "http://" + SESSIONADMIN_GATEWAY_BIND.replace("0.0.0.0:", "127.0.0.1:")
).rstrip("/")
# Shared secret of the internal API (web/workers -> gateway). Derived from the secret key when
# not given, so every process of one deployment agrees without another setting.
SESSIONADMIN_GATEWAY_SECRET = env_str("SESSIONADMIN_GATEWAY_SECRET", "")
# Timeout of one internal call (a dashboard tool call returns at once; attach waits for the
# handshake, bounded by SESSIONADMIN_MCP_TIMEOUT_SECONDS plus this).
SESSIONADMIN_GATEWAY_TIMEOUT_SECONDS = env_float("SESSIONADMIN_GATEWAY_TIMEOUT_SECONDS", 5.0, minimum=0.1)

# --- observability (sessionadmin/metrics.py, tracing.py; issue 14) ------------------------------


def env_networks(name: str) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    """Comma-separated addresses or networks (``10.0.0.5``, ``10.1.0.0/16``, ``::1``); anything
    else, including a network with host bits set, is ImproperlyConfigured."""
    networks = []
    for item in env_list(name, ""):
        try:
            networks.append(ipaddress.ip_network(item, strict=True))
        except ValueError as exc:
            raise ImproperlyConfigured(f"{name}: {item!r} is not an IP address or network ({exc})") from None
    return networks


# Multiprocess directories of prometheus_client, one per kind of process (web, worker, gateway).
SESSIONADMIN_METRICS_DIR = env_path("SESSIONADMIN_METRICS_DIR", VAR_DIR / "prometheus")
# Clients that may scrape /metrics with no token (Prometheus's address); empty: a token with the
# metrics permission is always needed. Compared with REMOTE_ADDR (the proxy's address behind one).
SESSIONADMIN_METRICS_ALLOWED_IPS = env_networks("SESSIONADMIN_METRICS_ALLOWED_IPS")
# "text" (the default) or "json": one JSON object per line (time, level, logger, message,
# request_id, session_id).
SESSIONADMIN_LOG_FORMAT = env_str("SESSIONADMIN_LOG_FORMAT", "text").strip().lower() or "text"
if SESSIONADMIN_LOG_FORMAT not in {"text", "json"}:
    raise ImproperlyConfigured(f"SESSIONADMIN_LOG_FORMAT must be text or json, not {SESSIONADMIN_LOG_FORMAT!r}")

# --- Celery ---------------------------------------------------------------------------------
CELERY_BROKER_DIR = VAR_DIR / "celery" / "broker"
CELERY_BROKER_URL = env_str("CELERY_BROKER_URL", "filesystem://")
CELERY_BROKER_TRANSPORT_OPTIONS: dict[str, object] = {}
if CELERY_BROKER_URL.startswith("filesystem://"):
    # kombu's filesystem transport only consumes what it wrote when in and out are the same
    # absolute folder; 0.1 s polling brings a round trip from ~1 s to ~0.1 s.
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "data_folder_in": str(CELERY_BROKER_DIR / "queue"),
        "data_folder_out": str(CELERY_BROKER_DIR / "queue"),
        "control_folder": str(CELERY_BROKER_DIR / "control"),
        "processed_folder": str(CELERY_BROKER_DIR / "processed"),
        "store_processed": False,
        "polling_interval": env_float("CELERY_POLLING_INTERVAL", 0.1, minimum=0.01),
    }
# Redis redelivers an unacknowledged message only after this many seconds (kombu's default is
# one hour); it must stay longer than the longest task's hard time limit.
_VISIBILITY_TIMEOUT = env_float("CELERY_VISIBILITY_TIMEOUT", 0.0, minimum=0)
if _VISIBILITY_TIMEOUT:
    CELERY_BROKER_TRANSPORT_OPTIONS["visibility_timeout"] = _VISIBILITY_TIMEOUT
# A queue of its own per test run or benchmark, so a shared Redis never mixes their messages.
CELERY_TASK_DEFAULT_QUEUE = env_str("SESSIONADMIN_CELERY_QUEUE", "").strip() or "celery"
CELERY_RESULT_BACKEND = env_str("CELERY_RESULT_BACKEND", "") or None
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TASK_SOFT_TIME_LIMIT = env_int("CELERY_TASK_SOFT_TIME_LIMIT", 300, minimum=1)
CELERY_TASK_TIME_LIMIT = env_int("CELERY_TASK_TIME_LIMIT", 360, minimum=1)
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_WORKER_HIJACK_ROOT_LOGGER = False
CELERY_BEAT_SCHEDULER = "django_celery_beat.schedulers:DatabaseScheduler"
CELERY_TIMEZONE = TIME_ZONE

# --- `manage.py run` (`make run`): web, worker and beat on one machine ----------------------
SESSIONADMIN_BIND = env_str("SESSIONADMIN_BIND", "127.0.0.1:8000")
SESSIONADMIN_WEB_WORKERS = env_int("SESSIONADMIN_WEB_WORKERS", 2, minimum=1)
SESSIONADMIN_WORKER_CONCURRENCY = env_int("CELERY_CONCURRENCY", 2, minimum=1)

LOG_LEVEL = env_str("SESSIONADMIN_LOG_LEVEL", "INFO").strip().upper()
if LOG_LEVEL not in {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}:
    raise ImproperlyConfigured(f"SESSIONADMIN_LOG_LEVEL must be DEBUG, INFO, WARNING, ERROR or CRITICAL, not {LOG_LEVEL!r}")
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"},
        "json": {"()": "sessionadmin.logs.json_formatter"},
    },
    # Secrets of the MCP operation in progress (and credentials in URLs) never reach a log line;
    # "context" adds the request and session ids (sessionadmin/logs.py).
    "filters": {
        "redact": {"()": "sessionadmin.redaction.RedactingFilter"},
        "context": {"()": "sessionadmin.logs.ContextFilter"},
    },
    "handlers": {
        "console": {
            "class": "logging.StreamHandler",
            "formatter": "json" if SESSIONADMIN_LOG_FORMAT == "json" else "plain",
            "filters": ["redact", "context"],
        }
    },
    "root": {"handlers": ["console"], "level": LOG_LEVEL},
    "loggers": {
        "django.db.backends": {"level": "WARNING"},
        # The MCP SDK's HTTP client logs every request (with its URL) at INFO.
        "httpx2": {"level": "WARNING"},
    },
}
