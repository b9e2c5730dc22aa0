"""The console's group editor through Django's test client: a group made with keys picked from the hub's tree and
scheduled, bad input refused beside its field with nothing saved (the API's rules), its next fire times in the
project's time zone with a daylight-saving change noted and a cron expression in words, the key picker, run now,
and a permission on every view."""

from __future__ import annotations

import re
from datetime import datetime, timezone

import pytest
from django.test import Client

from api.testing import logged_in
from groups.models import Group, GroupKey, GroupRun
from groups.selectors import group_fire_times
from hubs.hubsim.tree import demo_tree
from hubs.models import Hub, Project
from hubs.project_document.importer import entity_tree_write


@pytest.fixture
def hub(db):
    project = Project.objects.create(name="plant", time_zone="Europe/Berlin")
    hub = Hub.objects.create(project=project, name="hub-a", url="ws://127.0.0.1:9/connect")
    entity_tree_write(hub=hub, tree=demo_tree("hub-a"))
    return hub


def beside(page: str, field: str) -> str:
    found = re.search(rf'id="id_{field}-error"[^>]*>([^<]*)<', page)
    return found.group(1) if found else ""


FORM = {"name": "pumps", "trigger": "interval", "period": "1", "offset": "0", "cron": "", "run_at": "",
        "deadband": "", "expires": "", "execution_timeout": "", "script": "", "enabled": "on",
        "keys": "plant/line1/pump1 pressure p1\nplant/line1/pump2 pressure p2\n"}


@pytest.mark.django_db
def test_a_group_is_made_with_its_keys_in_order_and_scheduled(hub):
    response = logged_in("integrator").post(f"/hubs/{hub.pk}/groups/new", FORM)
    group = Group.objects.get(name="pumps")
    assert response.status_code == 302 and response["Location"] == f"/groups/{group.pk}/"
    assert [(k.entity, k.key, k.alias) for k in group.keys.order_by("position")] == [
        ("plant/line1/pump1", "pressure", "p1"), ("plant/line1/pump2", "pressure", "p2")]
    assert group.periodic_task is not None and group.periodic_task.enabled
    page = logged_in("viewer").get(f"/groups/{group.pk}/").content.decode()
    assert "plant/line1/pump1 pressure p1\nplant/line1/pump2 pressure p2" in page  # the keys shown as typed
    assert page.count("<li><time") == 5  # the next five fire times


@pytest.mark.django_db
def test_bad_input_is_refused_beside_its_field_and_nothing_is_saved(hub):
    integrator = logged_in("integrator")
    cases = [
        ({"period": "0"}, "period"),
        ({"keys": "plant/line1/pump1 no_such_key"}, "keys"),
        ({"keys": "plant/line1/pump1"}, "keys"),
        ({"trigger": "cron", "cron": "every five seconds"}, "cron"),
        ({"keys": ""}, "keys"),
    ]
    for change, field in cases:
        response = integrator.post(f"/hubs/{hub.pk}/groups/new", {**FORM, **change})
        assert response.status_code == 422, change
        assert beside(response.content.decode(), field), (change, response.content.decode()[-3000:])
    assert not Group.objects.exists() and not GroupKey.objects.exists()
    group = Group.objects.create(hub=hub, name="taken", period=1)
    response = integrator.post(f"/hubs/{hub.pk}/groups/new", {**FORM, "name": "taken"})
    assert response.status_code == 422 and Group.objects.count() == 1
    changed = integrator.post(f"/groups/{group.pk}/", {**FORM, "name": "taken", "period": "-1"})
    assert changed.status_code == 422 and beside(changed.content.decode(), "period")
    assert Group.objects.get(pk=group.pk).period == 1 and not group.keys.exists()


@pytest.mark.django_db
def test_a_change_replaces_the_keys_in_the_order_given(hub):
    integrator = logged_in("integrator")
    integrator.post(f"/hubs/{hub.pk}/groups/new", FORM)
    group = Group.objects.get(name="pumps")
    keys = "plant/line1/pump2 pressure p2\nplant/line1/pump1 flow\n"
    assert integrator.post(f"/groups/{group.pk}/", {**FORM, "period": "5", "keys": keys}).status_code == 302
    group.refresh_from_db()
    assert group.period == 5
    assert [(k.entity, k.key, k.alias) for k in group.keys.order_by("position")] == [
        ("plant/line1/pump2", "pressure", "p2"), ("plant/line1/pump1", "flow", "")]
    assert logged_in("viewer").post(f"/groups/{group.pk}/", {**FORM, "period": "9"}).status_code == 403
    assert Group.objects.get(pk=group.pk).period == 5


def test_the_fire_times_note_a_daylight_saving_change_and_say_the_cron_in_words():
    before_spring = datetime(2026, 3, 29, 0, 59, 58, tzinfo=timezone.utc).timestamp()  # 01:59:58 in Berlin (+01:00)
    times = group_fire_times(group=Group(trigger="interval", period=1, offset=0), time_zone="Europe/Berlin",
                             now=before_spring)
    assert [t.strftime("%H:%M:%S%z") for t in times.times] == [
        "01:59:59+0100", "03:00:00+0200", "03:00:01+0200", "03:00:02+0200", "03:00:03+0200"]
    assert times.offset_changes == [(1, "+01:00", "+02:00")]
    cron = group_fire_times(group=Group(trigger="cron", cron="0 30 6 * * 1-5"), time_zone="Europe/Berlin", now=before_spring)
    assert cron.cron_words == "At 06:30, Monday through Friday"
    assert cron.times[0].strftime("%a %H:%M%z") == "Mon 06:30+0200" and cron.offset_changes == [(0, "+01:00", "+02:00")]
    assert "six fields" in group_fire_times(group=Group(trigger="cron", cron="bad"), time_zone="UTC").error
    assert group_fire_times(group=Group(trigger="on_change"), time_zone="UTC").note


@pytest.mark.django_db
def test_the_editor_previews_the_times_of_what_is_typed_without_saving(hub):
    page = logged_in("viewer").post(f"/hubs/{hub.pk}/groups/times",
                                    {**FORM, "trigger": "cron", "cron": "*/15 * * * * *"}).content.decode()
    assert "Every 15 seconds" in page and page.count("<li><time") == 5
    assert re.search(r'<time datetime="[0-9-]+T[0-9:]+\+0[12]:00">', page)  # in the project's zone, Berlin
    assert "No schedule" in logged_in("viewer").post(f"/hubs/{hub.pk}/groups/times",
                                                     {**FORM, "trigger": "cron", "cron": "x"}).content.decode()
    assert not Group.objects.exists()


@pytest.mark.django_db
def test_the_key_picker_finds_parameters_by_entity_key_or_name(hub):
    viewer = logged_in("viewer")
    page = viewer.get(f"/hubs/{hub.pk}/parameters?q=pump2").content.decode()
    assert 'data-line="plant/line1/pump2 pressure"' in page and "plant/line1/pump1 " not in page
    page = viewer.get(f"/hubs/{hub.pk}/parameters?q=TEMPERATURE").content.decode()
    assert 'data-line="plant/line2/mixer temperature"' in page
    assert "No parameter holds" in viewer.get(f"/hubs/{hub.pk}/parameters?q=zzz").content.decode()
    assert viewer.get(f"/hubs/{hub.pk}/parameters").content.decode().count("<li>") == 50  # at most 50 shown


@pytest.mark.django_db
def test_every_editor_view_needs_a_login_and_its_permission(hub, monkeypatch):
    group = Group.objects.create(hub=hub, name="g", period=1)
    for path in (f"/hubs/{hub.pk}/groups/new", f"/groups/{group.pk}/", f"/hubs/{hub.pk}/parameters"):
        assert Client().get(path).status_code == 302
        assert logged_in(None).get(path).status_code == 403, path
    viewer = logged_in("viewer")
    assert viewer.get(f"/hubs/{hub.pk}/groups/new").status_code == 403  # groups.add_group
    assert viewer.post(f"/groups/{group.pk}/run").status_code == 403  # groups.run_group
    queued = []
    monkeypatch.setattr("groups.services.transaction.on_commit", lambda call: queued.append(call))
    response = logged_in("operator").post(f"/groups/{group.pk}/run")
    assert response.status_code == 200 and "Queued" in response.content.decode() and len(queued) == 1
    GroupRun.objects.create(group=group, scheduled_for=datetime(2026, 12, 3, 10, 0, tzinfo=timezone.utc),
                            status="failed", error="hub 'hub-a' unreachable")
    assert "hub &#x27;hub-a&#x27; unreachable" in viewer.get(f"/groups/{group.pk}/").content.decode()


@pytest.mark.django_db
def test_the_live_values_stream_sends_each_newer_run_s_values(tmp_path, monkeypatch):
    import json as _json

    from console import live
    from groups.selectors import group_run_values
    from groups.services import group_run
    from hubs.hubsim.server import serve_in_thread
    from scripts_engine.models import Sink
    from scripts_engine.sinks import sinks_dispose

    monkeypatch.setattr(live, "POLL_S", 0.05)
    with serve_in_thread(key="k-values", name="hub-a") as reference:
        project = Project.objects.create(name="plant")
        Sink.objects.create(project=project, name="main", url=f"sqlite:///{tmp_path / 'values.sqlite3'}")
        hub = Hub.objects.create(project=project, name="hub-a", url=reference.url, api_key="k-values", timeout=2)
        entity_tree_write(hub=hub, tree=demo_tree("hub-a"))
        group = Group.objects.create(hub=hub, name="pumps", period=1)
        GroupKey.objects.create(group=group, entity="plant/line1/pump1", key="pressure", position=0)
        GroupKey.objects.create(group=group, entity="plant/line1/pump1", key="flow", position=1)
        try:
            first = group_run(group_id=group.pk)
            response = logged_in("viewer").get(f"/groups/{group.pk}/live")
            assert response["Content-Type"].startswith("text/event-stream")
            events = iter(response.streaming_content)
            assert next(events) == b"retry: 3000\n\n"

            def values_event() -> dict:
                chunk = next(events).decode()
                assert chunk.startswith("event: values\ndata: "), chunk
                return _json.loads(chunk.split("data: ", 1)[1])

            sent = values_event()
            stored = group_run_values(run=first)["values"]
            assert sent["run"] == first.pk and [(v["key"], v["value"], v["ts"]) for v in sent["values"]] == [
                (item["key"], item["value"], item["ts"]) for _entity, items in stored for item in items]
            second = group_run(group_id=group.pk)  # a newer run: the open stream sends it next
            assert values_event()["run"] == second.pk
            response.close()
        finally:
            sinks_dispose()
    assert logged_in(None).get(f"/groups/{group.pk}/live").status_code == 403


@pytest.mark.django_db(transaction=True)
def test_under_asgi_the_live_stream_is_asynchronous_and_sends_the_same_events(monkeypatch):
    """What uvicorn serves (console.live.live_events_async): the read in a thread, the waits asyncio's."""
    import asyncio
    import json as _json

    from console import live

    project = Project.objects.create(name="plant")
    hub = Hub.objects.create(project=project, name="hub-a", url="ws://127.0.0.1:9/connect")
    group = Group.objects.create(hub=hub, name="pumps", period=1)
    run = GroupRun.objects.create(group=group, scheduled_for=datetime(2026, 12, 3, 10, 0, tzinfo=timezone.utc), status="ok")
    monkeypatch.setattr(live, "newest_values", lambda group_id, seen: (run.pk, b"") if seen == run.pk else
                        (run.pk, live._event("values", {"run": run.pk, "values": []})))

    async def first_two():
        events = live.live_events_async(group.pk)
        try:
            return [await events.__anext__(), await events.__anext__()]
        finally:
            await events.aclose()

    retry, values = asyncio.run(first_two())
    assert retry == b"retry: 3000\n\n"
    assert _json.loads(values.decode().split("data: ", 1)[1]) == {"run": run.pk, "values": []}


@pytest.mark.django_db
def test_a_group_s_delete_is_confirmed_with_what_goes_and_done_by_the_post(hub):
    integrator = logged_in("integrator")
    integrator.post(f"/hubs/{hub.pk}/groups/new", FORM)
    group = Group.objects.get(name="pumps")
    GroupRun.objects.create(group=group, scheduled_for=datetime(2026, 12, 3, 10, 0, tzinfo=timezone.utc), status="ok")
    confirm = integrator.get(f"/groups/{group.pk}/delete").content.decode()
    assert "1 groups" in confirm and "2 group keys" in confirm and "1 runs" in confirm and "1 schedule entries" in confirm
    assert Group.objects.filter(pk=group.pk).exists()
    assert logged_in("operator").post(f"/groups/{group.pk}/delete").status_code == 403
    response = integrator.post(f"/groups/{group.pk}/delete")
    assert response.status_code == 302 and response["Location"] == f"/hubs/{hub.pk}/"
    assert not Group.objects.exists() and not GroupKey.objects.exists() and not GroupRun.objects.exists()
