"""Hostile values thrown at every field, query parameter, path parameter and header of the runtime
API: each is refused with the 4xx the README documents, in the JSON error envelope, never a 500,
and nothing changes. Run on SQLite and on PostgreSQL (which refuses NUL in text: that is where
the 500s of the hand-written API came from)."""

from __future__ import annotations

import base64
import json
import uuid
from typing import Any
from urllib.parse import quote

from django.conf import settings
from django.http import HttpResponse
from django.test import Client

from sessionadmin.models import AgentSession, AuditEntry
from tests.api_base import ApiTestCase

# Refused by every string field and parameter: PostgreSQL cannot store NUL, UTF-8 cannot encode a
# lone surrogate.
UNSTORABLE = ["a\u0000b", "\u0000", "\ud800", "a\udfffb", "\udc00\ud800"]
# Refused wherever an id is expected (user_id, org_id, and the filters of the same names).
NOT_IDS = [
    *UNSTORABLE,
    "",
    " ",
    "..",
    "../etc",
    "a/../b",
    "a/b",
    "a\\b",
    ".hidden",
    "-x",
    "é",
    "\U0001f600",
    "\u202e",
    "<script>",
    "' OR 1=1 --",
    "a\r\nb",
    "x" * 129,
]
# A JSON value of the wrong type for a string field.
WRONG_TYPES: list[Any] = [None, True, 0, -1, 2**64, 10**300, 1.5, 1e308, [], {}, ["a"], {"a": "b"}, [[[[[[[[]]]]]]]]]
# Refused as a variable's value (numbers and booleans are values: they are kept as text).
NOT_VARIABLE_VALUES: list[Any] = [*UNSTORABLE, None, [], {}, ["a"], {"a": "b"}, "x" * 4097]
NOT_VARIABLE_NAMES = [*UNSTORABLE, "", "1a", "a-b", "a b", "é", "x" * 65, "user_id", "org_id", "session_id"]
NOT_REASONS: list[Any] = [*UNSTORABLE, None, 1, True, [], {}, ["a"], "x" * 501]
# Bodies that are not a JSON object of finite numbers.
NOT_JSON_OBJECTS = [
    b"1e999",
    b"-1e999",
    b"NaN",
    b"Infinity",
    b'{"user_id": 1e999, "org_id": "acme"}',
    b'{"user_id": "user-1", "org_id": "acme", "variables": {"v": NaN}}',
    b'{"user_id": "user-1", "org_id": "acme", "variables": {"v": Infinity}}',
    b'{"user_id": "user-1", "org_id": "acme", "variables": {"v": -Infinity}}',
    b'{"user_id": "user-1", "org_id": "acme", "variables": {"v": 1e999}}',
    b'{"user_id": "user-1", "org_id": "acme", "variables": {"v": ' + b"9" * 5000 + b"}}",
    b'{"reason": 1e999}',
    b"[" * 20_000 + b"]" * 20_000,  # deeper than the parser recurses, within the body limit
    b'{"a":' * 10_000 + b"1" + b"}" * 10_000,
    b'{"variables": {"v": ' + b"[" * 5000 + b"]" * 5000 + b"}}",
    b"\xff\xfe",
    b'{"user_id": "\xed\xa0\x80"}',  # a surrogate encoded as UTF-8: not UTF-8
    b'{"user_id": "a\x00b"}',  # a raw control character in a JSON string
    b'{"user_id": "\\x41"}',
    b"null",
    b"[]",
    b'"user-1"',
    b"0",
    b"true",
    b"{",
]
OTHER_MEDIA_TYPES = [
    "text/plain",
    "application/x-www-form-urlencoded",
    "multipart/form-data; boundary=x",
    "application/jsonx",
    "application/json-patch+json",
    "",
    "application/json\u0000",
    "\ud800",
]
NOT_PAGE_SIZES = ["0", "-1", "201", "1e3", "1.0", "+5", " 5", "5 ", "5_0", "\u0663", "0x10", "NaN", "", "\u0000", "9" * 30]
NOT_STATUSES = ["zombie", "", "ACTIVE", "active\u0000", "\ud800", "active "]
NOT_PATH_IDS = ["nope", "..", "%00", "a%00b", "%ED%A0%80", "%2e%2e", "x" * 10_000, "1" * 36, "{}", "%7B%7D", "null"]


def b64(raw: str) -> str:
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


NOT_CURSORS = [
    "",
    "!!!",
    "\u0000",
    "\ud800",
    b64("not a cursor"),
    b64("2026-03-01T12:00:00|" + str(uuid.UUID(int=1))),  # naive time
    b64("2026-03-01T12:00:00+00:00|nope"),
    b64("0001-01-01T00:00:00+14:00|" + str(uuid.UUID(int=1))),  # before year 1 in UTC
    b64("9999-12-31T23:59:59-14:00|" + str(uuid.UUID(int=1))),  # after year 9999 in UTC
    base64.urlsafe_b64encode(b"\xff\xfe|x").decode(),
    "a" * 100_000,
]


def encoded(value: str) -> str:
    """Percent-encoded for a URL, lone surrogates included (as the UTF-8 bytes they would be)."""
    return quote(value.encode("utf-8", "surrogatepass"), safe="")


def json_body(data: Any) -> bytes:
    return json.dumps(data).encode()  # ensure_ascii: "\ud800" travels as its \\u escape


class HostileInputTestCase(ApiTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.session = self.create()
        self.headers = {"Authorization": f"Bearer {self.raw['acme-runtime']}"}
        self.audit_rows = AuditEntry.objects.count()

    def send(
        self,
        method: str,
        path: str,
        body: bytes = b"",
        *,
        content_type: str = "application/json",
        headers: dict[str, str] | None = None,
        **extra: Any,
    ) -> HttpResponse:
        return Client().generic(
            method, path, body, content_type=content_type, headers=self.headers if headers is None else headers, **extra
        )

    def assert_refused(self, response: HttpResponse, *statuses: int, what: object) -> None:
        self.assertIn(response.status_code, statuses, what)
        self.assertEqual(response["Content-Type"], "application/json", what)
        error = response.json()["error"]
        self.assertTrue(isinstance(error["code"], str) and isinstance(error["message"], str), what)

    def assert_nothing_changed(self) -> None:
        self.assertEqual(list(AgentSession.objects.values_list("id", "status")), [(self.session.id, "active")])
        self.assertEqual(AuditEntry.objects.count(), self.audit_rows)

    def create_with(self, **fields: Any) -> HttpResponse:
        return self.send("POST", "/api/v1/sessions", json_body({"user_id": "user-2", "org_id": "acme", **fields}))

    def test_it_refuses_hostile_ids_when_creating(self) -> None:
        for value in [*NOT_IDS, *WRONG_TYPES]:
            for field in ("user_id", "org_id"):
                r = self.create_with(**{field: value})
                self.assert_refused(r, 400, what=(field, value))
                self.assertIn(field, r.json()["error"]["fields"], (field, value))
        self.assert_nothing_changed()

    def test_it_refuses_hostile_variables(self) -> None:
        bodies = [
            *({"variables": {"v": value}} for value in NOT_VARIABLE_VALUES),
            *({"variables": {name: "x"}} for name in NOT_VARIABLE_NAMES),
            *({"variables": value} for value in ["x", 1, [], None, True, *UNSTORABLE]),
            {"variables": {f"v{i}": "x" for i in range(33)}},
        ]
        for body in bodies:
            r = self.create_with(**body)
            self.assert_refused(r, 400, what=body)
            self.assertEqual(list(r.json()["error"]["fields"]), ["variables"], body)
        self.assert_nothing_changed()

    def test_it_refuses_unknown_fields_whatever_their_name(self) -> None:
        for name in [*UNSTORABLE, "", "workspace_path", "USER_ID", "__proto__"]:
            self.assert_refused(self.create_with(**{name: "x"}), 400, what=name)
            url = f"/api/v1/sessions/{self.session.id}"
            self.assert_refused(self.send("DELETE", url, json_body({name: "x"})), 400, what=name)
        self.assert_nothing_changed()

    def test_it_refuses_hostile_reasons(self) -> None:
        for value in NOT_REASONS:
            r = self.send("DELETE", f"/api/v1/sessions/{self.session.id}", json_body({"reason": value}))
            self.assert_refused(r, 400, what=value)
            self.assertEqual(list(r.json()["error"]["fields"]), ["reason"], value)
        self.assert_nothing_changed()

    def test_it_refuses_bodies_that_are_not_json_objects(self) -> None:
        for body in NOT_JSON_OBJECTS:
            self.assert_refused(self.send("POST", "/api/v1/sessions", body), 400, what=body[:40])
            r = self.send("DELETE", f"/api/v1/sessions/{self.session.id}", body)
            self.assert_refused(r, 400, what=body[:40])
        self.assert_nothing_changed()

    def test_it_refuses_other_media_types(self) -> None:
        body = json_body({"user_id": "user-2", "org_id": "acme"})
        for content_type in OTHER_MEDIA_TYPES:
            self.assert_refused(self.send("POST", "/api/v1/sessions", body, content_type=content_type), 415, what=content_type)
            r = self.send("DELETE", f"/api/v1/sessions/{self.session.id}", json_body({}), content_type=content_type)
            self.assert_refused(r, 415, what=content_type)
        self.assert_nothing_changed()

    def test_it_refuses_bodies_over_the_limit_however_they_come(self) -> None:
        big = json_body({"user_id": "user-2", "org_id": "acme", "variables": {"v": "x" * settings.SESSIONADMIN_MAX_BODY_BYTES}})
        cases: list[tuple[str, dict[str, Any], tuple[int, ...]]] = [
            ("declared", {}, (413,)),
            # No Content-Length (chunked, as gunicorn passes it on): Django reads nothing of it.
            ("chunked", {"CONTENT_LENGTH": "", "HTTP_TRANSFER_ENCODING": "chunked"}, (400,)),
            ("understated", {"CONTENT_LENGTH": "10"}, (400,)),
            ("overstated", {"CONTENT_LENGTH": "9" * 30}, (413,)),
        ]
        for name, extra, statuses in cases:
            self.assert_refused(self.send("POST", "/api/v1/sessions", big, **extra), *statuses, what=name)
            r = self.send("DELETE", f"/api/v1/sessions/{self.session.id}", big, **extra)
            # A DELETE whose chunked body is never read is a DELETE without a body: it would end the session.
            if name != "chunked":
                self.assert_refused(r, *statuses, what=name)
        for length in ("abc", "-1", " 5", "1e3", "\u0000"):
            r = self.send("POST", "/api/v1/sessions", json_body({"user_id": "user-2", "org_id": "acme"}), CONTENT_LENGTH=length)
            self.assert_refused(r, 400, what=length)
        self.assertEqual(AgentSession.objects.filter(user_id="user-2").count(), 0)

    def test_it_refuses_hostile_query_parameters(self) -> None:
        cases = [
            *(("org_id", value) for value in NOT_IDS if isinstance(value, str)),
            *(("user_id", value) for value in NOT_IDS if isinstance(value, str)),
            *(("status", value) for value in NOT_STATUSES),
            *(("limit", value) for value in NOT_PAGE_SIZES),
            *(("cursor", value) for value in NOT_CURSORS),
            *((name, "x") for name in [*UNSTORABLE, "colour", "ORG_ID", "org_id[]", "%ff"]),
        ]
        for name, value in cases:
            r = self.send("GET", f"/api/v1/sessions?{encoded(name)}={encoded(value)}")
            self.assert_refused(r, 400, what=(name, value[:40]))
        for query in ("limit=1&limit=2", "status=active&status=ended", "&".join(f"p{i}=1" for i in range(1001))):
            self.assert_refused(self.send("GET", f"/api/v1/sessions?{query}"), 400, what=query[:40])

    def test_it_answers_404_to_hostile_session_ids(self) -> None:
        for raw_id in [*NOT_PATH_IDS, *(encoded(value) for value in UNSTORABLE), f"{self.session.id}x", f"{self.session.id}%00"]:
            for method, suffix in [
                ("GET", ""),
                ("DELETE", ""),
                ("POST", "/activity"),
                ("GET", "/system-prompt"),
                ("GET", "/mcp-config"),
            ]:
                r = self.send(method, f"/api/v1/sessions/{raw_id}{suffix}")
                # A NUL anywhere in a path is refused before routing (400), like in the dashboard.
                self.assert_refused(r, 400 if "%00" in raw_id else 404, what=(method, suffix, raw_id[:40]))
        self.assert_nothing_changed()

    def test_it_answers_401_to_hostile_authorization_headers(self) -> None:
        valid = self.raw["acme-runtime"]
        values = [
            "",
            "Bearer",
            "Bearer ",
            valid,
            f"Basic {valid}",
            f"Token {valid}",
            f"Bearer\t{valid}",
            f"Bearer {valid} extra",
            f"Bearer {valid[:-1]}\u0000",
            f"Bearer {valid}\u0000",
            f"Bearer {valid[:-1]}\ud800",
            "Bearer \u0000",
            "Bearer \ud800",
            "Bearer sat_\u0000",
            f"Bearer {valid[:12]}",
            f"Bearer {valid}{'a' * 100_000}",
            "Bearer sat_00000000_" + "a" * 43,
        ]
        sid = self.session.id
        endpoints = [
            ("POST", "/api/v1/sessions", json_body({"user_id": "user-2", "org_id": "acme"})),
            ("GET", "/api/v1/sessions", b""),
            ("GET", f"/api/v1/sessions/{sid}", b""),
            ("DELETE", f"/api/v1/sessions/{sid}", b""),
            ("POST", f"/api/v1/sessions/{sid}/activity", b""),
            ("GET", f"/api/v1/sessions/{sid}/system-prompt", b""),
            ("GET", f"/api/v1/sessions/{sid}/mcp-config", b""),
        ]
        for value in values:
            for method, path, body in endpoints:
                r = self.send(method, path, body, headers={"Authorization": value} if value else {})
                self.assert_refused(r, 401, what=(method, path, value[:40]))
                self.assertIn("Bearer", r["WWW-Authenticate"])
        self.assert_nothing_changed()

    def test_it_answers_405_and_404_in_json(self) -> None:
        sid = self.session.id
        for method, path in [
            ("PUT", "/api/v1/sessions"),
            ("PATCH", f"/api/v1/sessions/{sid}"),
            ("GET", f"/api/v1/sessions/{sid}/activity"),
            ("DELETE", f"/api/v1/sessions/{sid}/system-prompt"),
            ("POST", "/api/v1/openapi.json"),
            ("POST", "/healthz"),
            ("HEAD", "/api/v1/sessions"),
            ("OPTIONS", "/api/v1/sessions"),
        ]:
            r = self.send(method, path)
            self.assertTrue(r["Allow"], (method, path))
            if method == "HEAD":  # no body to read
                self.assertEqual(r.status_code, 405)
                continue
            self.assert_refused(r, 405, what=(method, path))
        for path in (
            "/api/v1/",
            "/api/v1/nothing",
            "/api/v1/sessions/",
            f"/api/v1/sessions/{sid}/",
            "/api/v1/%00",
            "/api/v1/docs",
        ):
            self.assert_refused(self.send("GET", path), 400 if "%00" in path else 404, what=path)
        self.assert_nothing_changed()
