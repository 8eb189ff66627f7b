"""The outbound URL policy (sessionadmin.netpolicy) and how MCP connections obey it
(mcp_client's guarded transport): internal addresses refused unless listed, checked again on
the resolved address of every connection, redirects neither followed nor reflected, and errors
that do not tell internal services apart."""

from __future__ import annotations

import ipaddress
import socket
import threading
from typing import Any
from unittest import mock

from django.test import SimpleTestCase

from sessionadmin import mcp_client, netpolicy
from sessionadmin.mcp_client import McpError, Target
from sessionadmin.netpolicy import Allowed, PolicyRefused
from tests.mcp_servers import RunningServer

NOTHING = Allowed.parse([])


def refusal(url: str, allowed: Allowed = NOTHING, **kwargs: Any) -> str | None:
    try:
        netpolicy.check_url(url, allowed, **kwargs)
    except PolicyRefused as exc:
        return str(exc)
    return None


class UrlPolicyTests(SimpleTestCase):
    def test_it_refuses_internal_addresses(self) -> None:
        cases = {
            "http://127.0.0.1:6379/": "127.0.0.1 is a loopback address",
            "http://127.1.2.3/mcp": "is a loopback address",
            "http://[::1]:8000/mcp": "::1 is a loopback address",
            "http://10.0.0.5/mcp": "is a private address",
            "http://172.16.9.1/mcp": "is a private address",
            "http://192.168.1.10/mcp": "is a private address",
            "http://169.254.10.1/mcp": "is a link-local address",
            "http://[fe80::1]/mcp": "is a link-local address",
            "http://[fe80::1%25eth0]/mcp": "is a link-local address",
            "http://[fd12:3456::1]/mcp": "is a unique-local address",
            "http://100.64.0.1/mcp": "is a shared (CGNAT) address",
            "http://169.254.169.254/latest/meta-data/": "is a cloud metadata address",
            "http://[fd00:ec2::254]/": "is a cloud metadata address",
            "http://100.100.100.200/": "is a cloud metadata address",
            "http://0.0.0.0:8000/": "is an unspecified (this-network) address",
            "http://[::]:8000/": "is an unspecified address",
            "http://224.0.0.1/": "is a multicast address",
            "http://[ff02::1]/": "is a multicast address",
            "http://198.18.0.1/": "is a reserved or special-purpose address",
        }
        for url, reason in cases.items():
            with self.subTest(url):
                message = refusal(url)
                self.assertIsNotNone(message)
                self.assertIn(reason, message or "")
                self.assertIn("must be listed in SESSIONADMIN_MCP_ALLOWED_HOSTS", message or "")

    def test_it_judges_ipv6_forms_by_the_ipv4_address_inside(self) -> None:
        cases = {
            "http://[::ffff:127.0.0.1]/": "a loopback address (in IPv6 form)",
            "http://[::ffff:169.254.169.254]/": "a cloud metadata address (in IPv6 form)",
            "http://[::ffff:10.0.0.1]/": "a private address (in IPv6 form)",
            "http://[::127.0.0.1]/": "a loopback address (in IPv6 form)",
            "http://[2002:a9fe:a9fe::1]/": "a cloud metadata address (in IPv6 form)",
            "http://[64:ff9b::192.168.0.1]/": "a private address (in IPv6 form)",
            "http://[2001:0:4136:e378:8000:63bf:f5ff:fffe]/": "a private address (in IPv6 form)",  # Teredo of 10.0.0.1
        }
        for url, reason in cases.items():
            with self.subTest(url):
                self.assertIn(reason, refusal(url) or "")
        self.assertIsNone(refusal("http://[::ffff:8.8.8.8]/"))

    def test_it_allows_public_addresses(self) -> None:
        for url in ("http://8.8.8.8/mcp", "https://[2001:4860:4860::8888]/mcp", "https://93.184.216.34:8443/mcp"):
            with self.subTest(url):
                self.assertIsNone(refusal(url))

    def test_it_allows_what_is_listed(self) -> None:
        allowed = Allowed.parse(["127.0.0.1", " 10.1.0.0/16 ", "MCP.Internal.", "[::1]"])
        self.assertIsNone(refusal("http://127.0.0.1:8000/mcp", allowed))
        self.assertIsNone(refusal("http://10.1.200.3/mcp", allowed))
        self.assertIsNone(refusal("http://[::1]:8000/mcp", allowed))
        self.assertIsNone(refusal("http://mcp.internal/mcp", allowed, resolver=lambda host: [ipaddress.ip_address("10.9.9.9")]))
        self.assertIn("10.2.0.1 is a private address", refusal("http://10.2.0.1/mcp", allowed) or "")
        self.assertIn("127.0.0.2 is a loopback address", refusal("http://127.0.0.2/mcp", allowed) or "")

    def test_a_host_name_that_resolves_to_loopback_is_refused(self) -> None:
        # "localhost" comes from /etc/hosts: the real resolver, no injected fault.
        self.assertIn("localhost resolves to 127.0.0.1, which is a loopback address", refusal("http://localhost:8000/mcp") or "")
        # ...and so is a number that the resolver reads as 127.0.0.1.
        self.assertIn("resolves to 127.0.0.1", refusal("http://2130706433/mcp") or "")
        self.assertIsNone(refusal("http://localhost:8000/mcp", Allowed.parse(["127.0.0.1"])))

    def test_every_resolved_address_must_pass(self) -> None:
        def resolver(host: str) -> list[Any]:
            return [ipaddress.ip_address("93.184.216.34"), ipaddress.ip_address("10.0.0.7")]

        self.assertIn("mixed.example resolves to 10.0.0.7", refusal("http://mixed.example/", resolver=resolver) or "")

    def test_metadata_host_names_are_refused_by_name(self) -> None:
        def resolver(host: str) -> list[Any]:
            raise OSError("no such host")

        for host in ("metadata.google.internal", "METADATA.google.internal.", "instance-data"):
            with self.subTest(host):
                self.assertIn("is a cloud metadata host", refusal(f"http://{host}/computeMetadata/v1/", resolver=resolver) or "")

    def test_a_name_that_does_not_resolve_yet_passes_at_save_time(self) -> None:
        self.assertIsNone(refusal("http://no-such-host.invalid/mcp"))


class TinyHttp:
    """A one-thread HTTP server on 127.0.0.1 that answers every request with ``response``
    (None: close without answering; "hang": never answer) and records the requests."""

    def __init__(self, response: bytes | str | None) -> None:
        self.response = response
        self.requests: list[bytes] = []
        self.connections = 0
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(0.1)
        self.port = self.sock.getsockname()[1]
        self.stopped = threading.Event()
        self.open: list[socket.socket] = []
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def url(self, path: str = "/mcp") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def serve(self) -> None:
        while not self.stopped.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self.connections += 1
            conn.settimeout(5)
            data = b""
            try:
                while b"\r\n\r\n" not in data:
                    chunk = conn.recv(65536)
                    if not chunk:
                        break
                    data += chunk
            except OSError:
                pass
            self.requests.append(data)
            if self.response == "hang":
                self.open.append(conn)
                continue
            if isinstance(self.response, bytes):
                try:
                    conn.sendall(self.response)
                except OSError:
                    pass
            conn.close()

    def stop(self) -> None:
        self.stopped.set()
        self.thread.join()
        self.sock.close()
        for conn in self.open:
            conn.close()


def http_response(status: str, headers: dict[str, str], body: bytes = b"") -> bytes:
    lines = [
        f"HTTP/1.1 {status}",
        *(f"{k}: {v}" for k, v in headers.items()),
        f"Content-Length: {len(body)}",
        "Connection: close",
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def addresses(*ips: str) -> Any:
    """A stand-in for anyio.getaddrinfo answering these addresses (the injected DNS fault)."""

    async def getaddrinfo(host: str, port: int, **kwargs: Any) -> list[Any]:
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (ip, port)) for ip in ips]

    return getaddrinfo


class ConnectTimePolicyTests(SimpleTestCase):
    def tiny(self, response: bytes | str | None) -> TinyHttp:
        server = TinyHttp(response)
        self.addCleanup(server.stop)
        return server

    def test_it_refuses_loopback_on_connect_unless_listed(self) -> None:
        server = RunningServer("streamable-http")
        self.addCleanup(server.stop)
        with self.assertRaises(McpError) as ctx, self.assertLogs("sessionadmin.mcp_client", "WARNING") as logs:
            mcp_client.ping(Target("streamable_http", url=server.url), timeout=10)
        self.assertEqual(
            str(ctx.exception), f"unreachable: could not connect to the MCP server at {server.url}: no MCP server answered"
        )
        self.assertIn("127.0.0.1 is a loopback address", logs.output[0])
        self.assertEqual(
            mcp_client.ping(Target("streamable_http", url=server.url, allowed_hosts=("127.0.0.1",)), timeout=10), 0.0
        )

    def test_it_never_connects_to_a_refused_address(self) -> None:
        tiny = self.tiny(http_response("404 Not Found", {}))
        with self.assertRaises(McpError):
            mcp_client.ping(Target("streamable_http", url=tiny.url()), timeout=5)
        self.assertEqual(tiny.connections, 0)

    def test_dns_rebinding_is_refused_on_the_address_resolved_at_connect_time(self) -> None:
        tiny = self.tiny(http_response("404 Not Found", {}))
        url = f"http://rebind.example.test:{tiny.port}/mcp"
        # Saved while the name pointed to a public address...
        self.assertIsNone(refusal(url, resolver=lambda host: [ipaddress.ip_address("93.184.216.34")]))
        # ...then it resolves to loopback when the connection is made.
        with mock.patch("anyio.getaddrinfo", addresses("127.0.0.1")), self.assertRaises(McpError) as ctx:
            mcp_client.ping(Target("streamable_http", url=url), timeout=5)
        self.assertEqual(ctx.exception.kind, mcp_client.UNREACHABLE)
        self.assertEqual(tiny.connections, 0)

    def test_it_connects_to_the_checked_address_and_keeps_the_host_name(self) -> None:
        tiny = self.tiny(http_response("404 Not Found", {}))
        url = f"http://mcp.example.test:{tiny.port}/mcp"
        with mock.patch("anyio.getaddrinfo", addresses("127.0.0.1")), self.assertRaises(McpError):
            mcp_client.ping(Target("streamable_http", url=url, allowed_hosts=("127.0.0.1",)), timeout=5)
        self.assertGreaterEqual(tiny.connections, 1)
        self.assertIn(f"\r\nhost: mcp.example.test:{tiny.port}\r\n".encode(), tiny.requests[0].lower())

    def test_redirects_are_neither_followed_nor_reflected(self) -> None:
        elsewhere = self.tiny(http_response("200 OK", {"Content-Type": "application/json"}, b"{}"))
        for location in (elsewhere.url("/secret-place"), "/mcp-moved", "http://169.254.169.254/latest/meta-data/"):
            with self.subTest(location):
                redirecting = self.tiny(http_response("307 Temporary Redirect", {"Location": location}))
                target = Target("streamable_http", url=redirecting.url(), allowed_hosts=("127.0.0.1",))
                with self.assertRaises(McpError) as ctx:
                    mcp_client.ping(target, timeout=5)
                self.assertEqual(
                    str(ctx.exception),
                    f"unreachable: could not connect to the MCP server at {redirecting.url()}: no MCP server answered",
                )
                paths = {request.split(b" ")[1] for request in redirecting.requests}
                self.assertEqual(paths, {b"/mcp"})
        self.assertEqual(elsewhere.connections, 0)

    def test_errors_do_not_tell_internal_services_apart(self) -> None:
        html = b"<html><body>Router admin</body></html>"
        answers: dict[str, bytes | str | None] = {
            "closes at once": None,
            "never answers": "hang",
            "401 without a Bearer challenge": http_response("401 Unauthorized", {"WWW-Authenticate": 'Basic realm="router"'}),
            "403": http_response("403 Forbidden", {"Content-Type": "text/plain"}, b"forbidden"),
            "404": http_response("404 Not Found", {"Content-Type": "text/plain"}, b"not found"),
            "503": http_response("503 Service Unavailable", {"Content-Type": "text/plain"}, b"down"),
            "an HTML page": http_response("200 OK", {"Content-Type": "text/html"}, html),
            "JSON that is not JSON-RPC": http_response("200 OK", {"Content-Type": "application/json"}, b'{"status": "ok"}'),
            "a redirect": http_response("302 Found", {"Location": "http://10.0.0.1/admin"}),
        }
        messages = {}
        for what, answer in answers.items():
            tiny = self.tiny(answer)
            with self.assertRaises(McpError) as ctx:
                mcp_client.ping(Target("streamable_http", url=tiny.url(), allowed_hosts=("127.0.0.1",)), timeout=3)
            messages[what] = str(ctx.exception).replace(str(tiny.port), "PORT")
        closed = socket.create_server(("127.0.0.1", 0))
        port = closed.getsockname()[1]
        closed.close()
        with self.assertRaises(McpError) as ctx:
            mcp_client.ping(
                Target("streamable_http", url=f"http://127.0.0.1:{port}/mcp", allowed_hosts=("127.0.0.1",)), timeout=3
            )
        messages["a closed port"] = str(ctx.exception).replace(str(port), "PORT")
        expected = "unreachable: could not connect to the MCP server at http://127.0.0.1:PORT/mcp: no MCP server answered"
        self.assertEqual(messages, dict.fromkeys(messages, expected))

    def test_an_mcp_server_asking_for_credentials_still_says_so(self) -> None:
        tiny = self.tiny(http_response("401 Unauthorized", {"WWW-Authenticate": 'Bearer resource_metadata="x"'}))
        with self.assertRaises(McpError) as ctx:
            mcp_client.ping(Target("streamable_http", url=tiny.url(), allowed_hosts=("127.0.0.1",)), timeout=5)
        self.assertEqual(ctx.exception.kind, mcp_client.AUTH)
