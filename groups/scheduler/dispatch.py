"""The worker side of a batch: expiry, the per-hub gate, the overlap lock and round-robin, then execution.

``hub_batch_run`` handles one message from the beat scheduler, the ticks due for one hub:

0. Never before its time. Beat sends ticks a little ahead with the tick's time as the Celery eta, and
   the worker holds such a message until then. Should a message still arrive early (an eta not
   honoured, clocks a few milliseconds apart), the batch waits for ``scheduled_for``; if it is more
   than ``EARLY_WAIT_MAX_S`` early, it is sent back with that countdown rather than hold a worker.
1. A tick older than its expiry when it arrives, or when its turn comes, is dropped and counted
   ``missed``: ticks never pile up behind a slow hub.
2. The hub gate admits at most ``limit`` batches of one hub at once across all workers (the per-hub
   limit of runs in flight). A batch that finds the gate full runs nothing and is sent back after a
   short delay (``requeue``), so that a slow hub holds no more than ``limit`` worker processes and
   the others go on serving other hubs; its ticks then expire as missed if the hub stays busy.
3. The overlap lock: a group still running (or waiting in a running batch) when its next tick comes
   records that tick as ``skipped``.
4. The admitted groups run in an order rotated by the tick number, so that every group of a hub takes
   its turn at the front (round-robin) and a slow or huge group cannot always push the same others
   past their expiry. They go in chunks of up to ``CHUNK_MAX`` groups of the same tick, each chunk
   one ``group_runs_execute`` call whose hub reads are pipelined together; expiry is checked for
   every group before its chunk starts.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone

from .clock import Clock, SystemClock

logger = logging.getLogger(__name__)

REQUEUE_DELAY_S = 0.1
EARLY_WAIT_MAX_S = 1.0  # a batch this much early or less waits in the worker; more is sent back with a countdown
CHUNK_MAX = 100  # groups of one tick executed together: their reads share the hub connection's pipeline


@dataclass
class BatchOutcome:
    ran: list[tuple[int, float]] = field(default_factory=list)  # (group, scheduled_for) in run order
    skipped: list[int] = field(default_factory=list)
    missed: list[int] = field(default_factory=list)
    requeue: list | None = None  # ticks to send again after ``countdown`` (the hub gate was full, or far too early)
    countdown: float = 0.0


def round_robin(gids: list[int], rr: int) -> list[int]:
    """``gids`` rotated left by ``rr``: tick n of a cohort starts with its (n mod len)-th group."""
    if not gids:
        return []
    k = rr % len(gids)
    return gids[k:] + gids[:k]


def _execute(runs: list[tuple[int, float]]) -> None:
    from groups.services import group_runs_execute

    group_runs_execute(runs=[(gid, datetime.fromtimestamp(t, timezone.utc)) for gid, t in runs])


def hub_batch_run(*, hub_id: int, ticks: list, limit: int = 32, clock: Clock | None = None, locks=None,
                  execute: Callable[[list[tuple[int, float]]], None] | None = None,
                  record: bool = True) -> BatchOutcome:
    """Run one hub's batch ``ticks = [[scheduled_for, expires_s, rr, [group_id, ...]], ...]``.

    No tick starts before its ``scheduled_for`` (see the module docstring); expiry counts from it.
    ``execute(runs)`` runs admitted ``[(group_id, scheduled_for)]`` (default: the lead's
    ``groups.services.group_runs_execute``). With ``record`` the skipped and missed counts go into
    GroupStats. Never raises for one group's fault; returns what happened.
    """
    if locks is None:
        from .locks import locks_backend

        locks = locks_backend()
    clock = clock or SystemClock()
    execute = execute or _execute
    out = BatchOutcome()
    now = clock.now()
    early = min((tick[0] for tick in ticks), default=now) - now
    if early > EARLY_WAIT_MAX_S:
        out.requeue, out.countdown = [list(tick) for tick in ticks], early
        return out
    if early > 0:  # before the overlap lock and the gate: a group finishing its previous tick is not yet "running" late
        clock.wait(threading.Event(), early)
        now = clock.now()
    queue: list[tuple[int, float, float]] = []  # (group, scheduled_for, expiry)
    waiting: list = []
    for t, expiry, rr, gids in sorted(ticks, key=lambda tick: tick[0]):
        if now - t > expiry:
            out.missed.extend(gids)
            continue
        waiting.append([t, expiry, rr, gids])
        queue.extend((gid, t, expiry) for gid in round_robin(gids, rr))
    gate = locks.gate_enter(hub_id, max(1, int(limit))) if queue else None
    if queue and gate is None:
        out.requeue = waiting
        out.countdown = min(REQUEUE_DELAY_S, min(t + e - now for t, e, _, _ in waiting))
    elif queue:
        try:
            _run_admitted(queue, out, clock=clock, locks=locks, execute=execute)
        finally:
            locks.gate_leave(hub_id, gate)
    if record and (out.skipped or out.missed):
        from .stats import group_stats_add

        group_stats_add(counts={"skipped": Counter(out.skipped), "missed": Counter(out.missed)})
    return out


def _run_admitted(queue, out: BatchOutcome, *, clock: Clock, locks, execute) -> None:
    seen: set[int] = set()
    unique = []
    for gid, t, expiry in queue:
        if gid in seen:  # the same group twice in one batch (two change events): the second waits its turn
            out.skipped.append(gid)
        else:
            seen.add(gid)
            unique.append((gid, t, expiry))
    token, locked = locks.acquire([gid for gid, _, _ in unique])
    locked_set = set(locked)
    admitted = []
    for gid, t, expiry in unique:
        (admitted.append((gid, t, expiry)) if gid in locked_set else out.skipped.append(gid))
    held = [gid for gid, _, _ in admitted]
    last_refresh = clock.now()
    try:
        start = 0
        while start < len(admitted):
            t = admitted[start][1]
            now = clock.now()
            if t > now:  # a later tick of the same batch: its time has not come yet
                clock.wait(threading.Event(), t - now)
                now = clock.now()
            if now - last_refresh > 10.0:
                locks.refresh(token, held[start:])
                last_refresh = now
            # the next run of this tick's groups, in round-robin order, executed as one batch (their
            # hub reads pipelined together); expiry is checked for each group before the chunk starts
            end = start
            while end < len(admitted) and end - start < CHUNK_MAX and admitted[end][1] == t:
                end += 1
            chunk = admitted[start:end]
            live = [(gid, t) for gid, t, expiry in chunk if now - t <= expiry]
            out.missed.extend(gid for gid, t, expiry in chunk if now - t > expiry)
            if live:
                try:
                    execute(live)
                    out.ran.extend(live)
                except Exception:  # a fault outside one group's run (those are recorded as failed runs)
                    logger.exception("groups %s: execution of tick %s failed", [gid for gid, _ in live], t)
            locks.release(token, [gid for gid, _, _ in chunk])
            start = end
    finally:
        done = {gid for gid, _ in out.ran} | set(out.missed)
        rest = [gid for gid in held if gid not in done]
        if rest:
            locks.release(token, rest)
