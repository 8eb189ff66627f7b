"""``python manage.py mcp_gateway [--bind HOST:PORT]``: run the MCP gateway in the foreground.

It holds one live connection per attached MCP client, serves every session's MCP endpoint at
``{SESSIONADMIN_GATEWAY_URL}/sessions/{id}/mcp`` and the internal API of web processes and
workers. Ctrl-C / SIGTERM stops it (every upstream connection is closed, stdio servers
stopped). ``--bind 127.0.0.1:0`` picks a free port; with a public URL ending in ``:0`` the
URL takes that port too. The line ``PORT <n>`` on stdout says where it listens.
"""

from __future__ import annotations

import os
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from django.conf import settings
from django.core.management.base import BaseCommand, CommandParser


class Command(BaseCommand):
    help = "Run the MCP gateway (live upstream connections and one MCP endpoint per session)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--bind", default=settings.SESSIONADMIN_GATEWAY_BIND, help="HOST:PORT (default from settings)")
        parser.add_argument("--db-threads", type=int, default=int(os.environ.get("SESSIONADMIN_GATEWAY_DB_THREADS", "4")))

    def handle(self, *args: Any, bind: str, db_threads: int, **options: Any) -> None:
        import anyio

        from sessionadmin.gateway.app import bind_socket, serve
        from sessionadmin.gateway.core import Gateway
        from sessionadmin.gateway.db import Database

        sock = bind_socket(bind)
        port = sock.getsockname()[1]
        url = settings.SESSIONADMIN_GATEWAY_URL
        parts = urlsplit(url)
        if parts.port == 0:
            url = urlunsplit((parts.scheme, f"{parts.hostname}:{port}", parts.path, "", "")).rstrip("/")
        db = Database(threads=max(1, db_threads))
        gateway = Gateway(
            url=url,
            timeout=float(settings.SESSIONADMIN_MCP_TIMEOUT_SECONDS),
            call_timeout=float(settings.SESSIONADMIN_MCP_CALL_TIMEOUT_SECONDS),
            max_result_bytes=int(settings.SESSIONADMIN_MCP_MAX_RESULT_BYTES),
            db=db,
        )

        def ready() -> None:
            self.stdout.write(f"PORT {port}")
            self.stdout.write(f"MCP gateway listening on {bind.rsplit(':', 1)[0]}:{port}, sessions at {url}/sessions/<id>/mcp")
            self.stdout.flush()

        try:
            anyio.run(serve, gateway, sock, ready)
        except KeyboardInterrupt:
            pass
        finally:
            db.shutdown()
            sock.close()
            from sessionadmin import tracing

            tracing.shutdown()  # spans still buffered go out
