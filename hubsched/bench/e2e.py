"""End-to-end benchmark: reference hubs, beat, workers and a SQL sink, the stock path against hubsched's, counting committed rows.

One invocation runs both paths on the same workload (``--groups`` groups of ``--keys`` keys on
``--hubs`` hubs, every ``--period`` seconds), one after the other, in a throwaway environment:

- a temporary directory holding a migrated SQLite Django database (projects, hubs, groups, keys, a
  sink and the stock path's PeriodicTasks, filled by bulk inserts) and the subprocesses' logs;
- reference hubs as real subprocesses (``manage.py hubsim --tree bench:E:K --processes N``), shared
  by both paths;
- a Redis broker (``--broker``, default ``HUBSCHED_BENCH_BROKER`` or ``redis://127.0.0.1:6379/13``)
  with a queue per path, deleted afterwards;
- a fresh sink table per path (``e2e_<pid>_<path>`` in ``--sink``, default a SQLite file in the
  temporary directory), dropped afterwards with its executions ledger and its forwarders' offset rows
  (``sink:<pid>[:<lane>-of-<lanes>]`` in ``hubsched_offsets``: the benchmark's Sink has this process's id as its key). It is
  the tall layout plus ``committed_at``, a column the database fills with its own clock at insert (the writers name their
  columns, so the default applies). The layout has no unique key per value (idempotency is per
  execution, through the ledger), so a value stored twice is counted, not absorbed.

The paths:

- **stock**: django-celery-beat's DatabaseScheduler (``hubsched.bench.scheduler:StockScheduler``, the
  due time in a header), one ``hubsched.bench.stock.group_run`` task per group, a WebSocket
  connection per call, one INSERT and COMMIT per value, Celery's default prefork pool with one
  process per CPU.
- **hubsched**: ``groups.scheduler:Scheduler`` (one message per hub per tick), the project's worker
  (``--pool``/``--concurrency``, default the command line of ``hubsched.stack.worker_argv``), which
  appends each tick's outcome to the durable log, and the log's forwarder process
  (``hubsched.stack.forwarder_argv``: the sink's forwarder and the run recorder), which stores the values.
  The log (``--log``) is by default the embedded SQLite log in the temporary directory; with
  ``rabbitmq-stream://`` it is RabbitMQ Streams, in a stream of the benchmark's own (``log_prepare``).

For each path: workers and beat start, the first committed row ends the start-up, then after
``--warmup`` seconds a window of ``--seconds`` starts half a period off the tick grid. Rows whose tick
lies in the window and that are committed before ``--drain`` seconds after it are counted: ``lost`` =
groups x keys x ticks in the window - distinct (group, tick, entity, key) stored; ``duplicated`` = rows
beyond those; latency = ``committed_at`` minus the tick, per execution (its last row), weighted by
rows. ``cpu_percent`` is user + system time from ``/proc/<pid>/stat`` over the window, of every process
of a kind and its descendants, in percent of one core (``forwarder`` is the hubsched path's forwarder
process; ``database`` sums every PostgreSQL or MariaDB
process on the machine; a SQLite sink works inside the worker); ``machine`` is every CPU's busy time
from ``/proc/stat`` (all but idle and iowait), out of 100 x the number of cores.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from collections.abc import Callable
from pathlib import Path

from hubsched.bench.common import BEATS, ROOT, check, delete_queue, paths_measure, paths_ratio, percentile
from hubsched.secrets import url_mask

HELP = ("End to end, hubs to SQL: stock django-celery-beat + a task per group against hubsched, "
        "counting committed rows (needs Redis).")
API_KEY = "bench-key"
# committed_at: the database's own clock at insert of the row (not the statement's start), as epoch seconds
COMMITTED_AT = {
    "postgresql": "extract(epoch from clock_timestamp())",
    "mysql": "(UNIX_TIMESTAMP(SYSDATE(6)))",
    "mariadb": "(UNIX_TIMESTAMP(SYSDATE(6)))",
    "sqlite": "((julianday('now') - 2440587.5) * 86400.0)",
}
DATABASE_PROCESSES = {"postgres", "mariadbd", "mysqld"}
ROW_POLL_S = 0.2
KEYS = ("offered_values_per_s", "stored_values_per_s", "lost", "duplicated", "latency_p50_ms", "latency_p99_ms")


def _default_worker() -> tuple[str, int]:
    from hubsched.stack import worker_argv

    argv = worker_argv()
    return argv[argv.index("--pool") + 1], int(argv[argv.index("--concurrency") + 1])


def add_arguments(parser) -> None:
    pool, concurrency = _default_worker()
    parser.add_argument("--groups", type=int, default=1000, help="Interval groups (default 1000).")
    parser.add_argument("--keys", type=int, default=100, help="Keys per group, on one entity each (default 100).")
    parser.add_argument("--hubs", type=int, default=10, help="Reference hubs the groups are spread over (default 10).")
    parser.add_argument("--period", type=float, default=1.0, help="Period of every group, seconds (default 1).")
    parser.add_argument("--seconds", type=float, default=60.0, help="Measured window per path (default 60).")
    parser.add_argument("--sink", default=None,
                        help="SQLAlchemy URL of the sink database (default: a SQLite file in a temporary directory). "
                             "Only a fresh table e2e_<pid>_<path> is created there, and dropped afterwards.")
    parser.add_argument("--paths", default="stock,hubsched", help="Which paths to run (default stock,hubsched).")
    parser.add_argument("--log", dest="log_url", default=None, metavar="URL",
                        help="The durable log of the hubsched path (default: the embedded SQLite log in the temporary "
                             "directory). rabbitmq-stream://user:password@host:5552/ for RabbitMQ Streams: in a virtual "
                             "host of the benchmark's own, made with rabbitmqctl and deleted afterwards; with a virtual "
                             "host in the URL, its stream 'executions' is deleted before and after the run.")
    parser.add_argument("--pool", default=pool, choices=["threads", "prefork", "solo", "gevent"],
                        help=f"hubsched's worker pool (default {pool}, as shipped).")
    parser.add_argument("--concurrency", type=int, default=concurrency,
                        help=f"hubsched's worker concurrency (default {concurrency}, as shipped).")
    parser.add_argument("--workers", type=int, default=1, help="hubsched worker processes (default 1).")
    parser.add_argument("--hub-processes", type=int, default=1, help="Processes per reference hub (default 1).")
    parser.add_argument("--broker", default=os.environ.get("HUBSCHED_BENCH_BROKER", "redis://127.0.0.1:6379/13"),
                        help="Redis URL of the broker and locks (default db 13).")
    parser.add_argument("--rules", action="store_true",
                        help="One alarm rule on every group (a threshold and a quality test that never hold: every "
                             "execution evaluates it, no alarm is written; docs/alarms.md).")
    parser.add_argument("--warmup", type=float, default=5.0, help="Seconds after the first stored row before the window.")
    parser.add_argument("--drain", type=float, default=5.0,
                        help="Seconds after the window in which rows of its ticks may still arrive (default 5).")
    parser.add_argument("--warmup-timeout", type=float, default=120.0, help="Longest wait for the first stored row.")
    parser.add_argument("--worker-env", action="append", default=[], metavar="NAME=VALUE",
                        help="Extra environment for hubsched's workers (repeatable), e.g. HUBSCHED_SINK_BATCH_AGE_S=0.1.")
    parser.add_argument("--py-spy", default="", metavar="FILE",
                        help="Record the (first) hubsched worker with py-spy over the window into FILE (speedscope JSON).")


def run(*, groups: int, keys: int, hubs: int, period: float, seconds: float, sink: str | None = None,
        paths: str = "stock,hubsched", pool: str | None = None, concurrency: int | None = None, workers: int = 1,
        hub_processes: int = 1, broker: str = "redis://127.0.0.1:6379/13", warmup: float = 5.0, drain: float = 5.0,
        warmup_timeout: float = 120.0, worker_env: list[str] | None = None, py_spy: str = "",
        log_url: str | None = None, rules: bool = False, log=lambda _: None) -> dict:
    """Returns ``{"params": {...}, "stock": {...}, "hubsched": {...}, "ratio": float | None}``.

    Raises RuntimeError when a part does not start or no row reaches the sink, ValueError for an unknown path
    or sink dialect."""
    default_pool, default_concurrency = _default_worker()
    pool, concurrency = pool or default_pool, concurrency or default_concurrency
    work = Path(tempfile.mkdtemp(prefix="hubsched-e2e-"))
    sink = _with_driver(sink) if sink else f"sqlite:///{work / 'sink.sqlite3'}"
    cleanups: list[Callable[[], None]] = []
    hub_procs: list[subprocess.Popen] = []
    try:
        log_url_used, cleanup = log_prepare(log_url, work)
        cleanups.append(cleanup)
        env = environment(work=work, broker=broker, log_url=log_url_used)
        result: dict = {"params": {
            "groups": groups, "keys": keys, "hubs": hubs, "period": period, "seconds": seconds,
            "sink": url_mask(sink), "log": url_mask(log_url_used), "pool": pool, "concurrency": concurrency,
            "workers": workers, "hub_processes": hub_processes, "broker": broker.split("@")[-1],
            "cpus": os.cpu_count(), "worker_env": worker_env or [], "rules": rules,
        }}
        log(f"e2e: migrating a throwaway database in {work}")
        log(f"e2e: {groups} groups of {keys} keys on {hubs} hubs at {period} s")
        hub_procs = workload_setup(work=work, env=env, groups=groups, keys=keys, hubs=hubs, period=period, sink=sink,
                                   hub_processes=hub_processes, rules=rules)
        paths_measure(result, paths=paths, log=log, name="e2e", measure=lambda path: _measure(
            path, env=env, work=work, sink=sink, groups=groups, keys=keys, period=period, seconds=seconds,
            broker=broker, pool=pool, concurrency=concurrency, workers=workers, warmup=warmup, drain=drain,
            warmup_timeout=warmup_timeout, hub_procs=hub_procs, worker_env=worker_env or [], py_spy=py_spy,
        ))
    finally:
        for proc in hub_procs:
            stop(proc, group=True)
        for cleanup in reversed(cleanups):
            cleanup()
        shutil.rmtree(work, ignore_errors=True)
    result["ratio"] = paths_ratio(result, "stored_values_per_s")
    return result


# --- the environment, shared with ``bench faults`` ---------------------------------------------------


def sink_id() -> int:
    """The primary key of the benchmark's Sink: this process's id, so that the forwarder's offset row
    (``sink:<id>`` in the sink database's ``hubsched_offsets``) is not another benchmark's on a shared database."""
    return os.getpid()


def environment(*, work: Path, broker: str, log_url: str) -> dict[str, str]:
    """The environment of every subprocess: the throwaway Django database and var dir in ``work``, the broker
    (also the locks) and the log."""
    return {
        **os.environ,
        "DATABASE_URL": f"sqlite:///{work / 'django.sqlite3'}",
        "HUBSCHED_VAR_DIR": str(work / "var"),
        "CELERY_BROKER_URL": broker,
        "HUBSCHED_LOCK_URL": broker,
        "HUBSCHED_LOG_URL": log_url,
        "LOG_LEVEL": "WARNING",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }


def log_prepare(url: str | None, work: Path) -> tuple[str, Callable[[], None]]:
    """The log URL the benchmark's processes use, and the call that cleans it up afterwards.

    - None or empty: the embedded SQLite log at ``<work>/log.sqlite3`` (removed with ``work``).
    - ``rabbitmq-stream://...`` with no virtual host (or ``/``): a virtual host of our own,
      ``hubsched-bench-<pid>`` (``servers.RabbitMQVhost``: rabbitmqctl on this machine), deleted afterwards
      with its streams, so nothing else on the server is read or touched.
    - any other URL (a RabbitMQ virtual host named in it, ``sqlite:///<path>``): used as given; its stream
      ``streams.log.EXECUTIONS`` is deleted before the run and after it. Give the benchmark a log of its own.

    Raises RuntimeError when rabbitmqctl is missing or fails, LogError when the log cannot be reached."""
    from urllib.parse import urlsplit

    from streams.log import EXECUTIONS, Retention, log_open

    if not url:
        return f"sqlite:///{work / 'log.sqlite3'}", lambda: None
    if url.startswith("rabbitmq-stream://") and urlsplit(url).path in ("", "/"):
        from .servers import RabbitMQVhost

        vhost = RabbitMQVhost(url, name=f"hubsched-bench-{os.getpid()}")
        return vhost.url, vhost.close

    def stream_delete() -> None:
        from django.conf import settings

        the_log = log_open(url, retention=Retention(float(settings.HUBSCHED_LOG_RETENTION_S),
                                                    int(settings.HUBSCHED_LOG_RETENTION_BYTES)))
        try:
            the_log.stream_delete(EXECUTIONS)
        finally:
            the_log.close()

    stream_delete()
    return url, stream_delete


def workload_setup(*, work: Path, env: dict, groups: int, keys: int, hubs: int, period: float, sink: str,
                   hub_processes: int = 1, rules: bool = False) -> list[subprocess.Popen]:
    """Migrate the throwaway database, fill it (``populate``: its Sink's pk is ``sink_id()``) and start the
    reference hubs; returns their processes (stop them with ``stop``). Raises RuntimeError."""
    per_hub = math.ceil(groups / hubs)
    ports = _free_ports(hubs)
    check([sys.executable, str(ROOT / "manage.py"), "migrate", "--noinput", "-v", "0"], env)
    spec = {"groups": groups, "keys": keys, "hubs": hubs, "period": period, "ports": ports, "sink": sink,
            "sink_id": sink_id(), "rules": rules}
    check([sys.executable, "-m", "hubsched.bench.e2e", "populate", json.dumps(spec)], env)
    hub_procs = []
    try:
        for i, port in enumerate(ports):
            with open(work / f"hub{i}.log", "w") as hub_log:
                hub_procs.append(subprocess.Popen(
                    [sys.executable, str(ROOT / "manage.py"), "hubsim", "--port", str(port), "--name", f"hub{i}",
                     "--tree", f"bench:{per_hub}:{keys}", "--processes", str(hub_processes)],
                    env={**env, "HUBSIM_KEY": API_KEY}, cwd=ROOT, stdout=hub_log, stderr=subprocess.STDOUT,
                    start_new_session=True))
        _wait_for_ports(ports, hub_procs)
    except BaseException:
        for proc in hub_procs:
            stop(proc, group=True)
        raise
    return hub_procs


def spawn(argv: list[str], *, env: dict, log_path: Path) -> subprocess.Popen:
    """Start ``argv`` in the repository, leading its own process group, its output appended to ``log_path``."""
    with open(log_path, "a") as out:  # the child keeps its own descriptor
        return subprocess.Popen(argv, env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def forwarder_argv() -> list[str]:
    """The forwarder's command line as shipped (``hubsched.stack.forwarder_argv``)."""
    from hubsched.stack import forwarder_argv as shipped

    return shipped()


def first_row_wait(engine, table, procs: dict[str, list[subprocess.Popen]], *, work: Path, timeout: float,
                   what: str) -> None:
    """Wait until ``table`` holds a row; raises RuntimeError with the log's tail when a process of ``procs``
    (``{kind: [Popen]}``, logs at ``<work>/<what>-<kind><i>.log``) exits, or after ``timeout`` seconds."""
    deadline = time.time() + timeout
    while not _any_row(engine, table):
        for kind, ps in procs.items():
            for i, p in enumerate(ps):
                if p.poll() is not None:
                    name = work / f"{what}-{kind}{i}.log"
                    tail = name.read_text()[-3000:] if name.exists() else ""
                    raise RuntimeError(f"{kind} ({what}) exited with {p.returncode}:\n{tail}")
        if time.time() > deadline:
            raise RuntimeError(f"{what}: no row reached the sink within {timeout} s; see {work}")
        time.sleep(ROW_POLL_S)


def report(result: dict) -> str:
    p = result["params"]
    lines = [f"{p['groups']} groups x {p['keys']} keys on {p['hubs']} hubs, period {p['period']} s, "
             f"window {p['seconds']} s, sink {p['sink']}, {p['cpus']} CPUs"]
    lines.append(f"{'':10}" + "".join(f"{k:>22}" for k in KEYS))
    for path in ("stock", "hubsched"):
        if path in result:
            r = result[path]
            lines.append(f"{path:10}" + "".join(f"{r[k]!s:>22}" for k in KEYS))
            lines.append(f"{'':10}cpu %: " + ", ".join(f"{k} {v}" for k, v in r["cpu_percent"].items()))
            if "profile" in r:
                lines.append(f"{'':10}worker profile ({r['profile']['samples']} samples with the GIL), self time:")
                lines.extend(f"{'':12}{item['percent']:5.1f} %  {item['function']}" for item in r["profile"]["self"])
    lines.append(f"ratio (hubsched / stock stored_values_per_s): {result['ratio']}")
    return "\n".join(lines) + "\n"


# --- one path ---------------------------------------------------------------------------------------


def _measure(path: str, *, env: dict, work: Path, sink: str, groups: int, keys: int, period: float, seconds: float,
             broker: str, pool: str, concurrency: int, workers: int, warmup: float, drain: float,
             warmup_timeout: float, hub_procs: list, worker_env: list[str], py_spy: str) -> dict:
    table = f"e2e_{os.getpid()}_{path}"
    queue = f"hubsched-e2e-{os.getpid()}-{path}"
    env = {**env, "HUBSCHED_BENCH_QUEUE": queue}
    engine, sink_table = sink_table_create(sink, table)
    check([sys.executable, "-m", "hubsched.bench.e2e", "sink", table], env)
    procs: dict[str, list[subprocess.Popen]] = {"worker": [], "beat": [], "forwarder": []}
    spy = None
    try:
        if path == "stock":  # Celery's defaults: prefork, a process per CPU
            worker_argvs = [CELERY + ["worker", "--pool", "prefork", "--concurrency", str(os.cpu_count() or 1),
                                      "-I", "hubsched.bench.stock", "-l", "WARNING", "-n", f"e2e-stock@{socket.gethostname()}"]]
            wenv = env
        else:
            worker_argvs = [hubsched_worker_argv(i, pool=pool, concurrency=concurrency) for i in range(workers)]
            wenv = {**env, **dict(item.split("=", 1) for item in worker_env)}
        for i, argv in enumerate(worker_argvs):
            procs["worker"].append(spawn(argv, env=wenv, log_path=work / f"{path}-worker{i}.log"))
        if path == "hubsched":  # the values reach the sink through the log's forwarder
            procs["forwarder"].append(spawn(forwarder_argv(), env=wenv, log_path=work / f"{path}-forwarder0.log"))
        procs["beat"].append(spawn(beat_argv(path, work), env=env, log_path=work / f"{path}-beat0.log"))
        first_row_wait(engine, sink_table, procs, work=work, timeout=warmup_timeout, what=path)
        # the window starts half a period off the tick grid, after the warm-up
        t0, t1 = window(warmup=warmup, seconds=seconds, period=period)
        time.sleep(max(0.0, t0 - time.time()))
        kinds = {"hubs": [p.pid for p in hub_procs], "beat": [p.pid for p in procs["beat"]],
                 "worker": [p.pid for p in procs["worker"]]}
        if path == "hubsched":
            kinds["forwarder"] = [p.pid for p in procs["forwarder"]]
        cpu0 = cpu_by_kind(kinds)
        if py_spy and path == "hubsched":
            spy = subprocess.Popen(
                [str(Path(sys.executable).parent / "py-spy"), "record", "-p", str(procs["worker"][0].pid), "-d",
                 str(int(seconds)), "-f", "speedscope", "-o", py_spy, "--nonblocking", "--gil", "-s"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(max(0.0, t1 - time.time()))
        cpu1 = cpu_by_kind(kinds)
        time.sleep(drain)
        cutoff = time.time()
    finally:
        for p in procs["beat"] + procs["worker"] + procs["forwarder"]:
            stop(p, group=True)
        if spy is not None:
            try:
                spy.wait(30)
            except subprocess.TimeoutExpired:
                spy.kill()
        delete_queue(broker, queue)
    stats = _count(engine, sink_table, t0, t1, cutoff)
    sink_table_drop(engine, sink_table)
    offered = groups * keys / period
    expected = round(groups * keys * seconds / period)
    result = {
        "offered_values_per_s": round(offered, 1),
        "stored_values_per_s": round(stats["distinct"] / seconds, 1),
        "lost": max(0, expected - stats["distinct"]),
        "duplicated": stats["rows"] - stats["distinct"],
        "latency_p50_ms": percentile(stats["latencies"], 0.50),
        "latency_p99_ms": percentile(stats["latencies"], 0.99),
        "cpu_percent": {k: round(100.0 * (cpu1[k] - cpu0[k]) / seconds, 1) for k in cpu0},
        "expected_values": expected,
        "executions": stats["executions"],
    }
    if spy is not None and Path(py_spy).is_file():
        from .profile import speedscope_summary

        result["profile"] = {"file": py_spy, **speedscope_summary(py_spy)}
    return result


def _count(engine, table, t0: float, t1: float, cutoff: float) -> dict:
    """Rows with ticks in [t0, t1) committed before ``cutoff``: totals and per-execution latencies."""
    import sqlalchemy as sa

    c = table.c
    start, end = (datetime.fromtimestamp(t, timezone.utc) for t in (t0, t1))
    inner = (
        sa.select(c.group_id, c.tick, sa.func.count().label("copies"), sa.func.max(c.committed_at).label("last"))
        .where(c.tick >= start, c.tick < end, c.committed_at < cutoff)
        .group_by(c.group_id, c.tick, c.entity, c.key)
        .subquery()
    )
    outer = sa.select(inner.c.tick, sa.func.sum(inner.c.copies), sa.func.count(), sa.func.max(inner.c.last)).group_by(
        inner.c.group_id, inner.c.tick
    )
    rows = distinct = executions = 0
    latencies: list[tuple[float, int]] = []
    with engine.connect() as conn:
        for tick, copies, n, last in conn.execute(outer):
            if isinstance(tick, str):
                tick = datetime.fromisoformat(tick)
            if tick.tzinfo is None:
                tick = tick.replace(tzinfo=timezone.utc)
            rows += int(copies)
            distinct += int(n)
            executions += 1
            latencies.append(((float(last) - tick.timestamp()) * 1000.0, int(n)))
    latencies.sort()
    return {"rows": rows, "distinct": distinct, "executions": executions, "latencies": latencies}



def sink_table_create(url: str, name: str):
    """A fresh tall table (the layout as hubsched makes it) with ``committed_at``, no ledger yet, and no offset
    of the benchmark's forwarder (``sink:<sink_id()>``) in ``hubsched_offsets``; returns ``(engine, table)``.
    Raises ValueError for a dialect the benchmark does not know."""
    import sqlalchemy as sa

    from scripts_engine.sinks.tables import executions_table, ledger_name, tall_table

    engine = sa.create_engine(url)
    dialect = engine.dialect.name
    if dialect not in COMMITTED_AT:
        raise ValueError(f"sink dialect {dialect!r}: the benchmark knows postgresql, mysql/mariadb and sqlite")
    metadata = sa.MetaData()
    table = tall_table(metadata, name)
    table.append_column(sa.Column("committed_at", sa.Float(precision=53), nullable=False,
                                  server_default=sa.text(COMMITTED_AT[dialect])))
    with engine.begin() as conn:
        table.drop(conn, checkfirst=True)
        executions_table(sa.MetaData(), ledger_name(name)).drop(conn, checkfirst=True)
        metadata.create_all(conn)
    _offset_forget(engine)
    return engine, table


def sink_table_drop(engine, table) -> None:
    """Drop the benchmark's table, its ledger and its forwarder's offset row; dispose of ``engine``."""
    import sqlalchemy as sa

    from scripts_engine.sinks.tables import executions_table, ledger_name

    with engine.begin() as conn:
        table.drop(conn, checkfirst=True)
        executions_table(sa.MetaData(), ledger_name(table.name)).drop(conn, checkfirst=True)
    _offset_forget(engine)
    engine.dispose()


def _offset_forget(engine) -> None:
    import sqlalchemy as sa

    from scripts_engine.sinks.offsets import OFFSETS_TABLE, offsets_table

    if sa.inspect(engine).has_table(OFFSETS_TABLE):
        offsets = offsets_table(sa.MetaData())
        with engine.begin() as conn:
            # sink:<id>, and sink:<id>:<lane>-of-<lanes> with several writers (HUBSCHED_SINK_WRITERS)
            conn.execute(offsets.delete().where((offsets.c.consumer == f"sink:{sink_id()}")
                                                | offsets.c.consumer.startswith(f"sink:{sink_id()}:")))


def window(*, warmup: float, seconds: float, period: float) -> tuple[float, float]:
    """``(t0, t1)`` epoch seconds: a window of ``seconds`` starting ``warmup`` seconds from now, half a period
    off the tick grid (so that no tick lies on an edge)."""
    grid = max(period, 1.0)
    t0 = (int((time.time() + warmup) / grid) + 0.5) * grid
    return t0, t0 + seconds


CELERY = [sys.executable, "-m", "celery", "-A", "hubsched.bench.celeryapp"]


def hubsched_worker_argv(i: int, *, pool: str, concurrency: int) -> list[str]:
    """The ``i``-th hubsched worker on the benchmark's queue (``hubsched.bench.celeryapp``)."""
    return CELERY + ["worker", "--pool", pool, "--concurrency", str(concurrency), "-l", "WARNING",
                     "-n", f"e2e-{os.getpid()}-{i}@{socket.gethostname()}"]


def beat_argv(path: str, work: Path) -> list[str]:
    """The beat of ``path`` (``BEATS``) on the benchmark's queue, its schedule file in ``work``."""
    return CELERY + ["beat", "-S", BEATS[path], "-l", "WARNING", "-s", str(work / f"{path}-celerybeat-schedule"),
                     "--pidfile", ""]


def _any_row(engine, table) -> bool:
    import sqlalchemy as sa

    with engine.connect() as conn:
        return conn.execute(sa.select(table.c.group_id).limit(1)).first() is not None


def cpu_by_kind(kinds: dict[str, list[int]]) -> dict[str, float]:
    """CPU seconds (user + system) of each kind's processes and their live descendants, plus database and broker."""
    tick = os.sysconf("SC_CLK_TCK")
    procs: dict[int, tuple[int, str, float]] = {}  # pid -> (ppid, comm, cpu s)
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            text = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        comm = text[text.index("(") + 1 : text.rindex(")")]
        fields = text.rsplit(")", 1)[1].split()
        procs[int(entry)] = (int(fields[1]), comm, (int(fields[11]) + int(fields[12])) / tick)
    children: dict[int, list[int]] = {}
    for pid, (ppid, _, _) in procs.items():
        children.setdefault(ppid, []).append(pid)

    def tree(pid: int) -> float:
        if pid not in procs:
            return 0.0
        return procs[pid][2] + sum(tree(child) for child in children.get(pid, ()))

    out = {kind: sum(tree(pid) for pid in pids) for kind, pids in kinds.items()}
    out["database"] = sum(cpu for _, comm, cpu in procs.values() if comm in DATABASE_PROCESSES)
    out["broker"] = sum(cpu for _, comm, cpu in procs.values() if comm.startswith("redis-server"))
    # the whole machine, whoever used it (the kernel's network work, the benchmark itself, others)
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    busy = sum(int(v) for v in fields[:8]) - int(fields[3]) - int(fields[4])  # all but idle and iowait
    out["machine"] = busy / tick
    return out


# --- processes --------------------------------------------------------------------------------------


def _free_ports(n: int) -> list[int]:
    sockets = [socket.socket() for _ in range(n)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def _wait_for_ports(ports: list[int], procs: list[subprocess.Popen], timeout: float = 30.0) -> None:
    deadline = time.time() + timeout
    for port, proc in zip(ports, procs):
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if proc.poll() is not None or time.time() > deadline:
                    raise RuntimeError(f"the reference hub on port {port} did not start") from None
                time.sleep(0.1)


def stop(proc: subprocess.Popen, *, group: bool = False, timeout: float = 20.0) -> None:
    """SIGTERM (to its process group, which it leads), then SIGKILL after ``timeout``."""
    def send(sig):
        try:
            os.killpg(proc.pid, sig) if group else proc.send_signal(sig)
        except ProcessLookupError:
            pass

    if proc.poll() is None:
        send(signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        send(signal.SIGKILL)
        proc.wait(10)
    if group:
        send(signal.SIGKILL)  # children that outlived their parent




def _with_driver(url: str) -> str:
    """The drivers requirements.txt installs, for URLs that name none (postgresql://, mysql://, mariadb://)."""
    for bare, explicit in (("postgresql://", "postgresql+psycopg2://"), ("postgres://", "postgresql+psycopg2://"),
                           ("mysql://", "mysql+pymysql://"), ("mariadb://", "mariadb+pymysql://")):
        if url.startswith(bare):
            return explicit + url[len(bare):]
    return url


# --- subprocess entry points (run with the throwaway database's settings) ----------------------------


def populate(spec: dict) -> None:
    """Project, hubs, groups (one entity of ``keys`` keys each), a sink, and the stock path's PeriodicTasks. The hubs
    are at ``spec["hub_host"]`` (default 127.0.0.1) on ``spec["ports"]``."""
    import django

    django.setup()
    from django.conf import settings
    from django.db import transaction
    from django_celery_beat.models import IntervalSchedule, PeriodicTask, PeriodicTasks

    from groups.models import Group, GroupKey
    from hubs.models import Hub, Project
    from scripts_engine.models import Sink

    groups, keys, hubs, period = spec["groups"], spec["keys"], spec["hubs"], spec["period"]
    with transaction.atomic():
        project = Project.objects.create(name="e2e", time_zone=settings.TIME_ZONE)
        Sink.objects.create(id=spec.get("sink_id"), project=project, name="bench", url=spec["sink"], table="e2e_pending")
        hub_rows = Hub.objects.bulk_create([
            Hub(project=project, name=f"hub{i}", url=f"ws://{spec.get('hub_host', '127.0.0.1')}:{port}/connect",
                api_key=API_KEY)
            for i, port in enumerate(spec["ports"])
        ])
        if float(period).is_integer():
            every, unit = int(period), IntervalSchedule.SECONDS
        else:
            every, unit = round(period * 1_000_000), IntervalSchedule.MICROSECONDS
        interval, _ = IntervalSchedule.objects.get_or_create(every=every, period=unit)
        tasks, rows, key_rows = [], [], []
        for i in range(groups):
            hub = hub_rows[i % hubs]
            gid = i + 1
            tasks.append(PeriodicTask(
                id=gid, name=f"e2e stock group {gid}", task="hubsched.bench.stock.group_run",
                kwargs=json.dumps({"group_id": gid}), interval=interval, expire_seconds=max(1, round(period)),
            ))
            rows.append(Group(id=gid, hub=hub, name=f"g{gid}", period=period))
            entity = f"bench/e{i // hubs}"
            key_rows.extend(GroupKey(group_id=gid, entity=entity, key=f"k{n:03d}", position=n) for n in range(keys))
        PeriodicTask.objects.bulk_create(tasks, batch_size=2000)
        Group.objects.bulk_create(rows, batch_size=2000)
        GroupKey.objects.bulk_create(key_rows, batch_size=5000)
        if spec.get("rules"):
            from alarms.models import AlarmRule

            condition = {"any": [{"binding": "k000", "op": ">", "value": 1e12}, {"binding": "k001", "op": "quality_bad"}]}
            AlarmRule.objects.bulk_create([AlarmRule(project=project, name=f"r{row.id}", group_id=row.id,
                                                     condition=condition, severity="low") for row in rows],
                                          batch_size=2000)
    PeriodicTasks.update_changed()


def sink_point(table: str) -> None:
    """Point the benchmark project's sink at ``table``."""
    import django

    django.setup()
    from scripts_engine.models import Sink

    Sink.objects.update(table=table)


if __name__ == "__main__":
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "hubsched.settings")
    command, *rest = sys.argv[1:]
    if command == "populate":
        populate(json.loads(rest[0]))
    elif command == "sink":
        sink_point(rest[0])
    else:
        raise SystemExit(f"unknown command {command!r}")
