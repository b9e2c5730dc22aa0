"""The log on RabbitMQ Streams (plugin ``rabbitmq_stream``, port 5552), through rstream, behind a sync facade.

rstream is asyncio: this adapter runs one event loop in a daemon thread per ``RabbitMQLog`` (one per
process: ``streams.log.log()``), and every public method hands a coroutine to it with
``asyncio.run_coroutine_threadsafe`` and waits, with a timeout, for the result. All errors become
``LogError``; URLs in messages are masked.

Durability: ``append`` returns when the broker has confirmed every record (publisher confirms). A
stream confirms a message once a quorum of its replicas has written it (one node: that node); RabbitMQ
does not fsync a stream's segment files, it relies on replication (RabbitMQ's streams documentation,
"Data safety"; not re-measured here). So a confirmed record survives the crash of the publishing
process and of a RabbitMQ process; on a single node, an operating system crash or power loss can lose
what the kernel had not yet written. Run three nodes where that matters.

Records go in Publish frames of at most ``frame_max`` bytes (the URL's ``?frame_max=``, default
1 MiB, RabbitMQ's default ``stream.frame_max``; the smaller of the two is used): a record larger than
one frame is refused (LogError, permanent); raise both to carry larger ones.

Retention: the stream's ``max-age`` and ``max-length-bytes`` arguments, set when this adapter first
declares the stream (afterwards a policy changes them, not this adapter). RabbitMQ applies retention
by segment (``stream-max-segment-size-bytes``, 500 MB by default; the URL's ``?segment_bytes=`` sets it
for new streams): whole segments are deleted, the one being written never; so a stream holds up to
about one segment more than ``max-length-bytes``, and records older than ``max-age`` until their
segment is closed and evaluated.

Offsets come from the broker: increasing, with gaps (a stored consumer offset takes one). ``append``
cannot learn them (the confirm names the publisher's sequence numbers) and returns None.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import threading
import time
from collections.abc import Coroutine, Sequence
from typing import Any, TypeVar
from urllib.parse import parse_qs, unquote, urlsplit

from rstream import (ConsumerOffsetSpecification, OffsetNotFound, OffsetType, Consumer, Producer, ServerError,
                     StreamDoesNotExist)
from rstream import exceptions as rstream_errors

from hubsched.secrets import url_mask
from streams.log import (Log, LogError, Reader, Record, Retention, Start, Stats, consumer_name_check,
                         fill_percent, ms_time, stream_name_check)

logger = logging.getLogger(__name__)
T = TypeVar("T")

TIMEOUT_S = 30.0  # a call that takes longer fails (LogError, not permanent): the caller retries or stops
STATS_WAIT_S = 1.0  # how long stats waits for the first record before calling a stream empty
FRAME_OVERHEAD = 13  # Publish frame: size, key, version, publisher id, message count
RECORD_OVERHEAD = 12  # per message: publishing id, data size
# a reader keeps up to this much delivered and not yet read before it stops granting credit
READER_BUFFER_RECORDS = 10_000
READER_BUFFER_BYTES = 32 * 1024 * 1024

_PERMANENT = (rstream_errors.AuthenticationFailure, rstream_errors.VirtualHostAccessFailure,
              rstream_errors.AccessRefused, rstream_errors.PreconditionFailed, rstream_errors.FrameTooLarge,
              rstream_errors.SASLMechanismNotSupported, rstream_errors.SASLError)


class RabbitMQLog(Log):
    """The log at ``rabbitmq-stream://user:password@host:port/[vhost][?frame_max=N&segment_bytes=N]``."""

    def __init__(self, url: str, *, retention: Retention) -> None:
        parts = urlsplit(url)
        if parts.scheme != "rabbitmq-stream" or not parts.hostname:
            raise LogError(f"RabbitMQ log URL {url_mask(url)}: expected rabbitmq-stream://user:password@host:port/",
                           permanent=True)
        query = parse_qs(parts.query)
        try:
            self._frame_max = int(query.get("frame_max", [1024 * 1024])[0])
            segment = query.get("segment_bytes", [None])[0]
            self._segment_bytes = int(segment) if segment else None
            port = parts.port or 5552
        except ValueError as exc:
            raise LogError(f"RabbitMQ log URL {url_mask(url)}: {exc}", permanent=True) from None
        vhost = unquote(parts.path[1:]) if len(parts.path) > 1 else "/"
        self._address = url_mask(url)
        self._connect = dict(host=parts.hostname, port=port, vhost=vhost, username=unquote(parts.username or "guest"),
                             password=unquote(parts.password or "guest"), frame_max=self._frame_max)
        self.retention = retention
        self._declared: set[str] = set()
        self._producer: Producer | None = None
        self._admin: Consumer | None = None
        self._closed = False
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="streams-rabbitmq", daemon=True)
        self._thread.start()

    # --- the facade -----------------------------------------------------------------------------
    def _run(self, coro: Coroutine[Any, Any, T], action: str, timeout: float = TIMEOUT_S) -> T:
        if self._closed:
            coro.close()
            raise LogError(f"RabbitMQ log {self._address}: closed", permanent=True)
        future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            return future.result(timeout)
        except LogError:
            raise
        except TimeoutError:
            future.cancel()
            raise LogError(f"RabbitMQ log {self._address}: {action}: no answer within {timeout:g} s") from None
        except _PERMANENT as exc:
            raise LogError(f"RabbitMQ log {self._address}: {action}: {type(exc).__name__}", permanent=True) from None
        except (ServerError, rstream_errors.ClientError, OSError, ConnectionError, asyncio.TimeoutError) as exc:
            raise LogError(f"RabbitMQ log {self._address}: {action}: {type(exc).__name__} {exc}") from None

    def _client(self, cls, name: str):
        return cls(**self._connect, connection_name=name)

    async def _producer_get(self) -> Producer:
        if self._producer is None:
            producer = self._client(Producer, "hubsched-log-producer")
            await producer.start()
            self._producer = producer
        return self._producer

    async def _admin_get(self) -> Consumer:
        if self._admin is None:
            admin = self._client(Consumer, "hubsched-log-offsets")
            await admin.start()
            self._admin = admin
        return self._admin

    async def _declare(self, stream: str) -> None:
        """Create the stream with this log's retention, once per process; an existing one is kept as it is."""
        if stream in self._declared:
            return
        arguments: dict[str, Any] = {}
        if self.retention.max_age_s > 0:
            arguments["max-age"] = f"{max(1, int(self.retention.max_age_s))}s"
        if self.retention.max_bytes > 0:
            arguments["max-length-bytes"] = int(self.retention.max_bytes)
        if self._segment_bytes:
            arguments["stream-max-segment-size-bytes"] = self._segment_bytes
        producer = await self._producer_get()
        try:
            await producer.create_stream(stream, arguments=arguments, exists_ok=True)
        except rstream_errors.PreconditionFailed:
            # the stream exists with other arguments (HUBSCHED_LOG_RETENTION_* changed since it was made): it is
            # used as it is; its retention changes only by a policy (docs/streams.md)
            logger.warning("log: stream %s exists with another retention than %s; it keeps its own (change it with "
                           "a RabbitMQ policy)", stream, arguments)
        self._declared.add(stream)

    # --- writing --------------------------------------------------------------------------------
    def append(self, stream: str, bodies: Sequence[bytes], *, timeout: float | None = None) -> None:
        stream_name_check(stream)
        if not bodies:
            return None
        self._run(self._append(stream, bodies), f"append to {stream}", TIMEOUT_S if timeout is None else timeout)
        return None

    async def _append(self, stream: str, bodies: Sequence[bytes]) -> None:
        try:
            await self._append_declared(stream, bodies)
        except StreamDoesNotExist:
            # deleted since we declared it (its virtual host made again, a policy, an operator): the next try
            # declares it again instead of failing until the process restarts
            self._declared.discard(stream)
            raise LogError(f"RabbitMQ log {self._address}: append to {stream}: the stream is gone; it is declared "
                           "again on the next try") from None

    async def _append_declared(self, stream: str, bodies: Sequence[bytes]) -> None:
        await self._declare(stream)
        producer = await self._producer_get()
        loop = asyncio.get_running_loop()
        limit = self._frame_max - FRAME_OVERHEAD
        waits: list[asyncio.Future] = []
        frame: list[bytes] = []
        size = 0

        async def send(batch: list[bytes]) -> None:
            done = loop.create_future()
            left = [len(batch)]

            def confirmed(status) -> None:
                if done.done():
                    return
                if not status.is_confirmed:
                    done.set_exception(LogError(f"RabbitMQ log {self._address}: {stream} refused a record "
                                                f"(response code {status.response_code})"))
                    return
                left[0] -= 1
                if not left[0]:
                    done.set_result(None)

            waits.append(done)
            if not await producer.send_batch(stream, batch, on_publish_confirm=confirmed):
                raise LogError(f"RabbitMQ log {self._address}: the producer is closing")

        for body in bodies:
            need = len(body) + RECORD_OVERHEAD
            if need > limit:
                raise LogError(f"RabbitMQ log: a record of {len(body)} bytes exceeds one frame ({self._frame_max} "
                               "bytes): raise stream.frame_max on the server and ?frame_max= on the URL",
                               permanent=True)
            if size + need > limit:
                await send(frame)
                frame, size = [], 0
            frame.append(body)
            size += need
        await send(frame)
        await asyncio.gather(*waits)

    def retention_apply(self) -> int:
        return 0  # the server applies retention (module docstring)

    # --- reading --------------------------------------------------------------------------------
    def reader(self, stream: str, start: Start) -> Reader:
        stream_name_check(stream)
        reader = _RabbitMQReader(self, stream, start)
        self._run(reader._open(), f"opening a reader of {stream}")
        return reader

    def consumer_offset_store(self, stream: str, consumer: str, offset: int) -> None:
        stream_name_check(stream)
        consumer_name_check(consumer)
        self._run(self._offset_store(stream, consumer, int(offset)), f"storing the offset of {consumer} on {stream}")

    async def _offset_store(self, stream: str, consumer: str, offset: int) -> None:
        await self._declare(stream)
        admin = await self._admin_get()
        await admin.store_offset(stream, consumer, offset)
        # StoreOffset has no answer in the protocol: it is durable once the server answers it back
        deadline = time.monotonic() + TIMEOUT_S / 2
        while True:
            try:
                if await admin.query_offset(stream, consumer) == offset:
                    return
            except OffsetNotFound:
                pass
            if time.monotonic() > deadline:
                raise LogError(f"RabbitMQ log {self._address}: the offset of {consumer} on {stream} was not stored")
            await asyncio.sleep(0.005)

    def consumer_offset(self, stream: str, consumer: str) -> int | None:
        stream_name_check(stream)
        consumer_name_check(consumer)
        return self._run(self._offset(stream, consumer), f"reading the offset of {consumer} on {stream}")

    async def _offset(self, stream: str, consumer: str) -> int | None:
        admin = await self._admin_get()
        try:
            return await admin.query_offset(stream, consumer)
        except (OffsetNotFound, StreamDoesNotExist):
            return None

    def stats(self, stream: str) -> Stats:
        stream_name_check(stream)
        first, last = self._run(self._stats(stream), f"stats of {stream}")
        if first is None or last is None:
            return Stats(stream, None, None, 0, False, None, None, None, self.retention, 0.0)
        first_time = ms_time(first[1])
        return Stats(stream, first[0], last[0], last[0] - first[0] + 1, False, None, first_time, ms_time(last[1]),
                     self.retention, fill_percent(self.retention, first_time=first_time, bytes_kept=None))

    async def _stats(self, stream: str):
        await self._declare(stream)
        return await asyncio.gather(self._edge(stream, OffsetType.FIRST), self._edge(stream, OffsetType.LAST))

    async def _edge(self, stream: str, offset_type: OffsetType) -> tuple[int, int] | None:
        """(offset, timestamp ms) of the first record (FIRST) or of the last (LAST), or None when the
        stream shows none within STATS_WAIT_S.

        LAST delivers the last chunk whole; rstream 1.1.1 hands a chunk's records to the callback one
        after another without yielding to the loop, so a ``call_soon`` made at the first record runs
        after the chunk's last one (the contract test checks it against the last append)."""
        loop = asyncio.get_running_loop()
        found = loop.create_future()
        seen: list[tuple[int, int]] = []

        def take(message, context) -> None:
            if not seen:
                loop.call_soon(lambda: found.done() or found.set_result(max(seen)))
            seen.append((context.offset, context.timestamp))

        consumer = self._client(Consumer, "hubsched-log-stats")
        await consumer.start()
        try:
            await consumer.subscribe(stream, take, offset_specification=ConsumerOffsetSpecification(offset_type),
                                     initial_credit=1)
            try:
                result = await asyncio.wait_for(found, STATS_WAIT_S)
            except asyncio.TimeoutError:
                return None
            return min(seen) if offset_type is OffsetType.FIRST else result
        finally:
            await consumer.close()

    def stream_delete(self, stream: str) -> None:
        stream_name_check(stream)
        self._run(self._delete(stream), f"deleting {stream}")

    async def _delete(self, stream: str) -> None:
        producer = await self._producer_get()
        await producer.delete_stream(stream, missing_ok=True)
        self._declared.discard(stream)

    def close(self) -> None:
        if self._closed:
            return

        async def shut() -> None:
            for client in (self._producer, self._admin):
                if client is not None:
                    try:
                        await asyncio.wait_for(client.close(), 5)
                    except Exception:  # noqa: BLE001 - closing: nothing left to tell the caller
                        pass
            self._producer = self._admin = None
            # rstream's own tasks (recovery after a stream was deleted, listeners): ended here, not left pending
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        try:
            asyncio.run_coroutine_threadsafe(shut(), self._loop).result(10)
        except Exception:  # noqa: BLE001
            pass
        self._closed = True
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    def __repr__(self) -> str:
        return f"<RabbitMQLog {self._address}>"


class _RabbitMQReader(Reader):
    """A subscription of its own (one rstream Consumer: one connection) delivering into a buffer that
    ``read`` drains; past READER_BUFFER_* the delivery callback waits, so no credit is granted and the
    broker stops sending (rstream grants one credit per chunk handled)."""

    def __init__(self, log: RabbitMQLog, stream: str, start: Start) -> None:
        self._log, self.stream, self._start = log, stream, start
        self._buffer: collections.deque[tuple[int, int, bytes]] = collections.deque()
        self._bytes = 0
        self._cond = threading.Condition()
        self._room: asyncio.Event | None = None
        self._min_ts = start.time_ms  # time: the server starts at a chunk; records older than asked are skipped
        self._consumer: Consumer | None = None
        self._closed = False

    async def _open(self) -> None:
        await self._log._declare(self.stream)
        self._room = asyncio.Event()
        self._room.set()
        kind = self._start.kind
        spec = {"first": ConsumerOffsetSpecification(OffsetType.FIRST),
                "last": ConsumerOffsetSpecification(OffsetType.LAST),
                "next": ConsumerOffsetSpecification(OffsetType.NEXT),
                "offset": ConsumerOffsetSpecification(OffsetType.OFFSET, self._start.offset),
                "time": ConsumerOffsetSpecification(OffsetType.TIMESTAMP, self._start.time_ms)}[kind]
        consumer = self._log._client(Consumer, "hubsched-log-reader")
        await consumer.start()
        try:
            await consumer.subscribe(self.stream, self._deliver, offset_specification=spec, initial_credit=2)
        except BaseException:
            await consumer.close()
            raise
        self._consumer = consumer

    async def _deliver(self, message: bytes, context) -> None:
        if self._min_ts is not None:
            if context.timestamp < self._min_ts:
                return
            self._min_ts = None
        with self._cond:
            self._buffer.append((context.offset, context.timestamp, message))
            self._bytes += len(message)
            full = len(self._buffer) >= READER_BUFFER_RECORDS or self._bytes >= READER_BUFFER_BYTES
            if full:
                self._room.clear()
            self._cond.notify()
        if full:
            await self._room.wait()

    def read(self, *, max_records: int = 1000, timeout: float = 0.0) -> list[Record]:
        if self._closed:
            raise LogError(f"reader of {self.stream}: closed", permanent=True)
        with self._cond:
            if not self._buffer and timeout > 0:
                self._cond.wait_for(lambda: self._buffer, timeout)
            out = []
            while self._buffer and len(out) < max_records:
                offset, ts, body = self._buffer.popleft()
                self._bytes -= len(body)
                out.append(Record(offset, ms_time(ts), body))
            if not self._room.is_set() and len(self._buffer) < READER_BUFFER_RECORDS // 2 \
                    and self._bytes < READER_BUFFER_BYTES // 2:
                self._log._loop.call_soon_threadsafe(self._room.set)
        return out

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        consumer, self._consumer = self._consumer, None
        if consumer is None or self._log._closed:
            return

        async def shut() -> None:
            self._room.set()
            await asyncio.wait_for(consumer.close(), 5)

        try:
            asyncio.run_coroutine_threadsafe(shut(), self._log._loop).result(10)
        except Exception:  # noqa: BLE001 - closing: the connection goes with the loop at worst
            pass
