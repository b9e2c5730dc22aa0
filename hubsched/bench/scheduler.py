"""Scheduler benchmark: the stock path (django-celery-beat's DatabaseScheduler, one task per group)
against hubsched's scheduler (batches per hub), on the same groups, counting what reaches a worker.

For each path, in one invocation: a fresh Redis queue; a consumer subprocess (a kombu consumer on
that queue: what a worker would receive, counted per group execution); then beat, started as a user
starts it (``celery -A hubsched.bench.celeryapp beat -S <scheduler>``, the project's Celery app on
the benchmark's queue). After beat's first message arrives, a window of ``--seconds`` starting half a
period off the tick grid is measured: executions received in the window, their lag behind the tick
they belong to, and beat's CPU time from ``/proc/<pid>/stat``.

The groups live in a throwaway SQLite database in a temporary directory (migrated, filled with bulk
inserts that produce the same rows ``group_schedule_sync`` would, then deleted), so the user's data
is never touched. The broker is Redis (``--broker``, default ``HUBSCHED_BENCH_BROKER`` or
``redis://127.0.0.1:6379/0``); the queues are named ``hubsched-bench-<pid>-<path>`` and deleted.

Lag is when the work becomes startable minus when it was due. For hubsched that is
``max(receipt, eta) - scheduled_for``: beat sends each tick ``HUBSCHED_DISPATCH_LEAD_S`` ahead with
``eta = scheduled_for``, and a worker holds such a message until its eta, so a message that arrives
early is startable at its eta and one that arrives late at its receipt. ``arrival_p50_ms`` and
``arrival_p99_ms`` show the receipts themselves (negative: that far ahead of the tick). For stock,
receipt minus the time the entry fell due (``last_run_at + run_every``, put in a message header by a
subclass that changes nothing else; stock sends no eta). Executions are counted in the window by
the time they became startable.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

from hubsched.bench.common import BEATS, ROOT, check, delete_queue, paths_measure, paths_ratio, percentile, queue_consume

HELP = "Stock django-celery-beat against hubsched's scheduler on the same groups (needs Redis)."


def add_arguments(parser) -> None:
    parser.add_argument("--groups", type=int, default=10_000, help="Interval groups (default 10000).")
    parser.add_argument("--hubs", type=int, default=100, help="Hubs the groups are spread over (default 100).")
    parser.add_argument("--period", type=float, default=1.0, help="Period of every group, seconds (default 1).")
    parser.add_argument("--seconds", type=float, default=30.0, help="Measured window per path (default 30).")
    parser.add_argument("--broker", default=os.environ.get("HUBSCHED_BENCH_BROKER", "redis://127.0.0.1:6379/0"),
                        help="Redis URL of the broker.")
    parser.add_argument("--paths", default="stock,hubsched", help="Which paths to run (default stock,hubsched).")
    parser.add_argument("--warmup-timeout", type=float, default=180.0, help="Longest wait for beat's first message.")
    parser.add_argument("--lead", type=float, default=None,
                        help="HUBSCHED_DISPATCH_LEAD_S for hubsched's beat (default: the setting, 0.25 s).")


def run(*, groups: int, hubs: int, period: float, seconds: float, broker: str, paths: str = "stock,hubsched",
        warmup_timeout: float = 180.0, lead: float | None = None, log=lambda _: None) -> dict:
    """Returns ``{"params": {...}, "stock": {...}, "hubsched": {...}, "ratio": float | None}``."""
    from django.conf import settings

    work = Path(tempfile.mkdtemp(prefix="hubsched-bench-"))
    lead = settings.HUBSCHED_DISPATCH_LEAD_S if lead is None else lead
    env = {
        **os.environ,
        "DATABASE_URL": f"sqlite:///{work / 'bench.sqlite3'}",
        "HUBSCHED_VAR_DIR": str(work / "var"),
        "HUBSCHED_BEAT_KEY_PREFIX": f"hubsched-bench-{os.getpid()}",  # never a real installation's beat lease
        "CELERY_BROKER_URL": broker,
        "HUBSCHED_LOCK_URL": broker,
        "LOG_LEVEL": "WARNING",
        "HUBSCHED_DISPATCH_LEAD_S": str(lead),
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }
    result: dict = {"params": {"groups": groups, "hubs": hubs, "period": period, "seconds": seconds,
                               "broker": broker.split("@")[-1], "cpus": os.cpu_count(), "lead_s": lead}}
    try:
        log(f"bench: migrating a throwaway database in {work}")
        check([sys.executable, str(ROOT / "manage.py"), "migrate", "--noinput", "-v", "0"], env)
        log(f"bench: creating {groups} groups on {hubs} hubs at {period} s")
        check([sys.executable, "-m", "hubsched.bench.scheduler", "populate", str(groups), str(hubs), str(period)], env)
        paths_measure(result, paths=paths, log=log, name="bench", measure=lambda path: _measure(
            path, env=env, work=work, groups=groups, period=period, seconds=seconds, broker=broker,
            warmup_timeout=warmup_timeout))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    result["ratio"] = paths_ratio(result, "dispatched_per_s")
    return result


def report(result: dict) -> str:
    p = result["params"]
    lines = [f"{p['groups']} groups, {p['hubs']} hubs, period {p['period']} s, window {p['seconds']} s, {p['cpus']} CPUs"]
    keys = ["due_per_s", "dispatched_per_s", "dispatched_ratio", "lag_p50_ms", "lag_p99_ms", "arrival_p99_ms",
            "beat_cpu_percent"]
    lines.append(f"{'':10}" + "".join(f"{k:>18}" for k in keys))
    for path in ("stock", "hubsched"):
        if path in result:
            lines.append(f"{path:10}" + "".join(f"{result[path][k]!s:>18}" for k in keys))
    lines.append(f"ratio (hubsched / stock dispatched_per_s): {result['ratio']}")
    return "\n".join(lines) + "\n"


# --- one path ---------------------------------------------------------------------------------------


def _measure(path: str, *, env: dict, work: Path, groups: int, period: float, seconds: float, broker: str,
             warmup_timeout: float) -> dict:
    queue = f"hubsched-bench-{os.getpid()}-{path}"
    env = {**env, "HUBSCHED_BENCH_QUEUE": queue}
    out, first = work / f"{path}.json", work / f"{path}.first"
    consumer = subprocess.Popen([sys.executable, "-m", "hubsched.bench.scheduler", "consume", broker, queue, str(out),
                                 str(first)], env=env, cwd=ROOT)
    beat = None
    beat_log = open(work / f"{path}-beat.log", "w")
    try:
        deadline = time.time() + 30
        while not (work / f"{path}.json.ready").exists():
            if time.time() > deadline or consumer.poll() is not None:
                raise RuntimeError("the counting consumer did not start")
            time.sleep(0.05)
        beat = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "hubsched.bench.celeryapp", "beat", "-S", BEATS[path],
             "--loglevel", "WARNING", "-s", str(work / f"{path}-celerybeat-schedule"), "--pidfile", ""],
            env=env, cwd=ROOT, stdout=beat_log, stderr=subprocess.STDOUT,  # keep --json output clean
        )
        deadline = time.time() + warmup_timeout
        while not first.exists() and time.time() < deadline and beat.poll() is None:
            time.sleep(0.05)
        if beat.poll() is not None:
            raise RuntimeError(f"beat ({path}) exited with {beat.returncode}:\n{(work / f'{path}-beat.log').read_text()[-3000:]}")
        # the window starts half a period off the tick grid, a little after warm-up
        grid = max(period, 1.0)
        t0 = (int((time.time() + 2.0) / grid) + 0.5) * grid
        time.sleep(max(0.0, t0 - time.time()))
        cpu0 = _cpu_seconds(beat.pid)
        t1 = t0 + seconds
        time.sleep(max(0.0, t1 - time.time()))
        cpu1 = _cpu_seconds(beat.pid)
        time.sleep(min(2.0, period))  # what was sent in the window may still be on its way
    finally:
        if beat is not None:
            beat.send_signal(signal.SIGTERM)
            try:
                beat.wait(30)
            except subprocess.TimeoutExpired:
                beat.kill()
        consumer.send_signal(signal.SIGTERM)
        consumer.wait(60)
        beat_log.close()
        delete_queue(broker, queue)
    records = json.loads(out.read_text()) if out.exists() else []
    # startable: when a worker may start the tick (it holds a message with an eta until then)
    inside = [(max(recv, eta or recv), recv, due, n) for recv, due, n, eta in records]
    inside = [r for r in inside if t0 <= r[0] < t1]
    received = sum(r[3] for r in inside)
    due_per_s = groups / period
    lags = sorted(((startable - due) * 1000.0, n) for startable, _, due, n in inside)
    arrivals = sorted(((recv - due) * 1000.0, n) for _, recv, due, n in inside)
    return {
        "due_per_s": round(due_per_s, 1),
        "dispatched_per_s": round(received / seconds, 1),
        "dispatched_ratio": round(received / (due_per_s * seconds), 5),
        "lag_p50_ms": percentile(lags, 0.50),
        "lag_p99_ms": percentile(lags, 0.99),
        "arrival_p50_ms": percentile(arrivals, 0.50),
        "arrival_p99_ms": percentile(arrivals, 0.99),
        "beat_cpu_percent": round(100.0 * (cpu1 - cpu0) / seconds, 1),
        "messages_per_s": round(len(inside) / seconds, 1) if path == "stock" else None,
    }



def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime




# --- subprocess entry points ------------------------------------------------------------------------


def populate(groups: int, hubs: int, period: float) -> None:
    """Fill the (throwaway) database: groups and the PeriodicTasks group_schedule_sync would make."""
    import django

    django.setup()
    from django.conf import settings
    from django.db import transaction
    from django_celery_beat.models import IntervalSchedule, PeriodicTask, PeriodicTasks

    from groups.models import Group, GroupStats
    from groups.services import GROUP_TASK
    from hubs.models import Hub, Project

    with transaction.atomic():
        project = Project.objects.create(name="bench", time_zone=settings.TIME_ZONE)
        hub_rows = Hub.objects.bulk_create(
            [Hub(project=project, name=f"hub{i}", url=f"ws://127.0.0.1:9/hub{i}") for i in range(hubs)]
        )
        if float(period).is_integer():
            every, unit = int(period), IntervalSchedule.SECONDS
        else:
            every, unit = round(period * 1_000_000), IntervalSchedule.MICROSECONDS
        interval, _ = IntervalSchedule.objects.get_or_create(every=every, period=unit)
        tasks, rows = [], []
        for i in range(1, groups + 1):
            hub = hub_rows[i % hubs]
            tasks.append(PeriodicTask(
                id=i, name=f"hubsched group {i}: {hub.name}/g{i}", task=GROUP_TASK, kwargs=json.dumps({"group_id": i}),
                interval=interval, expire_seconds=max(1, round(period)),
                description="Kept in step with its hubsched group; edit the group, not this entry.",
            ))
            rows.append(Group(id=i, hub=hub, name=f"g{i}", period=period, periodic_task_id=i))
        PeriodicTask.objects.bulk_create(tasks, batch_size=2000)
        Group.objects.bulk_create(rows, batch_size=2000)
        # the counter rows a running system has (they are made on a group's first count): without them
        # beat's first flush would make 100,000 rows inside the measured window
        GroupStats.objects.bulk_create([GroupStats(group_id=i) for i in range(1, groups + 1)], batch_size=2000)
    PeriodicTasks.update_changed()


def consume(broker: str, queue: str, out: str, first: str) -> None:
    """Count what reaches a worker: every message on ``queue`` until SIGTERM; writes [[recv, due, n, eta], ...]."""
    records: list[tuple[float, float, int, float | None]] = []

    def on_message(body, message):
        now = time.time()
        if not records:
            Path(first).touch()
        args = body[0] if isinstance(body, list) else []
        eta = message.headers.get("eta")
        eta = datetime.fromisoformat(eta).timestamp() if eta else None
        if message.headers.get("task") == "groups.tasks.group_batch_run":
            for t, _expiry, _rr, gids in args[1]:
                records.append((now, t, len(gids), eta))
        else:
            records.append((now, float(message.headers.get("bench_due") or now), 1, eta))

    queue_consume(broker, queue, on_message, out + ".ready")
    Path(out).write_text(json.dumps(records))


def _stock_scheduler():
    from django_celery_beat.schedulers import DatabaseScheduler

    class StockScheduler(DatabaseScheduler):
        """django-celery-beat's DatabaseScheduler, unchanged but for a header with the due time."""

        def apply_async(self, entry, producer=None, advance=True, **kwargs):
            every = getattr(entry.schedule, "run_every", None)
            if entry.last_run_at is not None and every is not None:
                entry.options = {**entry.options, "headers": {"bench_due": (entry.last_run_at + every).timestamp()}}
            return super().apply_async(entry, producer, advance, **kwargs)

    return StockScheduler


def __getattr__(name: str):
    if name == "StockScheduler":  # imported by beat once Django is set up
        return _stock_scheduler()
    raise AttributeError(name)


if __name__ == "__main__":
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "hubsched.settings")
    command, *rest = sys.argv[1:]
    if command == "populate":
        populate(int(rest[0]), int(rest[1]), float(rest[2]))
    elif command == "consume":
        consume(*rest)
    else:
        raise SystemExit(f"unknown command {command!r}")
