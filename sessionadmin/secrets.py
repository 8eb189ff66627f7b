"""Secrets at rest: MCP header and environment values, encrypted with Fernet.

The key is ``settings.SESSIONADMIN_SECRETS_KEY`` (a Fernet key, or any passphrase, which is
stretched into one) or, when that is empty, derived from ``SECRET_KEY`` with a purpose label so
the two keys are never the same bytes. Changing the key makes stored values unreadable:
``decrypt_mapping`` then raises SecretsError rather than returning garbage.
"""

from __future__ import annotations

import base64
import hashlib
import json
from functools import lru_cache

from cryptography.fernet import Fernet, InvalidToken
from django.conf import settings

MASK = "••••"


class SecretsError(ValueError):
    """Stored secrets cannot be read. A ValueError, so every caller that handles malformed
    stored data (the health pass, forms) handles this too instead of failing with a 500."""


def _fernet_key(raw: str) -> bytes:
    try:
        key = raw.encode()
        Fernet(key)
        return key
    except ValueError:
        digest = hashlib.pbkdf2_hmac("sha256", raw.encode(), b"sessionadmin.secrets", 100_000)
        return base64.urlsafe_b64encode(digest)


@lru_cache(maxsize=4)
def _fernet_for(configured: str, secret_key: str) -> Fernet:
    if configured:
        return Fernet(_fernet_key(configured))
    digest = hashlib.sha256(b"sessionadmin.secrets:" + secret_key.encode()).digest()
    return Fernet(base64.urlsafe_b64encode(digest))


def _fernet() -> Fernet:
    return _fernet_for(settings.SESSIONADMIN_SECRETS_KEY, settings.SECRET_KEY)


def encrypt_mapping(values: dict[str, str]) -> str:
    """An encrypted token for a name -> value mapping ("" for an empty one)."""
    if not values:
        return ""
    clean = {str(k): str(v) for k, v in values.items()}
    return _fernet().encrypt(json.dumps(clean, sort_keys=True).encode()).decode()


def decrypt_mapping(token: str) -> dict[str, str]:
    if not token:
        return {}
    try:
        data = json.loads(_fernet().decrypt(token.encode()))
    except (InvalidToken, ValueError) as exc:
        raise SecretsError("stored MCP secrets cannot be decrypted (was the secrets key changed?)") from exc
    if not isinstance(data, dict):
        raise SecretsError("stored MCP secrets are malformed")
    return {str(k): str(v) for k, v in data.items()}


def mask(value: str) -> str:
    """Only the last characters: at most 4, and never more than a quarter of the value."""
    shown = min(4, len(value) // 4)
    return MASK + (value[-shown:] if shown else "")


def masked_mapping(values: dict[str, str]) -> dict[str, str]:
    return {name: mask(value) for name, value in values.items()}
