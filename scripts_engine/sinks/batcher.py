"""Values from many group executions gathered into one write per sink (a bounded window, then one statement).

Each sink target has one writer thread per process. Submitted executions wait until the target's
batch holds ``max_rows`` values or its oldest submission is ``max_age`` seconds old (settings
HUBSCHED_SINK_BATCH_SIZE and HUBSCHED_SINK_BATCH_AGE_S), then go in one write; while a write runs,
new ones gather for the next. A submission is never split across writes (the tall layout's
idempotency relies on an execution's values being written together). A submitter gets a Future
that is done once its values are committed (or fails with the SinkError of that write), so a run
counts as stored only when it is. A lane holding four batches' worth of values makes submitters
wait (a sink slower than the polls slows the polls instead of filling the memory).
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import Future

from hubsched.per_process import PerProcess

from .values import ExecutionValues
from .writers import SinkError, SinkTarget, sink_write

logger = logging.getLogger(__name__)


class _Lane:
    """The pending batch of one target, and the thread that writes it."""

    def __init__(self, batcher: SinkBatcher, target: SinkTarget) -> None:
        self.batcher = batcher
        self.target = target
        self.executions: list[ExecutionValues] = []
        self.values = 0
        self.futures: list[Future] = []
        self.oldest = 0.0
        self.writing = False
        self.ready = threading.Condition()
        self.thread = threading.Thread(target=self._run, name=f"sink-{target.name}", daemon=True)
        self.thread.start()

    def add(self, executions: list[ExecutionValues]) -> Future:
        future: Future = Future()
        values = sum(execution.value_count() for execution in executions)
        with self.ready:
            while self.values >= self.batcher.max_pending:
                self.ready.wait()
            if not self.executions:
                self.oldest = time.monotonic()
            self.executions.extend(executions)
            self.values += values
            self.futures.append(future)
            self.ready.notify_all()
        return future

    def _take(self) -> tuple[list[ExecutionValues], list[Future]]:
        max_rows, max_age = self.batcher.max_rows, self.batcher.max_age
        with self.ready:
            while True:
                if self.executions:
                    wait = self.oldest + max_age - time.monotonic()
                    if self.values >= max_rows or wait <= 0:
                        executions, futures = self.executions, self.futures
                        self.executions, self.futures, self.values = [], [], 0
                        self.writing = True
                        self.ready.notify_all()  # submitters waiting for room
                        return executions, futures
                    self.ready.wait(wait)
                else:
                    self.ready.wait()

    def _run(self) -> None:
        while True:
            executions, futures = self._take()
            try:
                written = sink_write(target=self.target, executions=executions)
            except SinkError as exc:
                for future in futures:
                    future.set_exception(exc)
            except Exception as exc:  # a bug in a writer must fail its batch, not kill the lane
                logger.exception("sink %s: unexpected error", self.target.name)
                error = SinkError(f"sink {self.target.name!r}: internal error: {type(exc).__name__}: {exc}")
                for future in futures:
                    future.set_exception(error)
            else:
                self.batcher.batches += 1
                for future in futures:
                    future.set_result(written)
            with self.ready:
                self.writing = False
                self.ready.notify_all()

    def drain(self, deadline: float) -> bool:
        """Wait until what was submitted is written; returns False at ``deadline`` (monotonic)."""
        with self.ready:
            self.oldest = 0.0  # write what is pending now, not at its age limit
            self.ready.notify_all()
            while self.executions or self.writing:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self.ready.wait(min(left, 0.05))
        return True


class SinkBatcher:
    """Per-process gatherer of sink writes; thread-safe. ``max_rows`` values, ``max_age`` seconds."""

    def __init__(self, *, max_rows: int, max_age: float) -> None:
        self.max_rows = max_rows
        self.max_age = max_age
        self.max_pending = 4 * max_rows
        self.batches = 0
        self._lanes: dict[SinkTarget, _Lane] = {}
        self._lock = threading.Lock()

    def submit(self, *, target: SinkTarget, executions: list[ExecutionValues]) -> Future:
        """Queue ``executions`` for ``target``; the Future's result is the values in the committed batch."""
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

    return SinkBatcher(max_rows=settings.HUBSCHED_SINK_BATCH_SIZE, max_age=settings.HUBSCHED_SINK_BATCH_AGE_S)


process_batcher: PerProcess[SinkBatcher] = PerProcess(_new_batcher)


def batcher() -> SinkBatcher:
    """The process's batcher, configured from settings on first use."""
    return process_batcher.get()
