"""`make run`'s stack for real: runstack in a subprocess on each broker, read back through the status selector.

The counters are read with ``groups.selectors.status_summary`` in a subprocess on the stack's database (the HTTP
status endpoint needs a login); the web server is checked by fetching the admin's login page and a static file.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import redis
import sqlalchemy as sa
import yaml

from hubs.client import HubClient
from hubs.hubsim.faults import unused_port
from hubsched import stack
from hubsched.testing import rabbitmq_url, redis_url

BASE_DIR = Path(__file__).resolve().parents[2]


def manage(env: dict, *args: str) -> str:
    done = subprocess.run(
        [sys.executable, "manage.py", *args], cwd=BASE_DIR, env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


STATUS_CODE = "import json; from groups.selectors import status_summary; print(json.dumps(status_summary()))"


def status(env: dict) -> dict | None:
    done = subprocess.run([sys.executable, "manage.py", "shell", "-c", STATUS_CODE], cwd=BASE_DIR, env=env,
                          capture_output=True, text=True, timeout=60)
    return json.loads(done.stdout.splitlines()[-1]) if done.returncode == 0 and done.stdout.strip() else None


def fetch(url: str) -> tuple[int, bytes]:
    with urllib.request.urlopen(url, timeout=5) as response:
        return response.status, response.read()


def broker(kind: str) -> str:
    if kind == "filesystem":
        return "filesystem://"
    if kind == "redis":
        url = redis_url()
        redis.Redis.from_url(url).flushdb()
        return url
    return rabbitmq_url()


@pytest.mark.timeout(180)
@pytest.mark.parametrize("kind", ["filesystem", "redis", "rabbitmq"])
def test_the_stack_runs_every_demo_group_stores_values_and_writes_back(tmp_path, kind):
    env = {
        **os.environ,
        "HUBSCHED_VAR_DIR": str(tmp_path),
        "DATABASE_URL": f"sqlite:///{tmp_path / 'hubsched.sqlite3'}",
        "HUBSCHED_SINK_URL": f"sqlite:///{tmp_path / 'values.sqlite3'}",
        "CELERY_BROKER_URL": broker(kind),
        "DJANGO_SETTINGS_MODULE": "hubsched.settings",
    }
    env.pop("CELERY_BEAT_SCHEDULER", None)
    hub_ports = {"hub-a": unused_port(), "hub-b": unused_port()}
    web_port, flower_port = unused_port(), unused_port()
    manage(env, "migrate", "--noinput")
    out = manage(env, "load_demo", *[f"--hub-url={n}=ws://127.0.0.1:{p}/connect" for n, p in hub_ports.items()])
    assert "admin user: admin / " in out
    runner = subprocess.Popen(
        [sys.executable, "manage.py", "runstack", "--port", str(web_port), "--flower-port", str(flower_port)],
        cwd=BASE_DIR, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        deadline, last = time.monotonic() + 90, None
        while time.monotonic() < deadline:
            last = status(env)
            # "dispatched" is counted by hubsched's beat scheduler only: proof that it, not the stock one, ran
            if last and last["groups"] and all(g["runs"] >= 1 and g["values"] >= 1 and g["dispatched"] >= 1 for g in last["groups"]):
                stage_runs = next(g for g in last["groups"] if g["name"] == "burner-stage")
                if stage_runs["done"] >= 2:
                    break
            time.sleep(1)
        else:
            logs = {p.name: p.read_text()[-2000:] for p in (tmp_path / "log").glob("*.log")}
            pytest.fail(f"not every group ran within 90 s: {last}\n{logs}")
        assert {g["name"] for g in last["groups"]} == {"line1-pumps", "burner-stage", "boiler", "mixer"}
        assert all(g["last_status"] == "ok" for g in last["groups"]), last
        engine = sa.create_engine(env["HUBSCHED_SINK_URL"])
        with engine.connect() as conn:
            stored = conn.execute(sa.text("SELECT COUNT(*) FROM hubsched_values")).scalar()
        engine.dispose()
        assert stored > 0 and last["values_acquired"] > 0  # the sink's forwarder reads what the recorder counts
        assert last["log"]["reachable"], last["log"]
        # the web server (uvicorn) answers, and serves the admin's static files (whitenoise, DEBUG on: from the apps)
        code, page = fetch(f"http://127.0.0.1:{web_port}/admin/login/")
        assert code == 200 and b"csrfmiddlewaretoken" in page
        code, css = fetch(f"http://127.0.0.1:{web_port}/static/admin/css/base.css")
        assert code == 200 and b"body" in css
        # Flower asks for the basic auth the stack made once in var/flower-credentials (not on its command line)
        credentials = (tmp_path / "flower-credentials").read_text().strip()
        with pytest.raises(urllib.error.HTTPError) as refused:
            fetch(f"http://127.0.0.1:{flower_port}/")
        assert refused.value.code == 401
        authorised = urllib.request.Request(f"http://127.0.0.1:{flower_port}/", headers={
            "Authorization": "Basic " + base64.b64encode(credentials.encode()).decode()})
        with urllib.request.urlopen(authorised, timeout=5) as response:
            assert response.status == 200
        with HubClient(f"ws://127.0.0.1:{hub_ports['hub-a']}/connect", "demo-key-a", timeout=5) as client:
            (stage,) = client.get_entity_params("plant/utilities/boiler/burner", ["stage"])
        assert stage["value"] in {2, 4, 8, 16, 32, 64, 128, 256, 512, 1024}  # doubled from 1 at least once
    finally:
        runner.terminate()
        output, _ = runner.communicate(timeout=30)
    assert runner.returncode == 0, output
    assert "stopped" in output
    assert "values acquired: " in output and "log: lag" in output  # the status line, read in-process
    user, password = credentials.split(":")
    assert f"flower user: {user} / {password} (kept in {tmp_path / 'flower-credentials'})" in output
    for pid_line in output.splitlines():
        if pid_line.startswith("started "):
            pid = int(pid_line.split("pid")[1].split()[0])
            assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text(), pid_line


def test_docker_compose_runs_the_same_commands_as_the_stack():
    compose = yaml.safe_load((BASE_DIR / "docker-compose.yml").read_text())["services"]
    assert compose["worker"]["command"] == ["python", *stack.worker_argv()[1:]]
    assert compose["jobs-worker"]["command"] == ["python", *stack.jobs_worker_argv()[1:]]
    assert compose["alarms"]["command"] == ["python", *stack.alarms_argv()[1:]]
    # the stack's beat uses settings.CELERY_BEAT_SCHEDULER, whose default is hubsched's scheduler
    assert compose["beat"]["command"] == ["python", *stack.beat_argv()[1:]]
    assert "groups.scheduler:Scheduler" in compose["beat"]["command"]
    for name, port in (("hub-a", 8765), ("hub-b", 8766)):
        assert compose[name]["command"] == ["python", *stack.hubsim_argv(host="0.0.0.0", port=port, name=name)[1:]]
    assert compose["web"]["command"] == ["python", *stack.web_argv(host="0.0.0.0", port=8000)[1:]]
    assert compose["flower"]["command"] == ["python", *stack.flower_argv(address="0.0.0.0", port=5555)[1:]]
    # published on this machine only, where the stack binds 127.0.0.1
    assert compose["web"]["ports"] == ["127.0.0.1:8000:8000"] and compose["flower"]["ports"] == ["127.0.0.1:5555:5555"]
    expected = {"web", "worker", "jobs-worker", "alarms", "beat", "flower", "redis", "postgres", "hub-a", "hub-b"}
    assert expected <= set(compose)
