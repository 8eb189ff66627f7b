"""What a tool result may carry out of the gateway: catalog secrets redacted, size capped.

Redaction: every stored secret value of the client's catalog entry, and every part of it of 8 or
more characters split on whitespace, ``:``, ``=`` and ``,`` (a header ``Bearer <token>`` also
hides a bare ``<token>``), becomes ``[redacted]`` in every string of the result. Size: a result
whose JSON is larger than ``SESSIONADMIN_MCP_MAX_RESULT_BYTES`` is replaced by its text, cut, with
a visible marker. (The security branch brings the project-wide Redactor and a streaming cap in
the transports; this is the gateway's use of them.)
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Any

REDACTED = "[redacted]"
MIN_PART = 8
_SPLIT = re.compile(r"[\s:=,]+")


def secret_parts(secrets: Sequence[str]) -> list[str]:
    """The strings to hide, longest first (so a whole value wins over its parts)."""
    out: set[str] = set()
    for secret in secrets:
        if len(secret) >= 3:
            out.add(secret)
        out.update(part for part in _SPLIT.split(secret) if len(part) >= MIN_PART)
    return sorted(out, key=len, reverse=True)


def redact_text(text: str, parts: Sequence[str]) -> str:
    for part in parts:
        if part in text:
            text = text.replace(part, REDACTED)
    return text


def _redact(value: Any, parts: Sequence[str]) -> Any:
    if isinstance(value, str):
        return redact_text(value, parts)
    if isinstance(value, list):
        return [_redact(v, parts) for v in value]
    if isinstance(value, dict):
        return {redact_text(k, parts) if isinstance(k, str) else k: _redact(v, parts) for k, v in value.items()}
    return value


def present(result: Any, secrets: Sequence[str], max_bytes: int) -> Any:
    """A new ``CallToolResult`` with the content, structured content and error flag of
    ``result`` (the upstream's ``_meta`` is not passed on), redacted and capped."""
    import mcp_types as types

    data = {
        "content": [block.model_dump(mode="json", by_alias=True, exclude_none=True) for block in result.content or []],
        "structuredContent": result.structured_content,
        "isError": bool(result.is_error),
    }
    parts = secret_parts(secrets)
    if parts:
        data = _redact(data, parts)
    size = len(json.dumps(data, ensure_ascii=False).encode())
    if size > max_bytes:
        texts = "\n".join(block.get("text", "") for block in data["content"] if block.get("type") == "text")
        keep = texts.encode()[: max(0, max_bytes - 200)].decode("utf-8", "ignore")
        marker = f"\n[result cut: {size} bytes, more than the limit of {max_bytes}]"
        data = {"content": [{"type": "text", "text": keep + marker}], "structuredContent": None, "isError": data["isError"]}
    return types.CallToolResult.model_validate(data)
