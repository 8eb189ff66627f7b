from __future__ import annotations

from sessionadmin.models import PromptLayer
from tests.api_base import ApiTestCase


class SystemPromptTestCase(ApiTestCase):
    def test_it_returns_the_prompt_and_its_layers(self) -> None:
        PromptLayer.objects.create(scope="global", name="base", body="You help {{ user_id }}.", priority=1)
        PromptLayer.objects.create(scope="org", org=self.org, name="acme", body="Acme rules.", priority=1)
        session = self.create()
        r = self.api("GET", f"/api/v1/sessions/{session.id}/system-prompt")
        self.assertEqual(r.status_code, 200)
        body = r.json()
        self.assertEqual(body["session_id"], str(session.id))
        self.assertEqual(body["system_prompt"], session.system_prompt)
        self.assertIn("You help user-1.", body["system_prompt"])
        self.assertEqual(body["layers"], session.prompt_provenance)
        self.assertEqual([layer["name"] for layer in body["layers"] if layer.get("name") in ("base", "acme")], ["base", "acme"])

    def test_it_is_404_for_unknown_sessions(self) -> None:
        r = self.api("GET", "/api/v1/sessions/00000000-0000-0000-0000-000000000001/system-prompt")
        self.assertEqual(r.status_code, 404)
