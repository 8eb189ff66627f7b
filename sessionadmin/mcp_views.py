"""MCP pages: a session's MCP clients panel (attach, refresh, detach, call a tool, review changed
tools, the live feed of tool calls) and the catalog of MCP servers. Access goes through the
dashboard's helpers: viewers look, operators act on sessions (403 otherwise), only MCP admins
(``manage_mcp_catalog``) change the catalog, unknown sessions are 404. Mutations are POST-only;
after one, htmx gets the panel re-rendered, a plain browser a redirect.

Everything goes through the MCP gateway's live connections. A tool call is started in the
gateway and the page polls for its result, so a slow tool never holds a web worker; attach and
refresh wait at most the MCP timeout."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from functools import wraps
from typing import Any, ParamSpec, TypeVar
from urllib.parse import urlencode

from django.conf import settings
from django.contrib import messages
from django.core import signing
from django.core.exceptions import PermissionDenied
from django.core.paginator import Paginator
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseBase
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.views.decorators.http import require_GET, require_http_methods, require_POST
from django_htmx.http import HttpResponseStopPolling, trigger_client_event

from sessionadmin import mcp_services
from sessionadmin.manager import InvalidInput, MCPClientNotFound, SessionError, SessionNotFound
from sessionadmin.mcp_forms import AttachForm, McpServerForm, ToolCallForm, cleared_secrets_notice
from sessionadmin.mcp_services import McpOperationFailed
from sessionadmin.models import AgentSession, McpClient, McpServer
from sessionadmin.roles import ADHOC_MCP_PERMISSION, MANAGE_CATALOG_PERMISSION
from sessionadmin.secrets import SecretsError
from sessionadmin.views import CHANGED_EVENT, _is_htmx, actor_of, can_operate, get_session_for, viewer_required

PANEL = "sessionadmin/session_mcp.html"
TOOL_PAGE = "sessionadmin/session_mcp_tool.html"
FEED_LIMIT = 20
HISTORY_LIMIT = 50
# The operator's wait is measured from the POST that started a call to the poll that shows its
# result; the start travels in the poll URL, signed so a page cannot make it up.
STARTED_SALT = "sessionadmin.tool-call-started"
STARTED_MAX_AGE = 24 * 3600
# The panel shows this many tools, resources and prompts of each client; the rest are a link
# away (session_mcp_listing), so a server listing thousands keeps the session page small.
PANEL_ITEMS = 25

P = ParamSpec("P")
R = TypeVar("R", bound=HttpResponseBase)


def can_manage_catalog(request: HttpRequest) -> bool:
    return request.user.has_perm(MANAGE_CATALOG_PERMISSION)


def catalog_admin_required(view: Callable[P, R]) -> Callable[P, R]:
    """403 for everybody but MCP admins: a catalog entry decides what runs on the host."""

    @wraps(view)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        request = args[0]
        assert isinstance(request, HttpRequest)
        if not can_manage_catalog(request):
            raise PermissionDenied("Only MCP admins may change the MCP catalog.")
        return view(*args, **kwargs)

    return wrapper


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
    for client in clients:
        client.changes = [  # type: ignore[attr-defined]
            {
                "name": name,
                "held": held,
                "old": json.dumps((client.pinned_tools or {}).get(name, {}).get("definition"), indent=2, sort_keys=True),
                "new": json.dumps(held.get("definition"), indent=2, sort_keys=True),
            }
            for name, held in sorted((client.quarantined_tools or {}).items())
        ]
    # Clients closed (detached, or at the session's end) stay as rows: the session's history.
    history = list(
        McpClient.objects.filter(session_id=session.id, status=McpClient.Status.CLOSED)
        .only("client_id", "transport", "url", "server_name", "server_version", "created_at", "created_by", "closed_at")
        .order_by("-closed_at", "-id")[:HISTORY_LIMIT]
    )
    context = {
        "session": session,
        "clients": clients,
        "history": history,
        "calls": mcp_services.recent_tool_calls(session.id, limit=FEED_LIMIT),
        "endpoint": mcp_services.endpoint_url(session),
        "form": form or AttachForm(allow_adhoc=allow_adhoc),
        "can_operate": can_operate(request) and session.status == AgentSession.Status.ACTIVE,
        "notice": notice,
        "error": error,
        "panel_items": PANEL_ITEMS,
        "panel_slice": f":{PANEL_ITEMS}",
    }
    template = f"{PANEL}#panel" if _is_htmx(request) else PANEL
    return render(request, template, context, status=status)


def _after(
    request: HttpRequest,
    session: AgentSession,
    *,
    notice: str = "",
    error: str = "",
    status: int = 200,
    form: AttachForm | None = None,
) -> HttpResponse:
    if _is_htmx(request):
        # The session page refreshes its live parts (timeline, facts) on this event.
        panel = _panel(request, session, form=form, notice=notice, error=error, status=status)
        return trigger_client_event(panel, CHANGED_EVENT)
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
        # The operator's choice stays in the form, to retry or correct it.
        return _after(request, session, error=f"Attach failed: {exc}", form=form)
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


def _tool_of(session: AgentSession, client_id: str, tool: str) -> tuple[McpClient, dict[str, Any]]:
    client = McpClient.objects.filter(session_id=session.id, client_id=client_id).exclude(status=McpClient.Status.CLOSED).first()
    spec = next((t for t in (client.tools if client else []) if t.get("name") == tool), None)
    if client is None or spec is None:
        raise Http404("No such tool.")
    return client, spec


def _render_call(request: HttpRequest, context: dict[str, Any], *, status: int = 200) -> HttpResponse:
    response = render(request, f"{TOOL_PAGE}#call" if _is_htmx(request) else TOOL_PAGE, context, status=status)
    return trigger_client_event(response, CHANGED_EVENT) if request.method == "POST" and _is_htmx(request) else response


@require_http_methods(["GET", "POST"])
def session_mcp_tool(request: HttpRequest, session_id: uuid.UUID, client_id: str, tool: str) -> HttpResponse:
    """GET: the call form generated from the tool's schema. POST (operators): start the call in
    the gateway and answer at once; the result is polled from ``session_mcp_call`` (htmx), or,
    for a plain browser, waited for here."""
    session = get_session_for(request, session_id, act=request.method == "POST")
    client, spec = _tool_of(session, client_id, tool)
    raw = bool(spec.get("schema_omitted_bytes"))
    form = ToolCallForm(spec.get("input_schema"), request.POST if request.method == "POST" else None, raw=raw)
    context: dict[str, Any] = {
        "session": session,
        "client": client,
        "tool": spec,
        "form": form,
        "error": "",
        "quarantined": tool in (client.quarantined_tools or {}),
        "can_operate": can_operate(request) and session.status == AgentSession.Status.ACTIVE,
    }
    if request.method != "POST":
        return _render_call(request, context)
    if not form.is_valid():
        return _render_call(request, context, status=200 if _is_htmx(request) else 400)
    started = time.time()
    try:
        if not _is_htmx(request):
            # No script to poll with: wait for the result (bounded by the call timeout).
            result = _wait(session, client, tool, form.arguments(), request)
            _show_result(context, {"status": "done", "result": result}, waited=time.time() - started)
        else:
            context["call_id"] = mcp_services.start_tool_call(
                session.id, client.client_id, tool, form.arguments(), actor=actor_of(request)
            )
            context["running"] = True
            context["poll_url"] = _poll_url(session, client, tool, context["call_id"], signing.dumps(started, salt=STARTED_SALT))
    except (SessionNotFound, MCPClientNotFound):
        raise Http404("No such MCP client.")
    except (McpOperationFailed, InvalidInput, SecretsError) as exc:
        context["error"] = str(exc)
    return _render_call(request, context)


def _wait(session: AgentSession, client: McpClient, tool: str, arguments: dict[str, Any], request: HttpRequest) -> Any:
    return mcp_services.call_tool(session.id, client.client_id, tool, arguments, actor=actor_of(request))


def _poll_url(session: AgentSession, client: McpClient, tool: str, call_id: str, started_token: str) -> str:
    url = reverse("session_mcp_call", args=[session.id, client.client_id, tool, call_id])
    return f"{url}?{urlencode({'started': started_token})}" if started_token else url


def _started_at(token: str) -> float | None:
    """The start time carried by a poll URL, if its signature holds."""
    try:
        value = signing.loads(token, salt=STARTED_SALT, max_age=STARTED_MAX_AGE)
    except signing.BadSignature:
        return None
    return float(value) if isinstance(value, int | float) else None


def _show_result(context: dict[str, Any], status: dict[str, Any], *, waited: float | None = None) -> None:
    if waited is not None:
        context["waited_ms"] = round(max(0.0, waited) * 1000)
    if status["status"] == "failed":
        context["error"] = status.get("error", "")
        return
    result = status["result"]
    context["result"], context["duration_ms"] = result, round(result.duration * 1000, 1)
    if result.structured is not None:
        context["structured_json"] = json.dumps(result.structured, indent=2, sort_keys=True, default=str)


@require_GET
def session_mcp_call(request: HttpRequest, session_id: uuid.UUID, client_id: str, tool: str, call_id: str) -> HttpResponse:
    """The state of a dashboard tool call, polled by the page: "running" (the page keeps
    polling) or its result / error (polling stops). Only the operator who started it sees it."""
    session = get_session_for(request, session_id, act=True)
    client, spec = _tool_of(session, client_id, tool)
    context: dict[str, Any] = {
        "session": session,
        "client": client,
        "tool": spec,
        "form": ToolCallForm(spec.get("input_schema"), None),
        "error": "",
        "quarantined": tool in (client.quarantined_tools or {}),
        "can_operate": True,
    }
    try:
        status = mcp_services.tool_call_status(session.id, call_id, actor=actor_of(request))
    except MCPClientNotFound:
        if not _is_htmx(request):
            raise Http404("No such call (it may have expired).")
        # A page still polling a call the gateway no longer knows (expired, gateway restarted).
        status = {"status": "failed", "error": "this call is no longer known to the gateway (expired or restarted)"}
    except McpOperationFailed as exc:
        context["error"] = str(exc)
        status = {"status": "failed", "error": str(exc)}
    template = f"{TOOL_PAGE}#call" if _is_htmx(request) else TOOL_PAGE
    token = request.GET.get("started", "")
    started = _started_at(token)
    if status["status"] == "running":
        context["call_id"], context["running"], context["elapsed"] = call_id, True, status.get("elapsed")
        context["poll_url"] = _poll_url(session, client, tool, call_id, token if started is not None else "")
        return render(request, template, context)
    _show_result(context, status, waited=None if started is None else time.time() - started)
    response = render(request, template, context)
    if not _is_htmx(request):
        return response
    # 286 tells htmx to stop polling; the result replaces the running indicator.
    return trigger_client_event(HttpResponseStopPolling(response.content), CHANGED_EVENT)


@require_POST
def session_mcp_approve(request: HttpRequest, session_id: uuid.UUID, client_id: str, tool: str) -> HttpResponse:
    """An operator reviewed a quarantined tool's new definition and approves it."""
    session = get_session_for(request, session_id, act=True)
    try:
        mcp_services.approve_tool(session.id, client_id, tool, actor=actor_of(request))
    except (SessionNotFound, MCPClientNotFound):
        raise Http404("No such MCP client.")
    except InvalidInput as exc:
        return _after(request, session, error=str(exc))
    return _after(request, session, notice=f"Approved the new definition of {tool} on {client_id}.")


@require_GET
def session_mcp_feed(request: HttpRequest, session_id: uuid.UUID) -> HttpResponse:
    """The live feed of the session's recent tool calls (the panel polls this partial)."""
    session = get_session_for(request, session_id, act=False)
    context = {"session": session, "calls": mcp_services.recent_tool_calls(session.id, limit=FEED_LIMIT)}
    return render(request, f"{PANEL}#feed", context)


LISTING_KINDS = ("tools", "resources", "prompts")
LISTING_PER_PAGE = 100


@require_GET
def session_mcp_listing(request: HttpRequest, session_id: uuid.UUID, client_id: str, kind: str) -> HttpResponse:
    """One of a client's stored listings, a page at a time (the panel shows only the first
    items of each)."""
    session = get_session_for(request, session_id, act=False)
    client = McpClient.objects.filter(session_id=session.id, client_id=client_id).exclude(status=McpClient.Status.CLOSED).first()
    if client is None or kind not in LISTING_KINDS:
        raise Http404("No such listing.")
    page = Paginator(getattr(client, kind), LISTING_PER_PAGE).get_page(request.GET.get("page"))
    context = {
        "session": session,
        "client": client,
        "kind": kind,
        "page": page,
        "omitted": client.listing_omitted.get(kind, 0),
        "can_operate": can_operate(request) and session.status == AgentSession.Status.ACTIVE,
    }
    return render(request, "sessionadmin/session_mcp_listing.html", context)


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
                "refusal": server.refusal,
                "clients": server.clients.exclude(status=McpClient.Status.CLOSED).count(),
            }
        )
    context = {
        "rows": rows,
        "can_manage": can_manage_catalog(request),
        "allowed_commands": settings.SESSIONADMIN_STDIO_COMMANDS,
        "stdio_sandbox": settings.SESSIONADMIN_STDIO_SANDBOX,
    }
    return render(request, "sessionadmin/mcp_server_list.html", context)


@require_http_methods(["GET", "POST"])
@catalog_admin_required
def mcp_server_edit(request: HttpRequest, pk: int | None = None) -> HttpResponse:
    server = get_object_or_404(McpServer, pk=pk) if pk is not None else McpServer()
    headers, env = mcp_services.stored_secrets(server if pk is not None else None)
    form = McpServerForm(request.POST or None, instance=server, stored_headers=headers, stored_env=env)
    transport = form.transport_shown(request.GET.get("transport", "") if request.method == "GET" else "")
    if not form.is_bound:
        form.initial["transport"] = transport
    form.fields["transport"].widget.attrs.update(
        {"hx-get": request.path, "hx-trigger": "change", "hx-target": "#transport-fields", "hx-swap": "outerHTML"}
    )
    context = {"form": form, "server": server, "stdio_sandbox": settings.SESSIONADMIN_STDIO_SANDBOX, "transport": transport}
    context["transport_fields"] = form.fields_for(transport)
    if request.method == "GET" and _is_htmx(request):
        # The transport select changed: only that transport's fields, from the same template.
        return render(request, "sessionadmin/mcp_server_edit.html#transport-fields", context)
    if request.method == "POST" and form.is_valid():
        new_headers, new_env = form.secrets_to_store()
        mcp_services.save_server(form.save(commit=False), actor=actor_of(request), headers=new_headers, env=new_env)
        messages.success(request, f"Saved MCP server {server.name}.")
        if server.secrets_cleared:
            messages.warning(request, cleared_secrets_notice(server))
        return redirect("mcp_server_list")
    return render(request, "sessionadmin/mcp_server_edit.html", context, status=400 if request.method == "POST" else 200)


@require_POST
@catalog_admin_required
def mcp_server_delete(request: HttpRequest, pk: int) -> HttpResponse:
    server = get_object_or_404(McpServer, pk=pk)
    mcp_services.delete_server(server, actor=actor_of(request))
    messages.success(request, f"Deleted MCP server {server.name}.")
    return redirect(reverse("mcp_server_list"))
