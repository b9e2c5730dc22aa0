"""Process reports: the numbers that live only in a worker's or the beat's memory, written to the database
every ``HUBSCHED_METRICS_REPORT_S`` seconds (default 15) so that ``/metrics`` can read them at scrape time.

A *source* is a callable returning a JSON-able snapshot (``report_source(name, source)``): the hub clients of
a worker process (``hubs_snapshot`` below) or the beat's dispatch lag (groups/scheduler/beat.py). A thread of
the process (one per process, made again after fork) calls every source and upserts one ``ProcessReport`` row
(``host``, ``pid``) with ``{name: snapshot}``; it deletes the rows nobody reported for
``HUBSCHED_METRICS_REPORT_RETAIN_S`` (default 3600 s). The hot path only adds to in-memory counters.

Celery's signals start it: ``worker_init`` (the worker's main process, where a threads or solo pool runs
tasks) and ``worker_process_init`` (each prefork child); ``worker_shutdown`` / ``worker_process_shutdown``
write a last report. ``HUBSCHED_METRICS_REPORT_S = 0`` turns reporting off. A database that refuses the write
is logged once per outage (masked) and tried again at the next interval: the counters are cumulative, so a
missed report loses nothing but freshness.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import weakref
from collections.abc import Callable
from datetime import timedelta

from django.conf import settings

from hubsched.per_process import PerProcess
from hubsched.secrets import text_mask

log = logging.getLogger(__name__)

_SOURCES: dict[str, Callable[[], dict]] = {}
_SOURCES_LOCK = threading.Lock()


def report_interval_s() -> float:
    return max(0.0, float(getattr(settings, "HUBSCHED_METRICS_REPORT_S", 15.0)))


def report_retain_s() -> float:
    return max(60.0, float(getattr(settings, "HUBSCHED_METRICS_REPORT_RETAIN_S", 3600.0)))


class Reporter:
    """Writes this process's report every interval from its own daemon thread, until ``stop()``."""

    def __init__(self) -> None:
        from django.utils import timezone

        self.host, self.pid = socket.gethostname(), os.getpid()
        self.program = "worker"
        self.started_at = timezone.now()
        self._stop = threading.Event()
        self._failing = False
        self._thread: threading.Thread | None = None

    def start(self, program: str) -> None:
        self.program = program
        if self._thread is None and report_interval_s() > 0:
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, daemon=True, name="hubsched-metrics-report")
            self._thread.start()

    def stop(self, *, final: bool = True) -> None:
        """End the thread, and (``final``) write a last report."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5.0)
            self._thread = None
            if final:
                self.report_once()

    def _run(self) -> None:
        self._stop.wait(min(2.0, report_interval_s()))  # a first report soon after start
        while not self._stop.is_set():
            self.report_once()
            self._stop.wait(report_interval_s())

    def report_once(self) -> bool:
        """Call every source and upsert this process's row; returns whether the database took it."""
        from django.db import connection
        from django.utils import timezone

        from hubsched.metrics.models import ProcessReport

        with _SOURCES_LOCK:
            sources = list(_SOURCES.items())
        data = {}
        for name, source in sources:
            try:
                data[name] = source()
            except Exception:  # noqa: BLE001 - one broken source must not stop the others' reports
                log.exception("metrics source %s failed", name)
        now = timezone.now()
        try:
            ProcessReport.objects.update_or_create(
                host=self.host, pid=self.pid,
                defaults={"program": self.program, "data": data, "started_at": self.started_at, "reported_at": now})
            ProcessReport.objects.filter(reported_at__lt=now - timedelta(seconds=report_retain_s())).delete()
        except Exception as exc:  # noqa: BLE001 - the database down: report again at the next interval
            if not self._failing:
                log.warning("could not write the metrics report of %s:%s: %s", self.host, self.pid,
                            text_mask(f"{type(exc).__name__}: {exc}"))
            self._failing = True
            return False
        finally:
            connection.close()  # this thread's own connection: none held between reports
        if self._failing:
            log.info("metrics report of %s:%s written again", self.host, self.pid)
        self._failing = False
        return True


_REPORTER: PerProcess[Reporter] = PerProcess(Reporter)


def report_source(name: str, source: Callable[[], dict]) -> None:
    """Include ``source()`` in this process's report as ``data[name]`` (a later call with the same name
    replaces it)."""
    with _SOURCES_LOCK:
        _SOURCES[name] = source


def reporting_start(program: str) -> Reporter:
    """Start this process's reporter (``program``: ``worker`` or ``beat``); no thread when the interval is 0."""
    reporter = _REPORTER.get()
    reporter.start(program)
    return reporter


def reporting_stop(*, final: bool = True) -> None:
    """Stop this process's reporter thread, and (``final``) write its last report (at worker or beat shutdown)."""
    _REPORTER.get().stop(final=final)


# --- the hub clients of a worker process -----------------------------------------------------------------------

_HUB_CLIENTS: "weakref.WeakValueDictionary[int, object]" = weakref.WeakValueDictionary()


def hub_client_watch(hub_id: int, client) -> None:
    """Report ``client`` (a ``hubs.client.HubClient``) as hub ``hub_id``'s (groups.execution.client_for)."""
    if _HUB_CLIENTS.get(hub_id) is not client:
        _HUB_CLIENTS[hub_id] = client


def hubs_snapshot() -> dict:
    """``{hub id: HubClient.stats()}`` of the clients this process uses (the ``hubs`` source)."""
    return {str(hub_id): client.stats() for hub_id, client in list(_HUB_CLIENTS.items())}


def _after_fork_in_child() -> None:
    _HUB_CLIENTS.clear()  # the parent's clients are not this process's (hubs.client forgets their sockets)


os.register_at_fork(after_in_child=_after_fork_in_child)


def worker_signals_connect() -> None:
    """Report the hub clients of every Celery worker process (hubsched/celery.py connects this)."""
    from celery import signals

    def start(**_):
        report_source("hubs", hubs_snapshot)
        reporting_start("worker")

    def stop(**_):
        reporting_stop()

    signals.worker_init.connect(start, weak=False, dispatch_uid="hubsched.metrics.worker_init")
    signals.worker_process_init.connect(start, weak=False, dispatch_uid="hubsched.metrics.worker_process_init")
    signals.worker_shutdown.connect(stop, weak=False, dispatch_uid="hubsched.metrics.worker_shutdown")
    signals.worker_process_shutdown.connect(stop, weak=False, dispatch_uid="hubsched.metrics.worker_process_shutdown")
