"""Overlap locks and hub gates heal fast: a dead holder frees them within one TTL, a live one keeps them (issue 13)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from groups.scheduler.dispatch import hub_batch_run
from groups.scheduler.locks import DatabaseLocks, FileLocks, RedisLocks
from hubsched.testing import mariadb_url, postgres_url, redis_url

ROOT = Path(__file__).resolve().parents[2]
HUB = 7
GROUPS = [1, 2, 3]

# A worker process that takes the groups' locks and a slot of the hub's gate, says so, and then works forever.
HOLDER = """
import sys, time
from groups.scheduler.locks import DatabaseLocks, FileLocks, RedisLocks
kind, where, ttl = sys.argv[1], sys.argv[2], float(sys.argv[3])
locks = (RedisLocks(sys.argv[4], ttl=ttl, prefix=where) if kind == "redis" else FileLocks(where) if kind == "files"
         else DatabaseLocks(sys.argv[4], prefix=where))
token, got = locks.acquire([1, 2, 3])
gate = locks.gate_enter(7, 1)
print("held" if got == [1, 2, 3] and gate is not None else f"not held: {got} {gate}", flush=True)
while True:
    time.sleep(60)
"""


@pytest.fixture
def prefix(tmp_path):
    """A key prefix of the test's own; its keys are deleted afterwards."""
    name = f"hubsched-test-heal-{tmp_path.name}"
    yield name
    import redis

    client = redis.Redis.from_url(redis_url())
    for key in client.scan_iter(f"{name}:*"):
        client.delete(key)


@pytest.fixture
def made():
    """RedisLocks made by a test, their heartbeats stopped afterwards."""
    backends = []

    def make(*args, **kwargs):
        backends.append(RedisLocks(*args, **kwargs))
        return backends[-1]

    yield make
    for backend in backends:
        backend.stop_heartbeat()


SERVER_URLS = {"redis": redis_url, "postgresql": postgres_url, "mariadb": mariadb_url}


def _start_holder(kind: str, where: str, ttl: float) -> subprocess.Popen:
    args = [sys.executable, "-c", HOLDER, kind, where, str(ttl), SERVER_URLS[kind]() if kind in SERVER_URLS else ""]
    holder = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": str(ROOT)})
    line = holder.stdout.readline().strip()
    assert line == "held", line
    return holder


def _take_all(locks, *, deadline_s: float) -> tuple[float | None, str | None]:
    """Poll until this process holds every group and a gate slot; returns (when, gate token) or (None, None)."""
    end = time.monotonic() + deadline_s
    pending = list(GROUPS)
    gate = None
    while time.monotonic() < end:
        got = locks.acquire(pending)[1]
        pending = [gid for gid in pending if gid not in got]
        gate = gate or locks.gate_enter(HUB, 1)
        if not pending and gate is not None:
            return time.monotonic(), gate
        time.sleep(0.02)
    return None, None


def _other(kind: str, where: str, ttl: float, made):
    if kind == "redis":
        return made(redis_url(), ttl=ttl, prefix=where)
    return FileLocks(where) if kind == "files" else DatabaseLocks(SERVER_URLS[kind](), prefix=where)


@pytest.mark.parametrize("kind", ["redis", "files", "postgresql", "mariadb"])
def test_a_worker_killed_with_sigkill_frees_its_locks_and_gate_slot_within_two_seconds(kind, prefix, made, tmp_path):
    ttl = 0.8  # HUBSCHED_RUN_LOCK_TTL_S as shipped
    where = str(tmp_path / "locks") if kind == "files" else prefix
    other = _other(kind, where, ttl, made)
    holder = _start_holder(kind, where, ttl)
    try:
        assert other.acquire(GROUPS)[1] == [] and other.gate_enter(HUB, 1) is None  # held by the live worker
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(10)
    killed = time.monotonic()
    if kind == "redis":
        import redis

        client = redis.Redis.from_url(redis_url())
        remaining = [client.pttl(f"{prefix}:run:{gid}") for gid in GROUPS]
        assert all(ms <= ttl * 1000 for ms in remaining), remaining  # nobody extends them any more
    got_at, gate = _take_all(other, deadline_s=10)
    assert got_at is not None, "another worker never got the dead worker's locks and gate slot"
    assert got_at - killed <= ttl + 0.5, f"blocked {got_at - killed:.2f} s after the kill"


def test_a_batch_that_runs_longer_than_the_ttl_keeps_its_locks_and_gate_slot(prefix, made):
    ttl = 0.6
    worker, other = made(redis_url(), ttl=ttl, prefix=prefix), made(redis_url(), ttl=ttl, prefix=prefix)
    probes = []

    def slow_execution(runs):  # the batch works for five TTLs; another worker keeps trying to take over
        end = time.monotonic() + 5 * ttl
        while time.monotonic() < end:
            probes.append((other.acquire([gid for gid, _ in runs])[1], other.gate_enter(HUB, 1)))
            time.sleep(0.05)

    out = hub_batch_run(hub_id=HUB, ticks=[[time.time(), 60.0, 0, GROUPS]], limit=1, locks=worker,
                        execute=slow_execution, record=False)
    assert [gid for gid, _ in out.ran] == GROUPS
    assert len(probes) > 10 and all(probe == ([], None) for probe in probes), [p for p in probes if p != ([], None)][:3]
    token, got = other.acquire(GROUPS)  # released at the end of the batch
    assert got == GROUPS and other.gate_enter(HUB, 1) is not None


def test_a_holder_paused_past_the_ttl_loses_its_locks_and_once_resumed_touches_nobody_elses(prefix, made):
    import redis

    client = redis.Redis.from_url(redis_url())
    paused = made(redis_url(), ttl=0.5, prefix=prefix)
    token, got = paused.acquire(GROUPS)
    gate = paused.gate_enter(HUB, 1)
    assert got == GROUPS and gate is not None
    assert paused.held(token, GROUPS) == GROUPS
    paused.stop_heartbeat()  # the pause: its process stops beating (SIGSTOP, a VM pause, a Redis outage)

    other = made(redis_url(), ttl=30.0, prefix=prefix)
    got_at, other_gate = _take_all(other, deadline_s=10)
    assert got_at is not None, "the paused holder's locks never lapsed"
    other.stop_heartbeat()  # from now on the other's locks only count down from 30 s
    others = {gid: client.get(f"{prefix}:run:{gid}") for gid in GROUPS}

    # resumed: before its next chunk the batch asks which locks it still holds (checked in Redis: they are
    # stale), then its heartbeat beats; both compare-and-extend, and find nothing of their own
    assert paused.held(token, GROUPS) == []
    assert paused.heartbeat() == 0
    paused.release(token, GROUPS)
    paused.gate_leave(HUB, gate)
    paused.refresh(token, GROUPS)
    for gid in GROUPS:  # still the other's, and not shortened to the paused holder's 0.5 s TTL
        assert client.get(f"{prefix}:run:{gid}") == others[gid]
        assert client.pttl(f"{prefix}:run:{gid}") > 20_000
    assert client.zrange(f"{prefix}:hub:{HUB}", 0, -1) == [other_gate.encode()]


def test_a_lapsed_gate_lease_is_not_revived_by_its_resumed_holder(prefix, made):
    import redis

    client = redis.Redis.from_url(redis_url())
    paused = made(redis_url(), ttl=0.3, prefix=prefix)
    gate = paused.gate_enter(HUB, 1)
    assert gate is not None
    paused.stop_heartbeat()
    time.sleep(0.5)  # past its TTL; nobody entered the gate since, so the lapsed lease is still in the set
    assert paused.heartbeat() == 0
    assert client.zrange(f"{prefix}:hub:{HUB}", 0, -1) == []


def test_the_heartbeat_thread_starts_on_first_use_and_not_before(prefix, made):
    def beating():
        return [t for t in threading.enumerate() if t.name == "hubsched-lock-heartbeat"]

    before = len(beating())
    locks = made(redis_url(), ttl=1.0, prefix=prefix)
    assert len(beating()) == before
    token, _ = locks.acquire([1])
    assert len(beating()) == before + 1
    locks.release(token, [1])
    locks.stop_heartbeat()
    assert len(beating()) == before


@pytest.mark.parametrize("kind", ["postgresql", "mariadb"])
def test_a_database_lock_holder_paused_for_longer_than_a_ttl_keeps_what_it_holds(kind, prefix):
    """Session locks have no TTL: a holder stopped with SIGSTOP for 3 s (past any lease) still holds its locks and
    its gate slot, and nobody takes them meanwhile; they are free once it is killed."""
    holder = _start_holder(kind, prefix, 2.0)
    other = DatabaseLocks(SERVER_URLS[kind](), prefix=prefix)
    try:
        holder.send_signal(signal.SIGSTOP)
        end = time.monotonic() + 3.0
        while time.monotonic() < end:
            assert other.acquire(GROUPS)[1] == [] and other.gate_enter(HUB, 1) is None
            time.sleep(0.1)
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(10)
    assert _take_all(other, deadline_s=10)[0] is not None
    other.close()


@pytest.mark.parametrize("kind", ["postgresql", "mariadb"])
def test_database_locks_exclude_the_threads_of_one_process_and_a_prefix_of_another_installation(kind, prefix):
    url = SERVER_URLS[kind]()
    locks, elsewhere = DatabaseLocks(url, prefix=prefix), DatabaseLocks(url, prefix=prefix + "-other")
    try:
        token, got = locks.acquire(GROUPS)
        assert got == GROUPS and locks.acquire(GROUPS)[1] == []  # a session may retake its own lock: we do not
        assert elsewhere.acquire(GROUPS)[1] == GROUPS  # another prefix, other locks
        slots = [locks.gate_enter(HUB, 2), locks.gate_enter(HUB, 2), locks.gate_enter(HUB, 2)]
        assert slots[:2] == ["0", "1"] and slots[2] is None
        assert locks.held(token, GROUPS + [99]) == GROUPS
        locks.release(token, [1])
        locks.gate_leave(HUB, "0")
        assert elsewhere.acquire([1])[1] == [] and DatabaseLocks(url, prefix=prefix).acquire([1])[1] == [1]
    finally:
        locks.close()
        elsewhere.close()


def test_database_locks_lost_with_their_connection_are_not_claimed_as_held(prefix):
    import sqlalchemy as sa

    url = postgres_url()
    locks = DatabaseLocks(url, prefix=prefix)
    token, got = locks.acquire(GROUPS)
    assert got == GROUPS
    pid = locks._conn.execute(sa.text("SELECT pg_backend_pid()")).scalar()
    admin = sa.create_engine(url, poolclass=sa.pool.NullPool)
    with admin.connect() as conn:  # the server ends the lock session (a restart, a network cut)
        assert conn.execute(sa.text("SELECT pg_terminate_backend(:pid)"), {"pid": pid}).scalar()
    with pytest.raises(sa.exc.SQLAlchemyError):
        locks.acquire([4])
    assert locks.held(token, GROUPS) == []
    assert locks.acquire(GROUPS)[1] == GROUPS  # a new session takes them again (nobody else held them)
    locks.close()
