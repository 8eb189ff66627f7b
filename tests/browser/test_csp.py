"""The Content-Security-Policy in a real browser: every dashboard page and the admin load with no
CSP violation (console and ``securitypolicyviolation`` events), and htmx still works under it
(the MCP panel loads, attaches through the real gateway, calls a tool and polls for its result;
the list polls; an org is created inline)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import expect

from sessionadmin import mcp_services
from sessionadmin.manager import SessionManager
from sessionadmin.models import McpServer, Org
from tests.mcp_servers import RunningServer

# A handshake or a call through the live server, or any htmx swap: generous, the machine may be
# busy (these are waits for a state, never timing assertions).
MCP_WAIT_MS = 30_000
WAIT_MS = 15_000
WATCH = """
window.__cspViolations = [];
document.addEventListener("securitypolicyviolation", function (event) {
  var where = event.sourceFile + ":" + event.lineNumber;
  window.__cspViolations.push(event.violatedDirective + " " + (event.blockedURI || "inline") + " " + where);
});
"""


class Violations:
    """CSP violations seen by the page: console messages and DOM events."""

    def __init__(self, page: Any) -> None:
        self.page = page
        self.console: list[str] = []
        page.add_init_script(WATCH)
        page.on("console", self._on_console)

    def _on_console(self, message: Any) -> None:
        if "Content Security Policy" in message.text or "Content-Security-Policy" in message.text:
            self.console.append(message.text)

    def seen(self) -> list[str]:
        events = self.page.evaluate("window.__cspViolations || []")
        return [*self.console, *events]

    def clear(self) -> None:
        self.console.clear()
        self.page.evaluate("window.__cspViolations = []")


pytestmark = pytest.mark.usefixtures("use_gateway")


def visit(page: Any, url: str, violations: Violations) -> None:
    page.goto(url)
    page.wait_for_load_state("networkidle")
    assert violations.seen() == [], f"{url}: {violations.seen()}"


def test_every_page_loads_without_csp_violations_and_htmx_works(
    personas: Any,
    login: Any,
    page: Any,
    live_server: Any,
    workspace_root: Path,
    artifacts_dir: Path,
    mcp_http_server: RunningServer,
    settings: Any,
) -> None:
    settings.SESSIONADMIN_MAX_CONCURRENT = 4
    Org.objects.filter(pk="acme").update(max_sessions=4)
    session = SessionManager(workspace_root, max_concurrent=0).create_session("u-csp", "acme", actor="alice")
    entry = mcp_services.save_server(
        McpServer(name="calculator", transport="streamable_http", url=mcp_http_server.url), actor="root"
    )
    violations = Violations(page)
    base = live_server.url

    # The harness sees a violation when there is one: an inline style attribute is refused.
    visit(page, f"{base}/accounts/login/", violations)
    page.evaluate("document.body.insertAdjacentHTML('beforeend', '<div id=\"probe\" style=\"color: red\"></div>')")
    page.wait_for_function("window.__cspViolations.length > 0", timeout=WAIT_MS)  # reported asynchronously
    assert any("style-src" in v for v in violations.seen()), violations.seen()
    violations.clear()

    login("root")
    assert violations.seen() == []

    # The session page: the MCP panel comes by htmx (hx-trigger=load), attaches, calls a tool.
    visit(page, f"{base}/sessions/{session.id}/", violations)
    panel = page.locator("#mcp-clients")
    expect(panel).to_contain_text("No MCP client attached.", timeout=WAIT_MS)
    panel.locator("select[name=server]").select_option(label="calculator (Streamable HTTP)")
    panel.get_by_role("button", name="Attach").click()
    client = page.locator("#mcp-client-calculator")
    expect(client.locator(".badge")).to_have_text("connected", timeout=MCP_WAIT_MS)
    client.locator("a[data-tool=add]").click()
    form = page.locator("#call-calculator")
    form.locator("input[name=arg_a]").fill("19")
    form.locator("input[name=arg_b]").fill("23")
    form.get_by_role("button", name="Call add").click()
    expect(page.locator("#call-calculator .tool-result .result-text")).to_have_text("42", timeout=MCP_WAIT_MS)
    expect(page.locator("#detail-timeline")).to_contain_text("mcp_tool_called", timeout=WAIT_MS)  # refreshed by htmx
    assert page.evaluate("document.querySelectorAll('style').length") == 0  # htmx injected no <style>
    assert violations.seen() == []

    # The list: its meters get their width without a style attribute, also after polling.
    visit(page, f"{base}/", violations)
    meter = page.locator(".meter > span").first
    assert meter.evaluate("e => e.getBoundingClientRect().width") > 0
    # Mark the old block: "networkidle" was reached before, so waiting for it would not wait
    # for the swap; the new block has no mark.
    page.evaluate("document.getElementById('session-live').dataset.old = '1'")
    page.evaluate("htmx.ajax('GET', location.href, {target: '#session-live', swap: 'outerHTML'})")
    page.wait_for_function(
        "() => { const e = document.getElementById('session-live'); return e && !e.dataset.old; }", timeout=WAIT_MS
    )
    page.wait_for_function("() => document.querySelector('.meter > span').style.width === '25%'", timeout=WAIT_MS)
    assert violations.seen() == []

    # An org created inline (an htmx form), and the other dashboard pages.
    visit(page, f"{base}/orgs/", violations)
    page.locator("summary", has_text="New org").click()
    page.fill("#org-create input[name=id]", "initech")
    page.fill("#org-create input[name=name]", "Initech")
    page.get_by_role("button", name="Create org").click()
    expect(page.locator(".message-success")).to_have_text("Org initech created.", timeout=WAIT_MS)
    assert page.locator(".meter > span").first.evaluate("e => e.style.width") == "25%"
    for path in (
        "/sessions/new/",
        "/orgs/acme/edit/",
        "/maintenance/",
        "/mcp/servers/",
        "/mcp/servers/new/",
        f"/mcp/servers/{entry.pk}/",
        f"/sessions/{session.id}/mcp/",
        f"/sessions/{session.id}/mcp/calculator/list/tools/",
        f"/sessions/{session.id}/mcp/calculator/tools/add/",
    ):
        visit(page, f"{base}{path}", violations)
        assert page.evaluate("document.querySelectorAll('style').length") == 0, path

    # The Django admin keeps working under the policy.
    for path in (
        "/admin/",
        "/admin/sessionadmin/auditentry/",
        "/admin/sessionadmin/mcpserver/add/",
        f"/admin/sessionadmin/agentsession/{session.id}/change/",
        "/admin/sessionadmin/apitoken/add/",
        "/admin/auth/user/add/",
    ):
        visit(page, f"{base}{path}", violations)
    page.goto(f"{base}/admin/sessionadmin/apitoken/add/")
    page.fill("input[name=name]", "csp-token")
    page.locator("input[name=_save]").click()
    expect(page.locator("#api-token")).to_be_visible(timeout=WAIT_MS)
    assert page.locator("#api-token").evaluate("e => getComputedStyle(e).fontSize") != page.locator("p").first.evaluate(
        "e => getComputedStyle(e).fontSize"
    )  # admin.css applies
    page.goto(f"{base}/admin/sessionadmin/auditentry/")
    page.locator("#changelist-filter a", has_text="mcp_tool_called").first.click()  # admin JS: filters
    expect(page.locator("#result_list")).to_contain_text("mcp_tool_called", timeout=WAIT_MS)
    assert violations.seen() == []
    page.screenshot(path=str(artifacts_dir / "csp_admin.png"), full_page=True)
