"""Failover benchmark: beats on Redis killed with ``kill -9`` (ticks missed, twice, lost); a worker killed at a tick.

One invocation: a throwaway SQLite database with ``--groups`` interval groups over ``--hubs`` hubs (the same rows
``bench scheduler`` makes); a fresh Redis queue and beat key prefix of its own (``HUBSCHED_BEAT_KEY_PREFIX``), so
that it never contends with an installation's beats on the same Redis; a *worker stub* (a kombu consumer on that
queue that applies the fence exactly as ``groups.scheduler.dispatch.hub_batch_run`` does, through
``groups.scheduler.leader.Fence``, and records every batch it would run); and two beats started as a user starts
them (``celery -A hubsched.bench.celeryapp beat -S groups.scheduler:Scheduler``).

Once the first beat sends and the second has loaded its groups, ``--kills`` times: wait a random 2-4 s, find the
leader from the lease (``groups.scheduler.leader.beat_leader``), ``kill -9`` it, wait, and start a new beat in its
place so that two run again. Then it reports:

- ``failover_ms`` (p50, max): receipt of the old leader's last batch that ran to the new leader's first;
  ``kill_to_first_ms`` the same from the kill;
- ``ticks_dispatched_twice``: (group, tick) pairs the stub would have run more than once (target 0);
- ``ticks_missed``: group ticks counted missed, by the new leader (its log line on taking the lead) and by the
  worker's expiry (a batch that would start after its tick's expiry);
- ``ticks_lost``: group ticks of the measured ticks that were neither run nor counted missed (target 0);
- ``refused_batches`` and ``fence_reads_per_batch`` (the worker's cost of the fence).

The worker part (``--part worker``; ``all``, the default, runs both): another throwaway database with
``--worker-groups`` groups over ``--worker-hubs`` hubs, one beat, and two *stand-in workers* (``work``). Each
runs every batch through ``groups.scheduler.dispatch.hub_batch_run``, the body of the ``group_batch_run`` task,
with the fence and the overlap locks and hub gates of ``groups.scheduler.locks.RedisLocks`` (TTL
``HUBSCHED_RUN_LOCK_TTL_S``, its heartbeat thread) on the bench's own key prefix; only the execution is a sleep
of ``--work-ms`` per chunk instead of hub reads. (A real Celery worker takes the locks through
``locks_backend()``, whose key prefix is always ``hubsched``: it would share keys with an installation on the same
Redis.) ``--worker-kills`` times, the next worker in turn is killed with ``kill -9`` as soon as it starts
executing a tick that is due (its locks held), the run locks its token holds in Redis are read at once, and no
replacement starts until the survivor has run each of them again. It reports:

- ``groups_blocked_s`` (p50, max): per held group, kill to the tick time of its first tick the survivor
  executed (target at most 2 s); ``groups_resumed_s`` the same to when that execution started, and
  ``locks_freed_s`` to when the dead worker's locks lapsed (their PTTL at the kill);
- ``ticks_skipped_by_dead_holder``: ticks of those groups the survivor skipped in between (lock held).

The hub part (``--part hub``): another throwaway database with ``--hub-groups`` groups of 10 keys on a master
reference hub in a master/backup redundancy set (docs/redundancy.md) with a backup serving the same entities; both
hubs are real ``manage.py hubsim`` processes. A child process (``hub-tick``) executes every group's tick each
period through ``groups.execution.execute_batch(ticks=..., expire=True)`` (the execution of the batch task; the
outcomes are counted, not appended to the log) and writes one row per batch. ``--hub-kills`` times the master is
killed with ``kill -9`` at a random moment; before a next kill it is started again on its port and the bench waits
until a tick is served by it again (failback). It reports ``ticks_lost_to_hub_failover`` (ticks from a kill on that
failed or were not executed; target 0) and ``hub`` (see ``hub_analyse``).
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from datetime import datetime
from pathlib import Path

from hubsched.bench.common import ROOT, check, delete_queue, percentile, queue_consume

HELP = ("Two beats on Redis, the leader killed with kill -9 three times: failover time, ticks missed, twice, lost; "
        "two workers, one killed with kill -9 at a tick: how long its groups stay blocked; the master hub of a "
        "redundancy set killed with kill -9: ticks lost to the hub failover.")

PARTS = ("beat", "worker", "hub", "all")

HUB_KEY = "bench-failover-key"
HUB_KEYS = 10  # keys per group of the hub part, on one entity each
HUB_FAILBACK_S = 3.0  # the set's failback_after_s

TOOK = re.compile(r"took the lead \(epoch (\d+)\): (\d+) group ticks of the gap sent late, (\d+) missed")


def add_arguments(parser) -> None:
    parser.add_argument("--groups", type=int, default=10_000, help="Interval groups (default 10000).")
    parser.add_argument("--hubs", type=int, default=100, help="Hubs the groups are spread over (default 100).")
    parser.add_argument("--period", type=float, default=1.0, help="Period of every group, seconds (default 1).")
    parser.add_argument("--kills", type=int, default=3, help="How many times the leader is killed (default 3).")
    parser.add_argument("--broker", default=os.environ.get("HUBSCHED_BENCH_BROKER", "redis://127.0.0.1:6379/0"),
                        help="Redis URL of the broker.")
    parser.add_argument("--seed", type=int, default=None, help="Seed of the random kill moments.")
    parser.add_argument("--pause", type=float, default=0.0,
                        help="Instead of kill -9, stop the leader (SIGSTOP) this many seconds, longer than its "
                             "lease, then let it go on (SIGCONT): the old leader wakes up (default 0: kill).")
    parser.add_argument("--warmup-timeout", type=float, default=180.0, help="Longest wait for a beat to start.")
    parser.add_argument("--part", choices=PARTS, default="all",
                        help="beat: beats killed; worker: a worker killed at a tick; hub: the master hub of a "
                             "redundancy set killed; all: the three (default all).")
    parser.add_argument("--worker-kills", type=int, default=3,
                        help="How many times a worker is killed in the worker part (default 3).")
    parser.add_argument("--worker-groups", type=int, default=1_000,
                        help="Interval groups of the worker part (default 1000).")
    parser.add_argument("--worker-hubs", type=int, default=10, help="Hubs of the worker part (default 10).")
    parser.add_argument("--work-ms", type=float, default=50.0,
                        help="How long the stand-in workers execute one chunk of a batch, ms (default 50).")
    parser.add_argument("--hub-groups", type=int, default=100,
                        help="Groups of 10 keys on the master hub in the hub part (default 100).")
    parser.add_argument("--hub-kills", type=int, default=1,
                        help="How many times the master hub is killed in the hub part (default 1).")
    parser.add_argument("--hub-seconds", type=float, default=20.0,
                        help="How long the hub part executes ticks, at least, seconds (default 20).")
    parser.add_argument("--hub-kill-offset-ms", type=float, default=None,
                        help="Kill the master this many ms after a tick's start (its reads under way) instead of "
                             "at a random moment of the period (default: random).")


def run(*, groups: int, hubs: int, period: float, kills: int, broker: str, seed: int | None = None,
        warmup_timeout: float = 180.0, pause: float = 0.0, part: str = "beat", worker_kills: int = 3,
        worker_groups: int = 1_000, worker_hubs: int = 10, work_ms: float = 50.0, hub_groups: int = 100,
        hub_kills: int = 1, hub_seconds: float = 20.0, hub_kill_offset_ms: float | None = None,
        log=lambda _: None) -> dict:
    """Run the beat part, the worker part, the hub part or all three (``part``: beat, worker, hub, all; the
    command's default is all, this function's beat, as before the other parts existed).

    Returns ``{"params": {...}, "failover_ms": {"p50", "max"}, "kill_to_first_ms": {...}, "ticks_missed",
    "ticks_dispatched_twice", "ticks_lost", ...}`` for the beat part and ``"groups_blocked_s": {"min", "p50", "max"}``
    (seconds), ``"ticks_skipped_by_dead_holder"`` and ``"worker": {...}`` (see ``worker_run``) for the worker
    part; ``"ticks_lost_to_hub_failover"`` and ``"hub": {...}`` (see ``hub_run``) for the hub part; raises
    ValueError for an unknown part, RuntimeError when a process does not start."""
    if part not in PARTS:
        raise ValueError(f"unknown part {part!r}; known: {', '.join(PARTS)}")
    result: dict = {"params": {"groups": groups, "hubs": hubs, "period": period, "kills": kills,
                               "broker": broker.split("@")[-1], "cpus": os.cpu_count(), "seed": seed,
                               "pause_s": pause, "part": part}}
    if part in ("beat", "all"):
        result.update(_beat_run(groups=groups, hubs=hubs, period=period, kills=kills, broker=broker, seed=seed,
                                warmup_timeout=warmup_timeout, pause=pause, log=log))
    if part in ("worker", "all"):
        worker = worker_run(groups=worker_groups, hubs=worker_hubs, period=period, kills=worker_kills,
                            broker=broker, work_ms=work_ms, seed=seed, warmup_timeout=warmup_timeout, log=log)
        result["groups_blocked_s"] = worker.pop("groups_blocked_s")
        result["ticks_skipped_by_dead_holder"] = worker.pop("ticks_skipped_by_dead_holder")
        result["worker"] = worker
    if part in ("hub", "all"):
        hub = hub_run(groups=hub_groups, period=period, kills=hub_kills, seconds=hub_seconds, seed=seed,
                      broker=broker, kill_offset_ms=hub_kill_offset_ms, log=log)
        result["ticks_lost_to_hub_failover"] = hub["ticks_lost_to_hub_failover"]
        result["hub"] = hub
    return result


def _beat_run(*, groups: int, hubs: int, period: float, kills: int, broker: str, seed: int | None,
              warmup_timeout: float, pause: float, log) -> dict:
    """The beat part: two beats, the leader killed (or paused) ``kills`` times; the keys of ``_analyse``."""
    work = Path(tempfile.mkdtemp(prefix="hubsched-failover-"))
    tag = f"hubsched-bench-failover-{os.getpid()}"
    env = _env(work, broker, tag)
    rng = random.Random(seed)
    result: dict = {}
    beats: dict[int, tuple[subprocess.Popen, Path]] = {}
    consumer = None
    out = work / "stub.json"
    kill_log: list[dict] = []
    try:
        log(f"failover: migrating a throwaway database in {work}")
        check([sys.executable, str(ROOT / "manage.py"), "migrate", "--noinput", "-v", "0"], env)
        log(f"failover: creating {groups} groups on {hubs} hubs at {period} s")
        check([sys.executable, "-m", "hubsched.bench.scheduler", "populate", str(groups), str(hubs), str(period)], env)
        consumer = subprocess.Popen([sys.executable, "-m", "hubsched.bench.failover", "consume", broker, tag, str(out)],
                                    env=env, cwd=ROOT)
        _wait(lambda: (work / "stub.json.ready").exists(), 30, "the worker stub did not start", consumer)
        for slot in (0, 1):
            beats[slot] = _start_beat(env, work, slot, 0)
            _wait(lambda: "groups in" in beats[slot][1].read_text(), warmup_timeout, "a beat did not load its groups",
                  beats[slot][0])
        _wait(lambda: _leader(broker, tag) is not None, 30, "no beat took the lead")
        time.sleep(2 * period + 1)
        started = time.time()
        for k in range(kills):
            time.sleep(rng.uniform(2.0, 4.0))
            leader = _leader(broker, tag)
            slot = next((s for s, (p, _) in beats.items() if leader and p.pid == leader["pid"]), None)
            if slot is None:
                raise RuntimeError(f"the leader {leader} is none of the beats started")
            at = time.time()
            if pause:
                os.kill(beats[slot][0].pid, signal.SIGSTOP)
                log(f"failover: SIGSTOP of the leader (epoch {leader['epoch']}, pid {leader['pid']}) for {pause} s")
            else:
                os.kill(beats[slot][0].pid, signal.SIGKILL)
                beats[slot][0].wait()
                log(f"failover: kill -9 of the leader (epoch {leader['epoch']}, pid {leader['pid']})")
            kill_log.append({"at": at, "epoch": leader["epoch"]})
            _wait(lambda: (_leader(broker, tag) or {}).get("epoch", 0) > leader["epoch"], 30, "no beat took over")
            if pause:
                time.sleep(max(0.0, at + pause - time.time()))
                os.kill(beats[slot][0].pid, signal.SIGCONT)  # it wakes up believing it leads
                continue
            beats[slot] = _start_beat(env, work, slot, k + 1)
            _wait(lambda: "groups in" in beats[slot][1].read_text(), warmup_timeout, "a new beat did not start",
                  beats[slot][0])
        time.sleep(2 * period + 1)
        ended = time.time()
    finally:
        _stop_all([process for process, _ in beats.values()])
        if consumer is not None:
            time.sleep(1.5)  # what the last round sent is still on its way
            consumer.send_signal(signal.SIGTERM)
            consumer.wait(60)
        delete_queue(broker, tag)
        _drop_keys(broker, tag)
    try:
        stub = json.loads(out.read_text())
        logs = "".join(p.read_text() for p in sorted(work.glob("beat-*.log")))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    result.update(_analyse(stub, logs, kill_log, groups=groups, period=period, started=started, ended=ended))
    return result


def report(result: dict) -> str:
    p = result["params"]
    lines = []
    if "failover_ms" in result:
        what = f"pauses of {p['pause_s']} s" if p.get("pause_s") else "kills"
        lines.append(f"{p['groups']} groups, {p['hubs']} hubs, period {p['period']} s, {p['kills']} {what}, "
                     f"{p['cpus']} CPUs")
        for key in ("failover_ms", "kill_to_first_ms"):
            lines.append(f"{key:24} p50 {result[key]['p50']}  max {result[key]['max']}")
        for key in ("ticks_dispatched_twice", "ticks_missed", "ticks_missed_by_beat", "ticks_missed_by_expiry",
                    "ticks_sent_late", "ticks_lost", "ticks_expected", "refused_batches", "fence_reads_per_batch"):
            lines.append(f"{key:24} {result[key]}")
    if "worker" in result:
        w = result["worker"]
        q = w["params"]
        lines.append(f"worker part: {q['groups']} groups, {q['hubs']} hubs, period {q['period']} s, {q['kills']} "
                     f"kills of a worker at a tick, {q['work_ms']} ms per chunk, {p['cpus']} CPUs")
        spreads = (("groups_blocked_s", result["groups_blocked_s"]), ("groups_resumed_s", w["groups_resumed_s"]),
                   ("locks_freed_s", w["locks_freed_s"]))
        for key, spread in spreads:
            lines.append(f"{key:28} min {spread['min']}  p50 {spread['p50']}  max {spread['max']}")
        lines.append(f"{'ticks_skipped_by_dead_holder':28} {result['ticks_skipped_by_dead_holder']}")
        for key in ("groups_held", "groups_never_resumed"):
            lines.append(f"{key:28} {w[key]}")
    if "hub" in result:
        h = result["hub"]
        q = h["params"]
        lines.append(f"hub part: {q['groups']} groups of {q['keys']} keys on a master/backup set, period "
                     f"{q['period']} s, {q['kills']} kill -9 of the master, {p['cpus']} CPUs")
        lines.append(f"{'ticks_lost_to_hub_failover':28} {result['ticks_lost_to_hub_failover']}")
        for key in ("ticks_expected", "ok_master", "ok_backup", "failed", "not_executed", "failover_ticks",
                    "failed_before_kill"):
            lines.append(f"{key:28} {h[key]}")
        lines.append(f"{'batch_ms':28} p50 {h['batch_ms']['p50']}  max {h['batch_ms']['max']}")
        for kill in h["kills"]:
            where = " (in a batch)" if kill["in_batch"] else ""
            lines.append(f"kill at +{kill['at_s']} s{where}: first backup-served tick stored {kill['first_backup_s']} "
                         f"s after, lost {kill['lost']}, failback after {kill.get('failback_s')} s")
        for error, n in h["errors"].items():
            lines.append(f"  {n} x {error}")
    return "\n".join(lines) + "\n"


def _analyse(stub: dict, logs: str, kills: list[dict], *, groups: int, period: float, started: float,
             ended: float) -> dict:
    batches = stub["batches"]  # [recv, epoch, seq, admitted, eta, [[t, expiry, n], ...]]
    ran = [b for b in batches if b[3]]
    failover, kill_to_first = [], []
    for kill in kills:
        old = [b[0] for b in ran if b[1] == kill["epoch"]]
        new = [b[0] for b in ran if b[1] > kill["epoch"] and b[0] >= kill["at"]]
        if old and new:
            failover.append(((min(new) - max(old)) * 1000.0, 1))
            kill_to_first.append(((min(new) - kill["at"]) * 1000.0, 1))
    taken = [tuple(int(x) for x in m.groups()) for m in TOOK.finditer(logs)]
    missed_by_beat = sum(m for _, _, m in taken)
    late_sent = sum(n for _, n, _ in taken)
    expired = 0
    for recv, _, _, _, eta, ticks in ran:
        startable = max(recv, eta or recv)
        expired += sum(n for t, expiry, n in ticks if startable - t > expiry)
    # the measured ticks: every instant of the groups' grid (one cohort) from the first kill's wait to a period
    # before the end, whether or not anything arrived for it
    per_tick = {float(t): n for t, n in stub["per_tick"].items()}
    window = []
    if per_tick:
        first = min(per_tick)
        k = max(0, int((started - first) // period))
        while first + k * period <= ended - period:
            t = round(first + k * period, 6)
            if t >= started:
                window.append(t)
            k += 1
    expected = groups * len(window)
    received = sum(per_tick.get(t, 0) for t in window)
    return {
        "failover_ms": {"p50": percentile(sorted(failover), 0.5),
                        "max": round(max(v for v, _ in failover), 1) if failover else None},
        "kill_to_first_ms": {"p50": percentile(sorted(kill_to_first), 0.5),
                             "max": round(max(v for v, _ in kill_to_first), 1) if kill_to_first else None},
        "ticks_dispatched_twice": stub["twice"],
        "ticks_missed": missed_by_beat + expired,
        "ticks_missed_by_beat": missed_by_beat,
        "ticks_missed_by_expiry": expired,
        "ticks_sent_late": late_sent,
        "ticks_expected": expected,
        "ticks_lost": max(0, expected - received - missed_by_beat),
        "refused_batches": sum(1 for b in batches if not b[3]),
        "fence_reads_per_batch": round(stub["reads"] / len(batches), 4) if batches else None,
        "takeovers": len(taken),
    }


def worker_run(*, groups: int, hubs: int, period: float, kills: int, broker: str, work_ms: float = 50.0,
               seed: int | None = None, warmup_timeout: float = 180.0, log=lambda _: None) -> dict:
    """The worker part: one beat, two stand-in workers (``work``); ``kills`` times one of them is killed with
    ``kill -9`` right as it executes a tick, holding that batch's overlap locks.

    The dead worker's groups are the run locks its token holds in Redis just after the kill. Returns
    ``{"params", **blocked_analyse(...)}``: ``groups_blocked_s`` (seconds, kill to the tick time of each such
    group's first execution by the surviving worker), ``ticks_skipped_by_dead_holder``, ``locks_freed_s`` (kill
    to the lapse of the dead worker's locks, from their PTTL) and the rest that ``blocked_analyse`` names;
    raises RuntimeError when a process does not start or a kill finds nothing to kill at a tick."""
    work = Path(tempfile.mkdtemp(prefix="hubsched-failover-worker-"))
    tag = f"hubsched-bench-failover-w-{os.getpid()}"
    env = _env(work, broker, tag)
    rng = random.Random(seed)
    workers: dict[int, tuple[subprocess.Popen, Path]] = {}
    beat = None
    kill_log: list[dict] = []
    window = 2 * float(os.environ.get("HUBSCHED_RUN_LOCK_TTL_S", 2.0)) + 4 * period  # longest wait for a resume
    try:
        log(f"failover worker: migrating a throwaway database in {work}")
        check([sys.executable, str(ROOT / "manage.py"), "migrate", "--noinput", "-v", "0"], env)
        log(f"failover worker: creating {groups} groups on {hubs} hubs at {period} s")
        check([sys.executable, "-m", "hubsched.bench.scheduler", "populate", str(groups), str(hubs), str(period)], env)
        for slot in (0, 1):
            workers[slot] = _start_worker(env, work, slot, 0, broker, tag, work_ms)
        beat = _start_beat(env, work, 0, 0)
        _wait(lambda: "groups in" in beat[1].read_text(), warmup_timeout, "the beat did not load its groups", beat[0])
        _wait(lambda: all(path.exists() and path.stat().st_size for _, path in workers.values()), 60,
              "a worker executed nothing")
        time.sleep(2 * period + 1)
        for k in range(kills):
            time.sleep(rng.uniform(1.0, 2.0))
            slot = k % 2
            victim, path = workers[slot]
            survivor = workers[1 - slot][0]
            offset = path.stat().st_size
            deadline = time.time() + 5 * period + 5
            while True:  # right at a tick: the victim has just started executing a tick that is due now
                rows, offset = _tail(path, offset)
                now = time.time()
                if any(r[0] == "exec" and now - r[1] < work_ms / 2000 and r[1] - r[3][0][1] < 0.1 for r in rows):
                    break
                if now > deadline or victim.poll() is not None:
                    raise RuntimeError("the worker to kill never started a tick")
                time.sleep(0.002)
            at = time.time()
            os.kill(victim.pid, signal.SIGKILL)
            victim.wait()
            held, read_at = _locks_of(broker, tag, victim.pid)
            log(f"failover worker: kill -9 of worker {victim.pid} while it held {len(held)} overlap locks")
            kill_log.append({"at": at, "pid": victim.pid, "survivor": survivor.pid, "read_at": read_at,
                             "held": held})
            # until the survivor ran every held group again (or the window ends), no replacement: the survivor
            # alone takes the dead worker's groups
            end = at + window
            pending, offset = set(held), 0
            while pending and time.time() < end:
                rows, offset = _tail(workers[1 - slot][1], offset)
                for row in rows:
                    if row[0] == "exec" and row[2] == survivor.pid:
                        pending -= {gid for gid, t in row[3] if t > at}
                time.sleep(0.2)
            time.sleep(period)
            workers[slot] = _start_worker(env, work, slot, k + 1, broker, tag, work_ms)
            _wait(lambda: (work / f"{workers[slot][1].name}.ready").exists(), 60, "a new worker did not start",
                  workers[slot][0])
    finally:
        if beat is not None and beat[0].poll() is None:
            beat[0].send_signal(signal.SIGTERM)
            try:
                beat[0].wait(30)
            except subprocess.TimeoutExpired:
                beat[0].kill()
        _stop_all([process for process, _ in workers.values()])
        delete_queue(broker, tag)
        _drop_keys(broker, tag)
    try:
        events = [row for path in sorted(work.glob("events-*.jsonl")) for row in _events(path)]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return {"params": {"groups": groups, "hubs": hubs, "period": period, "kills": kills, "work_ms": work_ms},
            **blocked_analyse(kill_log, events)}


def blocked_analyse(kills: list[dict], events: list[list]) -> dict:
    """How long each kill's held groups went without an execution by the surviving worker.

    ``kills``: ``[{"at": kill time (epoch s), "pid", "survivor": pid, "read_at": when the locks were read,
    "held": {group id (str or int): PTTL ms}}]``; ``events``: the workers' rows, ``["exec", wall s, pid,
    [[gid, scheduled_for], ...]]`` (an execution started) and ``["done", wall s, pid, hub, [[gid, scheduled_for,
    skipped|missed|failed], ...], refused]`` (a batch's untaken ticks). A group's blocked time is the
    ``scheduled_for`` of its first tick after the kill that the survivor executed, minus the kill time; a
    tick of a held group that the survivor skipped after the kill and before that is a tick skipped because of
    the dead holder; ``resumed_s`` counts to when that execution started instead, ``locks_freed_s`` to when the
    locks' PTTL read after the kill ran out. Returns ``{"groups_blocked_s": {...},
    "ticks_skipped_by_dead_holder", "locks_freed_s": {...}, "groups_resumed_s": {...}, "groups_held",
    "groups_never_resumed", "kills": [{"held", "blocked_s", "skipped", "never_resumed", "locks_freed_s",
    "resumed_s"}]}``, each spread ``{"min", "p50", "max"}`` in seconds to 0.001, None without data."""
    blocked_all, freed_all, resumed_all, per_kill = [], [], [], []
    skipped_all = never_all = held_all = 0
    for kill in kills:
        held = {int(gid): ms for gid, ms in kill["held"].items()}
        first: dict[int, float] = {}
        started: dict[int, float] = {}  # when that execution started (wall s)
        for row in events:
            if row[0] == "exec" and row[2] == kill["survivor"]:
                for gid, t in row[3]:
                    if gid in held and t > kill["at"] and t < first.get(gid, float("inf")):
                        first[gid], started[gid] = t, row[1]
        skipped = 0
        for row in events:
            if row[0] == "done" and row[2] == kill["survivor"]:
                skipped += sum(1 for gid, t, why in row[4] if why == "skipped" and gid in held and t > kill["at"]
                               and t < first.get(gid, float("inf")))
        blocked = sorted(first[gid] - kill["at"] for gid in first)
        resumed = sorted(started[gid] - kill["at"] for gid in started)
        freed = sorted(kill["read_at"] + ms / 1000.0 - kill["at"] for ms in held.values() if ms >= 0)
        per_kill.append({"held": len(held), "blocked_s": _spread(blocked), "skipped": skipped,
                         "never_resumed": len(held) - len(first), "locks_freed_s": _spread(freed),
                         "resumed_s": _spread(resumed)})
        blocked_all += blocked
        resumed_all += resumed
        freed_all += freed
        skipped_all += skipped
        never_all += len(held) - len(first)
        held_all += len(held)
    return {"groups_blocked_s": _spread(sorted(blocked_all)), "ticks_skipped_by_dead_holder": skipped_all,
            "locks_freed_s": _spread(sorted(freed_all)), "groups_resumed_s": _spread(sorted(resumed_all)),
            "groups_held": held_all, "groups_never_resumed": never_all, "kills": per_kill}


def _spread(values: list[float]) -> dict:
    """min, p50 (the lower median: a value measured) and max of sorted seconds, to the millisecond; None each
    without data."""
    if not values:
        return {"min": None, "p50": None, "max": None}
    return {"min": round(values[0], 3), "p50": round(values[(len(values) - 1) // 2], 3), "max": round(values[-1], 3)}


def _start_worker(env: dict, work: Path, slot: int, generation: int, broker: str, prefix: str,
                  work_ms: float) -> tuple[subprocess.Popen, Path]:
    path = work / f"events-{slot}-{generation}.jsonl"
    handle = open(work / f"worker-{slot}-{generation}.log", "w")
    process = subprocess.Popen([sys.executable, "-m", "hubsched.bench.failover", "work", broker, prefix, str(path),
                                str(work_ms)], env=env, cwd=ROOT, stdout=handle, stderr=subprocess.STDOUT)
    handle.close()
    return process, path


def _events(path: Path) -> list[list]:
    """The rows a worker wrote so far (a last line cut by a kill is left out)."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return []
    rows = []
    for line in text.splitlines():
        try:
            rows.append(json.loads(line))
        except ValueError:
            pass
    return rows


def _tail(path: Path, offset: int) -> tuple[list[list], int]:
    """The complete rows written after byte ``offset``, and the offset after them."""
    with open(path, "rb") as handle:
        handle.seek(offset)
        data = handle.read()
    end = data.rfind(b"\n") + 1
    return [json.loads(line) for line in data[:end].splitlines() if line], offset + end


def _locks_of(broker: str, prefix: str, pid: int) -> tuple[dict[int, int], float]:
    """The run locks (group id -> PTTL ms) whose token names ``pid``, and when they were read (epoch s)."""
    import redis

    client = redis.Redis.from_url(broker, socket_timeout=2)
    try:
        keys = list(client.scan_iter(f"{prefix}:run:*", count=1000))
        pipe = client.pipeline(transaction=False)
        for key in keys:
            pipe.get(key)
            pipe.pttl(key)
        values = pipe.execute()
        read_at = time.time()
    finally:
        client.close()
    held = {}
    for key, token, pttl in zip(keys, values[::2], values[1::2]):
        # a token is host:pid:process/acquisition (groups.scheduler.locks.RedisLocks._token)
        if token is not None and token.decode().split(":")[1] == str(pid):
            held[int(key.decode().rsplit(":", 1)[1])] = pttl
    return held, read_at


def _env(work: Path, broker: str, tag: str) -> dict:
    """The environment of the bench's processes: a throwaway database, its own queue and Redis key prefix."""
    return {
        **os.environ,
        "DATABASE_URL": f"sqlite:///{work / 'bench.sqlite3'}",
        "HUBSCHED_VAR_DIR": str(work / "var"),
        "CELERY_BROKER_URL": broker,
        "HUBSCHED_LOCK_URL": broker,
        "HUBSCHED_BENCH_QUEUE": tag,
        "HUBSCHED_BEAT_KEY_PREFIX": tag,
        "LOG_LEVEL": "INFO",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }


def _stop_all(processes: list[subprocess.Popen]) -> None:
    """SIGTERM every process still running, then wait up to 30 s each; SIGKILL one that does not stop."""
    for process in processes:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    for process in processes:
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()


def _start_beat(env: dict, work: Path, slot: int, generation: int) -> tuple[subprocess.Popen, Path]:
    path = work / f"beat-{slot}-{generation}.log"
    handle = open(path, "w")
    process = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "hubsched.bench.celeryapp", "beat", "-S", "groups.scheduler:Scheduler",
         "--loglevel", "INFO", "-s", str(work / f"celerybeat-{slot}-{generation}"), "--pidfile", ""],
        env=env, cwd=ROOT, stdout=handle, stderr=subprocess.STDOUT,
    )
    handle.close()
    return process, path


def _wait(condition, timeout: float, message: str, process: subprocess.Popen | None = None) -> None:
    deadline = time.time() + timeout
    while not condition():
        if time.time() > deadline or (process is not None and process.poll() is not None):
            raise RuntimeError(message)
        time.sleep(0.05)


def _leader(broker: str, prefix: str) -> dict | None:
    import redis

    client = redis.Redis.from_url(broker, socket_timeout=2)
    try:
        value = client.get(f"{prefix}:beat:leader")
    finally:
        client.close()
    if value is None:
        return None
    epoch, owner, _ = value.decode().split("|", 2)
    return {"epoch": int(epoch), "pid": int(owner.split(":")[1])}


def _drop_keys(broker: str, prefix: str) -> None:
    import redis

    client = redis.Redis.from_url(broker, socket_timeout=2)
    try:
        # kombu's queue_delete leaves the list of a queue this connection did not declare: batches the beat sent
        # after the last consumer stopped stay there
        client.delete(prefix)
        for pattern in (f"{prefix}:*", f"_kombu.binding*.{prefix}"):  # the beat keys, the queue's bindings
            for key in client.scan_iter(pattern):
                client.delete(key)
    except Exception:
        pass
    finally:
        client.close()


def hub_run(*, groups: int, period: float, kills: int, seconds: float, seed: int | None = None,
            broker: str = "redis://127.0.0.1:6379/0", kill_offset_ms: float | None = None,
            log=lambda _: None) -> dict:
    """The hub part: two reference hub processes (master ``hub-a`` and backup ``hub-b``, the same ``groups``
    entities of 10 keys), ``groups`` groups on the master in a master/backup set (failback after
    ``HUB_FAILBACK_S``), a child process executing every group's tick each ``period`` (``hub_tick``) for at least
    ``seconds``; ``kills`` times the master is killed with ``kill -9`` (by its pid) at a random moment (``seed``),
    and, before a next kill, started again on its port and waited for until it serves a tick again. With
    ``kill_offset_ms`` that moment is moved to ``kill_offset_ms`` after the next tick's start (the runner starts
    each batch on the grid of multiples of ``period``), to kill the master while a batch's reads are under way.

    Returns ``{"params", **hub_analyse(...)}`` (see there); raises RuntimeError when a process does not start or
    the master is not failed back to within 60 s."""
    from hubsched.bench.e2e import _free_ports, _wait_for_ports, stop

    work = Path(tempfile.mkdtemp(prefix="hubsched-failover-hub-"))
    env = {**_env(work, broker, f"hubsched-bench-failover-h-{os.getpid()}"), "LOG_LEVEL": "WARNING"}
    rng = random.Random(seed)
    ports = _free_ports(2)
    hubs: dict[str, subprocess.Popen] = {}
    ticker = None
    events, stop_file = work / "ticks.jsonl", work / "stop"
    kill_log: list[dict] = []
    try:
        log(f"failover hub: migrating a throwaway database in {work}")
        check([sys.executable, str(ROOT / "manage.py"), "migrate", "--noinput", "-v", "0"], env)
        log(f"failover hub: {groups} groups of {HUB_KEYS} keys on a master/backup set, period {period} s")
        spec = {"groups": groups, "period": period, "ports": ports, "failback_after_s": HUB_FAILBACK_S}
        check([sys.executable, "-m", "hubsched.bench.failover", "hub-populate", json.dumps(spec)], env)
        for name, port in zip(("hub-a", "hub-b"), ports):
            hubs[name] = _start_hub(env, work, name, port, groups, 0)
        _wait_for_ports(ports, [hubs["hub-a"], hubs["hub-b"]])
        with open(work / "ticker.log", "w") as out:
            ticker = subprocess.Popen([sys.executable, "-m", "hubsched.bench.failover", "hub-tick", str(events),
                                       str(stop_file), str(period)], env=env, cwd=ROOT, stdout=out,
                                      stderr=subprocess.STDOUT)
        _wait(lambda: len(_events(events)) >= 3, 60, "the tick runner executed no batch", ticker)
        started = time.time()
        segment = seconds / max(1, kills)
        for k in range(kills):
            begun = time.time()
            moment = begun + rng.uniform(0.25, 0.75) * segment
            if kill_offset_ms is not None:
                moment = (moment // period + 1) * period + kill_offset_ms / 1000.0
            time.sleep(max(0.0, moment - time.time()))
            master = hubs["hub-a"]
            at = time.time()
            os.kill(master.pid, signal.SIGKILL)
            master.wait()
            log(f"failover hub: kill -9 of the master hub (pid {master.pid})")
            kill = {"at": at, "pid": master.pid}
            kill_log.append(kill)
            if k == kills - 1:
                break
            time.sleep(2 * period)
            hubs["hub-a"] = _start_hub(env, work, "hub-a", ports[0], groups, k + 1)
            _wait_for_ports(ports[:1], [hubs["hub-a"]])
            kill["restarted_at"] = time.time()
            _wait(lambda: any(row[3] > kill["restarted_at"] and any(o[1] == "hub-a" and not o[2] for o in row[4])
                              for row in _events(events)), 60, "the set did not fail back to the master", ticker)
            log(f"failover hub: failed back to the restarted master after {time.time() - kill['restarted_at']:.1f} s")
        time.sleep(max(0.0, started + seconds - time.time(), at + 5 * period - time.time()))
        stop_file.touch()
        ticker.wait(60)
        rows = _events(events)
    finally:
        if ticker is not None and ticker.poll() is None:
            ticker.kill()
            ticker.wait()
        for process in hubs.values():
            stop(process, group=True)
        shutil.rmtree(work, ignore_errors=True)
    return {"params": {"groups": groups, "keys": HUB_KEYS, "period": period, "kills": kills, "seconds": seconds,
                       "failback_after_s": HUB_FAILBACK_S, "kill_offset_ms": kill_offset_ms,
                       "executor": "groups.execution.execute_batch(expire=True)"},
            **hub_analyse(rows, kill_log, groups=groups, period=period, started=started)}


def hub_analyse(rows: list[list], kills: list[dict], *, groups: int, period: float, started: float | None = None,
                master: str = "hub-a", backup: str = "hub-b") -> dict:
    """Count the hub part's tick outcomes.

    ``rows``: the tick runner's batches, ``["batch", tick (epoch s), started, finished (epoch s), [[group id,
    serving hub's name ("" for the group's hub), error ("" when ok)], ...]]``; ``kills``: ``[{"at": epoch s,
    "restarted_at": epoch s (when the master was started again; absent after the last kill)}]``, in order.
    The expected ticks are every group's tick on the grid from the first batch's tick to the last's, every
    ``period`` s. A tick belongs to the kill it follows: an executed one when its batch finished at or after the
    kill (and before the next kill), a tick not executed when its tick time is at or after the kill.

    Returns ``{"ticks_lost_to_hub_failover": failed or not executed from a kill on, "ticks_expected",
    "ok_master", "ok_backup", "failed", "not_executed", "failover_ticks": ok ticks served by the backup,
    "failed_before_kill", "errors": {error text: count}, "kills": [{"at_s": seconds after ``started``, "lost",
    "failed", "not_executed", "ok_backup", "first_backup_s": kill to when the first backup-served tick finished
    (s), "first_backup_tick_s": that tick's time minus the kill (s, negative for a tick under way at the kill),
    "failback_s": restart to when the first master-served tick after it finished (s), "in_batch": whether the
    kill fell while a batch was executing}], "batch_ms": {"p50", "max"}: how long a batch took}``; times to the
    ms, None without data."""
    ats = [k["at"] for k in kills]

    def kill_of(when: float) -> int | None:
        index = None
        for i, at in enumerate(ats):
            if when >= at:
                index = i
        return index

    per_kill = [{"lost": 0, "failed": 0, "not_executed": 0, "ok_backup": 0, "first": None, "failback": None}
                for _ in kills]
    counts = Counter()
    errors: Counter = Counter()
    seen: set[tuple[int, float]] = set()
    for _, t, _started, finished, outcomes in rows:
        owner = kill_of(finished)
        for gid, served, error in outcomes:
            seen.add((gid, round(t, 6)))
            if error:
                counts["failed"] += 1
                errors[error] += 1
                if owner is None:
                    counts["failed_before_kill"] += 1
                else:
                    per_kill[owner]["failed"] += 1
                continue
            counts["ok_backup" if served == backup else "ok_master"] += 1
            if owner is None:
                continue
            slot = per_kill[owner]
            if served == backup:
                slot["ok_backup"] += 1
                if slot["first"] is None or finished < slot["first"][0]:
                    slot["first"] = (finished, t)
            restarted = kills[owner].get("restarted_at")
            if served in (master, "") and restarted is not None and finished > restarted:
                if slot["failback"] is None or finished < slot["failback"]:
                    slot["failback"] = finished
    grid = []
    if rows:
        first, last = min(r[1] for r in rows), max(r[1] for r in rows)
        k = 0
        while first + k * period <= last + 1e-6:
            grid.append(round(first + k * period, 6))
            k += 1
    not_executed = 0
    for t in grid:
        owner = kill_of(t)
        for gid in range(1, groups + 1):
            if (gid, t) not in seen:
                not_executed += 1
                if owner is not None:
                    per_kill[owner]["not_executed"] += 1
    base = started if started is not None else (ats[0] if ats else 0.0)
    out_kills = []
    for kill, slot in zip(kills, per_kill):
        lost = slot["failed"] + slot["not_executed"]
        first = slot["first"]
        out_kills.append({
            "at_s": round(kill["at"] - base, 3), "lost": lost,
            "in_batch": any(r[2] <= kill["at"] <= r[3] for r in rows), "failed": slot["failed"],
            "not_executed": slot["not_executed"], "ok_backup": slot["ok_backup"],
            "first_backup_s": round(first[0] - kill["at"], 3) if first else None,
            "first_backup_tick_s": round(first[1] - kill["at"], 3) if first else None,
            "failback_s": (round(slot["failback"] - kill["restarted_at"], 3) if slot["failback"] is not None else None)
            if "restarted_at" in kill else None,
        })
    return {
        "ticks_lost_to_hub_failover": sum(k["lost"] for k in out_kills),
        "ticks_expected": groups * len(grid),
        "ok_master": counts["ok_master"], "ok_backup": counts["ok_backup"], "failed": counts["failed"],
        "not_executed": not_executed, "failover_ticks": counts["ok_backup"],
        "failed_before_kill": counts["failed_before_kill"],
        "errors": dict(errors.most_common(10)), "kills": out_kills,
        "batch_ms": {"p50": percentile(sorted(((r[3] - r[2]) * 1000.0, 1) for r in rows), 0.5),
                     "max": round(max((r[3] - r[2]) * 1000.0 for r in rows), 1) if rows else None},
    }


def _start_hub(env: dict, work: Path, name: str, port: int, entities: int, generation: int) -> subprocess.Popen:
    """A reference hub process (``manage.py hubsim``, one process: its pid is the server's) with ``entities``
    entities ``bench/e<n>`` of ``HUB_KEYS`` keys."""
    with open(work / f"{name}-{generation}.log", "w") as out:
        return subprocess.Popen(
            [sys.executable, str(ROOT / "manage.py"), "hubsim", "--port", str(port), "--name", name,
             "--tree", f"bench:{entities}:{HUB_KEYS}"],
            env={**env, "HUBSIM_KEY": HUB_KEY}, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True)


def hub_populate(spec: dict) -> None:
    """The hub part's rows: a project, a master/backup set of the two hubs on ``spec["ports"]``, and
    ``spec["groups"]`` groups on the master, group n (from 1) reading ``HUB_KEYS`` keys of entity ``bench/e<n-1>``."""
    from django.conf import settings
    from django.db import transaction

    from groups.models import Group, GroupKey
    from hubs.models import Hub, Project, RedundancySet

    with transaction.atomic():
        project = Project.objects.create(name="failover", time_zone=settings.TIME_ZONE)
        rset = RedundancySet.objects.create(project=project, name="hubs", failback_after_s=spec["failback_after_s"])
        master, backup = (Hub.objects.create(project=project, name=name, url=f"ws://127.0.0.1:{port}/connect",
                                             api_key=HUB_KEY, redundancy_set=rset, redundancy_priority=priority)
                          for priority, (name, port) in enumerate(zip(("hub-a", "hub-b"), spec["ports"])))
        Group.objects.bulk_create([Group(id=i + 1, hub=master, name=f"g{i + 1}", period=spec["period"])
                                   for i in range(spec["groups"])])
        GroupKey.objects.bulk_create([GroupKey(group_id=i + 1, entity=f"bench/e{i}", key=f"k{n:03d}", position=n)
                                      for i in range(spec["groups"]) for n in range(HUB_KEYS)])


def hub_tick(events: str, stop_file: str, period: str) -> None:
    """Execute every group's tick each ``period`` s, on the grid of multiples of it, through
    ``groups.execution.execute_batch(expire=True)``, until ``stop_file`` exists; one row per batch in ``events``
    (see ``hub_analyse``), line by line. A batch that ends late does not skip ticks: the next ones run at once
    (and fail as expired if they are)."""
    import math
    from datetime import timezone

    from groups.execution import execute_batch
    from groups.models import Group

    step = float(period)
    groups = list(Group.objects.select_related("hub__project", "script").prefetch_related("keys").order_by("pk"))
    handle = open(events, "a", buffering=1)
    t = (math.floor(time.time() / step) + 1) * step
    while not os.path.exists(stop_file):
        delay = t - time.time()
        if delay > 0:
            time.sleep(delay)
        begun = time.time()
        outcomes = execute_batch(ticks=[(g, datetime.fromtimestamp(t, tz=timezone.utc)) for g in groups], expire=True)
        handle.write(json.dumps(["batch", t, begun, time.time(), [
            [o.group.pk, o.served_by.name if o.served_by is not None else "", o.error] for o in outcomes]]) + "\n")
        t += step


# --- subprocess entry point: the worker stub ---------------------------------------------------------


def consume(broker: str, prefix: str, out: str) -> None:
    """Apply the fence to every batch on queue ``prefix`` until SIGTERM, as a worker would; write what ran."""
    from groups.scheduler.leader import Fence

    fence = Fence(broker, prefix=prefix)
    batches: list = []
    seen: set[tuple[int, float]] = set()
    per_tick: Counter = Counter()
    twice = 0

    def on_message(body, message):
        nonlocal twice
        if message.headers.get("task") != "groups.tasks.group_batch_run":
            return
        recv = time.time()
        args = body[0]
        hub_fence = args[3] if len(args) > 3 else None
        admitted = fence.admit(hub_fence)
        eta = message.headers.get("eta")
        eta = datetime.fromisoformat(eta).timestamp() if eta else None
        ticks = args[1]
        batches.append([recv, hub_fence[0] if hub_fence else 0, hub_fence[1] if hub_fence else 0, admitted, eta,
                        [[t, expiry, len(gids)] for t, expiry, _rr, gids in ticks]])
        if admitted:
            for t, _expiry, _rr, gids in ticks:
                per_tick[t] += len(gids)
                for gid in gids:
                    if (gid, t) in seen:
                        twice += 1
                    else:
                        seen.add((gid, t))

    queue_consume(broker, prefix, on_message, out + ".ready")
    Path(out).write_text(json.dumps({"batches": batches, "twice": twice, "reads": fence.reads,
                                     "per_tick": {repr(t): n for t, n in per_tick.items()}}))


def work(broker: str, prefix: str, events: str, work_ms: str) -> None:
    """A stand-in worker until SIGTERM: every batch on queue ``prefix`` goes through
    ``groups.scheduler.dispatch.hub_batch_run`` as in the ``group_batch_run`` task, with the fence and the overlap
    locks of ``groups.scheduler.locks.RedisLocks`` (the settings' TTL) on the key prefix ``prefix``; the execution
    is a sleep of ``work_ms`` per chunk. Appends one JSON row per execution and per batch to ``events`` (see
    ``blocked_analyse``), line by line so that a ``kill -9`` loses none that was written."""
    from django.conf import settings

    from groups.scheduler.dispatch import hub_batch_run
    from groups.scheduler.leader import Fence
    from groups.scheduler.locks import RedisLocks
    from groups.tasks import BATCH_TASK

    locks = RedisLocks(broker, ttl=settings.HUBSCHED_RUN_LOCK_TTL_S, prefix=prefix)
    fences = Fence(broker, prefix=prefix)
    pid, pause = os.getpid(), float(work_ms) / 1000.0
    handle = open(events, "a", buffering=1)  # line-buffered: each row is in the kernel once written

    def execute(runs):
        handle.write(json.dumps(["exec", time.time(), pid, [[gid, t] for gid, t in runs]]) + "\n")
        time.sleep(pause)

    def on_message(body, message):
        if message.headers.get("task") != BATCH_TASK:
            return
        hub_id, ticks, limit, *rest = body[0]
        fence = rest[0] if rest else None
        out = hub_batch_run(hub_id=hub_id, ticks=ticks, limit=limit, locks=locks, execute=execute, record=False,
                            fence=fence, fences=fences)
        untaken = list(out.untaken)
        while out.requeue:  # the task sends these back with a countdown; here the same process waits
            time.sleep(out.countdown)
            out = hub_batch_run(hub_id=hub_id, ticks=out.requeue, limit=limit, locks=locks, execute=execute,
                                record=False, fence=fence, fences=fences)
            untaken += out.untaken
        handle.write(json.dumps(["done", time.time(), pid, hub_id, [list(u) for u in untaken], out.refused]) + "\n")

    queue_consume(broker, prefix, on_message, events + ".ready")
    locks.stop_heartbeat()


if __name__ == "__main__":
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "hubsched.settings")
    command, *rest = sys.argv[1:]
    if command == "consume":
        import django

        django.setup()
        consume(*rest)
    elif command == "work":
        import django

        django.setup()
        work(*rest)
    elif command == "hub-populate":
        import django

        django.setup()
        hub_populate(json.loads(rest[0]))
    elif command == "hub-tick":
        import django

        django.setup()
        hub_tick(*rest)
    else:
        raise SystemExit(f"unknown command {command!r}")
