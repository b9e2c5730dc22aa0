"""/api/v1/scripts: list, get, create, change, delete with the sandbox's compile check, and the debugger."""

from __future__ import annotations

import json

import pytest

from api.testing import assert_error, token_client, user_with
from groups.models import Group
from hubs.models import Hub, Project
from scripts_engine.models import Script

pytestmark = pytest.mark.django_db

CODE = "a = p1 + 1\nb = a * 2\np1 = b\n"


@pytest.fixture
def project():
    return Project.objects.create(name="plant")


@pytest.fixture
def script(project):
    return Script.objects.create(project=project, name="calc", code=CODE, description="doubles p1")


def post(client, path, body):
    return client.post(path, data=json.dumps(body), content_type="application/json")


def patch(client, path, body):
    return client.patch(path, data=json.dumps(body), content_type="application/json")


def paths(error: dict) -> list[str]:
    return [d["path"] for d in error["details"]]


# --- list and get -----------------------------------------------------------------------------------


def test_the_list_filters_by_project_and_search_and_pages(project, script):
    other = Project.objects.create(name="other")
    Script.objects.create(project=other, name="scale", code="p1 = p1 * 10\n")
    Script.objects.create(project=project, name="zero", code="p1 = 0\n")
    viewer = token_client(role="viewer")

    body = viewer.get("/api/v1/scripts").json()
    assert (body["count"], [s["name"] for s in body["items"]]) == (3, ["scale", "calc", "zero"])  # by project name
    assert body["items"][1] == {"id": script.pk, "project": project.pk, "project_name": "plant", "name": "calc",
                                "code": CODE, "description": "doubles p1", "timeout": 2.0, "memory_limit_mb": 256}
    assert [s["name"] for s in viewer.get(f"/api/v1/scripts?project={project.pk}").json()["items"]] == ["calc", "zero"]
    assert [s["name"] for s in viewer.get("/api/v1/scripts?search=DOUBLES").json()["items"]] == ["calc"]
    assert [s["name"] for s in viewer.get("/api/v1/scripts?search=p1 * 10").json()["items"]] == ["scale"]  # in code
    page = viewer.get("/api/v1/scripts?limit=1&offset=1").json()
    assert (page["count"], page["limit"], page["offset"], [s["name"] for s in page["items"]]) == (3, 1, 1, ["calc"])
    assert paths(assert_error(viewer.get("/api/v1/scripts?limit=0"), 422, "invalid")) == ["limit"]


def test_get_answers_one_script_or_404(script):
    viewer = token_client(role="viewer")
    assert viewer.get(f"/api/v1/scripts/{script.pk}").json()["name"] == "calc"
    assert_error(viewer.get("/api/v1/scripts/999999"), 404, "not_found")


def test_reading_needs_view_script_and_a_login(script):
    error = assert_error(token_client(user_with()).get("/api/v1/scripts"), 403, "permission_denied")
    assert error["message"] == "permission required: scripts_engine.view_script"
    assert_error(token_client(user_with()).get(f"/api/v1/scripts/{script.pk}"), 403, "permission_denied")
    from django.test import Client

    assert_error(Client().get("/api/v1/scripts"), 401, "not_authenticated")
    assert_error(Client().get(f"/api/v1/scripts/{script.pk}"), 401, "not_authenticated")


# --- create -----------------------------------------------------------------------------------------


def test_an_integrator_creates_a_script(project):
    response = post(token_client(role="integrator"), "/api/v1/scripts",
                    {"project": project.pk, "name": "double", "code": "p1 = p1 * 2\n", "timeout": 0.5})
    assert response.status_code == 201, response.content
    created = Script.objects.get(name="double")
    assert response.json() == {"id": created.pk, "project": project.pk, "project_name": "plant", "name": "double",
                               "code": "p1 = p1 * 2\n", "description": "", "timeout": 0.5, "memory_limit_mb": 256}


@pytest.mark.parametrize("code, said", [
    ("x = 1\ny = (\n", "line 2, column 5: SyntaxError: '(' was never closed"),
    ("import os\n", "line 1, column 1: refused: import of 'os'"),
])
def test_code_the_sandbox_refuses_is_a_422_at_code_with_its_line_and_column(project, code, said):
    response = post(token_client(role="integrator"), "/api/v1/scripts", {"project": project.pk, "name": "bad", "code": code})
    error = assert_error(response, 422, "invalid")
    assert paths(error) == ["code"] and error["details"][0]["message"].startswith(said)
    assert not Script.objects.filter(name="bad").exists()


def test_the_model_rules_are_422_per_field(project, script):
    integrator = token_client(role="integrator")
    cases = [
        ({"project": project.pk, "name": "calc"}, [""]),  # taken in the project (the model's unique constraint)
        ({"project": 999999, "name": "x"}, ["project"]),
        ({"project": project.pk, "name": "x", "timeout": 0.001, "memory_limit_mb": 8}, ["timeout", "memory_limit_mb"]),
        ({"project": project.pk, "name": "x" * 201}, ["name"]),
        ({"project": project.pk, "name": ""}, ["name"]),
    ]
    for body, where in cases:
        assert sorted(paths(assert_error(post(integrator, "/api/v1/scripts", body), 422, "invalid"))) == sorted(where), body
    assert list(Script.objects.values_list("name", flat=True)) == ["calc"]


def test_a_body_with_an_unknown_field_or_a_wrong_type_is_a_422_naming_it(project):
    integrator = token_client(role="integrator")
    error = assert_error(post(integrator, "/api/v1/scripts", {"project": project.pk, "name": "x", "cod": ""}), 422)
    assert paths(error) == ["cod"]
    error = assert_error(post(integrator, "/api/v1/scripts", {"project": project.pk, "name": "x", "timeout": "slow"}), 422)
    assert paths(error) == ["timeout"]
    assert paths(assert_error(post(integrator, "/api/v1/scripts", {"name": "x"}), 422)) == ["project"]


def test_creating_needs_add_script(project):
    body = {"project": project.pk, "name": "x"}
    error = assert_error(post(token_client(role="operator"), "/api/v1/scripts", body), 403, "permission_denied")
    assert error["message"] == "permission required: scripts_engine.add_script"
    from django.test import Client

    assert_error(post(Client(), "/api/v1/scripts", body), 401)
    assert not Script.objects.exists()


# --- change and delete ------------------------------------------------------------------------------


def test_patch_changes_only_the_fields_given(script):
    response = patch(token_client(role="integrator"), f"/api/v1/scripts/{script.pk}", {"code": "p1 = -p1\n"})
    assert response.status_code == 200 and response.json()["code"] == "p1 = -p1\n"
    script.refresh_from_db()
    assert (script.code, script.name, script.description) == ("p1 = -p1\n", "calc", "doubles p1")


def test_a_patch_with_code_that_does_not_compile_changes_nothing(script):
    response = patch(token_client(role="integrator"), f"/api/v1/scripts/{script.pk}", {"name": "new", "code": "if:\n"})
    error = assert_error(response, 422, "invalid")
    assert paths(error) == ["code"] and error["details"][0]["message"].startswith("line 1, column 3")
    script.refresh_from_db()
    assert (script.name, script.code) == ("calc", CODE)


def test_a_patch_cannot_move_a_script_to_another_project(script):
    assert paths(assert_error(patch(token_client(role="integrator"), f"/api/v1/scripts/{script.pk}",
                                    {"project": 1}), 422)) == ["project"]


def test_changing_needs_change_script_and_an_existing_script(script):
    assert_error(patch(token_client(role="operator"), f"/api/v1/scripts/{script.pk}", {"code": ""}), 403)
    assert_error(patch(token_client(role="integrator"), "/api/v1/scripts/999999", {"code": ""}), 404)
    script.refresh_from_db()
    assert script.code == CODE


def test_delete_removes_the_script_and_its_groups_keep_running_without_it(project, script):
    hub = Hub.objects.create(project=project, name="hub-a", url="ws://127.0.0.1:1/ws")
    group = Group.objects.create(hub=hub, name="g", script=script)
    assert_error(token_client(role="operator").delete(f"/api/v1/scripts/{script.pk}"), 403, "permission_denied")
    response = token_client(role="integrator").delete(f"/api/v1/scripts/{script.pk}")
    assert response.status_code == 204
    assert not Script.objects.exists()
    group.refresh_from_db()
    assert group.script is None
    assert_error(token_client(role="integrator").delete(f"/api/v1/scripts/{script.pk}"), 404)


# --- the debugger -----------------------------------------------------------------------------------


def debug(client, script_id, body):
    return post(client, f"/api/v1/scripts/{script_id}/debug", body)


def test_the_debugger_answers_its_stops_and_result_with_a_token(script):
    response = debug(token_client(role="integrator"), script.pk, {"bindings": {"p1": 1}, "breakpoints": [2]})
    assert response.status_code == 200
    assert not response.has_header("Deprecation")
    body = response.json()
    assert [(s["event"], s["line"]) for s in body["stops"]] == [("breakpoint", 2), ("end", None)]
    assert body["result"]["bindings"]["p1"] == 4 and (body["written"], body["stored"]) == ({}, 0)


def test_an_empty_debug_body_runs_on_no_bindings(project):
    quiet = Script.objects.create(project=project, name="quiet", code="x = 1\n")
    response = token_client(role="integrator").post(f"/api/v1/scripts/{quiet.pk}/debug", data=b"",
                                                    content_type="application/json")
    assert response.status_code == 200 and response.json()["result"]["bindings"] == {"x": 1}


def test_bad_debug_input_is_a_422_at_its_path(script):
    integrator = token_client(role="integrator")
    for body, where in [({"breakpoints": [1, "2"]}, ["breakpoints[1]"]), ({"actions": ["step", "jump"]}, ["actions[1]"]),
                        ({"bindings": [1]}, ["bindings"]), ({"live": True}, ["group"]), ({"brakepoints": [1]}, ["brakepoints"])]:
        assert paths(assert_error(debug(integrator, script.pk, body), 422, "invalid")) == where, body


def test_the_debugger_needs_debug_script_and_each_part_its_permission(script):
    error = assert_error(debug(token_client(role="operator"), script.pk, {}), 403, "permission_denied")
    assert error["message"] == "permission required: scripts_engine.debug_script"
    only_debug = token_client(user_with(perms=("scripts_engine.debug_script", "scripts_engine.view_script")))
    error = assert_error(debug(only_debug, script.pk, {"store": True, "write_back": True}), 403)
    assert error["message"] == "permission required: hubs.write_hub, groups.run_group"
    assert_error(debug(token_client(user_with(perms=("scripts_engine.debug_script",))), script.pk, {}), 404)
    from django.test import Client

    assert_error(debug(Client(), script.pk, {}), 401, "not_authenticated")


def test_the_debugger_of_an_unknown_script_or_group_is_a_404(script):
    integrator = token_client(role="integrator")
    assert_error(debug(integrator, 999999, {}), 404, "not_found")
    error = assert_error(debug(integrator, script.pk, {"live": True, "group": 999999}), 404, "not_found")
    assert error["message"] == "no group 999999"


def test_the_old_debug_path_is_an_alias_with_the_successor_named(script):
    response = debug(token_client(role="integrator"), script.pk, {"bindings": {"p1": 1}})
    old = post(token_client(role="integrator"), f"/api/scripts/{script.pk}/debug", {"bindings": {"p1": 1}})
    assert old.json() == response.json()
    assert (old["Deprecation"], old["Link"]) == ("true", f'</api/v1/scripts/{script.pk}/debug>; rel="successor-version"')
    error = assert_error(post(token_client(role="operator"), f"/api/scripts/{script.pk}/debug", {}), 403)
    assert error["message"] == "permission required: scripts_engine.debug_script"


def test_ids_past_what_the_database_holds_and_nul_characters_are_422_not_500(project, script):
    admin = token_client(role="admin")
    huge = 2**63
    assert paths(assert_error(admin.get(f"/api/v1/scripts/{huge}"), 422, "invalid")) == ["script_id"]
    assert paths(assert_error(admin.get(f"/api/v1/scripts?project={huge}"), 422, "invalid")) == ["project"]
    assert paths(assert_error(admin.get("/api/v1/scripts?search=a%00b"), 422, "invalid")) == ["search"]
    assert paths(assert_error(post(admin, "/api/v1/scripts", {"project": huge, "name": "x"}), 422)) == ["project"]
    error = assert_error(post(admin, "/api/v1/scripts", {"project": project.pk, "name": "a\x00b", "code": "x = '\x00'"}), 422)
    assert sorted(paths(error)) == ["code", "name"] and error["details"][0]["message"] == "Null characters are not allowed."
    assert_error(patch(admin, f"/api/v1/scripts/{script.pk}", {"description": "\x00"}), 422)
    assert paths(assert_error(debug(admin, script.pk, {"live": True, "group": huge}), 422)) == ["group"]
