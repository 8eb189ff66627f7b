"""The files a machine needs before sessionadmin runs on it, written by ``manage.py setup``
(``make run`` and ``manage.py run`` call it), never by importing settings.

- ``VAR_DIR`` (mode 0700) and the static root WhiteNoise scans at start-up;
- the secret key file, unless ``SESSIONADMIN_SECRET_KEY`` gives the key: web, worker and beat
  read the same file, so sessions, CSRF tokens and the MCP secrets encrypted at rest survive
  a restart and every process agrees on them;
- the folders of kombu's ``filesystem://`` broker, when that is the broker;
- the audit ledger's Ed25519 signing key (0600) and its checkpoint folder.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured


def missing_key_message() -> str:
    return (
        f"no secret key: run `python manage.py setup` once (it writes {settings.SECRET_KEY_FILE}) "
        "or set SESSIONADMIN_SECRET_KEY; web, worker and beat must share the same key"
    )


def has_secret_key() -> bool:
    try:
        return bool(settings.SECRET_KEY)
    except ImproperlyConfigured:  # Django refuses to hand out an empty SECRET_KEY
        return False


def require_secret_key() -> None:
    """Called when the web, worker and beat processes start, so a missing key stops them at
    once with the way out, not at the first login or the first decrypted MCP secret."""
    if not has_secret_key():
        raise ImproperlyConfigured(missing_key_message())


def broker_folders() -> list[Path]:
    options = settings.CELERY_BROKER_TRANSPORT_OPTIONS
    if not str(settings.CELERY_BROKER_URL).startswith("filesystem://"):
        return []
    keys = ("data_folder_in", "data_folder_out", "control_folder", "processed_folder")
    return sorted({Path(str(options[key])) for key in keys if options.get(key)})


def write_secret_key(path: Path) -> bool:
    """Write a new random key unless the file exists; True if this call wrote it. O_EXCL: two
    setups racing never end up with two different keys."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w") as fh:
        fh.write(secrets.token_urlsafe(50))
    return True


def prepare() -> list[str]:
    """Create whatever is missing; idempotent. Returns what it created, for the command to print."""
    created: list[str] = []
    var_dir = Path(settings.VAR_DIR)
    if not var_dir.is_dir():
        var_dir.mkdir(mode=0o700, parents=True)
        created.append(str(var_dir))
    for folder in [Path(settings.STATIC_ROOT), *broker_folders()]:
        if not folder.is_dir():
            folder.mkdir(parents=True)
            created.append(str(folder))
    if not has_secret_key() and write_secret_key(Path(settings.SECRET_KEY_FILE)):
        created.append(f"{settings.SECRET_KEY_FILE} (new secret key)")
    from sessionadmin.ledger import write_signing_key

    key_file = Path(settings.SESSIONADMIN_AUDIT_SIGNING_KEY_FILE)
    key_file.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    if write_signing_key(key_file):
        created.append(f"{key_file} (new audit signing key)")
    checkpoints = Path(settings.SESSIONADMIN_AUDIT_CHECKPOINT_DIR)
    if not checkpoints.is_dir():
        checkpoints.mkdir(mode=0o700, parents=True)
        created.append(str(checkpoints))
    return created


# prometheus_client decides on multiprocess mode when it is first imported, from this variable:
# a process's starter sets it (nothing here imports prometheus_client).
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
METRICS_KINDS = ("web", "worker", "gateway")


def metrics_env(kind: str) -> dict[str, str]:
    """The environment a starter gives a process of ``kind`` (web, worker, gateway): its own
    prometheus_client multiprocess directory ``SESSIONADMIN_METRICS_DIR/<kind>``, emptied now,
    before the process starts (files of processes that ran before would be summed with the new
    ones; prometheus_client's advice is to wipe the directory at start)."""
    import shutil

    if kind not in METRICS_KINDS:
        raise ValueError(f"unknown process kind {kind!r}")
    path = Path(settings.SESSIONADMIN_METRICS_DIR) / kind
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True, exist_ok=True)
    return {MULTIPROC_ENV: str(path)}
