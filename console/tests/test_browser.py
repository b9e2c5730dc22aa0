"""The console in a real headless Chromium (Debian's ``chromium``, driven by Playwright; no ``playwright install``):
log in, see the open alarms, an alarm raised meanwhile appear without a reload, a note too long refused beside its
field with nothing changed, an alarm acknowledged with a note, another shelved for an hour.

With ``HUBSCHED_DOCS_SCREENSHOTS=1`` the test saves the screenshots docs/console.md shows (docs/screenshots/)."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest
from django.utils import timezone

from alarms.models import Alarm
from alarms.services import NOTE_MAX_CHARS, alarm_raise
from api.testing import user_with
from hubs.models import Project
from hubsched.testing import in_ci

CHROMIUM = "/usr/bin/chromium"
SCREENSHOTS = Path(__file__).resolve().parents[2] / "docs" / "screenshots"


@pytest.fixture
def browser(monkeypatch):
    sync_api = pytest.importorskip("playwright.sync_api")
    # Playwright's sync API keeps an event loop running in this thread: the test's own ORM calls are still
    # synchronous ones (Django's documented switch for such callers; the live server runs in its own threads)
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    if not shutil.which(CHROMIUM):
        if in_ci():
            pytest.fail(f"{CHROMIUM} is missing under CI (apt-get install chromium)")
        pytest.skip(f"{CHROMIUM} is not installed (Debian: apt-get install chromium)")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        try:
            yield browser
        finally:
            browser.close()


def shot(page, name: str) -> None:
    if os.environ.get("HUBSCHED_DOCS_SCREENSHOTS") == "1":
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SCREENSHOTS / name), full_page=True)


def gutter_click(page, *, line: int) -> None:
    """Click the editor's breakpoint gutter beside ``line`` (1-based), as a person sets a breakpoint."""
    gutter = page.locator(".cm-breakpoint-gutter").bounding_box()
    text = page.locator(".cm-line").nth(line - 1).bounding_box()
    page.mouse.click(gutter["x"] + gutter["width"] / 2, text["y"] + text["height"] / 2)


def raise_alarm(project, subject: str, severity: str = "critical") -> Alarm:
    alarm, _ = alarm_raise(project_id=project.pk, source="system", kind="hub_unreachable", subject=subject,
                           severity=severity, message=f"hub {subject} unreachable for 60 s", values={})
    return alarm


@pytest.mark.django_db(transaction=True)
def test_an_operator_logs_in_sees_alarms_arrive_live_acknowledges_one_and_shelves_another(browser, live_server):
    from playwright.sync_api import expect

    project = Project.objects.create(name="plant")
    first = raise_alarm(project, "plant/hub-a")
    operator = user_with(role="operator", name="olga")
    page = browser.new_page(viewport={"width": 1280, "height": 720})
    page.set_default_timeout(15_000)
    page.goto(f"{live_server.url}/")
    assert page.url == f"{live_server.url}/accounts/login/?next=/"
    page.fill("#id_username", operator.username)
    page.fill("#id_password", "pw-123456")
    page.click("button[type=submit]")
    expect(page.locator(".sev-critical dd")).to_have_text("1")
    shot(page, "console-overview.png")

    page.click("text=Alarms")
    expect(page.locator(f"#alarm-{first.pk}")).to_contain_text("plant/hub-a")
    second = raise_alarm(project, "plant/hub-b", "high")  # raised while the page is open
    expect(page.locator(f"#alarm-{second.pk}")).to_contain_text("plant/hub-b", timeout=12_000)  # no reload

    row = page.locator(f"#alarm-{first.pk}")
    row.get_by_role("button", name="Acknowledge…").click()
    note = row.get_by_label("note", exact=True)
    expect(note).to_be_focused()
    note.evaluate("(el, n) => { el.removeAttribute('maxlength'); el.value = 'x'.repeat(n); }", NOTE_MAX_CHARS + 1)
    row.get_by_role("button", name="Acknowledge", exact=True).click()
    expect(page.locator(f"#alarm-{first.pk} .error")).to_contain_text(f"at most {NOTE_MAX_CHARS} characters")
    assert Alarm.objects.get(pk=first.pk).state == "active"  # refused: nothing changed

    row = page.locator(f"#alarm-{first.pk}")
    note = row.get_by_label("note", exact=True)
    expect(note).to_have_value("x" * (NOTE_MAX_CHARS + 1))  # shown open again, with what was typed: nothing lost
    note.fill("pump checked on site")
    shot(page, "console-alarms.png")
    row.get_by_role("button", name="Acknowledge", exact=True).click()
    expect(page.locator(f"#alarm-{first.pk} .ack")).to_have_text("olga: pump checked on site")
    expect(page.locator(f"#alarm-{first.pk} .state")).to_have_text("acknowledged")
    alarm = Alarm.objects.get(pk=first.pk)
    assert alarm.state == "acknowledged" and alarm.acknowledged_by == operator
    assert alarm.acknowledged_note == "pump checked on site"

    row = page.locator(f"#alarm-{second.pk}")  # the other one: shelved for an hour during a maintenance
    row.get_by_role("button", name="Shelve…").click()
    row.get_by_label("shelve for").select_option(label="1 hour")
    row.get_by_label("shelve note").fill("pump maintenance")
    row.get_by_role("button", name="Shelve", exact=True).click()
    expect(page.locator(f"#alarm-{second.pk} .state")).to_contain_text("(shelved until")
    shelved = Alarm.objects.get(pk=second.pk)
    assert shelved.shelved_by == operator and 3500 < (shelved.shelved_until - timezone.now()).total_seconds() <= 3600


@pytest.mark.django_db(transaction=True)
def test_an_integrator_makes_a_project_adds_a_hub_tests_it_discovers_its_entities_and_makes_a_group(browser, live_server,
                                                                                                    monkeypatch):
    """From nothing, in the console alone: a project, a hub (a refused URL first, shown beside its field), the
    connection test, discovery's preview, then applied; a group of two keys picked from the hub's tree, its fire
    times shown as it is typed; the hub and its group in the project tree."""
    from playwright.sync_api import expect

    from hubs.hubsim.server import serve_in_thread
    from hubs.models import Entity, Hub

    from console import live

    # the live values' stream notices a closed page within a second (a comment each second), so that its server
    # thread ends with the test rather than reading a database the next test owns
    monkeypatch.setattr(live, "HEARTBEAT_S", 1.0)
    integrator = user_with(role="integrator", name="ines")
    with serve_in_thread(key="browser-key-77", name="hub-a") as reference:
        page = browser.new_page(viewport={"width": 1280, "height": 800})
        page.set_default_timeout(15_000)
        page.goto(f"{live_server.url}/accounts/login/")
        page.fill("#id_username", integrator.username)
        page.fill("#id_password", "pw-123456")
        page.click("button[type=submit]")
        page.get_by_role("link", name="Projects").click()
        form = page.locator("#project-new")
        form.get_by_label("Name").fill("bottling")
        form.get_by_label("Time zone").fill("Europe/Berlin")
        form.get_by_role("button", name="Create project").click()
        expect(page.locator("h1")).to_have_text("bottling")

        page.locator("#hub-new-panel summary").click()
        form = page.locator("#hub-new")
        form.get_by_label("Name", exact=True).fill("hub-a")
        form.get_by_label("URL").fill("http://" + reference.url.removeprefix("ws://"))
        form.get_by_label("API key", exact=True).fill("browser-key-77")
        form.get_by_role("button", name="Add hub").click()
        expect(page.locator("#hub_url-error")).to_be_visible()  # a refused URL, beside its field
        assert not Hub.objects.exists()
        form = page.locator("#hub-new")
        form.get_by_label("URL").fill(reference.url)
        form.get_by_label("API key", exact=True).fill("browser-key-77")  # a password field is not sent back: typed again
        form.get_by_role("button", name="Add hub").click()
        expect(page.locator("h1")).to_have_text("Hub hub-a")
        assert "browser-key-77" not in page.content()

        page.get_by_role("button", name="Test connection").click()
        expect(page.locator("#hub-test-result")).to_contain_text("Connected")
        expect(page.locator("#hub-test-result")).to_contain_text("protocol version 1")
        page.get_by_role("button", name="Discover entities…").click()
        expect(page.locator("#hub-discover-result")).to_contain_text("Would apply")
        expect(page.locator("#hub-discover-result .added")).to_contain_text("plant/line1/pump1")
        shot(page, "console-hub.png")
        assert not Entity.objects.exists()
        page.get_by_role("button", name="Apply these changes").click()
        expect(page.locator("#hub-discover-result")).to_contain_text("Applied")
        assert Entity.objects.filter(path="plant/line1/pump1").exists()

        page.get_by_role("link", name="bottling").click()
        hub = Hub.objects.get(name="hub-a")
        row = page.locator(f"#hub-{hub.pk}")
        expect(row).to_contain_text(f"{Entity.objects.filter(hub=hub).count()} entities")
        row.locator("summary").click()  # opening the hub loads its groups
        expect(row.locator(".groups")).to_contain_text("No group on this hub yet")

        # a group of two keys picked from the hub's tree, every second; its next five fire times as it is typed
        row.get_by_role("link", name="hub-a").click()
        page.get_by_role("link", name="New group…").click()
        page.get_by_label("Name", exact=True).fill("pumps")
        page.get_by_label("find a parameter").fill("pump1")
        page.locator('#key-picker button[data-line="plant/line1/pump1 pressure"]').click()
        page.locator('#key-picker button[data-line="plant/line1/pump1 flow"]').click()
        expect(page.locator("#id_keys")).to_have_value("plant/line1/pump1 pressure\nplant/line1/pump1 flow")
        page.get_by_label("Trigger").select_option("cron")
        page.get_by_label("Cron").fill("*/10 * * * * *")
        expect(page.locator("#group-times .cron-words")).to_have_text("Every 10 seconds")
        page.get_by_label("Trigger").select_option("interval")
        page.get_by_label("Period", exact=False).first.fill("1")
        page.get_by_label("Cron").fill("")
        expect(page.locator("#group-times .cron-words")).to_have_count(0)  # the preview follows the trigger
        expect(page.locator("#group-times .fire-times li")).to_have_count(5)
        shot(page, "console-group.png")
        page.get_by_role("button", name="Create group").click()
        expect(page.locator("h1")).to_have_text("Group pumps")
        expect(page.locator("#group-times .fire-times li")).to_have_count(5)
        from groups.models import Group

        group = Group.objects.get(name="pumps")
        assert [(k.entity, k.key) for k in group.keys.order_by("position")] == [
            ("plant/line1/pump1", "pressure"), ("plant/line1/pump1", "flow")]
        expect(page.locator("#group-live")).to_contain_text("No values yet")
        from groups.services import group_run
        from scripts_engine.sinks import sinks_dispose

        try:  # what a worker does at a tick, in this process: the values then appear on the open page
            assert group_run(group_id=group.pk).status == "ok"
        finally:
            sinks_dispose()
        expect(page.locator("#values-table")).to_contain_text("pressure", timeout=10_000)  # pushed over SSE
        expect(page.locator("#values-table")).to_contain_text("flow")
        expect(page.locator("#group-live .trend")).to_have_count(2)  # a trend per numeric key (uPlot)
        try:
            for _ in range(3):  # a few more ticks: the trends draw lines
                time.sleep(1)
                assert group_run(group_id=group.pk).status == "ok"
        finally:
            sinks_dispose()
        shot(page, "console-live.png")
        page.get_by_role("link", name="bottling").click()
        row = page.locator(f"#hub-{hub.pk}")
        row.locator("summary").click()
        expect(row.locator(".groups")).to_contain_text("pumps")
        shot(page, "console-project.png")

        # a doubling script in the editor: a compile error shown as it is typed, then a breakpoint hit
        page.get_by_role("link", name="Scripts").click()
        form = page.locator("#script-new")
        form.get_by_label("Name", exact=True).fill("double")
        form.get_by_role("button", name="Create script").click()
        expect(page.locator("h1")).to_have_text("Script double")
        editor = page.locator(".cm-content")
        editor.click()
        page.keyboard.type("pressure = pressure *")
        expect(page.locator(".cm-lintRange-error")).to_have_count(1, timeout=10_000)  # the sandbox's syntax error
        page.keyboard.type(" 2\nflow = flow + 1")
        expect(page.locator(".cm-lintRange-error")).to_have_count(0, timeout=10_000)
        gutter_click(page, line=2)
        expect(page.locator(".cm-breakpoint")).to_have_count(2)  # the spacer's marker and line 2's
        page.get_by_role("button", name="Save").click()
        from scripts_engine.models import Script

        assert Script.objects.get(name="double").code == "pressure = pressure * 2\nflow = flow + 1"
        gutter_click(page, line=2)  # the breakpoint again, after the save
        page.get_by_label("on the live values of").select_option(label="hub-a / pumps")
        page.get_by_role("button", name="Debug").click()
        expect(page.locator(".stops")).to_contain_text("breakpoint at line 2")
        expect(page.locator(".stops")).to_contain_text("pressure")
        expect(page.locator("#run-bindings")).to_contain_text("flow")
        shot(page, "console-script.png")

        # the group runs the script from now on: chosen in its editor
        page.get_by_role("link", name="bottling").click()
        row = page.locator(f"#hub-{hub.pk}")
        row.locator("summary").click()
        row.get_by_role("link", name="pumps").click()
        page.get_by_label("Script").select_option(label="double")
        page.get_by_role("button", name="Save").click()
        expect(page.locator("#id_script")).to_have_value(str(Script.objects.get(name="double").pk))
        group.refresh_from_db()
        assert group.script.name == "double"
        page.close()
        time.sleep(2 * live.HEARTBEAT_S)  # the stream's thread writes to the closed page, sees it gone and ends
