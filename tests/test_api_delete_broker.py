from __future__ import annotations

from unittest import mock

from kombu.exceptions import OperationalError

from sessionadmin import tokens
from sessionadmin.models import AgentSession
from sessionadmin.tasks import remove_workspace
from tests.base import BaseTransactionTestCase


class DeleteWithBrokerDownTestCase(BaseTransactionTestCase):
    """Real commits, so ``delay_on_commit`` sends at once, as it does in production."""

    def test_it_answers_202_pending_and_leaves_the_session_terminating(self) -> None:
        _, raw = tokens.create_token(name="runtime", actor="root")
        session = self.manager().create_session("user-1", "acme")
        with mock.patch.object(remove_workspace, "delay", side_effect=OperationalError("connection refused")) as delay:
            r = self.client.delete(
                f"/api/v1/sessions/{session.id}", headers={"Authorization": f"Bearer {raw}"}, content_type="application/json"
            )
        self.assertEqual(r.status_code, 202)
        self.assertEqual(r.json()["cleanup"], "pending")
        delay.assert_called_once_with(str(session.id))
        self.assertEqual(AgentSession.objects.get().status, "terminating")
