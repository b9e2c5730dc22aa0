"""The console's script editor and debugger through Django's test client, against a real reference hub: the
sandbox's compile check (line and column), scripts made and saved with bad code refused beside the field, a test
run on a group's live values (bindings in and out, what would be written back, nothing written), a debug run
stopping at a breakpoint with every binding and local, and the permissions."""

from __future__ import annotations

import json

import pytest
from django.test import Client

from api.testing import logged_in
from groups.models import Group, GroupKey
from hubs.hubsim.tree import demo_tree
from hubs.models import Hub, Project
from hubs.project_document.importer import entity_tree_write
from scripts_engine.models import Script

from .conftest import HUB_KEY


@pytest.fixture
def setup(db, reference_hub):
    project = Project.objects.create(name="plant")
    hub = Hub.objects.create(project=project, name="hub-a", url=reference_hub.url, api_key=HUB_KEY, timeout=2)
    entity_tree_write(hub=hub, tree=demo_tree("hub-a"))
    script = Script.objects.create(project=project, name="double", code="s = s * 2\n")
    group = Group.objects.create(hub=hub, name="pump", period=1, script=script)
    GroupKey.objects.create(group=group, entity="plant/line1/pump1", key="speed_sp", alias="s", position=0)
    GroupKey.objects.create(group=group, entity="plant/line1/pump1", key="pressure", alias="p", position=1)
    return project, script, group


@pytest.mark.django_db
def test_the_compile_check_gives_the_line_and_column_of_what_is_wrong(setup):
    viewer = logged_in("viewer")
    ok = json.loads(viewer.post("/scripts/check", {"code": "x = 1\n"}).content)
    assert ok == {"error": None}
    syntax = json.loads(viewer.post("/scripts/check", {"code": "x = 1\ny = (2\n"}).content)["error"]
    assert syntax["kind"] == "syntax" and syntax["line"] == 2
    refused = json.loads(viewer.post("/scripts/check", {"code": "import os\n"}).content)["error"]
    assert refused["kind"] == "refused" and refused["line"] == 1
    assert Client().post("/scripts/check", {"code": "x"}).status_code == 302
    assert logged_in(None).post("/scripts/check", {"code": "x"}).status_code == 403


@pytest.mark.django_db
def test_a_script_is_made_and_saved_and_bad_code_is_refused_beside_it(setup):
    project, script, _group = setup
    integrator = logged_in("integrator")
    made = integrator.post(f"/projects/{project.pk}/scripts/", {"name": "scale", "description": "", "timeout": "2",
                                                               "memory_limit_mb": "256", "code": "v = v / 10\n"})
    scale = Script.objects.get(name="scale")
    assert made.status_code == 302 and made["Location"] == f"/scripts/{scale.pk}/"
    refused = integrator.post(f"/scripts/{script.pk}/", {"name": "double", "description": "", "timeout": "2",
                                                         "memory_limit_mb": "256", "code": "s = s *\n"})
    page = refused.content.decode()
    assert refused.status_code == 422 and 'id="id_code-error"' in page and "line 1" in page
    assert Script.objects.get(pk=script.pk).code == "s = s * 2\n"
    assert integrator.post(f"/scripts/{script.pk}/", {"name": "double", "description": "twice", "timeout": "2",
                                                      "memory_limit_mb": "256", "code": "s = s * 3\n"}).status_code == 302
    assert Script.objects.get(pk=script.pk).code == "s = s * 3\n"
    assert logged_in("viewer").post(f"/scripts/{script.pk}/", {"name": "x", "code": ""}).status_code == 403


@pytest.mark.django_db
def test_a_test_run_shows_the_bindings_in_and_out_and_writes_nothing(setup, reference_hub):
    _project, script, group = setup
    before = reference_hub.state.read("plant/line1/pump1", "speed_sp")
    response = logged_in("integrator").post(f"/scripts/{script.pk}/run", {"code": "s = s * 2\n", "group": group.pk,
                                                                         "breakpoints": ""})
    page = response.content.decode()
    assert response.status_code == 200 and "Changed: s" in page and "nothing was written now" in page
    assert reference_hub.state.read("plant/line1/pump1", "speed_sp") == before  # a test writes nothing
    doubled = before * 2
    assert f"<td>s</td><td>{before}</td><td>{doubled}</td>" in page
    unsaved = logged_in("integrator").post(f"/scripts/{script.pk}/run", {"code": "p = 1 / 0\n", "group": group.pk})
    page = unsaved.content.decode()
    assert "runtime" in page and "at line 1" in page and "ZeroDivisionError" in page  # what is typed, not what is saved


@pytest.mark.django_db
def test_a_debug_run_stops_at_the_breakpoint_with_every_binding_and_local(setup):
    _project, script, group = setup
    code = "k = 3\ns = s * k\np = p + 1\n"
    page = logged_in("integrator").post(f"/scripts/{script.pk}/run", {"code": code, "group": group.pk,
                                                                     "breakpoints": "2"}).content.decode()
    stops = json.loads(page.split('id="debug-stops" type="application/json">')[1].split("</script>")[0])
    assert stops[0]["event"] == "breakpoint" and stops[0]["line"] == 2
    assert set(stops[0]["bindings"]) == {"s", "p"} and stops[0]["locals"].get("k") == 3
    stepped = logged_in("integrator").post(f"/scripts/{script.pk}/run", {"code": code, "group": group.pk,
                                                                        "breakpoints": "1", "step": "on"}).content.decode()
    lines = [s["line"] for s in json.loads(stepped.split('type="application/json">')[1].split("</script>")[0])]
    assert lines[:3] == [1, 2, 3]
    bad = logged_in("integrator").post(f"/scripts/{script.pk}/run", {"code": code, "group": group.pk, "breakpoints": "two"})
    assert bad.status_code == 422 and "line numbers" in bad.content.decode()


@pytest.mark.django_db
def test_running_needs_the_debug_permission(setup):
    _project, script, group = setup
    viewer = logged_in("viewer")
    assert viewer.get(f"/scripts/{script.pk}/").status_code == 200
    assert viewer.post(f"/scripts/{script.pk}/run", {"code": "", "group": group.pk}).status_code == 403
    assert logged_in(None).get(f"/scripts/{script.pk}/").status_code == 403
