"""Helpers of the runtime API tests: tokens for the two orgs and a JSON-speaking client."""

from __future__ import annotations

import json
from typing import Any

from django.test.client import Client

from sessionadmin import tokens
from sessionadmin.models import AgentSession, ApiToken
from tests.base import BaseTestCase


class ApiTestCase(BaseTestCase):
    """``self.acme_token`` (scoped to acme), ``self.globex_token`` and ``self.global_token``
    (unscoped), with their plaintexts in ``self.raw[<name>]``."""

    acme_token: ApiToken
    globex_token: ApiToken
    global_token: ApiToken
    raw: dict[str, str]

    @classmethod
    def setUpTestData(cls) -> None:
        super().setUpTestData()
        cls.raw = {}
        cls.acme_token, cls.raw["acme-runtime"] = tokens.create_token(name="acme-runtime", actor="root", org=cls.org)
        cls.globex_token, cls.raw["globex-runtime"] = tokens.create_token(name="globex-runtime", actor="root", org=cls.other_org)
        cls.global_token, cls.raw["platform"] = tokens.create_token(name="platform", actor="root")

    def api(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        token: str | None = "acme-runtime",
        raw_body: bytes | None = None,
        content_type: str = "application/json",
        **extra: Any,
    ) -> Any:
        headers = {"Authorization": f"Bearer {self.raw[token]}"} if token else {}
        data: Any = raw_body if raw_body is not None else (json.dumps(body) if body is not None else "")
        return getattr(Client(), method.lower())(path, data=data, content_type=content_type, headers=headers, **extra)

    def create(self, user_id: str = "user-1", org_id: str = "acme") -> AgentSession:
        return self.manager().create_session(user_id, org_id, actor="test")
