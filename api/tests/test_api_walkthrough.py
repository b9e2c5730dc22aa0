"""Issue 15's "tried as a new user would": with a token, docs/examples/api_walkthrough.py builds a project of
1,000 groups on the running stack (``make run``'s runstack), starts them, reads their runs and stops them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from hubs.hubsim.faults import unused_port

BASE_DIR = Path(__file__).resolve().parents[2]


def manage(env: dict, *args: str) -> str:
    done = subprocess.run([sys.executable, "manage.py", *args], cwd=BASE_DIR, env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout


def runs_of(base: str, token: str, group_id: int) -> int:
    request = urllib.request.Request(f"{base}/api/v1/groups/{group_id}/runs?limit=1",
                                     headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())["count"]


@pytest.mark.timeout(300)
def test_a_token_script_builds_starts_reads_and_stops_a_project_of_1000_groups(tmp_path):
    env = {**os.environ, "HUBSCHED_VAR_DIR": str(tmp_path), "DATABASE_URL": f"sqlite:///{tmp_path / 'hubsched.sqlite3'}",
           "HUBSCHED_SINK_URL": f"sqlite:///{tmp_path / 'values.sqlite3'}", "CELERY_BROKER_URL": "filesystem://",
           "DJANGO_SETTINGS_MODULE": "hubsched.settings"}
    env.pop("CELERY_BEAT_SCHEDULER", None)
    hub_ports = {"hub-a": unused_port(), "hub-b": unused_port()}
    web_port, flower_port = unused_port(), unused_port()
    manage(env, "migrate", "--noinput")
    manage(env, "load_demo", *[f"--hub-url={n}=ws://127.0.0.1:{p}/connect" for n, p in hub_ports.items()])
    token = manage(env, "apitoken", "create", "--user", "admin", "--name", "walkthrough").strip()
    stack = subprocess.Popen([sys.executable, "manage.py", "runstack", "--port", str(web_port), "--flower-port",
                              str(flower_port)], cwd=BASE_DIR, env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
    base = f"http://127.0.0.1:{web_port}"
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"{base}/api/health", timeout=5):
                    break
            except OSError:
                time.sleep(0.5)
        script_env = {**env, "HUBSCHED_URL": base, "HUBSCHED_TOKEN": token, "HUB_KEY": "demo-key-a"}
        done = subprocess.run([sys.executable, "docs/examples/api_walkthrough.py", "--hub-url",
                               f"ws://127.0.0.1:{hub_ports['hub-a']}/connect", "--groups", "1000", "--period", "2",
                               "--wait", "120"], cwd=BASE_DIR, env=script_env, capture_output=True, text=True, timeout=240)
        assert done.returncode == 0, done.stderr + done.stdout
        summary = json.loads(done.stdout.splitlines()[-1])
        assert token not in done.stdout + done.stderr
        assert summary["groups_created"] == 1000 and summary["enabled"] == 1000
        assert summary["would_add"] == summary["added"] > 0  # the dry run said what the sync then did
        assert summary["sampled_with_ok_runs"] == summary["sampled"] == 20, summary
        assert summary["disabled"] == 1000 and summary["disabled_listed"] == 1000
        # stopped: once a tick in flight has been recorded, no new runs arrive
        time.sleep(6)
        from_api = json.loads(urllib.request.urlopen(urllib.request.Request(
            f"{base}/api/v1/groups?hub={summary['hub']}&limit=1", headers={"Authorization": f"Bearer {token}"}),
            timeout=30).read())
        first_group = from_api["items"][0]["id"]
        settled = runs_of(base, token, first_group)
        time.sleep(6)  # three periods
        assert runs_of(base, token, first_group) == settled
    finally:
        stack.terminate()
        output, _ = stack.communicate(timeout=60)
    assert stack.returncode == 0, output[-3000:]
