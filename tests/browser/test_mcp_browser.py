"""MCP in a real browser, through the real gateway: an operator attaches a catalog server on the
session page, calls one of its tools from the generated form, sees the result appear (the page
polls the call running in the gateway) and the call in the session's live feed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import expect

from sessionadmin import mcp_services
from sessionadmin.manager import SessionManager
from sessionadmin.models import McpServer
from tests.mcp_servers import RunningServer

pytestmark = pytest.mark.usefixtures("use_gateway")


def test_it_attaches_a_server_and_calls_a_tool(
    personas: Any, login: Any, live_server: Any, workspace_root: Path, artifacts_dir: Path, mcp_http_server: RunningServer
) -> None:
    session = SessionManager(workspace_root, max_concurrent=0).create_session("u-mcp", "acme", actor="alice")
    mcp_services.save_server(
        McpServer(name="calculator", transport="streamable_http", url=mcp_http_server.url),
        actor="alice",
        headers={"Authorization": "Bearer browser-secret-8844"},
    )
    page = login("alice")
    page.goto(f"{live_server.url}/sessions/{session.id}/")

    panel = page.locator("#mcp-clients")
    expect(panel).to_contain_text("No MCP client attached.")
    panel.locator("select[name=server]").select_option(label="calculator (Streamable HTTP)")
    panel.get_by_role("button", name="Attach").click()
    client = page.locator("#mcp-client-calculator")
    expect(client.locator(".badge")).to_have_text("connected")
    expect(client).to_contain_text("sessionadmin-test-server 1.2.3")
    expect(page.locator("#mcp-clients .notice")).to_contain_text("Attached calculator")

    client.locator("a[data-tool=add]").click()
    form = page.locator("#call-calculator")
    form.locator("input[name=arg_a]").fill("19")
    form.locator("input[name=arg_b]").fill("23")
    form.get_by_role("button", name="Call add").click()
    result = page.locator("#call-calculator .tool-result")
    expect(result.locator(".result-text")).to_have_text("42", timeout=30_000)
    expect(result.locator(".badge")).to_have_text("ok")
    expect(result).to_contain_text(" ms")
    expect(page.locator("#mcp-feed tr[data-outcome=ok]")).to_contain_text("add", timeout=30_000)
    expect(page.locator("body")).not_to_contain_text("browser-secret-8844")
    page.screenshot(path=str(artifacts_dir / "session_mcp.png"), full_page=True)
