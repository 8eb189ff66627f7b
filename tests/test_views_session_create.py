"""Creating a session from the dashboard."""

from __future__ import annotations

from django.test import override_settings
from django.urls import reverse

from sessionadmin.models import AgentSession, AuditEntry
from tests.base import BaseTestCase


class SessionCreateTestCase(BaseTestCase):
    url = reverse("session_create")

    def test_it_creates_a_session_and_lands_on_it(self) -> None:
        self.client.force_login(self.alice)
        r = self.client.post(self.url, {"org": "acme", "user_id": "u-1", "variables": "team=core\n# comment\nlang = en"})
        session = AgentSession.objects.get()
        self.assertRedirects(r, reverse("session_detail", args=[session.id]), fetch_redirect_response=False)
        self.assertEqual((session.user_id, session.org_id, session.created_by), ("u-1", "acme", "alice"))
        self.assertEqual(session.variables, {"team": "core", "lang": "en"})
        self.assertTrue((self.workspace_root / "u-1" / str(session.id)).is_dir())
        self.assertEqual(AuditEntry.objects.get(event_type="session_created").actor, "alice")

    def test_it_answers_htmx_with_a_client_redirect(self) -> None:
        self.client.force_login(self.alice)
        r = self.client.post(
            self.url, {"org": "acme", "user_id": "u-1"}, headers={"HX-Request": "true", "HX-Target": "create-form"}
        )
        session = AgentSession.objects.get()
        self.assertEqual(r["HX-Redirect"], reverse("session_detail", args=[session.id]))

    def test_it_shows_an_invalid_user_id_inline(self) -> None:
        self.client.force_login(self.alice)
        r = self.client.post(self.url, {"org": "acme", "user_id": "../etc"})
        self.assertEqual(r.status_code, 200)
        self.assertFormError(r.context["create_form"], "user_id", "Invalid user id: must not contain '..'.")
        self.assertFalse(AgentSession.objects.exists())

    def test_it_shows_an_unknown_org_inline(self) -> None:
        self.client.force_login(self.alice)
        r = self.client.post(self.url, {"org": "nope", "user_id": "u-1"})
        self.assertFormError(r.context["create_form"], "org", "invalid org ID: unknown org 'nope'")

    def test_it_shows_bad_variables_inline(self) -> None:
        self.client.force_login(self.alice)
        r = self.client.post(self.url, {"org": "acme", "user_id": "u-1", "variables": "no equals sign"})
        self.assertFormError(r.context["create_form"], "variables", "Line 1: expected name=value.")
        r = self.client.post(self.url, {"org": "acme", "user_id": "u-1", "variables": "user_id=x"})
        self.assertFormError(
            r.context["create_form"],
            "variables",
            "invalid variables: variable 'user_id' is set by sessionadmin and cannot be overridden",
        )

    def test_it_says_which_limit_is_full(self) -> None:
        self.org.max_sessions_per_user = 1
        self.org.save(update_fields=["max_sessions_per_user"])
        self.client.force_login(self.alice)
        self.client.post(self.url, {"org": "acme", "user_id": "u-1"})
        r = self.client.post(
            self.url, {"org": "acme", "user_id": "u-1"}, headers={"HX-Request": "true", "HX-Target": "create-form"}
        )
        body = r.content.decode()
        self.assertTrue(body.lstrip().startswith('<form id="create-form"'))  # the partial, errors inline
        self.assertIn(
            "The user limit is full: user &#x27;u-1&#x27; has reached the per-user limit of org &#x27;acme&#x27; (1/1)", body
        )
        self.assertEqual(AgentSession.objects.count(), 1)

    @override_settings(SESSIONADMIN_MAX_CONCURRENT=1)
    def test_it_says_when_the_global_limit_is_full(self) -> None:
        self.client.force_login(self.alice)
        self.client.post(self.url, {"org": "acme", "user_id": "u-1"})
        r = self.client.post(self.url, {"org": "globex", "user_id": "u-2"})
        self.assertFormError(
            r.context["create_form"], None, "The global limit is full: maximum concurrent sessions reached (1/1)"
        )

    def test_it_renders_a_form_page_on_get(self) -> None:
        self.client.force_login(self.alice)
        r = self.client.get(self.url, {"org": "globex"})
        self.assertContains(r, 'name="org" value="globex"')
        self.assertContains(r, '<option value="acme">Acme Corp</option>')

    def test_it_forbids_viewers_and_users_without_a_role(self) -> None:
        for user in (self.bob, self.charlie):
            self.client.force_login(user)
            self.assertEqual(self.client.post(self.url, {"org": "acme", "user_id": "u-1"}).status_code, 403)
            self.assertEqual(self.client.get(self.url).status_code, 403)
        self.assertFalse(AgentSession.objects.exists())

    def test_it_allows_only_get_and_post(self) -> None:
        self.client.force_login(self.alice)
        self.assertEqual(self.client.put(self.url).status_code, 405)
