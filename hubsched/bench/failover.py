"""Failover benchmark: two beats on Redis, the leading one killed with ``kill -9`` at random moments, counting what a worker would run.

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

HELP = "Two beats on Redis; the leader killed with kill -9 three times: failover time, ticks missed, twice, lost."

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


def run(*, groups: int, hubs: int, period: float, kills: int, broker: str, seed: int | None = None,
        warmup_timeout: float = 180.0, pause: float = 0.0, log=lambda _: None) -> dict:
    """Returns ``{"params": {...}, "failover_ms": {"p50", "max"}, "kill_to_first_ms": {...}, "ticks_missed",
    "ticks_dispatched_twice", "ticks_lost", ...}``; raises RuntimeError when a process does not start."""
    work = Path(tempfile.mkdtemp(prefix="hubsched-failover-"))
    tag = f"hubsched-bench-failover-{os.getpid()}"
    env = {
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
    rng = random.Random(seed)
    result: dict = {"params": {"groups": groups, "hubs": hubs, "period": period, "kills": kills,
                               "broker": broker.split("@")[-1], "cpus": os.cpu_count(), "seed": seed,
                               "pause_s": pause}}
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
        for process, _ in beats.values():
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process, _ in beats.values():
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
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
    what = f"pauses of {p['pause_s']} s" if p.get("pause_s") else "kills"
    lines = [f"{p['groups']} groups, {p['hubs']} hubs, period {p['period']} s, {p['kills']} {what}, {p['cpus']} CPUs"]
    for key in ("failover_ms", "kill_to_first_ms"):
        lines.append(f"{key:24} p50 {result[key]['p50']}  max {result[key]['max']}")
    for key in ("ticks_dispatched_twice", "ticks_missed", "ticks_missed_by_beat", "ticks_missed_by_expiry",
                "ticks_sent_late", "ticks_lost", "ticks_expected", "refused_batches", "fence_reads_per_batch"):
        lines.append(f"{key:24} {result[key]}")
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
        for pattern in (f"{prefix}:*", f"_kombu.binding*.{prefix}"):  # the beat keys, the queue's bindings
            for key in client.scan_iter(pattern):
                client.delete(key)
    except Exception:
        pass
    finally:
        client.close()


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


if __name__ == "__main__":
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "hubsched.settings")
    command, *rest = sys.argv[1:]
    if command == "consume":
        import django

        django.setup()
        consume(*rest)
    else:
        raise SystemExit(f"unknown command {command!r}")
