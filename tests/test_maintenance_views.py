"""The maintenance page and its "run now" button."""

from __future__ import annotations

from datetime import timedelta

from django.test import override_settings
from django.urls import reverse
from django.utils import timezone

from sessionadmin.models import AgentSession, AuditEntry, MaintenanceRun, ServiceHeartbeat
from tests.base import BaseTestCase
from tests.celery_worker import QueueProbe, dead_broker_url, use_broker


class MaintenancePageTestCase(BaseTestCase):
    url = reverse("maintenance")

    def test_it_shows_runs_preview_and_liveness_to_viewers(self) -> None:
        session = self.manager().create_session("user-1", "acme")
        AgentSession.objects.filter(pk=session.pk).update(last_active_at=timezone.now() - timedelta(days=2))
        MaintenanceRun.objects.create(
            task="inactivity_cleanup", outcome="partial", triggered_by="beat", counts={"sessions_ended": 3, "errors": 1},
            finished_at=timezone.now(), error="1 workspace(s) could not be removed",
        )  # fmt: skip
        ServiceHeartbeat.objects.create(name="worker", beat_at=timezone.now())
        self.client.force_login(self.bob)

        r = self.client.get(self.url)

        self.assertContains(r, "Inactivity cleanup")
        self.assertContains(r, "sessions_ended=3")
        self.assertContains(r, "1 workspace(s) could not be removed")
        self.assertContains(r, "Would end <strong>1</strong> session")
        self.assertContains(r, "(global default)")
        self.assertContains(r, str(session.id)[:8])
        self.assertContains(r, "no heartbeat")  # beat never reported
        self.assertNotContains(r, "Run now</button>")

    def test_it_says_loudly_when_stdio_servers_are_not_isolated(self) -> None:
        self.client.force_login(self.bob)
        self.assertNotContains(self.client.get(self.url), "stdio MCP servers are not isolated")
        with override_settings(SESSIONADMIN_STDIO_SANDBOX=False):
            response = self.client.get(self.url)
        self.assertContains(response, '<p class="message message-error" role="alert" id="stdio-sandbox-off">')
        self.assertContains(response, "stdio MCP servers are not isolated.")

    def test_it_shows_operators_the_run_now_button(self) -> None:
        self.client.force_login(self.alice)
        self.assertContains(self.client.get(self.url), "Run now</button>")

    def test_it_renders_only_the_runs_partial_for_htmx(self) -> None:
        self.client.force_login(self.bob)
        r = self.client.get(self.url, headers={"HX-Request": "true"})
        self.assertContains(r, 'id="runs"')
        self.assertNotContains(r, "Next inactivity cleanup")

    def test_it_hides_routine_health_passes_unless_asked(self) -> None:
        now = timezone.now()
        MaintenanceRun.objects.create(task="mcp_health", outcome="ok", triggered_by="beat-ok", finished_at=now)
        MaintenanceRun.objects.create(task="mcp_health", outcome="failed", triggered_by="beat-failed", finished_at=now)
        MaintenanceRun.objects.create(task="history_purge", outcome="ok", triggered_by="beat-purge", finished_at=now)
        self.client.force_login(self.bob)
        default = self.client.get(self.url)
        self.assertNotContains(default, "beat-ok")
        self.assertContains(default, "beat-failed")  # a failing health pass stays visible
        self.assertContains(default, "beat-purge")
        every = self.client.get(self.url, {"runs": "routine"}, headers={"HX-Request": "true"})
        self.assertContains(every, "beat-ok")
        self.assertContains(every, '<option value="routine" selected>')
        one = self.client.get(self.url, {"runs": "history_purge"})
        self.assertContains(one, "beat-purge")
        self.assertNotContains(one, "beat-failed")
        self.assertNotContains(self.client.get(self.url, {"runs": "bogus"}), "beat-ok")

    def test_it_refuses_users_without_a_role(self) -> None:
        self.client.force_login(self.charlie)
        self.assertEqual(self.client.get(self.url).status_code, 403)

    def test_it_uses_a_constant_number_of_queries(self) -> None:
        for _ in range(3):
            MaintenanceRun.objects.create(task="reconciliation", finished_at=timezone.now(), outcome="ok")
        self.client.force_login(self.bob)
        self.client.get(self.url)
        # session, user, user and group permissions, recent runs, the periodic task's kwargs,
        # org timeouts, the shortest org timeout, one page of idle candidates, heartbeats
        with self.assertNumQueries(10):
            self.client.get(self.url)


class MaintenanceRunNowTestCase(BaseTestCase):
    url = reverse("maintenance_run")

    def test_it_audits_and_queues_the_task_for_operators(self) -> None:
        self.client.force_login(self.alice)
        probe = QueueProbe()
        self.addCleanup(probe.close)
        r = self.client.post(self.url, {"task": "inactivity_cleanup"})
        self.assertRedirects(r, reverse("maintenance"), fetch_redirect_response=False)
        self.assertEqual(probe.messages(), [("sessionadmin.tasks.inactivity_cleanup", [], {"triggered_by": "alice"})])
        entry = AuditEntry.objects.get(event_type="maintenance_run_requested")
        self.assertEqual((entry.actor, entry.details), ("alice", {"task": "inactivity_cleanup"}))

    def test_it_says_so_and_audits_nothing_when_the_broker_is_down(self) -> None:
        self.addCleanup(use_broker(url=dead_broker_url(), options={"max_retries": 0}, queue="test-dead"))
        self.client.force_login(self.alice)
        r = self.client.post(self.url, {"task": "reconciliation"}, follow=True)
        self.assertEqual(r.status_code, 200)
        self.assertContains(r, "the task queue (broker) is unreachable, so nothing was queued")
        self.assertFalse(AuditEntry.objects.filter(event_type="maintenance_run_requested").exists())

    def test_it_rejects_unknown_tasks(self) -> None:
        self.client.force_login(self.alice)
        r = self.client.post(self.url, {"task": "rm -rf"}, follow=True)
        self.assertContains(r, "Unknown maintenance task.")
        self.assertFalse(AuditEntry.objects.filter(event_type="maintenance_run_requested").exists())

    def test_it_is_post_only(self) -> None:
        self.client.force_login(self.alice)
        self.assertEqual(self.client.get(self.url).status_code, 405)

    def test_it_forbids_viewers(self) -> None:
        self.client.force_login(self.bob)
        self.assertEqual(self.client.post(self.url, {"task": "reconciliation"}).status_code, 403)
        self.assertFalse(AuditEntry.objects.exists())
