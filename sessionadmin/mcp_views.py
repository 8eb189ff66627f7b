"""MCP pages: a session's MCP clients panel (attach, refresh, detach, call a tool) and the
catalog of MCP servers. Access goes through the dashboard's helpers: viewers look, operators
act (403 otherwise), unknown sessions are 404. Mutations are POST-only; after one, htmx gets
the panel re-rendered, a plain browser a redirect. Operations run with the MCP timeout, so a
page never waits on a server forever."""

from __future__ import annotations

import json
import uuid
from typing import Any

from django.conf import settings
from django.contrib import messages
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.views.decorators.http import require_GET, require_http_methods, require_POST
from django_htmx.http import trigger_client_event

from sessionadmin import mcp_services
from sessionadmin.manager import InvalidInput, MCPClientNotFound, SessionError, SessionNotFound
from sessionadmin.mcp_forms import AttachForm, McpServerForm, ToolCallForm
from sessionadmin.mcp_services import McpOperationFailed
from sessionadmin.models import AgentSession, McpClient, McpServer
from sessionadmin.roles import ADHOC_MCP_PERMISSION
from sessionadmin.secrets import SecretsError
from sessionadmin.views import CHANGED_EVENT, _is_htmx, actor_of, can_operate, get_session_for, operator_required, viewer_required

PANEL = "sessionadmin/session_mcp.html"


def _panel(
    request: HttpRequest,
    session: AgentSession,
    *,
    form: AttachForm | None = None,
    notice: str = "",
    error: str = "",
    status: int = 200,
) -> HttpResponse:
    allow_adhoc = request.user.has_perm(ADHOC_MCP_PERMISSION)
    clients = list(
        McpClient.objects.filter(session_id=session.id).exclude(status=McpClient.Status.CLOSED).select_related("server")
    )
    context = {
        "session": session,
        "clients": clients,
        "form": form or AttachForm(allow_adhoc=allow_adhoc),
        "can_operate": can_operate(request) and session.status == AgentSession.Status.ACTIVE,
        "notice": notice,
        "error": error,
    }
    template = f"{PANEL}#panel" if _is_htmx(request) else PANEL
    return render(request, template, context, status=status)


def _after(request: HttpRequest, session: AgentSession, *, notice: str = "", error: str = "", status: int = 200) -> HttpResponse:
    if _is_htmx(request):
        # The session page refreshes its live parts (timeline, facts) on this event.
        return trigger_client_event(_panel(request, session, notice=notice, error=error, status=status), CHANGED_EVENT)
    if notice:
        messages.success(request, notice)
    if error:
        messages.error(request, error)
    return redirect("session_mcp", session_id=session.id)


@require_GET
def session_mcp(request: HttpRequest, session_id: uuid.UUID) -> HttpResponse:
    session = get_session_for(request, session_id, act=False)
    return _panel(request, session)


@require_POST
def session_mcp_attach(request: HttpRequest, session_id: uuid.UUID) -> HttpResponse:
    session = get_session_for(request, session_id, act=True)
    form = AttachForm(request.POST, allow_adhoc=request.user.has_perm(ADHOC_MCP_PERMISSION))
    if not form.is_valid():
        # htmx swaps only 2xx answers: the partial with its errors comes back as 200.
        return _panel(request, session, form=form, status=200 if _is_htmx(request) else 400)
    data = form.cleaned_data
    try:
        client = mcp_services.add_client(
            session.id,
            actor=actor_of(request),
            server=data["server"],
            url=data.get("url") or "",
            transport=data.get("transport") or McpServer.Transport.STREAMABLE_HTTP,
            client_id=data["client_id"],
        )
    except SessionNotFound:
        raise Http404("No such active session.")
    except (McpOperationFailed, InvalidInput, SecretsError) as exc:
        return _after(request, session, error=f"Attach failed: {exc}")
    return _after(request, session, notice=f"Attached {client.client_id}: {client.server_name} {client.server_version}".strip())


def _client_action(request: HttpRequest, session_id: uuid.UUID, client_id: str, action: str) -> HttpResponse:
    session = get_session_for(request, session_id, act=True)
    actor = actor_of(request)
    try:
        if action == "detach":
            mcp_services.remove_client(session.id, client_id, actor=actor)
            return _after(request, session, notice=f"Detached {client_id}.")
        client = mcp_services.refresh_client(session.id, client_id, actor=actor)
    except (SessionNotFound, MCPClientNotFound):
        raise Http404("No such MCP client.")
    except (McpOperationFailed, SessionError, SecretsError) as exc:
        return _after(request, session, error=f"{action.capitalize()} failed: {exc}")
    if client.status == McpClient.Status.CONNECTED:
        return _after(request, session, notice=f"{client_id} answered.")
    return _after(request, session, error=f"{client_id}: {client.last_error}")


@require_POST
def session_mcp_refresh(request: HttpRequest, session_id: uuid.UUID, client_id: str) -> HttpResponse:
    return _client_action(request, session_id, client_id, "refresh")


@require_POST
def session_mcp_detach(request: HttpRequest, session_id: uuid.UUID, client_id: str) -> HttpResponse:
    return _client_action(request, session_id, client_id, "detach")


@require_http_methods(["GET", "POST"])
def session_mcp_tool(request: HttpRequest, session_id: uuid.UUID, client_id: str, tool: str) -> HttpResponse:
    """GET: the call form generated from the tool's schema. POST (operators): call it and show
    the result (text, structured content, error flag, duration) under the form."""
    session = get_session_for(request, session_id, act=request.method == "POST")
    client = McpClient.objects.filter(session_id=session.id, client_id=client_id).exclude(status=McpClient.Status.CLOSED).first()
    spec = next((t for t in (client.tools if client else []) if t.get("name") == tool), None)
    if client is None or spec is None:
        raise Http404("No such tool.")
    form = ToolCallForm(spec.get("input_schema"), request.POST if request.method == "POST" else None)
    context: dict[str, Any] = {
        "session": session,
        "client": client,
        "tool": spec,
        "form": form,
        "result": None,
        "error": "",
        "can_operate": can_operate(request) and session.status == AgentSession.Status.ACTIVE,
    }
    status = 200
    if request.method == "POST":
        if form.is_valid():
            try:
                result = mcp_services.call_tool(session.id, client.client_id, tool, form.arguments(), actor=actor_of(request))
                context["result"], context["duration_ms"] = result, round(result.duration * 1000, 1)
                if result.structured is not None:
                    context["structured_json"] = json.dumps(result.structured, indent=2, sort_keys=True, default=str)
            except (SessionNotFound, MCPClientNotFound):
                raise Http404("No such MCP client.")
            except (McpOperationFailed, InvalidInput, SecretsError) as exc:
                context["error"] = str(exc)
        else:
            status = 200 if _is_htmx(request) else 400
    template = "sessionadmin/session_mcp_tool.html"
    response = render(request, f"{template}#call" if _is_htmx(request) else template, context, status=status)
    return trigger_client_event(response, CHANGED_EVENT) if request.method == "POST" and _is_htmx(request) else response


# --- catalog ------------------------------------------------------------------------------------


@require_GET
@viewer_required
def mcp_server_list(request: HttpRequest) -> HttpResponse:
    servers = list(McpServer.objects.order_by("name"))
    rows = []
    for server in servers:
        try:
            headers, env = mcp_services.server_headers(server), mcp_services.server_env(server)
            problem = ""
        except SecretsError as exc:
            headers, env, problem = {}, {}, str(exc)
        rows.append(
            {
                "server": server,
                "header_names": sorted(headers),
                "env_names": sorted(env),
                "problem": problem,
                "clients": server.clients.exclude(status=McpClient.Status.CLOSED).count(),
            }
        )
    context = {"rows": rows, "can_operate": can_operate(request), "stdio_sandbox": settings.SESSIONADMIN_STDIO_SANDBOX}
    return render(request, "sessionadmin/mcp_server_list.html", context)


@require_http_methods(["GET", "POST"])
@operator_required
def mcp_server_edit(request: HttpRequest, pk: int | None = None) -> HttpResponse:
    server = get_object_or_404(McpServer, pk=pk) if pk is not None else McpServer()
    headers, env = mcp_services.stored_secrets(server if pk is not None else None)
    form = McpServerForm(request.POST or None, instance=server, stored_headers=headers, stored_env=env)
    if request.method == "POST" and form.is_valid():
        new_headers, new_env = form.secrets_to_store()
        mcp_services.save_server(form.save(commit=False), actor=actor_of(request), headers=new_headers, env=new_env)
        messages.success(request, f"Saved MCP server {server.name}.")
        return redirect("mcp_server_list")
    return render(
        request,
        "sessionadmin/mcp_server_edit.html",
        {"form": form, "server": server, "stdio_sandbox": settings.SESSIONADMIN_STDIO_SANDBOX},
        status=400 if request.method == "POST" else 200,
    )


@require_POST
@operator_required
def mcp_server_delete(request: HttpRequest, pk: int) -> HttpResponse:
    server = get_object_or_404(McpServer, pk=pk)
    mcp_services.delete_server(server, actor=actor_of(request))
    messages.success(request, f"Deleted MCP server {server.name}.")
    return redirect(reverse("mcp_server_list"))
