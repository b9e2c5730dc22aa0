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
2. **Event queues whose consumer is gone are unbound.** Flower or ``celery events`` stopped by a signal
   leave their ``celeryev.<uuid>`` queue bound to the ``celeryev`` fanout exchange (``control/celeryev.exchange``);
   every event of every worker was then written for that dead queue too, and its files piled up in the
   folder that each consumer lists at every poll. When an event queue is bound (Flower starts), the
   other event queues whose oldest message is older than ``STALE_EVENT_QUEUE_S`` are unbound and their
   files removed: a live event consumer takes its messages within a polling interval (0.1 s).
"""

from __future__ import annotations

import os
import time
import uuid
from json import JSONDecodeError

from kombu.transport import filesystem
from kombu.utils.encoding import str_to_bytes
from kombu.utils.json import dumps

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
        try:
            return super().get_table(exchange)
        except JSONDecodeError:  # the exchange's file is being created (kombu opens it before it locks it)
            return []

    def _queue_bind(self, exchange, routing_key, pattern, queue):
        if queue and queue.startswith(EVENT_QUEUE_PREFIX):
            self._unbind_stale_event_queues(exchange, keep=queue)
        super()._queue_bind(exchange, routing_key, pattern, queue)

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


class Transport(filesystem.Transport):
    Channel = Channel
