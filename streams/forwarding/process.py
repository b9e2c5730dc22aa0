"""The forwarder process (``manage.py forward``): every consumer the configuration asks for, each in a process of its own.

Which ones: the run recorder, HUBSCHED_SINK_WRITERS forwarders (lanes) for each enabled sink, and as
many for the default sink while a project has no enabled sink of its own. The supervisor (``ForwarderProcess``) reads the configuration
again every RECONCILE_S: a sink added, enabled, changed (URL, layout, table) or removed starts, restarts
or stops its consumer; a consumer process that died is started again.

A process per consumer, not a thread: a consumer's own work (reading and decoding records, encoding a
batch for its database) is Python, and in one process their threads took turns on one interpreter lock
while the databases waited (measured at 100,000 values/s: docs/benchmarks.md). Each child runs
``manage.py forward --consumer NAME`` and dies with its supervisor (Linux ``PR_SET_PDEATHSIG``), so a
supervisor killed with SIGKILL leaves no consumer behind. Several supervisors may run (on several
hosts): each consumer is led by one process at a time (the lease), the others stand by.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

from django.conf import settings
from django.db import close_old_connections

from scripts_engine.sinks import DEFAULT_TABLE, SinkTarget

from .consumer import Consumer, ConsumerLoop
from .runs import RunRecorder
from .sinks import SinkForwarder, sink_consumer_name

logger = logging.getLogger(__name__)

RECONCILE_S = 5.0
STOP_GRACE_S = 15.0
_PR_SET_PDEATHSIG = 1


def consumers_wanted() -> dict[str, tuple[tuple, Consumer]]:
    """``{name: (identity, consumer)}`` for the configuration now; a changed identity restarts a consumer."""
    from hubs.models import Project
    from scripts_engine.models import Sink

    lanes = settings.HUBSCHED_SINK_WRITERS
    wanted: dict[str, tuple[tuple, Consumer]] = {"runs": (("runs",), RunRecorder())}
    sinks = list(Sink.objects.enabled().order_by("pk"))
    for sink in sinks:
        target = SinkTarget(name=sink.name, url=sink.url, table=sink.table or DEFAULT_TABLE, layout=sink.layout,
                            local_infile=sink.local_infile)
        for lane in range(lanes):
            wanted[sink_consumer_name(sink.pk, lane, lanes)] = (
                (target, sink.project_id),
                SinkForwarder(target=target, sink_id=sink.pk, project_id=sink.project_id, created_at=sink.created_at,
                              lane=lane, lanes=lanes),
            )
    if Project.objects.exclude(pk__in={sink.project_id for sink in sinks}).exists():
        target = SinkTarget(name="default", url=settings.HUBSCHED_SINK_URL)
        for lane in range(lanes):
            wanted[sink_consumer_name(None, lane, lanes)] = (
                (target,), SinkForwarder(target=target, sink_id=None, lane=lane, lanes=lanes))
    return wanted


def _die_with_parent(parent: int) -> None:
    """In the child, before exec: SIGKILL when the supervisor ``parent`` (its pid) dies (Linux), as if the whole
    forwarder had died."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except OSError:  # not Linux: the child outlives a killed supervisor until its lease check stops it
        return
    if os.getppid() != parent:  # the supervisor died between fork and prctl: no signal will come (prctl(2))
        os._exit(1)


class ForwarderProcess:
    """Supervises one child process per wanted consumer until ``stop`` is set."""

    def __init__(self) -> None:
        self.children: dict[str, tuple[tuple, subprocess.Popen]] = {}

    def _start(self, name: str) -> subprocess.Popen:
        manage = Path(settings.BASE_DIR) / "manage.py"
        parent = os.getpid()
        return subprocess.Popen([sys.executable, str(manage), "forward", "--consumer", name],
                                preexec_fn=lambda: _die_with_parent(parent), close_fds=True)

    def _stop(self, name: str, child: subprocess.Popen) -> None:
        if child.poll() is None:
            child.terminate()
            try:
                child.wait(STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                logger.warning("forwarder %s: did not stop in %.0f s; killed", name, STOP_GRACE_S)
                child.kill()
                child.wait()

    def reconcile(self) -> None:
        wanted = consumers_wanted()
        for name in list(self.children):
            identity, child = self.children[name]
            if name not in wanted or wanted[name][0] != identity:
                logger.info("forwarder %s: %s", name, "stopping" if name not in wanted else "configuration changed: restarting")
                self._stop(name, child)
                del self.children[name]
            elif child.poll() is not None:
                logger.error("forwarder %s: its process ended (exit %s); starting it again", name, child.returncode)
                del self.children[name]
        for name, (identity, _consumer) in wanted.items():
            if name not in self.children:
                self.children[name] = (identity, self._start(name))
                logger.info("forwarder %s: started (pid %d)", name, self.children[name][1].pid)

    def run(self, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                self.reconcile()
            except Exception:  # the Django database away: keep what runs, try again
                logger.exception("forwarders: could not read the configuration")
            finally:
                close_old_connections()
            stop.wait(RECONCILE_S)
        for _identity, child in self.children.values():
            if child.poll() is None:
                child.terminate()
        for name, (_identity, child) in self.children.items():
            self._stop(name, child)


def consumer_run(*, name: str, stop: threading.Event) -> None:
    """Run the wanted consumer ``name`` in this process until ``stop``, or until the configuration no longer
    asks for it as it was (the supervisor then starts it anew). Raises LookupError for a name not wanted."""
    wanted = consumers_wanted()
    if name not in wanted:
        raise LookupError(f"forward --consumer {name}: no such consumer is wanted now ({', '.join(sorted(wanted))})")
    identity, consumer = wanted[name]
    loop = ConsumerLoop(consumer)
    loop.start()
    try:
        while not stop.wait(RECONCILE_S):
            if not loop.thread.is_alive():
                raise RuntimeError(f"forwarder {name}: its loop ended")
            try:
                now = consumers_wanted().get(name)
            except Exception:  # the Django database away: carry on with what runs
                logger.exception("forwarder %s: could not read the configuration", name)
                continue
            finally:
                close_old_connections()
            if now is None or now[0] != identity:
                logger.info("forwarder %s: no longer wanted as it runs; stopping", name)
                break
    finally:
        loop.stop()


def forwarders_catch_up(*, timeout: float = 30.0) -> dict[str, int]:
    """Commit, in this thread, everything the log holds now for every wanted consumer (tests, ``forward
    --once``); returns ``{name: records committed}``. Raises what a commit raises."""
    return {name: ConsumerLoop(consumer).catch_up(timeout=timeout) for name, (_identity, consumer) in consumers_wanted().items()}


