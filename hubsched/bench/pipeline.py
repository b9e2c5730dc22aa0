"""Pipelining benchmark (issue 19): what a batch of groups' reads costs across a round trip to the hub.

A reference hub runs as a real subprocess (``python -m hubs.hubsim --tree bench:G:K``); a ``DelayProxy`` in front
of it adds ``--rtt-ms`` of round trip (each of a comma-separated list). For each round trip and each in-flight
limit (``--hub-max-in-flight``, the Hub row's ``max_in_flight``, comma-separated), a worker's client is made
exactly as a batch makes it (``groups.execution.client_for`` of a Hub with that limit, so the
``HUBSCHED_HUB_MAX_IN_FLIGHT`` ceiling applies as in production), and a batch's reads are sent as
``_send_batch_reads`` sends them: one ``getEntityParams`` per group (``--groups`` groups of ``--keys`` keys,
one entity each, as in ``bench e2e``) in one ``call_many_async``, then every answer awaited. After
``--warmup`` batches, ``--batches`` batches are timed, one after the other.

Reported per (rtt, limit): the client's in-flight limit and the most calls it had in flight, the batch time (p50, p90, mean; ms), and the batch
time in round trips (p50 / rtt); the ideal at rtt > 0 is about 1 round trip plus the 0 ms cost of the batch.
No script runs and nothing is stored: this measures the reads alone (docs/benchmarks.md, "Pipelining").
"""

from __future__ import annotations

import math
import os
import statistics
import subprocess
import sys
import time

from .common import ROOT
from .delay_proxy import DelayProxy

HELP = "Batch read time through a delay proxy at several round trips and in-flight limits (issue 19)."
API_KEY = "bench-pipeline-key"


def add_arguments(parser) -> None:
    parser.add_argument("--rtt-ms", default="0,10,50", help="round trips added, ms, comma-separated (default 0,10,50)")
    parser.add_argument("--groups", type=int, default=100, help="groups in the batch: one read each (default 100)")
    parser.add_argument("--keys", type=int, default=100, help="keys per group (default 100)")
    parser.add_argument("--hub-max-in-flight", default="",
                        help="the Hub rows' max_in_flight, comma-separated (default: the model field's default)")
    parser.add_argument("--batches", type=int, default=20, help="timed batches per case (default 20)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed batches first (default 3)")


def run(*, rtt_ms: str = "0,10,50", groups: int = 100, keys: int = 100, hub_max_in_flight: str = "",
        batches: int = 20, warmup: int = 3, log=lambda _: None) -> dict:
    """Run every (rtt, limit) case; returns ``{"groups", "keys", "batches", "setting_max_in_flight", "cases":
    [{"rtt_ms", "hub_max_in_flight", "client_max_in_flight", "in_flight_peak", "batch_p50_ms", "batch_p90_ms", "batch_mean_ms",
    "round_trips_p50", "errors"}]}``. Raises RuntimeError when the hub does not start."""
    from django.conf import settings

    from hubs.models import Hub

    rtts = [float(r) for r in str(rtt_ms).split(",") if r.strip()]
    limits = [int(n) for n in str(hub_max_in_flight).split(",") if n.strip()] or [Hub._meta.get_field("max_in_flight").default]
    hub_proc, port = _hub_start(groups=groups, keys=keys)
    cases = []
    try:
        for rtt in rtts:
            with DelayProxy(listen=("127.0.0.1", 0), target=("127.0.0.1", port), rtt_ms=rtt) as proxy:
                for limit in limits:
                    case = _case(proxy, rtt=rtt, limit=limit, groups=groups, keys=keys, batches=batches, warmup=warmup)
                    log(f"pipeline: rtt {rtt:g} ms, hub max_in_flight {limit}: {case}")
                    cases.append(case)
    finally:
        _stop(hub_proc)
    return {"groups": groups, "keys": keys, "batches": batches,
            "setting_max_in_flight": settings.HUBSCHED_HUB_MAX_IN_FLIGHT, "cases": cases}


def _case(proxy: DelayProxy, *, rtt: float, limit: int, groups: int, keys: int, batches: int, warmup: int) -> dict:
    from groups.execution import client_for
    from hubs.client import hub_clients_close_all
    from hubs.models import Hub

    # a fresh path per case, so the pooled client is made anew with this limit
    hub = Hub(name="bench", url=f"ws://127.0.0.1:{proxy.port}/case-{rtt:g}-{limit}", api_key=API_KEY, timeout=30.0,
              max_in_flight=limit)
    client = client_for(hub)
    calls = [("getEntityParams", {"entity": f"bench/e{i}", "keys": [f"k{n:03d}" for n in range(keys)]})
             for i in range(groups)]
    times, errors = [], 0
    try:
        client.call("ping")  # connected: the handshake is not part of a batch
        for n in range(warmup + batches):
            started = time.perf_counter()
            futures = client.call_many_async(calls, timeout=hub.timeout)
            for future in futures:
                try:
                    future.result()
                except Exception:  # noqa: BLE001 - counted, not raised: the table says so
                    errors += 1
            if n >= warmup:
                times.append((time.perf_counter() - started) * 1000)
        in_flight, peak = client.in_flight_limit, client.in_flight_peak
    finally:
        hub_clients_close_all()
    times.sort()
    p50 = statistics.median(times)
    return {"rtt_ms": rtt, "hub_max_in_flight": limit, "client_max_in_flight": in_flight, "in_flight_peak": peak,
            "batch_p50_ms": round(p50, 1), "batch_p90_ms": round(times[min(len(times) - 1, math.ceil(0.9 * len(times)) - 1)], 1),
            "batch_mean_ms": round(statistics.fmean(times), 1),
            "round_trips_p50": round(p50 / rtt, 2) if rtt else None, "errors": errors}


def _hub_start(*, groups: int, keys: int) -> tuple[subprocess.Popen, int]:
    from .e2e import _free_ports, _wait_for_ports

    port = _free_ports(1)[0]
    proc = subprocess.Popen([sys.executable, "-m", "hubs.hubsim", "--port", str(port), "--name", "pipeline",
                             "--tree", f"bench:{groups}:{keys}"],
                            env={**os.environ, "HUBSIM_KEY": API_KEY}, cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        _wait_for_ports([port], [proc])
    except BaseException:
        _stop(proc)
        raise
    return proc, port


def _stop(proc: subprocess.Popen) -> None:
    from .e2e import stop

    stop(proc, group=True)


def report(result: dict) -> str:
    lines = [f"pipeline: a batch of {result['groups']} reads of {result['keys']} keys, {result['batches']} batches per case "
             f"(HUBSCHED_HUB_MAX_IN_FLIGHT={result['setting_max_in_flight']})",
             f"{'rtt ms':>7} {'hub max':>8} {'client':>7} {'peak':>5} {'p50 ms':>8} {'p90 ms':>8} {'mean ms':>8} {'RTTs p50':>9} {'errors':>7}"]
    for c in result["cases"]:
        rt = "-" if c["round_trips_p50"] is None else f"{c['round_trips_p50']:.2f}"
        lines.append(f"{c['rtt_ms']:>7g} {c['hub_max_in_flight']:>8} {c['client_max_in_flight']:>7} {c['in_flight_peak']:>5} {c['batch_p50_ms']:>8.1f} "
                     f"{c['batch_p90_ms']:>8.1f} {c['batch_mean_ms']:>8.1f} {rt:>9} {c['errors']:>7}")
    return "\n".join(lines)
