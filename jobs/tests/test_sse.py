"""The live tail of a run (jobs/sse.py): a thread writes the run row as a worker would while the test reads."""

from __future__ import annotations

import json
import threading
import time

import pytest
from django.db import connection
from django.utils import timezone

from api.testing import token_client
from hubs.models import Project
from jobs import sse
from jobs.models import Job, JobRun, JobRunStatus

pytestmark = pytest.mark.timeout(60)


def events(chunks) -> list[tuple[str, dict | None]]:
    """``[(event name, data)]`` of SSE bytes; comments and ``retry:`` as ``(":", None)``."""
    out = []
    for block in b"".join(chunks).decode().split("\n\n"):
        if not block.strip():
            continue
        fields = dict(line.split(": ", 1) for line in block.split("\n") if not line.startswith(":") and ": " in line)
        if "event" in fields:
            out.append((fields["event"], json.loads(fields["data"])))
        else:
            out.append((":", None))
    return out


@pytest.fixture
def run(transactional_db):
    from hubsched.roles import roles_sync

    roles_sync()  # a flush between transactional tests empties the role groups
    project = Project.objects.create(name="plant")
    job = Job.objects.create(project=project, name="export", kind="shell", argv=["true"], output_limit_kib=1)
    return JobRun.objects.create(job=job, scheduled_for=timezone.now(), status=JobRunStatus.RUNNING,
                                 started_at=timezone.now())


def test_it_sends_the_output_so_far_then_each_new_part_then_end(run, monkeypatch):
    monkeypatch.setattr(sse, "POLL_S", 0.05)
    JobRun.objects.filter(pk=run.pk).update(stdout="line 1\n", stdout_bytes=7)
    seen = threading.Event()
    reader_events: list = []

    def worker():
        # writes the row as jobs.execution does, after the reader has had the first part
        seen.wait(10)
        JobRun.objects.filter(pk=run.pk).update(stdout="line 1\nline 2\n", stdout_bytes=14, stderr="oops\n",
                                                stderr_bytes=5)
        time.sleep(0.3)
        JobRun.objects.filter(pk=run.pk).update(status=JobRunStatus.OK, exit_code=0, finished_at=timezone.now())
        connection.close()

    client = token_client(role="viewer")
    response = client.get(f"/api/v1/jobs/{run.job_id}/runs/{run.pk}/tail")
    assert response.status_code == 200 and response["Content-Type"].startswith("text/event-stream")
    thread = threading.Thread(target=worker)
    thread.start()
    chunks = []
    for chunk in response.streaming_content:
        chunks.append(chunk)
        reader_events = events(chunks)
        if any(name == "stdout" for name, _ in reader_events):
            seen.set()
    thread.join(10)
    named = [(n, d) for n, d in reader_events if n != ":"]
    assert named == [
        ("stdout", {"text": "line 1\n", "offset": 0}),
        ("stdout", {"text": "line 2\n", "offset": 7}),
        ("stderr", {"text": "oops\n", "offset": 0}),
        ("end", {"status": "ok", "exit_code": 0, "http_status": None, "error": "", "stdout_bytes": 14,
                 "stderr_bytes": 5}),
    ]


def test_a_gap_larger_than_what_is_kept_is_said_as_skipped_bytes():
    tail = sse.Tail()
    out, done = tail.step({"status": "running", "stdout": "a" * 10, "stdout_bytes": 10, "stderr": "", "stderr_bytes": 0,
                           "exit_code": None, "http_status": None, "error": ""})
    assert not done and events([out]) == [("stdout", {"text": "a" * 10, "offset": 0})]
    out, done = tail.step({"status": "failed", "stdout": "b" * 1024, "stdout_bytes": 5000, "stderr": "",
                           "stderr_bytes": 0, "exit_code": 1, "http_status": None, "error": "exit 1"})
    assert done
    got = events([out])
    assert got[0] == ("skipped", {"stream": "stdout", "bytes": 5000 - 1024 - 10})
    assert got[1] == ("stdout", {"text": "b" * 1024, "offset": 5000 - 1024})
    assert got[2][0] == "end" and got[2][1]["status"] == "failed"


def test_a_new_part_that_starts_inside_a_character_is_cut_at_the_next_one():
    tail = sse.Tail()
    tail.sent["stdout"] = 1  # one byte of "é" (two bytes) was sent
    out, _ = tail.step({"status": "running", "stdout": "éx", "stdout_bytes": 3, "stderr": "", "stderr_bytes": 0,
                        "exit_code": None, "http_status": None, "error": ""})
    assert events([out]) == [("stdout", {"text": "x", "offset": 2})]


def test_an_http_body_keeps_its_first_bytes_and_the_rest_is_skipped():
    tail = sse.Tail(head=True)
    out, _ = tail.step({"status": "ok", "stdout": "head", "stdout_bytes": 100, "stderr": "", "stderr_bytes": 0,
                        "exit_code": None, "http_status": 200, "error": ""})
    got = events([out])
    assert got[:2] == [("stdout", {"text": "head", "offset": 0}), ("skipped", {"stream": "stdout", "bytes": 96})]


def test_a_finished_run_is_sent_whole_and_ended_at_once(run):
    JobRun.objects.filter(pk=run.pk).update(status="killed", stdout="bye", stdout_bytes=3, killed_by="ann")
    response = token_client(role="viewer").get(f"/api/v1/jobs/{run.job_id}/runs/{run.pk}/tail")
    got = [e for e in events(response.streaming_content) if e[0] != ":"]
    assert got[0] == ("stdout", {"text": "bye", "offset": 0}) and got[1][0] == "end" and got[1][1]["status"] == "killed"


def test_a_silent_run_gets_heartbeats(monkeypatch):
    monkeypatch.setattr(sse, "HEARTBEAT_S", 0.0)
    rows = iter([{"status": "running", "stdout": "", "stdout_bytes": 0, "stderr": "", "stderr_bytes": 0,
                  "exit_code": None, "http_status": None, "error": ""}] * 2 + [None])
    chunks = list(sse.tail_events(1, read=lambda _id: next(rows), sleep=lambda s: None))
    assert b": keep-alive\n\n" in chunks
    assert events(chunks)[-1][1]["status"] == "deleted"


def test_an_unknown_run_is_404_before_anything_streams(run):
    response = token_client(role="viewer").get(f"/api/v1/jobs/{run.job_id}/runs/{run.pk + 1}/tail")
    assert response.status_code == 404 and response.json()["error"]["code"] == "not_found"


def test_under_uvicorn_the_tail_streams_each_part_as_it_is_written(run, monkeypatch):
    """The real server: uvicorn with hubsched's ASGI application, read incrementally with http.client."""
    import http.client
    import socket

    import uvicorn

    from api.services import api_token_create
    from api.testing import user_with
    from hubsched.asgi import application

    monkeypatch.setattr(sse, "POLL_S", 0.05)
    _row, raw = api_token_create(user=user_with(role="viewer"), name="sse")
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(application, lifespan="off", log_level="warning", timeout_graceful_shutdown=5))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.01)
    try:
        conn = http.client.HTTPConnection(*sock.getsockname(), timeout=10)
        conn.request("GET", f"/api/v1/jobs/{run.job_id}/runs/{run.pk}/tail", headers={"Authorization": f"Bearer {raw}"})
        response = conn.getresponse()
        assert response.status == 200 and response.getheader("Content-Type").startswith("text/event-stream")
        assert response.readline() == b"retry: 5000\n"  # sent before any output: the stream is live
        JobRun.objects.filter(pk=run.pk).update(stdout="part 1\n", stdout_bytes=7)
        lines = []
        while b'"part 1' not in b"".join(lines):
            lines.append(response.readline())
        JobRun.objects.filter(pk=run.pk).update(status=JobRunStatus.FAILED, exit_code=2, finished_at=timezone.now())
        rest = response.read()  # the server ends the stream after `end`
        got = [e for e in events(lines + [rest]) if e[0] != ":"]
        assert got[0] == ("stdout", {"text": "part 1\n", "offset": 0})
        assert got[-1][0] == "end" and got[-1][1]["status"] == "failed" and got[-1][1]["exit_code"] == 2
        conn.close()
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()
