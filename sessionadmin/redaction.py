"""Keeping secrets out of what people and logs see.

``safe_url`` renders a URL for the record (audit details, messages): no user info, query values
replaced, no fragment.
"""

from __future__ import annotations

from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

MARK = "[redacted]"


def safe_url(url: str) -> str:
    """``url`` without credentials: user info dropped, every query value replaced by the mark
    (a token often travels as ``?key=...``), fragment dropped. Unparseable input gives ""."""
    try:
        parts = urlsplit(url)
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return ""
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    query = urlencode([(key, MARK) for key, _ in parse_qsl(parts.query, keep_blank_values=True)], safe="[]")
    return urlunsplit((parts.scheme, f"{host}{port}", parts.path, query, ""))
