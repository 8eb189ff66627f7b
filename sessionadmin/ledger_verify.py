"""The audit ledger's canonical form and its verification, with no Django import: the
``audit_verify`` command and the standalone ``tools/verify_audit_bundle.py`` (which an auditor
runs with only Python and ``cryptography``) both use this module, so the two can never disagree.

An entry's hash (format ``v1``) is the SHA-256 of the UTF-8 bytes of the sorted-key, compact JSON
of every stored field but the surrogate ``id``: ``v`` (the version tag), ``seq``, ``prev`` (the
previous entry's hash; ``GENESIS`` before the first), ``at`` (UTC, ``YYYY-MM-DDTHH:MM:SS.ffffffZ``),
``actor``, ``user_id``, ``org_id``, ``event_type``, ``session_id`` (hyphenated UUID or null) and
``details``. A checkpoint signs (Ed25519) the same kind of JSON of ``v``, ``length``, ``head``,
``at`` and ``prev_signature`` (the previous checkpoint's signature, "" for the first).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

VERSION = "v1"
GENESIS = "0" * 64
TIME_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"
# Floats PostgreSQL's jsonb gives back as integers (it keeps numbers as ``numeric``): the
# canonical form writes them as integers on both sides of the round trip.
_INTEGRAL_FLOAT_LIMIT = 1e15


def format_time(value: datetime) -> str:
    if value.tzinfo is None:
        raise ValueError("audit times must be timezone-aware")
    return value.astimezone(UTC).strftime(TIME_FORMAT)


def _normal(value: Any) -> Any:
    if isinstance(value, float) and value.is_integer() and abs(value) >= _INTEGRAL_FLOAT_LIMIT:
        return int(value)
    if isinstance(value, dict):
        return {str(k): _normal(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_normal(v) for v in value]
    return value


def canonical(obj: dict[str, Any]) -> bytes:
    return json.dumps(_normal(obj), sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


def entry_document(
    *,
    seq: int,
    prev: str,
    at: str,
    actor: str,
    user_id: str,
    org_id: str,
    event_type: str,
    session_id: str | None,
    details: Any,
) -> dict[str, Any]:
    """The fields an entry's hash covers, ``at`` already formatted (``format_time``)."""
    return {
        "v": VERSION,
        "seq": seq,
        "prev": prev,
        "at": at,
        "actor": actor,
        "user_id": user_id,
        "org_id": org_id,
        "event_type": event_type,
        "session_id": session_id,
        "details": details,
    }


def entry_hash(document: dict[str, Any]) -> str:
    return hashlib.sha256(canonical(document)).hexdigest()


def checkpoint_message(*, length: int, head: str, at: str, prev_signature: str) -> bytes:
    """The exact bytes a checkpoint's Ed25519 signature covers."""
    return canonical({"v": VERSION, "length": length, "head": head, "at": at, "prev_signature": prev_signature})


# --- verification -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Entry:
    """One stored entry as read back (from the database or from a bundle line)."""

    id: int
    seq: int
    prev_hash: str
    entry_hash: str
    document: dict[str, Any]

    @classmethod
    def from_json(cls, row: dict[str, Any]) -> Entry:
        fields = {k: row[k] for k in ENTRY_FIELDS if k not in ("id", "prev_hash", "entry_hash")}
        doc = entry_document(prev=row["prev_hash"], **fields)
        return cls(id=int(row["id"]), seq=int(row["seq"]), prev_hash=row["prev_hash"], entry_hash=row["entry_hash"], document=doc)

    def to_json(self) -> dict[str, Any]:
        doc = {k: v for k, v in self.document.items() if k not in ("v", "prev")}
        return {"id": self.id, "prev_hash": self.prev_hash, "entry_hash": self.entry_hash, **doc}


# Keys of an entry line in a bundle.
ENTRY_FIELDS = ("id", "seq", "prev_hash", "entry_hash", "at", "actor", "user_id", "org_id", "event_type", "session_id", "details")


@dataclass(frozen=True)
class Checkpoint:
    id: int
    length: int
    head_hash: str
    at: str
    prev_signature: str
    signature: str

    @classmethod
    def from_json(cls, row: dict[str, Any]) -> Checkpoint:
        return cls(
            id=int(row["id"]),
            length=int(row["length"]),
            head_hash=row["head_hash"],
            at=row["at"],
            prev_signature=row["prev_signature"],
            signature=row["signature"],
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "length": self.length,
            "head_hash": self.head_hash,
            "at": self.at,
            "prev_signature": self.prev_signature,
            "signature": self.signature,
        }


@dataclass
class Verdict:
    ok: bool
    entries: int = 0
    head_seq: int = 0
    head_hash: str = GENESIS
    last_checkpoint: Checkpoint | None = None
    # Failure: what is wrong and where (the first failing entry, or the checkpoint).
    problem: str = ""
    seq: int | None = None
    entry_id: int | None = None
    checkpoint_id: int | None = None
    message: str = ""
    anchor: int = 0

    def summary(self) -> str:
        if not self.ok:
            return f"FAILED ({self.problem}): {self.message}"
        last = self.last_checkpoint
        cp = f"checkpoint #{last.id} at length {last.length} ({last.at})" if last else "no checkpoint"
        start = f" from anchor {self.anchor}" if self.anchor else ""
        return f"OK: {self.entries} entries verified{start}, head seq {self.head_seq} hash {self.head_hash[:16]}..., last {cp}"


class _Failure(Exception):
    def __init__(self, problem: str, message: str, *, seq: int | None = None, entry_id: int | None = None, cp: int | None = None):
        super().__init__(message)
        self.problem, self.message, self.seq, self.entry_id, self.cp = problem, message, seq, entry_id, cp


def _signature_ok(public_key: Any, cp: Checkpoint) -> bool:
    from cryptography.exceptions import InvalidSignature

    message = checkpoint_message(length=cp.length, head=cp.head_hash, at=cp.at, prev_signature=cp.prev_signature)
    try:
        public_key.verify(bytes.fromhex(cp.signature), message)
    except (InvalidSignature, ValueError):
        return False
    return True


def load_public_key(pem: bytes) -> Any:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    key = load_pem_public_key(pem)
    if not isinstance(key, Ed25519PublicKey):
        raise ValueError("the public key is not an Ed25519 key")
    return key


def _check_checkpoints(checkpoints: list[Checkpoint], public_key: Any) -> None:
    """Every signature, and the chain of signatures (each embeds its predecessor's)."""
    prev_sig, prev_len = "", -1
    for cp in checkpoints:
        if not _signature_ok(public_key, cp):
            raise _Failure(
                "checkpoint signature invalid", f"checkpoint #{cp.id} (length {cp.length}): signature invalid", cp=cp.id
            )
        if cp.prev_signature != prev_sig:
            raise _Failure(
                "checkpoint missing",
                f"checkpoint #{cp.id} (length {cp.length}) does not follow the previous checkpoint (one is missing)",
                cp=cp.id,
            )
        if cp.length < prev_len:
            raise _Failure("checkpoint contradicted", f"checkpoint #{cp.id}: the ledger got shorter ({cp.length})", cp=cp.id)
        prev_sig, prev_len = cp.signature, cp.length


def _classify_link(row: Entry, expected_prev: str, before_prev: str | None, nxt: Entry | None) -> tuple[str, str]:
    """Why ``row`` does not follow its predecessor."""
    if before_prev is not None and row.prev_hash == before_prev:
        return "inserted", "the entry before it was inserted (this entry follows the one before that)"
    if nxt is not None and nxt.entry_hash == row.prev_hash:
        return "reordered", f"it follows entry id {nxt.id} (seq {nxt.seq}), which comes after it"
    if entry_hash(row.document) != row.entry_hash:
        return "changed", "its stored fields do not match its hash"
    return "missing", "an entry before it is missing (its predecessor's hash is not the one stored)"


def verify(entries: Iterable[Entry], checkpoints: Iterable[Checkpoint], public_key: Any) -> Verdict:
    """Walk ``entries`` (ascending seq, a stream: memory stays flat) from the oldest one kept,
    anchored by the checkpoint whose length is the seq just before it when older entries were
    purged, and check every hash, link, sequence number and checkpoint. Stops at the first
    failure."""
    cps = sorted(checkpoints, key=lambda c: (c.length, c.id))
    verdict = Verdict(ok=True, last_checkpoint=cps[-1] if cps else None)
    try:
        _check_checkpoints(sorted(cps, key=lambda c: c.id), public_key)
        by_length: dict[int, Checkpoint] = {}
        for cp in cps:
            by_length.setdefault(cp.length, cp)
            if by_length[cp.length].head_hash != cp.head_hash:
                raise _Failure(
                    "checkpoint contradicted", f"checkpoints #{by_length[cp.length].id} and #{cp.id} disagree", cp=cp.id
                )
        _walk(iter(entries), by_length, verdict)
    except _Failure as failure:
        verdict.ok, verdict.problem, verdict.message = False, failure.problem, failure.message
        verdict.seq, verdict.entry_id, verdict.checkpoint_id = failure.seq, failure.entry_id, failure.cp
    return verdict


def _walk(rows: Iterator[Entry], by_length: dict[int, Checkpoint], verdict: Verdict) -> None:
    row = next(rows, None)
    expected_seq, prev, before_prev = 1, GENESIS, None
    if row is not None and row.seq > 1:
        # Older entries were purged: the anchor is the checkpoint at the seq just before.
        anchor = by_length.get(row.seq - 1)
        if anchor is None:
            raise _Failure(
                "missing",
                f"seq {row.seq - 1} (and before) missing: no checkpoint anchors the oldest entry seq {row.seq} id {row.id}",
                seq=row.seq - 1,
                entry_id=row.id,
            )
        expected_seq, prev, verdict.anchor = row.seq, anchor.head_hash, anchor.length
    while row is not None:
        nxt = next(rows, None)
        where = f"seq {row.seq} id {row.id}"
        if row.seq > expected_seq:
            raise _Failure(
                "missing", f"seq {expected_seq} missing (the next entry is {where})", seq=expected_seq, entry_id=row.id
            )
        if row.seq < expected_seq:
            raise _Failure("reordered", f"{where}: sequence number repeated or out of order", seq=row.seq, entry_id=row.id)
        if nxt is not None and nxt.prev_hash == prev and row.prev_hash == prev:
            raise _Failure(
                "inserted", f"{where}: inserted (the entry after it follows its predecessor)", seq=row.seq, entry_id=row.id
            )
        if row.prev_hash != prev:
            problem, why = _classify_link(row, prev, before_prev, nxt)
            if problem == "inserted":
                raise _Failure(problem, f"seq {row.seq - 1}: inserted ({where} follows the entry before it)", seq=row.seq - 1)
            raise _Failure(problem, f"{where}: {problem}: {why}", seq=row.seq, entry_id=row.id)
        if entry_hash(row.document) != row.entry_hash:
            raise _Failure("changed", f"{where}: changed (its stored fields do not match its hash)", seq=row.seq, entry_id=row.id)
        cp = by_length.get(row.seq)
        if cp is not None and cp.head_hash != row.entry_hash:
            raise _Failure(
                "checkpoint contradicted",
                f"{where}: checkpoint #{cp.id} signed a different hash at length {cp.length}",
                seq=row.seq,
                entry_id=row.id,
                cp=cp.id,
            )
        before_prev, prev = prev, row.entry_hash
        verdict.entries += 1
        verdict.head_seq, verdict.head_hash = row.seq, row.entry_hash
        expected_seq += 1
        row = nxt
    for length, cp in by_length.items():
        if length > verdict.head_seq and length > verdict.anchor:
            raise _Failure(
                "checkpoint contradicted",
                f"checkpoint #{cp.id} covers {length} entries but the ledger ends at seq {verdict.head_seq} "
                "(entries missing at the end)",
                seq=verdict.head_seq + 1,
                cp=cp.id,
            )


BUNDLE_KIND = "sessionadmin-audit"


def bundle_header(public_key_pem: str, checkpoints: Iterable[Checkpoint]) -> str:
    return json.dumps(
        {"bundle": BUNDLE_KIND, "v": VERSION, "public_key": public_key_pem, "checkpoints": [c.to_json() for c in checkpoints]},
        sort_keys=True,
    )


def verify_bundle(lines: Iterable[str], *, extra_checkpoints: Iterable[Checkpoint] = ()) -> Verdict:
    """Verify an exported bundle read line by line. ``extra_checkpoints`` (the append-only
    file kept outside the database) must all be in the bundle, unchanged."""
    it = iter(lines)
    header = json.loads(next(it))
    if header.get("bundle") != BUNDLE_KIND or header.get("v") != VERSION:
        raise ValueError("not a sessionadmin audit bundle (v1)")
    key = load_public_key(header["public_key"].encode())
    cps = [Checkpoint.from_json(c) for c in header["checkpoints"]]
    missing = missing_checkpoint(cps, extra_checkpoints, where="the bundle")
    if missing is not None:
        return missing
    entries = (Entry.from_json(json.loads(line)) for line in it if line.strip())
    return verify(entries, cps, key)


def read_checkpoints(lines: Iterable[str]) -> list[Checkpoint]:
    """The checkpoint file kept outside the database: one JSON object per line."""
    return [Checkpoint.from_json(json.loads(line)) for line in lines if line.strip()]


def missing_checkpoint(known: Iterable[Checkpoint], external: Iterable[Checkpoint], *, where: str) -> Verdict | None:
    """The verdict for the first checkpoint of the external file that ``known`` (the database's
    or a bundle's) lacks or holds altered; None when all are there unchanged."""
    by_signature = {c.signature: c for c in known}
    for cp in external:
        if by_signature.get(cp.signature) != cp:
            return Verdict(
                ok=False,
                problem="checkpoint missing",
                checkpoint_id=cp.id,
                message=f"checkpoint #{cp.id} (length {cp.length}) of the external file is missing or altered in {where}",
            )
    return None
