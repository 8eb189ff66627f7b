"""Service for the runtime API's bearer tokens: create (the plaintext is returned once), revoke,
authenticate. Every write is audited in the same transaction.

A token reads ``sat_<8 hex>_<43 url-safe chars>``: the first 12 characters are stored as the
``prefix`` (to find the row), and a SHA-256 of the whole token as ``token_hash``. The secret part
carries 256 bits of randomness, so a plain hash is enough (no slow KDF is needed, and none would
fit a heartbeat endpoint); hashes are compared in constant time.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from datetime import datetime, timedelta

from django.db import IntegrityError, transaction
from django.db.models import Q
from django.utils import timezone

from sessionadmin import audit
from sessionadmin.models import ApiToken, AuditEntry, Org

TOKEN_SCHEME = "sat"
PREFIX_LENGTH = len(TOKEN_SCHEME) + 1 + 8  # "sat_" + 8 hex characters
MAX_NAME_LENGTH = 100
# One write of last_used_at per token per this many seconds, like session activity.
LAST_USED_RESOLUTION_SECONDS = 60


class TokenError(Exception):
    """A token cannot be created or revoked; ``str()`` is meant for the operator."""


class TokenNotFound(TokenError):
    pass


def hash_token(raw: str) -> str:
    return hashlib.sha256(raw.encode()).hexdigest()


def _new_raw_token() -> str:
    return f"{TOKEN_SCHEME}_{secrets.token_hex(4)}_{secrets.token_urlsafe(32)}"


def create_token(
    *,
    name: str,
    actor: str,
    org: Org | None = None,
    expires_at: datetime | None = None,
    can_read_metrics: bool = False,
    now: datetime | None = None,
) -> tuple[ApiToken, str]:
    """A new token and its plaintext, which is not stored and cannot be shown again.
    ``can_read_metrics``: it may scrape /metrics."""
    name = (name or "").strip()
    if not name:
        raise TokenError("a token needs a name")
    if len(name) > MAX_NAME_LENGTH:
        raise TokenError(f"the name is longer than {MAX_NAME_LENGTH} characters")
    now = now or timezone.now()
    if expires_at is not None and expires_at <= now:
        raise TokenError("the expiry must be in the future")
    if ApiToken.objects.filter(name=name).exists():
        raise TokenError(f"a token named {name!r} already exists")
    raw = _new_raw_token()
    token = ApiToken(
        name=name,
        prefix=raw[:PREFIX_LENGTH],
        token_hash=hash_token(raw),
        org=org,
        expires_at=expires_at,
        can_read_metrics=can_read_metrics,
        created_at=now,
        created_by=actor[:200],
    )
    try:
        with transaction.atomic():
            token.save(force_insert=True)
            audit.write([_token_entry("api_token_created", token, actor, now)])
    except IntegrityError:
        # A concurrent create with the same name (a prefix clash is 2^-32 unlikely).
        raise TokenError(f"a token named {name!r} already exists")
    return token, raw


def revoke_token(*, name: str, actor: str, now: datetime | None = None) -> ApiToken:
    """Revoke a token by name. Revoking a revoked token is a no-op (and audits nothing)."""
    now = now or timezone.now()
    with transaction.atomic():
        token = ApiToken.objects.select_for_update().filter(name=name).first()
        if token is None:
            raise TokenNotFound(f"no token named {audit.safe_repr(name)}")
        if token.revoked_at is None:
            token.revoked_at = now
            token.save(update_fields=["revoked_at"])
            audit.write([_token_entry("api_token_revoked", token, actor, now)])
    return token


def _token_entry(event_type: str, token: ApiToken, actor: str, now: datetime) -> AuditEntry:
    # The prefix identifies the token in the trail; the hash and the plaintext never appear.
    return audit.entry(
        event_type,
        actor=actor,
        org_id=token.org_id or "",
        at=now,
        details={
            "name": token.name,
            "prefix": token.prefix,
            "org_id": token.org_id,
            "expires_at": token.expires_at.isoformat() if token.expires_at else None,
            "can_read_metrics": token.can_read_metrics,
        },
    )


# What a token may look like: anything else (NUL, non-ASCII, a lone surrogate) never reaches a query.
TOKEN_RE = re.compile(rf"{TOKEN_SCHEME}_[0-9a-f]{{8}}_[A-Za-z0-9_-]{{1,{200 - PREFIX_LENGTH - 1}}}", re.ASCII)


def looks_like_token(raw: str) -> bool:
    return TOKEN_RE.fullmatch(raw) is not None


def authenticate(raw: str, *, now: datetime | None = None) -> ApiToken | None:
    """The usable token whose plaintext is ``raw``, or None. One SELECT; ``last_used_at`` is
    written at most once per LAST_USED_RESOLUTION_SECONDS, so a heartbeat stays a read."""
    if not looks_like_token(raw):
        return None
    now = now or timezone.now()
    token = ApiToken.objects.usable(now).filter(prefix=raw[:PREFIX_LENGTH]).first()
    if token is None or not hmac.compare_digest(token.token_hash, hash_token(raw)):
        return None
    if token.last_used_at is None or token.last_used_at < last_used_cutoff(now):
        mark_used(token.pk, now=now)
        token.last_used_at = now
    return token


def last_used_cutoff(now: datetime) -> datetime:
    return now - timedelta(seconds=LAST_USED_RESOLUTION_SECONDS)


def mark_used(token_id: int, *, now: datetime) -> None:
    """Conditional, so concurrent requests of one token write once between them."""
    cutoff = last_used_cutoff(now)
    ApiToken.objects.filter(pk=token_id).filter(Q(last_used_at__isnull=True) | Q(last_used_at__lt=cutoff)).update(
        last_used_at=now
    )
