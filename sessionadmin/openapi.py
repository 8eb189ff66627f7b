"""The OpenAPI 3 document of the runtime API, served at ``/api/v1/openapi.json``.

Kept by hand next to ``api.py``: schemas are strict (``additionalProperties: false``, id
patterns, bounds), and ``tests/test_api_schema.py`` runs schemathesis against the app with it,
so a response that drifts from this document fails the suite.
"""

from __future__ import annotations

from typing import Any

from sessionadmin.api import DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE, RETRY_AFTER_SECONDS
from sessionadmin.manager import MAX_REASON_LENGTH
from sessionadmin.validation import MAX_ID_LENGTH, MAX_VARIABLE_VALUE_LENGTH, MAX_VARIABLES

ID_PATTERN = r"^[A-Za-z0-9_@][A-Za-z0-9._@-]{0,127}$"
STATUSES = ["active", "terminating", "ended", "failed"]


def ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def json_content(schema: dict[str, Any]) -> dict[str, Any]:
    return {"application/json": {"schema": schema}}


def error(description: str, **headers: dict[str, Any]) -> dict[str, Any]:
    response: dict[str, Any] = {"description": description, "content": json_content(ref("Error"))}
    if headers:
        response["headers"] = headers
    return response


def ok(description: str, schema: str) -> dict[str, Any]:
    return {"description": description, "content": json_content(ref(schema))}


SESSION_ID = {
    "name": "session_id",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "format": "uuid"},
}
COMMON_ERRORS = {
    "401": error("Missing, unknown, expired or revoked token.", **{"WWW-Authenticate": {"schema": {"type": "string"}}}),
}
NOT_FOUND = {"404": error("Unknown session, or one outside the token's org scope.")}
BODY_ERRORS = {
    "400": error("Malformed JSON, wrong types, unknown fields or invalid values (see `fields`)."),
    "413": error("The body is larger than 64 KiB."),
    "415": error("The body is not application/json."),
}

SCHEMAS: dict[str, Any] = {
    "Error": {
        "type": "object",
        "required": ["error"],
        "additionalProperties": False,
        "properties": {
            "error": {
                "type": "object",
                "required": ["code", "message"],
                "properties": {
                    "code": {"type": "string"},
                    "message": {"type": "string"},
                    "fields": {"type": "object", "additionalProperties": {"type": "string"}},
                    "limit": {
                        "type": "object",
                        "description": "On 429: which limit is full.",
                        "required": ["scope", "current", "maximum"],
                        "properties": {
                            "scope": {"type": "string", "enum": ["global", "org", "user"]},
                            "current": {"type": "integer"},
                            "maximum": {"type": "integer"},
                        },
                    },
                },
            }
        },
    },
    "Session": {
        "type": "object",
        "additionalProperties": False,
        "required": [
            "id",
            "user_id",
            "org_id",
            "status",
            "workspace_path",
            "variables",
            "created_at",
            "created_by",
            "last_active_at",
            "ended_at",
            "end_reason",
            "pinned_until",
        ],
        "properties": {
            "id": {"type": "string", "format": "uuid"},
            "user_id": {"type": "string"},
            "org_id": {"type": "string"},
            "status": {"type": "string", "enum": STATUSES},
            "workspace_path": {"type": "string"},
            "variables": {"type": "object", "additionalProperties": {"type": "string"}},
            "created_at": {"type": "string", "format": "date-time"},
            "created_by": {"type": "string"},
            "last_active_at": {"type": "string", "format": "date-time"},
            "ended_at": {"type": "string", "format": "date-time", "nullable": True},
            "end_reason": {"type": "string"},
            "pinned_until": {"type": "string", "format": "date-time", "nullable": True},
        },
    },
    "SessionPage": {
        "type": "object",
        "additionalProperties": False,
        "required": ["sessions", "next_cursor"],
        "properties": {
            "sessions": {"type": "array", "items": ref("Session")},
            "next_cursor": {"type": "string", "nullable": True, "description": "Pass as `cursor` for the next page."},
        },
    },
    "CreateSession": {
        "type": "object",
        "additionalProperties": False,
        "required": ["user_id", "org_id"],
        "properties": {
            "user_id": {"type": "string", "pattern": ID_PATTERN, "maxLength": MAX_ID_LENGTH},
            "org_id": {"type": "string", "pattern": ID_PATTERN, "maxLength": MAX_ID_LENGTH},
            "variables": {
                "type": "object",
                "description": "Prompt variables; `user_id`, `org_id` and `session_id` are reserved.",
                "maxProperties": MAX_VARIABLES,
                "additionalProperties": {
                    "oneOf": [
                        {"type": "string", "maxLength": MAX_VARIABLE_VALUE_LENGTH},
                        {"type": "number"},
                        {"type": "boolean"},
                    ]
                },
            },
        },
    },
    "DeleteSession": {
        "type": "object",
        "additionalProperties": False,
        "properties": {"reason": {"type": "string", "maxLength": MAX_REASON_LENGTH}},
    },
    "Deleted": {
        "type": "object",
        "additionalProperties": False,
        "required": ["id", "status", "cleanup"],
        "properties": {
            "id": {"type": "string", "format": "uuid"},
            "status": {"type": "string", "enum": ["terminating"]},
            "cleanup": {
                "type": "string",
                "enum": ["enqueued", "pending"],
                "description": "`pending`: the broker refused the task; the maintenance retries the removal.",
            },
        },
    },
    "SystemPrompt": {
        "type": "object",
        "additionalProperties": False,
        "required": ["session_id", "system_prompt", "layers"],
        "properties": {
            "session_id": {"type": "string", "format": "uuid"},
            "system_prompt": {"type": "string"},
            "layers": {
                "type": "array",
                "description": "Provenance: the layers the prompt was composed from, in order.",
                "items": {"type": "object"},
            },
        },
    },
    "McpConfig": {
        "type": "object",
        "required": ["mcpServers"],
        "properties": {"mcpServers": {"type": "object", "additionalProperties": {"type": "object"}}},
    },
    "Health": {
        "type": "object",
        "additionalProperties": False,
        "required": ["status", "checks"],
        "properties": {
            "status": {"type": "string", "enum": ["ok", "fail"]},
            "checks": {
                "type": "object",
                "additionalProperties": {
                    "type": "object",
                    "required": ["ok"],
                    "properties": {
                        "ok": {"type": "boolean"},
                        "age_seconds": {"type": "number", "nullable": True},
                        "error": {"type": "string"},
                    },
                },
            },
        },
    },
}


def document() -> dict[str, Any]:
    session_by_id: dict[str, Any] = {"parameters": [SESSION_ID]}
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "sessionadmin runtime API",
            "version": "1",
            "description": (
                "JSON API for the agent runtime. Authenticate with `Authorization: Bearer <token>` "
                "(tokens: `manage.py create_api_token`). A token scoped to an org sees only that "
                "org's sessions; any other session is 404. Errors are "
                '`{"error": {"code", "message", "fields"?}}`.'
            ),
        },
        "servers": [{"url": "/"}],
        "security": [{"bearerAuth": []}],
        "components": {
            "securitySchemes": {"bearerAuth": {"type": "http", "scheme": "bearer"}},
            "schemas": SCHEMAS,
        },
        "paths": {
            "/api/v1/sessions": {
                "post": {
                    "operationId": "createSession",
                    "summary": "Create a session (workspace, composed prompt).",
                    "requestBody": {"required": True, "content": json_content(ref("CreateSession"))},
                    "responses": {
                        "201": ok("The new session.", "Session"),
                        **BODY_ERRORS,
                        **COMMON_ERRORS,
                        "429": error(
                            f"A session limit is full (`error.limit` says which); retry after {RETRY_AFTER_SECONDS} s",
                            **{"Retry-After": {"required": True, "schema": {"type": "integer"}}},
                        ),
                        "503": error("The workspace could not be created."),
                    },
                },
                "get": {
                    "operationId": "listSessions",
                    "summary": "Sessions, newest first, cursor-paginated.",
                    "parameters": [
                        {"name": "org_id", "in": "query", "schema": {"type": "string", "pattern": ID_PATTERN}},
                        {"name": "user_id", "in": "query", "schema": {"type": "string", "pattern": ID_PATTERN}},
                        {"name": "status", "in": "query", "schema": {"type": "string", "enum": STATUSES}},
                        {"name": "cursor", "in": "query", "schema": {"type": "string"}},
                        {
                            "name": "limit",
                            "in": "query",
                            "schema": {"type": "integer", "minimum": 1, "maximum": MAX_PAGE_SIZE, "default": DEFAULT_PAGE_SIZE},
                        },
                    ],
                    "responses": {
                        "200": ok("A page of sessions.", "SessionPage"),
                        "400": error("An invalid filter, limit or cursor."),
                        **COMMON_ERRORS,
                    },
                },
            },
            "/api/v1/sessions/{session_id}": {
                **session_by_id,
                "get": {
                    "operationId": "getSession",
                    "summary": "One session (no secrets, no prompt).",
                    "responses": {"200": ok("The session.", "Session"), **COMMON_ERRORS, **NOT_FOUND},
                },
                "delete": {
                    "operationId": "deleteSession",
                    "summary": "End a session: marked terminating now, workspace removed by a worker.",
                    "requestBody": {"required": False, "content": json_content(ref("DeleteSession"))},
                    "responses": {
                        "202": ok("Cleanup started.", "Deleted"),
                        **BODY_ERRORS,
                        **COMMON_ERRORS,
                        "404": error("Unknown, out of scope, or already ended or terminating."),
                    },
                },
            },
            "/api/v1/sessions/{session_id}/activity": {
                **session_by_id,
                "post": {
                    "operationId": "reportActivity",
                    "summary": "Heartbeat: the session is in use. Coalesced to one write per resolution window.",
                    "responses": {
                        "204": {"description": "Recorded."},
                        **COMMON_ERRORS,
                        "404": error("Unknown, out of scope, or not active."),
                    },
                },
            },
            "/api/v1/sessions/{session_id}/system-prompt": {
                **session_by_id,
                "get": {
                    "operationId": "getSystemPrompt",
                    "summary": "The composed system prompt and its layers.",
                    "responses": {"200": ok("The prompt.", "SystemPrompt"), **COMMON_ERRORS, **NOT_FOUND},
                },
            },
            "/api/v1/sessions/{session_id}/mcp-config": {
                **session_by_id,
                "get": {
                    "operationId": "getMcpConfig",
                    "summary": (
                        "`mcpServers` with one entry, `sessionadmin`: the session's MCP endpoint on the gateway "
                        "and a bearer token minted for this request."
                    ),
                    "responses": {"200": ok("The config.", "McpConfig"), **COMMON_ERRORS, **NOT_FOUND},
                },
            },
            "/healthz": {
                "get": {
                    "operationId": "health",
                    "summary": "Database, broker, MCP gateway, worker and beat liveness. No authentication.",
                    "security": [],
                    "responses": {"200": ok("All healthy.", "Health"), "503": ok("Something failed (see `checks`).", "Health")},
                },
            },
        },
    }
