"""The embedded broker: kombu's filesystem transport, with whole messages only and no dead event queues.

``settings.CELERY_BROKER_TRANSPORT`` names this transport when ``CELERY_BROKER_URL`` is ``filesystem://``
(the URL, the folders and ``settings.CELERY_BROKER_TRANSPORT_OPTIONS`` stay those of kombu's transport).
It changes two things:

1. **A consumer never reads half a message.** kombu creates a message's file, then writes it; a consumer
   polling the folder can take the file in between and read nothing. ``json.loads("")`` then fails
   the consumer's ``drain_events`` and the message is gone (it was moved out of the folder before it was
   read). Flower's event capture failed that way after ``make run`` (``flower.events: Failed to capture
   events: 'Expecting value: line 1 column 1 (char 0)', trying again in 2 seconds``: Flower missed the
   events of those seconds), and a worker could lose a task message the same way. Measured on this
   machine with one publisher and one consumer on one folder for 5 s: 3 failed reads in about 10,000
   messages with kombu's transport (1,103 in 8,300 with the machine loaded), none in 7,460 with this one
   (``hubsched/tests/test_broker_files.py`` shows the cause without timing). Here a
   message is written under a name no queue matches (``….msg.part``) and renamed into place once whole:
   a rename within one folder is atomic, so a reader finds either nothing or the whole message.
   An exchange's table read while its file is being created (empty) counts as no binding yet.
2. **An exchange's table is never garbled.** kombu creates an exchange's file (``control/<exchange>.exchange``,
   its bindings as JSON) with ``open(..., "wb")``, which empties the file *before* the lock is taken:
   when two processes or threads bind queues to a new exchange at once (three inspection broadcasts, each
   with its reply queue; two workers starting), one truncates the file under the other's lock and then
   writes its shorter table over the longer one. The file then holds a table followed by the tail of
   another (``JSONDecodeError: Extra data``): every inspection failed from then on (``GET /api/v1/workers``
   answered 503) and bindings were lost (kombu's own report of it: treeverse/dvc-task#73). Here the file
   is opened without truncation (``O_CREAT``), locked, read, changed and rewritten (``truncate`` after the
   write) under one exclusive lock, for binding and unbinding alike; a table garbled earlier by kombu's
   transport is read as far as its first whole table and rewritten whole by the next change.
3. **Event queues whose consumer is gone are unbound.** Flower or ``celery events`` stopped by a signal
   leave their ``celeryev.<uuid>`` queue bound to the ``celeryev`` fanout exchange (``control/celeryev.exchange``);
   every event of every worker was then written for that dead queue too, and its files piled up in the
   folder that each consumer lists at every poll. When an event queue is bound (Flower starts), the
   other event queues whose oldest message is older than ``STALE_EVENT_QUEUE_S`` are unbound and their
   files removed: a live event consumer takes its messages within a polling interval (0.1 s).
"""

from __future__ import annotations

import json
import logging
import os
import time
import uuid

from typing import Callable

from kombu.transport import filesystem
from kombu.transport.virtual import base as virtual
from kombu.utils.encoding import bytes_to_str, str_to_bytes
from kombu.utils.json import dumps, loads

log = logging.getLogger(__name__)

STALE_EVENT_QUEUE_S = 60.0  # an event queue holding a message this old has no consumer (one polls every 0.1 s)
EVENT_QUEUE_PREFIX = "celeryev."  # celery.events.receiver: the queues of Flower and `celery events` (auto-delete)
PART_SUFFIX = ".part"  # a message being written: ``_get`` matches ``<stamp>_<uuid>.<queue>.msg`` exactly


class Channel(filesystem.Channel):
    def _put(self, queue, payload, **kwargs):
        """Put a message onto ``queue``: written whole under a name no reader takes, then renamed into place."""
        name = f"{int(round(time.monotonic() * 1000))}_{uuid.uuid4()}.{queue}.msg"
        path = os.path.join(self.data_folder_out, name)
        part = path + PART_SUFFIX
        try:
            fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            try:
                os.write(fd, str_to_bytes(dumps(payload)))
            finally:
                os.close(fd)
            os.rename(part, path)
        except OSError as exc:
            try:
                os.unlink(part)
            except OSError:
                pass
            raise filesystem.ChannelError(f"Cannot add file {path!r} to directory") from exc

    def get_table(self, exchange):
        """The bindings of ``exchange``: ``[exchange_queue_t(routing_key, pattern, queue)]``, ``[]`` when none."""
        file = self._exchange_file(exchange)
        try:
            with open(file, "rb") as f:
                filesystem.lock(f, filesystem.LOCK_SH)
                try:
                    return _table(f.read(), file)
                finally:
                    filesystem.unlock(f)
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise filesystem.ChannelError(f"Cannot open {file}") from exc

    def _change_table(self, exchange, change: Callable[[list], list | None]) -> None:
        """Apply ``change`` (the bindings in, the new bindings or None for no change out) to ``exchange``'s
        table under one exclusive lock; the file is created if absent, never emptied before the lock."""
        file = self._exchange_file(exchange)
        self.control_folder.mkdir(exist_ok=True)
        try:
            fd = os.open(file, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise filesystem.ChannelError(f"Cannot open {file}") from exc
        with os.fdopen(fd, "rb+", buffering=0) as f:
            filesystem.lock(f, filesystem.LOCK_EX)
            try:
                queues = change(_table(f.read(), file))
                if queues is not None:
                    f.seek(0)
                    f.write(str_to_bytes(dumps(queues)))
                    f.truncate()
            finally:
                filesystem.unlock(f)

    def _queue_bind(self, exchange, routing_key, pattern, queue):
        if queue and queue.startswith(EVENT_QUEUE_PREFIX):
            self._unbind_stale_event_queues(exchange, keep=queue)
        binding = filesystem.exchange_queue_t(routing_key or "", pattern or "", queue or "")
        self._change_table(exchange, lambda queues: None if binding in queues else [binding, *queues])

    def _delete(self, queue, exchange, routing_key, pattern, *args, **kwargs):
        virtual.Channel._delete(self, queue, exchange, routing_key, pattern, *args, **kwargs)  # purges its messages
        binding = filesystem.exchange_queue_t(routing_key or "", pattern or "", queue or "")
        if self._exchange_file(exchange).exists():
            self._change_table(exchange, lambda queues: [q for q in queues if q != binding]
                               if binding in queues else None)

    def _unbind_stale_event_queues(self, exchange, *, keep: str) -> list[str]:
        """Unbind the event queues of ``exchange`` (but ``keep``) whose oldest message is older than
        ``STALE_EVENT_QUEUE_S``, and remove their messages; returns their names."""
        bound = {q.queue for q in self.get_table(exchange)
                 if q.queue.startswith(EVENT_QUEUE_PREFIX) and q.queue != keep}
        if not bound:
            return []
        files: dict[str, list[str]] = {}
        folder = self.data_folder_in
        for filename in os.listdir(folder):
            rest = filename.partition(".")[2]
            if rest.endswith(".msg") and rest[:-4] in bound:
                files.setdefault(rest[:-4], []).append(filename)
        now, stale = time.time(), []
        for queue, names in files.items():
            try:
                oldest = min(os.stat(os.path.join(folder, n)).st_mtime for n in names)
            except OSError:  # taken meanwhile: its consumer lives
                continue
            if now - oldest > STALE_EVENT_QUEUE_S:
                stale.append(queue)
        for queue in stale:
            for table in self.get_table(exchange):
                if table.queue == queue:
                    self._delete(queue, exchange, table.routing_key, table.pattern)
            for name in files[queue]:
                try:
                    os.unlink(os.path.join(folder, name))
                except OSError:
                    pass
        return stale


def _table(raw: bytes, file) -> list:
    """An exchange file's bindings: empty (being created) is none; a table garbled by kombu's own transport
    (a table followed by another's tail) is read as far as its first whole table."""
    text = bytes_to_str(raw).strip()
    if not text:
        return []
    try:
        rows = loads(text)
    except json.JSONDecodeError:
        try:
            rows, end = json.JSONDecoder().raw_decode(text)
        except json.JSONDecodeError:
            log.warning("the exchange table %s is not JSON: read as no bindings", file)
            return []
        log.warning("the exchange table %s held %d bytes after its table: read as far as the table", file,
                    len(text) - end)
    return [filesystem.exchange_queue_t(*row) for row in rows]


class Transport(filesystem.Transport):
    Channel = Channel
