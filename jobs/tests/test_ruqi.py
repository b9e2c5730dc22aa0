"""ruqi compatibility (jobs/ruqi.py): ruqi's documented examples replayed, their answers' shapes compared."""

from __future__ import annotations

import re
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from django.test import Client
from django.utils import timezone

from api.testing import token_client, user_with
from hubs.models import Project
from jobs.models import Job

pytestmark = pytest.mark.django_db

TIME = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d$")
ITEM_KEYS = {"job_id", "cmd", "next_run_time", "job_name", "rule", "Job_trigger", "job_trigger"}


@pytest.fixture
def admin():
    return token_client(role="admin")


def add(client, **doc):
    return client.post("/ruqi/add_job", doc, content_type="application/json")


def test_the_documented_add_job_then_get_jobs_answer_ruqis_shapes(admin):
    response = add(admin, job_trigger="interval", job_id="test3", job_name="platform", rule="10s",
                   cmd="bash scripts/test.sh")
    assert response.status_code == 200 and response.json() == {"stat": "OK"}
    job = Job.objects.get(name="test3")
    assert (job.project.name, job.title, job.trigger, job.period, job.kind, job.argv) == \
        ("ruqi", "platform", "interval", 10.0, "shell", ["bash", "scripts/test.sh"])
    body = admin.get("/ruqi/get_jobs").json()
    assert set(body) == {"stat", "data"} and body["stat"] == "OK"
    assert set(body["data"]) == {"total", "list"} and body["data"]["total"] == 1
    item = body["data"]["list"][0]
    assert set(item) == ITEM_KEYS
    assert item["job_id"] == "test3" and item["job_name"] == "platform" and item["cmd"] == "bash scripts/test.sh"
    assert item["rule"] == "10.0s" and item["Job_trigger"] == "interval" == item["job_trigger"]
    assert TIME.match(item["next_run_time"]), item


def test_interval_units_become_seconds(admin):
    for i, (rule, seconds) in enumerate([("3s", 3.0), ("3m", 180.0), ("2h", 7200.0), ("1d", 86400.0)]):
        assert add(admin, job_trigger="interval", job_id=f"j{i}", rule=rule, cmd="bash x.sh").json() == {"stat": "OK"}
        assert Job.objects.get(name=f"j{i}").period == seconds
    assert admin.get("/ruqi/get_jobs?job_id=j0").json()["data"]["list"][0]["rule"] == "3.0s"


def test_once_now_a_datetime_and_one_with_microseconds(admin, settings):
    Project.objects.create(name="ruqi", time_zone="Asia/Shanghai")
    before = timezone.now()
    assert add(admin, job_trigger="date", job_id="now", rule="now", cmd="bash x.sh").json() == {"stat": "OK"}
    assert before <= Job.objects.get(name="now").run_at <= timezone.now()
    later = (datetime.now(ZoneInfo("Asia/Shanghai")) + timedelta(days=1)).replace(microsecond=0, tzinfo=None)
    assert add(admin, job_trigger="date", job_id="at", rule=f"{later:%Y-%m-%d %H:%M:%S}", cmd="bash x.sh").json() \
        == {"stat": "OK"}
    assert Job.objects.get(name="at").run_at == later.replace(tzinfo=ZoneInfo("Asia/Shanghai"))
    assert add(admin, job_trigger="once", job_id="us", rule="2020-12-16 18:05:17.682862",
               cmd="bash x.sh").json() == {"stat": "OK"}
    assert Job.objects.get(name="us").run_at.microsecond == 682862
    items = {i["job_id"]: i for i in admin.get("/ruqi/get_jobs").json()["data"]["list"]}
    assert items["at"]["Job_trigger"] == "date" and items["at"]["rule"] == f"{later:%Y-%m-%d %H:%M:%S}"
    assert items["at"]["next_run_time"] == f"{later:%Y-%m-%d %H:%M:%S}"
    assert items["us"]["next_run_time"] is None  # in the past: it will not fire


def test_six_field_cron_with_seconds_first(admin):
    assert add(admin, job_trigger="cron", job_id="nightly", rule="0 20 2 * * *", cmd="bash x.sh").json() == {"stat": "OK"}
    item = admin.get("/ruqi/get_jobs").json()["data"]["list"][0]
    assert item["rule"] == "0 20 2 * * *" and item["Job_trigger"] == "cron"
    assert item["next_run_time"].endswith("02:20:00")


def test_commands_python_with_arguments_and_http_with_and_without_a_body(admin):
    assert add(admin, job_trigger="interval", job_id="py", rule="10s",
               cmd="python scripts/x.py arg1 arg2").json() == {"stat": "OK"}
    assert Job.objects.get(name="py").argv == ["python", "scripts/x.py", "arg1", "arg2"]
    cmd = 'http://127.0.0.1:8585/demo_api/hello#{"str_info":"hello"}'
    assert add(admin, job_trigger="interval", job_id="hello", rule="10s", cmd=cmd).json() == {"stat": "OK"}
    job = Job.objects.get(name="hello")
    assert (job.kind, job.method, job.url, job.body) == ("http", "POST", "http://127.0.0.1:8585/demo_api/hello",
                                                         {"str_info": "hello"})
    assert add(admin, job_trigger="interval", job_id="ping", rule="10s",
               cmd="http://127.0.0.1:8585/demo_api/ping").json() == {"stat": "OK"}
    assert Job.objects.get(name="ping").url == "http://127.0.0.1:8585/demo_api/ping"
    cmds = {i["job_id"]: i["cmd"] for i in admin.get("/ruqi/get_jobs").json()["data"]["list"]}
    assert cmds == {"py": "python scripts/x.py arg1 arg2", "ping": "http://127.0.0.1:8585/demo_api/ping",
                    "hello": 'http://127.0.0.1:8585/demo_api/hello#{"str_info": "hello"}'}


def test_a_shell_string_is_never_given_to_a_shell(admin):
    assert add(admin, job_trigger="interval", job_id="x", rule="10s", cmd="bash a.sh; rm -rf /").json()["stat"] == "OK"
    assert Job.objects.get(name="x").argv == ["bash", "a.sh;", "rm", "-rf", "/"]


def test_status_answers_ruqis_shape(admin):
    add(admin, job_trigger="interval", job_id="t", rule="3s", cmd="bash x.sh")
    body = admin.get("/ruqi/status").json()
    assert set(body) == {"stat", "data"} and body["stat"] == "OK"
    assert set(body["data"]) == {"check_time", "wait_seconds", "next_wakeup_time"}
    assert TIME.match(body["data"]["check_time"]) and TIME.match(body["data"]["next_wakeup_time"])
    assert isinstance(body["data"]["wait_seconds"], float) and 0 <= body["data"]["wait_seconds"] <= 3


def test_remove_job(admin):
    add(admin, job_trigger="interval", job_id="test3", rule="10s", cmd="bash x.sh")
    response = admin.get("/ruqi/remove_job?job_id=test3")
    assert response.status_code == 200 and response.json() == {"stat": "OK"}
    assert not Job.objects.exists()
    again = admin.get("/ruqi/remove_job?job_id=test3").json()
    assert again["stat"] == "ERR" and "test3" in again["msg"]


@pytest.mark.parametrize("doc,stat,said", [
    ({"job_trigger": "weekly", "job_id": "a", "rule": "10s", "cmd": "bash x.sh"}, "ERR", "Job_trigger"),
    ({"job_trigger": "interval", "job_id": "a", "rule": "10 s s", "cmd": "bash x.sh"}, "ERR", "Job_rule"),
    ({"job_trigger": "cron", "job_id": "a", "rule": "* * * * *", "cmd": "bash x.sh"}, "ERR", "six fields"),
    ({"job_trigger": "cron", "job_id": "a", "rule": "99 * * * * *", "cmd": "bash x.sh"}, "ERR", "cron"),
    ({"job_trigger": "date", "job_id": "a", "rule": "tomorrow", "cmd": "bash x.sh"}, "ERR", "Job_rule"),
    ({"job_trigger": "interval", "job_id": "a", "rule": "10s", "cmd": "http://x/#{not json"}, "ERR", "JSON"),
    ({"job_trigger": "interval", "job_id": "a", "rule": "10s"}, "ERR_BAD_PARAMS", "cmd"),
])
def test_errors_come_in_ruqis_envelope(admin, doc, stat, said):
    response = admin.post("/ruqi/add_job", doc, content_type="application/json")
    assert response.status_code == 200  # as ruqi: a refusal is a 200 with a stat other than OK
    body = response.json()
    assert set(body) == {"stat", "msg"} and body["stat"] == stat and said in body["msg"], body
    assert response["x-reason"]
    assert not Job.objects.exists()


def test_an_existing_job_id_is_refused_and_modify_job_changes_it(admin):
    add(admin, job_trigger="interval", job_id="t", rule="10s", cmd="bash x.sh")
    body = add(admin, job_trigger="interval", job_id="t", rule="20s", cmd="bash x.sh").json()
    assert body["stat"] == "ERR" and "modify_job" in body["msg"]
    assert admin.post("/ruqi/modify_job", {"job_trigger": "interval", "job_id": "t", "rule": "20s", "cmd": "bash y.sh"},
                      content_type="application/json").json() == {"stat": "OK"}
    job = Job.objects.get(name="t")
    assert job.period == 20.0 and job.argv == ["bash", "y.sh"]


def test_without_credentials_it_is_401_in_the_envelope(client):
    response = client.get("/ruqi/get_jobs")
    assert response.status_code == 401 and response.json()["stat"] == "ERR_UNAUTHORIZED" and response.json()["msg"]


def test_permissions_are_checked(db):
    viewer = token_client(role="viewer")
    assert viewer.get("/ruqi/get_jobs").json()["stat"] == "OK"
    response = add(viewer, job_trigger="interval", job_id="t", rule="10s", cmd="bash x.sh")
    assert response.status_code == 403 and response.json()["stat"] == "ERR_FORBIDDEN"
    assert "jobs.add_job" in response.json()["msg"]
    integrator = token_client(role="integrator")  # add_job but not shell_job
    response = add(integrator, job_trigger="interval", job_id="t", rule="10s", cmd="bash x.sh")
    assert response.status_code == 403 and "shell_job" in response.json()["msg"]
    assert add(integrator, job_trigger="interval", job_id="t", rule="10s",
               cmd="http://127.0.0.1:1/").json() == {"stat": "OK"}
    assert viewer.get("/ruqi/remove_job?job_id=t").status_code == 403
    nobody = token_client(user_with(role=None))
    assert nobody.get("/ruqi/status").status_code == 403


def test_a_session_post_needs_its_csrf_token(db):
    user = user_with(role="admin")
    browser = Client(enforce_csrf_checks=True)
    browser.force_login(user)
    response = add(browser, job_trigger="interval", job_id="t", rule="10s", cmd="bash x.sh")
    assert response.status_code == 403 and response.json()["stat"] == "ERR_FORBIDDEN" and "CSRF" in response.json()["msg"]
    assert browser.get("/ruqi/get_jobs").json()["stat"] == "OK"
    token = browser.cookies["csrftoken"].value if "csrftoken" in browser.cookies else None
    if token is None:
        from django.middleware.csrf import _get_new_csrf_string
        token = _get_new_csrf_string()
        browser.cookies["csrftoken"] = token
    response = browser.post("/ruqi/add_job", {"job_trigger": "interval", "job_id": "t", "rule": "10s",
                                              "cmd": "bash x.sh"}, content_type="application/json",
                            HTTP_X_CSRFTOKEN=token)
    assert response.json() == {"stat": "OK"}


def test_a_browser_session_cannot_remove_by_get(db):
    user = user_with(role="admin")
    browser = Client()
    browser.force_login(user)
    assert add(browser, job_trigger="interval", job_id="t", rule="10s", cmd="bash x.sh").json() == {"stat": "OK"}
    response = browser.get("/ruqi/remove_job?job_id=t")
    assert response.status_code == 403 and response.json()["stat"] == "ERR_FORBIDDEN"
    assert Job.objects.filter(name="t").exists()
    assert browser.post("/ruqi/remove_job?job_id=t", content_type="application/json").json() == {"stat": "OK"}  # the test client skips CSRF checks
