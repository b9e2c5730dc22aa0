"""A sink's forwarder: the values of its projects' ``ok`` outcomes, stored with the consumer offset in one transaction.

- **Which records.** A sink of a project takes that project's ``ok`` outcomes; the default sink
  (HUBSCHED_SINK_URL) those of every project without an enabled sink of its own, as the workers
  stored before the log (``scripts_engine.sinks.sink_targets_for_projects``). Which projects those are
  is read again every few seconds.
- **Exactly once.** Each batch is one ``sink_write`` with a ``Checkpoint``: values and offset commit
  together in the sink database (``scripts_engine.sinks.offsets``), and the executions ledger stores a
  tick executed twice once.
- **Where a new one starts.** A sink's forwarder without an offset starts at the first record written
  since the sink was created (``Sink.created_at``); the default sink's at the first record kept.
- **Poison executions.** When the database refuses a batch's data (``SinkError.refused``) the batch is
  split down to the executions it refuses (``sink_write_isolating``); each of those is tried again
  alone, up to HUBSCHED_FORWARDER_QUARANTINE_TRIES writes in all, then set aside in
  ``QuarantinedExecution`` with its record and the database's error; then the offset moves on. A
  database that is away is no refusal: the loop tries the same batch again with backoff.
"""

from __future__ import annotations

import logging
import time

from django.conf import settings
from django.db import transaction

from hubsched.secrets import text_mask
from scripts_engine.sinks import SinkError, SinkTarget, sink_write, sink_write_isolating
from scripts_engine.sinks.offsets import Checkpoint, CheckpointConflict, offset_read
from scripts_engine.sinks.writers import sink_engine
from streams.codec import CodecError, outcome_decode
from streams.log import EXECUTIONS, Record, Start

from .consumer import Batch, CommitConflict, Consumer

logger = logging.getLogger(__name__)

DEFAULT = "sink:default"
RETRY_PAUSE_S = 0.5  # between the tries of a refused execution


def sink_consumer_name(sink_id: int | None) -> str:
    """``sink:<id>``, or ``sink:default`` for the settings' default sink."""
    return DEFAULT if sink_id is None else f"sink:{sink_id}"


class SinkForwarder(Consumer):
    """Forwards ``stream`` to ``target``: the Sink ``sink_id``'s (its project's outcomes), or with
    ``sink_id`` None the default sink (the outcomes of projects without an enabled sink)."""

    kind = "sink"

    def __init__(self, *, target: SinkTarget, sink_id: int | None, project_id: int | None = None,
                 created_at=None, stream: str = EXECUTIONS) -> None:
        self.target, self.sink_id, self.project_id, self.created_at = target, sink_id, project_id, created_at
        self.stream = stream
        self.name = sink_consumer_name(sink_id)
        self.projects: frozenset[int] = frozenset({project_id}) if project_id is not None else frozenset()
        self._forwarder_id: int | None = None

    # --- Consumer ----------------------------------------------------------------------------------

    def position(self) -> int | None:
        engine = sink_engine(self.target.url, local_infile=self.target.local_infile)
        try:
            return offset_read(engine, self.target.url, self.name)
        except Exception as exc:
            raise SinkError(f"sink {self.target.name!r}: reading its offset: {text_mask(str(exc))[:300]}") from exc

    def start(self) -> Start:
        return Start.since(self.created_at) if self.created_at is not None else Start.first()

    def refresh(self) -> None:
        if self.sink_id is not None:
            return
        from hubs.models import Project
        from scripts_engine.models import Sink

        with_sinks = set(Sink.objects.enabled().values_list("project_id", flat=True))
        self.projects = frozenset(set(Project.objects.values_list("pk", flat=True)) - with_sinks)

    def decode(self, record: Record):
        body = record.body
        if b'"status":"ok"' not in body and b'"status"' in body:  # not ok: nothing to store (orjson writes no spaces)
            return None
        try:
            outcome = outcome_decode(body)
        except CodecError as exc:
            logger.error("%s: record %d is unreadable and passed by: %s", self.name, record.offset, exc)
            return None
        if outcome.status != "ok" or outcome.project_id not in self.projects or not outcome.execution.values:
            return None
        return outcome.execution, outcome.execution.value_count()

    def commit(self, batch: Batch, previous: int | None) -> None:
        checkpoint = Checkpoint(self.name, self.stream, previous, batch.last_offset)
        try:
            sink_write(target=self.target, executions=batch.items, checkpoint=checkpoint)
            return
        except CheckpointConflict as exc:
            raise CommitConflict(exc.message) from exc
        except SinkError as exc:
            if not exc.refused:
                raise
        self._isolate(batch)
        try:
            sink_write(target=self.target, executions=[], checkpoint=checkpoint)
        except CheckpointConflict as exc:
            raise CommitConflict(exc.message) from exc

    # --- poison executions -------------------------------------------------------------------------

    def _isolate(self, batch: Batch) -> None:
        """Store what the database takes; quarantine what it refuses after the tries allowed. Raises a
        SinkError that is no refusal (the database went away: the batch is tried again whole)."""
        _written, failed = sink_write_isolating(target=self.target, executions=batch.items)
        tries_allowed = settings.HUBSCHED_FORWARDER_QUARANTINE_TRIES
        for index, error in sorted(failed.items()):
            if not error.refused:
                raise error
            tries = 1
            while tries < tries_allowed:
                time.sleep(RETRY_PAUSE_S)
                tries += 1
                try:
                    sink_write(target=self.target, executions=[batch.items[index]])
                    error = None
                    break
                except SinkError as again:
                    if not again.refused:
                        raise
                    error = again
            if error is not None:
                self._quarantine(batch, index, error, tries)

    def _quarantine(self, batch: Batch, index: int, error: SinkError, tries: int) -> None:
        from streams.models import Forwarder, QuarantinedExecution

        execution = batch.items[index]
        if self._forwarder_id is None:
            self._forwarder_id = Forwarder.objects.get_or_create(
                name=self.name, defaults={"kind": self.kind, "sink_id": self.sink_id, "stream": self.stream})[0].pk
        message = text_mask(error.message)
        with transaction.atomic():
            QuarantinedExecution.objects.bulk_create([QuarantinedExecution(
                forwarder_id=self._forwarder_id, stream=self.stream, offset=batch.offsets[index],
                group_id=execution.group_id, tick=execution.tick, project=execution.project, hub=execution.hub,
                group=execution.group, values_count=execution.value_count(), body=batch.bodies[index],
                error=message, tries=tries,
            )], ignore_conflicts=True)  # a replayed batch quarantines an execution once
        logger.error("%s: execution of group %s at %s quarantined after %d tries: %s", self.name,
                     execution.group_id, execution.tick.isoformat(), tries, message)

    def quarantined(self) -> int:
        from streams.models import QuarantinedExecution

        return QuarantinedExecution.objects.filter(forwarder__name=self.name).count()
