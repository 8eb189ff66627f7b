"""The operator's flows work from the keyboard alone: attach a server, call one of its tools,
pin the session, kill it. Each control is reached with Tab (no click, no focus() call), filled by
typing and used with Enter or Space."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Locator, Page, expect

from sessionadmin import mcp_services
from sessionadmin.manager import SessionManager
from sessionadmin.models import AgentSession, McpServer
from tests.mcp_servers import RunningServer

MAX_TABS = 400


pytestmark = pytest.mark.usefixtures("use_gateway")


def tab_to(page: Page, target: Locator) -> None:
    """Press Tab until ``target`` has the focus; fails if the keyboard never gets there."""
    handle = target.element_handle()
    for _ in range(MAX_TABS):
        page.keyboard.press("Tab")
        if page.evaluate("(el) => document.activeElement === el", handle):
            return
    raise AssertionError(f"{target} is not reachable with Tab")


def test_it_attaches_calls_pins_and_kills_from_the_keyboard(
    personas: Any, login: Any, live_server: Any, workspace_root: Path, mcp_http_server: RunningServer
) -> None:
    session = SessionManager(workspace_root, max_concurrent=0).create_session("u-keys", "acme", actor="alice")
    mcp_services.save_server(McpServer(name="calculator", transport="streamable_http", url=mcp_http_server.url), actor="root")
    page = login("alice")
    page.on("dialog", lambda dialog: dialog.accept())
    page.goto(f"{live_server.url}/sessions/{session.id}/")
    panel = page.locator("#mcp-clients")
    expect(panel).to_contain_text("No MCP client attached.")

    # Attach: the server select, then the Attach button.
    tab_to(page, panel.locator("select[name=server]"))
    page.keyboard.press("ArrowDown")
    expect(panel.locator("select[name=server]")).to_have_value(str(McpServer.objects.get(name="calculator").pk))
    tab_to(page, panel.get_by_role("button", name="Attach"))
    page.keyboard.press("Enter")
    expect(page.locator("#mcp-client-calculator .badge").first).to_have_text("connected", timeout=30_000)
    expect(page.locator("#announcer")).to_contain_text("Attached calculator")

    # Call: the tool's link, its two fields, the call button.
    page.locator("body").focus()
    tab_to(page, page.locator("#mcp-client-calculator a[data-tool=add]"))
    page.keyboard.press("Enter")
    form = page.locator("#call-calculator")
    tab_to(page, form.locator("input[name=arg_a]"))
    page.keyboard.type("19")
    page.keyboard.press("Tab")
    page.keyboard.type("23")
    tab_to(page, form.get_by_role("button", name="Call add"))
    page.keyboard.press("Enter")
    expect(page.locator("#call-calculator .tool-result .result-text")).to_have_text("42", timeout=30_000)

    # Pin: the date, the reason, the Pin button.
    page.goto(f"{live_server.url}/sessions/{session.id}/")
    pin = page.locator("#pin-form")
    tab_to(page, pin.locator("input[name=until]"))
    page.keyboard.type("12312099")
    page.keyboard.press("Tab")
    page.keyboard.type("1200PM")
    tab_to(page, pin.locator("input[name=reason]"))
    page.keyboard.type("kept for the demo")
    tab_to(page, pin.get_by_role("button", name="Pin", exact=True))
    page.keyboard.press("Space")
    expect(page.locator("#pin-form .notice")).to_be_visible()
    session.refresh_from_db()
    assert session.pin_reason == "kept for the demo"

    # Kill: the reason, the Kill button (its confirmation is accepted).
    kill = page.locator("#kill-form")
    tab_to(page, kill.locator("input[name=reason]"))
    page.keyboard.type("done from the keyboard")
    tab_to(page, kill.get_by_role("button", name="Kill session"))
    page.keyboard.press("Enter")
    expect(page.locator("#detail-live .badge").first).not_to_have_text("active")
    session.refresh_from_db()
    assert session.status != AgentSession.Status.ACTIVE
    assert session.end_reason == "done from the keyboard"
