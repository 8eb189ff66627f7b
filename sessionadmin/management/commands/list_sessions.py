from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from sessionadmin.models import AgentSession
from sessionadmin.validation import id_problem


class Command(BaseCommand):
    help = "List sessions (active by default), newest first."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--user", dest="user_id")
        parser.add_argument("--org", dest="org_id")
        parser.add_argument("--status", choices=[*AgentSession.Status.values, "all"], default="active")
        parser.add_argument("--limit", type=int, default=100)

    def handle(self, *args: Any, **opts: Any) -> None:
        qs = AgentSession.objects.order_by("-created_at")
        for field in ("user_id", "org_id"):
            if opts[field] is not None:
                if id_problem(opts[field]):
                    raise CommandError(f"invalid {field}: {id_problem(opts[field])}")
                qs = qs.filter(**{field: opts[field]})
        if opts["status"] != "all":
            qs = qs.filter(status=opts["status"])
        self.stdout.write(f"{'id':36}  {'status':11}  {'org':20}  {'user':20}  {'created':19}  last active")
        for s in qs[: max(1, opts["limit"])]:
            self.stdout.write(
                f"{s.id}  {s.status:11}  {s.org_id[:20]:20}  {s.user_id[:20]:20}  "
                f"{s.created_at:%Y-%m-%d %H:%M:%S}  {s.last_active_at:%Y-%m-%d %H:%M:%S}"
            )
