"""MCP in a real browser, through the real gateway: an operator attaches a catalog server on the
session page, calls one of its tools from the generated form, sees the result appear (the page
polls the call running in the gateway) and the call in the session's live feed."""

from __future__ import annotations

import re
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


def test_it_renders_rich_results(
    personas: Any, login: Any, live_server: Any, workspace_root: Path, artifacts_dir: Path, mcp_http_server: RunningServer
) -> None:
    session = SessionManager(workspace_root, max_concurrent=0).create_session("u-rich", "acme", actor="alice")
    mcp_services.save_server(McpServer(name="calculator", transport="streamable_http", url=mcp_http_server.url), actor="alice")
    mcp_services.add_client(session.id, server="calculator", actor="alice")
    page = login("alice")
    page.goto(f"{live_server.url}/sessions/{session.id}/")
    page.locator("#mcp-client-calculator a[data-tool=rich]").click()
    page.locator("#call-calculator").get_by_role("button", name="Call rich").click()
    result = page.locator("#call-calculator .tool-result")
    expect(result.locator(".result-text")).to_have_text("a rich answer", timeout=30_000)

    # The PNG inline as a data: URL, its MIME type and annotations shown; the SVG only described.
    images = result.locator(".result-image")
    expect(images).to_have_count(2)
    png = images.nth(0).locator("img")
    expect(png).to_have_attribute("src", re.compile(r"^data:image/png;base64,"))
    assert page.evaluate("(img) => img.complete && img.naturalWidth", png.element_handle()) == 2
    expect(images.nth(0)).to_contain_text("image/png")
    expect(images.nth(0).locator(".annotations")).to_contain_text("audience: user")
    expect(images.nth(0).locator(".annotations")).to_contain_text("priority: 0.9")
    expect(images.nth(1).locator("img")).to_have_count(0)
    expect(images.nth(1)).to_contain_text("image/svg+xml is not shown inline")
    # Audio as a player.
    expect(result.locator(".result-audio audio[controls]")).to_have_attribute("src", re.compile(r"^data:audio/wav;base64,"))
    # Resource links: the web link is a link with its name, the javascript: one is text only.
    link = result.get_by_role("link", name="The quarterly report")
    expect(link).to_have_attribute("href", "https://example.org/report.pdf")
    expect(result.locator("a[href^='javascript']")).to_have_count(0)
    expect(result.locator(".resource-link-text")).to_have_text("hostile link")
    # Embedded resources: the text shown escaped, the binary one as a download.
    expect(result.locator("pre.result-resource")).to_have_text("embedded <b>notes</b>")
    expect(result.locator("pre.result-resource b")).to_have_count(0)
    download = result.locator("a.download")
    expect(download).to_have_attribute("download", "data.bin")
    expect(download).to_have_attribute("href", "data:application/octet-stream;base64,AAECAw==")
    # The wait the operator had, measured around the whole call.
    expect(result.locator(".waited")).to_contain_text("waited ")
    page.screenshot(path=str(artifacts_dir / "session_rich_result.png"), full_page=True)
