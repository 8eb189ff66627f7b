"""The two roles of the dashboard, as Django groups kept in step after every migrate (and after
the test runner flushes the database): viewers may look, operators may also act."""

from __future__ import annotations

from typing import Any

from django.contrib.auth.models import Group, Permission

VIEWERS = "Viewers"
OPERATORS = "Operators"
OPERATE_PERMISSION = "sessionadmin.operate_sessions"
ADHOC_MCP_PERMISSION = "sessionadmin.attach_adhoc_mcp"

_VIEW_MODELS = ["org", "agentsession", "promptlayer", "auditentry", "mcpserver", "mcpclient", "maintenancerun", "apitoken"]
_OPERATOR_EXTRA = [
    "operate_sessions",
    "add_org",
    "change_org",
    "add_promptlayer",
    "change_promptlayer",
    "delete_promptlayer",
    "add_mcpserver",
    "change_mcpserver",
    "delete_mcpserver",
    "add_apitoken",
    "change_apitoken",
]


def ensure_roles(**_: Any) -> None:
    from sessionadmin.lifecycle import ensure_limit_row

    ensure_limit_row()
    view = [f"view_{m}" for m in _VIEW_MODELS]
    perms = {p.codename: p for p in Permission.objects.filter(content_type__app_label="sessionadmin")}
    if not perms:
        return  # permissions are created by the auth app's own post_migrate, which may run later
    viewers = Group.objects.get_or_create(name=VIEWERS)[0]
    viewers.permissions.set([perms[c] for c in view if c in perms])
    operators = Group.objects.get_or_create(name=OPERATORS)[0]
    operators.permissions.set([perms[c] for c in view + _OPERATOR_EXTRA if c in perms])
