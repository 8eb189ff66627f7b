"""Size limits on what an MCP server sends, applied while the bytes arrive (pure: no Django,
no MCP SDK; ``mcp_client`` plugs these into its stdio and HTTP transports).

A message (a stdio line, a JSON body, an SSE event) is buffered up to the limit. Past it, the
buffer is dropped and the rest of the message is only *followed*: ``TopLevel`` tracks the JSON
nesting in constant memory and keeps the object's top level with every nested value replaced by
``null`` (``{"jsonrpc":"2.0","id":7,"result":null}``), which yields the JSON-RPC ``id`` wherever
the key sits (before or after a 50 MB ``result``). The transport then delivers a small stand-in
for the same request id instead (``replacement``): a tool result saying it was cut and how big
it was, or a JSON-RPC error for any other request. So a message is never held whole beyond the
limit, and the caller waiting for that id gets an answer instead of a timeout.
"""

from __future__ import annotations

import json
import re
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

DEFAULT_LIMIT = 4 * 1024 * 1024
CUT_MARKER = "[result cut:"
TOOLS_CALL = "tools/call"
INTERNAL_ERROR = -32603
# Bounds of what TopLevel keeps: the top level of a JSON-RPC message is a handful of short keys.
MAX_TOP_BYTES = 64 * 1024
MAX_TOP_STRING = 1024
MAX_PENDING = 1024

_STRING_BODY = re.compile(rb'(?:[^"\\]++|\\.)*+', re.DOTALL)
_STRUCTURE = re.compile(rb'["{}\[\]]')
_EOL = re.compile(rb"\r\n|\r|\n")


class TopLevel:
    """Follows one JSON object fed in chunks (anything before its first ``{`` is ignored, so
    an SSE ``data:`` prefix is fine) and keeps its top level, nested values as ``null``, long
    top-level strings as ``""``, at most MAX_TOP_BYTES in all."""

    def __init__(self) -> None:
        self.depth = 0
        self.in_string = False
        self.escape = False
        self.done = False
        self.overflow = False
        self.out = bytearray()
        self._string_start = 0
        self._string_cut = False

    def _keep(self, data: bytes) -> None:
        if self.overflow or not data:
            return
        if len(self.out) + len(data) > MAX_TOP_BYTES:
            self.overflow = True
            return
        self.out += data

    def _string(self, data: bytes) -> None:
        if self.depth != 1 or self._string_cut or not data:
            return
        if len(self.out) - self._string_start + len(data) > MAX_TOP_STRING:
            del self.out[self._string_start :]
            self._string_cut = True
            return
        self._keep(data)

    def feed(self, data: bytes) -> None:
        i, n = 0, len(data)
        while i < n and not self.done:
            if self.in_string:
                if self.escape:
                    self.escape = False
                    self._string(data[i : i + 1])
                    i += 1
                    continue
                # One C-level match skips the string's body, escapes included.
                end = _STRING_BODY.match(data, i).end()  # type: ignore[union-attr]
                self._string(data[i:end])
                if end == n:
                    return
                if data[end] == 0x5C:  # a backslash ending the chunk: the next byte is escaped
                    self.escape = True
                    self._string(b"\\")
                else:
                    self.in_string = False
                    if self.depth == 1:
                        self._keep(b'"')
                i = end + 1
                continue
            if self.depth == 0:
                start = data.find(b"{", i)
                if start < 0:
                    return
                self.depth = 1
                self._keep(b"{")
                i = start + 1
                continue
            found = _STRUCTURE.search(data, i)
            end = found.start() if found else n
            if self.depth == 1:
                self._keep(data[i:end])
            if found is None:
                return
            char = data[end]
            if char == 0x22:  # "
                self.in_string = True
                if self.depth == 1:
                    self._keep(b'"')
                    self._string_start, self._string_cut = len(self.out), False
            elif char in (0x7B, 0x5B):  # { [
                self.depth += 1
                if self.depth == 2:
                    self._keep(b"null")
            else:  # } ]
                self.depth -= 1
                if self.depth == 0:
                    self._keep(b"}")
                    self.done = True
            i = end + 1

    def result(self) -> dict[str, Any] | None:
        if self.overflow or not self.done:
            return None
        try:
            value = json.loads(bytes(self.out))
        except ValueError:
            return None
        return value if isinstance(value, dict) else None


@dataclass(frozen=True)
class Oversized:
    """A message that went over the limit: how many bytes it had, and its top level (None
    when it was not a readable JSON object)."""

    size: int
    top: dict[str, Any] | None


class MessageBuffer:
    """One message, kept whole up to ``limit`` bytes and only followed beyond."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._buffer = bytearray()
        self._size = 0
        self._top: TopLevel | None = None

    def add(self, data: bytes) -> None:
        if not data:
            return
        self._size += len(data)
        if self._top is None:
            if self._size <= self.limit:
                self._buffer += data
                return
            self._top = TopLevel()
            self._top.feed(bytes(self._buffer))
            self._buffer = bytearray()
        self._top.feed(data)

    def finish(self) -> bytes | Oversized:
        item: bytes | Oversized = bytes(self._buffer) if self._top is None else Oversized(self._size, self._top.result())
        self._buffer, self._size, self._top = bytearray(), 0, None
        return item


class LineSplitter:
    """Newline-delimited messages (stdio): complete lines up to the limit, Oversized beyond.
    Blank lines are skipped."""

    def __init__(self, limit: int) -> None:
        self._message = MessageBuffer(limit)

    def feed(self, chunk: bytes) -> list[bytes | Oversized]:
        out: list[bytes | Oversized] = []
        start = 0
        while True:
            newline = chunk.find(b"\n", start)
            if newline < 0:
                self._message.add(chunk[start:])
                return out
            self._message.add(chunk[start:newline])
            item = self._message.finish()
            if isinstance(item, Oversized) or item.strip():
                out.append(item)
            start = newline + 1


class SseSplitter:
    """Server-sent events: each complete event (its lines, ``\\n``-terminated, then the blank
    line) up to the limit, Oversized beyond. CR, LF and CRLF line ends are accepted."""

    def __init__(self, limit: int) -> None:
        self._message = MessageBuffer(limit)
        self._line_length = 0
        self._lines = 0
        self._skip_lf = False

    def feed(self, chunk: bytes) -> list[bytes | Oversized]:
        out: list[bytes | Oversized] = []
        i = 1 if self._skip_lf and chunk[:1] == b"\n" else 0
        self._skip_lf = False
        while True:
            found = _EOL.search(chunk, i)
            end = found.start() if found else len(chunk)
            if end > i:
                self._message.add(chunk[i:end])
                self._line_length += end - i
            if found is None:
                return out
            if found.group() == b"\r" and found.end() == len(chunk):
                self._skip_lf = True  # a CRLF split across two chunks
            if self._line_length == 0:
                if self._lines:
                    item = self._message.finish()
                    out.append(item + b"\n" if isinstance(item, bytes) else item)
                    self._lines = 0
            else:
                self._message.add(b"\n")
                self._line_length = 0
                self._lines += 1
            i = found.end()

    def flush(self) -> list[bytes | Oversized]:
        """What is left when the stream ends (an event without its blank line)."""
        if self._line_length:
            self._message.add(b"\n")
            self._lines += 1
        self._line_length = 0
        if not self._lines:
            return []
        self._lines = 0
        return [self._message.finish()]


class Pending:
    """Requests sent and not yet known to be answered: id -> method, the oldest forgotten past
    MAX_PENDING (an answer the transport does not need to parse never removes its entry)."""

    def __init__(self) -> None:
        self._methods: OrderedDict[tuple[str, str], str] = OrderedDict()

    @staticmethod
    def _key(request_id: Any) -> tuple[str, str]:
        return (type(request_id).__name__, str(request_id))

    def add(self, request_id: Any, method: str) -> None:
        self._methods[self._key(request_id)] = method
        while len(self._methods) > MAX_PENDING:
            self._methods.popitem(last=False)

    def pop(self, request_id: Any) -> str | None:
        return self._methods.pop(self._key(request_id), None)

    def only(self) -> tuple[str, str] | None:
        return next(iter(self._methods)) if len(self._methods) == 1 else None


def notice(size: int, limit: int) -> str:
    return f"{CUT_MARKER} the MCP server sent {size:,} bytes, more than the limit of {limit:,} bytes; the rest was dropped]"


def replacement(item: Oversized, pending: Pending, limit: int, *, fallback_id: Any = None) -> dict[str, Any] | None:
    """The JSON-RPC message to deliver instead of an oversized one, or None to drop it (a
    request or notification from the server, or an answer to nothing we asked).

    The id comes from the message's own top level; when that is unreadable, from
    ``fallback_id`` (the request an HTTP response belongs to) or, when exactly one request is
    waiting, from that one."""
    top = item.top
    if top is not None and "method" in top:
        return None
    request_id: Any = None
    if top is not None and isinstance(top.get("id"), int | str) and not isinstance(top.get("id"), bool):
        request_id = top["id"]
    elif fallback_id is not None:
        request_id = fallback_id
    else:
        only = pending.only()
        if only is None:
            return None
        request_id = int(only[1]) if only[0] == "int" else only[1]
    method = pending.pop(request_id)
    if method is None:
        return None
    if method == TOOLS_CALL:
        # resultType: the 2026-07-28 protocol tags every result (older ones ignore the key).
        result = {"content": [{"type": "text", "text": notice(item.size, limit)}], "isError": True, "resultType": "complete"}
        return {"jsonrpc": "2.0", "id": request_id, "result": result}
    message = f"the MCP server's answer to {method} was {item.size:,} bytes, more than the limit of {limit:,} bytes"
    return {"jsonrpc": "2.0", "id": request_id, "error": {"code": INTERNAL_ERROR, "message": message}}
