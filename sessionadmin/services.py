"""Service functions for what is not a session: orgs and prompt layers. Like the manager, each
validates, writes and audits in one transaction; views, commands and the API call these."""

from __future__ import annotations

from typing import Any

from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.db.models import BooleanField, Case, Count, ExpressionWrapper, OuterRef, Q, QuerySet, Subquery, Value, When
from django.db.models.functions import Coalesce
from django.utils import timezone

from sessionadmin import audit
from sessionadmin.lifecycle import InvalidInput, InvalidOrgID
from sessionadmin.models import AgentSession, LimitLock, Org, PromptLayer
from sessionadmin.prompts import sha256
from sessionadmin.validation import id_problem

ORG_LIMIT_FIELDS = ("max_sessions", "max_sessions_per_user", "idle_timeout_seconds")


class InvalidFields(InvalidInput):
    """The model refused some fields; ``errors`` maps each field to its messages (forms show
    them on the fields), ``str()`` says it all in one line (commands, logs)."""

    def __init__(self, error: ValidationError) -> None:
        self.errors: dict[str, list[str]] = error.message_dict
        super().__init__("; ".join(f"{name}: {' '.join(msgs)}" for name, msgs in self.errors.items()))


def _full_clean(instance: Any, *, exclude: list[str] | None = None) -> None:
    """The model's own rules (field validators and named constraints) are the only rules."""
    try:
        instance.full_clean(exclude=exclude, validate_unique=False)
    except ValidationError as exc:
        raise InvalidFields(exc) from None


def _check_limits(limits: dict[str, int | None]) -> None:
    unknown = set(limits) - set(ORG_LIMIT_FIELDS)
    if unknown:
        raise InvalidInput(f"unknown org setting {sorted(unknown)[0]!r}")
    for field, value in limits.items():
        if value is not None and (not isinstance(value, int) or isinstance(value, bool)):
            raise InvalidInput(f"{field} must be a whole number, or empty")


@transaction.atomic
def create_org(*, org_id: str, name: str, actor: str, prompt: str = "", **limits: int | None) -> Org:
    problem = id_problem(org_id)
    if problem:
        raise InvalidOrgID(f"invalid org ID: {problem}")
    _check_limits(limits)
    org = Org(id=org_id, name=(name or "").strip(), prompt=prompt, **limits)
    _full_clean(org)
    exists = InvalidInput(f"org {org_id!r} exists already")
    if Org.objects.filter(pk=org_id).exists():
        raise exists
    try:
        # A savepoint: two operators creating the same org at once get a clear error for the
        # second, not an IntegrityError (and the outer transaction stays usable).
        with transaction.atomic():
            org.save(force_insert=True)
    except IntegrityError:
        raise exists from None
    audit.write(
        [
            audit.entry(
                "org_created", actor=actor, org_id=org.id, details={"name": org.name, **limits, "prompt_sha256": sha256(prompt)}
            )
        ]
    )
    return org


@transaction.atomic
def update_org(*, org_id: str, actor: str, name: str | None = None, prompt: str | None = None, **limits: int | None) -> Org:
    """Change an org's name, prompt or limits; audits the old and new values (prompts by hash)."""
    _check_limits(limits)
    org = Org.objects.select_for_update().filter(pk=org_id).first() if id_problem(org_id) is None else None
    if org is None:
        raise InvalidOrgID(f"invalid org ID: unknown org {audit.safe_repr(org_id)}")
    changes: dict[str, Any] = {}
    if name is not None and name.strip() != org.name:
        changes["name"] = {"old": org.name, "new": name.strip()}
        org.name = name.strip()
    if prompt is not None and prompt != org.prompt:
        changes["prompt_sha256"] = {"old": sha256(org.prompt), "new": sha256(prompt)}
        org.prompt = prompt
    for field, value in limits.items():
        if getattr(org, field) != value:
            changes[field] = {"old": getattr(org, field), "new": value}
            setattr(org, field, value)
    if changes:
        _full_clean(org, exclude=["id"])
        org.save(update_fields=[f if f != "prompt_sha256" else "prompt" for f in changes])
        audit.write([audit.entry("org_updated", actor=actor, org_id=org.id, details=changes)])
    return org


# --- prompt layers (the admin edits them through these) -----------------------------------


def _layer_details(layer: PromptLayer) -> dict[str, Any]:
    return {
        "layer_id": layer.pk,
        "name": layer.name,
        "scope": layer.scope,
        "org": layer.org_id or "",
        "user_id": layer.user_id,
        "priority": layer.priority,
        "enabled": layer.enabled,
        "version": layer.version,
        "body_sha256": sha256(layer.body),
    }


@transaction.atomic
def save_prompt_layer(*, layer: PromptLayer, actor: str) -> PromptLayer:
    """Insert or update a layer (validated by the caller's form): bumps ``version`` when the
    body changes and audits the change (bodies by hash; they may be long)."""
    _full_clean(layer)
    layer.updated_at = timezone.now()
    if layer.pk is None:
        layer.version = 1
        layer.save(force_insert=True)
        event = "prompt_layer_created"
    else:
        old = PromptLayer.objects.select_for_update().get(pk=layer.pk)
        if old.body != layer.body:
            layer.version = old.version + 1
        layer.save()
        event = "prompt_layer_updated"
    audit.write(
        [audit.entry(event, actor=actor, org_id=layer.org_id or "", user_id=layer.user_id, details=_layer_details(layer))]
    )
    return layer


@transaction.atomic
def delete_prompt_layer(*, layer: PromptLayer, actor: str) -> None:
    details = _layer_details(layer)
    PromptLayer.objects.filter(pk=layer.pk).delete()
    audit.write([audit.entry("prompt_layer_deleted", actor=actor, org_id=details["org"], user_id=layer.user_id, details=details)])


# --- dashboard reads that span several tables ----------------------------------------------


def orgs_with_usage(*, limited_only: bool = False) -> QuerySet[Org]:
    """Every org annotated with ``active`` (its number of active sessions), ``has_prompt`` and
    ``total_active`` (all active sessions, from the trigger-kept global counter), in one
    query: a correlated count per org served by session_org_status_user_idx (an index-only
    range per org). With ``limited_only`` the count runs only for orgs that have a session
    limit (the dashboard headline, read on every poll); the others show 0."""
    active = (
        AgentSession.objects.active().filter(org_id=OuterRef("pk")).order_by().values("org_id").annotate(n=Count("*")).values("n")
    )
    count: Any = Coalesce(Subquery(active), 0)
    if limited_only:
        count = Case(When(max_sessions__isnull=False, then=count), default=Value(0))
    has_prompt = ExpressionWrapper(~Q(prompt=""), output_field=BooleanField())
    total = Coalesce(Subquery(LimitLock.objects.filter(pk=1).values("active_sessions")[:1]), 0)
    return Org.objects.defer("prompt").annotate(active=count, has_prompt=has_prompt, total_active=total).order_by("id")


def org_usage() -> list[Org]:
    return list(orgs_with_usage())
