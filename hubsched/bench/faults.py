"""Fault benchmark: the e2e workload with the log on RabbitMQ Streams, faults injected, every value and tick counted.

``python manage.py bench faults [--scenarios a,b] [--sink URL] --json`` runs, per scenario, hubsched's path of
``bench e2e`` (reference hubs, beat, ``--workers`` worker processes, the forwarder process of
``hubsched.stack.forwarder_argv``) from scratch in a throwaway environment (``hubsched.bench.e2e``), with the
log on RabbitMQ Streams (``--log``, in a virtual host of its own: ``e2e.log_prepare``), and injects one fault
on servers and processes it started itself:

- ``sink_outage`` (200 groups x 100 keys at 1 s): the sink is a PostgreSQL cluster of the benchmark's own
  (``servers.OwnPostgres``, fsync on, on a free port; never a shared server: ``--sink`` is not used here).
  Its postmaster is killed (SIGKILL, by pid) for ``--outage-seconds`` (120), then started again.
- ``worker_kill`` (1000 x 100): SIGKILL (by pid) of the first of the ``--workers`` (2) worker processes,
  started again (same command line) ``--restart-after`` (5) seconds later.
- ``forwarder_kill`` (1000 x 100): SIGKILL (by pid) of the forwarder process (``manage.py forward``, whose
  consumer processes die with it), started again after ``--restart-after`` seconds.

The kill scenarios store in ``--sink`` (a fresh table ``faults_<pid>_<scenario>``, dropped afterwards), by
default in a PostgreSQL cluster of their own as well. ``--groups``/``--keys`` replace every scenario's size.

Timeline of a scenario (epoch seconds, all reported relative to ``t0``): the first stored row, ``--warmup``,
then ``t0`` (half a period off the tick grid); the pre phase of ``--seconds`` (``pre_end``); ``--settle`` seconds
later the fault, ``--fault-phase`` (0.05) seconds after a tick, when the workers hold that tick's messages and
read its values; the restart; ``caught_at``,
when everything the log held at the restart is stored (the sink's committed consumer offset, the least of
its lanes' in ``hubsched_offsets``, reaches the log's last offset read at the restart; polled every 0.25 s); the post phase
starts ``--settle`` seconds later (on the grid, plus half a period) and lasts ``--seconds``: ``t1``. Beat stops
at ``t1``; then the drain: until the benchmark's queue holds no message, waiting or unacknowledged, and both
consumers (the sink's forwarder, the run recorder) have committed the log's last offset, or ``--drain-timeout``.

What is counted, for the due ticks ``[t0, t1)`` (every group, every ``period``):

- ``offered_values``: due ticks x keys. ``stored``: distinct (group, tick, entity, key) in the sink table;
  ``duplicated``: rows beyond those.
- ``ticks``: the recorded outcome of each due tick, from the GroupRun rows (one per (group, tick), unique) of
  the benchmark's Django database: ``ok``, ``failed``, ``skipped``, ``missed``, and ``unaccounted`` (due ticks
  with no GroupRun). ``missed_ticks`` and ``unaccounted_ticks`` repeat those two.
- ``lost``: values of due ticks that are not stored although no recorded outcome says they were not acquired:
  every tick but those recorded ``skipped``, ``missed`` or ``failed`` by the hub or the script counts its keys
  minus its values stored (a ``failed`` run whose error starts with "not stored" had read its values: they
  count as lost; an unaccounted tick counts all its keys, unless it was in a message the killed worker held and
  had not begun: see ``held_at_kill``).
- ``in_flight_at_kill`` (worker_kill): values the killed worker had read or was reading and had not confirmed
  in the log: keys x the groups whose overlap lock (``hubsched:run:<id>`` in the lock Redis) the dead worker
  held. A batch holds its groups' locks from before its hub reads until their outcomes are appended (confirmed
  durable), and a dead worker's locks stay with the same token until their TTL, so these are the locks present
  right after the kill that still hold the same token at the restart (a surviving worker's batch is done in
  well under ``--restart-after`` seconds). An upper bound: it also counts groups of a started batch whose reads
  had not begun (none when a hub has at most ``groups.scheduler.dispatch.CHUNK_MAX`` groups). 0 in the other
  scenarios: no process holding values was killed (the forwarder's input is in the log).
- ``held_at_kill`` (worker_kill): the dead worker's messages still unacknowledged in Redis at the restart
  (present right after the kill and at the restart; their payloads name their ticks), the ticks in them, those
  of groups it did not lock (``not_started_ticks``: never read), and its locks: they come back only after the
  broker's ``visibility_timeout`` (the shipped 30 s, hubsched/settings.py, unless ``--broker-option visibility_timeout=S``).
  ``broker_at_end``: messages of the queue still waiting or unacknowledged when the drain ended.
- ``catch_up_s``: ``caught_at`` minus the restart (sink_outage: the moment ``pg_ctl start -w`` returned).
  ``backlog_records``: the log's last offset at the restart minus the sink's committed offset then.
- ``latency_p50_ms``/``latency_p99_ms``: outside the fault, i.e. for the ticks of the pre phase (due at least
  ``--settle`` seconds before the fault) and of the post phase: ``committed_at`` (the sink database's clock at
  insert) of an execution's last row minus its tick,
  weighted by rows; ``latency_p99_ms_fault`` for the ticks in between.
"""

from __future__ import annotations

import base64
import json
import math
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

from hubsched.bench.common import check, delete_queue, percentile
from hubsched.bench.e2e import (_default_worker, _free_ports, _with_driver, beat_argv, environment, first_row_wait,
                                forwarder_argv, hubsched_worker_argv, log_prepare, sink_id, sink_table_create,
                                sink_table_drop, spawn, stop, window, workload_setup)
from hubsched.secrets import url_mask

HELP = ("Faults: the e2e workload with the log on RabbitMQ Streams, the sink database killed, a worker or the "
        "forwarder killed; counts what is lost, duplicated and unaccounted (needs Redis, RabbitMQ Streams and the "
        "PostgreSQL server programs).")
SCENARIOS = {  # issue 12: the size of each scenario
    "sink_outage": {"groups": 200, "keys": 100},
    "worker_kill": {"groups": 1000, "keys": 100},
    "forwarder_kill": {"groups": 1000, "keys": 100},
}
NOT_READ = ("skipped", "missed")
READ_FAILURE = "not stored"  # groups.services.outcomes_log: the values were read, the log refused them
POLL_S = 0.25
LOCKS = "hubsched:run:*"  # groups.scheduler.locks.RedisLocks._key
DEFAULT_LOG = "rabbitmq-stream://guest:guest@127.0.0.1:5552/"


def add_arguments(parser) -> None:
    pool, concurrency = _default_worker()
    parser.add_argument("--scenarios", default=",".join(SCENARIOS),
                        help=f"Which scenarios to run, comma-separated (default {','.join(SCENARIOS)}).")
    parser.add_argument("--groups", type=int, default=None,
                        help="Groups in every scenario (default: sink_outage 200, the kills 1000).")
    parser.add_argument("--keys", type=int, default=None, help="Keys per group in every scenario (default 100).")
    parser.add_argument("--hubs", type=int, default=10, help="Reference hubs (default 10).")
    parser.add_argument("--period", type=float, default=1.0, help="Period of every group, seconds (default 1).")
    parser.add_argument("--seconds", type=float, default=30.0,
                        help="Seconds measured before the fault, and again after the recovery (default 30).")
    parser.add_argument("--outage-seconds", type=float, default=120.0,
                        help="sink_outage: how long the sink database is down (default 120).")
    parser.add_argument("--restart-after", type=float, default=5.0,
                        help="The kills: seconds until the killed process is started again (default 5).")
    parser.add_argument("--settle", type=float, default=10.0,
                        help="Seconds after the catch-up before the post phase is measured (default 10).")
    parser.add_argument("--fault-phase", type=float, default=0.05,
                        help="The fault comes this many seconds after a tick (default 0.05: while the workers read it).")
    parser.add_argument("--sink", default=None,
                        help="SQLAlchemy URL of the kill scenarios' sink (default: a PostgreSQL cluster of the "
                             "benchmark's own). sink_outage always uses its own. Only a fresh table "
                             "faults_<pid>_<scenario> is made there, and dropped afterwards.")
    parser.add_argument("--log", dest="log_url", default=os.environ.get("HUBSCHED_BENCH_LOG", DEFAULT_LOG),
                        metavar="URL",
                        help="RabbitMQ Streams URL of the log (default $HUBSCHED_BENCH_LOG or "
                             f"{DEFAULT_LOG}); see bench e2e --log for how it is kept the benchmark's own.")
    parser.add_argument("--broker", default=os.environ.get("HUBSCHED_BENCH_FAULTS_BROKER", "redis://127.0.0.1:6379/12"),
                        help="Redis URL of the broker and the locks (default db 12, apart from bench e2e's).")
    parser.add_argument("--workers", type=int, default=2, help="Worker processes (default 2).")
    parser.add_argument("--pool", default=pool, choices=["threads", "prefork", "solo", "gevent"],
                        help=f"The workers' pool (default {pool}, as shipped).")
    parser.add_argument("--concurrency", type=int, default=concurrency,
                        help=f"The workers' concurrency (default {concurrency}, as shipped).")
    parser.add_argument("--worker-env", action="append", default=[], metavar="NAME=VALUE",
                        help="Extra environment for the workers and the forwarder (repeatable).")
    parser.add_argument("--broker-option", action="append", default=[], metavar="NAME=VALUE",
                        help="A broker transport option for the workers (repeatable), on top of what hubsched sets, "
                             "e.g. visibility_timeout=30 (kombu's Redis default: 3600).")
    parser.add_argument("--warmup", type=float, default=5.0, help="Seconds after the first stored row before t0.")
    parser.add_argument("--warmup-timeout", type=float, default=180.0, help="Longest wait for the first stored row.")
    parser.add_argument("--catch-up-timeout", type=float, default=600.0,
                        help="Longest wait for the catch-up after the restart (default 600).")
    parser.add_argument("--drain-timeout", type=float, default=60.0,
                        help="Longest wait after t1 for the queue and the consumers to empty (default 60).")


def run(*, scenarios: str = ",".join(SCENARIOS), groups: int | None = None, keys: int | None = None, hubs: int = 10,
        period: float = 1.0, seconds: float = 30.0, outage_seconds: float = 120.0, restart_after: float = 5.0,
        settle: float = 10.0, fault_phase: float = 0.05, sink: str | None = None, log_url: str = DEFAULT_LOG,
        broker: str = "redis://127.0.0.1:6379/12", workers: int = 2, pool: str | None = None,
        concurrency: int | None = None, worker_env: list[str] | None = None, broker_option: list[str] | None = None,
        warmup: float = 5.0, warmup_timeout: float = 180.0, catch_up_timeout: float = 600.0,
        drain_timeout: float = 60.0, log=lambda _: None) -> dict:
    """Returns ``{"params": {...}, "scenarios": {name: {...}}}`` (module docstring for each number).

    Raises ValueError for an unknown scenario or a log that is not RabbitMQ Streams; RuntimeError when a part
    does not start (the scenario's directory is named in the message)."""
    names = [s.strip() for s in scenarios.split(",") if s.strip()]
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown:
        raise ValueError(f"unknown scenario {unknown[0]!r}; known: {', '.join(SCENARIOS)}")
    if not log_url.startswith("rabbitmq-stream://"):
        raise ValueError("bench faults runs the log on RabbitMQ Streams: --log rabbitmq-stream://...")
    if "worker_kill" in names and workers < 2:
        raise ValueError("worker_kill kills one of several workers: --workers 2 or more")
    default_pool, default_concurrency = _default_worker()
    options = {
        "hubs": hubs, "period": period, "seconds": seconds, "outage_seconds": outage_seconds,
        "restart_after": restart_after, "settle": settle, "fault_phase": fault_phase,
        "sink": _with_driver(sink) if sink else None,
        "log_url": log_url, "broker": broker, "workers": workers, "pool": pool or default_pool,
        "concurrency": concurrency or default_concurrency, "worker_env": worker_env or [],
        "broker_options": _options_parse(broker_option or []), "warmup": warmup, "warmup_timeout": warmup_timeout,
        "catch_up_timeout": catch_up_timeout, "drain_timeout": drain_timeout,
    }
    result: dict = {"params": {
        **{k: v for k, v in options.items() if k not in ("sink", "log_url", "broker")},
        "sink": url_mask(options["sink"]) if options["sink"] else "own PostgreSQL", "log": url_mask(log_url),
        "broker": broker.split("@")[-1], "cpus": os.cpu_count(),
    }, "scenarios": {}}
    for name in names:
        size = {k: v if override is None else override
                for (k, v), override in zip(SCENARIOS[name].items(), (groups, keys))}
        log(f"faults: {name}: {size['groups']} groups x {size['keys']} keys ...")
        result["scenarios"][name] = _scenario(name, **size, **options, log=log)
        log(f"faults: {name}: {json.dumps(result['scenarios'][name])}")
    return result


def report(result: dict) -> str:
    p = result["params"]
    keys = ("offered_values", "stored", "lost", "duplicated", "missed_ticks", "unaccounted_ticks", "in_flight_at_kill",
            "catch_up_s", "latency_p99_ms")
    lines = [f"period {p['period']} s, {p['workers']} workers ({p['pool']} x {p['concurrency']}), log {p['log']}, "
             f"sink {p['sink']}, {p['cpus']} CPUs"]
    lines.append(f"{'':16}" + "".join(f"{k:>19}" for k in keys))
    for name, r in result["scenarios"].items():
        lines.append(f"{name:16}" + "".join(f"{r[k]!s:>19}" for k in keys))
        lines.append(f"{'':16}{r['groups']} x {r['keys']}; ticks {r['ticks']}; phases {r['phases']}")
    return "\n".join(lines) + "\n"


def _options_parse(items: list[str]) -> dict:
    """``NAME=VALUE`` pairs as a dict, the values as int or float where they read as one."""
    out: dict = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise ValueError(f"--broker-option {item!r}: expected NAME=VALUE")
        for kind in (int, float):
            try:
                out[name] = kind(value)
                break
            except ValueError:
                continue
        else:
            out[name] = value
    return out


# --- one scenario ------------------------------------------------------------------------------------


class _Parts:
    """The scenario's processes by kind; the killed ones are kept to stop their process groups at the end."""

    def __init__(self, *, env: dict, wenv: dict, work: Path, worker_argvs: list[list[str]], path: str = "faults"):
        self.env, self.wenv, self.work, self.path = env, wenv, work, path
        self.worker_argvs = worker_argvs
        self.procs: dict[str, list[subprocess.Popen]] = {"worker": [], "forwarder": [], "beat": []}
        self.dead: list[subprocess.Popen] = []

    def start(self, kind: str, i: int) -> subprocess.Popen:
        argv = {"worker": lambda: self.worker_argvs[i], "forwarder": forwarder_argv,
                "beat": lambda: beat_argv("hubsched", self.work)}[kind]()
        proc = spawn(argv, env=self.env if kind == "beat" else self.wenv,
                     log_path=self.work / f"{self.path}-{kind}{i}.log")
        ps = self.procs[kind]
        if i < len(ps):
            ps[i] = proc
        else:
            ps.append(proc)
        return proc

    def kill(self, kind: str, i: int) -> subprocess.Popen:
        """SIGKILL the process (by pid, not its group: what a crash of that process does) and wait for it."""
        proc = self.procs[kind][i]
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(30)
        self.dead.append(proc)
        return proc

    def stop_all(self) -> None:
        for proc in self.procs["beat"] + self.procs["worker"] + self.procs["forwarder"] + self.dead:
            stop(proc, group=True)


def _scenario(name: str, *, groups: int, keys: int, hubs: int, period: float, seconds: float, outage_seconds: float,
              restart_after: float, settle: float, fault_phase: float, sink: str | None, log_url: str, broker: str,
              workers: int, pool: str, concurrency: int, worker_env: list[str], broker_options: dict, warmup: float,
              warmup_timeout: float, catch_up_timeout: float, drain_timeout: float, log) -> dict:
    """One scenario from scratch (module docstring); returns its numbers. Raises RuntimeError."""
    from django.conf import settings

    from streams.log import EXECUTIONS, Retention, log_open

    from .servers import OwnPostgres

    work = Path(tempfile.mkdtemp(prefix=f"hubsched-faults-{name}-"))
    cleanups: list = []
    pg = None
    parts = None
    queue = f"hubsched-faults-{os.getpid()}-{name}"
    hub_procs: list[subprocess.Popen] = []
    try:
        if name == "sink_outage" or not sink:
            pg = OwnPostgres(port=_free_ports(1)[0], fsync=True)
            cleanups.append(pg.close)
            pg.start()
        sink_url = pg.url if name == "sink_outage" or not sink else sink
        used_log, cleanup = log_prepare(log_url, work)
        cleanups.append(cleanup)
        env = {**environment(work=work, broker=broker, log_url=used_log), "HUBSCHED_BENCH_QUEUE": queue}
        log(f"faults: {name}: setting up in {work}")
        hub_procs = workload_setup(work=work, env=env, groups=groups, keys=keys, hubs=hubs, period=period,
                                   sink=sink_url)
        table = f"faults_{os.getpid()}_{name}"
        engine, sink_table = sink_table_create(sink_url, table)
        cleanups.append(lambda: sink_table_drop(engine, sink_table))
        check([sys.executable, "-m", "hubsched.bench.e2e", "sink", table], env)
        wenv = {**env, **dict(item.split("=", 1) for item in worker_env)}
        worker_argvs = [_worker_argv(i, pool=pool, concurrency=concurrency, broker_options=broker_options)
                        for i in range(workers)]
        parts = _Parts(env=env, wenv=wenv, work=work, worker_argvs=worker_argvs)
        for i in range(workers):
            parts.start("worker", i)
        parts.start("forwarder", 0)
        parts.start("beat", 0)
        first_row_wait(engine, sink_table, parts.procs, work=work, timeout=warmup_timeout, what="faults")
        # the workers' retention: a stream declared again with other arguments is refused (PreconditionFailed)
        the_log = log_open(used_log, retention=Retention(float(settings.HUBSCHED_LOG_RETENTION_S),
                                                         int(settings.HUBSCHED_LOG_RETENTION_BYTES)))
        cleanups.append(the_log.close)
        probe = _Probe(engine=engine, log=the_log, stream=EXECUTIONS, django_db=work / "django.sqlite3",
                       broker=broker, queue=queue)
        t0, pre_end = window(warmup=warmup, seconds=seconds, period=period)
        # the fault comes fault_phase after a tick, settle seconds after the pre phase (whose ticks it must not
        # delay): the workers then hold that tick's messages and read its values
        fault_at = pre_end + settle - 0.5 * max(period, 1.0) + fault_phase
        _sleep_until(fault_at)
        out: dict = {"groups": groups, "keys": keys, "workers": workers, "in_flight_at_kill": 0}
        fault_at, not_started = _inject(name, parts=parts, pg=pg, probe=probe, keys=keys, out=out,
                                        outage_seconds=outage_seconds, restart_after=restart_after, log=log)
        restart_at = time.time()
        end_at_restart = probe.log_end()
        out["backlog_records"] = _minus(end_at_restart, probe.sink_offset())
        log(f"faults: {name}: restarted; catching up with the log's offset {end_at_restart}")
        caught_at = probe.sink_reaches(end_at_restart, timeout=catch_up_timeout)
        out["catch_up_s"] = None if caught_at is None else round(caught_at - restart_at, 2)
        grid = max(period, 1.0)
        post = (math.ceil((time.time() + settle) / grid) + 0.5) * grid
        t1 = post + seconds
        _sleep_until(t1)
        stop(parts.procs["beat"][0], group=True)
        drained = probe.drain(timeout=drain_timeout)
        out["drained"] = drained
        out["broker_at_end"] = {"waiting": probe.waiting(), "unacked": len(probe.unacked())}
        log(f"faults: {name}: counting")
        counts = _count(engine, sink_table, work / "django.sqlite3", groups=groups, keys=keys, period=period,
                        t0=t0, t1=t1, fault=(pre_end, post), not_started=not_started)
        out.update(counts)
        out["phases"] = {"pre_end": round(pre_end - t0, 2), "fault": round(fault_at - t0, 2),
                         "restart": round(restart_at - t0, 2),
                         "caught_up": None if caught_at is None else round(caught_at - t0, 2),
                         "post": round(post - t0, 2), "t1": round(t1 - t0, 2)}
        return out
    finally:
        if parts is not None:
            parts.stop_all()
        for proc in hub_procs:
            stop(proc, group=True)
        delete_queue(broker, queue)
        for cleanup in reversed(cleanups):
            try:
                cleanup()
            except Exception as exc:  # noqa: BLE001 - cleaning up: say it, go on with the rest
                log(f"faults: {name}: cleanup: {type(exc).__name__}: {exc}")
        shutil.rmtree(work, ignore_errors=True)


def _inject(name: str, *, parts: _Parts, pg, probe: _Probe, keys: int, out: dict, outage_seconds: float,
            restart_after: float, log) -> tuple[float, set[tuple[int, int]]]:
    """Inject scenario ``name``'s fault now and restart what it killed; adds its own numbers to ``out``.
    Returns when it injected the fault (epoch s) and the ticks known never to have been read (``_count``)."""
    fault_at = time.time()
    not_started: set[tuple[int, int]] = set()
    if name == "sink_outage":
        log(f"faults: {name}: killing the sink database for {outage_seconds} s")
        pg.kill()
        _sleep_until(fault_at + outage_seconds)
        pg.start()
    elif name == "worker_kill":
        log(f"faults: {name}: kill -9 of worker 0")
        parts.kill("worker", 0)
        locks0, held0 = probe.locks(), probe.unacked()
        _sleep_until(fault_at + restart_after)
        locks1, held1 = probe.locks(), probe.unacked()
        dead_locks = {int(k.rsplit(b":", 1)[1]) for k, token in locks0.items() if locks1.get(k) == token}
        held = {tag: held0[tag] for tag in held0 if tag in held1}
        # ticks the dead worker held and had not begun: their groups were not locked by it
        not_started = {(gid, t) for ticks in held.values() for gid, t in ticks if gid not in dead_locks}
        out["in_flight_at_kill"] = keys * len(dead_locks)
        out["held_at_kill"] = {"messages": len(held), "ticks": sum(len(t) for t in held.values()),
                               "not_started_ticks": len(not_started), "locks": len(dead_locks)}
        parts.start("worker", 0)
    else:
        log(f"faults: {name}: kill -9 of the forwarder")
        parts.kill("forwarder", 0)
        out["backlog_at_kill_records"] = _minus(probe.log_end(), probe.sink_offset())
        _sleep_until(fault_at + restart_after)
        parts.start("forwarder", 0)
    return fault_at, not_started


def _worker_argv(i: int, *, pool: str, concurrency: int, broker_options: dict) -> list[str]:
    """As ``bench e2e``'s worker; with broker options, the same worker started by ``worker_main`` below."""
    argv = hubsched_worker_argv(i, pool=pool, concurrency=concurrency)
    if not broker_options:
        return argv
    return [sys.executable, "-m", "hubsched.bench.faults", "worker", json.dumps(broker_options),
            *argv[argv.index("worker") + 1:]]


def _sleep_until(t: float) -> None:
    time.sleep(max(0.0, t - time.time()))


def _minus(a: int | None, b: int | None) -> int | None:
    return None if a is None else a - (b if b is not None else -1)


class _Probe:
    """What the benchmark reads while a scenario runs: the log's end, the consumers' offsets, the broker, the locks."""

    def __init__(self, *, engine, log, stream: str, django_db: Path, broker: str, queue: str) -> None:
        import redis

        self.engine, self.log, self.stream, self.django_db, self.queue = engine, log, stream, django_db, queue
        from django.conf import settings

        from streams.forwarding.sinks import sink_consumer_name

        self.redis = redis.Redis.from_url(broker)
        lanes = settings.HUBSCHED_SINK_WRITERS  # the children's too: they inherit this environment
        self.consumers = [sink_consumer_name(sink_id(), lane, lanes) for lane in range(lanes)]

    def log_end(self) -> int | None:
        from streams.log import LogError

        try:
            return self.log.stats(self.stream).last_offset
        except LogError:
            return None

    def sink_offset(self) -> int | None:
        """The sink's committed offset: the least of its forwarders' (one per lane, HUBSCHED_SINK_WRITERS, each
        reading the whole stream); None while the database is away or a lane has committed none."""
        import sqlalchemy as sa

        query = sa.text("SELECT consumer, last_offset FROM hubsched_offsets WHERE consumer IN :c").bindparams(
            sa.bindparam("c", expanding=True))
        for _ in range(2):  # once more on a fresh connection: the pooled one may be of a database since killed
            try:
                with self.engine.connect() as conn:
                    offsets = dict(conn.execute(query, {"c": self.consumers}).all())
                return min(offsets.values()) if len(offsets) == len(self.consumers) else None
            except sa.exc.SQLAlchemyError:
                self.engine.dispose()
        return None

    def runs_offset(self) -> int | None:
        try:
            with sqlite3.connect(self.django_db, timeout=10) as db:
                row = db.execute('SELECT "offset" FROM streams_consumeroffset WHERE consumer = ? AND stream = ?',
                                 ("runs", self.stream)).fetchone()
            return row[0] if row else None
        except sqlite3.Error:
            return None

    def sink_reaches(self, offset: int | None, *, timeout: float) -> float | None:
        """The time at which the sink's committed offset was first seen at or past ``offset``; None on timeout."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            now = time.time()
            position = self.sink_offset()
            if offset is None or (position is not None and position >= offset):
                return now
            time.sleep(POLL_S)
        return None

    def waiting(self) -> int:
        """Messages waiting in this queue (kombu: a list per queue and priority, named after the queue)."""
        import redis

        total = 0
        for key in self.redis.scan_iter(match=f"{self.queue}*"):
            try:
                total += self.redis.llen(key)
            except redis.ResponseError:  # not a list: not a queue
                continue
        return total

    def unacked(self) -> dict[bytes, list[tuple[int, int]]]:
        """``{delivery tag: [(group, tick in epoch ms), ...]}`` of this queue's messages delivered and not
        acknowledged (kombu's Redis transport keeps them in the hash ``unacked`` until the ack, or until the
        visibility timeout brings them back); each a ``group_batch_run(hub_id, ticks, limit)``."""
        held = {}
        for tag, raw in self.redis.hscan_iter("unacked"):
            try:
                message, _exchange, routing_key = json.loads(raw)
                if routing_key != self.queue:
                    continue
                args = json.loads(base64.b64decode(message["body"]))[0]
                held[tag] = [(gid, round(tick[0] * 1000)) for tick in args[1] for gid in tick[3]]
            except (ValueError, KeyError, IndexError, TypeError):
                held[tag] = []
        return held

    def locks(self) -> dict[bytes, bytes]:
        """Every overlap lock now: ``{key: token}``."""
        keys = list(self.redis.scan_iter(match=LOCKS, count=1000))
        return {k: v for k, v in zip(keys, self.redis.mget(keys) if keys else []) if v is not None}

    def drain(self, *, timeout: float) -> bool:
        """Wait until the queue is empty (waiting and unacknowledged) and both consumers have committed the log's
        last offset, twice in a row; False after ``timeout`` seconds."""
        deadline = time.time() + timeout
        calm = 0
        while time.time() < deadline:
            end = self.log_end()
            sink, runs = self.sink_offset(), self.runs_offset()
            done = (not self.waiting() and not self.unacked() and end is not None and sink is not None
                    and runs is not None and sink >= end and runs >= end)
            calm = calm + 1 if done else 0
            if calm >= 2:
                return True
            time.sleep(1.0)
        return False


def _count(engine, table, django_db: Path, *, groups: int, keys: int, period: float, t0: float, t1: float,
           fault: tuple[float, float], not_started: set[tuple[int, int]] = frozenset()) -> dict:
    """The counts of the module docstring for the due ticks in ``[t0, t1)``; ``fault`` is the span of ticks
    left out of the latency; ``not_started``: (group, tick ms) known never to have been read (a dead worker's
    messages it had not begun), not counted as lost when no outcome was recorded."""
    import sqlalchemy as sa

    def ms(when: datetime) -> int:
        if when.tzinfo is None:
            when = when.replace(tzinfo=timezone.utc)
        return round(when.timestamp() * 1000)

    due_ticks = [k * period for k in range(math.ceil(t0 / period), math.ceil(t1 / period))
                 if t0 <= k * period < t1]
    start, end = (datetime.fromtimestamp(t, timezone.utc) for t in (t0, t1))
    c = table.c
    inner = (sa.select(c.group_id, c.tick, sa.func.count().label("copies"), sa.func.max(c.committed_at).label("last"))
             .where(c.tick >= start, c.tick < end).group_by(c.group_id, c.tick, c.entity, c.key).subquery())
    outer = sa.select(inner.c.group_id, inner.c.tick, sa.func.sum(inner.c.copies), sa.func.count(),
                      sa.func.max(inner.c.last)).group_by(inner.c.group_id, inner.c.tick)
    stored: dict[tuple[int, int], int] = {}
    rows = 0
    latency = {"outside": [], "fault": []}
    with engine.connect() as conn:
        for gid, tick, copies, n, last in conn.execute(outer):
            if isinstance(tick, str):
                tick = datetime.fromisoformat(tick)
            key = (int(gid), ms(tick))
            stored[key] = int(n)
            rows += int(copies)
            inside = fault[0] <= key[1] / 1000 < fault[1]
            latency["fault" if inside else "outside"].append((float(last) * 1000.0 - key[1], int(n)))
    outcomes: dict[tuple[int, int], tuple[str, str]] = {}
    with sqlite3.connect(django_db, timeout=30) as db:
        fmt = "%Y-%m-%d %H:%M:%S.%f"  # Django's SQLite backend: naive UTC text
        for gid, scheduled, status, error in db.execute(
                "SELECT group_id, scheduled_for, status, error FROM groups_grouprun "
                "WHERE scheduled_for >= ? AND scheduled_for < ?",
                (start.replace(tzinfo=None).strftime(fmt), end.replace(tzinfo=None).strftime(fmt))):
            outcomes[(int(gid), ms(datetime.fromisoformat(scheduled)))] = (status, error or "")
    ticks = {"due": 0, "ok": 0, "failed": 0, "skipped": 0, "missed": 0, "unaccounted": 0}
    lost = 0
    for t in due_ticks:
        tick_ms = round(t * 1000)
        for gid in range(1, groups + 1):
            ticks["due"] += 1
            status, error = outcomes.get((gid, tick_ms), ("unaccounted", ""))
            ticks[status] = ticks.get(status, 0) + 1
            if status in NOT_READ or (status == "failed" and not error.startswith(READ_FAILURE)):
                continue
            if status == "unaccounted" and (gid, tick_ms) in not_started:
                continue
            lost += max(0, keys - stored.get((gid, tick_ms), 0))
    for weighted in latency.values():
        weighted.sort()
    distinct = sum(stored.values())
    return {
        "offered_values": ticks["due"] * keys,
        "stored": distinct,
        "lost": lost,
        "duplicated": rows - distinct,
        "missed_ticks": ticks["missed"],
        "unaccounted_ticks": ticks["unaccounted"],
        "ticks": ticks,
        "latency_p50_ms": percentile(latency["outside"], 0.50),
        "latency_p99_ms": percentile(latency["outside"], 0.99),
        "latency_p99_ms_fault": percentile(latency["fault"], 0.99),
    }


# --- subprocess entry point --------------------------------------------------------------------------


def worker_main(options: dict, argv: list[str]) -> None:
    """``celery -A hubsched.bench.celeryapp worker <argv>`` with ``options`` added to the broker's transport
    options (``--broker-option``)."""
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "hubsched.settings")
    from hubsched.bench.celeryapp import app

    app.conf.broker_transport_options = {**(app.conf.broker_transport_options or {}), **options}
    app.worker_main(["worker", *argv])


if __name__ == "__main__":
    command, *rest = sys.argv[1:]
    if command == "worker":
        worker_main(json.loads(rest[0]), rest[1:])
    else:
        raise SystemExit(f"unknown command {command!r}")
