"""The run recorder: every tick outcome in the log as one GroupRun and its group's counters, in the Django database.

Its consumer offset (``streams.models.ConsumerOffset``, consumer ``runs``) moves in the same transaction
as the runs it covers, compared and set, so a recorder that dies and restarts records each outcome
once; a tick with two outcomes in the log (its task delivered again after a worker died) keeps the
first (``groups.services.group_runs_record``). It starts at the first record kept.
"""

from __future__ import annotations

import logging

from django.db import IntegrityError, router, transaction

from streams.codec import CodecError, outcome_header
from streams.log import EXECUTIONS, Record, Start

from .consumer import Batch, CommitConflict, Consumer

logger = logging.getLogger(__name__)

RUNS = "runs"


class RunRecorder(Consumer):
    kind = "runs"
    name = RUNS

    def __init__(self, *, stream: str = EXECUTIONS) -> None:
        self.stream = stream

    def position(self) -> int | None:
        from streams.models import ConsumerOffset

        return ConsumerOffset.objects.filter(stream=self.stream, consumer=self.name).values_list("offset", flat=True).first()

    def start(self) -> Start:
        return Start.first()

    def decode(self, record: Record):
        from datetime import datetime

        from groups.models import GroupRun

        try:
            head = outcome_header(record.body)  # the outcome without its values
            tick = datetime.fromisoformat(head["tick"])
            started = datetime.fromisoformat(head["started"]) if head.get("started") else None
            finished = datetime.fromisoformat(head["finished"]) if head.get("finished") else None
            status, group_id = head.get("status", "ok"), head["group_id"]
            if tick.tzinfo is None or not isinstance(group_id, int):
                raise CodecError("tick must carry a UTC offset and group_id be an integer")
        except (CodecError, KeyError, TypeError, ValueError) as exc:
            logger.error("runs: record %d is unreadable and passed by: %s", record.offset, exc)
            return None
        values = int(head.get("values_count") or 0) if status == "ok" else 0
        run = GroupRun(group_id=group_id, scheduled_for=tick, started_at=started, finished_at=finished,
                       status=status, error=head.get("error") or "", values_count=values,
                       killed_by=head.get("killed_by") or "")
        lag_ms = max(0, int((started - tick).total_seconds() * 1000)) if started else 0
        return (run, lag_ms), 1

    def commit(self, batch: Batch, previous: int | None) -> None:
        from groups.models import GroupRun
        from groups.services import group_runs_record
        from streams.models import ConsumerOffset

        with transaction.atomic(using=router.db_for_write(GroupRun)):
            group_runs_record(runs=batch.items)  # a savepoint of its own: a tick run now meanwhile is tried again
            if previous is None:
                try:
                    with transaction.atomic():
                        ConsumerOffset.objects.create(stream=self.stream, consumer=self.name, offset=batch.last_offset)
                except IntegrityError as exc:
                    raise CommitConflict("runs: another recorder committed first") from exc
            elif not ConsumerOffset.objects.filter(stream=self.stream, consumer=self.name, offset=previous).update(
                    offset=batch.last_offset):
                raise CommitConflict(f"runs: the offset moved past {previous} meanwhile")
