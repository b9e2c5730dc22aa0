"""Celery tasks for groups: thin wrappers that take ids and call one service."""

from __future__ import annotations

from datetime import datetime

from celery import shared_task


@shared_task(name="groups.tasks.group_run", ignore_result=True)
def group_run(group_id: int, scheduled_for: str | None = None) -> None:
    """Execute one tick of group ``group_id``; ``scheduled_for`` is an ISO 8601 time (default: now)."""
    from .services import group_run as run

    run(group_id=group_id, scheduled_for=datetime.fromisoformat(scheduled_for) if scheduled_for else None)
