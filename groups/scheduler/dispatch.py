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
   records that tick as ``skipped``. Skipped and missed ticks are appended to the log as outcomes
   (``groups.services.ticks_untaken_log``) before the message is acknowledged, like the executions.
4. The admitted groups run in an order rotated by the tick number, so that every group of a hub takes
   its turn at the front (round-robin) and a slow or huge group cannot always push the same others
   past their expiry. They go in chunks of up to ``CHUNK_MAX`` groups of the same tick, each chunk
   one ``group_runs_execute`` call whose hub reads are pipelined together; expiry is checked for
   every group before its chunk starts.
"""

from __future__ import annotations

import logging
import threading
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
    untaken: list[tuple[int, float, str]] = field(default_factory=list)  # (group, scheduled_for, skipped|missed|failed)
    requeue: list | None = None  # ticks to send again after ``countdown`` (the hub gate was full, or far too early)
    countdown: float = 0.0
    refused: bool = False  # its beat round was fenced off (``groups.scheduler.leader``): the new leader sends its ticks
    # of the runs in ``ran``, as ``execute`` returned them (GroupRuns; an ``execute`` that returns None counts none)
    ok: int = 0
    failed: int = 0  # with the ticks of a chunk whose execution raised (``untaken`` "failed")
    killed: int = 0
    values: int = 0  # values acquired by the ok runs, durable in the log (the sinks' forwarders store them)

    def summary(self) -> dict:
        """The batch's outcome in counts of group ticks: the task's return value, which Flower shows (docs/flower.md).

        ``{"ran", "ok", "failed", "killed", "skipped", "missed", "values"}`` (``ran`` = ok + failed + killed as
        executed), plus ``"requeued"`` (ticks sent back, ``"countdown_s"`` later) or ``"refused": True``.
        """
        if self.refused:
            return {"refused": True}
        out = {"ran": len(self.ran), "ok": self.ok, "failed": self.failed, "killed": self.killed,
               "skipped": len(self.skipped), "missed": len(self.missed), "values": self.values}
        if self.requeue:
            out["requeued"] = sum(len(tick[3]) for tick in self.requeue)
            out["countdown_s"] = round(self.countdown, 3)
        return out


def round_robin(gids: list[int], rr: int) -> list[int]:
    """``gids`` rotated left by ``rr``: tick n of a cohort starts with its (n mod len)-th group."""
    if not gids:
        return []
    k = rr % len(gids)
    return gids[k:] + gids[:k]


def _execute(runs: list[tuple[int, float]]) -> list:
    from groups.services import group_runs_execute

    return group_runs_execute(runs=[(gid, datetime.fromtimestamp(t, timezone.utc)) for gid, t in runs])


def _tally(out: BatchOutcome, runs) -> None:
    """Add the GroupRuns ``execute`` returned to the outcome's counts."""
    for run in runs or ():
        status = getattr(run, "status", None)
        if status == "ok":
            out.ok += 1
            out.values += run.values_count or 0
        elif status == "killed":
            out.killed += 1
        elif status is not None:
            out.failed += 1


def hub_batch_run(*, hub_id: int, ticks: list, limit: int = 32, clock: Clock | None = None, locks=None,
                  execute: Callable[[list[tuple[int, float]]], list | None] | None = None,
                  record: bool = True, fence: list | None = None, fences=None) -> BatchOutcome:
    """Run one hub's batch ``ticks = [[scheduled_for, expires_s, rr, [group_id, ...]], ...]``.

    First of all, a batch with a ``fence`` (``[epoch, seq]`` of the beat round that sent it) runs only if that
    round was committed (``groups.scheduler.leader.Fence.admit``, the process's ``fence_checker()`` unless
    ``fences`` is given); a refused batch runs and records nothing (``refused``): its ticks belong to the
    beat that leads now. Without a fence (an older beat) it runs.

    No tick starts before its ``scheduled_for`` (see the module docstring); expiry counts from it.
    ``execute(runs)`` runs admitted ``[(group_id, scheduled_for)]`` (default: the lead's
    ``groups.services.group_runs_execute``) and may return their GroupRuns, counted in the outcome's
    ``ok``/``failed``/``killed``/``values``. With ``record`` the skipped and missed counts go into
    GroupStats. Never raises for one group's fault; returns what happened (``BatchOutcome.summary()``).
    """
    if fence is not None:
        if fences is None:
            from .leader import fence_checker

            fences = fence_checker()
        if fences is not None and not fences.admit(fence):
            logger.info("hub %s: batch of beat round %s refused: that beat no longer leads", hub_id, fence)
            return BatchOutcome(refused=True)
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
            out.untaken.extend((gid, t, "missed") for gid in gids)
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
    if record and out.untaken:
        from groups.services import ticks_untaken_log

        ticks_untaken_log(untaken=out.untaken)  # before the message is acknowledged, like the executions
    return out


def _run_admitted(queue, out: BatchOutcome, *, clock: Clock, locks, execute) -> None:
    seen: set[int] = set()
    unique = []
    for gid, t, expiry in queue:
        if gid in seen:  # the same group twice in one batch (two change events): the second waits its turn
            out.skipped.append(gid)
            out.untaken.append((gid, t, "skipped"))
        else:
            seen.add(gid)
            unique.append((gid, t, expiry))
    token, locked = locks.acquire([gid for gid, _, _ in unique])
    locked_set = set(locked)
    admitted = []
    for gid, t, expiry in unique:
        if gid in locked_set:
            admitted.append((gid, t, expiry))
        else:
            out.skipped.append(gid)
            out.untaken.append((gid, t, "skipped"))
    held = [gid for gid, _, _ in admitted]
    try:
        start = 0
        while start < len(admitted):
            t = admitted[start][1]
            now = clock.now()
            if t > now:  # a later tick of the same batch: its time has not come yet
                clock.wait(threading.Event(), t - now)
                now = clock.now()
            # the next run of this tick's groups, in round-robin order, executed as one batch (their
            # hub reads pipelined together); expiry is checked for each group before the chunk starts
            end = start
            while end < len(admitted) and end - start < CHUNK_MAX and admitted[end][1] == t:
                end += 1
            chunk = admitted[start:end]
            # the locks live while this process's heartbeat extends them (groups.scheduler.locks); a worker
            # paused past their TTL may have lost some to another worker, which then runs those groups:
            # count them skipped rather than run them twice
            try:
                kept = set(locks.held(token, [gid for gid, _, _ in chunk]))
            except Exception:  # the lock store is out of reach: its locks may have lapsed
                logger.exception("hub batch: cannot check its overlap locks; their groups are skipped")
                kept = set()
            lost = [(gid, t) for gid, t, _ in chunk if gid not in kept]
            out.skipped.extend(gid for gid, _ in lost)
            out.untaken.extend((gid, t, "skipped") for gid, t in lost)
            chunk = [entry for entry in chunk if entry[0] in kept]
            live = [(gid, t) for gid, t, expiry in chunk if now - t <= expiry]
            late = [(gid, t) for gid, t, expiry in chunk if now - t > expiry]
            out.missed.extend(gid for gid, _ in late)
            out.untaken.extend((gid, t, "missed") for gid, t in late)
            if live:
                try:
                    runs = execute(live)
                    out.ran.extend(live)
                    _tally(out, runs)
                except Exception:  # a fault outside one group's run (those are recorded as failed runs)
                    logger.exception("groups %s: execution of tick %s failed", [gid for gid, _ in live], t)
                    out.failed += len(live)
                    # their outcome, should none have reached the log (the run recorder keeps a tick's first)
                    out.untaken.extend((gid, t, "failed") for gid, _ in live)
            locks.release(token, [gid for gid, _, _ in chunk])
            start = end
    finally:
        done = {gid for gid, _ in out.ran} | set(out.missed)
        rest = [gid for gid in held if gid not in done]
        if rest:
            locks.release(token, rest)
