"""``/metrics``: the web tier's Prometheus metrics (its gunicorn workers and the Celery workers of
this host, merged; see sessionadmin/metrics.py), for a scraper with a credential."""

from __future__ import annotations

from django.contrib.auth.decorators import login_not_required
from django.http import HttpRequest, HttpResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_GET

from sessionadmin import metrics


def scrape_refusal(request: HttpRequest) -> HttpResponse | None:
    """None when the scrape may go on: the client's address is listed, or its bearer token may
    read metrics. No credential is 401; a token without the permission is 403."""
    if metrics.allowed_address(request.META.get("REMOTE_ADDR", "")):
        return None
    authorization = request.META.get("HTTP_AUTHORIZATION", "")
    if not authorization:
        response = HttpResponse("a token with the metrics permission is required\n", status=401, content_type="text/plain")
        response["WWW-Authenticate"] = 'Bearer realm="sessionadmin metrics"'
        return response
    if not metrics.token_allows(authorization):
        return HttpResponse("this token may not read metrics\n", status=403, content_type="text/plain")
    return None


# No session cookie is involved (a token or an address), so no CSRF check either.
@login_not_required
@csrf_exempt
@require_GET
def metrics_view(request: HttpRequest) -> HttpResponse:
    refusal = scrape_refusal(request)
    if refusal is not None:
        return refusal
    body, content_type = metrics.exposition(metrics.registry_for(also=("worker",), extra=[metrics.DatabaseCollector()]))
    return HttpResponse(body, content_type=content_type)
