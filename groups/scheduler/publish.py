"""Sending beat's ``group_batch_run`` messages cheaply: Celery's own message, one producer, one pipeline per round.

``app.send_task`` costs about 1 ms of Python per message on the Redis broker (measured with cProfile,
100 messages: 100 ms). A third of that is the ``task-sent`` event, a quarter is kombu building a new
redis-py client for each publish, the rest routing, ``saferepr`` of the arguments and retries set-up.
This module keeps the message exactly what ``send_task`` makes and cuts the rest:

- the message comes from ``app.amqp.create_task_message`` and goes out through
  ``app.amqp.send_task_message`` (so headers, the ``task-sent`` event when
  ``task_send_sent_event`` is on, publish retries and signals are Celery's own);
- the route is worked out once (``app.amqp.router``), not per message;
- ``argsrepr`` is a short, readable summary instead of a repr of every id (``batch_argsrepr``: the hub's
  name, the first few groups' names and a count, the tick's time), which Flower shows as the task's
  arguments (docs/flower.md); the names come from the beat's GroupSpecs, three dict look-ups a message;
- ``batch()`` is kombu's ``Producer.batch()``: on Redis a round's messages go out in one pipelined
  round trip; on other transports (AMQP, the filesystem broker) kombu publishes them at once.

Measured on the same 100 messages: 30 ms with task-sent events, 18 ms without (from 100 ms).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from datetime import datetime, timezone

from celery.utils import uuid

from groups.tasks import BATCH_TASK


NAMES_SHOWN = 3  # group names in a batch's argsrepr; the others are counted


def _tick_time(t: float) -> str:
    """Epoch seconds as ``2026-12-02T16:42:35Z`` (``…35.250Z`` when not a whole second), UTC."""
    whole = int(t)
    text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole))
    ms = int(round((t - whole) * 1000))
    return f"{text}.{ms:03d}Z" if 0 < ms < 1000 else f"{text}Z"


def batch_argsrepr(hub_id: int, ticks: list, spec_of: Callable[[int], object] | None = None) -> str:
    """A batch message's ``argsrepr``: what Flower shows as its arguments, in one line.

    ``ticks`` as sent (``[[scheduled_for, expires_s, rr, [group_id, ...]], ...]``); ``spec_of(group_id)`` gives
    the group's ``GroupSpec`` (``name``, ``hub_name``) or None (then ids are shown). Examples::

        hub hub-a (#3): 3 groups line1-pumps, burner-stage, mixer; tick 2026-12-02T16:42:35Z
        hub hub-a (#3): 100 groups line1-pumps, burner-stage, mixer and 97 more; tick 2026-12-02T16:42:35.500Z
        hub hub-b (#4): 2 groups boiler, mixer; 2 ticks 2026-12-02T16:42:35Z to 2026-12-02T16:42:36Z

    The count is of group runs (a group due in two ticks of one batch counts twice). Costs a few dict
    look-ups and two time formats whatever the batch's size (the beat sends 10,000 groups/s).
    """
    size = 0
    shown: list[str] = []
    seen: set[int] = set()
    hub_name = ""
    for tick in ticks:
        gids = tick[3]
        size += len(gids)
        for gid in gids:
            if len(shown) >= NAMES_SHOWN:
                break
            if gid in seen:
                continue
            seen.add(gid)
            spec = spec_of(gid) if spec_of is not None else None
            name = getattr(spec, "name", "") if spec is not None else ""
            hub_name = hub_name or (getattr(spec, "hub_name", "") if spec is not None else "")
            shown.append(name or f"#{gid}")
    more = size - len(shown)
    names = ", ".join(shown) + (f" and {more} more" if more > 0 else "")
    hub = f"hub {hub_name} (#{hub_id})" if hub_name else f"hub #{hub_id}"
    if len(ticks) == 1:
        when = f"tick {_tick_time(ticks[0][0])}"
    elif ticks:
        times = [tick[0] for tick in ticks]
        when = f"{len(ticks)} ticks {_tick_time(min(times))} to {_tick_time(max(times))}"
    else:
        when = "no tick"
    return f"{hub}: {size} group{'s' if size != 1 else ''} {names}; {when}"


class BatchPublisher:
    """Publishes ``group_batch_run(hub_id, ticks, limit)`` through ``producer()`` (beat's producer).

    ``spec_of(group_id)`` (optional) gives a group's GroupSpec, for the names in the message's ``argsrepr``.
    """

    def __init__(self, app, producer, spec_of: Callable[[int], object] | None = None):
        self.app = app
        self._producer = producer  # a callable: beat's producer is made lazily and remade after errors
        self._route: dict | None = None
        self._job_route: dict | None = None
        self.spec_of = spec_of

    def route(self) -> dict:
        if self._route is None:
            task = self.app.tasks.get(BATCH_TASK)
            self._route = self.app.amqp.router.route({}, BATCH_TASK, None, None, task)
        return self._route

    def send(self, hub_id: int, ticks: list, limit: int, eta: float | None = None, fence: list[int] | None = None) -> str:
        """Send one message; ``eta`` is epoch seconds (the worker starts it then) or None; ``fence`` is the round's
        ``[epoch, seq]`` (``groups.scheduler.leader``; None: no fence, the argument is left out). Returns the task id."""
        amqp, task_id = self.app.amqp, uuid()
        message = amqp.create_task_message(
            task_id, BATCH_TASK, (hub_id, ticks, limit) if fence is None else (hub_id, ticks, limit, fence), {},
            eta=datetime.fromtimestamp(eta, timezone.utc) if eta is not None else None,
            create_sent_event=self.app.conf.task_send_sent_event,
            ignore_result=True,
            argsrepr=batch_argsrepr(hub_id, ticks, self.spec_of),
            kwargsrepr="{}",
        )
        amqp.send_task_message(self._producer(), BATCH_TASK, message, **self.route())
        return task_id

    def send_job(self, job_id: int, ticks: list, eta: float | None = None, fence: list[int] | None = None) -> str:
        """Send one job's ticks as ``jobs.tasks.job_tick_run(job_id, ticks, fence)`` (jobs/scheduling.py), routed to
        the jobs queue by ``CELERY_TASK_ROUTES``; otherwise as ``send``. Returns the task id."""
        from jobs.tasks import TICK_TASK

        amqp, task_id = self.app.amqp, uuid()
        spec = self.spec_of(-job_id) if self.spec_of is not None else None
        name = getattr(spec, "name", "") or f"#{job_id}"
        when = f"tick {_tick_time(ticks[-1][0])}" if len(ticks) == 1 else f"{len(ticks)} ticks to {_tick_time(ticks[-1][0])}"
        message = amqp.create_task_message(
            task_id, TICK_TASK, (job_id, ticks) if fence is None else (job_id, ticks, fence), {},
            eta=datetime.fromtimestamp(eta, timezone.utc) if eta is not None else None,
            create_sent_event=self.app.conf.task_send_sent_event, ignore_result=True,
            argsrepr=f"job {name} (#{job_id}): {when}", kwargsrepr="{}",
        )
        if self._job_route is None:
            task = self.app.tasks.get(TICK_TASK)
            self._job_route = self.app.amqp.router.route({}, TICK_TASK, None, None, task)
        amqp.send_task_message(self._producer(), TICK_TASK, message, **self._job_route)
        return task_id

    def batch(self) -> AbstractContextManager:
        """One round of sends: pipelined where the transport can (kombu ``Producer.batch``)."""
        batch = getattr(self._producer(), "batch", None)
        return batch() if batch is not None else nullcontext()
