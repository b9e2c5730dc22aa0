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
- **Writers.** HUBSCHED_SINK_WRITERS forwarders (lanes) write one sink at once, each the groups whose id
  modulo the lanes is its own, each with its own offset and process: the database works on two batches
  while Python prepares more. A lane that is new (the number changed) starts after the least offset its
  siblings committed.
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
from scripts_engine.sinks.offsets import Checkpoint, CheckpointConflict, offset_read, offsets_with_prefix
from scripts_engine.sinks.writers import sink_engine
from streams.codec import CodecError, outcome_decode, outcome_header
from streams.log import EXECUTIONS, Record, Start

from .consumer import Batch, CommitConflict, Consumer

logger = logging.getLogger(__name__)

DEFAULT = "sink:default"
RETRY_PAUSE_S = 0.5  # between the tries of a refused execution


def sink_consumer_name(sink_id: int | None, lane: int = 0, lanes: int = 1) -> str:
    """``sink:<id>``, or ``sink:default`` for the settings' default sink; with several writers per sink
    (HUBSCHED_SINK_WRITERS) each lane's, ``sink:<id>:<lane>-of-<lanes>``."""
    base = DEFAULT if sink_id is None else f"sink:{sink_id}"
    return base if lanes == 1 else f"{base}:{lane}-of-{lanes}"


class SinkForwarder(Consumer):
    """Forwards ``stream`` to ``target``: the Sink ``sink_id``'s (its project's outcomes), or with
    ``sink_id`` None the default sink (the outcomes of projects without an enabled sink)."""

    kind = "sink"

    def __init__(self, *, target: SinkTarget, sink_id: int | None, project_id: int | None = None,
                 created_at=None, stream: str = EXECUTIONS, lane: int = 0, lanes: int = 1) -> None:
        if not 0 <= lane < lanes:
            raise ValueError(f"lane {lane} of {lanes}: expected 0 <= lane < lanes")
        self.target, self.sink_id, self.project_id, self.created_at = target, sink_id, project_id, created_at
        self.stream, self.lane, self.lanes = stream, lane, lanes
        self.name = sink_consumer_name(sink_id, lane, lanes)
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
        """Where a lane without an offset starts: after the least offset the lanes of another count committed
        (HUBSCHED_SINK_WRITERS changed: what it repeats, the ledger stores once), else at the sink's creation,
        else (the default sink) at the first record kept."""
        engine = sink_engine(self.target.url, local_infile=self.target.local_infile)
        siblings = offsets_with_prefix(engine, self.target.url, sink_consumer_name(self.sink_id))
        # only lanes of another count: this count's lanes start together, and one that committed first must not
        # make the others skip their groups' records
        ours = f"-of-{self.lanes}"
        earlier = {name: offset for name, offset in siblings.items()
                   if not (name.endswith(ours) or (self.lanes == 1 and name == sink_consumer_name(self.sink_id)))}
        if earlier:
            return Start.at(min(earlier.values()) + 1)
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
        try:
            head = outcome_header(body)  # another project's, or not ok: passed by without decoding its values
        except CodecError as exc:
            logger.error("%s: record %d is unreadable and passed by: %s", self.name, record.offset, exc)
            return None
        if head.get("status", "ok") != "ok" or head.get("project_id") not in self.projects or not head.get("values_count"):
            return None
        if self.lanes > 1 and head.get("group_id", 0) % self.lanes != self.lane:  # another lane's group
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
