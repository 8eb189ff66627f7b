"""Dashboard forms. The rules are the models': forms that edit a model are ModelForms, the others
build their fields from the model's fields (``formfield()``), so validators and lengths live in
one place. Nothing is cut silently: inputs carry no ``maxlength``, so an over-long value
reaches the server and comes back with a message instead of being truncated by the browser."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from typing import Any

from django import forms
from django.core.validators import MaxLengthValidator, MaxValueValidator, MinValueValidator
from django.utils import timezone

from sessionadmin import prompts
from sessionadmin.models import AgentSession, Org
from sessionadmin.validation import MAX_ID_LENGTH

STATUS_FILTERS = [
    ("live", "Live (active + terminating)"),
    ("active", "Active"),
    ("terminating", "Terminating"),
    ("ended", "Ended"),
    ("failed", "Failed"),
    ("all", "All"),
]
# Sort key -> ordering. Creation times are unique in practice (one insert per session), so
# they need no tie-breaker, which lets PostgreSQL read (status, -created_at) in order; activity
# times can tie, so those sorts end with the id (session_live_active_idx has it).
SORTS: dict[str, list[str]] = {
    "-created": ["-created_at"],
    "created": ["created_at"],
    "-last_active": ["-last_active_at", "-id"],
    "last_active": ["last_active_at", "id"],
    "user": ["user_id", "-created_at"],
    "-user": ["-user_id", "-created_at"],
    "org": ["org_id", "-created_at"],
    "-org": ["-org_id", "-created_at"],
    "status": ["status", "-created_at"],
    "-status": ["-status", "-created_at"],
}


def model_field(model: Any, name: str, **options: Any) -> Any:
    """The form field of a model field, with the model field's own validators (a form field
    made by ``formfield()`` has its length and choices but not the model's validators, which
    only a ModelForm runs). Length and range checks come with the form field already."""
    field = model._meta.get_field(name)
    own = [v for v in field.validators if not isinstance(v, MaxLengthValidator | MinValueValidator | MaxValueValidator)]
    return field.formfield(validators=own, **options)


def model_bounds(form: forms.BaseForm, model: Any) -> None:
    """Give the number inputs of a ModelForm the model's own bounds (``min``/``max`` attributes
    and the form-level check), instead of the database column's range."""
    for name, form_field in form.fields.items():
        if not isinstance(form_field, forms.IntegerField):
            continue
        for validator in model._meta.get_field(name).validators:
            if isinstance(validator, MinValueValidator):
                form_field.min_value = max(validator.limit_value, form_field.min_value or validator.limit_value)
                form_field.widget.attrs["min"] = form_field.min_value
            elif isinstance(validator, MaxValueValidator):
                form_field.max_value = min(validator.limit_value, form_field.max_value or validator.limit_value)
                form_field.widget.attrs["max"] = form_field.max_value
        form_field.validators = [v for v in form_field.validators if not isinstance(v, MinValueValidator | MaxValueValidator)]
        if form_field.min_value is not None:
            form_field.validators.append(MinValueValidator(form_field.min_value))
        if form_field.max_value is not None:
            form_field.validators.append(MaxValueValidator(form_field.max_value))


class NoTruncation:
    """Labels without Django's trailing colon, and no ``maxlength`` on inputs: the length rule
    is checked on the server, with a message, instead of the browser cutting the value."""

    fields: dict[str, forms.Field]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("label_suffix", "")
        super().__init__(*args, **kwargs)
        for field in self.fields.values():
            field.widget.attrs.pop("maxlength", None)


class DashboardForm(NoTruncation, forms.Form):
    pass


class DashboardModelForm(NoTruncation, forms.ModelForm):
    pass


class SessionFilterForm(DashboardForm):
    """The list's query string. Invalid values fall back to the defaults instead of erroring:
    a bookmarked URL should never break the home page."""

    q = forms.CharField(required=False, max_length=MAX_ID_LENGTH, label="Search")
    org = forms.CharField(required=False, max_length=MAX_ID_LENGTH)
    user = forms.CharField(required=False, max_length=MAX_ID_LENGTH)
    status = forms.ChoiceField(required=False, choices=STATUS_FILTERS)
    sort = forms.ChoiceField(required=False, choices=[(k, k) for k in SORTS])
    page = forms.IntegerField(required=False, min_value=1, max_value=100_000)

    def values(self) -> dict[str, Any]:
        self.is_valid()  # cleaned_data keeps the fields that are valid on their own
        data = self.cleaned_data
        return {
            "q": (data.get("q") or "").strip(),
            "org": (data.get("org") or "").strip(),
            "user": (data.get("user") or "").strip(),
            "status": data.get("status") or "live",
            "sort": data.get("sort") or "-created",
            "page": data.get("page") or 1,
        }


def parse_variables(text: str) -> dict[str, str]:
    """``name=value`` lines; blank lines and ``#`` comments are ignored."""
    out: dict[str, str] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, value = line.partition("=")
        if not sep:
            raise forms.ValidationError(f"Line {number}: expected name=value.", code="invalid_variables")
        out[name.strip()] = value.strip()
    return out


class SessionCreateForm(DashboardForm):
    # A text input with the page's org datalist: type-ahead over hundreds of orgs; an unknown
    # org is reported by the manager on the field.
    org = model_field(
        Org, "id", label="Org", widget=forms.TextInput(attrs={"list": "org-ids", "placeholder": "org id", "autocomplete": "off"})
    )
    user_id = model_field(AgentSession, "user_id", label="User id")
    variables = forms.CharField(
        required=False,
        label="Prompt variables",
        widget=forms.Textarea(attrs={"rows": 3, "placeholder": "team=core\nlanguage=en"}),
        help_text="Optional, one name=value per line.",
    )

    def clean_variables(self) -> dict[str, str]:
        return parse_variables(self.cleaned_data.get("variables") or "")


class ReasonForm(DashboardForm):
    reason = model_field(
        AgentSession,
        "end_reason",
        required=True,
        widget=forms.TextInput(attrs={"placeholder": "Why?"}),
        error_messages={"required": "A reason is required."},
    )

    def clean_reason(self) -> str:
        reason = self.cleaned_data["reason"].strip()
        if not reason:
            raise forms.ValidationError("A reason is required.", code="required")
        return reason


class SessionIdsField(forms.Field):
    """Checked rows of the list: a list of session UUIDs (unknown ones are simply not found)."""

    widget = forms.MultipleHiddenInput
    default_error_messages = {"required": "Select at least one session.", "invalid": "Invalid session id."}

    def to_python(self, value: Any) -> list[uuid.UUID]:
        if not value:
            return []
        out: list[uuid.UUID] = []
        for item in value if isinstance(value, list | tuple) else [value]:
            try:
                out.append(uuid.UUID(str(item)))
            except ValueError:
                raise forms.ValidationError(self.error_messages["invalid"], code="invalid")
        if len(out) > 500:
            raise forms.ValidationError("At most 500 sessions at a time.", code="too_many")
        return list(dict.fromkeys(out))


class BulkKillForm(ReasonForm):
    ids = SessionIdsField()
    next = forms.CharField(required=False, widget=forms.HiddenInput)


class PinForm(DashboardForm):
    until = forms.DateTimeField(
        label="Pinned until",
        widget=forms.DateTimeInput(attrs={"type": "datetime-local"}, format="%Y-%m-%dT%H:%M"),
        input_formats=["%Y-%m-%dT%H:%M", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M", "%Y-%m-%d"],
    )
    reason = model_field(
        AgentSession,
        "pin_reason",
        required=True,
        widget=forms.TextInput(attrs={"placeholder": "Why keep it?"}),
        error_messages={"required": "A reason is required."},
    )

    def __init__(self, *args: Any, now: datetime | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.now = now

    def clean_until(self) -> datetime:
        until: datetime = self.cleaned_data["until"]
        if until <= (self.now or timezone.now()):
            raise forms.ValidationError("The pin must end in the future.", code="past")
        return until

    def clean_reason(self) -> str:
        reason = self.cleaned_data["reason"].strip()
        if not reason:
            raise forms.ValidationError("A reason is required.", code="required")
        return reason


class PromptForm(DashboardForm):
    prompt = model_field(
        AgentSession,
        "system_prompt",
        required=False,
        strip=False,
        widget=forms.Textarea(attrs={"rows": 12, "spellcheck": "false"}),
    )


class OrgForm(DashboardModelForm):
    """Create (with ``id``) or edit (``id`` shown read-only) an org."""

    class Meta:
        model = Org
        fields = ["id", "name", "max_sessions", "max_sessions_per_user", "idle_timeout_seconds", "prompt"]
        labels = {
            "id": "Org id",
            "max_sessions": "Max sessions",
            "max_sessions_per_user": "Max per user",
            "idle_timeout_seconds": "Idle timeout (s)",
            "prompt": "Org prompt",
        }
        widgets = {"prompt": forms.Textarea(attrs={"rows": 6})}

    def __init__(self, *args: Any, editing: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if editing:
            del self.fields["id"]
        self.fields["prompt"].strip = False  # type: ignore[attr-defined]
        self.fields["prompt"].help_text = prompts.SYNTAX_HINT
        model_bounds(self, Org)

    def limits(self) -> dict[str, int | None]:
        return {f: self.cleaned_data.get(f) for f in ("max_sessions", "max_sessions_per_user", "idle_timeout_seconds")}


def initial_pin_until(session: AgentSession) -> str:
    base = session.pinned_until or timezone.now() + timedelta(days=1)
    return timezone.localtime(base).strftime("%Y-%m-%dT%H:%M")
