"""What a tool result may carry out of the gateway: catalog secrets redacted, size capped.

Redaction: the ``Redactor`` of the client's target (``sessionadmin/redaction.py``: every stored
secret value and its parts of 8+ characters, credentials in URLs) applied to every string of the
result. Size: a result whose JSON is larger than ``SESSIONADMIN_MCP_MAX_RESULT_BYTES`` is
replaced by its text, cut, with a visible marker (the transports already cut any message above
the limit as it arrives).
"""

from __future__ import annotations

import json
from typing import Any

from sessionadmin.redaction import Redactor


def present(result: Any, redactor: Redactor, max_bytes: int) -> Any:
    """A new ``CallToolResult`` with the content, structured content and error flag of
    ``result`` (the upstream's ``_meta`` is not passed on), redacted and capped."""
    import mcp_types as types

    data = {
        "content": [block.model_dump(mode="json", by_alias=True, exclude_none=True) for block in result.content or []],
        "structuredContent": result.structured_content,
        "isError": bool(result.is_error),
    }
    data = redactor.json(data)
    size = len(json.dumps(data, ensure_ascii=False).encode())
    if size > max_bytes:
        texts = "\n".join(block.get("text", "") for block in data["content"] if block.get("type") == "text")
        keep = texts.encode()[: max(0, max_bytes - 200)].decode("utf-8", "ignore")
        marker = f"\n[result cut: {size} bytes, more than the limit of {max_bytes}]"
        data = {"content": [{"type": "text", "text": keep + marker}], "structuredContent": None, "isError": data["isError"]}
    return types.CallToolResult.model_validate(data)
