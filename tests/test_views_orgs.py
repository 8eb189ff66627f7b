"""The orgs page: list with usage, create and edit (audited)."""

from __future__ import annotations

from django.urls import reverse

from sessionadmin.models import AuditEntry, Org
from tests.base import BaseTestCase


class OrgListTestCase(BaseTestCase):
    url = reverse("org_list")

    def test_it_lists_orgs_with_usage_and_limits(self) -> None:
        self.org.max_sessions = 5
        self.org.idle_timeout_seconds = 7200
        self.org.save(update_fields=["max_sessions", "idle_timeout_seconds"])
        manager = self.manager()
        manager.create_session("u-1", "acme", actor="alice")
        manager.create_session("u-2", "acme", actor="alice")
        self.client.force_login(self.bob)
        r = self.client.get(self.url)
        self.assertEqual([(o.id, o.active) for o in r.context["orgs"]], [("acme", 2), ("globex", 0)])
        self.assertContains(r, "2 / 5")
        self.assertContains(r, "2 h")
        self.assertNotContains(r, "New org")
        self.assertNotContains(r, "Edit</a>")

    def test_it_shows_operators_the_create_form(self) -> None:
        self.client.force_login(self.alice)
        r = self.client.get(self.url)
        self.assertContains(r, "New org")
        self.assertContains(r, reverse("org_edit", args=["acme"]))

    def test_it_says_how_to_make_the_first_org(self) -> None:
        Org.objects.all().delete()
        self.client.force_login(self.alice)
        self.assertContains(self.client.get(self.url), "No orgs yet.")

    def test_it_uses_a_constant_number_of_queries(self) -> None:
        for n in range(10):
            Org.objects.create(id=f"org-{n}", name=f"Org {n}")
        self.client.force_login(self.alice)
        # session, user, user permissions, group permissions, orgs with their active counts
        with self.assertNumQueries(5):
            self.client.get(self.url)

    def test_it_forbids_users_without_a_role(self) -> None:
        self.client.force_login(self.charlie)
        self.assertEqual(self.client.get(self.url).status_code, 403)


class OrgCreateTestCase(BaseTestCase):
    url = reverse("org_create")

    def test_it_creates_an_org_and_audits_it(self) -> None:
        self.client.force_login(self.alice)
        r = self.client.post(self.url, {"id": "initech", "name": "Initech", "max_sessions": "3", "prompt": "Be terse."})
        self.assertRedirects(r, reverse("org_list"), fetch_redirect_response=False)
        org = Org.objects.get(pk="initech")
        self.assertEqual((org.name, org.max_sessions, org.max_sessions_per_user, org.prompt), ("Initech", 3, None, "Be terse."))
        self.assertEqual(AuditEntry.objects.get(event_type="org_created").actor, "alice")

    def test_it_shows_errors_inline(self) -> None:
        self.client.force_login(self.alice)
        r = self.client.post(self.url, {"id": "../x", "name": "X", "max_sessions": "0"})
        self.assertFormError(r.context["org_form"], "id", "Invalid org id: must not contain '..'.")
        self.assertFormError(r.context["org_form"], "max_sessions", "Ensure this value is greater than or equal to 1.")
        r = self.client.post(self.url, {"id": "acme", "name": "Again"}, headers={"HX-Request": "true"})
        self.assertTrue(r.content.decode().lstrip().startswith('<form id="org-create"'))
        self.assertFormError(r.context["org_form"], "id", "Org with this Id already exists.")

    def test_it_forbids_viewers_and_allows_only_post(self) -> None:
        self.client.force_login(self.bob)
        self.assertEqual(self.client.post(self.url, {"id": "x", "name": "X"}).status_code, 403)
        self.client.force_login(self.alice)
        self.assertEqual(self.client.get(self.url).status_code, 405)
        self.assertFalse(Org.objects.filter(pk="x").exists())


class OrgEditTestCase(BaseTestCase):
    url = reverse("org_edit", args=["acme"])

    def test_it_shows_the_form(self) -> None:
        self.client.force_login(self.alice)
        r = self.client.get(self.url)
        self.assertContains(r, 'value="Acme Corp"')

    def test_it_saves_limits_and_prompt_and_audits_them(self) -> None:
        self.client.force_login(self.alice)
        r = self.client.post(
            self.url, {"name": "Acme", "max_sessions_per_user": "2", "idle_timeout_seconds": "600", "prompt": "Hi"}
        )
        self.assertRedirects(r, reverse("org_list"), fetch_redirect_response=False)
        org = Org.objects.get(pk="acme")
        self.assertEqual((org.name, org.max_sessions_per_user, org.idle_timeout_seconds, org.prompt), ("Acme", 2, 600, "Hi"))
        details = AuditEntry.objects.get(event_type="org_updated").details
        self.assertEqual(details["max_sessions_per_user"], {"old": None, "new": 2})

    def test_it_shows_errors_inline(self) -> None:
        self.client.force_login(self.alice)
        r = self.client.post(self.url, {"name": "", "idle_timeout_seconds": "-5"})
        self.assertFormError(r.context["org_form"], "name", "This field is required.")
        self.assertFormError(r.context["org_form"], "idle_timeout_seconds", "Ensure this value is greater than or equal to 60.")

    def test_it_is_404_for_unknown_orgs_and_403_for_viewers(self) -> None:
        self.client.force_login(self.alice)
        self.assertEqual(self.client.get(reverse("org_edit", args=["nope"])).status_code, 404)
        self.client.force_login(self.bob)
        self.assertEqual(self.client.post(self.url, {"name": "X"}).status_code, 403)
        self.client.force_login(self.alice)
        self.assertEqual(self.client.delete(self.url).status_code, 405)
