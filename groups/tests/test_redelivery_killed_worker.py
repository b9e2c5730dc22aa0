"""A real Celery worker killed with SIGKILL while it holds batches (issue 19, item 3; docs/scheduler.md).

Each test runs a throwaway installation in its own directory: a Django SQLite database and an embedded log
(``hubsched.bench.e2e.environment``), a redis-server of its own on a free port (the broker of the Redis test,
the overlap locks of both), a slow hub (``hubs.hubsim.faults``, mode ``slow``: a running batch's reads wait
until its tick's expiry, so the worker is killed while it runs them) and the project's worker as shipped
(``hubsched.bench.e2e.hubsched_worker_argv`` with ``hubsched.stack.worker_argv``'s pool and concurrency, threads
x 8) on a queue of the test's own. The test sends ``group_batch_run`` messages as beat does
(``groups.scheduler.publish.BatchPublisher``, the tick's time as eta): one per thread, which run; four more due
at the same tick, prefetched and waiting for a thread; three of later ticks, held until their eta. It kills the
worker (SIGKILL, by pid) while all fifteen are unacknowledged, starts a second one once every tick sent has
expired, waits until every tick has an outcome in the log, records the runs (``manage.py forward --once``)
and checks:

- every tick sent has exactly one outcome in the log and one GroupRun, and each group's GroupStats add up to
  its ticks; every tick of the dead worker's messages is recorded ``missed`` (it came back past its expiry);
- Redis: the dead worker held all fifteen in kombu's ``unacked`` hash, and their outcomes were appended no
  sooner than the visibility timeout after their message was sent and no later than the visibility timeout
  plus one restore interval after the kill (plus ``SLACK_S``), the values read from the worker's own
  settings; RabbitMQ (a virtual host of the test's own): the broker counted them unacknowledged before the
  kill and ready right after it (the dead worker's connection closed), and their outcomes came within
  ``SLACK_S`` of the second worker's start.

Each writes ``redelivery.json`` beside its files, the times that docs/scheduler.md quotes.
"""

from __future__ import annotations

import base64
import json
import math
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path

import pytest

from hubs.hubsim.faults import serve_in_thread, unused_port
from hubsched.bench.common import ROOT, check, delete_queue
from hubsched.bench.e2e import API_KEY, _default_worker, environment, hubsched_worker_argv, sink_id, spawn, stop
from hubsched.testing import in_ci, rabbitmq_url

pytestmark = pytest.mark.timeout(240)

PERIOD_S = 1.0  # the groups' period
# the groups' expiry (Group.expires, which beat sends with their ticks): the running batches' reads are cut at it,
# so it must outlast the broker's view taken before the kill (rabbitmqctl takes a second or two); the ticks come
# back far later
EXPIRY_S = 5.0
POOL, CONCURRENCY = _default_worker()  # the worker as shipped (hubsched.stack.worker_argv): threads x 8
RESERVED = 4  # messages due at once beyond the worker's threads: prefetched, waiting for one
GROUPS = CONCURRENCY + RESERVED + 1
# A batch of missed ticks is appended in milliseconds; this covers a loaded machine (the log's write, a
# worker's poll): the documented slack of "within the visibility timeout plus one restore interval".
SLACK_S = 5.0
READY_TIMEOUT_S = 60.0


def _skip_or_fail(reason: str) -> None:
    if in_ci():
        pytest.fail(f"{reason} (CI=true: real servers are required)")
    pytest.skip(reason)


class OwnRedis:
    """A redis-server of the test's own on ``port`` (no persistence), in a temporary directory; ``close()``
    stops it by pid. Raises RuntimeError when redis-server is missing or does not start."""

    def __init__(self, *, port: int) -> None:
        program = shutil.which("redis-server")
        if program is None:
            raise RuntimeError("redis-server is not installed")
        self.dir = tempfile.mkdtemp(prefix="hubsched-redis-")
        self.url = f"redis://127.0.0.1:{port}/0"
        self.proc = subprocess.Popen([program, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                                      "--appendonly", "no", "--dir", self.dir], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                return
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.close()
                    raise RuntimeError(f"redis-server did not start on port {port}") from None
                time.sleep(0.05)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def own_redis():
    try:
        server = OwnRedis(port=unused_port())
    except RuntimeError as exc:
        _skip_or_fail(str(exc))
    yield server
    server.close()


@pytest.fixture
def slow_hub():
    """A hub that answers every request after 60 s: a batch's reads are given up at its tick's expiry."""
    with serve_in_thread("slow", key=API_KEY, delay=60.0) as hub:
        yield hub


class Installation:
    """The throwaway installation of one test (module docstring): its environment, workers and publisher."""

    def __init__(self, *, work: Path, broker: str, lock_url: str, hub_port: int) -> None:
        self.work, self.broker = work, broker
        self.queue = f"hubsched-redelivery-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.log_url = f"sqlite:///{work / 'log.sqlite3'}"
        self.env = {**environment(work=work, broker=broker, log_url=self.log_url),
                    "HUBSCHED_BENCH_QUEUE": self.queue, "HUBSCHED_LOCK_URL": lock_url,
                    "HUBSCHED_SINK_URL": f"sqlite:///{work / 'values.sqlite3'}"}
        self.workers: list[subprocess.Popen] = []
        check([sys.executable, str(ROOT / "manage.py"), "migrate", "--noinput", "-v", "0"], self.env)
        spec = {"groups": GROUPS, "keys": 2, "hubs": 1, "period": PERIOD_S, "ports": [hub_port],
                "sink": f"sqlite:///{work / 'values.sqlite3'}", "sink_id": sink_id()}
        check([sys.executable, "-m", "hubsched.bench.e2e", "populate", json.dumps(spec)], self.env)
        with sqlite3.connect(work / "django.sqlite3") as db:
            self.hub_id = db.execute("SELECT id FROM hubs_hub").fetchone()[0]
            db.execute("UPDATE groups_group SET expires = ?", (EXPIRY_S,))
        from celery import Celery

        self.app = Celery("hubsched-redelivery-test", broker=broker, set_as_current=False)
        self.app.conf.task_default_queue = self.queue
        self.sent: dict[tuple[int, int], float] = {}  # (group, tick ms) -> when its message was sent (epoch s)

    def worker_settings(self) -> dict:
        """What the worker reads from hubsched/settings.py in this environment: the transport options and prefetch."""
        code = ("import json, django; django.setup(); from django.conf import settings as s; "
                "print(json.dumps({'options': s.CELERY_BROKER_TRANSPORT_OPTIONS "
                "if s.CELERY_BROKER_URL.startswith('redis') else {}, "
                "'prefetch': s.CELERY_WORKER_PREFETCH_MULTIPLIER, 'acks_late': s.CELERY_TASK_ACKS_LATE}))")
        done = subprocess.run([sys.executable, "-c", code],
                              env={**self.env, "DJANGO_SETTINGS_MODULE": "hubsched.settings"},
                              cwd=ROOT, capture_output=True, text=True, check=True)
        return json.loads(done.stdout.strip().splitlines()[-1])

    def worker_start(self, i: int) -> tuple[subprocess.Popen, float]:
        """Start worker ``i`` and wait until it answers a ping; returns it and when it answered (epoch s)."""
        argv = hubsched_worker_argv(i, pool=POOL, concurrency=CONCURRENCY)
        proc = spawn(argv, env=self.env, log_path=self.work / f"worker{i}.log")
        self.workers.append(proc)
        name = argv[argv.index("-n") + 1]
        deadline = time.time() + READY_TIMEOUT_S
        while time.time() < deadline:
            if proc.poll() is not None:
                raise AssertionError(f"worker {i} exited: {(self.work / f'worker{i}.log').read_text()[-3000:]}")
            if self.app.control.ping(destination=[name], timeout=0.5):
                return proc, time.time()
        raise AssertionError(f"worker {i} did not answer a ping within {READY_TIMEOUT_S} s")

    def send(self, batches: list[tuple[list, float | None]]) -> None:
        """Send ``[(ticks, eta)]`` as beat does: ``group_batch_run(hub_id, ticks, limit)``, one round."""
        from groups.scheduler.publish import BatchPublisher

        with self.app.producer_or_acquire() as producer:
            publisher = BatchPublisher(self.app, lambda: producer)
            with publisher.batch():
                for ticks, eta in batches:
                    publisher.send(self.hub_id, ticks, 32, eta=eta)
                    at = time.time()
                    for t, _expiry, _rr, gids in ticks:
                        self.sent.update({(gid, round(t * 1000)): at for gid in gids})

    def outcomes(self) -> dict[tuple[int, int], list[tuple[str, float]]]:
        """``{(group, tick ms): [(status, appended at epoch s), ...]}`` of the log, in log order."""
        from streams.codec import outcome_header
        from streams.log import EXECUTIONS, Retention, log_open

        found: dict[tuple[int, int], list[tuple[str, float]]] = {}
        log = log_open(self.log_url, retention=Retention(7 * 24 * 3600.0, 1024**3))
        try:
            offset = 0
            while True:
                records = log.read(EXECUTIONS, offset=offset, max_records=1000)
                if not records:
                    return found
                for record in records:
                    head = outcome_header(record.body)
                    tick = round(datetime.fromisoformat(head["tick"]).timestamp() * 1000)
                    outcome = (head["status"], record.timestamp.timestamp())
                    found.setdefault((head["group_id"], tick), []).append(outcome)
                offset = records[-1].offset + 1
        finally:
            log.close()

    def outcomes_wait(self, *, timeout: float) -> dict:
        """Poll the log until every tick sent has an outcome; the outcomes, or AssertionError after ``timeout``."""
        deadline = time.time() + timeout
        while True:
            found = self.outcomes()
            if set(self.sent) <= set(found):
                return found
            if time.time() > deadline:
                missing = sorted(set(self.sent) - set(found))
                raise AssertionError(f"{len(missing)} ticks have no outcome {timeout:.0f} s after the kill: "
                                     f"{missing[:10]}")
            time.sleep(0.2)

    def runs_record(self) -> tuple[dict[tuple[int, int], list[str]], dict[int, int]]:
        """Record the runs (``manage.py forward --once``); the GroupRun statuses per (group, tick ms) and each
        group's GroupStats total (done + failed + skipped + missed + killed)."""
        check([sys.executable, str(ROOT / "manage.py"), "forward", "--once"], self.env)
        runs: dict[tuple[int, int], list[str]] = {}
        with sqlite3.connect(self.work / "django.sqlite3") as db:
            for gid, scheduled, status in db.execute("SELECT group_id, scheduled_for, status FROM groups_grouprun"):
                when = datetime.fromisoformat(scheduled).replace(tzinfo=timezone.utc)
                runs.setdefault((gid, round(when.timestamp() * 1000)), []).append(status)
            totals = dict(db.execute(
                "SELECT group_id, done + failed + skipped + missed + killed FROM groups_groupstats"))
        return runs, totals

    def summary_write(self, state: dict, found: dict, **settings) -> None:
        """``redelivery.json`` in the test's directory: when each tick's outcome was appended, counted from its
        message's send and from the kill (seconds), with the worker's settings; what docs/scheduler.md quotes."""
        delays = [(found[tick][0][1] - self.sent[tick], found[tick][0][1] - state["killed_at"]) for tick in self.sent]
        summary = {**settings, "messages": len(set(self.sent.values())), "ticks": len(self.sent),
                   "after_send_s": [round(min(d[0] for d in delays), 2), round(max(d[0] for d in delays), 2)],
                   "after_kill_s": [round(min(d[1] for d in delays), 2), round(max(d[1] for d in delays), 2)],
                   "second_worker_ready_after_kill_s": round(state["second_ready"] - state["killed_at"], 2)}
        (self.work / "redelivery.json").write_text(json.dumps(summary) + "\n")

    def close(self) -> None:
        for proc in self.workers:
            stop(proc, group=True)
        delete_queue(self.broker, self.queue)


def _kill(proc: subprocess.Popen) -> float:
    """SIGKILL the worker (by pid: what a crash does), wait for it; returns when it was killed (epoch s)."""
    os.kill(proc.pid, signal.SIGKILL)
    at = time.time()
    proc.wait(30)
    return at


def _scenario(inst: Installation, hub, *, held, held_after=None) -> dict:
    """Worker 1 holds messages (module docstring), is killed, worker 2 takes over. ``held()`` returns the
    broker's view of the unacknowledged messages now, ``held_after()`` (default ``held``) after the kill.
    Returns what the checks need."""
    first, _ = inst.worker_start(1)
    tick = math.ceil(time.time()) + 2.0
    expiry = EXPIRY_S
    # one message per group at the tick, as many as the worker has threads: they run, their reads waiting on the
    # slow hub until the tick expires; RESERVED more behind them, waiting for a thread; and the next ticks of one
    # group, held with their eta
    running = list(range(1, CONCURRENCY + RESERVED + 1))
    later = CONCURRENCY + RESERVED + 1
    inst.send([([[tick, expiry, 0, [gid]]], tick) for gid in running]
              + [([[tick + k, expiry, 0, [later]]], tick + k) for k in (1, 2, 3)])
    deadline = time.time() + 20
    while hub.faulty.received == 0:  # the first batch is reading
        assert time.time() < deadline, \
            f"the worker sent the hub nothing: {(inst.work / 'worker1.log').read_text()[-3000:]}"
        time.sleep(0.02)
    time.sleep(0.3)  # every thread is reading
    before = held()
    killed_at = _kill(first)
    assert not inst.outcomes(), "a batch had ended before the kill: the worker was not killed mid-tick"
    after = (held_after or held)()
    # the second worker starts once every tick sent is past its expiry: whatever it is given then, it records missed
    last_expiry = max(t for _, t in inst.sent) / 1000 + expiry
    time.sleep(max(0.0, last_expiry + 0.2 - time.time()))
    _, second_ready = inst.worker_start(2)
    return {"before": before, "after": after, "killed_at": killed_at, "second_ready": second_ready}


def _check_accounting(inst: Installation, found: dict, held_ticks: set[tuple[int, int]]) -> None:
    """Every tick sent: one outcome in the log, one GroupRun, GroupStats adding up; held ticks are missed."""
    runs, totals = inst.runs_record()
    assert {tick: len(outcomes) for tick, outcomes in found.items()} == {tick: 1 for tick in inst.sent}
    assert {tick: len(statuses) for tick, statuses in runs.items()} == {tick: 1 for tick in inst.sent}
    per_group: dict[int, int] = {}
    for gid, _ in inst.sent:
        per_group[gid] = per_group.get(gid, 0) + 1
    assert totals == per_group
    assert held_ticks and held_ticks <= set(inst.sent)
    assert {tick: runs[tick][0] for tick in held_ticks} == {tick: "missed" for tick in held_ticks}


# --- Redis ---------------------------------------------------------------------------------------------


def _redis_unacked(broker: str, queue: str) -> dict[bytes, list[tuple[int, int]]]:
    """``{delivery tag: [(group, tick ms)]}`` of ``queue``'s messages delivered and not acknowledged (kombu's
    hash ``unacked``, as ``hubsched.bench.faults._Probe.unacked`` reads it)."""
    import redis

    held = {}
    for tag, raw in redis.Redis.from_url(broker).hscan_iter("unacked"):
        message, _exchange, routing_key = json.loads(raw)
        if routing_key == queue:
            args = json.loads(base64.b64decode(message["body"]))[0]
            held[tag] = [(gid, round(t[0] * 1000)) for t in args[1] for gid in t[3]]
    return held


@pytest.mark.redis
def test_a_killed_workers_messages_come_back_on_redis_within_the_visibility_timeout(own_redis, slow_hub, tmp_path):
    inst = Installation(work=tmp_path, broker=own_redis.url, lock_url=own_redis.url, hub_port=slow_hub.port)
    try:
        configured = inst.worker_settings()
        options = configured["options"]
        assert configured["acks_late"] and options.get("unacked_restore_throttle") == 1
        timeout_s = float(options["visibility_timeout"])
        interval_s = float(options.get("unacked_restore_interval", 10))  # kombu's default
        state = _scenario(inst, slow_hub, held=lambda: _redis_unacked(own_redis.url, inst.queue))
        assert state["before"] == state["after"]  # SIGKILL: nothing went back at the death
        held_ticks = {tick for ticks in state["after"].values() for tick in ticks}
        # it held every message: those running, those waiting for a thread, those waiting for their eta
        assert held_ticks == set(inst.sent) and len(state["after"]) == CONCURRENCY + RESERVED + 3
        found = inst.outcomes_wait(timeout=timeout_s + interval_s + 60)
        inst.summary_write(state, found, broker="redis", options=options, prefetch=configured["prefetch"])
        _check_accounting(inst, found, held_ticks)
        for tick in sorted(held_ticks):
            (_status, appended), = found[tick]
            # taken no sooner than sent: back no sooner than the timeout after that; and no later than the
            # timeout plus one restore interval after the kill (taken by then), with the slack for the write
            assert appended >= inst.sent[tick] + timeout_s - 0.01, (tick, appended - inst.sent[tick])
            assert appended <= state["killed_at"] + timeout_s + interval_s + SLACK_S, \
                (tick, appended - state["killed_at"])
        assert _redis_unacked(own_redis.url, inst.queue) == {}
    finally:
        inst.close()


# --- RabbitMQ ------------------------------------------------------------------------------------------


@pytest.fixture
def rabbitmq_vhost():
    """A virtual host of the test's own on the shared RabbitMQ (``hubsched.bench.servers.RabbitMQVhost``),
    deleted after; its URL."""
    from hubsched.bench.servers import RabbitMQVhost

    url = rabbitmq_url()
    try:
        vhost = RabbitMQVhost(url, name=f"hubsched-redelivery-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    except RuntimeError as exc:
        _skip_or_fail(str(exc))
    yield vhost
    vhost.close()


def _rabbitmq_counts(vhost, queue: str) -> tuple[int, int]:
    """``(ready, unacknowledged)`` messages of ``queue`` as the broker counts them (``rabbitmqctl list_queues``)."""
    done = subprocess.run([vhost.ctl, "-q", "list_queues", "-p", vhost.name, "name", "messages_ready",
                           "messages_unacknowledged"], capture_output=True, text=True, timeout=60, check=True)
    for line in done.stdout.splitlines():
        fields = line.split()
        if fields and fields[0] == queue:
            return int(fields[1]), int(fields[2])
    raise AssertionError(f"queue {queue} is not in the virtual host: {done.stdout}")


@pytest.mark.rabbitmq
def test_a_killed_workers_messages_come_back_on_rabbitmq_when_its_connection_closes(own_redis, rabbitmq_vhost,
                                                                                  slow_hub, tmp_path):
    inst = Installation(work=tmp_path, broker=rabbitmq_vhost.url, lock_url=own_redis.url, hub_port=slow_hub.port)
    try:
        assert inst.worker_settings()["acks_late"]
        counts = lambda: _rabbitmq_counts(rabbitmq_vhost, inst.queue)  # noqa: E731

        def counts_after_close() -> tuple[int, int]:
            # the broker notices the closed connection at once; rabbitmqctl's view may lag by a moment
            deadline = time.time() + 10
            while (found := counts())[1] and time.time() < deadline:
                time.sleep(0.2)
            return found

        state = _scenario(inst, slow_hub, held=counts, held_after=counts_after_close)
        # it held every message: those running, those waiting for a thread, those waiting for their eta
        assert state["before"] == (0, CONCURRENCY + RESERVED + 3)
        # the dead worker's connection closed: the broker put every message back at once
        assert state["after"] == (CONCURRENCY + RESERVED + 3, 0)
        found = inst.outcomes_wait(timeout=60)
        inst.summary_write(state, found, broker="amqp", prefetch=inst.worker_settings()["prefetch"])
        held_ticks = set(inst.sent)  # none had an outcome at the kill, every one was held
        _check_accounting(inst, found, held_ticks)
        for tick in sorted(held_ticks):
            (_status, appended), = found[tick]
            assert appended <= state["second_ready"] + SLACK_S, (tick, appended - state["killed_at"])
    finally:
        inst.close()
