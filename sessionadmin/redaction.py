"""Keeping secrets out of what people, agents and logs see.

A ``Redactor`` is built from the secret values in play for one operation and replaces them with
``[redacted]`` in text (``redactor.text(s)``) and in JSON-like data (``redactor.json(obj)``:
every string, keys included). What is in play:

- a catalog entry's header and environment values: ``Redactor.for_server(server)``;
- an ad-hoc URL's credentials (user info, query values; nothing is stored for it):
  ``Redactor.for_url(url)``; an attached client, either way: ``Redactor.for_client(client)``;
- every catalog entry at once, to show rows written before (the audit trail):
  ``Redactor.for_catalog()``.

What is replaced, case-insensitively (a server may upper-case what it echoes), also in its
percent-encoded form: every whole value of 8 or more characters, and every part of a value of 8
or more characters when the value is split on whitespace, ``:``, ``=`` and ``,`` (so the token of
``Bearer <token>``, the password of ``user:password``); the decoded credentials of a ``Basic``
header likewise. A whole value of 4 to 7 characters is replaced only as a word of its own and
with its exact case (``"prod"`` must not eat ``"production"``); shorter values are left alone:
they cannot be told from ordinary text and carry no secrecy. Credentials written in any URL
(``scheme://user:pass@``) are always replaced.

Log records are redacted by ``RedactingFilter`` (on the console handler) with the redactor of
the MCP operation running in the current context (``scope(redactor)``, set by ``mcp_client``),
so what the SDK logs about a server carries no secret either.

``safe_url`` renders a URL for the record (audit details): no user info, query values replaced,
no fragment.
"""

from __future__ import annotations

import base64
import binascii
import contextvars
import logging
import re
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

if TYPE_CHECKING:
    from sessionadmin.models import McpClient, McpServer

MARK = "[redacted]"
MIN_PART = 8
MIN_WORD = 4
_SPLIT = re.compile(r"[\s:=,]+")
_BASIC = re.compile(r"^\s*basic\s+([A-Za-z0-9+/=_-]+)\s*$", re.IGNORECASE)
# scheme://user:password@ or scheme://token@ in any text.
_URL_USERINFO = re.compile(r"(?P<scheme>\b[a-z][a-z0-9+.-]*://)[^/\s@]+@", re.IGNORECASE)
# Extra characters redacted past a cut, for a URL's user info that straddles it.
_CUT_MARGIN = 256
# Deep enough for any listing or result we keep; deeper nesting is cut, not walked.
MAX_DEPTH = 64


def _decoded_basic(value: str) -> str:
    match = _BASIC.match(value)
    if not match:
        return ""
    try:
        return base64.b64decode(match.group(1) + "==", validate=False).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return ""


def _needles(value: str) -> tuple[set[str], set[str]]:
    """(anywhere, words): what to replace anywhere (case-insensitively), and short values to
    replace as exact words only."""
    anywhere: set[str] = set()
    words: set[str] = set()
    candidates = [value]
    decoded = _decoded_basic(value)
    if decoded:
        candidates.append(decoded)
    for candidate in candidates:
        stripped = candidate.strip()
        if len(stripped) >= MIN_PART:
            anywhere.add(stripped)
        elif len(stripped) >= MIN_WORD:
            words.add(stripped)
        anywhere.update(part for part in _SPLIT.split(candidate) if len(part) >= MIN_PART)
    for needle in list(anywhere):
        encoded = quote(needle, safe="")
        if encoded != needle:
            anywhere.add(encoded)
    return anywhere, words


def _alternation(needles: Iterable[str]) -> str:
    # Longest first, so a value wins over its own parts.
    return "|".join(re.escape(n) for n in sorted(needles, key=lambda n: (-len(n), n)))


class Redactor:
    """Replaces the given secret values with ``[redacted]``. Cheap to build; immutable."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self.secrets: tuple[str, ...] = tuple(sorted({s for s in secrets if s}))
        anywhere: set[str] = set()
        words: set[str] = set()
        for value in self.secrets:
            a, w = _needles(value)
            anywhere |= a
            words |= w
        # How far a secret can reach: text cut at N is redacted up to N + longest first, so
        # a secret straddling the cut is never left half-shown.
        self.longest = max((len(n) for n in anywhere | words), default=0)
        self._anywhere = re.compile(_alternation(anywhere), re.IGNORECASE) if anywhere else None
        self._words = re.compile(rf"(?<![A-Za-z0-9])(?:{_alternation(words)})(?![A-Za-z0-9])") if words else None

    def __bool__(self) -> bool:
        return bool(self.secrets)

    def __add__(self, other: Redactor) -> Redactor:
        return Redactor((*self.secrets, *other.secrets))

    def __repr__(self) -> str:
        return f"<Redactor of {len(self.secrets)} secret(s)>"  # never the values

    # --- what is in play ------------------------------------------------------------------

    @classmethod
    def for_url(cls, url: str) -> Redactor:
        """A URL's own credentials: user name and password, and query values long enough to be
        tokens (8+ characters; ``?format=json`` must not redact every "json")."""
        try:
            parts = urlsplit(url or "")
            values = [parts.username or "", parts.password or ""]
            values += [v for _, v in parse_qsl(parts.query) if len(v) >= MIN_PART]
        except ValueError:
            return cls()
        return cls(values)

    @classmethod
    def for_server(cls, server: McpServer | None) -> Redactor:
        """A catalog entry's header and environment values, and its URL's credentials.
        Values that cannot be decrypted (a changed key) cannot be sent either: nothing to add."""
        if server is None:
            return cls()
        from sessionadmin.secrets import SecretsError, decrypt_mapping

        values: list[str] = []
        for token in (server.headers_encrypted, server.env_encrypted):
            try:
                values += decrypt_mapping(token).values()
            except SecretsError:
                pass
        return cls(values) + cls.for_url(server.url)

    @classmethod
    def for_client(cls, client: McpClient) -> Redactor:
        """An attached client: its catalog entry's secrets, or its ad-hoc URL's credentials."""
        if client.server_id is not None:
            return cls.for_server(client.server)
        return cls.for_url(client.url)

    @classmethod
    def for_target(cls, target: Any) -> Redactor:
        """A connection target (``mcp_client.Target``): its headers, env and URL."""
        values = [*getattr(target, "headers", {}).values(), *getattr(target, "env", {}).values()]
        return cls(values) + cls.for_url(getattr(target, "url", ""))

    @classmethod
    def for_catalog(cls) -> Redactor:
        """Every catalog entry's secrets: for showing rows written before (audit entries are
        never rewritten), whichever entry they were about."""
        from sessionadmin.models import McpServer

        out = cls()
        for server in McpServer.objects.only("url", "headers_encrypted", "env_encrypted"):
            out += cls.for_server(server)
        return out

    # --- applying it ----------------------------------------------------------------------

    def text(self, value: str) -> str:
        """``value`` with every secret, and any URL's user info, replaced."""
        if not value:
            return value
        value = _URL_USERINFO.sub(lambda m: f"{m.group('scheme')}{MARK}@", value)
        if self._anywhere is not None:
            value = self._anywhere.sub(MARK, value)
        if self._words is not None:
            value = self._words.sub(MARK, value)
        return value

    def cut(self, value: str, limit: int) -> str:
        """``value`` redacted and cut to ``limit`` characters (an ellipsis marks the cut),
        without redacting more of it than can be kept."""
        text = self.text(value[: limit + self.longest + _CUT_MARGIN])
        return text if len(value) <= limit and len(text) <= limit else text[: limit - 1] + "…"

    def json(self, value: Any, _depth: int = 0) -> Any:
        """A copy of JSON-like data (dicts, lists, strings, numbers) with every string, keys
        included, passed through ``text``. Other scalars are returned as they are."""
        if isinstance(value, str):
            return self.text(value)
        if _depth >= MAX_DEPTH:
            return MARK if isinstance(value, Mapping | list | tuple) else value
        if isinstance(value, Mapping):
            return {self.text(str(k)): self.json(v, _depth + 1) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [self.json(v, _depth + 1) for v in value]
        return value


# --- audit entries as shown -------------------------------------------------------------------


def redact_shown_entries(entries: Iterable[Any]) -> None:
    """Redact, in memory, the details of audit entries about to be shown or exported. Rows
    are append-only, so one written before redaction covered it (or quoting a secret stored
    since) is cleaned here, against every catalog secret; nothing is saved. The catalog is
    read only when an MCP entry is among them."""
    entries = list(entries)
    if not any(e.event_type.startswith("mcp_") for e in entries):
        return
    redactor = Redactor.for_catalog()
    for entry in entries:
        entry.details = redactor.json(entry.details)


# --- logs -------------------------------------------------------------------------------------

_current: contextvars.ContextVar[Redactor | None] = contextvars.ContextVar("sessionadmin_redactor", default=None)


@contextmanager
def scope(redactor: Redactor) -> Iterator[Redactor]:
    """Log records emitted in this context (and in tasks started from it) are redacted with
    ``redactor`` (added to any redactor already in scope)."""
    outer = _current.get()
    token = _current.set(redactor if outer is None else outer + redactor)
    try:
        yield redactor
    finally:
        _current.reset(token)


class RedactingFilter(logging.Filter):
    """For handlers: replaces the message (and the formatted traceback) of every record with
    its redacted text when an MCP operation's redactor is in scope; URL credentials always."""

    def filter(self, record: logging.LogRecord) -> bool:
        redactor = _current.get() or _EMPTY
        try:
            message = record.getMessage()
        except Exception:  # a malformed record: leave it to logging's own error handling
            return True
        record.msg, record.args = redactor.text(message), ()
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redactor.text(record.exc_text)
        if record.stack_info:
            record.stack_info = redactor.text(record.stack_info)
        return True


_EMPTY = Redactor()


# --- URLs for the record ----------------------------------------------------------------------


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
