"""jobs.runner for real: shell commands as processes (environment, kill of the whole tree, timeout, bounded output),
HTTP calls against a local http.server, and sandboxed scripts writing to a SQLite file through sql()."""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import sqlalchemy as sa

from jobs.runner import Command, Progress, command_run, url_masked

SCRIPTS = Path(__file__).parent / "scripts"


@pytest.fixture(autouse=True)
def jobs_settings(settings, tmp_path):
    settings.HUBSCHED_JOBS_DIR = tmp_path / "jobs-dir"
    settings.HUBSCHED_JOBS_SHELL = True
    settings.HUBSCHED_JOBS_KILL_GRACE_S = 5.0
    return settings


def shell(*argv: str, cwd: Path, **extra) -> Command:
    return Command(kind="shell", argv=tuple(argv), working_directory=str(cwd), **extra)


def process_gone(pid: int, within_s: float = 5.0) -> bool:
    """Whether ``pid`` no longer runs: no such process, or a zombie (dead, waiting for init to reap it)."""
    deadline = time.monotonic() + within_s
    while True:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        try:
            if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
                return True
        except (FileNotFoundError, IndexError):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)


def file_appears(path: Path, within_s: float = 10.0) -> bool:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        if path.exists() and path.read_text().strip():
            return True
        time.sleep(0.02)
    return False


def stop_when(path: Path, reason: str = "killed by alice"):
    """A ``should_stop`` that asks for a stop once ``path`` holds something (the command's child has started)."""
    return lambda: reason if path.exists() and path.read_text().strip() else None


# --- shell ------------------------------------------------------------------------------------------------------

def test_a_shell_script_writes_its_file_and_the_attempt_is_ok(tmp_path):
    attempt = command_run(shell("sh", str(SCRIPTS / "write_file.sh"), "out.txt", "hello", cwd=tmp_path),
                          timeout=10, output_limit=4096)
    assert (attempt.status, attempt.exit_code, attempt.error) == ("ok", 0, "")
    assert (tmp_path / "out.txt").read_text() == "hello\n"
    assert attempt.stdout == "wrote out.txt\n"
    assert attempt.stdout_bytes == len("wrote out.txt\n")
    assert attempt.pid


def test_a_failing_exit_code_is_a_failed_attempt_with_the_code(tmp_path):
    attempt = command_run(shell("bash", "-c", "echo oops >&2; exit 3", cwd=tmp_path), timeout=10, output_limit=4096)
    assert (attempt.status, attempt.exit_code, attempt.error) == ("failed", 3, "exit code 3")
    assert attempt.stderr == "oops\n"


def test_a_program_not_found_is_a_failed_attempt_not_an_exception(tmp_path):
    attempt = command_run(shell("no-such-program-here", cwd=tmp_path), timeout=10, output_limit=4096)
    assert attempt.status == "failed"
    assert "program not found: 'no-such-program-here'" in attempt.error
    assert attempt.exit_code is None


def test_a_file_that_is_not_executable_is_a_failed_attempt(tmp_path):
    program = tmp_path / "plain.txt"
    program.write_text("echo hi\n")
    attempt = command_run(shell(str(program), cwd=tmp_path), timeout=10, output_limit=4096)
    assert attempt.status == "failed"
    assert "not executable" in attempt.error


def test_shell_jobs_turned_off_run_nothing(tmp_path, settings):
    settings.HUBSCHED_JOBS_SHELL = False
    attempt = command_run(shell("sh", str(SCRIPTS / "write_file.sh"), "out.txt", "hello", cwd=tmp_path),
                          timeout=10, output_limit=4096)
    assert attempt.status == "failed"
    assert attempt.error == "shell jobs are turned off on this worker (HUBSCHED_JOBS_SHELL)"
    assert not (tmp_path / "out.txt").exists()


def test_a_relative_working_directory_is_made_below_the_jobs_dir_and_is_home(settings):
    attempt = command_run(Command(kind="shell", argv=("sh", "-c", 'pwd; echo "$HOME"'), working_directory="exports/a"),
                          timeout=10, output_limit=4096)
    where = (Path(settings.HUBSCHED_JOBS_DIR) / "exports" / "a").resolve()
    assert attempt.status == "ok"
    assert attempt.stdout.splitlines() == [str(where), str(Path(settings.HUBSCHED_JOBS_DIR) / "exports" / "a")]


def test_the_job_sees_its_own_variables_and_none_of_the_workers(tmp_path, monkeypatch):
    monkeypatch.setenv("HUBSCHED_TEST_SECRET", "x")
    attempt = command_run(shell("env", cwd=tmp_path, environment={"EXPORT_TARGET": "plant-a"}),
                          timeout=10, output_limit=65536)
    variables = dict(line.split("=", 1) for line in attempt.stdout.splitlines())
    assert attempt.status == "ok"
    assert "HUBSCHED_TEST_SECRET" not in variables
    assert "DJANGO_SETTINGS_MODULE" not in variables
    assert variables["EXPORT_TARGET"] == "plant-a"
    assert variables["LANG"] == "C.UTF-8"
    assert variables["HOME"] == str(tmp_path)
    assert variables["PATH"] == "/usr/local/bin:/usr/bin:/bin"


def test_the_jobs_path_replaces_the_default_one(tmp_path):
    (tmp_path / "bin").mkdir()
    tool = tmp_path / "bin" / "own-tool"
    tool.write_text("#!/bin/sh\necho own tool ran\n")
    tool.chmod(0o755)
    attempt = command_run(shell("own-tool", cwd=tmp_path, environment={"PATH": f"{tmp_path / 'bin'}:/usr/bin:/bin"}),
                          timeout=10, output_limit=4096)
    assert (attempt.status, attempt.stdout) == ("ok", "own tool ran\n")


def test_a_kill_stops_the_command_and_its_child(tmp_path):
    child_pid = tmp_path / "child.pid"
    attempt = command_run(shell("bash", "-c", "sleep 300 & echo $! > child.pid; wait", cwd=tmp_path),
                          timeout=60, output_limit=4096, should_stop=stop_when(child_pid), kill_grace=5)
    assert (attempt.status, attempt.error) == ("killed", "killed by alice")
    assert attempt.exit_code == -15  # bash died of the SIGTERM: no SIGKILL was needed
    assert process_gone(attempt.pid)
    assert process_gone(int(child_pid.read_text()))


def test_a_command_ignoring_sigterm_is_sigkilled_after_the_grace_time(tmp_path):
    ready = tmp_path / "child.pid"
    script = "trap '' TERM; sleep 300 & echo $! > child.pid; while true; do wait; done"
    attempt = command_run(shell("bash", "-c", script, cwd=tmp_path), timeout=60, output_limit=4096,
                          should_stop=stop_when(ready, "replaced by a newer run"), kill_grace=0.5)
    assert (attempt.status, attempt.error) == ("killed", "replaced by a newer run")
    assert attempt.exit_code == -9
    assert process_gone(attempt.pid)
    assert process_gone(int(ready.read_text()))


def test_a_command_past_its_timeout_is_stopped_with_its_group(tmp_path):
    attempt = command_run(shell("bash", "-c", "sleep 30 & echo $! > child.pid; sleep 30", cwd=tmp_path),
                          timeout=0.5, output_limit=4096, kill_grace=2)
    assert (attempt.status, attempt.error) == ("timeout", "timed out after 0.5 s")
    assert attempt.exit_code == -15
    assert process_gone(attempt.pid)
    assert file_appears(tmp_path / "child.pid")
    assert process_gone(int((tmp_path / "child.pid").read_text()))


def test_sleep_past_its_timeout_is_a_timeout(tmp_path):
    attempt = command_run(shell("sleep", "30", cwd=tmp_path), timeout=0.5, output_limit=4096, kill_grace=2)
    assert attempt.status == "timeout"
    assert process_gone(attempt.pid)


def test_what_a_command_leaves_running_in_its_group_is_killed_when_it_exits(tmp_path):
    attempt = command_run(shell("bash", "-c", "sleep 300 & echo $! > child.pid", cwd=tmp_path),
                          timeout=30, output_limit=4096)
    assert attempt.status == "ok"
    assert process_gone(int((tmp_path / "child.pid").read_text()))


def test_only_the_last_bytes_of_a_large_output_are_kept_and_the_sizes_counted(tmp_path):
    code = (
        "import sys\n"
        "sys.stdout.buffer.write(b'a' * (1048576 - 4096) + b'b' * 4095 + b'!')\n"
        "sys.stderr.buffer.write(b'x' * 10000 + b'the end of stderr')\n"
    )
    attempt = command_run(shell(sys.executable, "-c", code, cwd=tmp_path), timeout=30, output_limit=4096)
    assert attempt.status == "ok"
    assert attempt.stdout_bytes == 1048576
    assert attempt.stdout == "b" * 4095 + "!"
    assert attempt.stderr_bytes == 10000 + len("the end of stderr")
    assert attempt.stderr == "x" * (4096 - len("the end of stderr")) + "the end of stderr"


def test_progress_reports_the_pid_at_once_and_the_output_as_it_grows(tmp_path):
    seen: list[Progress] = []
    attempt = command_run(
        shell("bash", "-c", "for i in 1 2 3 4 5 6 7 8; do echo line$i; sleep 0.25; done", cwd=tmp_path),
        timeout=30, output_limit=4096, on_progress=seen.append, progress_every=0.2,
    )
    assert attempt.status == "ok"
    assert seen[0].pid == attempt.pid
    sizes = [p.stdout_bytes for p in seen]
    assert sizes == sorted(sizes)
    assert any(0 < size < attempt.stdout_bytes for size in sizes)
    assert all(attempt.stdout.startswith(p.stdout) for p in seen)


def test_an_exception_in_a_callback_kills_the_command_and_propagates(tmp_path):
    def broken() -> None:
        if (tmp_path / "child.pid").exists():
            raise RuntimeError("the database went away")

    started: list[Progress] = []
    with pytest.raises(RuntimeError, match="the database went away"):
        command_run(shell("bash", "-c", "sleep 300 & echo $! > child.pid; wait", cwd=tmp_path), timeout=60,
                    output_limit=4096, on_progress=started.append, should_stop=broken)
    assert process_gone(started[0].pid)
    assert process_gone(int((tmp_path / "child.pid").read_text()))


# --- http -------------------------------------------------------------------------------------------------------

class Recorder(BaseHTTPRequestHandler):
    received: list[dict]

    def log_message(self, *args) -> None:
        pass

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        self.server.received.append({"method": self.command, "path": self.path, "body": body,
                                     "headers": dict(self.headers)})
        if self.path.startswith("/slow"):
            time.sleep(5)
        status = 503 if self.path.startswith("/unavailable") else 200
        reply = b"z" * 10000 if self.path.startswith("/big") else b'{"accepted": true}'
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        try:
            self.wfile.write(reply)
        except OSError:
            pass  # the client gave up (timeout, kill)

    do_GET = do_POST = do_PUT = _answer


@pytest.fixture
def http_server():
    server = ThreadingHTTPServer(("127.0.0.1", 0), Recorder)
    server.daemon_threads = True
    server.received = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def http(url: str, **extra) -> Command:
    return Command(kind="http", url=url, **extra)


def test_a_post_sends_its_json_body_and_headers(http_server):
    server, base = http_server
    attempt = command_run(http(f"{base}/hook", body={"plant": "a", "n": 3}, headers={"X-Token": "t1"}),
                          timeout=10, output_limit=4096)
    assert (attempt.status, attempt.http_status, attempt.error) == ("ok", 200, "")
    assert attempt.stdout == '{"accepted": true}'
    [request] = server.received
    assert request["method"] == "POST"
    assert json.loads(request["body"]) == {"plant": "a", "n": 3}
    assert request["headers"]["Content-Type"] == "application/json"
    assert request["headers"]["X-Token"] == "t1"


def test_a_request_without_body_sends_none(http_server):
    server, base = http_server
    attempt = command_run(http(f"{base}/ping", method="GET"), timeout=10, output_limit=4096)
    assert attempt.status == "ok"
    assert server.received[0]["method"] == "GET" and server.received[0]["body"] == b""


def test_a_status_outside_the_success_codes_fails(http_server):
    _, base = http_server
    attempt = command_run(http(f"{base}/unavailable"), timeout=10, output_limit=4096)
    assert (attempt.status, attempt.http_status, attempt.error) == ("failed", 503, "HTTP 503 Service Unavailable")


def test_a_status_in_the_success_codes_is_ok(http_server):
    _, base = http_server
    attempt = command_run(http(f"{base}/unavailable", success_codes="200-299,503"), timeout=10, output_limit=4096)
    assert (attempt.status, attempt.http_status) == ("ok", 503)


def test_the_first_bytes_of_a_large_response_are_kept(http_server):
    _, base = http_server
    attempt = command_run(http(f"{base}/big"), timeout=10, output_limit=100)
    assert attempt.stdout == "z" * 100
    assert attempt.stdout_bytes == 10000


def test_a_refused_connection_fails_without_the_urls_password():
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound, not listening: connections are refused
        attempt = command_run(http(f"http://bob:hunter2secret@127.0.0.1:{port}/hook"), timeout=10, output_limit=4096)
    assert attempt.status == "failed"
    assert "refused" in attempt.error.lower()
    assert "hunter2secret" not in attempt.error
    assert attempt.http_status is None


def test_a_slow_server_past_the_timeout_is_a_timeout(http_server):
    _, base = http_server
    attempt = command_run(http(f"{base}/slow"), timeout=0.5, output_limit=4096)
    assert (attempt.status, attempt.error) == ("timeout", "timed out after 0.5 s")


def test_a_request_waiting_for_a_slow_server_can_be_killed(http_server):
    server, base = http_server
    attempt = command_run(http(f"{base}/slow"), timeout=None, output_limit=4096,
                          should_stop=lambda: "killed by alice" if server.received else None)
    assert (attempt.status, attempt.error) == ("killed", "killed by alice")
    assert not [t for t in threading.enumerate() if t.name == "job-http"]  # its socket was shut: the thread ended


def test_a_timed_out_request_leaves_no_thread_behind(http_server):
    _, base = http_server
    attempt = command_run(http(f"{base}/slow"), timeout=0.5, output_limit=4096)
    assert attempt.status == "timeout"
    assert not [t for t in threading.enumerate() if t.name == "job-http"]


def test_url_masked_hides_the_user_information():
    assert url_masked("https://bob:pw@example.com:8443/x?y=1") == "https://***@example.com:8443/x?y=1"
    assert url_masked("https://example.com/x") == "https://example.com/x"


# --- script -----------------------------------------------------------------------------------------------------

def script(code: str, **extra) -> Command:
    return Command(kind="script", code=code, **extra)


def test_a_script_inserts_into_a_sqlite_data_source(tmp_path):
    path = tmp_path / "x.sqlite3"
    code = (
        'sql("db").query("CREATE TABLE t (x INTEGER)")\n'
        'sql("db").insert("t", [{"x": 41}, {"x": 42}])\n'
        'print("inserted")\n'
    )
    sources = {"db": {"url": f"sqlite:///{path}", "writable": True, "allow_ddl": True}}
    attempt = command_run(script(code, data_sources=sources), timeout=30, output_limit=4096)
    assert (attempt.status, attempt.error) == ("ok", "")
    assert attempt.stdout == "inserted\n"
    engine = sa.create_engine(f"sqlite:///{path}")
    with engine.connect() as conn:
        assert [row[0] for row in conn.execute(sa.text("SELECT x FROM t ORDER BY x"))] == [41, 42]
    engine.dispose()


def test_a_script_raising_fails_with_its_line_number():
    attempt = command_run(script('print("before")\nx = 1 / 0\n'), timeout=30, output_limit=4096)
    assert attempt.status == "failed"
    assert attempt.error.startswith("line 2")
    assert "ZeroDivisionError" in attempt.error


def test_a_script_past_its_cpu_time_is_a_timeout():
    attempt = command_run(script("while True:\n    pass\n", script_timeout=0.3), timeout=30, output_limit=4096)
    assert attempt.status == "timeout"


def test_a_running_script_can_be_killed():
    started = time.monotonic()
    attempt = command_run(script("while True:\n    pass\n", script_timeout=30), timeout=60, output_limit=4096,
                          should_stop=lambda: "killed by alice" if time.monotonic() - started > 0.5 else None)
    assert (attempt.status, attempt.error) == ("killed", "killed by alice")


@pytest.mark.django_db
def test_a_command_is_built_from_a_script_job_with_its_projects_data_sources(tmp_path):
    from hubs.models import Project
    from jobs.models import Job
    from scripts_engine.models import DataSource, Script

    project = Project.objects.create(name="plant")
    code = 'print("hi")'
    job = Job.objects.create(project=project, name="j", kind="script",
                             script=Script.objects.create(project=project, name="s", code=code, timeout=1.5))
    DataSource.objects.create(project=project, name="db", url=f"sqlite:///{tmp_path / 'y.sqlite3'}", writable=True)
    command = Command.from_job(job)
    assert (command.kind, command.code, command.script_timeout) == ("script", code, 1.5)
    assert command.data_sources["db"]["writable"] is True
    assert command_run(command, timeout=30, output_limit=4096).stdout == "hi\n"
