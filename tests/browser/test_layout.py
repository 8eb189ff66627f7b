"""Every dashboard page with hostile but legal data stays inside the viewport (1,280 and 1,920 px
wide; at 768 px too) and passes axe-core with no serious or critical violation.

The data: 128-character user and org ids, 500-character reasons, a catalog entry with a
100-character name, a session with four MCP clients attached through the real gateway, one of
them a real stdio server (``tests/mcp_servers/wide.py``) with 1,000 tools, 2,000-character
descriptions and a 190-character server name, and a rich tool result on the page.
"""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from django.utils import timezone
from playwright.sync_api import Page, expect

from sessionadmin import audit, mcp_services
from sessionadmin.manager import SessionManager
from sessionadmin.models import AgentSession, ApiToken, AuditEntry, McpServer, Org
from tests.mcp_servers import SANDBOX_PATHS, SERVER_SCRIPT, RunningServer, stdio_command

AXE = Path(__file__).resolve().parents[2] / "node_modules" / "axe-core" / "axe.min.js"
AXE_SOURCE = AXE.read_text() if AXE.exists() else "throw new Error('axe-core missing: run npm ci')"
WIDE_SCRIPT = SERVER_SCRIPT.with_name("wide.py")
LONG_USER = "u" + "ser.name-" * 14 + "x" * 1  # 128 characters
LONG_ORG = "org_" + "division-" * 13 + "y" * 7  # 128 characters
LONG_REASON = ("Because the customer asked for it in ticket 4711 and the on-call engineer agreed; " * 7)[:500]
LONG_SERVER = "catalog-" + "long-server-name-" * 5 + "z" * 7  # 100 characters
WIDTHS = (1280, 1920)
SCREENSHOTS = {
    "session_list": "layout_session_list",
    "session_detail": "layout_session_four_clients",
    "org_edit": "layout_org_form",
    "catalog_edit": "layout_catalog_form",
}


pytestmark = pytest.mark.usefixtures("use_gateway")


def seed(workspace_root: Path, http_url: str) -> dict[str, Any]:
    """The hostile data set; returns the ids the pages need."""
    assert len(LONG_USER) == 128 and len(LONG_ORG) == 128 and len(LONG_SERVER) == 100
    Org.objects.create(id=LONG_ORG, name="N" * 200, max_sessions=9999, max_sessions_per_user=999)
    manager = SessionManager(workspace_root, max_concurrent=0)
    rich = manager.create_session(LONG_USER, LONG_ORG, actor="alice", variables={"ticket": "T" * 300, "org_name": "Acme"})
    for number in range(30):
        manager.create_session(f"{LONG_USER[:-3]}{number:03d}", LONG_ORG, actor="alice")
    pinned = manager.create_session(LONG_USER[:-1] + "p", LONG_ORG, actor="alice")
    manager.pin_session(pinned.id, until=timezone.now() + timedelta(days=3), reason=LONG_REASON, actor="alice")
    ended = manager.create_session(LONG_USER[:-1] + "e", LONG_ORG, actor="alice")
    # Idle for a day: the maintenance preview lists them with their reasons.
    AgentSession.objects.filter(user_id__startswith=LONG_USER[:-3]).update(last_active_at=timezone.now() - timedelta(days=1))

    wide_cmd = stdio_command()[0]
    wide = mcp_services.save_server(
        McpServer(
            name=LONG_SERVER,
            description="D" * 500,
            transport="stdio",
            command=wide_cmd,
            args=[str(WIDE_SCRIPT), "stdio"],
            read_only_paths=list(SANDBOX_PATHS),
        ),
        actor="root",
    )
    cmd, args = stdio_command()
    calc = mcp_services.save_server(
        McpServer(name="calculator", transport="stdio", command=cmd, args=args, read_only_paths=list(SANDBOX_PATHS)), actor="root"
    )
    mcp_services.save_server(McpServer(name="calc-http", transport="streamable_http", url=http_url), actor="root")
    mcp_services.add_client(rich.id, server=wide, client_id="wide", actor="alice")
    mcp_services.add_client(rich.id, server=calc, client_id="calculator", actor="alice")
    mcp_services.add_client(rich.id, server="calc-http", client_id="calc-http", actor="alice")
    mcp_services.add_client(rich.id, url=http_url, client_id="a" * 100, actor="alice")
    mcp_services.add_client(ended.id, server=calc, client_id="calculator", actor="alice")
    mcp_services.call_tool(rich.id, "calculator", "echo", {"text": "w" * 3000}, actor="alice")
    manager.cleanup_session(ended.id, actor="alice", reason=LONG_REASON)
    audit.write([audit.entry("note", actor="a" * 200, user_id=LONG_USER, org_id=LONG_ORG, details={"reason": LONG_REASON})])
    ApiToken.objects.create(name="t" * 100, prefix="p" * 16, token_hash="h" * 64, created_by="c" * 200)
    return {"rich": rich, "ended": ended, "wide_pk": wide.pk}


def pages(data: dict[str, Any]) -> list[tuple[str, str]]:
    rich, ended = data["rich"].id, data["ended"].id
    long_tool = "tool_0000_" + "n" * 100
    return [
        ("session_list", "/?status=all"),
        ("session_list_user", f"/?status=all&user={LONG_USER}"),
        ("session_list_empty", "/?q=nothing-matches-this"),
        ("session_detail", f"/sessions/{rich}/"),
        ("session_ended", f"/sessions/{ended}/"),
        ("session_mcp", f"/sessions/{rich}/mcp/"),
        ("tool_form", f"/sessions/{rich}/mcp/wide/tools/{long_tool}/"),
        ("tool_form_args", f"/sessions/{rich}/mcp/calculator/tools/echo/"),
        ("tool_listing", f"/sessions/{rich}/mcp/wide/list/tools/"),
        ("org_list", "/orgs/"),
        ("org_edit", f"/orgs/{LONG_ORG}/edit/"),
        ("catalog_list", "/mcp/servers/"),
        ("catalog_new", "/mcp/servers/new/"),
        ("catalog_edit", f"/mcp/servers/{data['wide_pk']}/"),
        ("maintenance", "/maintenance/"),
        ("admin_audit", "/admin/sessionadmin/auditentry/"),
        ("admin_sessions", "/admin/sessionadmin/agentsession/"),
        ("admin_tokens", "/admin/sessionadmin/apitoken/"),
        ("admin_token_add", "/admin/sessionadmin/apitoken/add/"),
    ]


def overflow(page: Page) -> int:
    """How far the document sticks out to the right of the viewport (0 when it fits)."""
    return int(page.evaluate("document.documentElement.scrollWidth - window.innerWidth"))


def scrolled_boxes(page: Page) -> list[str]:
    """Tables that scroll inside their card: the columns pushed away by a long value, which the
    document's own width does not show."""
    script = """() => Array.from(document.querySelectorAll('.table-wrap, #changelist .results'))
        .filter(e => e.scrollWidth > e.clientWidth + 1).map(e => e.className + ' ' + e.scrollWidth + '>' + e.clientWidth + ' ' +
          Array.from(e.querySelectorAll('th, td')).sort((a, b) => b.offsetWidth - a.offsetWidth).slice(0, 3)
            .map(c => c.className + ':' + c.offsetWidth).join(' '))"""
    return list(page.evaluate(script))


def wide_elements(page: Page) -> list[str]:
    """The elements whose right edge is past the viewport: what to fix when a page overflows."""
    script = """() => Array.from(document.querySelectorAll('body *'))
        .filter(e => e.getBoundingClientRect().right > window.innerWidth + 1)
        .slice(0, 8).map(e => e.tagName + '.' + e.className + ' ' + Math.round(e.getBoundingClientRect().right))"""
    return list(page.evaluate(script))


def axe_violations(page: Page) -> list[dict[str, Any]]:
    """axe-core's serious and critical violations on the page. The npm package's script is
    evaluated through the DevTools protocol, which the page's CSP does not govern (an injected
    <script> tag would be refused, as it should be)."""
    page.evaluate(AXE_SOURCE)
    result = page.evaluate("async () => (await axe.run(document, {resultTypes: ['violations']})).violations")
    return [
        {"id": v["id"], "impact": v["impact"], "help": v["help"], "nodes": [n["target"] for n in v["nodes"][:3]]}
        for v in result
        if v["impact"] in ("serious", "critical")
    ]


def settle(page: Page, name: str) -> None:
    page.wait_for_load_state("networkidle")
    if name == "session_detail":
        expect(page.locator("#mcp-client-wide")).to_be_visible(timeout=30_000)


def test_it_keeps_every_page_inside_the_viewport_with_hostile_data(
    personas: Any, login: Any, live_server: Any, workspace_root: Path, artifacts_dir: Path, mcp_http_server: RunningServer
) -> None:
    data = seed(workspace_root, mcp_http_server.url)
    page = login("root")
    problems: dict[str, Any] = {}
    for width in WIDTHS:
        page.set_viewport_size({"width": width, "height": 900})
        for name, path in pages(data):
            page.goto(live_server.url + path)
            settle(page, name)
            if overflow(page) > 0:
                problems[f"{name}@{width}"] = {"overflow": overflow(page), "wide": wide_elements(page)}
            # A checkbox and its label on one line (a label squeezed to one letter a line once).
            tall = page.evaluate(
                "() => Array.from(document.querySelectorAll('label.check')).filter(l => l.offsetHeight > 48).length"
            )
            if tall:
                problems[f"{name}@{width} checkbox labels"] = tall
            if scrolled_boxes(page):
                problems[f"{name}@{width} scrolled"] = scrolled_boxes(page)
            if width == WIDTHS[0] and name in SCREENSHOTS:
                page.screenshot(path=str(artifacts_dir / f"{SCREENSHOTS[name]}.png"), full_page=True)
            if width == WIDTHS[0]:
                violations = axe_violations(page)
                if violations:
                    problems[f"{name} axe"] = violations
    # Usable at 768 px: every page still fits.
    page.set_viewport_size({"width": 768, "height": 900})
    for name, path in pages(data):
        page.goto(live_server.url + path)
        settle(page, name)
        if overflow(page) > 0:
            problems[f"{name}@768"] = {"overflow": overflow(page), "wide": wide_elements(page)}
    # The session with four clients and a rich result on the page (an image, audio, links,
    # embedded resources), at 1,280 px.
    page.set_viewport_size({"width": WIDTHS[0], "height": 900})
    page.goto(f"{live_server.url}/sessions/{data['rich'].id}/")
    settle(page, "session_detail")
    page.locator("#mcp-client-calculator a[data-tool=rich]").click()
    page.locator("#call-calculator").get_by_role("button", name="Call rich").click()
    expect(page.locator("#call-calculator .tool-result .result-image img")).to_be_visible(timeout=30_000)
    if overflow(page) > 0:
        problems["rich_result@1280"] = {"overflow": overflow(page), "wide": wide_elements(page)}
    if axe_violations(page):
        problems["rich_result axe"] = axe_violations(page)
    page.screenshot(path=str(artifacts_dir / "layout_session_four_clients_rich_result.png"), full_page=True)
    assert not problems, json.dumps(problems, indent=1)
    assert AuditEntry.objects.filter(event_type="mcp_tool_called").exists()
