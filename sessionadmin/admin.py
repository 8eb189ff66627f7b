"""Django admin: auditors read the trail here; operators manage orgs, prompts and the catalog.
Session status never changes by editing a row: only through the manager."""

import csv
import time
from collections.abc import Iterator
from typing import Any

from django import forms
from django.contrib import admin, messages
from django.contrib.admin.options import IncorrectLookupParameters
from django.contrib.admin.widgets import AdminSplitDateTime
from django.db import models
from django.db.models import Q, QuerySet
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect, StreamingHttpResponse
from django.template import engines
from django.urls import URLPattern, path, reverse
from django.utils import timezone
from django.utils.html import format_html

from sessionadmin import ledger, lifecycle, prompts, services, tokens
from sessionadmin.models import (
    AgentSession,
    ApiToken,
    AuditCheckpoint,
    AuditEntry,
    AuditVerification,
    MaintenanceRun,
    Org,
    PromptLayer,
    uuid_prefix_range,
)
from sessionadmin.redaction import Redactor, redact_shown_entries
from sessionadmin.roles import MANAGE_CATALOG_PERMISSION, OPERATE_PERMISSION


class SafeDateHierarchy:
    """Django's date drill-down turns ``?at__year=99999999999`` into an OverflowError (a 500):
    out-of-range parts are incorrect lookups, answered like any other (the changelist's
    "?e=1" page, the CSV export's redirect)."""

    _RANGES = {"year": (1, 9999), "month": (1, 12), "day": (1, 31)}

    def get_changelist_instance(self, request: HttpRequest) -> Any:
        field = getattr(self, "date_hierarchy", None)
        if field:
            for part, (low, high) in self._RANGES.items():
                raw = request.GET.get(f"{field}__{part}")
                if raw is not None and not (raw.isascii() and raw.isdigit() and len(raw) <= 4 and low <= int(raw) <= high):
                    raise IncorrectLookupParameters(f"invalid {part}")
        return super().get_changelist_instance(request)  # type: ignore[misc]


class NulSafeChoiceField(forms.ModelChoiceField):
    """A foreign-key choice whose typed value may contain a NUL (an autocomplete's raw input):
    an invalid choice, not a query PostgreSQL refuses with an error."""

    def to_python(self, value: Any) -> Any:
        if isinstance(value, str) and "\x00" in value:
            raise forms.ValidationError(self.error_messages["invalid_choice"], code="invalid_choice")
        return super().to_python(value)

    def bound_data(self, data: Any, initial: Any) -> Any:
        # Redisplayed after the error: the autocomplete widget would query with it.
        return initial if isinstance(data, str) and "\x00" in data else super().bound_data(data, initial)


class NulSafeForeignKeys:
    def formfield_for_foreignkey(self, db_field: Any, request: HttpRequest, **kwargs: Any) -> Any:
        kwargs.setdefault("form_class", NulSafeChoiceField)
        return super().formfield_for_foreignkey(db_field, request, **kwargs)  # type: ignore[misc]


class ReadOnlyAdmin(admin.ModelAdmin):
    """Rows nobody edits in the admin, superusers included: they change only through the
    service layer (or never, for the audit trail)."""

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


# --- Orgs, prompt layers, sessions, audit entries -------------------------------------------


@admin.register(Org)
class OrgAdmin(admin.ModelAdmin):
    """Creates and edits go through ``services`` (validated and audited); orgs are never
    deleted here (sessions and audit entries refer to them)."""

    list_display = ["id", "name", "max_sessions", "max_sessions_per_user", "idle_timeout_seconds", "created_at"]
    search_fields = ["id", "name"]

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> list[str]:
        return ["id", "created_at"] if obj is not None else ["created_at"]

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def save_model(self, request: HttpRequest, obj: Org, form: Any, change: bool) -> None:
        limits = {f: getattr(obj, f) for f in services.ORG_LIMIT_FIELDS}
        actor = request.user.get_username()
        if change:
            services.update_org(org_id=obj.id, actor=actor, name=obj.name, prompt=obj.prompt, **limits)
        else:
            services.create_org(org_id=obj.id, name=obj.name, prompt=obj.prompt, actor=actor, **limits)
            obj._state.adding = False


@admin.register(PromptLayer)
class PromptLayerAdmin(NulSafeForeignKeys, admin.ModelAdmin):
    """Saves and deletes go through ``services`` so each bumps the version and is audited."""

    list_display = ["name", "scope", "org", "user_id", "priority", "enabled", "version", "updated_at"]
    list_filter = ["scope", "enabled"]
    search_fields = ["name", "user_id", "org__id"]
    readonly_fields = ["version", "updated_at"]
    autocomplete_fields = ["org"]

    def get_form(self, request: HttpRequest, obj: Any = None, change: bool = False, **kwargs: Any) -> Any:
        form = super().get_form(request, obj, change=change, **kwargs)
        if "body" in form.base_fields:
            form.base_fields["body"].help_text = prompts.SYNTAX_HINT
        return form

    def save_model(self, request: HttpRequest, obj: PromptLayer, form: Any, change: bool) -> None:
        services.save_prompt_layer(layer=obj, actor=request.user.get_username())

    def delete_model(self, request: HttpRequest, obj: PromptLayer) -> None:
        services.delete_prompt_layer(layer=obj, actor=request.user.get_username())

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[PromptLayer]) -> None:
        for layer in queryset:
            services.delete_prompt_layer(layer=layer, actor=request.user.get_username())


@admin.register(AgentSession)
class AgentSessionAdmin(ReadOnlyAdmin):
    """Read-only rows: a session's status changes only through ``lifecycle``, here through the
    "Kill" action (operators only)."""

    list_display = ["id", "user_id", "org", "status", "created_at", "last_active_at", "ended_at"]
    list_filter = ["status"]
    search_fields = ["user_id"]
    search_help_text = "A user id prefix, or a session id (or its first 4+ hex digits)."
    show_full_result_count = False
    actions = ["kill_sessions"]

    def has_operate_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm(OPERATE_PERMISSION)

    def get_search_results(self, request: HttpRequest, queryset: QuerySet[Any], search_term: str) -> tuple[QuerySet[Any], bool]:
        return (queryset.search(search_term) if search_term.strip() else queryset), False  # type: ignore[attr-defined]

    @admin.action(description="Kill selected sessions", permissions=["operate"])
    def kill_sessions(self, request: HttpRequest, queryset: QuerySet[AgentSession]) -> None:
        # The ids only: lifecycle.end locks and re-checks the rows, in batches the workers remove.
        ids = list(queryset.filter(status=AgentSession.Status.ACTIVE).values_list("id", flat=True))
        ended = lifecycle.end(session_ids=ids, actor=request.user.get_username(), reason="killed from the admin")
        queued = "" if ended.enqueued is not False else " (the task queue is unreachable: the maintenance will remove them)"
        self.message_user(request, f"{len(ended.sessions)} session(s) terminating; the workers remove their workspaces{queued}.")


_LOOKUP_CACHE: dict[str, tuple[float, list[tuple[str, str]]]] = {}
_LOOKUP_TTL_SECONDS = 300


def _distinct_values(field: str) -> list[tuple[str, str]]:
    """Distinct values of an audit column for a filter sidebar, cached for a few minutes (a
    DISTINCT over a large audit table is not free)."""
    hit = _LOOKUP_CACHE.get(field)
    if hit and hit[0] > time.monotonic():
        return hit[1]
    values = AuditEntry.objects.order_by(field).values_list(field, flat=True).distinct()[:200]
    lookups = [(v, v) for v in values if v]
    _LOOKUP_CACHE[field] = (time.monotonic() + _LOOKUP_TTL_SECONDS, lookups)
    return lookups


class _AuditValueFilter(admin.SimpleListFilter):
    field = ""

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return _distinct_values(self.field)

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        value = self.value()
        return queryset.filter(**{self.field: value}) if value else queryset


class EventTypeFilter(_AuditValueFilter):
    title = "event type"
    parameter_name = "event_type"
    field = "event_type"


class ActorFilter(_AuditValueFilter):
    title = "actor"
    parameter_name = "actor"
    field = "actor"


class AuditOrgFilter(_AuditValueFilter):
    title = "org"
    parameter_name = "org_id"
    field = "org_id"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [(o, o) for o in Org.objects.values_list("id", flat=True)[:500]]


def _csv_cell(value: Any) -> str:
    """Neutralise spreadsheet formulas in exported text (CSV injection)."""
    text = "" if value is None else str(value)
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


class _Echo:
    def write(self, value: str) -> str:
        return value


@admin.register(AuditEntry)
class AuditEntryAdmin(SafeDateHierarchy, ReadOnlyAdmin):
    """The append-only trail: nobody adds, changes or deletes here, superusers included."""

    CSV_COLUMNS = ["at", "event_type", "actor", "user_id", "org_id", "session_id", "details"]

    list_display = ["seq", "at", "event_type", "actor", "user_id", "org_id", "session_link", "details_short"]
    list_filter = [EventTypeFilter, AuditOrgFilter, ActorFilter]
    date_hierarchy = "at"
    search_fields = ["user_id"]
    search_help_text = "A session id or its first 4+ hex digits (the short id), a user id or an actor (exact)."
    show_full_result_count = False
    list_per_page = 100
    actions = ["export_selected_csv"]

    @admin.display(description="session", ordering="session_id")
    def session_link(self, obj: AuditEntry) -> str:
        if not obj.session_id:
            return ""
        return format_html('<a href="{}">{}</a>', reverse("session_detail", args=[obj.session_id]), str(obj.session_id)[:8])

    @admin.display(description="details")
    def details_short(self, obj: AuditEntry) -> str:
        text = ", ".join(f"{k}={v}" for k, v in (obj.details or {}).items())
        return text if len(text) <= 120 else text[:117] + "..."

    # Details are shown redacted against every catalog secret (rows written before redaction
    # covered them stay append-only; see redaction.redact_shown_entries).
    def get_changelist_instance(self, request: HttpRequest) -> Any:
        changelist = super().get_changelist_instance(request)
        redact_shown_entries(changelist.result_list)
        return changelist

    def get_object(self, request: HttpRequest, object_id: str, from_field: str | None = None) -> Any:
        entry = super().get_object(request, object_id, from_field)
        if entry is not None:
            redact_shown_entries([entry])
        return entry

    def get_search_results(self, request: HttpRequest, queryset: QuerySet[Any], search_term: str) -> tuple[QuerySet[Any], bool]:
        # Exact matches, or a session id's leading hex digits (the dashboard's 8-character short
        # id) as a range: each served by an index (audit_session_at_idx, audit_user_at_idx,
        # audit_actor_at_idx), instead of the default icontains scan of the whole table.
        term = search_term.strip()
        if not term:
            return queryset, False
        condition = Q(user_id=term) | Q(actor=term)
        bounds = uuid_prefix_range(term)
        if bounds is not None:
            condition |= Q(session_id__gte=bounds[0], session_id__lte=bounds[1])
        return queryset.filter(condition), False

    def get_urls(self) -> list[URLPattern]:
        export = path("export/", self.admin_site.admin_view(self.export_view), name="sessionadmin_auditentry_export")
        return [export, *super().get_urls()]

    def export_view(self, request: HttpRequest) -> HttpResponse:
        """Every entry the changelist shows with the same filters, search and date, as CSV."""
        if not self.has_view_permission(request):
            return HttpResponse(status=403)
        try:
            changelist = self.get_changelist_instance(request)
        except IncorrectLookupParameters:
            return HttpResponseRedirect(reverse("admin:sessionadmin_auditentry_changelist"))
        return self._csv_response(changelist.get_queryset(request))

    @admin.action(description="Export selected entries as CSV")
    def export_selected_csv(self, request: HttpRequest, queryset: QuerySet[AuditEntry]) -> HttpResponse:
        return self._csv_response(queryset)

    def _csv_response(self, queryset: QuerySet[AuditEntry]) -> HttpResponse:
        import json

        writer = csv.writer(_Echo())

        def rows() -> Iterator[str]:
            yield writer.writerow(self.CSV_COLUMNS)
            redactor = Redactor.for_catalog()
            for entry in queryset.order_by("-at", "-id").iterator(chunk_size=2000):
                details = json.dumps(redactor.json(entry.details), sort_keys=True, default=str)
                texts = [entry.event_type, entry.actor, entry.user_id, entry.org_id]
                yield writer.writerow([entry.at.isoformat(), *map(_csv_cell, texts), entry.session_id or "", _csv_cell(details)])

        response = StreamingHttpResponse(rows(), content_type="text/csv; charset=utf-8")
        response["Content-Disposition"] = 'attachment; filename="audit-entries.csv"'
        return response  # type: ignore[return-value]


# --- the audit ledger: checkpoints, verifications, public key ----------------------------------


@admin.register(AuditCheckpoint)
class AuditCheckpointAdmin(ReadOnlyAdmin):
    """Signed checkpoints, with the ledger's state above them: length, head, last checkpoint,
    last verification, the public key (shown and downloadable) and a button that starts a
    verification in a worker."""

    list_display = ["id", "length", "head_short", "at", "key_id"]
    show_full_result_count = False

    @admin.display(description="head hash")
    def head_short(self, obj: AuditCheckpoint) -> str:
        return obj.head_hash[:16] + "..."

    def get_urls(self) -> list[URLPattern]:
        return [
            path("public-key/", self.admin_site.admin_view(self.public_key_view), name="sessionadmin_audit_public_key"),
            path("verify/", self.admin_site.admin_view(self.verify_view), name="sessionadmin_audit_verify"),
            *super().get_urls(),
        ]

    def changelist_view(self, request: HttpRequest, extra_context: dict[str, Any] | None = None) -> HttpResponse:
        context = {**(extra_context or {}), "ledger": ledger.state()}
        try:
            context["public_key_pem"] = ledger.public_key_pem()
        except Exception as exc:  # no key yet: say so instead of failing the page
            context["public_key_error"] = str(exc)
        context["may_verify"] = request.user.has_perm("sessionadmin.view_auditverification")
        return super().changelist_view(request, extra_context=context)

    def public_key_view(self, request: HttpRequest) -> HttpResponse:
        if not self.has_view_permission(request):
            return HttpResponse(status=403)
        response = HttpResponse(ledger.public_key_pem(), content_type="application/x-pem-file")
        response["Content-Disposition"] = 'attachment; filename="sessionadmin-audit-public-key.pem"'
        return response

    def verify_view(self, request: HttpRequest) -> HttpResponse:
        if request.method != "POST":
            return HttpResponse(status=405)
        if not request.user.has_perm("sessionadmin.view_auditverification"):
            return HttpResponse(status=403)
        from sessionadmin import tasks

        try:
            tasks.audit_verify.apply_async(kwargs={"triggered_by": f"admin:{request.user.get_username()}"})
        except Exception:  # kombu raises transport-specific errors
            messages.error(request, "The task queue (broker) is unreachable: no verification was started.")
        else:
            messages.success(request, "Verification started; its result appears under Audit verifications.")
        return HttpResponseRedirect(reverse("admin:sessionadmin_auditcheckpoint_changelist"))


@admin.register(AuditVerification)
class AuditVerificationAdmin(ReadOnlyAdmin):
    list_display = ["started_at", "finished_at", "triggered_by", "ok", "entries_verified", "head_seq", "problem", "failing_seq"]
    list_filter = ["ok"]


# --- MCP servers and clients ----------------------------------------------------------------

from sessionadmin import mcp_services  # noqa: E402
from sessionadmin.mcp_forms import McpServerForm, cleared_secrets_notice  # noqa: E402
from sessionadmin.models import McpClient, McpServer  # noqa: E402
from sessionadmin.secrets import masked_mapping  # noqa: E402


class McpServerAdminForm(McpServerForm):
    class Meta(McpServerForm.Meta):
        fields = [*McpServerForm.Meta.fields]


@admin.register(McpServer)
class McpServerAdmin(admin.ModelAdmin):
    """Header and environment values are write-only here: shown masked (last characters
    only), replaced by typing new ones, saved encrypted through ``mcp_services``."""

    form = McpServerAdminForm
    list_display = ["name", "transport", "network", "enabled", "masked_headers", "masked_env", "created_at"]
    list_filter = ["transport", "network", "enabled"]
    search_fields = ["name", "description"]
    readonly_fields = ["masked_headers", "masked_env", "created_at"]

    def get_form(self, request: HttpRequest, obj: Any = None, change: bool = False, **kwargs: Any) -> Any:
        kwargs["fields"] = [
            *McpServerForm.Meta.fields,
            "args_text",
            "read_only_paths_text",
            "headers_text",
            "env_text",
            "clear_headers",
            "clear_env",
        ]
        base = super().get_form(request, obj, change, **kwargs)
        headers, env = mcp_services.stored_secrets(obj)

        class BoundForm(base):  # type: ignore[valid-type,misc]
            def __init__(self, *args: Any, **kw: Any) -> None:
                super().__init__(*args, stored_headers=headers, stored_env=env, **kw)

        return BoundForm

    @admin.display(description="headers")
    def masked_headers(self, obj: McpServer) -> str:
        return ", ".join(f"{k}: {v}" for k, v in masked_mapping(mcp_services.stored_secrets(obj)[0]).items()) or "—"

    @admin.display(description="environment")
    def masked_env(self, obj: McpServer) -> str:
        return ", ".join(f"{k}={v}" for k, v in masked_mapping(mcp_services.stored_secrets(obj)[1]).items()) or "—"

    # One right decides what runs: MCP admins' ``manage_mcp_catalog``, not the model's
    # add/change/delete permissions (which Operators used to hold).
    def has_add_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm(MANAGE_CATALOG_PERMISSION)

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return request.user.has_perm(MANAGE_CATALOG_PERMISSION)

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return request.user.has_perm(MANAGE_CATALOG_PERMISSION)

    def save_model(self, request: HttpRequest, obj: McpServer, form: Any, change: bool) -> None:
        headers, env = form.secrets_to_store()
        mcp_services.save_server(obj, actor=request.user.get_username(), headers=headers, env=env)
        if obj.secrets_cleared:
            self.message_user(request, cleared_secrets_notice(obj), level=messages.WARNING)

    def delete_model(self, request: HttpRequest, obj: McpServer) -> None:
        mcp_services.delete_server(obj, actor=request.user.get_username())

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[McpServer]) -> None:
        # The bulk "delete selected" action too: clients closed, audited, configs rewritten.
        for server in queryset:
            mcp_services.delete_server(server, actor=request.user.get_username())


@admin.register(McpClient)
class McpClientAdmin(ReadOnlyAdmin):
    """Read-only: clients are attached, refreshed and detached through the dashboard."""

    list_display = ["client_id", "session", "status", "transport", "server_name", "server_version", "last_verified_at"]
    list_filter = ["status", "transport"]
    search_fields = ["client_id", "server_name", "session__id"]
    list_select_related = ["session", "server"]
    # The listings can hold thousands of items: counted here, shown a page at a time on the
    # dashboard (session_mcp_listing).
    exclude = ["tools", "resources", "prompts", "pinned_tools", "quarantined_tools"]
    readonly_fields = ["listings"]

    @admin.display(description="listings")
    def listings(self, obj: McpClient) -> str:
        counts = ", ".join(f"{len(getattr(obj, kind))} {kind}" for kind in ("tools", "resources", "prompts"))
        omitted = ", ".join(f"{n} {kind}" for kind, n in (obj.listing_omitted or {}).items())
        pins = f"; {len(obj.pinned_tools or {})} tools pinned, {len(obj.quarantined_tools or {})} quarantined"
        return f"{counts} stored" + (f"; left out: {omitted}" if omitted else "") + pins


# --- Maintenance runs -----------------------------------------------------------------------


@admin.register(MaintenanceRun)
class MaintenanceRunAdmin(SafeDateHierarchy, ReadOnlyAdmin):
    """Read-only: runs are written by the maintenance tasks only."""

    list_display = ["task", "started_at", "finished_at", "outcome", "triggered_by"]
    list_filter = ["task", "outcome"]
    date_hierarchy = "started_at"
    search_fields = ["triggered_by", "error"]


# --- API tokens -----------------------------------------------------------------------------


class LabelledSplitDateTime(AdminSplitDateTime):
    """The admin's date + time inputs, each with an accessible name: its "Date:" and "Time:"
    captions are plain text, not labels, which screen readers (and axe-core) do not tie to
    the inputs."""

    def get_context(self, name: str, value: Any, attrs: dict[str, Any] | None) -> dict[str, Any]:
        context = super().get_context(name, value, attrs)
        label = str(name).replace("_", " ")
        for part, sub in zip(("date", "time"), context["widget"]["subwidgets"], strict=False):
            sub["attrs"]["aria-label"] = f"{label} ({part})"
        return context


class ApiTokenForm(forms.ModelForm):
    class Meta:
        model = ApiToken
        fields = ["name", "org", "expires_at", "can_read_metrics"]

    def clean_expires_at(self) -> Any:
        expires_at = self.cleaned_data.get("expires_at")
        if expires_at is not None and expires_at <= timezone.now():
            raise forms.ValidationError("The expiry must be in the future.")
        return expires_at


_TOKEN_CREATED_TEMPLATE = """{% extends "admin/base_site.html" %}
{% block content %}<h1>API token “{{ token.name }}” created</h1>
<p>Copy it now: it is shown only this once (only its hash is stored).</p>
<pre id="api-token">{{ raw }}</pre>
<p><a href="{{ back }}">Back to the API tokens</a></p>{% endblock %}"""


@admin.register(ApiToken)
class ApiTokenAdmin(NulSafeForeignKeys, admin.ModelAdmin):
    """Tokens are created through ``tokens.create_token`` (the plaintext is shown once, on the
    page after "Save") and revoked, never edited or deleted; the hash is never displayed."""

    form = ApiTokenForm
    formfield_overrides = {models.DateTimeField: {"widget": LabelledSplitDateTime}}
    list_display = ["name", "prefix", "org", "metrics", "expires_at", "revoked_at", "last_used_at"]
    list_filter = ["org"]
    search_fields = ["name", "prefix"]
    readonly_fields = ["prefix", "created_at", "created_by", "revoked_at", "last_used_at"]
    actions = ["revoke_tokens"]

    @admin.display(description="metrics", boolean=True, ordering="can_read_metrics")
    def metrics(self, obj: ApiToken) -> bool:
        # A short header, and no creator column (on the token's page): the list stays inside a
        # 1,280 px window beside its filter.
        return obj.can_read_metrics

    def get_fields(self, request: HttpRequest, obj: Any = None) -> list[Any]:
        fields: list[Any] = ["name", "org", "expires_at", "can_read_metrics"]
        return fields if obj is None else [*fields, *self.readonly_fields]

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> list[str]:
        return [] if obj is None else ["name", "org", "expires_at", "can_read_metrics", *self.readonly_fields]

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_revoke_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm("sessionadmin.change_apitoken")

    def save_model(self, request: HttpRequest, obj: ApiToken, form: Any, change: bool) -> None:
        if change:
            return  # every field is read-only once created
        token, raw = tokens.create_token(
            name=obj.name,
            actor=request.user.get_username(),
            org=obj.org,
            expires_at=obj.expires_at,
            can_read_metrics=obj.can_read_metrics,
        )
        obj.pk, obj.prefix, obj.created_at = token.pk, token.prefix, token.created_at
        obj._state.adding = False
        request._api_token_plaintext = raw  # type: ignore[attr-defined]

    def response_add(self, request: HttpRequest, obj: ApiToken, post_url_continue: str | None = None) -> HttpResponse:
        raw = getattr(request, "_api_token_plaintext", None)
        if raw is None:
            return super().response_add(request, obj, post_url_continue)
        template = engines["django"].from_string(_TOKEN_CREATED_TEMPLATE)
        context = {**self.admin_site.each_context(request), "token": obj, "raw": raw,
                   "back": reverse("admin:sessionadmin_apitoken_changelist")}  # fmt: skip
        return HttpResponse(template.render(context, request))  # the admin adds never_cache

    @admin.action(description="Revoke selected tokens", permissions=["revoke"])
    def revoke_tokens(self, request: HttpRequest, queryset: QuerySet[ApiToken]) -> None:
        names = list(queryset.filter(revoked_at__isnull=True).values_list("name", flat=True))
        for name in names:
            tokens.revoke_token(name=name, actor=request.user.get_username())
        self.message_user(request, f"Revoked {len(names)} token(s).")
