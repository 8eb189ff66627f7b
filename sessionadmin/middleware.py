"""Request guards that apply to every page, the admin and the API alike."""

from __future__ import annotations

from collections.abc import Callable

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
