"""The one settings file of sessionadmin.

Every knob is an environment variable read through the small typed helpers below, and every
default works with nothing installed but ``requirements.txt``: SQLite and the workspaces under
``./var``, Celery on kombu's ``filesystem://`` broker. ``DATABASE_URL`` and
``CELERY_BROKER_URL`` switch to PostgreSQL and Redis/RabbitMQ in production.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from urllib.parse import parse_qsl, unquote, urlsplit

BASE_DIR = Path(__file__).resolve().parent.parent


def env_str(name: str, default: str) -> str:
    return os.environ.get(name, default)


def env_int(name: str, default: int) -> int:
    raw = os.environ.get(name, "").strip()
    return int(raw) if raw else default


def env_float(name: str, default: float) -> float:
    raw = os.environ.get(name, "").strip()
    return float(raw) if raw else default


def env_bool(name: str, default: bool) -> bool:
    raw = os.environ.get(name, "").strip().lower()
    if not raw:
        return default
    return raw in {"1", "true", "yes", "on"}


def env_list(name: str, default: str) -> list[str]:
    return [item.strip() for item in env_str(name, default).split(",") if item.strip()]


def env_path(name: str, default: Path) -> Path:
    raw = os.environ.get(name, "").strip()
    return Path(raw).expanduser().resolve() if raw else default


VAR_DIR = env_path("SESSIONADMIN_VAR_DIR", BASE_DIR / "var")
VAR_DIR.mkdir(mode=0o700, parents=True, exist_ok=True)


def _persistent_secret(name: str) -> str:
    """A random secret kept in ``var/`` so a zero-setup install keeps its sessions and its
    encrypted MCP secrets across restarts. Production passes the value by env var instead."""
    path = VAR_DIR / name
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        value = secrets.token_urlsafe(50)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(value)
        return value
    except OSError:
        return secrets.token_urlsafe(50)


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
            "CONN_MAX_AGE": env_int("SESSIONADMIN_CONN_MAX_AGE", 60),
            # A SELECT 1 before a reused connection's first query in each request: survives a
            # database restart at the cost of one round trip per request.
            "CONN_HEALTH_CHECKS": env_bool("SESSIONADMIN_CONN_HEALTH_CHECKS", True),
            "OPTIONS": options,
            "TEST": {"NAME": env_str("SESSIONADMIN_TEST_DB_NAME", "test_sessionadmin")},
        }
    raise ValueError(f"DATABASE_URL scheme {parts.scheme!r} is not supported")


def sqlite_database(path: Path) -> dict[str, object]:
    return {
        "ENGINE": "django.db.backends.sqlite3",
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


SECRET_KEY = env_str("SESSIONADMIN_SECRET_KEY", "") or _persistent_secret("secret_key")
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
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.auth.middleware.LoginRequiredMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
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
STATIC_ROOT = env_path("SESSIONADMIN_STATIC_ROOT", VAR_DIR / "staticfiles")
# WhiteNoise scans it at start-up (and warns when it is missing) even before collectstatic.
STATIC_ROOT.mkdir(parents=True, exist_ok=True)
STATICFILES_DIRS = [BASE_DIR / "static"]
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
}
# Serve straight from the app and project static folders, so no collectstatic step is needed
# for a zero-setup run; production may run collectstatic and turn this off.
WHITENOISE_USE_FINDERS = env_bool("SESSIONADMIN_WHITENOISE_USE_FINDERS", True)

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
DATA_UPLOAD_MAX_MEMORY_SIZE = env_int("SESSIONADMIN_MAX_BODY_BYTES", 256 * 1024)

SESSION_COOKIE_HTTPONLY = True
SESSION_COOKIE_SECURE = env_bool("SESSIONADMIN_SECURE_COOKIES", False)
CSRF_COOKIE_SECURE = SESSION_COOKIE_SECURE

# --- sessionadmin -------------------------------------------------------------------------
SESSIONADMIN_WORKSPACE_ROOT = env_path("SESSIONADMIN_WORKSPACE_ROOT", VAR_DIR / "workspaces")
# 0 means no global limit; orgs may still set their own.
SESSIONADMIN_MAX_CONCURRENT = env_int("SESSIONADMIN_MAX_CONCURRENT", 100)
# Sessions idle longer than this are ended by the inactivity cleanup (an org may override it).
SESSIONADMIN_IDLE_TIMEOUT_SECONDS = env_int("SESSIONADMIN_IDLE_TIMEOUT_SECONDS", 24 * 3600)
# last_active_at is written at most once per session per this many seconds.
SESSIONADMIN_ACTIVITY_RESOLUTION_SECONDS = env_int("SESSIONADMIN_ACTIVITY_RESOLUTION_SECONDS", 30)
SESSIONADMIN_MCP_TIMEOUT_SECONDS = env_float("SESSIONADMIN_MCP_TIMEOUT_SECONDS", 10.0)
# A tool call (agent or dashboard) through the gateway may run this long; handshakes, listings and
# pings use the timeout above.
SESSIONADMIN_MCP_CALL_TIMEOUT_SECONDS = env_float("SESSIONADMIN_MCP_CALL_TIMEOUT_SECONDS", 300.0)
# Key for MCP header/env secrets at rest; derived from SECRET_KEY when not given.
SESSIONADMIN_SECRETS_KEY = env_str("SESSIONADMIN_SECRETS_KEY", "")
# Ended session rows older than this are purged; 0 keeps them forever.
SESSIONADMIN_HISTORY_RETENTION_DAYS = env_int("SESSIONADMIN_HISTORY_RETENTION_DAYS", 90)
# Audit entries older than this are purged; 0 (the default) keeps them forever.
SESSIONADMIN_AUDIT_RETENTION_DAYS = env_int("SESSIONADMIN_AUDIT_RETENTION_DAYS", 0)
# Workspace directories with no live session are removed once older than this.
SESSIONADMIN_ORPHAN_GRACE_SECONDS = env_int("SESSIONADMIN_ORPHAN_GRACE_SECONDS", 3600)
SESSIONADMIN_CLEANUP_BATCH_SIZE = env_int("SESSIONADMIN_CLEANUP_BATCH_SIZE", 500)

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
SESSIONADMIN_GATEWAY_TIMEOUT_SECONDS = env_float("SESSIONADMIN_GATEWAY_TIMEOUT_SECONDS", 5.0)
# A tool result larger than this is cut (with a visible marker) before it reaches an agent or a page.
SESSIONADMIN_MCP_MAX_RESULT_BYTES = env_int("SESSIONADMIN_MCP_MAX_RESULT_BYTES", 4 * 1024 * 1024)

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
        "polling_interval": env_float("CELERY_POLLING_INTERVAL", 0.1),
    }
    for _folder in ("queue", "control", "processed"):
        (CELERY_BROKER_DIR / _folder).mkdir(parents=True, exist_ok=True)
CELERY_RESULT_BACKEND = env_str("CELERY_RESULT_BACKEND", "") or None
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TASK_SOFT_TIME_LIMIT = env_int("CELERY_TASK_SOFT_TIME_LIMIT", 300)
CELERY_TASK_TIME_LIMIT = env_int("CELERY_TASK_TIME_LIMIT", 360)
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_WORKER_HIJACK_ROOT_LOGGER = False
CELERY_BEAT_SCHEDULER = "django_celery_beat.schedulers:DatabaseScheduler"
CELERY_TIMEZONE = TIME_ZONE

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": env_str("SESSIONADMIN_LOG_LEVEL", "INFO")},
    "loggers": {
        "django.db.backends": {"level": "WARNING"},
        # The MCP SDK's HTTP client logs every request (with its URL) at INFO.
        "httpx2": {"level": "WARNING"},
    },
}
