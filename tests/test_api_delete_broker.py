from __future__ import annotations

from sessionadmin import tokens
from sessionadmin.models import AgentSession, AuditEntry
from tests.base import BaseTransactionTestCase
from tests.celery_worker import dead_broker_url, use_broker


class DeleteWithBrokerDownTestCase(BaseTransactionTestCase):
    """Real commits, so the removal is sent when the transaction commits, as in production."""

    def test_it_answers_202_pending_and_leaves_the_session_terminating(self) -> None:
        _, raw = tokens.create_token(name="runtime", actor="root")
        session = self.manager().create_session("user-1", "acme")
        self.addCleanup(use_broker(url=dead_broker_url(), options={"max_retries": 0}, queue="test-dead"))

        r = self.client.delete(
            f"/api/v1/sessions/{session.id}", headers={"Authorization": f"Bearer {raw}"}, content_type="application/json"
        )

        self.assertEqual(r.status_code, 202)
        self.assertEqual(r.json(), {"id": str(session.id), "status": "terminating", "cleanup": "pending"})
        self.assertEqual(AgentSession.objects.get().status, "terminating")
        self.assertTrue(AuditEntry.objects.filter(event_type="session_terminating", session_id=session.id).exists())
