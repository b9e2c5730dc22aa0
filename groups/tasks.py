"""Celery tasks for groups: thin wrappers that take ids and call one service."""

from __future__ import annotations

from datetime import datetime

from celery import shared_task

BATCH_TASK = "groups.tasks.group_batch_run"


@shared_task(name="groups.tasks.group_run", ignore_result=True)
def group_run(group_id: int, scheduled_for: str | None = None) -> None:
    """Execute one tick of group ``group_id``; ``scheduled_for`` is an ISO 8601 time (default: now)."""
    from .services import group_run as run

    run(group_id=group_id, scheduled_for=datetime.fromisoformat(scheduled_for) if scheduled_for else None)


@shared_task(name=BATCH_TASK, bind=True, ignore_result=True)
def group_batch_run(self, hub_id: int, ticks: list, limit: int = 32, fence: list | None = None) -> dict:
    """Execute one hub's due ticks, as sent by the beat scheduler (``groups.scheduler``).

    ``ticks = [[scheduled_for (epoch s), expires_s, rr, [group_id, ...]], ...]``: expiry, the hub gate,
    the overlap lock and round-robin are applied by ``groups.scheduler.dispatch.hub_batch_run``. ``fence`` is
    the beat round's ``[epoch, seq]`` (``groups.scheduler.leader``); a batch of a beat that lost the lead
    before committing it is refused. Older beats send no fence: their batches run.

    Returns the batch's outcome in counts (``BatchOutcome.summary()``: ran, ok, failed, killed, skipped,
    missed, values; requeued or refused): no result backend stores it (``ignore_result``), but the worker's
    log line and its ``task-succeeded`` event carry its repr, which Flower shows as the result (docs/flower.md).
    """
    from .scheduler.dispatch import hub_batch_run

    outcome = hub_batch_run(hub_id=hub_id, ticks=ticks, limit=limit, fence=fence)
    if outcome.requeue:
        args = (hub_id, outcome.requeue, limit) if fence is None else (hub_id, outcome.requeue, limit, fence)
        # the same readable arguments as the beat's message (not Celery's repr of every group id)
        self.apply_async(args=args, countdown=outcome.countdown, argsrepr=getattr(self.request, "argsrepr", None))
    return outcome.summary()
