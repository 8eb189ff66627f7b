"""The audit ledger: hash-chained entries, signed checkpoints, anchored purge and verification.

- ``append`` (called by ``audit.write`` only) numbers and chains a batch of entries in the
  caller's transaction: it first *writes* the single head row (``UPDATE ... SET length =
  length + n RETURNING``), which queues every writer of every process there (a row lock on
  PostgreSQL, the database write lock on SQLite), then computes the hashes in Python and inserts
  the batch with one ``bulk_create``. Callers write their audit entries last in their
  transaction, after their own row locks, so the head lock is held for as short as possible
  and always taken last (no lock-order deadlock).
- ``checkpoint`` signs (length, head hash, time, previous signature) with the Ed25519 key in
  ``SESSIONADMIN_AUDIT_SIGNING_KEY_FILE`` and appends it to a JSON-lines file in
  ``SESSIONADMIN_AUDIT_CHECKPOINT_DIR`` as well as to the database.
- ``purge_through`` is the retention purge's only way to delete entries (the triggers of
  migration 0014 refuse every other UPDATE and DELETE).
- ``verify`` streams the chain (keyset pages, flat memory) through ``ledger_verify.verify``;
  ``export`` writes the bundle ``tools/verify_audit_bundle.py`` checks without us.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, TextIO

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.db import connection, transaction
from django.db.models import Min
from django.utils import timezone

from sessionadmin import ledger_verify as lv
from sessionadmin.models import AuditChainHead, AuditCheckpoint, AuditEntry, AuditPurgeMarker, AuditVerification

CHECKPOINT_FILE = "audit-checkpoints.jsonl"
# Entries read per keyset page by ``verify`` and ``export``.
PAGE = 5000
_ENTRY_COLUMNS = (
    "id",
    "seq",
    "prev_hash",
    "entry_hash",
    "at",
    "actor",
    "user_id",
    "org_id",
    "event_type",
    "session_id",
    "details",
)


# --- chained writes -------------------------------------------------------------------------------


def document_of(entry: AuditEntry, *, seq: int, prev: str) -> dict[str, Any]:
    return lv.entry_document(
        seq=seq,
        prev=prev,
        at=lv.format_time(entry.at),
        actor=entry.actor,
        user_id=entry.user_id,
        org_id=entry.org_id,
        event_type=entry.event_type,
        session_id=str(entry.session_id) if entry.session_id is not None else None,
        details=entry.details,
    )


def _bump_head(n: int) -> tuple[int, str]:
    """Lock the head by writing it; returns (length before this batch, head hash)."""
    table = AuditChainHead._meta.db_table
    sql = f"UPDATE {table} SET length = length + %s WHERE id = 1 RETURNING length, head_hash"
    with connection.cursor() as cursor:
        cursor.execute(sql, [n])
        row = cursor.fetchone()
        if row is None:
            # Created by migration 0014; a database flushed by the test runner lacks it.
            ensure_head()
            cursor.execute(sql, [n])
            row = cursor.fetchone()
    return int(row[0]) - n, str(row[1])


def ensure_head() -> None:
    """Create the head row from the entries there are (none after a flush), if it is missing."""
    last = AuditEntry.objects.order_by("-seq").values_list("seq", "entry_hash").first()
    length, head = (int(last[0]), str(last[1])) if last else (0, lv.GENESIS)
    AuditChainHead.objects.bulk_create([AuditChainHead(pk=1, length=length, head_hash=head)], ignore_conflicts=True)


def append(entries: Sequence[AuditEntry]) -> list[AuditEntry]:
    """Number, chain and insert ``entries`` (unsaved) in the caller's transaction (one of its
    own when there is none; no savepoint: a failure here fails the caller's change too)."""
    if not entries:
        return []
    with transaction.atomic(savepoint=False):
        start, prev = _bump_head(len(entries))
        for offset, entry in enumerate(entries, start=1):
            # What the database gives back is what was hashed (tuples become lists, and so on).
            entry.details = json.loads(json.dumps(entry.details))
            entry.seq, entry.prev_hash = start + offset, prev
            entry.entry_hash = prev = lv.entry_hash(document_of(entry, seq=entry.seq, prev=prev))
        _insert(list(entries), head_hash=prev)
    return list(entries)


def _insert(entries: list[AuditEntry], *, head_hash: str) -> None:
    """INSERT the chained entries and move the head's hash, in as few statements as the database
    allows: every session create pays for this, and the ORM's bulk_create and update spent
    more time building their SQL than the database spent running it. On PostgreSQL the head's
    update rides in the last INSERT (a data-modifying CTE): one round trip fewer."""
    fields = [f for f in AuditEntry._meta.concrete_fields if not f.primary_key]
    table, head_table = AuditEntry._meta.db_table, AuditChainHead._meta.db_table
    columns = ", ".join(connection.ops.quote_name(f.column) for f in fields)
    row = "(" + ", ".join(["%s"] * len(fields)) + ")"
    batch = max(1, connection.ops.bulk_batch_size(fields, entries))
    postgres = connection.vendor == "postgresql"
    with connection.cursor() as cursor:
        for start in range(0, len(entries), batch):
            part = entries[start : start + batch]
            params: list[Any] = [f.get_db_prep_save(f.pre_save(e, True), connection) for e in part for f in fields]
            sql = f"INSERT INTO {table} ({columns}) VALUES {', '.join([row] * len(part))} RETURNING id"
            if postgres and start + batch >= len(entries):
                sql = f"WITH head AS (UPDATE {head_table} SET head_hash = %s WHERE id = 1) {sql}"
                params.insert(0, head_hash)
            cursor.execute(sql, params)
            for entry, (pk,) in zip(part, cursor.fetchall(), strict=True):
                entry.pk, entry._state.adding, entry._state.db = pk, False, connection.alias
        if not postgres:
            cursor.execute(f"UPDATE {head_table} SET head_hash = %s WHERE id = 1", [head_hash])


# --- signing key and checkpoints ---------------------------------------------------------------------


def write_signing_key(path: Path) -> bool:
    """A new Ed25519 key (PKCS#8 PEM, mode 0600) unless the file exists; True if written.
    O_EXCL: two setups racing never end up with two keys."""
    pem = Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return False
    with os.fdopen(fd, "wb") as fh:
        fh.write(pem)
    return True


def signing_key() -> Ed25519PrivateKey:
    path = Path(settings.SESSIONADMIN_AUDIT_SIGNING_KEY_FILE)
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except FileNotFoundError:
        raise ImproperlyConfigured(
            f"no audit signing key: run `python manage.py setup` once (it writes {path}) "
            "or point SESSIONADMIN_AUDIT_SIGNING_KEY_FILE at the key"
        ) from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ImproperlyConfigured(f"{path} is not an Ed25519 private key")
    return key


def public_key() -> Ed25519PublicKey:
    return signing_key().public_key()


def public_key_pem() -> str:
    return public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()


def key_id(key: Ed25519PublicKey) -> str:
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def head() -> tuple[int, str]:
    row = AuditChainHead.objects.filter(pk=1).values_list("length", "head_hash").first()
    return (int(row[0]), str(row[1])) if row else (0, lv.GENESIS)


def as_verifiable(cp: AuditCheckpoint) -> lv.Checkpoint:
    return lv.Checkpoint(
        id=cp.pk, length=cp.length, head_hash=cp.head_hash, at=cp.at, prev_signature=cp.prev_signature, signature=cp.signature
    )


def checkpoint(*, now: datetime | None = None) -> AuditCheckpoint | None:
    """Sign the ledger's current state, unless the last checkpoint already covers it. The
    head row is locked (written) first, so checkpoints never fork and see a settled head."""
    key = signing_key()
    with transaction.atomic():
        length, head_hash = _bump_head(0)
        last = AuditCheckpoint.objects.order_by("-id").first()
        if last is not None and last.length == length and last.head_hash == head_hash:
            return None
        at = lv.format_time(now or timezone.now())
        prev_signature = last.signature if last else ""
        message = lv.checkpoint_message(length=length, head=head_hash, at=at, prev_signature=prev_signature)
        cp = AuditCheckpoint.objects.create(
            length=length,
            head_hash=head_hash,
            at=at,
            prev_signature=prev_signature,
            signature=key.sign(message).hex(),
            key_id=key_id(key.public_key()),
        )
        transaction.on_commit(sync_checkpoint_file)
    return cp


def checkpoint_file() -> Path:
    return Path(settings.SESSIONADMIN_AUDIT_CHECKPOINT_DIR) / CHECKPOINT_FILE


def _last_line(path: Path) -> str:
    with path.open("rb") as fh:
        fh.seek(0, os.SEEK_END)
        size = fh.tell()
        fh.seek(max(0, size - 4096))
        lines = fh.read().splitlines()
    return lines[-1].decode() if lines else ""


def sync_checkpoint_file() -> int:
    """Append to the file every checkpoint it lacks (after commit, so a checkpoint whose
    process died before writing the file is written by the next run). Returns how many."""
    path = checkpoint_file()
    path.parent.mkdir(parents=True, exist_ok=True)
    last_id = 0
    if path.exists():
        line = _last_line(path)
        last_id = int(json.loads(line)["id"]) if line else 0
    written = 0
    with path.open("a", encoding="utf-8") as fh:
        for cp in AuditCheckpoint.objects.filter(pk__gt=last_id).order_by("id").iterator():
            fh.write(json.dumps(as_verifiable(cp).to_json(), sort_keys=True) + "\n")
            written += 1
    return written


def read_checkpoint_file(path: Path) -> list[lv.Checkpoint]:
    with path.open(encoding="utf-8") as fh:
        return lv.read_checkpoints(fh)


# --- retention -----------------------------------------------------------------------------------


def purge_anchor(*, older_than: datetime) -> AuditCheckpoint | None:
    """The newest checkpoint whose every entry is older than ``older_than``: entries up to its
    length may go, and it stays as the anchor the remaining chain starts from."""
    first_kept = AuditEntry.objects.filter(at__gte=older_than).order_by("seq").values_list("seq", flat=True).first()
    limit = first_kept - 1 if first_kept is not None else head()[0]
    return AuditCheckpoint.objects.filter(length__lte=limit).order_by("-length", "-id").first()


def purge_through(seq: int) -> int:
    """Delete the entries up to ``seq`` (a checkpoint's length) in the caller's transaction:
    the triggers let this DELETE through and nothing else."""
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute("SET LOCAL sessionadmin.audit_purge = 'on'")
        else:
            AuditPurgeMarker.objects.bulk_create([AuditPurgeMarker(pk=1)], ignore_conflicts=True)
        # QuerySet.delete: never Model.delete (which AuditEntry forbids).
        deleted, _ = AuditEntry.objects.filter(seq__lte=seq).delete()
        if connection.vendor == "postgresql":
            cursor.execute("SET LOCAL sessionadmin.audit_purge = 'off'")
        else:
            AuditPurgeMarker.objects.all().delete()
    return deleted


# --- verification and export -------------------------------------------------------------------------


def _rows(page: int = PAGE) -> Iterator[tuple[Any, ...]]:
    """Every entry, ascending seq, ``page`` at a time (keyset: each page is an index range scan
    whatever the offset, and only one page is in memory)."""
    last = -1
    while True:
        rows = list(AuditEntry.objects.filter(seq__gt=last).order_by("seq").values_list(*_ENTRY_COLUMNS)[:page])
        yield from rows
        if len(rows) < page:
            return
        last = rows[-1][1]


def _entries(page: int = PAGE) -> Iterator[lv.Entry]:
    for pk, seq, prev, digest, at, actor, user_id, org_id, event_type, session_id, details in _rows(page):
        doc = lv.entry_document(
            seq=seq,
            prev=prev,
            at=lv.format_time(at),
            actor=actor,
            user_id=user_id,
            org_id=org_id,
            event_type=event_type,
            session_id=str(session_id) if session_id is not None else None,
            details=details,
        )
        yield lv.Entry(id=pk, seq=seq, prev_hash=prev, entry_hash=digest, document=doc)


def checkpoints() -> list[lv.Checkpoint]:
    return [as_verifiable(cp) for cp in AuditCheckpoint.objects.order_by("id")]


def verify(*, public: Ed25519PublicKey | None = None, external: Path | None = None) -> lv.Verdict:
    """The chain against the stored checkpoints; with ``external`` (the checkpoint file kept
    outside the database) every checkpoint in it must also be in the database, unchanged."""
    stored = checkpoints()
    if external is not None:
        missing = lv.missing_checkpoint(stored, read_checkpoint_file(external), where="the database")
        if missing is not None:
            return missing
    return lv.verify(_entries(), stored, public or public_key())


def record_verification(*, triggered_by: str, external: Path | None = None) -> AuditVerification:
    """Run ``verify`` and keep its result (the admin shows the latest)."""
    run = AuditVerification.objects.create(triggered_by=triggered_by[:200])
    try:
        verdict = verify(external=external)
    except Exception as exc:
        run.ok, run.problem, run.message = False, "error", f"{type(exc).__name__}: {exc}"[:2000]
        run.finished_at = timezone.now()
        run.save()
        raise
    run.ok = verdict.ok
    run.entries_verified, run.head_seq, run.head_hash = verdict.entries, verdict.head_seq, verdict.head_hash
    run.last_checkpoint = verdict.last_checkpoint.id if verdict.last_checkpoint else None
    run.problem, run.failing_seq, run.failing_entry_id = verdict.problem, verdict.seq, verdict.entry_id
    run.message = verdict.summary()
    run.finished_at = timezone.now()
    run.save()
    return run


def export(out: TextIO) -> int:
    """Write the bundle (header line with public key and checkpoints, then one line per entry).
    Returns the number of entries."""
    out.write(lv.bundle_header(public_key_pem(), checkpoints()) + "\n")
    n = 0
    for entry in _entries():
        out.write(json.dumps(entry.to_json(), sort_keys=True, ensure_ascii=False) + "\n")
        n += 1
    return n


def state() -> dict[str, Any]:
    """For the admin: the ledger's length and head, last checkpoint and last verification."""
    length, head_hash = head()
    return {
        "length": length,
        "head_hash": head_hash,
        # Older entries were purged (anchored by a checkpoint) when this is above 1.
        "oldest_seq": AuditEntry.objects.aggregate(m=Min("seq"))["m"],
        "last_checkpoint": AuditCheckpoint.objects.order_by("-id").first(),
        "last_verification": AuditVerification.objects.order_by("-started_at", "-id").first(),
    }
