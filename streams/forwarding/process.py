"""The forwarder process (``manage.py forward``): every consumer the configuration asks for, each in its thread.

Which ones: the run recorder, a forwarder for each enabled sink, and one for the default sink while a
project has no enabled sink of its own. Read again every RECONCILE_S: a sink added, enabled, changed
(URL, layout, table) or removed starts, restarts or stops its forwarder. Several forward processes
may run (on several hosts): each consumer is led by one of them at a time (the lease), the others
stand by.
"""

from __future__ import annotations

import logging
import threading

from django.conf import settings
from django.db import close_old_connections

from scripts_engine.sinks import DEFAULT_TABLE, SinkTarget

from .consumer import Consumer, ConsumerLoop
from .runs import RunRecorder
from .sinks import SinkForwarder, sink_consumer_name

logger = logging.getLogger(__name__)

RECONCILE_S = 5.0


def consumers_wanted() -> dict[str, tuple[tuple, Consumer]]:
    """``{name: (identity, consumer)}`` for the configuration now; a changed identity restarts a consumer."""
    from hubs.models import Project
    from scripts_engine.models import Sink

    wanted: dict[str, tuple[tuple, Consumer]] = {"runs": (("runs",), RunRecorder())}
    sinks = list(Sink.objects.enabled().order_by("pk"))
    for sink in sinks:
        target = SinkTarget(name=sink.name, url=sink.url, table=sink.table or DEFAULT_TABLE, layout=sink.layout,
                            local_infile=sink.local_infile)
        wanted[sink_consumer_name(sink.pk)] = (
            (target, sink.project_id),
            SinkForwarder(target=target, sink_id=sink.pk, project_id=sink.project_id, created_at=sink.created_at),
        )
    if Project.objects.exclude(pk__in={sink.project_id for sink in sinks}).exists():
        target = SinkTarget(name="default", url=settings.HUBSCHED_SINK_URL)
        wanted[sink_consumer_name(None)] = ((target,), SinkForwarder(target=target, sink_id=None))
    return wanted


class ForwarderProcess:
    """Runs and reconciles the consumers until ``stop`` is set."""

    def __init__(self) -> None:
        self.loops: dict[str, tuple[tuple, ConsumerLoop]] = {}

    def reconcile(self) -> None:
        wanted = consumers_wanted()
        for name in list(self.loops):
            identity, loop = self.loops[name]
            if name not in wanted or wanted[name][0] != identity:
                logger.info("forwarder %s: %s", name, "stopping" if name not in wanted else "configuration changed: restarting")
                loop.stop()
                del self.loops[name]
        for name, (identity, consumer) in wanted.items():
            if name not in self.loops:
                loop = ConsumerLoop(consumer)
                loop.start()
                self.loops[name] = (identity, loop)
                logger.info("forwarder %s: started", name)

    def run(self, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                self.reconcile()
            except Exception:  # the Django database away: keep what runs, try again
                logger.exception("forwarders: could not read the configuration")
            finally:
                close_old_connections()
            stop.wait(RECONCILE_S)
        for _identity, loop in self.loops.values():
            loop.stopping.set()
        for _identity, loop in self.loops.values():
            loop.stop()


def forwarders_catch_up(*, timeout: float = 30.0) -> dict[str, int]:
    """Commit, in this thread, everything the log holds now for every wanted consumer (tests, ``forward
    --once``); returns ``{name: records committed}``. Raises what a commit raises."""
    return {name: ConsumerLoop(consumer).catch_up(timeout=timeout) for name, (_identity, consumer) in consumers_wanted().items()}
