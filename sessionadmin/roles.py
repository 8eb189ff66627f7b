"""The roles of the dashboard, as Django groups kept in step after every migrate (and after the
test runner flushes the database): viewers may look; operators may also act on sessions and
attach catalog entries to them; MCP admins define the catalog, i.e. what runs on the host and
where the dashboard connects. A user may be in several groups."""

from __future__ import annotations

from typing import Any

from django.contrib.auth.models import Group, Permission

VIEWERS = "Viewers"
OPERATORS = "Operators"
MCP_ADMINS = "MCP admins"
OPERATE_PERMISSION = "sessionadmin.operate_sessions"
ADHOC_MCP_PERMISSION = "sessionadmin.attach_adhoc_mcp"
MANAGE_CATALOG_PERMISSION = "sessionadmin.manage_mcp_catalog"

# Viewers are the auditors too: they read the ledger's checkpoints and verifications, and may
# start a verification (it changes nothing).
_VIEW_MODELS = [
    "org",
    "agentsession",
    "promptlayer",
    "auditentry",
    "auditcheckpoint",
    "auditverification",
    "mcpserver",
    "mcpclient",
    "maintenancerun",
    "apitoken",
]
# Operators do not get add/change/delete of MCP servers: a catalog entry decides which command
# runs on the host or which address the dashboard connects to (issue 11).
_OPERATOR_EXTRA = [
    "operate_sessions",
    "add_org",
    "change_org",
    "add_promptlayer",
    "change_promptlayer",
    "delete_promptlayer",
    "add_apitoken",
    "change_apitoken",
]
# One right for the whole catalog, in the dashboard and the admin alike (the admin checks it
# instead of the model's add/change/delete permissions).
_MCP_ADMIN_EXTRA = ["manage_mcp_catalog"]


def ensure_roles(**_: Any) -> None:
    from sessionadmin.lifecycle import ensure_limit_row

    ensure_limit_row()
    view = [f"view_{m}" for m in _VIEW_MODELS]
    perms = {p.codename: p for p in Permission.objects.filter(content_type__app_label="sessionadmin")}
    if not perms:
        return  # permissions are created by the auth app's own post_migrate, which may run later
    for name, codenames in ((VIEWERS, view), (OPERATORS, view + _OPERATOR_EXTRA), (MCP_ADMINS, view + _MCP_ADMIN_EXTRA)):
        group = Group.objects.get_or_create(name=name)[0]
        group.permissions.set([perms[c] for c in codenames if c in perms])
