"""Request guards that apply to every page, the admin and the API alike."""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Callable
from typing import Any

from django.http import HttpRequest, HttpResponse, HttpResponseBadRequest, JsonResponse

NUL_MESSAGE = "the request contains a NUL character, which no field accepts"


class RejectNulMiddleware:
    """A NUL character in the path or the query string is refused with a 400 before any view
    runs: no id, filter or search may contain one, and PostgreSQL refuses it in any text it is
    asked to compare, which would otherwise surface as a 500 from the first query that uses it
    (an admin filter, an org id in a URL). Form bodies are checked by the form fields
    themselves (Django's ProhibitNullCharactersValidator) and JSON bodies by the API schemas."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        # The raw query string: a NUL arrives percent-encoded, and parsing it here would raise
        # for too many fields before the view could answer that in its own format.
        if "\x00" in request.path or "%00" in request.META.get("QUERY_STRING", ""):
            if request.path.startswith("/api/"):
                return JsonResponse({"error": {"code": "invalid_request", "message": NUL_MESSAGE}}, status=400)
            return HttpResponseBadRequest(f"Bad request: {NUL_MESSAGE}.", content_type="text/plain; charset=utf-8")
        return self.get_response(request)


class RequestMetricsMiddleware:
    """``sessionadmin_http_request_duration_seconds{handler,method,code}``: the handler is the
    resolved URL name (never the path, which holds session ids), every admin page is "admin",
    a request nothing resolved is "unmatched"; methods outside the known few are "other", and the
    code is its class (2xx...5xx). Children are cached: this runs on every heartbeat."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        from django.urls import get_resolver

        from sessionadmin import metrics

        self.get_response = get_response
        self.histogram = metrics.http_request_duration
        self.methods = frozenset(metrics.HTTP_METHODS)
        self.children: dict[tuple[str, str, str], Any] = {}
        metrics.precreate_http(sorted(_url_names(get_resolver())))

    def __call__(self, request: HttpRequest) -> HttpResponse:
        started = time.perf_counter()
        response = self.get_response(request)
        elapsed = time.perf_counter() - started
        match = request.resolver_match
        if match is None:
            handler = "unmatched"
        elif match.namespaces and match.namespaces[0] == "admin":
            handler = "admin"
        else:
            handler = match.url_name or "unmatched"
        method = request.method if request.method in self.methods else "other"
        key = (handler, str(method), _CODE_CLASSES.get(response.status_code // 100, "5xx"))
        child = self.children.get(key)
        if child is None:
            child = self.children[key] = self.histogram.labels(*key)
        child.observe(elapsed)
        return response


_CODE_CLASSES = {1: "2xx", 2: "2xx", 3: "3xx", 4: "4xx", 5: "5xx"}


def _url_names(resolver: Any) -> set[str]:
    """Every URL name outside the admin (the handler label's values)."""
    names: set[str] = set()
    for pattern in resolver.url_patterns:
        if hasattr(pattern, "url_patterns"):
            if getattr(pattern, "namespace", None) != "admin":
                names |= _url_names(pattern)
        elif pattern.name:
            names.add(pattern.name)
    return names


class RequestIdMiddleware:
    """Gives every request an id (``X-Request-ID`` when the proxy sent a sane one, else a new
    one), sets it for the log lines of the request (sessionadmin/logs.py), and echoes it back."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        from sessionadmin import logs

        incoming = request.META.get("HTTP_X_REQUEST_ID", "")
        request_id = incoming if _REQUEST_ID.fullmatch(incoming) else uuid.uuid4().hex
        # Not reset on the way out: Django logs a 4xx/5xx ("Not Found: ...") after the last
        # middleware returns. The ids are cleared when the request finishes (logs.clear_ids).
        logs.request_id.set(request_id)
        logs.session_id.set("")
        response = self.get_response(request)
        response["X-Request-ID"] = request_id
        return response

    def process_view(self, request: HttpRequest, view: Any, args: Any, kwargs: dict[str, Any]) -> None:
        # Pages and API calls about one session name it in the URL: their lines carry its id.
        if "session_id" in kwargs:
            from sessionadmin import logs

            logs.session_id.set(str(kwargs["session_id"]))


_REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{1,64}", re.ASCII)


class NoContentTypeOn204Middleware:
    """A 204 has no body, so no Content-Type: Django (and django-ninja through it) would send its
    default ``text/html``, which tells a client there is HTML to read."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        response = self.get_response(request)
        if response.status_code == 204 and response.has_header("Content-Type"):
            del response["Content-Type"]
        return response
