"""Values from many group executions gathered into one write per sink (a bounded window, then one statement).

Each sink target has a lane per process, written by ``writers`` threads (HUBSCHED_SINK_WRITERS, 2).
A writer takes whole submissions up to ``max_rows`` values once the lane holds that many or its oldest
submission is ``max_age`` seconds old (HUBSCHED_SINK_BATCH_SIZE, HUBSCHED_SINK_BATCH_AGE_S), and
writes them in one transaction; while it writes, the next batch gathers and another writer can take
it, so the database works on one batch while Python encodes the next. A submission is never split
across writes (the tall layout's idempotency relies on an execution's values being written together).
A submitter gets a Future that is done once its values are committed (or fails with the SinkError of
that write), so a run counts as stored only when it is. A write the database refuses for its data (a
value too long for its column, a constraint: ``SinkError.refused``) is split in halves, each written
in its own transaction, down to the executions it refuses (``writers.sink_write_isolating``): a
submission with some of them refused fails with ``SinkExecutionsError``, whose ``failed`` names their
positions, the rest being stored; a database that is down fails the whole batch at once.

A lane holding ``max_pending`` values (HUBSCHED_SINK_MAX_PENDING, 100,000: about 45 MB of decoded hub
values) or ``max_pending_bytes`` bytes (HUBSCHED_SINK_MAX_PENDING_BYTES, 64 MiB, counted as the JSON
the hubs sent: ``ExecutionValues.byte_size``, which is what large values weigh) makes submitters
wait, in the order they came, so a sink slower than the polls slows the polls instead of filling the
memory; below those bounds the lane absorbs a write that takes longer than usual (a checkpoint on
the database) without holding up polls. A submission larger than a bound waits for an empty lane
and then goes alone.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from concurrent.futures import Future

from hubsched.per_process import PerProcess

from .values import ESTIMATED_VALUE_BYTES, ExecutionValues
from .writers import SinkError, SinkExecutionsError, SinkTarget, sink_write_isolating

logger = logging.getLogger(__name__)


class _Lane:
    """The pending submissions of one target, and the threads that write them."""

    def __init__(self, batcher: SinkBatcher, target: SinkTarget) -> None:
        self.batcher = batcher
        self.target = target
        # (executions, values, bytes, future, since)
        self.pending: deque[tuple[list[ExecutionValues], int, int, Future, float]] = deque()
        self.values = 0
        self.bytes = 0
        self.waiting: deque[object] = deque()  # submitters waiting for room, first come first in
        self.writing = 0  # writes in progress
        self.flush = False  # drain: write what is pending without waiting for its age
        self.ready = threading.Condition()
        self.threads = [threading.Thread(target=self._run, name=f"sink-{target.name}-{i}", daemon=True)
                        for i in range(batcher.writers)]
        for thread in self.threads:
            thread.start()

    def add(self, executions: list[ExecutionValues]) -> Future:
        future: Future = Future()
        values = size = 0
        for execution in executions:
            count = execution.value_count()
            values += count
            size += execution.size or ESTIMATED_VALUE_BYTES * count
        with self.ready:
            if self.waiting or self._full(values, size):
                me = object()
                self.waiting.append(me)
                try:
                    while self.waiting[0] is not me or self._full(values, size):
                        self.ready.wait()
                finally:
                    self.waiting.remove(me)
            self.pending.append((executions, values, size, future, time.monotonic()))
            self.values += values
            self.bytes += size
            self.ready.notify_all()
        return future

    def _full(self, values: int, size: int) -> bool:
        """Whether a submission of ``values`` values and ``size`` bytes must wait (under ``ready``)."""
        batcher = self.batcher
        return bool(self.pending) and (self.values + values > batcher.max_pending
                                       or self.bytes + size > batcher.max_pending_bytes)

    def _take(self) -> tuple[list[ExecutionValues], list[tuple[Future, int]]]:
        """The next batch: whole submissions, oldest first, up to ``max_rows`` values (at least one
        submission); with each submission's Future, how many executions it has."""
        max_rows, max_age = self.batcher.max_rows, self.batcher.max_age
        with self.ready:
            while True:
                if self.pending:
                    wait = self.pending[0][4] + max_age - time.monotonic()
                    if self.values >= max_rows or wait <= 0 or self.flush:
                        executions: list[ExecutionValues] = []
                        futures: list[tuple[Future, int]] = []
                        taken = taken_bytes = 0
                        while self.pending and (not futures or taken + self.pending[0][1] <= max_rows):
                            batch, values, size, future, _since = self.pending.popleft()
                            executions.extend(batch)
                            futures.append((future, len(batch)))
                            taken += values
                            taken_bytes += size
                        self.values -= taken
                        self.bytes -= taken_bytes
                        self.writing += 1
                        self.ready.notify_all()  # submitters waiting for room, other writers
                        return executions, futures
                    self.ready.wait(wait)
                else:
                    self.ready.wait()

    def _run(self) -> None:
        while True:
            executions, futures = self._take()
            try:
                written, failed = sink_write_isolating(target=self.target, executions=executions)
            except SinkError as exc:
                for future, _ in futures:
                    future.set_exception(exc)
            except Exception as exc:  # a bug in a writer must fail its batch, not kill the lane
                logger.exception("sink %s: unexpected error", self.target.name)
                error = SinkError(f"sink {self.target.name!r}: internal error: {type(exc).__name__}: {exc}")
                for future, _ in futures:
                    future.set_exception(error)
            else:
                with self.batcher._lock:  # one counter for every lane
                    self.batcher.batches += 1
                if failed:
                    logger.warning("sink %s: the database refused %d of %d executions; the others are stored",
                                   self.target.name, len(failed), len(executions))
                start = 0
                for future, count in futures:
                    mine = {i - start: failed[i] for i in range(start, start + count) if i in failed}
                    start += count
                    if mine:
                        first = next(iter(mine.values()))
                        future.set_exception(SinkExecutionsError(
                            f"{len(mine)} of {count} executions refused: {first.message}", failed=mine))
                    else:
                        future.set_result(written)
            with self.ready:
                self.writing -= 1
                self.ready.notify_all()

    def drain(self, deadline: float) -> bool:
        """Wait until what was submitted is written; returns False at ``deadline`` (monotonic)."""
        with self.ready:
            self.flush = True  # write what is pending now, not at its age limit
            self.ready.notify_all()
            try:
                while self.pending or self.writing:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        return False
                    self.ready.wait(min(left, 0.05))
            finally:
                self.flush = False
        return True


class SinkBatcher:
    """Per-process gatherer of sink writes; thread-safe. Batches of up to ``max_rows`` values (a bigger
    submission goes whole), written after at most ``max_age`` seconds by ``writers`` threads per target;
    submitters wait while a target has ``max_pending`` values (at least ``max_rows``) or ``max_pending_bytes``
    bytes (``ExecutionValues.byte_size``) unwritten; a larger submission waits for an empty lane.
    Raises ValueError for ``writers`` below 1."""

    def __init__(self, *, max_rows: int, max_age: float, writers: int = 2, max_pending: int = 100_000,
                 max_pending_bytes: int = 64 * 1024 * 1024) -> None:
        if writers < 1:
            raise ValueError(f"writers must be at least 1, not {writers}")
        self.max_rows = max_rows
        self.max_age = max_age
        self.writers = writers
        self.max_pending = max(max_pending, max_rows)
        self.max_pending_bytes = max_pending_bytes
        self.batches = 0
        self._lanes: dict[SinkTarget, _Lane] = {}
        self._lock = threading.Lock()

    def submit(self, *, target: SinkTarget, executions: list[ExecutionValues]) -> Future:
        """Queue ``executions`` for ``target``; the Future's result is the values in the committed batch.

        It fails with the batch's SinkError when nothing could be stored, or with SinkExecutionsError
        (``failed``: {position in ``executions``: SinkError}) when the database refused some of them and
        stored the others. Blocks while the lane is full (see the module doc)."""
        lane = self._lanes.get(target)
        if lane is None:
            with self._lock:
                lane = self._lanes.get(target) or self._lanes.setdefault(target, _Lane(self, target))
        return lane.add(executions)

    def drain(self, *, timeout: float) -> bool:
        """Write everything submitted so far, waiting at most ``timeout`` seconds; returns whether all was written."""
        deadline = time.monotonic() + timeout
        return all(lane.drain(deadline) for lane in list(self._lanes.values()))


def _new_batcher() -> SinkBatcher:
    from django.conf import settings

    return SinkBatcher(max_rows=settings.HUBSCHED_SINK_BATCH_SIZE, max_age=settings.HUBSCHED_SINK_BATCH_AGE_S,
                       writers=settings.HUBSCHED_SINK_WRITERS, max_pending=settings.HUBSCHED_SINK_MAX_PENDING,
                       max_pending_bytes=settings.HUBSCHED_SINK_MAX_PENDING_BYTES)


process_batcher: PerProcess[SinkBatcher] = PerProcess(_new_batcher)


def batcher() -> SinkBatcher:
    """The process's batcher, configured from settings on first use."""
    return process_batcher.get()
