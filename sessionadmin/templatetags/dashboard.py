"""Small template helpers of the dashboard: relative times with the exact time on hover, and
status badges."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any

from django import template
from django.utils import timezone
from django.utils.html import escape, format_html
from django.utils.safestring import mark_safe

register = template.Library()


def relative(value: datetime, now: datetime) -> str:
    """ "3 min ago" / "in 2 h": short, so that a page of rows stays small."""
    seconds = (now - value).total_seconds()
    past = seconds >= 0
    seconds = abs(seconds)
    if seconds < 45:
        return "just now" if past else "in a moment"
    for size, unit in ((86400 * 365, "y"), (86400 * 30, "mo"), (86400, "d"), (3600, "h"), (60, "min")):
        if seconds >= size:
            amount = round(seconds / size) if size == 60 else int(seconds // size)
            text = f"{amount} {unit}"
            return f"{text} ago" if past else f"in {text}"
    return "just now"


def _time_html(value: datetime, now: datetime | None = None) -> str:
    # Built without format_html: both parts are made of digits, letters and spaces only, and
    # this runs several times per row of every list poll.
    exact = timezone.localtime(value).strftime("%Y-%m-%d %H:%M:%S %Z")
    return mark_safe(f'<time title="{escape(exact)}">{relative(value, now or timezone.now())}</time>')  # noqa: S308


@register.simple_tag
def reltime(value: datetime | None, empty: str = "—") -> str:
    """``<time>`` showing "3 min ago" / "in 2 h", the exact local time on hover (title)."""
    if value is None:
        return format_html('<span class="muted">{}</span>', empty)
    return _time_html(value)


@register.filter(is_safe=True)
def ago(value: datetime | None) -> str:
    """The filter form of ``reltime`` (cheaper than a tag in a loop of rows)."""
    if value is None:
        return mark_safe('<span class="muted">—</span>')
    return _time_html(value)


@register.simple_tag
def badge(status: str, label: str = "") -> str:
    return format_html('<span class="badge badge-{}">{}</span>', status, label or status)


@register.filter
def filesize(value: int) -> str:
    size = float(value)
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TB"


@register.simple_tag
def sort_link(current: str, key: str, label: str, query: str, descending_first: bool = False) -> str:
    """A column header that sorts by ``key`` and toggles the direction on a second click."""
    first = f"-{key}" if descending_first else key
    other = key if first.startswith("-") else f"-{key}"
    target = other if current == first else first
    arrow = ""
    if current.lstrip("-") == key:
        arrow = " ↓" if current.startswith("-") else " ↑"
    href = f"?{query}&sort={target}" if query else f"?sort={target}"
    return format_html('<a class="sort{}" href="{}">{}{}</a>', " sorted" if arrow else "", href, label, arrow)


@register.filter
def ms(milliseconds: int | float | None) -> str:
    """A wait as people read it: "850 ms", "1.5 s"."""
    value = float(milliseconds or 0)
    return f"{value:.0f} ms" if value < 1000 else f"{value / 1000:.1f} s"


@register.filter
def duration(seconds: int | None) -> str:
    if not seconds:
        return ""
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds // size} {unit}"
    return f"{seconds} s"


# Ids longer than this may be cut by their column (the table's cells end in an ellipsis): they
# carry their full value in a title. Shorter ones fit, and the polled partial stays small.
CUT_AT = 20


def _title(value: str) -> str:
    return f' title="{escape(value)}"' if len(value) > CUT_AT else ""


@register.simple_tag
def session_rows(sessions: Iterable[Any], can_operate: bool, detail_prefix: str) -> str:
    """The ``<tr>`` rows of the session list. Built in Python rather than with a template loop:
    the same markup at a fraction of the cost, and it runs on every poll of every open
    dashboard. Every value from the database is escaped."""
    now = timezone.now()
    rows = []
    for s in sessions:
        check = ""
        if can_operate:
            box = (
                f'<input type="checkbox" name="ids" value="{s.id}" aria-label="select {s.short_id}">'
                if s.status == "active"
                else ""
            )
            check = f"<td>{box}</td>"
        if s.pinned:
            cleanup = f'<span class="pin">pinned until {_time_html(s.pinned_until, now)}</span>'
        elif s.deadline:
            cleanup = _time_html(s.deadline, now)
        else:
            cleanup = "—"
        status = escape(s.status)
        rows.append(
            f'<tr>{check}<td><a href="{escape(detail_prefix)}{s.id}/">{s.short_id}</a></td>'
            f"<td{_title(s.user_id)}>{escape(s.user_id)}</td><td{_title(s.org_id)}>{escape(s.org_id)}</td>"
            f'<td><span class="badge badge-{status}">{status}</span></td>'
            f"<td>{_time_html(s.created_at, now)}</td><td>{_time_html(s.last_active_at, now)}</td>"
            f"<td>{cleanup}</td><td>{int(s.mcp_count)}</td></tr>"
        )
    return mark_safe("\n".join(rows))  # noqa: S308


# The details of an audit entry worth a line on the session page, in reading order: what it was
# about (tool, client, server), how it went, and why. Everything else stays in the admin.
AUDIT_FACTS = (
    ("tool", "tool"),
    ("client_id", "client"),
    ("server", "server"),
    ("outcome", "outcome"),
    ("duration_ms", "took (ms)"),
    ("kind", "error kind"),
    ("limit", "limit hit"),
    ("current", "current"),
    ("maximum", "maximum"),
    ("until", "until"),
    ("status", "status"),
)


@register.simple_tag
def audit_facts(details: Any) -> list[tuple[str, str]]:
    """(label, value) pairs of an entry's key details; values are plain text (the template
    escapes them), cut to a readable length."""
    if not isinstance(details, dict):
        return []
    facts = []
    for key, label in AUDIT_FACTS:
        value = details.get(key)
        if value not in (None, "", [], {}):
            facts.append((label, str(value)[:300]))
    return facts
