"""The dashboard in a real browser: an operator's whole session lifecycle, and a viewer."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from playwright.sync_api import expect

from sessionadmin.manager import SessionManager
from sessionadmin.models import AgentSession


def test_it_runs_a_session_lifecycle_as_an_operator(
    personas: Any, login: Any, live_server: Any, artifacts_dir: Path, celery_worker: Any
) -> None:
    page = login("alice")
    expect(page.locator("h1")).to_have_text("Sessions")

    # Create from the list; htmx posts the form and lands on the new session.
    page.locator("summary", has_text="New session").click()
    page.fill("#id_org", "acme")
    page.fill("#id_user_id", "u-browser")
    page.fill("#id_variables", "team=core")
    page.get_by_role("button", name="Create session").click()
    page.wait_for_url(re.compile(r"/sessions/[0-9a-f-]{36}/$"))
    expect(page.locator(".message-success")).to_contain_text("created for u-browser in acme")
    session_id = page.url.rstrip("/").rsplit("/", 1)[1]
    short = session_id[:8]
    expect(page.locator("#workspace")).to_contain_text("0700")

    # It is in the list; polling keeps the operator's selection.
    page.goto(f"{live_server.url}/")
    row = page.locator("tbody tr", has_text=short)
    expect(row).to_contain_text("u-browser")
    expect(row.locator(".badge")).to_have_text("active")
    row.locator("input[name=ids]").check()
    page.evaluate("htmx.ajax('GET', location.href, {target: '#session-live', swap: 'outerHTML'})")
    page.wait_for_load_state("networkidle")
    expect(page.locator("tbody tr", has_text=short).locator("input[name=ids]")).to_be_checked()
    page.screenshot(path=str(artifacts_dir / "session_list.png"), full_page=True)

    # Open it and edit its prompt (htmx re-renders the form; the timeline refreshes).
    row.get_by_role("link", name=short).click()
    page.wait_for_url(f"**/sessions/{session_id}/")
    page.fill("#id_prompt", "You are the browser test's agent.")
    page.get_by_role("button", name="Save prompt").click()
    expect(page.locator("#prompt-form .notice")).to_have_text("System prompt saved.")
    expect(page.locator("#detail-timeline")).to_contain_text("system_prompt_updated")
    page.screenshot(path=str(artifacts_dir / "session_detail.png"), full_page=True)

    # Kill it with a reason, confirming the dialog.
    page.fill("#kill-form input[name=reason]", "done testing")
    page.once("dialog", lambda dialog: dialog.accept())
    page.get_by_role("button", name="Kill session").click()
    expect(page.locator(".message-success")).to_have_text("1 session is terminating; the workers are removing the workspace.")
    # The page refreshes itself until the worker has removed the workspace.
    expect(page.locator("#detail-live .badge").first).to_have_text("ended", timeout=60_000)
    expect(page.locator("#detail-live")).to_contain_text("done testing")
    timeline = page.locator("#detail-timeline")
    for event in ("session_created", "system_prompt_updated", "session_terminating", "session_cleaned_up"):
        expect(timeline).to_contain_text(event)
    expect(page.get_by_role("button", name="Kill session")).to_have_count(0)
    page.screenshot(path=str(artifacts_dir / "session_detail_ended.png"), full_page=True)


def test_it_shows_a_viewer_no_action_buttons(personas: Any, login: Any, live_server: Any, artifacts_dir: Path) -> None:
    session = SessionManager().create_session("u-seen", "acme", actor="alice")
    page = login("bob")
    row = page.locator("tbody tr", has_text=session.short_id)
    expect(row).to_contain_text("u-seen")
    expect(page.locator("summary", has_text="New session")).to_have_count(0)
    expect(page.locator("input[name=ids]")).to_have_count(0)
    expect(page.get_by_role("button", name="Kill selected")).to_have_count(0)

    row.get_by_role("link", name=session.short_id).click()
    page.wait_for_url(f"**/sessions/{session.id}/")
    expect(page.locator("#detail-timeline")).to_contain_text("session_created")
    expect(page.locator("main button")).to_have_count(0)
    expect(page.locator("#prompt-form")).to_have_js_property("tagName", "PRE")
    page.screenshot(path=str(artifacts_dir / "session_detail_viewer.png"), full_page=True)


def test_it_creates_an_org_inline(personas: Any, login: Any, live_server: Any, artifacts_dir: Path) -> None:
    page = login("alice")
    page.get_by_role("link", name="Orgs").click()
    page.locator("summary", has_text="New org").click()
    page.fill("#org-create input[name=id]", "../initech")
    page.fill("#org-create input[name=name]", "Initech")
    page.fill("#org-create input[name=max_sessions]", "3")
    page.get_by_role("button", name="Create org").click()
    expect(page.locator("#org-create")).to_contain_text("Invalid org id: must not contain '..'.")
    page.fill("#org-create input[name=id]", "initech")
    page.get_by_role("button", name="Create org").click()
    expect(page.locator(".message-success")).to_have_text("Org initech created.")
    expect(page.locator("tbody tr", has_text="initech")).to_contain_text("0 / 3")
    page.screenshot(path=str(artifacts_dir / "org_list.png"), full_page=True)


def test_it_says_so_when_bulk_kill_has_nothing_selected(
    personas: Any, login: Any, live_server: Any, workspace_root: Path
) -> None:
    SessionManager(workspace_root, max_concurrent=0).create_session("u-bulk", "acme", actor="alice")
    page = login("alice")
    dialogs: list[str] = []
    page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
    page.goto(f"{live_server.url}/")
    page.fill("input[name=reason]", "tidy up")
    page.get_by_role("button", name="Kill selected").click()
    expect(page.locator("#bulk-note")).to_have_text("No session selected: tick the sessions to kill first.")
    assert dialogs == []  # no confirmation asked for nothing
    assert AgentSession.objects.get(user_id="u-bulk").status == AgentSession.Status.ACTIVE
