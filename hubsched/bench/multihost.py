"""Multi-host benchmark: bench e2e's workload with services, hubs and workers on hosts of their own (network namespaces).

``python manage.py bench multihost`` builds, for one run (``hubsched.bench.netns.Hosts``: a private bridge, unique
names, everything removed afterwards):

- host ``services``: its own redis-server (broker, overlap locks, hub gates), its own PostgreSQL cluster
  (``servers.OwnPostgres``: Django's database and the sink), its own RabbitMQ node with the stream plugin (the
  durable log), the log's forwarder (``hubsched.stack.forwarder_argv``) and beat (``groups.scheduler:Scheduler``);
- host ``hubs``: the reference hubs (``manage.py hubsim --tree bench:E:K``), and with ``--hub-rtt-ms`` above 0 a
  delay proxy in front of each (``hubsched.bench.delay_proxy``: the hubs' rows point at the proxies);
- hosts ``worker0`` .. ``worker<N-1>``: one Celery worker of the project each, as shipped
  (``hubsched.stack.worker_argv``, named ``worker<i>@<run>``).

Every process runs with ``HUBSCHED_DEPLOYMENT=multi-host`` and is configured by environment variables only
(``DATABASE_URL``, ``CELERY_BROKER_URL``, ``HUBSCHED_SINK_URL``, ``HUBSCHED_LOG_URL``, ``SECRET_KEY``,
``HUBSCHED_SECRETS_KEY``; a var directory of its own per host), so a fallback to a file on one host would refuse to
start. This process reaches every host across the bridge: it migrates, fills the database (``e2e.populate``), and
counts the sink's rows.

The workload, the window, the counting and the fields are bench e2e's (``e2e.window``, ``e2e._count``,
``e2e.sink_table_create``): ``offered_values_per_s``, ``stored_values_per_s``, ``lost``, ``duplicated``,
``latency_p50_ms``, ``latency_p99_ms``, ``cpu_percent`` (per kind, ``worker<i>`` per host), plus

- ``worker_shares``: values stored in the window per worker host. Attribution comes from Celery's own task events
  (the workers send them: ``CELERY_WORKER_SEND_TASK_EVENTS``): a ``task-received`` event names the hub (its
  ``argsrepr``, ``hub <name> (#<id>): ...``), the tick (its ``eta``, the tick's time) and the worker; ``task-succeeded`` the
  worker that finished it (a message redelivered after a death counts for the one that ran it). Rows of a
  (hub, tick) no event names are ``unattributed``.
- with ``--kill-worker-after S``: ``kill``. ``worker0`` is killed with SIGKILL ``S`` seconds into the window,
  rounded up to a tick less a tenth of a period: beat has sent that tick (``HUBSCHED_DISPATCH_LEAD_S`` ahead) and
  the worker holds its messages unacknowledged, waiting for their eta. Its groups are those of the hubs with a tick
  within a period of the kill that it had received; ``takeover_s`` (p50, max over them) is the time from the kill
  to each one's first tick stored after it (from the stored ticks, so it includes what the next worker needs: the
  lock TTL, the tick grid). ``lost_before`` counts values missing from the ticks before the kill,
  ``lost_after_takeover`` those of ticks from 2 s after the kill to the window's end (target 0 both); the ticks in
  between are the dead worker's (its messages come back after the broker's visibility timeout, and count missed).

With ``--worker-cpu-percent P`` each worker host gets at most P % of one core (``Hosts.cpu_limit``, a cgroup): hosts of
a fixed, small capacity, so that a comparison of worker counts measures the workers and not the machine they share.

Needs root (``ip netns``), redis-server, PostgreSQL's initdb/pg_ctl and rabbitmq-server on this machine
(``missing()`` says what is not). All hosts share this machine's CPUs: see docs/benchmarks.md on what a
comparison of worker counts shows on a small machine.
"""

from __future__ import annotations

import json
import math
import os
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

from hubsched.bench import e2e
from hubsched.bench.common import ROOT, check, percentile

HELP = ("bench e2e's workload across hosts made with network namespaces: services (Redis, PostgreSQL, RabbitMQ "
        "Streams, beat, forwarder), a hubs host (optionally behind a delay proxy) and N worker hosts; "
        "adds worker_shares (needs root).")
KEYS = (*e2e.KEYS, "worker_shares")
RABBITMQ_SERVER = "/usr/lib/rabbitmq/bin/rabbitmq-server"  # the node itself (Debian's /usr/sbin one su's to rabbitmq)
HUB_PORT, HUB_BEHIND_PROXY_PORT = 9000, 19000  # hub i on 9000+i; behind a proxy the hub itself on 19000+i
TAKEOVER_SLACK_S = 2.0  # ticks this long after a kill belong to the survivor (lost_after_takeover)
# groups.scheduler.publish.BatchPublisher.send's argsrepr names the hub's id: "hub 3: ..." or "hub hub2 (#3): ..."
ARGSREPR_HUB = re.compile(r"^hub (?:(\d+)|.*? \(#(\d+)\)):")


def add_arguments(parser) -> None:
    pool, concurrency = e2e._default_worker()
    parser.add_argument("--groups", type=int, default=200, help="Interval groups (default 200).")
    parser.add_argument("--keys", type=int, default=100, help="Keys per group, on one entity each (default 100).")
    parser.add_argument("--hubs", type=int, default=10, help="Reference hubs the groups are spread over (default 10).")
    parser.add_argument("--period", type=float, default=1.0, help="Period of every group, seconds (default 1).")
    parser.add_argument("--seconds", type=float, default=30.0, help="Measured window (default 30).")
    parser.add_argument("--workers", type=int, default=2, help="Worker hosts, one Celery worker each (default 2).")
    parser.add_argument("--hub-rtt-ms", type=float, default=0.0,
                        help="Round trip added between the workers and the hubs by a delay proxy (default 0: none).")
    parser.add_argument("--pool", default=pool, choices=["threads", "prefork", "solo", "gevent"],
                        help=f"The workers' pool (default {pool}, as shipped).")
    parser.add_argument("--concurrency", type=int, default=concurrency,
                        help=f"The workers' concurrency (default {concurrency}, as shipped).")
    parser.add_argument("--hub-processes", type=int, default=1, help="Processes per reference hub (default 1).")
    parser.add_argument("--warmup", type=float, default=5.0, help="Seconds after the first stored row before the window.")
    parser.add_argument("--drain", type=float, default=5.0,
                        help="Seconds after the window in which rows of its ticks may still arrive (default 5).")
    parser.add_argument("--warmup-timeout", type=float, default=120.0, help="Longest wait for the first stored row.")
    parser.add_argument("--worker-cpu-percent", type=float, default=None, metavar="P",
                        help="Limit each worker host to P %% of one core (a cgroup): worker hosts of a fixed capacity, "
                             "so that the work is bound by the workers (default: no limit).")
    parser.add_argument("--kill-worker-after", type=float, default=None, metavar="S",
                        help="Kill worker0 with SIGKILL this many seconds into the window and report the takeover.")
    parser.add_argument("--worker-env", action="append", default=[], metavar="NAME=VALUE",
                        help="Extra environment for the workers (repeatable), e.g. HUBSCHED_HUB_MAX_IN_FLIGHT=128.")


def missing() -> str | None:
    """None when this machine can run the benchmark; else what is missing (a test's skip reason)."""
    from hubsched.bench.netns import permitted
    from hubsched.bench.servers import postgres_program

    problem = permitted()
    if problem:
        return problem
    for name, found in (("redis-server", shutil.which("redis-server")), ("initdb", postgres_program("initdb")),
                        ("pg_ctl", postgres_program("pg_ctl")),
                        ("rabbitmq-server", os.path.exists(RABBITMQ_SERVER))):
        if not found:
            return f"{name} is not installed"
    return None


def run(*, groups: int, keys: int, hubs: int, period: float, seconds: float, workers: int = 2, hub_rtt_ms: float = 0.0,
        pool: str | None = None, concurrency: int | None = None, hub_processes: int = 1, warmup: float = 5.0,
        drain: float = 5.0, warmup_timeout: float = 120.0, kill_worker_after: float | None = None,
        worker_cpu_percent: float | None = None, worker_env: list[str] | None = None, log: Callable[[str], None] = lambda _: None) -> dict:
    """Returns ``{"params": {...}, <e2e's fields>, "worker_shares": {host: values}, "cpu_percent": {...},
    "kill"?: {...}}`` (module docstring). Raises RuntimeError when a part does not start or no row reaches the sink
    (with the tail of its log), HostsError when namespaces cannot be made, ValueError for bad arguments."""
    if workers < 1 or hubs < 1 or groups < hubs:
        raise ValueError("need --workers >= 1 and --groups >= --hubs >= 1")
    if kill_worker_after is not None and (workers < 2 or not 0 < kill_worker_after < seconds - TAKEOVER_SLACK_S):
        raise ValueError("--kill-worker-after needs --workers >= 2 and 0 < S < --seconds - 2")
    default_pool, default_concurrency = e2e._default_worker()
    pool, concurrency = pool or default_pool, concurrency or default_concurrency
    params = {"groups": groups, "keys": keys, "hubs": hubs, "period": period, "seconds": seconds, "workers": workers,
              "hub_rtt_ms": hub_rtt_ms, "pool": pool, "concurrency": concurrency, "hub_processes": hub_processes,
              "cpus": os.cpu_count(), "worker_env": worker_env or [], "kill_worker_after": kill_worker_after,
              "worker_cpu_percent": worker_cpu_percent}
    with Cluster(workers=workers, log=log) as cluster:
        log(f"multihost: hosts {', '.join(cluster.hosts.names)} on {cluster.hosts.gateway}/24; work {cluster.work}")
        cluster.services_start()
        cluster.workload_setup(groups=groups, keys=keys, hubs=hubs, period=period, hub_processes=hub_processes,
                               hub_rtt_ms=hub_rtt_ms)
        cluster.processes_start(pool=pool, concurrency=concurrency, worker_env=worker_env or [])
        if worker_cpu_percent:  # once they are online: under the limit, their start-up alone would take minutes
            for worker in cluster.workers:
                cluster.hosts.cpu_limit(worker, worker_cpu_percent)
        cluster.first_row_wait(timeout=warmup_timeout)
        t0, t1 = e2e.window(warmup=warmup, seconds=seconds, period=period)
        time.sleep(max(0.0, t0 - time.time()))
        cpu0 = e2e.cpu_by_kind(cluster.kinds())
        kill_at = cpu_at_kill = None
        if kill_worker_after is not None:
            grid = max(period, 1.0)
            # a tenth of a period before a tick: beat has sent it, the worker holds its messages unacknowledged
            kill_at = math.ceil((t0 + kill_worker_after) / grid) * grid - 0.1 * period
            time.sleep(max(0.0, kill_at - time.time()))
            cpu_at_kill = e2e.cpu_by_kind(cluster.kinds())
            kill_at = cluster.worker_kill(0)
            log(f"multihost: killed worker0 (SIGKILL) at {kill_at:.3f}")
        time.sleep(max(0.0, t1 - time.time()))
        cpu1 = e2e.cpu_by_kind(cluster.kinds())
        if cpu_at_kill is not None:  # the dead worker's CPU time went with it: count it up to the kill
            cpu1["worker0"] = cpu_at_kill["worker0"]
            cpu1["worker"] = cpu0["worker"] + sum(cpu1[w] - cpu0[w] for w in cluster.workers)
        time.sleep(drain)
        cutoff = time.time()
        result = {"params": params, **cluster.analyse(t0=t0, t1=t1, cutoff=cutoff, seconds=seconds, period=period,
                                                       groups=groups, keys=keys)}
        result["cpu_percent"] = {k: round(100.0 * (cpu1[k] - cpu0[k]) / seconds, 1) for k in cpu0}
        if kill_at is not None:
            result["kill"] = cluster.takeover_analyse(kill_at=kill_at, t0=t0, t1=t1, cutoff=cutoff, period=period,
                                                      groups=groups, keys=keys)
    return result


def report(result: dict) -> str:
    p = result["params"]
    lines = [f"{p['groups']} groups x {p['keys']} keys on {p['hubs']} hubs, period {p['period']} s, window "
             f"{p['seconds']} s, {p['workers']} worker hosts ({p['pool']} x {p['concurrency']}), hub RTT "
             f"{p['hub_rtt_ms']} ms, {p['cpus']} CPUs"]
    lines.extend(f"  {k:22} {result[k]}" for k in KEYS)
    lines.append("  cpu %: " + ", ".join(f"{k} {v}" for k, v in result["cpu_percent"].items()))
    if "kill" in result:
        lines.append(f"  kill: {json.dumps(result['kill'])}")
    return "\n".join(lines) + "\n"


class Cluster:
    """The hosts of one run and what runs on them (module docstring); a context manager whose exit stops every
    process, removes the namespaces (``Hosts.close``), the PostgreSQL cluster and the work directory.

    Call in order: ``services_start()``, ``workload_setup(...)``, ``processes_start(...)``, ``first_row_wait()``;
    then ``worker_kill(i)``, ``analyse(...)``, ``takeover_analyse(...)``. ``env`` is every process's environment
    (the URLs point at the services host's address); ``sink_url`` the SQLAlchemy URL of the sink (also Django's
    database)."""

    def __init__(self, *, workers: int, log: Callable[[str], None] = lambda _: None) -> None:
        from hubsched.bench.netns import Hosts

        self.log = log
        self.workers = [f"worker{i}" for i in range(workers)]
        self.hosts = Hosts(["services", "hubs", *self.workers])
        self.work = Path(tempfile.mkdtemp(prefix="hubsched-multihost-"))
        self.services = self.hosts.address("services")
        self.procs: dict[str, list[subprocess.Popen]] = defaultdict(list)
        self.postgres = None
        self.events: Events | None = None
        self.engine = self.sink_table = None
        self.table = f"multihost_{os.getpid()}"
        self.hub_names: dict[int, str] = {}
        self.worker_names = {f"{w}@{self.hosts.tag}": w for w in self.workers}
        from cryptography.fernet import Fernet

        self.sink_url = f"postgresql+psycopg2://postgres@{self.services}:5432/postgres"
        self.broker = f"redis://{self.services}:6379/0"
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("HUBSCHED_", "CELERY_"))},
            "HUBSCHED_DEPLOYMENT": "multi-host",
            "DATABASE_URL": f"postgres://postgres@{self.services}:5432/postgres",
            "CELERY_BROKER_URL": self.broker,
            "HUBSCHED_SINK_URL": self.sink_url,
            "HUBSCHED_LOG_URL": f"rabbitmq-stream://guest:guest@{self.services}:5552/",
            "SECRET_KEY": secrets.token_urlsafe(50),
            "HUBSCHED_SECRETS_KEY": Fernet.generate_key().decode(),
            "LOG_LEVEL": "WARNING",
            "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
        }
        self.env.pop("DJANGO_SETTINGS_MODULE", None)  # manage.py and celery -A hubsched set it

    def host_env(self, host: str) -> dict[str, str]:
        """``env`` with a var directory of ``host``'s own (nothing on the file system is shared between hosts)."""
        var = self.work / host / "var"
        var.mkdir(parents=True, exist_ok=True)
        return {**self.env, "HUBSCHED_VAR_DIR": str(var)}

    def spawn(self, host: str, kind: str, argv: list[str], env: dict | None = None) -> subprocess.Popen:
        """Start ``argv`` on ``host``; its log is ``<work>/multihost-<kind><i>.log`` (``e2e.first_row_wait``'s names)."""
        i = len(self.procs[kind])
        proc = self.hosts.spawn(host, argv, env=env or self.host_env(host), cwd=ROOT,
                                log_path=self.work / f"multihost-{kind}{i}.log")
        self.procs[kind].append(proc)
        return proc

    # --- the services host ---------------------------------------------------------------------------------------

    def services_start(self) -> None:
        """Redis, PostgreSQL and RabbitMQ (streams) on the services host's address; returns once each listens."""
        from hubsched.bench.servers import OwnPostgres

        redis = self.spawn("services", "redis", [shutil.which("redis-server") or "redis-server", "--bind", self.services,
                                                 "--port", "6379", "--save", "", "--appendonly", "no",
                                                 "--protected-mode", "no", "--dir", str(self.work)])
        self.postgres = OwnPostgres(port=5432, host=self.services, trust=f"{self.hosts.gateway}/24",
                                    wrap=self.hosts.exec_argv("services", []))
        self.postgres.start()
        rabbit = self.work / "rabbitmq"
        rabbit.mkdir()
        (rabbit / "rabbitmq.conf").write_text(
            "listeners.tcp.default = 5672\n"
            "stream.listeners.tcp.1 = 5552\n"
            # clients on other hosts connect to the address the node advertises (by default its host name)
            f"stream.advertised_host = {self.services}\n"
            "loopback_users = none\n")  # guest from other hosts: a throwaway node on a private network
        (rabbit / "enabled_plugins").write_text("[rabbitmq_stream].\n")
        (rabbit / "rabbitmq-env.conf").write_text("")  # not /etc/rabbitmq's: that one is the machine's own node
        self.spawn("services", "rabbitmq", [RABBITMQ_SERVER], env={
            **os.environ, "HOME": str(rabbit), "RABBITMQ_CONF_ENV_FILE": str(rabbit / "rabbitmq-env.conf"),
            "RABBITMQ_CONFIG_FILE": str(rabbit / "rabbitmq.conf"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(rabbit / "enabled_plugins"),
            "RABBITMQ_MNESIA_BASE": str(rabbit / "mnesia"), "RABBITMQ_LOG_BASE": str(rabbit / "log"),
            "RABBITMQ_NODENAME": "rabbit@localhost", "RABBITMQ_PID_FILE": str(rabbit / "pid")})
        self.hosts.wait_for_port("services", 6379, proc=redis)
        self.hosts.wait_for_port("services", 5552, proc=self.procs["rabbitmq"][0], timeout=120)

    # --- database, hubs ---------------------------------------------------------------------------------------

    def workload_setup(self, *, groups: int, keys: int, hubs: int, period: float, hub_processes: int = 1,
                       hub_rtt_ms: float = 0.0) -> None:
        """Migrate, fill the database as bench e2e does (``e2e.populate``, hubs at the hubs host's address), make the
        sink table, and start the reference hubs (behind delay proxies when ``hub_rtt_ms`` > 0)."""
        import sqlalchemy as sa

        hub_host = self.hosts.address("hubs")
        ports = [HUB_PORT + i for i in range(hubs)]
        env = self.host_env("setup")
        check([sys.executable, str(ROOT / "manage.py"), "migrate", "--noinput", "-v", "0"], env)
        spec = {"groups": groups, "keys": keys, "hubs": hubs, "period": period, "ports": ports, "sink": self.sink_url,
                "sink_id": e2e.sink_id(), "hub_host": hub_host}
        check([sys.executable, "-m", "hubsched.bench.e2e", "populate", json.dumps(spec)], env)
        self.engine, self.sink_table = e2e.sink_table_create(self.sink_url, self.table)
        check([sys.executable, "-m", "hubsched.bench.e2e", "sink", self.table], env)
        with self.engine.connect() as conn:
            self.hub_names = dict(conn.execute(sa.text("select id, name from hubs_hub")).all())
        per_hub = math.ceil(groups / hubs)
        behind = hub_rtt_ms > 0
        for i, port in enumerate(ports):
            self.spawn("hubs", "hubs", [
                sys.executable, str(ROOT / "manage.py"), "hubsim", "--host", hub_host,
                "--port", str(HUB_BEHIND_PROXY_PORT + i if behind else port), "--name", f"hub{i}",
                "--tree", f"bench:{per_hub}:{keys}", "--processes", str(hub_processes)],
                env={**self.host_env("hubs"), "HUBSIM_KEY": e2e.API_KEY})
        if behind:
            pairs = ",".join(f"{hub_host}:{port}={hub_host}:{HUB_BEHIND_PROXY_PORT + i}" for i, port in enumerate(ports))
            self.spawn("hubs", "proxy", [sys.executable, "-m", "hubsched.bench.multihost", "proxies", pairs,
                                         str(hub_rtt_ms)])
        for i, port in enumerate(ports):
            self.hosts.wait_for_port("hubs", port, proc=self.procs["hubs"][i])

    # --- beat, forwarder, workers ----------------------------------------------------------------------------

    def processes_start(self, *, pool: str, concurrency: int, worker_env: list[str]) -> None:
        """The task-event listener, the forwarder and beat on the services host, a worker per worker host; returns
        once every worker is online (its ``worker-online`` event)."""
        from hubsched.stack import forwarder_argv, worker_argv

        self.events = Events(self.broker)
        self.events.start()
        self.spawn("services", "forwarder", forwarder_argv())
        extra = dict(item.split("=", 1) for item in worker_env)
        for worker in self.workers:
            argv = worker_argv()
            argv[argv.index("--pool") + 1], argv[argv.index("--concurrency") + 1] = pool, str(concurrency)
            argv[argv.index("-l") + 1] = "WARNING"
            self.spawn(worker, "worker", argv + ["-n", f"{worker}@{self.hosts.tag}"],
                       env={**self.host_env(worker), **extra})
        self.spawn("services", "beat", [sys.executable, "-m", "celery", "-A", "hubsched", "beat", "-S",
                                        "groups.scheduler:Scheduler", "-l", "WARNING", "-s",
                                        str(self.work / "celerybeat-schedule"), "--pidfile", ""])
        deadline = time.time() + 60
        while not set(self.worker_names) <= self.events.online():
            self._exits_check()
            if time.time() > deadline:
                raise RuntimeError(f"workers not online within 60 s: {sorted(set(self.worker_names) - self.events.online())}")
            time.sleep(0.1)

    def _exits_check(self) -> None:
        for kind in ("worker", "beat", "forwarder", "hubs", "proxy", "redis", "rabbitmq"):
            for i, p in enumerate(self.procs.get(kind, [])):
                if p.poll() is not None and not getattr(p, "killed_on_purpose", False):
                    path = self.work / f"multihost-{kind}{i}.log"
                    raise RuntimeError(f"{kind}{i} exited with {p.returncode}:\n"
                                       + (path.read_text()[-3000:] if path.exists() else ""))

    def first_row_wait(self, *, timeout: float) -> None:
        """Wait for the sink's first row (``e2e.first_row_wait``: a process that exits fails it with its log)."""
        e2e.first_row_wait(self.engine, self.sink_table, {k: self.procs[k] for k in ("worker", "beat", "forwarder")},
                           work=self.work, timeout=timeout, what="multihost")

    def kinds(self) -> dict[str, list[int]]:
        """Pids per kind for ``e2e.cpu_by_kind``: hubs, proxy, beat, forwarder, worker (all) and each worker host."""
        kinds = {kind: [p.pid for p in self.procs[kind]] for kind in ("hubs", "proxy", "beat", "forwarder", "worker")}
        kinds.update({w: [self.procs["worker"][i].pid] for i, w in enumerate(self.workers)})
        return kinds

    def worker_kill(self, i: int) -> float:
        """SIGKILL the worker of host ``worker<i>`` (its process group); returns the epoch time of the kill."""
        import signal

        proc = self.procs["worker"][i]
        proc.killed_on_purpose = True
        at = time.time()
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
        return at

    # --- analysis ----------------------------------------------------------------------------------------------

    def ticks(self, *, since: float, until: float, cutoff: float) -> list[tuple[str, int, float, int, int]]:
        """``(hub, group_id, tick epoch s, rows, distinct values)`` per stored execution with its tick in
        [since, until), rows committed before ``cutoff``."""
        import sqlalchemy as sa

        c = self.sink_table.c
        start, end = (datetime.fromtimestamp(t, timezone.utc) for t in (since, until))
        inner = (sa.select(c.hub, c.group_id, c.tick, sa.func.count().label("copies"))
                 .where(c.tick >= start, c.tick < end, c.committed_at < cutoff)
                 .group_by(c.hub, c.group_id, c.tick, c.entity, c.key).subquery())
        outer = sa.select(inner.c.hub, inner.c.group_id, inner.c.tick, sa.func.sum(inner.c.copies),
                          sa.func.count()).group_by(inner.c.hub, inner.c.group_id, inner.c.tick)
        with self.engine.connect() as conn:
            return [(hub, int(gid), _epoch(tick), int(rows), int(n)) for hub, gid, tick, rows, n in conn.execute(outer)]

    def analyse(self, *, t0: float, t1: float, cutoff: float, seconds: float, period: float, groups: int,
                keys: int) -> dict:
        """bench e2e's fields over the window (``e2e._count``) and ``worker_shares``."""
        stats = e2e._count(self.engine, self.sink_table, t0, t1, cutoff)
        expected = round(groups * keys * seconds / period)
        runner = self.events.runners(self.hub_names)
        shares = Counter({w: 0 for w in self.workers})
        for hub, _, tick, _, n in self.ticks(since=t0, until=t1, cutoff=cutoff):
            shares[self.worker_names.get(runner.get((hub, round(tick * 1000))), "unattributed")] += n
        return {
            "offered_values_per_s": round(groups * keys / period, 1),
            "stored_values_per_s": round(stats["distinct"] / seconds, 1),
            "lost": max(0, expected - stats["distinct"]),
            "duplicated": stats["rows"] - stats["distinct"],
            "latency_p50_ms": percentile(stats["latencies"], 0.50),
            "latency_p99_ms": percentile(stats["latencies"], 0.99),
            "worker_shares": {k: v for k, v in shares.items() if v or k != "unattributed"},
            "expected_values": expected,
            "executions": stats["executions"],
        }

    def takeover_analyse(self, *, kill_at: float, t0: float, t1: float, cutoff: float, period: float,
                         groups: int, keys: int) -> dict:
        """The killed worker0's groups: those of each hub with a tick within a period of the kill that worker0 had
        received (done, or waiting unacknowledged for its eta). Per group, the kill to its first tick stored after
        the kill (None: none stored)."""
        dead = f"worker0@{self.hosts.tag}"
        received = self.events.receivers(self.hub_names)
        rows = self.ticks(since=t0, until=t1, cutoff=cutoff)
        held_hubs = {hub for (hub, tick_ms), hosts in received.items()
                     if dead in hosts and kill_at - period <= tick_ms / 1000 < kill_at + period}
        groups_of = defaultdict(set)
        first_after: dict[int, float] = {}
        for hub, gid, tick, _, _ in rows:
            groups_of[hub].add(gid)
            if tick > kill_at and (gid not in first_after or tick < first_after[gid]):
                first_after[gid] = tick
        held = sorted(g for hub in held_hubs for g in groups_of[hub])
        takeover = [round(first_after[g] - kill_at, 3) if g in first_after else None for g in held]
        known = sorted(t for t in takeover if t is not None)
        stored = {(gid, round(tick * 1000)): n for _, gid, tick, _, n in rows}

        def lost(since: float, until: float) -> int:
            return sum(max(0, keys - stored.get((gid, round(t * 1000)), 0))
                       for gid in range(1, groups + 1) for t in _grid(since, until, period))

        return {
            "worker": "worker0", "at": round(kill_at, 3), "groups": len(held),
            "takeover_s": {"p50": known[len(known) // 2] if known else None,
                           "max": None if None in takeover or not known else known[-1]},
            "groups_not_taken_over": takeover.count(None),
            "lost_before": lost(t0, kill_at),
            "lost_after_takeover": lost(kill_at + TAKEOVER_SLACK_S, t1),
        }

    # --- clean-up --------------------------------------------------------------------------------------------

    def close(self) -> None:
        if self.events is not None:
            self.events.stop()
        if self.engine is not None:  # the table goes with the cluster
            self.engine.dispose()
        self.hosts.close()  # SIGKILL: nothing of this run is kept, so nothing needs to stop cleanly
        if self.postgres is not None:
            self.postgres.close()
        shutil.rmtree(self.work, ignore_errors=True)

    def __enter__(self) -> Cluster:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _epoch(tick) -> float:
    if isinstance(tick, str):
        tick = datetime.fromisoformat(tick)
    if tick.tzinfo is None:
        tick = tick.replace(tzinfo=timezone.utc)
    return tick.timestamp()


def _grid(since: float, until: float, period: float) -> list[float]:
    """Tick times (multiples of ``period`` s) in [since, until)."""
    first = math.ceil(since / period - 1e-9)
    return [n * period for n in range(first, math.ceil(until / period - 1e-9))]


class Events:
    """Celery's task events on the broker, in a thread: who received and who ran each hub's tick.

    ``online()`` the worker hostnames that said ``worker-online``; ``runners(hub_names)`` ``{(hub name, tick ms):
    hostname}`` of the worker that finished it (else the last that received it); ``receivers(hub_names)`` ``{(hub
    name, tick ms): {hostnames}}``."""

    def __init__(self, broker: str) -> None:
        self.broker = broker
        self._lock = threading.Lock()
        self._online: set[str] = set()
        self._received: dict[str, tuple[int, int, list[str]]] = {}  # uuid -> (hub id, tick ms, hostnames)
        self._succeeded: dict[str, str] = {}  # uuid -> hostname
        self._receiver = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()

    def start(self) -> None:
        """Start listening; returns once subscribed (events sent before are not seen)."""
        self._thread = threading.Thread(target=self._run, name="multihost-events", daemon=True)
        self._thread.start()
        if not self._ready.wait(30):
            raise RuntimeError("could not listen to the workers' task events")

    def _run(self) -> None:
        from celery import Celery

        app = Celery("multihost-events", broker=self.broker, set_as_current=False)
        with app.connection_for_read() as conn:
            self._receiver = app.events.Receiver(conn, handlers={"*": self._on_event})
            # kombu's ConsumerMixin calls this once the event queue is bound
            self._receiver.on_consume_ready = lambda *_, **__: self._ready.set()
            self._receiver.capture(limit=None, timeout=None, wakeup=False)

    def _on_event(self, event: dict) -> None:
        kind, host = event.get("type"), event.get("hostname", "")
        with self._lock:
            if kind == "worker-online":
                self._online.add(host)
            elif kind == "task-received":
                match = ARGSREPR_HUB.match(str(event.get("args") or ""))
                if match and event.get("eta"):
                    tick_ms = round(datetime.fromisoformat(event["eta"]).timestamp() * 1000)
                    hub_id = int(match.group(1) or match.group(2))
                    entry = self._received.setdefault(event["uuid"], (hub_id, tick_ms, []))
                    entry[2].append(host)
            elif kind == "task-succeeded":
                self._succeeded[event["uuid"]] = host

    def online(self) -> set[str]:
        with self._lock:
            return set(self._online)

    def runners(self, hub_names: dict[int, str]) -> dict[tuple[str, int], str]:
        with self._lock:
            return {(hub_names.get(hub, str(hub)), tick): self._succeeded.get(uuid, hosts[-1])
                    for uuid, (hub, tick, hosts) in self._received.items()}

    def receivers(self, hub_names: dict[int, str]) -> dict[tuple[str, int], set[str]]:
        out: dict[tuple[str, int], set[str]] = defaultdict(set)
        with self._lock:
            for hub, tick, hosts in self._received.values():
                out[(hub_names.get(hub, str(hub)), tick)].update(hosts)
        return out

    def stop(self) -> None:
        if self._receiver is not None:
            self._receiver.should_stop = True
        if self._thread is not None:
            self._thread.join(5)


def proxies(pairs: str, rtt_ms: str) -> None:
    """Run a ``DelayProxy`` for each ``LISTEN_HOST:PORT=TARGET_HOST:PORT`` of the comma-separated ``pairs`` until
    SIGTERM (one process for all hubs of the hubs host)."""
    import signal

    from hubsched.bench.delay_proxy import DelayProxy

    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    running = []
    try:
        for pair in pairs.split(","):
            listen, target = (part.rsplit(":", 1) for part in pair.split("="))
            running.append(DelayProxy(listen=(listen[0], int(listen[1])), target=(target[0], int(target[1])),
                                      rtt_ms=float(rtt_ms)).start())
        done.wait()
    finally:
        for proxy in running:
            proxy.stop()


if __name__ == "__main__":
    command, *rest = sys.argv[1:]
    if command == "proxies":
        proxies(*rest)
    else:
        raise SystemExit(f"unknown command {command!r}")
