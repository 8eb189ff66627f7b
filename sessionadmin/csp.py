"""A strict Content-Security-Policy on every response.

One fixed policy from ``settings.SESSIONADMIN_CSP`` (directive -> sources), sent unless a view
already set its own header. No nonces: no page has an inline script or style (htmx's own
indicator style is switched off by the ``htmx-config`` meta tag in ``base.html``; widths are set
through the CSSOM by ``dashboard.js``), and the Django admin of 5.2 has none either. Django 6.0
ships a CSP middleware of its own; on that upgrade this module gives way to it.
"""

from __future__ import annotations

from collections.abc import Callable

from django.conf import settings
from django.http import HttpRequest, HttpResponseBase

HEADER = "Content-Security-Policy"


def policy() -> str:
    return "; ".join(f"{name} {' '.join(sources)}" for name, sources in settings.SESSIONADMIN_CSP.items())


class ContentSecurityPolicyMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponseBase]) -> None:
        self.get_response = get_response
        self.header = policy()

    def __call__(self, request: HttpRequest) -> HttpResponseBase:
        response = self.get_response(request)
        if HEADER not in response:
            response[HEADER] = self.header
        return response
