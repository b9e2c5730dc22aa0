"""The hub protocol v1 client: one persistent, pipelined WebSocket connection per hub.

How it works (details in docs/hub-client.md):
- `HubClient` connects lazily on the first call and keeps the connection open.
- Requests are sent from the caller's thread; a reader thread matches
  answers to pending calls by id (answers may come in any order) and hands `dataChange`
  notifications to subscription callbacks.
- Every call has a deadline; a module-wide sweeper thread fails calls made with
  `call_async` whose deadline passed, `call` enforces its own. A late answer to a
  forgotten id is dropped.
- When the connection drops, in-flight calls fail with code "connection"; the next call
  reconnects, no sooner than an exponential backoff with jitter allows.
- Every write on a connection (our requests, websocket-client's pongs and close frames) holds
  that connection's one write lock, ``ws.lock``, so no frame is ever written into another.
- `hub_client(url, key)` returns one shared client per (url, key) per process.
The API key goes on every request frame and nowhere else: not in logs, not in exceptions.
"""

from __future__ import annotations

import functools
import itertools
import json
import logging
import math
import os
import random
import re
import threading
import time
import weakref
from concurrent.futures import Future, InvalidStateError
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any, Callable

import orjson
import websocket
from websocket._abnf import frame_buffer

from hubsched.secrets import text_mask, url_mask


def _loads(frame: str | bytes) -> Any:
    """A frame's JSON. orjson (several times faster; a worker decodes 100,000 values a second at full
    load) for standard JSON, the standard library for what only it reads: NaN, Infinity and integers
    beyond 64 bits, which some hubs send. Raises ValueError for a frame that is not JSON."""
    try:
        return orjson.loads(frame)
    except orjson.JSONDecodeError:
        return json.loads(frame)

log = logging.getLogger(__name__)

# hub protocol v1: the methods a hub is assumed to have when getInfo itself is missing
ALL_METHODS = frozenset({
    "getInfo", "ping", "getEntities", "getParams", "getEntityParams",
    "setEntityParams", "subscribe", "unsubscribe",
})

# methods whose params hold only names (entity ids, keys): encoded with orjson, which has no NaN check
_PLAIN_PARAMS = frozenset({"getInfo", "ping", "getEntities", "getParams", "getEntityParams", "unsubscribe"})

# Retrying cannot help with these: the request itself or the configuration is wrong.
PERMANENT_CODES = frozenset({401, 403, 404, 422, -32700, -32600, -32601, -32602})
# hub protocol v1: 429 and 503 say "retry later"; -32603 is the hub's own failure.
TRANSIENT_CODES = frozenset({429, 503, -32603})


_LEADING_CODE = re.compile(r"\s*(-?\d{1,6})(?![\w.])")


def _error_code(code) -> int | str:
    """An error's ``code`` as the integer it states (``401``, ``"401"``, ``401.0``), else ``"protocol"``."""
    if isinstance(code, bool):
        return "protocol"
    if isinstance(code, int):
        return code
    if isinstance(code, float) and code.is_integer():
        return int(code)
    if isinstance(code, str):
        match = _LEADING_CODE.fullmatch(code.strip())
        if match:
            return int(match.group(1))
    return "protocol"


def is_permanent(code: int | str | None) -> bool:
    """Whether retrying a call that failed with `code` cannot succeed."""
    if code in PERMANENT_CODES:
        return True
    if code in TRANSIENT_CODES or not isinstance(code, int) or isinstance(code, bool):
        return False
    return 400 <= code < 500 and code != 408


class HubError(Exception):
    """A call to a hub failed.

    `code` is the hub's error code (401, 404, 422, 429, 503, -32601, ...) or one of the
    client's own: "timeout" (no answer in time), "connection" (cannot connect, or the
    connection dropped), "protocol" (the hub answered something the contract does not allow).
    `permanent` says retrying will not help (401/403/404/422/-32601/-32602); `data` is the
    error's `data` object. The message never contains the API key.
    """

    def __init__(self, message: str, code: int | str | None = None, permanent: bool = False, data: dict | None = None):
        super().__init__(message)
        self.message = message
        self.code = code
        self.permanent = permanent
        self.data = data

    def __str__(self) -> str:
        return self.message if self.code is None else f"{self.message} [{self.code}]"

    def __repr__(self) -> str:
        return f"HubError({self.message!r}, code={self.code!r}, permanent={self.permanent})"

    def __reduce__(self):
        # Celery pickles exceptions; the default reduce would lose the keyword fields.
        return (HubError, (self.message, self.code, self.permanent, self.data))


class _MaskKeys:
    """WebSocket masking keys (RFC 6455 section 5.3: fresh for every frame, from a strong source of
    entropy) drawn from ``os.urandom`` 4 KiB at a time. websocket-client calls ``os.urandom(4)`` for
    each frame, and a system call costs tens of microseconds on a virtual machine."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pool = b""
        self._at = 0

    def __call__(self, length: int) -> bytes:
        with self._lock:
            if self._at + length > len(self._pool):
                self._pool, self._at = os.urandom(max(4096, length)), 0
            key = self._pool[self._at : self._at + length]
            self._at += length
        return key

    def forget(self) -> None:
        """After a fork: the child must not use the keys its parent goes on using."""
        self._lock = threading.Lock()
        self._pool, self._at = b"", 0


_MASK_KEYS = _MaskKeys()


DEFAULT_MAX_FRAME_BYTES = 16 * 1024 * 1024  # the setting HUBSCHED_HUB_MAX_FRAME_BYTES's default
STATUS_MESSAGE_TOO_BIG = 1009  # RFC 6455 7.4.1


class FrameTooLarge(websocket.WebSocketProtocolException):
    """A hub announced a frame (or a fragmented message) larger than the client's limit; raised from
    the frame header, before the payload is read."""

    def __init__(self, announced: int, limit: int):
        super().__init__(f"the hub announced a message of {announced} bytes, over this hub's limit of {limit} bytes "
                         f"(max_frame_bytes, HUBSCHED_HUB_MAX_FRAME_BYTES)")
        self.announced, self.limit = announced, limit


class _BoundedFrames(frame_buffer):
    """websocket-client's frame parser, refusing a message larger than ``limit`` bytes from its length field.

    websocket-client reads a frame as header, length, mask, then ``recv_strict(length)``, which
    buffers the whole payload however large the length says it is. The length is checked as soon as
    it is read (``recv_length``), so at most one socket read (16 KiB) of an oversized payload is
    ever taken in. Continuation frames count toward their message's total; control frames
    (close, ping, pong) may carry 125 bytes (RFC 6455 5.5). This uses websocket-client internals
    (``frame_buffer.recv_length``, ``header``; 1.9): a newer version's tests here say if they moved.
    """

    def __init__(self, recv_fn, skip_utf8_validation: bool, limit: int):
        super().__init__(recv_fn, skip_utf8_validation)
        self.limit = limit
        self.message_bytes = 0  # payload of the current message's earlier fragments
        self._total = 0

    def recv_length(self) -> None:
        super().recv_length()
        fin, opcode = self.header[0], self.header[4]
        if opcode >= websocket.ABNF.OPCODE_CLOSE:
            if self.length > 125:
                raise FrameTooLarge(self.length, 125)
            return
        total = self.length + (self.message_bytes if opcode == websocket.ABNF.OPCODE_CONT else 0)
        if total > self.limit:
            raise FrameTooLarge(total, self.limit)
        self._total = total

    def recv_frame(self):
        frame = super().recv_frame()
        if frame.opcode < websocket.ABNF.OPCODE_CLOSE:
            self.message_bytes = 0 if frame.fin else self._total
        return frame


# RFC 6455 7.4.1 and the IANA registry: what a hub's close code means, for the error a call gets
CLOSE_CODES = {
    1000: "normal closure", 1001: "going away", 1002: "protocol error", 1003: "unsupported data",
    1007: "invalid frame payload data", 1008: "policy violation", 1009: "message too big",
    1010: "mandatory extension", 1011: "internal error", 1012: "service restart", 1013: "try again later",
    1014: "bad gateway",
}


def close_description(payload: bytes) -> str:
    """A close frame's payload (RFC 6455 5.5.1: a 2-byte status code, then a UTF-8 reason) in words:
    ``"closed by the hub with 1001 (going away): restarting"``."""
    if len(payload) < 2:
        return "closed by the hub without a close code"
    code = int.from_bytes(payload[:2], "big")
    reason = payload[2:].decode("utf-8", "replace")
    text = f"closed by the hub with {code} ({CLOSE_CODES.get(code, 'unknown close code')})"
    return f"{text}: {reason}" if reason else text


class _Connection(websocket.WebSocket):
    """websocket-client's WebSocket, reading the socket in chunks of at least ``read_size`` bytes,
    and refusing messages over ``max_message_bytes`` (``_BoundedFrames``).

    Every write takes ``self.lock``, websocket-client's own send lock, which its pong (answering a
    hub's ping, on the reader thread, inside ``recv_data_frame``) and close frames take too:
    ``send_raw`` writes our pre-built request frames under it. Two locks would let a pong land inside a
    large request frame, which a hub sees as a corrupt frame (invalid UTF-8) and drops the connection.
    ``hub_close`` keeps the payload of the close frame the hub sent, if it sent one.

    The frame parser asks for exactly what it needs next (a 2-byte header, a length, a payload),
    which is one ``recv`` system call each, three per answer; it keeps what a read brings beyond
    that for the next frame, so one large read serves many answers.
    """

    read_size = 16384

    def __init__(self, *args, max_message_bytes: int = DEFAULT_MAX_FRAME_BYTES, **kwargs) -> None:
        super().__init__(*args, get_mask_key=_MASK_KEYS, **kwargs)
        self.frame_buffer = _BoundedFrames(self._recv, kwargs.get("skip_utf8_validation", False), max_message_bytes)
        self.hub_close: bytes | None = None

    def send_raw(self, data: bytes) -> None:
        """Write ready frames (``ws_frame``) whole, under the connection's one write lock."""
        with self.lock:
            self.sock.sendall(data)

    def recv_frame(self):
        frame = self.frame_buffer.recv_frame()
        if frame.opcode == websocket.ABNF.OPCODE_CLOSE:
            self.hub_close = frame.data  # before websocket-client answers it, which may fail
        return frame

    def _recv(self, bufsize: int) -> bytes:
        return websocket._socket.recv(self.sock, max(bufsize, self.read_size))

    def recv_message(self) -> tuple[int, bytes]:
        """The next text or binary message as ``(opcode, payload bytes)``: no decoding to str (orjson
        reads UTF-8 bytes, and checks them). ``(OPCODE_CLOSE, ...)`` when the hub closed."""
        with self.readlock:
            opcode, data = self.recv_data()
        return opcode, data if isinstance(data, bytes) else data.encode()


def ws_frame(text: str) -> bytes:
    """One masked text frame (RFC 6455) of ``text``, as a client sends it."""
    frame = websocket.ABNF.create_frame(text, websocket.ABNF.OPCODE_TEXT)
    frame.get_mask_key = _MASK_KEYS
    return frame.format()


class _Pending:
    __slots__ = ("future", "deadline", "method", "on_result")

    def __init__(self, future: Future, deadline: float, method: str, on_result: Callable | None):
        self.future, self.deadline, self.method, self.on_result = future, deadline, method, on_result


def _settle(future: Future, *, result=None, error: BaseException | None = None) -> None:
    try:
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)
    except InvalidStateError:  # the caller cancelled it
        pass


class _Sweeper:
    """One thread per process that fails overdue calls of every client (pending calls are
    bounded by max_in_flight, so a sweep is cheap)."""

    interval = 0.05

    def __init__(self):
        self._clients: weakref.WeakSet[HubClient] = weakref.WeakSet()
        self._wake = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def watch(self, client: "HubClient") -> None:
        if client not in self._clients:
            with self._lock:
                self._clients.add(client)
        if self._thread is None:
            with self._lock:
                if self._thread is None:
                    self._thread = threading.Thread(target=self._run, name="hub-client-sweeper", daemon=True)
                    self._thread.start()
        self._wake.set()

    def _run(self) -> None:
        while True:
            self._wake.wait()
            self._wake.clear()
            time.sleep(self.interval)
            busy = False
            with self._lock:
                clients = list(self._clients)
            for client in clients:
                try:
                    busy |= client._expire_due()
                except Exception:  # never let one client stop the sweeps of others
                    log.exception("hub client sweep failed")
            if busy:
                self._wake.set()


_SWEEPER = _Sweeper()
_CLIENTS: "weakref.WeakSet[HubClient]" = weakref.WeakSet()


class HubClient:
    """A client for one hub (hub protocol v1) over one persistent WebSocket connection.

    `url` is the hub's endpoint (ws:// or wss://, path included), `key` its API key.
    `timeout` (seconds) is the default per-call deadline, counted from the call, connecting
    included. At most `max_in_flight` calls wait for answers at once; more wait for a slot
    within their deadline. `connect_timeout` (seconds, default `timeout`) bounds one
    connection attempt. A message from the hub larger than `max_frame_bytes` (bytes, the
    fragments of one message together) is refused from its frame header, before its payload is
    read: the connection is closed with 1009 and its pending calls fail with a "connection"
    HubError naming the limit; the next call reconnects. Messages and logs name the hub by
    `hubsched.secrets.url_mask(url)`, never the URL's password or secret query values.
    Thread-safe; use as a context manager or `close()` it.
    """

    backoff_base = 0.2   # seconds before the first reconnect attempt after a failure
    backoff_cap = 30.0   # seconds, the longest wait between attempts
    io_timeout = 30.0    # seconds a blocked send may take before the connection counts as dead

    def __init__(self, url: str, key: str, *, timeout: float = 5.0, max_in_flight: int = 32,
                 connect_timeout: float | None = None, max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES):
        if max_in_flight < 1:
            raise ValueError("max_in_flight must be at least 1")
        if max_frame_bytes < 1:
            raise ValueError("max_frame_bytes must be at least 1")
        self.max_frame_bytes = max_frame_bytes
        self.url = url
        self._shown = url_mask(url)  # what messages and logs name: no user:password@, no ?token=
        self._key = key
        self.timeout = timeout
        self.max_in_flight = max_in_flight
        self.connect_timeout = connect_timeout if connect_timeout is not None else timeout
        self._closed = False
        self._ids = itertools.count(1)
        self._init_runtime()
        _CLIENTS.add(self)

    def _init_runtime(self) -> None:
        self._lock = threading.Lock()          # guards _ws, _pending, _subs, _methods
        self._connect_lock = threading.Lock()  # one connection attempt at a time
        self._slots = threading.BoundedSemaphore(self.max_in_flight)
        self._ws: websocket.WebSocket | None = None
        self._pending: dict[int, _Pending] = {}
        self._subs: dict[str, tuple[Callable, Callable | None]] = {}
        self._late_subscribes: set[int] = set()
        self._methods: frozenset[str] | None = None
        self._failures = 0
        self._retry_at = 0.0
        self._last_error = ""

    def __repr__(self) -> str:
        return f"<HubClient {self._shown}>"

    def __enter__(self) -> "HubClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- redaction

    def _redact(self, text: str) -> str:
        """``text`` with the key masked where it stands as a whole word (``text_mask``: a key ``pump1`` leaves
        ``plant/line1/pump12`` alone), and every URL in it (the hub's may hold a password or a token) masked."""
        text = text_mask(text, secrets=(self._key,) if self._key else ())
        return text.replace(self.url, self._shown) if self._shown != self.url else text

    def _redact_data(self, data):
        if isinstance(data, str):
            return self._redact(data)
        if isinstance(data, dict):
            return {k: self._redact_data(v) for k, v in data.items()}
        if isinstance(data, list):
            return [self._redact_data(v) for v in data]
        return data

    # -- calls

    def call(self, method: str, params: dict | None = None, *, timeout: float | None = None) -> dict:
        """Send one request and wait for its answer; returns the answer's `result`.

        Raises HubError: the hub's error (code, permanent, data), "timeout" after `timeout`
        seconds (default the client's), "connection", or "protocol".
        """
        return self._wait(self._submit(method, params, self.timeout if timeout is None else timeout))

    def _wait(self, future: Future):
        """The future's result by its deadline; past it, the call is failed with "timeout"."""
        try:
            return future.result(max(0.0, future.hub_deadline - time.monotonic()))
        except FutureTimeout:
            self._expire(future.hub_id)
            return future.result(0)

    def call_async(self, method: str, params: dict | None = None, *, timeout: float | None = None) -> Future:
        """Send one request without waiting (pipelining: many calls share the connection).

        Returns a Future whose result is the answer's `result`, or whose exception is a
        HubError as for `call`; it fails with "timeout" once `timeout` seconds have passed.
        Blocks only while all `max_in_flight` slots are taken, or while connecting.
        """
        return self._submit(method, params, self.timeout if timeout is None else timeout)

    def call_many_async(self, calls: list[tuple[str, dict | None]], *, timeout: float | None = None) -> list[Future]:
        """``call_async`` for each ``(method, params)``, in order, with their frames written together.

        The requests that fit in the free in-flight slots go out in one socket write (one system
        call for a whole batch of reads, instead of one per request); the rest, as slots free up.
        Returns one Future per call, as ``call_async`` does.
        """
        timeout = self.timeout if timeout is None else timeout
        deadline = time.monotonic() + timeout
        futures: list[Future] = []
        requests: list[tuple[Future, str, dict | None]] = []
        for method, params in calls:
            future: Future = Future()
            future.hub_deadline, future.hub_id = deadline, None
            futures.append(future)
            requests.append((future, method, params))
        while requests:
            try:
                sent = self._send_requests(requests, deadline)
            except HubError as exc:
                for future, _, _ in requests:
                    _settle(future, error=exc)
                break
            requests = requests[sent:]
        return futures

    def _submit(self, method: str, params: dict | None, timeout: float, on_result: Callable | None = None) -> Future:
        future: Future = Future()
        future.hub_deadline = deadline = time.monotonic() + timeout
        future.hub_id = None
        try:
            self._send_requests([(future, method, params)], deadline, on_result)
        except HubError as exc:
            _settle(future, error=exc)
        return future

    def _send_requests(self, requests: list[tuple[Future, str, dict | None]], deadline: float,
                       on_result: Callable | None = None) -> int:
        """Send the first of ``requests`` (waiting for a slot until ``deadline``) and as many more as
        there are free slots, in one write; returns how many were sent. A request that cannot be
        encoded fails its own Future and counts as sent. Raises HubError when none could go."""
        method = requests[0][1]
        if self._closed:
            raise HubError(f"{method}: the client is closed", "connection")
        if not self._slots.acquire(timeout=max(0.0, deadline - time.monotonic())):
            raise HubError(f"{method}: {self.max_in_flight} calls already in flight to {self._shown}", "timeout")
        slots = 1
        while slots < len(requests) and self._slots.acquire(blocking=False):
            slots += 1
        registered: list[int] = []
        try:
            ws = self._ensure_connected(deadline, method)
            frames = []
            batch = []
            for future, method, params in requests[:slots]:
                rid = next(self._ids)
                try:
                    frame = self._encode(rid, method, params)
                except HubError as exc:
                    _settle(future, error=exc)
                    continue
                frames.append(frame)
                batch.append((rid, future, method))
            with self._lock:
                if self._ws is not ws:
                    raise HubError(f"{method}: connection to {self._shown} lost", "connection")
                for rid, future, method in batch:
                    self._pending[rid] = _Pending(future, deadline, method, on_result)
                    future.hub_id = rid
                    registered.append(rid)
            if batch:
                _SWEEPER.watch(self)
                data = b"".join(ws_frame(frame) for frame in frames)
                try:
                    ws.send_raw(data)  # under ws.lock, as websocket-client's pongs are
                except Exception as exc:
                    self._connection_lost(ws, exc)
        finally:
            for _ in range(slots - len(registered)):
                self._slots.release()
        return slots

    def _encode(self, rid: int, method: str, params: dict | None) -> str:
        """The request frame's JSON (hub protocol v1: ``id``, ``key``, ``method``, ``params``).

        Requests that carry values are encoded strictly (NaN and infinities are not JSON: a
        HubError, not a silent ``null`` written to a hub); reads, with orjson.
        """
        request = {"id": rid, "key": self._key, "method": method}
        if params:
            request["params"] = params
        try:
            if method in _PLAIN_PARAMS:
                try:
                    return orjson.dumps(request).decode()
                except TypeError:
                    pass  # not what orjson takes; the standard encoder says why
            return json.dumps(request, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise HubError(f"{method}: params are not JSON: {self._redact(str(exc))}", "protocol", permanent=True) from None

    def _take(self, rid) -> _Pending | None:
        """Remove a pending call (exactly once) and free its slot."""
        with self._lock:
            pending = self._pending.pop(rid, None)
        if pending is not None:
            self._slots.release()
        return pending

    def _expire(self, rid) -> None:
        pending = self._take(rid)
        if pending is not None:
            if pending.method == "subscribe":
                self._late_subscribes.add(rid)  # unsubscribe if its answer turns up after all
            _settle(pending.future, error=HubError(f"{pending.method}: no answer from {self._shown} in time", "timeout"))

    def _expire_due(self) -> bool:
        """Fail overdue calls; returns whether calls are still pending."""
        now = time.monotonic()
        with self._lock:
            due = [rid for rid, p in self._pending.items() if p.deadline <= now]
            busy = len(self._pending) > len(due)
        for rid in due:
            self._expire(rid)
        return busy

    # -- connection

    def _ensure_connected(self, deadline: float, method: str) -> websocket.WebSocket:
        # After os.fork() the child's clients were already reset (see _after_fork_in_child).
        ws = self._ws
        if ws is not None:
            return ws
        if not self._connect_lock.acquire(timeout=max(0.0, deadline - time.monotonic())):
            raise HubError(f"{method}: timed out waiting to connect to {self._shown}", "timeout")
        try:
            if self._ws is not None:
                return self._ws
            wait = self._retry_at - time.monotonic()
            if wait > 0:
                if wait >= deadline - time.monotonic():
                    # A down hub fails fast instead of holding the caller past its deadline.
                    raise HubError(f"{method}: hub {self._shown} unreachable ({self._last_error}); "
                                   f"next attempt in {wait:.1f}s", "connection")
                time.sleep(wait)
            attempt = min(self.connect_timeout, max(0.05, deadline - time.monotonic()))
            try:
                ws = websocket.create_connection(self.url, timeout=attempt, enable_multithread=True, skip_utf8_validation=True,
                                                 class_=functools.partial(_Connection, max_message_bytes=self.max_frame_bytes))
            except Exception as exc:
                self._failures += 1
                self._retry_at = time.monotonic() + self._backoff()
                self._last_error = self._redact(f"{type(exc).__name__}: {exc}")
                log.warning("cannot connect to hub %s: %s (attempt %d)", self._shown, self._last_error, self._failures)
                raise HubError(f"{method}: cannot connect to hub {self._shown}: {self._last_error}", "connection") from None
            ws.settimeout(self.io_timeout)
            with self._lock:
                self._ws = ws
            threading.Thread(target=self._read_loop, args=(ws,), name=f"hub-reader {self._shown}", daemon=True).start()
            log.info("connected to hub %s", self._shown)
            return ws
        finally:
            self._connect_lock.release()

    def _backoff(self) -> float:
        # exponential backoff with "equal jitter": half fixed, half random
        delay = min(self.backoff_cap, self.backoff_base * 2 ** min(self._failures - 1, 30))
        return delay * random.uniform(0.5, 1.0)

    def _connection_lost(self, ws: websocket.WebSocket, exc: BaseException | None) -> None:
        with self._lock:
            if self._ws is not ws:
                return
            self._ws = None
            pending, self._pending = self._pending, {}
            subs, self._subs = self._subs, {}
            self._methods = None
            self._failures += 1
            self._retry_at = time.monotonic() + self._backoff()
            hub_close = getattr(ws, "hub_close", None)  # the hub's close code and reason say why
            if hub_close is not None:
                self._last_error = self._redact(close_description(hub_close))
            else:
                self._last_error = self._redact(f"{type(exc).__name__}: {exc}" if exc else "closed")
        try:
            # SHUT_RDWR first: a bare close() would neither wake the reader blocked in
            # recv() nor send the FIN while that recv() holds the socket.
            ws.abort()
            ws.shutdown()
        except Exception:
            pass
        if not self._closed:
            log.warning("connection to hub %s lost (%s); %d calls failed, %d subscriptions ended",
                        self._shown, self._last_error, len(pending), len(subs))
        for pending_call in pending.values():
            self._slots.release()
            _settle(pending_call.future, error=HubError(
                f"{pending_call.method}: connection to {self._shown} lost ({self._last_error})", "connection"))
        for sub_id, (_, on_end) in subs.items():
            if on_end is not None:
                try:
                    on_end(sub_id)
                except Exception:
                    log.exception("on_end callback of subscription %s on hub %s failed", sub_id, self._shown)

    def _read_loop(self, ws: websocket.WebSocket) -> None:
        while True:
            try:
                _opcode, frame = ws.recv_message()
            except websocket.WebSocketTimeoutException:
                if self._ws is not ws:
                    return
                continue  # idle; the frame parser keeps partial frames across timeouts
            except FrameTooLarge as exc:
                log.warning("hub %s: %s; closing the connection (1009)", self._shown, exc)
                try:
                    ws.send_close(STATUS_MESSAGE_TOO_BIG, b"message too big")  # takes ws.lock
                except Exception:
                    pass
                self._connection_lost(ws, exc)
                return
            except Exception as exc:
                self._connection_lost(ws, exc)
                return
            if not ws.connected:
                self._connection_lost(ws, None)
                return
            try:
                self._dispatch(frame)
            except Exception:
                log.exception("hub %s: failed to handle a frame; ignored", self._shown)

    def _dispatch(self, frame: bytes) -> None:
        try:
            msg = _loads(frame)
        except (ValueError, TypeError):
            log.warning("hub %s sent a frame that is not JSON (%d bytes); ignored", self._shown, len(frame))
            return
        if not isinstance(msg, dict):
            log.warning("hub %s sent a JSON %s instead of an object; ignored", self._shown, type(msg).__name__)
            return
        if "method" not in msg:
            self._answer(msg, len(frame))
        elif msg["method"] == "dataChange":
            self._notification(msg.get("params"))
        else:
            log.warning("hub %s sent an unexpected %r message; ignored", self._shown, msg["method"])

    def _answer(self, msg: dict, frame_bytes: int = 0) -> None:
        rid = msg.get("id")
        pending = self._take(rid) if isinstance(rid, int) and not isinstance(rid, bool) else None
        if pending is None:
            if rid in self._late_subscribes:
                self._late_subscribes.discard(rid)
                self._drop_late_subscription(msg.get("result"))
            else:
                log.info("hub %s answered unknown or forgotten id %r; dropped", self._shown, rid)
            return
        self._failures = 0
        if "error" in msg:
            error = self._error(msg["error"], pending.method)
        elif "result" in msg:
            error = None
            if pending.on_result is not None:
                try:
                    pending.on_result(msg["result"])
                except Exception as exc:
                    error = HubError(f"{pending.method}: {self._redact(str(exc))}", "protocol")
        else:
            error = HubError(f"{pending.method}: the answer has neither result nor error", "protocol")
        pending.future.hub_frame_bytes = frame_bytes  # bounds every value in it (groups.execution)
        _settle(pending.future, result=msg.get("result"), error=error)

    def _error(self, err, method: str) -> HubError:
        """The HubError of an answer's ``error``. A malformed one keeps the code it states, so a malformed 401
        is as permanent as a proper one: a numeric string (``"401"``) or an integral float reads as that
        integer, and so does a bare number or a string starting with one (``"401 wrong key"``) in place of
        the error object. Without a readable code it is ``"protocol"``, not permanent."""
        message = None
        if isinstance(err, dict):
            code, message = _error_code(err.get("code")), err.get("message")
        elif isinstance(err, str):
            match = _LEADING_CODE.match(err)
            code, message = (int(match.group(1)) if match else "protocol"), err
        else:
            code = _error_code(err)
        if not isinstance(err, dict):
            message = f"malformed error from the hub: {message}" if message else "malformed error from the hub"
        message = self._redact(message if isinstance(message, str) else "error without a message")
        data = err.get("data") if isinstance(err, dict) else None
        return HubError(f"{method}: {message}", code, is_permanent(code), self._redact_data(data) if isinstance(data, dict) else None)

    def _notification(self, params) -> None:
        if not isinstance(params, dict):
            log.warning("hub %s sent a dataChange without params; ignored", self._shown)
            return
        sub_id = params.get("subscription")
        entry = self._subs.get(sub_id) if isinstance(sub_id, str) else None
        if entry is None:
            log.debug("hub %s: dataChange for unknown or dropped subscription %r; ignored", self._shown, sub_id)
            return
        try:
            entry[0](params)
        except Exception:
            log.exception("callback of subscription %s on hub %s failed", sub_id, self._shown)

    def _drop_late_subscription(self, result) -> None:
        sub_id = result.get("subscription") if isinstance(result, dict) else None
        if isinstance(sub_id, str):
            self.call_async("unsubscribe", {"subscription": sub_id})

    def close(self) -> None:
        """Close the connection; pending calls fail with "connection". Idempotent."""
        self._closed = True
        ws = self._ws
        if ws is None:
            return
        try:
            ws.send_close()  # takes ws.lock
        except Exception:
            pass
        self._connection_lost(ws, None)

    def _forget_after_fork(self) -> None:
        # In a forked child the parent's socket and reader thread are not ours: drop our
        # descriptor without a close handshake (the parent's connection stays intact).
        ws = self._ws
        if ws is not None and ws.sock is not None:
            try:
                ws.sock.close()
            except Exception:
                pass
        self._init_runtime()

    # -- methods of hub protocol v1

    def _result(self, result, method: str, field: str, kind: type):
        if not isinstance(result, dict) or not isinstance(result.get(field), kind):
            raise HubError(f"{method}: the result has no {kind.__name__} {field!r}", "protocol")
        return result[field]

    def get_info(self) -> dict:
        """getInfo: `{"hub": name, "protocol": 1, "methods": [...], "time": ts}`."""
        result = self.call("getInfo")
        if not isinstance(result, dict):
            raise HubError("getInfo: the result is not an object", "protocol")
        return result

    def ping(self) -> dict:
        """ping: `{"time": ts}`, the hub's clock (RFC 3339 UTC); also keeps the connection alive."""
        result = self.call("ping")
        if not isinstance(result, dict):
            raise HubError("ping: the result is not an object", "protocol")
        return result

    def supported_methods(self) -> frozenset[str]:
        """The methods the hub supports, from getInfo (cached per connection).

        hub protocol v1: a hub without getInfo (-32601) is assumed to have every method.
        """
        methods = self._methods
        if methods is not None:
            return methods
        try:
            listed = self.get_info().get("methods")
        except HubError as exc:
            if exc.code != -32601:
                raise
            methods = ALL_METHODS
        else:
            if isinstance(listed, list) and all(isinstance(m, str) for m in listed):
                methods = frozenset(listed)
            else:
                log.warning("hub %s: getInfo has no usable method list; assuming all methods", self._shown)
                methods = ALL_METHODS
        self._methods = methods
        return methods

    def get_entities(self, parent: str | None = None, depth: int | None = None) -> list[dict]:
        """getEntities: `[{"id", "name", "type", "children": [...]}]` under `parent`
        (default: the roots), `depth` levels deep (default: all). Raises HubError (404 unknown parent)."""
        params = {k: v for k, v in (("parent", parent), ("depth", depth)) if v is not None}
        return self._result(self.call("getEntities", params), "getEntities", "entities", list)

    def get_params(self, entity: str) -> list[dict]:
        """getParams: `[{"key", "name", "type", "unit", "writable"}]`. Raises HubError (404 unknown entity)."""
        params = self._result(self.call("getParams", {"entity": entity}), "getParams", "params", list)
        return self._items(params, "getParams")

    def get_entity_params(self, entity: str, keys: list[str] | None = None) -> list[dict]:
        """Current values: `[{"key", "value", "ts", "quality"}]` (value any JSON value, ts RFC 3339
        UTC, quality good/uncertain/bad) for `keys` (default: all).

        hub protocol v1: a hub without getEntityParams (per getInfo) is read by subscribing
        with onChange false, taking the first dataChange, and unsubscribing.
        Raises HubError (404 unknown entity or key, "timeout", ...).
        """
        if "getEntityParams" in self.supported_methods():
            params = {"entity": entity} if keys is None else {"entity": entity, "keys": keys}
            values = self._result(self.call("getEntityParams", params), "getEntityParams", "values", list)
            return self._items(values, "getEntityParams")
        return self._values_via_subscribe(entity, keys)

    def _values_via_subscribe(self, entity: str, keys: list[str] | None) -> list[dict]:
        deadline = time.monotonic() + self.timeout
        if keys is None:
            keys = [p["key"] for p in self.get_params(entity)]
        if not keys:
            return []
        first: Future = Future()
        sub_id = self.subscribe(
            entity, keys, callback=lambda params: _settle(first, result=params) if not first.done() else None,
            period=max(0.1, min(1.0, self.timeout / 2)), on_change=False,
            timeout=math.ceil(self.timeout) + 1,  # the hub ends it even if our unsubscribe is lost
        )
        try:
            params = first.result(max(0.0, deadline - time.monotonic()))
        except FutureTimeout:
            raise HubError(f"subscribe: no dataChange from {self._shown} in time", "timeout") from None
        finally:
            try:
                self.unsubscribe(sub_id)
            except HubError as exc:
                log.info("hub %s: unsubscribe %s failed: %s", self._shown, sub_id, exc)
        values = params.get("values")
        if not isinstance(values, list):
            raise HubError("dataChange: no values list", "protocol")
        wanted = set(keys)
        return [v for v in self._items(values, "dataChange") if v["key"] in wanted]

    def _items(self, items: list, method: str) -> list[dict]:
        good = [item for item in items if isinstance(item, dict) and isinstance(item.get("key"), str)]
        if len(good) != len(items):
            log.warning("hub %s: %s returned %d malformed items; ignored", self._shown, method, len(items) - len(good))
        return good

    def set_entity_params(self, entity: str, values: dict) -> list[str]:
        """setEntityParams: write `{key: value}`; returns the written keys.

        hub protocol v1: all or nothing. Raises HubError 404 (unknown entity/key),
        403 (not writable), 422 (value does not fit the type), all permanent.
        """
        return self._result(self.call("setEntityParams", {"entity": entity, "values": values}),
                            "setEntityParams", "written", list)

    def subscribe(self, entity: str, keys: list[str], *, callback: Callable[[dict], None], period: float | None = None,
                  on_change: bool = True, timeout: float | None = None,
                  on_end: Callable[[str], None] | None = None) -> str:
        """subscribe: returns the subscription id.

        `callback(params)` gets each dataChange's params (`{"subscription", "entity", "values"}`)
        on the reader thread, so it must be quick. `period` (s): send every period;
        `on_change`: send on change; `timeout` (s): the hub ends it after this long.
        `on_end(subscription)` is called if the connection drops (the subscription ends with it).
        """
        params: dict = {"entity": entity, "keys": keys, "onChange": on_change}
        if period is not None:
            params["period"] = period
        if timeout is not None:
            params["timeout"] = timeout

        def register(result) -> None:
            # Registered by the reader before it reads the next frame, so the first
            # dataChange (which may follow the answer at once) finds its callback.
            sub_id = result.get("subscription") if isinstance(result, dict) else None
            if not isinstance(sub_id, str):
                raise ValueError("the result has no string 'subscription'")
            with self._lock:
                self._subs[sub_id] = (callback, on_end)

        return self._wait(self._submit("subscribe", params, self.timeout, on_result=register))["subscription"]

    def unsubscribe(self, subscription: str) -> None:
        """unsubscribe; notifications still in flight are ignored. A subscription the hub no
        longer knows (404: it timed out) counts as ended. Raises HubError otherwise."""
        with self._lock:
            known = self._subs.pop(subscription, None)
        if known is None and self._ws is None:
            return  # it ended with the connection
        try:
            self.call("unsubscribe", {"subscription": subscription})
        except HubError as exc:
            if exc.code != 404:
                raise


# -- process-wide pool

_POOL: dict[tuple[str, str], HubClient] = {}
_POOL_LOCK = threading.Lock()


def hub_client(url: str, key: str, *, timeout: float = 5.0, max_in_flight: int = 32,
               max_frame_bytes: int | None = None) -> HubClient:
    """The process's shared client for (url, key), created on first use.

    Connections live as long as the worker process and are shared by its threads. After
    os.fork() the child starts with an empty pool (it never reuses the parent's sockets).
    `timeout` and `max_in_flight` apply when the client is created; `max_frame_bytes` (bytes;
    None: the setting HUBSCHED_HUB_MAX_FRAME_BYTES, 16 MiB) to every connection made after the call.
    """
    if max_frame_bytes is None:
        max_frame_bytes = default_max_frame_bytes()
    with _POOL_LOCK:
        client = _POOL.get((url, key))
        if client is None or client._closed:
            client = _POOL[(url, key)] = HubClient(url, key, timeout=timeout, max_in_flight=max_in_flight,
                                                   max_frame_bytes=max_frame_bytes)
        elif client.max_frame_bytes != max_frame_bytes:
            client.max_frame_bytes = max_frame_bytes
        return client


def default_max_frame_bytes() -> int:
    """The setting HUBSCHED_HUB_MAX_FRAME_BYTES; 16 MiB outside Django (the reference hub's tools)."""
    try:
        from django.conf import settings

        return int(getattr(settings, "HUBSCHED_HUB_MAX_FRAME_BYTES", DEFAULT_MAX_FRAME_BYTES))
    except Exception:  # settings not configured
        return DEFAULT_MAX_FRAME_BYTES


def hub_clients_close_all() -> None:
    """Close every pooled client (e.g. at worker shutdown)."""
    with _POOL_LOCK:
        clients = list(_POOL.values())
        _POOL.clear()
    for client in clients:
        client.close()


def _after_fork_in_child() -> None:
    global _POOL_LOCK, _SWEEPER
    _POOL_LOCK = threading.Lock()
    _POOL.clear()
    _SWEEPER = _Sweeper()
    _MASK_KEYS.forget()
    for client in list(_CLIENTS):
        client._forget_after_fork()


os.register_at_fork(after_in_child=_after_fork_in_child)
