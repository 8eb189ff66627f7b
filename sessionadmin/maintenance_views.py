"""The maintenance page: liveness of worker and beat, recent runs, a preview of what the next
inactivity cleanup would end (and why), and "run now" for operators (audited)."""

from __future__ import annotations

from django.conf import settings
from django.contrib import messages
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_GET, require_POST

from sessionadmin import maintenance
from sessionadmin.views import actor_of, can_operate, operator_required, viewer_required

# Outcome -> an existing badge style of the dashboard.
OUTCOME_BADGES = {"ok": "active", "partial": "terminating", "failed": "failed", "running": "ended"}
TASK_LABELS = {
    maintenance.INACTIVITY_CLEANUP: "Inactivity cleanup",
    maintenance.WORKSPACE_REMOVAL: "Workspace removal",
    maintenance.RECONCILIATION: "Reconciliation",
    maintenance.HISTORY_PURGE: "History purge",
    maintenance.MCP_HEALTH: "MCP health",
}


@require_GET
@viewer_required
def maintenance_page(request: HttpRequest) -> HttpResponse:
    show = request.GET.get("runs", "")
    show = show if show in TASK_LABELS or show == maintenance.ROUTINE else ""
    runs = maintenance.recent_runs(show=show)
    for run in runs:
        run.badge = OUTCOME_BADGES.get(run.outcome, "ended")  # type: ignore[attr-defined]
        run.label = TASK_LABELS.get(run.task, run.task)  # type: ignore[attr-defined]
        run.nonzero = {k: v for k, v in run.counts.items() if v}  # type: ignore[attr-defined]
    preview = maintenance.preview_cleanup()
    context = {
        "runs": runs,
        "preview": preview,
        "threshold_seconds": int(preview.threshold.total_seconds()),
        "liveness": maintenance.liveness(),
        "runnable": [(name, TASK_LABELS[name]) for name in maintenance.RUNNABLE_NOW],
        "show": show,
        "run_filters": [
            ("", "All but routine health checks"),
            (maintenance.ROUTINE, "All, with routine health checks"),
            *TASK_LABELS.items(),
        ],
        "can_operate": can_operate(request),
        "stdio_sandbox": settings.SESSIONADMIN_STDIO_SANDBOX,
    }
    template = "sessionadmin/maintenance.html#runs" if getattr(request, "htmx", False) else "sessionadmin/maintenance.html"
    return render(request, template, context)


@require_POST
@operator_required
def maintenance_run(request: HttpRequest) -> HttpResponse:
    task = request.POST.get("task", "")
    if task not in maintenance.RUNNABLE_NOW:
        messages.error(request, "Unknown maintenance task.")
        return redirect("maintenance")
    try:
        maintenance.request_run(task, actor=actor_of(request))
    except maintenance.BrokerUnavailable as exc:
        messages.error(request, f"{TASK_LABELS[task]} was not started: {exc}.")
    else:
        messages.success(request, f"{TASK_LABELS[task]} queued; its run appears below when a worker picks it up.")
    return redirect("maintenance")
