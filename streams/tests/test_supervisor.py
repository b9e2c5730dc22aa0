"""The forwarder supervisor (``manage.py forward``, streams/forwarding/process.py) running for real: a consumer's
process killed with SIGKILL is started again, and its consumer resumes at its committed offset, so that a sink
(a SQLite file) gets every value once; a supervisor killed with SIGKILL leaves no consumer behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa

from scripts_engine.sinks import ExecutionValues, sink_engine, sinks_dispose
from scripts_engine.sinks.offsets import offset_read
from streams.codec import execution_encode
from streams.log import EXECUTIONS, log
from streams.tests.helpers import TICK, stored, wait_until

pytestmark = pytest.mark.timeout(120)

ROOT = Path(__file__).resolve().parents[2]
TABLE = "hubsched_values"

# run in the forwarder's Django database: a project with one sink, whose pk is printed
SINK_MAKE = textwrap.dedent("""
    from datetime import datetime, timezone
    from hubs.models import Project
    from scripts_engine.models import Sink
    project = Project.objects.create(name="plant")
    sink = Sink.objects.create(project=project, name="main", url={url!r}, created_at=datetime(2026, 1, 1, tzinfo=timezone.utc))
    print(project.pk, sink.pk)
""")


def manage(env: dict, *args: str) -> str:
    done = subprocess.run([sys.executable, str(ROOT / "manage.py"), *args], env=env, cwd=ROOT, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def children(pid: int) -> dict[str, int]:
    """``{consumer name: pid}`` of the ``forward --consumer NAME`` processes the supervisor ``pid`` runs now."""
    found = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        for child in (task / "children").read_text().split():
            try:
                argv = Path(f"/proc/{child}/cmdline").read_bytes().split(b"\0")
            except FileNotFoundError:  # ended meanwhile
                continue
            if b"--consumer" in argv:
                found[argv[argv.index(b"--consumer") + 1].decode()] = int(child)
    return found


def executions(numbers) -> list[tuple[int, str]]:
    """What ``stored`` reads once the executions ``numbers`` (``append``) are stored, each once."""
    return sorted((1000 + n, key) for n in numbers for key in ("flow", "pressure"))


def append(project_id: int, numbers) -> None:
    """Append execution ``n`` of group ``1000 + n`` (two values) for each of ``numbers``, one record each, in one append."""
    bodies = []
    for n in numbers:
        values = [("plant/line1/pump1", [{"key": "flow", "value": float(n)}, {"key": "pressure", "value": 6.0}])]
        bodies.append(execution_encode(ExecutionValues(TICK + timedelta(seconds=n), "plant", "hub-a", 1000 + n, f"g{n}",
                                                       values), project_id=project_id))
    log().append(EXECUTIONS, bodies)


def forwarder_row(db_path: Path, name: str) -> tuple[str, int, int | None]:
    """``(owner, executions_total, position)`` the consumer ``name``'s leader last reported."""
    engine = sa.create_engine(f"sqlite:///{db_path}")
    try:
        with engine.connect() as conn:
            return tuple(conn.execute(sa.text("SELECT owner, executions_total, position FROM streams_forwarder "
                                              "WHERE name = :n"), {"n": name}).one())
    finally:
        engine.dispose()


@dataclass
class Supervised:
    """A ``manage.py forward`` of the test's own: its process, the sink it forwards to and the files it uses."""

    process: subprocess.Popen
    project_id: int
    name: str  # the sink forwarder's consumer name
    sink_url: str
    db_path: Path
    log_path: Path

    def said(self) -> str:
        return self.log_path.read_text()[-4000:]


@pytest.fixture
def supervised(tmp_path, settings):
    """A Django database (SQLite file, migrated) with a project and its SQLite sink, and ``manage.py forward`` on it
    and on this test's log, running; stopped (SIGTERM, then SIGKILL) after the test."""
    db_path = tmp_path / "django.sqlite3"
    sink_url = f"sqlite:///{tmp_path / 'values.sqlite3'}"
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "hubsched.settings", "HUBSCHED_VAR_DIR": str(tmp_path / "var"),
           "DATABASE_URL": f"sqlite:///{db_path}", "HUBSCHED_LOG_URL": settings.HUBSCHED_LOG_URL,  # this test's log
           "HUBSCHED_SINK_URL": f"sqlite:///{tmp_path / 'default.sqlite3'}", "HUBSCHED_SINK_WRITERS": "1",
           "HUBSCHED_SINK_BATCH_SIZE": "40",  # 20 executions a commit: many commits, one of them cut by the kill
           "HUBSCHED_FORWARDER_LEASE_S": "1", "HUBSCHED_FORWARDER_REPORT_S": "0.2",
           "HUBSCHED_FORWARDER_BACKOFF_MAX_S": "0.5"}
    manage(env, "migrate", "--noinput", "-v", "0")
    project_id, sink_id = map(int, manage(env, "shell", "-v", "0", "-c", SINK_MAKE.format(url=sink_url)).split()[-2:])
    log_path = tmp_path / "forward.log"
    with log_path.open("w") as output:
        process = subprocess.Popen([sys.executable, str(ROOT / "manage.py"), "forward"], env=env, cwd=ROOT,
                                   stdout=output, stderr=subprocess.STDOUT)
    try:
        yield Supervised(process, project_id, f"sink:{sink_id}", sink_url, db_path, log_path)
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(10)
        sinks_dispose()


def test_a_consumer_process_killed_is_started_again_and_resumes_at_its_committed_offset(supervised):
    supervisor, name, sink_url = supervised.process, supervised.name, supervised.sink_url
    append(supervised.project_id, range(50))
    wait_until(lambda: stored(sink_url, TABLE) == executions(range(50)))
    first = children(supervisor.pid)
    assert set(first) == {"runs", name}, supervised.said()

    for start in range(50, 2050, 500):  # a backlog it works through, killed part of the way
        append(supervised.project_id, range(start, start + 500))
    wait_until(lambda: len(stored(sink_url, TABLE)) > 2 * 50, timeout=30)  # it has begun on the backlog
    os.kill(first[name], signal.SIGKILL)
    wait_until(lambda: not alive([first[name]]), timeout=10)
    # what the killed process committed, read before another can commit (its lease runs 1 s, the supervisor
    # looks every 5 s): its last transaction, cut by the kill, is in or out whole
    committed = offset_read(sink_engine(sink_url), sink_url, name)
    before = len(stored(sink_url, TABLE)) // 2
    assert before < 2050, "the kill came after everything was stored: nothing left to catch up"
    append(supervised.project_id, range(2050, 2100))  # acquired while its forwarder is down: the log holds them
    wait_until(lambda: children(supervisor.pid).get(name, first[name]) != first[name], timeout=15)

    last = log().stats(EXECUTIONS).last_offset
    wait_until(lambda: offset_read(sink_engine(sink_url), sink_url, name) == last, timeout=60)
    assert stored(sink_url, TABLE) == executions(range(2100)), supervised.said()  # every value, none twice
    restarted = children(supervisor.pid)
    assert restarted["runs"] == first["runs"] and restarted[name] != first[name]
    # the new process read from the committed offset + 1: it committed exactly the executions after it
    wait_until(lambda: forwarder_row(supervised.db_path, name)[2] == last)
    owner, executions_total, _ = forwarder_row(supervised.db_path, name)
    assert owner.endswith(f":{restarted[name]}")
    assert executions_total == 2100 - before and committed == before - 1  # offsets 0..before-1 were committed
    assert "its process ended (exit -9); starting it again" in supervised.said()

    supervisor.terminate()
    assert supervisor.wait(30) == 0, supervised.said()
    assert not alive([*first.values(), *restarted.values()])  # it stopped its consumers


def test_consumers_die_with_a_supervisor_killed_by_sigkill(supervised):
    wait_until(lambda: set(children(supervised.process.pid)) == {"runs", supervised.name})
    consumers = list(children(supervised.process.pid).values())
    os.kill(supervised.process.pid, signal.SIGKILL)
    supervised.process.wait(10)
    try:
        wait_until(lambda: not alive(consumers), timeout=10)  # PR_SET_PDEATHSIG: no consumer left behind
    finally:
        for pid in alive(consumers):  # the supervisor's, left behind: they would run on after the test
            os.kill(pid, signal.SIGKILL)


def alive(pids) -> list[int]:
    """Those of ``pids`` still running (neither gone nor a zombie waiting for its parent)."""
    alive = []
    for pid in pids:
        try:
            status = Path(f"/proc/{pid}/stat").read_text().split()[2]
        except FileNotFoundError:
            continue
        if status != "Z":
            alive.append(pid)
    return alive
