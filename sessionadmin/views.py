"""The operator dashboard: small typed views over the service layer.

Access: everything is behind login (``LoginRequiredMiddleware``). Users with the view
permission see everything; operators (``sessionadmin.operate_sessions``) may also act. A user
without the view permission gets 403 on pages and 404 on any session; a viewer's POST is 403.

Each page renders one template; htmx requests get one of its inline partials
(``page.html#name``), chosen by the id of the element that asked (``HX-Target``). Viewing is
not activity: sessions are read with querysets here, never with ``SessionManager.get_session`` (which counts as activity).
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable
from datetime import timedelta
from functools import wraps
from typing import Any, NamedTuple, ParamSpec, TypeVar

from django.conf import settings
from django.contrib import messages
from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseBase
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils import timezone
from django.utils.html import escape
from django.utils.http import url_has_allowed_host_and_scheme
from django.utils.safestring import mark_safe
from django.views.decorators.http import require_GET, require_http_methods, require_POST
from django_htmx.http import HttpResponseClientRedirect, trigger_client_event

from sessionadmin import lifecycle, prompts, services
from sessionadmin.forms import (
    SORTS,
    STATUS_FILTERS,
    BulkKillForm,
    OrgForm,
    PinForm,
    PromptForm,
    ReasonForm,
    SessionCreateForm,
    SessionFilterForm,
    initial_pin_until,
)
from sessionadmin.lifecycle import (
    InvalidInput,
    InvalidOrgID,
    InvalidUserID,
    MaxSessionsReached,
    SessionError,
    SessionNotFound,
    WorkspaceCreationError,
)
from sessionadmin.models import AgentSession, AuditEntry, Org, PromptLayer
from sessionadmin.redaction import redact_shown_entries
from sessionadmin.roles import OPERATE_PERMISSION
from sessionadmin.validation import id_problem
from sessionadmin.workspaces import inspect_workspace

VIEW_PERMISSION = "sessionadmin.view_agentsession"
PER_PAGE = 50
AUDIT_TIMELINE_LIMIT = 100
# The session page's filter of its audit trail: the events a session's trail holds. A fixed list,
# so the filter costs no DISTINCT over the audit table.
TIMELINE_EVENTS = (
    ("mcp_tool_called", "Tool calls"),
    ("session_created", "Created"),
    ("session_pinned", "Pinned"),
    ("session_unpinned", "Unpinned"),
    ("system_prompt_updated", "Prompt updated"),
    ("mcp_client_added", "Client attached"),
    ("mcp_client_add_failed", "Attach failed"),
    ("mcp_client_removed", "Client detached"),
    ("mcp_client_closed", "Client closed"),
    ("mcp_client_status_changed", "Client status changed"),
    ("mcp_tool_approved", "Tool approved"),
    ("gateway_token_issued", "Gateway token issued"),
    ("session_terminating", "Terminating"),
    ("session_cleaned_up", "Cleaned up"),
    ("workspace_removal_failed", "Removal failed"),
)
EVENT_FILTER_RE = re.compile(r"[a-z_]{1,64}")
HEADLINE_ORGS = 6
# The client event that makes the live parts of a page refresh after an htmx mutation.
CHANGED_EVENT = "session-changed"

P = ParamSpec("P")
R = TypeVar("R", bound=HttpResponseBase)


# --- access ------------------------------------------------------------------------------------


def can_view(request: HttpRequest) -> bool:
    return request.user.has_perm(VIEW_PERMISSION)


def can_operate(request: HttpRequest) -> bool:
    return request.user.has_perm(OPERATE_PERMISSION)


def actor_of(request: HttpRequest) -> str:
    return request.user.get_username()


def viewer_required(view: Callable[P, R]) -> Callable[P, R]:
    """403 for logged-in users who may not look at the dashboard."""

    @wraps(view)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        request = args[0]
        assert isinstance(request, HttpRequest)
        if not can_view(request):
            raise PermissionDenied("You may not view the dashboard.")
        return view(*args, **kwargs)

    return wrapper


def operator_required(view: Callable[P, R]) -> Callable[P, R]:
    """403 for users who may look but not act (viewers) and for users with no role."""

    @wraps(view)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        request = args[0]
        assert isinstance(request, HttpRequest)
        if not can_operate(request):
            raise PermissionDenied("Only operators may do this.")
        return view(*args, **kwargs)

    return wrapper


def get_session_for(request: HttpRequest, session_id: uuid.UUID | str, *, act: bool, queryset: Any = None) -> AgentSession:
    """The session, for this user: 404 to users who may not view sessions (and for unknown
    ids), 403 when ``act`` and the user may only look. Never counts as session activity."""
    if not can_view(request):
        raise Http404("No such session.")
    if act and not can_operate(request):
        raise PermissionDenied("Only operators may change sessions.")
    try:
        sid = uuid.UUID(str(session_id))
    except ValueError:
        raise Http404("No such session.")
    qs = queryset if queryset is not None else AgentSession.objects.select_related("org")
    session = qs.filter(pk=sid).first()
    if session is None:
        raise Http404("No such session.")
    return session


def _htmx_target(request: HttpRequest) -> str | None:
    htmx = getattr(request, "htmx", None)
    if not htmx or htmx.boosted:
        return None
    return str(htmx.target) if htmx.target else ""


def _is_htmx(request: HttpRequest) -> bool:
    return bool(getattr(request, "htmx", False))


def _safe_next(request: HttpRequest, value: str | None, default: str) -> str:
    """A path on this site to go back to, or ``default``: never another host, and never a bare
    word (which ``redirect`` would try to reverse as a view name)."""
    if (
        value
        and value.startswith("/")
        and url_has_allowed_host_and_scheme(value, allowed_hosts={request.get_host()}, require_https=request.is_secure())
    ):
        return value
    return default


def _done(request: HttpRequest, url: str) -> HttpResponse:
    """After a mutation: a redirect, or for htmx a client-side redirect (a full page load)."""
    return HttpResponseClientRedirect(url) if _is_htmx(request) else redirect(url)


# --- session list ------------------------------------------------------------------------------


def _filtered_sessions(filters: dict[str, Any]) -> Any:
    qs = AgentSession.objects.all()
    status = filters["status"]
    if status == "live":
        qs = qs.live()
    elif status != "all":
        qs = qs.filter(status=status)
    if filters["org"]:
        qs = qs.filter(org_id=filters["org"])
    if filters["user"]:
        qs = qs.filter(user_id=filters["user"])
    if filters["q"]:
        qs = qs.search(filters["q"])
    return qs.order_by(*SORTS[filters["sort"]])


def _page_of_sessions(filters: dict[str, Any], start: int, size: int) -> list[AgentSession]:
    """One query: the page's ids are picked by an inner query that reads only the index it
    sorts by (OFFSET walks index entries, not joined rows); the outer query joins the org and
    counts MCP clients for those rows alone."""
    ordering = SORTS[filters["sort"]]
    page_ids = _filtered_sessions(filters).values("pk")[start : start + size]
    return list(AgentSession.objects.for_dashboard().filter(pk__in=page_ids).order_by(*ordering))


class OrgUsage(NamedTuple):
    id: str
    name: str
    max_sessions: int | None
    active: int  # counted only for orgs with a limit
    total_active: int  # all active sessions (the same on every row)


def _headline(orgs: list[OrgUsage]) -> dict[str, Any]:
    active = orgs[0].total_active if orgs else 0
    limit = settings.SESSIONADMIN_MAX_CONCURRENT
    limited = sorted((o for o in orgs if o.max_sessions), key=lambda o: (-o.active / (o.max_sessions or 1), o.id))
    return {
        "active": active,
        "limit": limit,
        "percent": min(100, round(100 * active / limit)) if limit else None,
        "orgs": [
            {
                "id": o.id,
                "active": o.active,
                "limit": o.max_sessions,
                "percent": min(100, round(100 * o.active / (o.max_sessions or 1))),
            }
            for o in limited[:HEADLINE_ORGS]
        ],
        "more_orgs": max(0, len(limited) - HEADLINE_ORGS),
    }


def _with_deadlines(rows: list[AgentSession]) -> list[AgentSession]:
    default = timedelta(seconds=settings.SESSIONADMIN_IDLE_TIMEOUT_SECONDS)
    now = timezone.now()
    for row in rows:
        row.deadline = row.idle_deadline(default)  # type: ignore[attr-defined]
        # Only a live session is held by its pin (an ended one shows none).
        row.pinned = row.status == AgentSession.Status.ACTIVE and bool(row.pinned_until and row.pinned_until > now)  # type: ignore[attr-defined]
    return rows


@require_GET
@viewer_required
def session_list(request: HttpRequest) -> HttpResponse:
    filters = SessionFilterForm(request.GET).values()
    page = filters["page"]
    start = (page - 1) * PER_PAGE
    # No COUNT(*): one extra row says whether a next page exists.
    rows = _page_of_sessions(filters, start, PER_PAGE + 1)
    has_next = len(rows) > PER_PAGE
    # Tuples, not model instances: hundreds of orgs are read on every poll.
    usage = services.orgs_with_usage(limited_only=True).values_list(  # type: ignore[misc]
        "id", "name", "max_sessions", "active", "total_active"
    )
    orgs = [OrgUsage(*row) for row in usage]
    polling = _htmx_target(request) == "session-live"
    query = request.GET.copy()
    query.pop("page", None)
    context = {
        "sessions": _with_deadlines(rows[:PER_PAGE]),
        "filters": filters,
        "page": page,
        "has_next": has_next,
        "first_row": start + 1,
        "last_row": start + min(len(rows), PER_PAGE),
        "base_query": query.urlencode(),
        "sort_query": _without(request, "sort", "page"),
        "headline": _headline(orgs),
        "has_orgs": bool(orgs),
        # One reverse() for the page rather than one per row.
        "detail_prefix": reverse("session_detail", args=[uuid.UUID(int=0)]).removesuffix(f"{uuid.UUID(int=0)}/"),
        "status_choices": STATUS_FILTERS,
        "can_operate": can_operate(request),
    }
    if polling:
        return render(request, "sessionadmin/session_list.html#live", context)
    context.update({"create_form": SessionCreateForm(), "org_options": _org_options(orgs)})
    return render(request, "sessionadmin/session_list.html", context)


def _without(request: HttpRequest, *names: str) -> str:
    query = request.GET.copy()
    for name in names:
        query.pop(name, None)
    return query.urlencode()


def _org_options(orgs: list[Org] | list[OrgUsage]) -> str:
    """The ``<option>``s of the org datalist, built in one go (hundreds of orgs would cost
    milliseconds as template loop iterations or widget renders)."""
    return mark_safe("".join(f'<option value="{escape(o.id)}">{escape(o.name)}</option>' for o in orgs))  # noqa: S308


@require_POST
@operator_required
def session_bulk_kill(request: HttpRequest) -> HttpResponse:
    form = BulkKillForm(request.POST)
    back = _safe_next(request, request.POST.get("next"), reverse("session_list"))
    if not form.is_valid():
        for errors in form.errors.values():
            for error in errors:
                messages.error(request, f"Nothing was killed: {error}")
        return _done(request, back)
    try:
        ended = lifecycle.end(session_ids=form.cleaned_data["ids"], actor=actor_of(request), reason=form.cleaned_data["reason"])
    except InvalidInput as exc:
        messages.error(request, f"Nothing was killed: {exc}")
        return _done(request, back)
    _report_ended(request, ended, asked=len(form.cleaned_data["ids"]))
    return _done(request, back)


def _report_ended(request: HttpRequest, ended: lifecycle.Ended, *, asked: int) -> None:
    count = len(ended.sessions)
    if count:
        what = f"{count} session{'s are' if count != 1 else ' is'} terminating"
        if ended.enqueued is False:
            messages.warning(request, f"{what}, but the task queue is unreachable: the maintenance will remove the workspaces.")
        else:
            messages.success(request, f"{what}; the workers are removing the workspace{'s' if count != 1 else ''}.")
    if asked - count:
        messages.warning(request, f"{asked - count} selected session(s) were not active any more and were left alone.")


# --- create ------------------------------------------------------------------------------------


@require_http_methods(["GET", "POST"])
@operator_required
def session_create(request: HttpRequest) -> HttpResponse:
    form = SessionCreateForm(request.POST if request.method == "POST" else None, initial={"org": request.GET.get("org", "")})
    if request.method == "POST" and form.is_valid():
        data = form.cleaned_data
        try:
            session = lifecycle.create(
                user_id=data["user_id"], org_id=data["org"], actor=actor_of(request), variables=data["variables"] or None
            )
        except InvalidOrgID as exc:
            form.add_error("org", str(exc))
        except InvalidUserID as exc:
            form.add_error("user_id", str(exc))
        except InvalidInput as exc:
            form.add_error("variables", str(exc))
        except MaxSessionsReached as exc:
            form.add_error(None, f"The {exc.limit} limit is full: {exc}")
        except (WorkspaceCreationError, SessionError) as exc:
            form.add_error(None, str(exc))
        else:
            messages.success(request, f"Session {session.short_id} created for {session.user_id} in {session.org_id}.")
            return _done(request, reverse("session_detail", args=[session.id]))
    template = "sessionadmin/session_create.html"
    if _htmx_target(request) == "create-form":
        return render(request, template + "#create-form", {"create_form": form})
    orgs = list(Org.objects.only("id", "name").order_by("id"))
    return render(request, template, {"create_form": form, "org_options": _org_options(orgs)})


# --- detail ------------------------------------------------------------------------------------


def _prompt_preview(session: AgentSession) -> dict[str, Any]:
    """The prompt the current layers compose for this session's user, org and variables now
    (the stored one was composed at creation, and layers may have changed since)."""
    org = Org.objects.filter(pk=session.org_id).first()
    if org is None:
        return {"error": "The session's org no longer exists."}
    composed, problem = lifecycle.compose_now(session, org)
    if problem:
        return {"error": f"The layers do not compose: {problem}"}
    return {
        "text": composed.text,
        "unfilled": prompts.unfilled(composed.text),
        "single_braces": prompts.single_braces(composed.text),
        "differs": composed.text != session.system_prompt,
    }


def _detail_context(request: HttpRequest, session: AgentSession, *, preview: bool = False, **forms: Any) -> dict[str, Any]:
    event = request.GET.get("event", "")
    event = event if EVENT_FILTER_RE.fullmatch(event) else ""
    trail = AuditEntry.objects.for_session(session.id)
    if event:
        trail = trail.filter(event_type=event)
    entries = list(trail.order_by("-at", "-id")[: AUDIT_TIMELINE_LIMIT + 1])
    redact_shown_entries(entries)
    layer_ids = [p["id"] for p in session.prompt_provenance if p.get("kind") in PromptLayer.Scope.values and "id" in p]
    current = (
        {layer.id: layer for layer in PromptLayer.objects.filter(pk__in=layer_ids).only("id", "version", "enabled")}
        if layer_ids
        else {}
    )
    provenance = []
    for item in session.prompt_provenance:
        layer = current.get(item.get("id")) if item.get("kind") in PromptLayer.Scope.values else None
        provenance.append(
            {
                **item,
                "label": item.get("name") or item.get("composer") or item.get("kind", ""),
                "current_version": layer.version if layer else None,
                "gone": item.get("kind") in PromptLayer.Scope.values and layer is None,
            }
        )
    _with_deadlines([session])
    return {
        "session": session,
        "entries": entries[:AUDIT_TIMELINE_LIMIT],
        "more_entries": len(entries) > AUDIT_TIMELINE_LIMIT,
        "event": event,
        "preview": _prompt_preview(session) if preview else None,
        "variables": sorted((session.variables or {}).items()),
        "syntax_hint": prompts.SYNTAX_HINT,
        "event_choices": TIMELINE_EVENTS,
        "provenance": provenance,
        "can_operate": can_operate(request),
        "kill_form": forms.get("kill_form") or ReasonForm(),
        "pin_form": forms.get("pin_form") or PinForm(initial={"until": initial_pin_until(session)}),
        "prompt_form": forms.get("prompt_form") or PromptForm(initial={"prompt": session.system_prompt}),
        "admin_audit_url": reverse("admin:sessionadmin_auditentry_changelist") + f"?q={session.id}",
    }


@require_GET
def session_detail(request: HttpRequest, session_id: uuid.UUID) -> HttpResponse:
    session = get_session_for(request, session_id, act=False)
    template = "sessionadmin/session_detail.html"
    target = _htmx_target(request)
    if target == "prompt-preview" or request.GET.get("preview"):
        return render(request, template + ("#prompt-preview" if target else ""), _detail_context(request, session, preview=True))
    if target in ("detail-live", "detail-timeline"):
        template += "#live" if target == "detail-live" else "#timeline"
    return render(request, template, _detail_context(request, session))


@require_GET
def session_workspace(request: HttpRequest, session_id: uuid.UUID) -> HttpResponse:
    """The workspace facts, loaded by the detail page after it has rendered (a bounded walk)."""
    session = get_session_for(
        request, session_id, act=False, queryset=AgentSession.objects.only("id", "workspace_path", "status")
    )
    info = inspect_workspace(session.workspace_path)
    return render(request, "sessionadmin/session_detail.html#workspace", {"session": session, "workspace": info})


def _invalid(request: HttpRequest, session: AgentSession, partial: str, **forms: Any) -> HttpResponse:
    """A form with errors: its partial for htmx, else the whole page with the errors inline."""
    template = "sessionadmin/session_detail.html"
    if _is_htmx(request):
        template += f"#{partial}"
    return render(request, template, _detail_context(request, session, **forms))


@require_POST
def session_kill(request: HttpRequest, session_id: uuid.UUID) -> HttpResponse:
    session = get_session_for(request, session_id, act=True)
    form = ReasonForm(request.POST)
    if not form.is_valid():
        return _invalid(request, session, "kill-form", kill_form=form)
    try:
        ended = lifecycle.end(session_ids=[session.id], actor=actor_of(request), reason=form.cleaned_data["reason"])
    except InvalidInput as exc:
        form.add_error("reason", str(exc))
        return _invalid(request, session, "kill-form", kill_form=form)
    if ended.sessions:
        _report_ended(request, ended, asked=1)
    elif session.status == AgentSession.Status.TERMINATING:
        lifecycle.retry_removal(session_ids=[session.id])
        messages.info(request, "This session is already terminating; its removal was queued again.")
    else:
        messages.error(request, "This session has already ended.")
    return _done(request, reverse("session_detail", args=[session.id]))


@require_POST
def session_pin(request: HttpRequest, session_id: uuid.UUID) -> HttpResponse:
    """Pin against idle cleanup until a time (``unpin`` in the POST removes the pin)."""
    session = get_session_for(request, session_id, act=True)
    actor = actor_of(request)
    form = PinForm(request.POST)
    try:
        if "unpin" in request.POST:
            session = lifecycle.unpin(session_id=session.id, actor=actor)
            notice = "Pin removed."
        elif form.is_valid():
            session = lifecycle.pin(
                session_id=session.id, until=form.cleaned_data["until"], reason=form.cleaned_data["reason"], actor=actor
            )
            notice = f"Pinned until {timezone.localtime(form.cleaned_data['until']):%Y-%m-%d %H:%M %Z}."
        else:
            return _invalid(request, session, "pin-form", pin_form=form)
    except SessionNotFound:
        form.add_error(None, "Only active sessions can be pinned.")
        return _invalid(request, session, "pin-form", pin_form=form)
    except InvalidInput as exc:
        form.add_error(None, str(exc))
        return _invalid(request, session, "pin-form", pin_form=form)
    return _saved(request, session.id, "pin-form", notice)


def _saved(request: HttpRequest, session_id: uuid.UUID, partial: str, notice: str) -> HttpResponse:
    """A successful htmx form re-renders its partial with the notice and tells the page's live
    parts to refresh; a plain POST redirects with a message."""
    if not _is_htmx(request):
        messages.success(request, notice)
        return redirect(reverse("session_detail", args=[session_id]))
    session = get_session_for(request, session_id, act=False)
    context = {**_detail_context(request, session), "notice": notice}
    response = render(request, f"sessionadmin/session_detail.html#{partial}", context)
    return trigger_client_event(response, CHANGED_EVENT)


@require_POST
def session_prompt(request: HttpRequest, session_id: uuid.UUID) -> HttpResponse:
    session = get_session_for(request, session_id, act=True)
    form = PromptForm(request.POST)
    if form.is_valid():
        try:
            lifecycle.update_prompt(session_id=session.id, prompt=form.cleaned_data["prompt"], actor=actor_of(request))
        except SessionNotFound:
            form.add_error(None, "Only active sessions can have their prompt edited.")
        except InvalidInput as exc:
            form.add_error("prompt", str(exc))
        else:
            return _saved(request, session.id, "prompt-form", "System prompt saved.")
    return _invalid(request, session, "prompt-form", prompt_form=form)


# --- orgs --------------------------------------------------------------------------------------


@require_GET
@viewer_required
def org_list(request: HttpRequest) -> HttpResponse:
    return _org_page(request, OrgForm())


def _org_page(request: HttpRequest, form: OrgForm) -> HttpResponse:
    template = "sessionadmin/org_list.html"
    if _is_htmx(request) and request.method == "POST":
        template += "#org-create"
    orgs = services.org_usage()
    return render(
        request,
        template,
        {
            "orgs": orgs,
            "org_form": form,
            "can_operate": can_operate(request),
            "default_idle": settings.SESSIONADMIN_IDLE_TIMEOUT_SECONDS,
            "global_limit": settings.SESSIONADMIN_MAX_CONCURRENT,
        },
    )


@require_POST
@operator_required
def org_create(request: HttpRequest) -> HttpResponse:
    form = OrgForm(request.POST)
    if form.is_valid():
        try:
            org = services.create_org(
                org_id=form.cleaned_data["id"],
                name=form.cleaned_data["name"],
                prompt=form.cleaned_data["prompt"],
                actor=actor_of(request),
                **form.limits(),
            )
        except InvalidOrgID as exc:
            form.add_error("id", str(exc))
        except InvalidInput as exc:
            _add_service_errors(form, exc, default="id" if "exists" in str(exc) else None)
        else:
            messages.success(request, f"Org {org.id} created.")
            return _done(request, reverse("org_list"))
    return _org_page(request, form)


def _add_service_errors(form: Any, exc: InvalidInput, *, default: str | None = None) -> None:
    """The model's refusals on the fields they concern (services.InvalidFields), else on top."""
    errors = getattr(exc, "errors", None)
    if not errors:
        form.add_error(default, str(exc))
        return
    for field, messages_ in errors.items():
        form.add_error(field if field in form.fields else None, messages_)


@require_http_methods(["GET", "POST"])
@operator_required
def org_edit(request: HttpRequest, org_id: str) -> HttpResponse:
    # An id that could never exist (a NUL, a path trick) is simply not found, never a query.
    org = Org.objects.filter(pk=org_id).first() if id_problem(org_id) is None else None
    if org is None:
        raise Http404("No such org.")
    form = OrgForm(request.POST if request.method == "POST" else None, instance=org, editing=True)
    if request.method == "POST" and form.is_valid():
        try:
            services.update_org(
                org_id=org.id,
                actor=actor_of(request),
                name=form.cleaned_data["name"],
                prompt=form.cleaned_data["prompt"],
                **form.limits(),
            )
        except InvalidInput as exc:
            _add_service_errors(form, exc)
        except SessionError as exc:
            form.add_error(None, str(exc))
        else:
            messages.success(request, f"Org {org.id} saved.")
            return _done(request, reverse("org_list"))
    return render(request, "sessionadmin/org_edit.html", {"org": org, "org_form": form})
