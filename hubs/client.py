"""The hub protocol v1 client: one persistent, pipelined WebSocket connection per hub.

How it works (details in docs/hub-client.md):
- `HubClient` connects lazily on the first call and keeps the connection open.
- ws://: requests are sent from the caller's thread; a reader thread matches
  answers to pending calls by id (answers may come in any order) and hands `dataChange`
  notifications to subscription callbacks.
- wss://: one I/O thread per connection does all reading and writing (`_TlsConnection`: a
  selector loop over the non-blocking TLS socket, a send queue and a wake-up socket pair), because
  an `SSLSocket` is not safe for a `recv` in one thread while another thread sends. TLS settings
  (CA bundle, client certificate and key, verification) are a `TlsOptions`.
- Every call has a deadline; a module-wide sweeper thread fails calls made with
  `call_async` whose deadline passed, `call` enforces its own. A late answer to a
  forgotten id is dropped.
- When the connection drops, in-flight calls fail with code "connection"; the next call
  reconnects, no sooner than an exponential backoff with jitter allows.
- No frame is ever written into another: on ws:// every write (our requests, websocket-client's pongs
  and close frames) holds that connection's one write lock, ``ws.lock``; on wss:// only the I/O thread
  writes, whole frames in queue order.
- `hub_client(url, key, tls=)` returns one shared client per (url, key, tls) per process.
The API key goes on every request frame and nowhere else: not in logs, not in exceptions; the TLS client
key goes to the TLS library only, through an in-memory file, never to disk, a log or a repr.
"""

from __future__ import annotations

import collections
import functools
import itertools
import json
import logging
import math
import os
import random
import re
import selectors
import socket
import ssl
import tempfile
import threading
import time
import weakref
from dataclasses import dataclass, field
from concurrent.futures import Future, InvalidStateError
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any, Callable

import orjson
import websocket
from websocket._abnf import frame_buffer

from hubsched.metrics.histogram import Histogram
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


# -- TLS (wss://)


@dataclass(frozen=True)
class TlsOptions:
    """How a wss:// connection checks the hub and shows itself (per hub: ``Hub.tls_options()``).

    ``ca_pem``: PEM text of the CA certificates to trust; empty: the system store (and, if set, the file in
    ``$WEBSOCKET_CLIENT_CA_BUNDLE``, which websocket-client read before this existed; OpenSSL reads
    ``$SSL_CERT_FILE``). ``cert_pem`` and ``key_pem``: the client certificate (chain) and its unencrypted
    private key, PEM, both or neither; the key never appears in a repr. ``verify``: check the hub's certificate
    chain and host name (off only for a test bench: every connection then logs a warning).
    Ignored for ws:// URLs. Hashable: the pool keys clients by it.
    """

    ca_pem: str = ""
    cert_pem: str = ""
    key_pem: str = field(default="", repr=False)
    verify: bool = True

    def context(self) -> ssl.SSLContext:
        """A client SSLContext (TLS 1.2 or later) of these options. Raises ValueError naming the part that is
        wrong (a CA bundle that does not load, a certificate and key that do not load or do not match)."""
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        if self.ca_pem.strip():
            try:
                context.load_verify_locations(cadata=self.ca_pem)
            except (ssl.SSLError, ValueError) as exc:
                raise ValueError(f"the TLS CA bundle does not load: {exc}") from None
        else:
            bundle = os.environ.get("WEBSOCKET_CLIENT_CA_BUNDLE", "")
            if bundle and os.path.isfile(bundle):
                context.load_verify_locations(cafile=bundle)
        if bool(self.cert_pem.strip()) != bool(self.key_pem.strip()):
            raise ValueError("a TLS client certificate needs its key, and a key its certificate")
        if self.cert_pem.strip():
            _load_cert_chain(context, self.cert_pem, self.key_pem)
        if not self.verify:
            context.check_hostname = False  # before verify_mode: ssl refuses CERT_NONE with host checks on
            context.verify_mode = ssl.CERT_NONE
        return context


def _load_cert_chain(context: ssl.SSLContext, cert_pem: str, key_pem: str) -> None:
    """``context.load_cert_chain`` from PEM texts. The ssl module reads a certificate and key only from files:
    they are handed over as memory files (Linux ``memfd``), else as files of a private temporary directory
    removed at once, so the key is never left on disk. Raises ValueError."""
    fds: list[int] = []
    try:
        if hasattr(os, "memfd_create"):
            paths = []
            for name, text in (("cert", cert_pem), ("key", key_pem)):
                fd = os.memfd_create(f"hubsched-tls-{name}", os.MFD_CLOEXEC)
                fds.append(fd)
                data = memoryview(text.encode())
                while data:
                    data = data[os.write(fd, data):]
                paths.append(f"/proc/self/fd/{fd}")
            context.load_cert_chain(paths[0], paths[1])
        else:
            with tempfile.TemporaryDirectory(prefix="hubsched-tls-") as directory:  # mode 0700
                cert_path, key_path = os.path.join(directory, "cert.pem"), os.path.join(directory, "key.pem")
                for path, text in ((cert_path, cert_pem), (key_path, key_pem)):
                    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                    with os.fdopen(fd, "w") as out:
                        out.write(text)
                context.load_cert_chain(cert_path, key_path)
    except (ssl.SSLError, ValueError, OSError) as exc:
        reason = getattr(exc, "reason", None) or type(exc).__name__
        raise ValueError(f"the TLS client certificate and key do not load together ({reason})") from None
    finally:
        for fd in fds:
            os.close(fd)


_OP_CONT, _OP_TEXT, _OP_BINARY = 0x0, 0x1, 0x2
_OP_CLOSE, _OP_PING, _OP_PONG = 0x8, 0x9, 0xA


def _client_frame(opcode: int, payload: bytes) -> bytes:
    """One masked client frame (RFC 6455 5.2) with FIN set."""
    frame = websocket.ABNF(1, 0, 0, 0, opcode, 1, payload)
    frame.get_mask_key = _MASK_KEYS
    return frame.format()


class _TlsConnection:
    """A wss:// connection served by one I/O thread, which alone reads and writes its TLS socket.

    ``SSLSocket`` is not safe for a ``recv`` in one thread while another sends: under load the reader saw
    ``b""`` and the connection dropped (issue 18: 3 to 7 rounds in 10-20 of 5,000 pipelined calls;
    websocket-client#1023). So callers never touch the socket: ``send_raw`` puts whole frames on a queue
    and wakes the thread through a socket pair; the thread runs a selector loop over the non-blocking TLS
    socket (handling ``SSLWantReadError`` / ``SSLWantWriteError`` on either side), parses the hub's frames
    itself, answers pings with pongs queued after the frames already queued (frames are never interleaved),
    and hands each text or binary message to ``on_message(payload bytes)``. When the connection ends it
    calls ``on_end(exc)`` once: ``exc`` None when the hub closed (``hub_close`` holds its close payload).

    The handshake is websocket-client's (``create_connection``); this takes over its socket afterwards.
    Messages over ``max_message_bytes`` (fragments summed; control frames over 125 bytes) are refused from
    the frame header (``FrameTooLarge``) and the connection closes with 1009. Output that makes no progress
    for ``io_timeout`` seconds counts as a dead connection.
    """

    chunk = 64 * 1024  # bytes per SSL write and read

    def __init__(self, ws: websocket.WebSocket, *, max_message_bytes: int, io_timeout: float, name: str):
        self.sock = ws.sock
        self.sock.setblocking(False)
        self.max_message_bytes, self.io_timeout, self.name = max_message_bytes, io_timeout, name
        self.connected = True
        self.hub_close: bytes | None = None
        self.lock = threading.Lock()          # guards _queue, _wake_pending, connected
        self._queue: collections.deque[bytes] = collections.deque()
        self._wake_pending = False
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._stopping = False
        self._out = b""          # the bytes being written, and how far
        self._out_at = 0
        self._retry_len = 0      # an SSL write that must be retried with exactly this many bytes
        self._in = bytearray()
        self._fragments: list[bytes] = []
        self._fragment_bytes = 0
        self._read_wants_write = False
        self._write_wants_read = False

    # -- any thread

    def send_raw(self, data: bytes) -> None:
        """Queue whole frames for the I/O thread. Raises WebSocketConnectionClosedException once closed."""
        with self.lock:
            if not self.connected or self._stopping:
                raise websocket.WebSocketConnectionClosedException("the connection is closed")
            self._queue.append(data)
            wake = not self._wake_pending
            self._wake_pending = True
        if wake:
            self._wake()

    def send_close(self, status: int = websocket.STATUS_NORMAL, reason: bytes = b"") -> None:
        self.send_raw(_client_frame(_OP_CLOSE, status.to_bytes(2, "big") + reason))

    def abort(self) -> None:
        """End the connection: the I/O thread writes what is queued if the socket takes it at once, then closes."""
        with self.lock:
            self._stopping = True
        self._wake()

    def shutdown(self) -> None:
        pass  # the I/O thread closes the socket when it stops

    def _wake(self) -> None:
        try:
            self._wake_w.send(b"\0")
        except (BlockingIOError, OSError):
            pass  # full: the thread is woken already; closed: it has stopped

    # -- the I/O thread

    def run(self, on_message: Callable[[bytes], None], on_end: Callable[[BaseException | None], None]) -> None:
        selector = selectors.DefaultSelector()
        error: BaseException | None = None
        try:
            selector.register(self.sock, selectors.EVENT_READ)
            selector.register(self._wake_r, selectors.EVENT_READ)
            watching = selectors.EVENT_READ
            last_progress = time.monotonic()
            while not self._stopping:
                if self._read(on_message):
                    break  # the hub closed
                if self._write() or not self._out:
                    last_progress = time.monotonic()
                elif time.monotonic() - last_progress > self.io_timeout:
                    raise TimeoutError(f"the hub took no data for {self.io_timeout:.0f}s")
                # a write that wants a read (renegotiation) waits for readability, not writability: no spin
                writing = self._out and not self._write_wants_read
                want = selectors.EVENT_READ | (selectors.EVENT_WRITE if (writing or self._read_wants_write) else 0)
                if want != watching:
                    selector.modify(self.sock, want)
                    watching = want
                if self._queue and not self._out:
                    continue  # queued while we wrote: take it now
                for key, _ in selector.select(timeout=1.0):
                    if key.fileobj is self._wake_r:
                        self._drain_wake()
        except FrameTooLarge as exc:
            log.warning("hub %s: %s; closing the connection (1009)", self.name, exc)
            self._close_with(STATUS_MESSAGE_TOO_BIG, b"message too big")
            error = exc
        except BaseException as exc:  # noqa: BLE001 (the connection's end, whatever ended it, goes to on_end)
            error = exc
        finally:
            self._finish(selector)
        if self.hub_close is not None and not isinstance(error, FrameTooLarge):
            error = None  # the hub closed: its close code and reason say why (hub_close)
        on_end(error)

    def _drain_wake(self) -> None:
        try:
            while self._wake_r.recv(4096):
                pass
        except (BlockingIOError, OSError):
            pass

    def _read(self, on_message) -> bool:
        """Read what the socket has and handle every whole frame in it; returns whether the hub closed."""
        self._read_wants_write = False
        got = False
        while True:
            try:
                data = self.sock.recv(self.chunk)
            except ssl.SSLWantReadError:
                break
            except ssl.SSLWantWriteError:
                self._read_wants_write = True  # renegotiation: read again once the socket is writable
                break
            except BlockingIOError:
                break
            except ssl.SSLZeroReturnError:
                data = b""
            if not data:
                if got and self._frames(on_message):
                    return True
                raise websocket.WebSocketConnectionClosedException("Connection to remote host was lost.")
            self._in += data
            got = True
            if len(self._in) >= 4 * self.chunk and self._frames(on_message):
                return True
        return got and self._frames(on_message)

    def _frames(self, on_message) -> bool:
        """Handle the whole frames at the start of the input; returns whether one was a close."""
        buf, at, end = self._in, 0, len(self._in)
        closed = False
        try:
            while end - at >= 2:
                b0, b1 = buf[at], buf[at + 1]
                if b0 & 0x70:
                    raise websocket.WebSocketProtocolException("a frame with RSV bits set (no extension was agreed)")
                fin, opcode, length, head = b0 & 0x80, b0 & 0x0F, b1 & 0x7F, 2
                if length == 126:
                    if end - at < 4:
                        break
                    length, head = int.from_bytes(buf[at + 2:at + 4], "big"), 4
                elif length == 127:
                    if end - at < 10:
                        break
                    length, head = int.from_bytes(buf[at + 2:at + 10], "big"), 10
                masked = b1 & 0x80
                if opcode >= _OP_CLOSE:
                    if length > 125:
                        raise FrameTooLarge(length, 125)
                elif (length + (self._fragment_bytes if opcode == _OP_CONT else 0)) > self.max_message_bytes:
                    raise FrameTooLarge(length + (self._fragment_bytes if opcode == _OP_CONT else 0), self.max_message_bytes)
                start = at + head + (4 if masked else 0)
                if end - start < length:
                    break
                payload = bytes(buf[start:start + length])
                if masked:  # hub frames are not masked (RFC 6455 5.1); unmask anyway rather than misread
                    payload = websocket.ABNF.mask(bytes(buf[at + head:start]), payload)
                at = start + length
                if opcode in (_OP_TEXT, _OP_BINARY, _OP_CONT):
                    if opcode == _OP_CONT and not self._fragments:
                        raise websocket.WebSocketProtocolException("a continuation frame without a message to continue")
                    if opcode != _OP_CONT and self._fragments:
                        raise websocket.WebSocketProtocolException("a new message inside a fragmented one")
                    if fin and not self._fragments:
                        on_message(payload)
                    else:
                        self._fragments.append(payload)
                        self._fragment_bytes += len(payload)
                        if fin:
                            message = b"".join(self._fragments)
                            self._fragments, self._fragment_bytes = [], 0
                            on_message(message)
                elif opcode == _OP_PING:
                    self._queue_control(_client_frame(_OP_PONG, payload))
                elif opcode == _OP_CLOSE:
                    self.hub_close = payload
                    self._close_with(int.from_bytes(payload[:2], "big") if len(payload) >= 2 else websocket.STATUS_NORMAL, b"")
                    closed = True
                    break
                elif opcode != _OP_PONG:
                    raise websocket.WebSocketProtocolException(f"a frame with the unknown opcode {opcode}")
        finally:
            del buf[:at]
        return closed

    def _queue_control(self, frame: bytes) -> None:
        # after what is queued: the frame being written is never cut into
        with self.lock:
            self._queue.append(frame)

    def _write(self) -> bool:
        """Write what the socket takes without blocking; returns whether any bytes went."""
        progressed = False
        while True:
            if not self._out:
                with self.lock:
                    if not self._queue:
                        self._wake_pending = False
                        return progressed
                    self._out = b"".join(self._queue) if len(self._queue) > 1 else self._queue[0]
                    self._queue.clear()
                    self._wake_pending = False
                self._out_at = 0
            size = self._retry_len or min(self.chunk, len(self._out) - self._out_at)
            try:
                sent = self.sock.send(memoryview(self._out)[self._out_at:self._out_at + size])
            except (ssl.SSLWantWriteError, ssl.SSLWantReadError, BlockingIOError) as exc:
                self._retry_len = size  # OpenSSL wants the very same write again
                self._write_wants_read = isinstance(exc, ssl.SSLWantReadError)
                return progressed
            self._retry_len = 0
            self._write_wants_read = False
            progressed = True
            self._out_at += sent
            if self._out_at >= len(self._out):
                self._out, self._out_at = b"", 0

    def _close_with(self, status: int, reason: bytes) -> None:
        """Queue a close frame and write what the socket takes now (best effort: the connection is ending)."""
        self._queue_control(_client_frame(_OP_CLOSE, status.to_bytes(2, "big") + reason))
        try:
            self._write()
        except Exception:
            pass

    def _finish(self, selector: selectors.BaseSelector) -> None:
        with self.lock:
            self.connected = False
            self._stopping = True
        if self._queue or self._out:
            try:
                self._write()  # a close frame queued by close()
            except Exception:
                pass
        selector.close()
        for sock in (self.sock, self._wake_r, self._wake_w):
            try:
                sock.close()
            except Exception:
                pass


class _Slots:
    """A client's in-flight slots: at most ``limit`` taken at once (hub protocol v1: a hub answers 429 past its own
    limit). Unlike a semaphore the limit can change while calls are in flight (``resize``): a larger one lets the
    waiting calls go at once; a smaller one lets no new call go until enough answers have come back, so the calls
    in flight never exceed the limit in force when each was sent. ``peak`` is the most ever taken at once
    (``reset_peak()`` starts it anew). As cheap per call as ``threading.BoundedSemaphore`` (one lock, one
    condition), and ``take_more`` takes a batch's extra slots under one lock acquisition."""

    __slots__ = ("_cond", "limit", "taken", "peak")

    def __init__(self, limit: int):
        self._cond = threading.Condition(threading.Lock())
        self.limit, self.taken, self.peak = limit, 0, 0

    def acquire(self, timeout: float) -> bool:
        """Take one slot, waiting at most ``timeout`` seconds; whether one was taken."""
        with self._cond:
            if self.taken >= self.limit:
                end = time.monotonic() + timeout
                while self.taken >= self.limit:
                    left = end - time.monotonic()
                    if left <= 0 or not self._cond.wait(left) and self.taken >= self.limit:
                        return False
            self.taken += 1
            if self.taken > self.peak:
                self.peak = self.taken
            return True

    def take_more(self, wanted: int) -> int:
        """Take up to ``wanted`` more slots without waiting; how many were taken."""
        with self._cond:
            n = max(0, min(wanted, self.limit - self.taken))
            self.taken += n
            if self.taken > self.peak:
                self.peak = self.taken
            return n

    def release(self, n: int = 1) -> None:
        with self._cond:
            if n > self.taken:
                raise ValueError("in-flight slots released more often than taken")
            self.taken -= n
            self._cond.notify(n)

    def reset_peak(self) -> None:
        with self._cond:
            self.peak = self.taken

    def resize(self, limit: int) -> None:
        with self._cond:
            grew = limit > self.limit
            self.limit = limit
            if grew:
                self._cond.notify_all()


class _Pending:
    __slots__ = ("future", "deadline", "method", "on_result", "frame", "sent")

    def __init__(self, future: Future, deadline: float, method: str, on_result: Callable | None, frame: str | None = None,
                 sent: float = 0.0):
        self.future, self.deadline, self.method, self.on_result = future, deadline, method, on_result
        self.frame = frame  # the request's JSON, to send it again after a 429
        self.sent = sent  # time.monotonic() when its batch was sent: the answer's latency is measured from it


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
    `tls` (a `TlsOptions`; default: the system's CA store, verification on) applies to wss:// URLs;
    TLS settings that do not load fail every call with a permanent "connection" HubError saying why.
    Thread-safe; use as a context manager or `close()` it.
    """

    backoff_base = 0.2   # seconds before the first reconnect attempt after a failure
    backoff_cap = 30.0   # seconds, the longest wait between attempts
    io_timeout = 30.0    # seconds a blocked send may take before the connection counts as dead

    def __init__(self, url: str, key: str, *, timeout: float = 5.0, max_in_flight: int = 32,
                 connect_timeout: float | None = None, max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES,
                 tls: TlsOptions | None = None):
        if max_in_flight < 1:
            raise ValueError("max_in_flight must be at least 1")
        if max_frame_bytes < 1:
            raise ValueError("max_frame_bytes must be at least 1")
        self.max_frame_bytes = max_frame_bytes
        self.url = url
        self._shown = url_mask(url)  # what messages and logs name: no user:password@, no ?token=
        self._key = key
        self.timeout = timeout
        self._max_in_flight = max_in_flight
        self.connect_timeout = connect_timeout if connect_timeout is not None else timeout
        self.tls = tls if tls is not None else TlsOptions()
        self._secure = url.strip().lower().startswith("wss://")
        self._ssl_context: ssl.SSLContext | None = None
        self._closed = False
        self._ids = itertools.count(1)
        self._init_runtime()
        _CLIENTS.add(self)

    def _init_runtime(self) -> None:
        self._lock = threading.Lock()          # guards _ws, _pending, _subs, _methods
        self._connect_lock = threading.Lock()  # one connection attempt at a time
        self._slots = _Slots(self._max_in_flight)
        self._refused_at: int | None = None  # calls in flight when the hub last answered 429 (this connection)
        self._refused: collections.deque = collections.deque()  # (id, _Pending, HubError) to send again after a 429
        self._ws: websocket.WebSocket | None = None
        self._pending: dict[int, _Pending] = {}
        self._subs: dict[str, tuple[Callable, Callable | None]] = {}
        self._late_subscribes: set[int] = set()
        self._methods: frozenset[str] | None = None
        self._failures = 0
        self._retry_at = 0.0
        self._last_error = ""
        # stats() for the metrics (docs/metrics.md): each counter has one writing thread, so none is locked
        self._latency = Histogram()  # seconds from a call's send to its answer (the reader thread)
        self._hub_errors = 0  # answers with an error (the reader thread)
        self._timeouts = 0  # calls not answered in time (the sweeper thread)
        self._lost = 0  # calls failed because the connection was lost (under _lock)
        self._connects = 0  # connections made (under _connect_lock)
        self._connect_failures = 0  # connection attempts that failed (under _connect_lock)

    def stats(self) -> dict:
        """What ``/metrics`` reports of this client, as this process sees it (hubsched/metrics/reports.py)::

            {"connected": bool, "in_flight": int (calls waiting for answers), "in_flight_limit": int,
             "latency": Histogram.snapshot() (seconds, every answered call), "errors": {"hub": int (answered with
             an error), "timeout": int (no answer in time), "connection": int (failed by a lost connection)},
             "connects": int (connections made), "connect_failures": int (attempts that failed)}

        Counters only grow while the client lives."""
        return {"connected": self._ws is not None, "in_flight": self.in_flight, "in_flight_limit": self.in_flight_limit,
                "latency": self._latency.snapshot(),
                "errors": {"hub": self._hub_errors, "timeout": self._timeouts, "connection": self._lost},
                "connects": self._connects, "connect_failures": self._connect_failures}

    def __repr__(self) -> str:
        return f"<HubClient {self._shown}>"

    @property
    def max_in_flight(self) -> int:
        """The most calls waiting for answers at once on the connection (the hub's ``max_in_flight``: what it
        accepts). Settable while calls are in flight: a larger limit lets waiting calls go at once; a smaller one
        holds new calls until fewer than it are in flight. Raises ValueError below 1."""
        return self._max_in_flight

    @max_in_flight.setter
    def max_in_flight(self, limit: int) -> None:
        if limit < 1:
            raise ValueError("max_in_flight must be at least 1")
        self._max_in_flight = limit
        self._slots.resize(self._in_flight_limit())

    def _in_flight_limit(self) -> int:
        refused = self._refused_at
        return self._max_in_flight if refused is None else min(self._max_in_flight, refused)

    @property
    def in_flight_limit(self) -> int:
        """The limit in force: ``max_in_flight``, or less on a connection where the hub answered 429 (too many
        requests in flight) at fewer calls than that (see ``_in_flight_refused``)."""
        return self._slots.limit

    @property
    def in_flight(self) -> int:
        """Calls sent and not yet answered, failed or expired (each holds a slot)."""
        return self._slots.taken

    @property
    def in_flight_peak(self) -> int:
        """The most calls in flight at once since the client was made (or ``in_flight_peak_reset()``)."""
        return self._slots.peak

    def in_flight_peak_reset(self) -> None:
        self._slots.reset_peak()

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
        Returns one Future per call, as ``call_async`` does. Each call has its own deadline, `timeout`
        seconds from its turn (when the calls before it were sent), as if it were a ``call_async`` made
        then: a call that waited for a slot behind a large batch gets its whole `timeout` for its answer.
        """
        timeout = self.timeout if timeout is None else timeout
        futures: list[Future] = []
        requests: list[tuple[Future, str, dict | None]] = []
        for method, params in calls:
            future: Future = Future()
            future.hub_deadline, future.hub_id = time.monotonic() + timeout, None
            futures.append(future)
            requests.append((future, method, params))
        while requests:
            deadline = time.monotonic() + timeout  # this turn's: the wait for a slot, then the answers
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
        if not self._slots.acquire(max(0.0, deadline - time.monotonic())):
            raise HubError(f"{method}: {self._slots.limit} calls already in flight to {self._shown}", "timeout")
        slots = 1 + (self._slots.take_more(len(requests) - 1) if len(requests) > 1 else 0)
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
                batch.append((rid, future, method, frame))
            sent = time.monotonic()
            with self._lock:
                if self._ws is not ws:
                    raise HubError(f"{method}: connection to {self._shown} lost", "connection")
                for rid, future, method, frame in batch:
                    self._pending[rid] = _Pending(future, deadline, method, on_result, frame, sent)
                    future.hub_id, future.hub_deadline = rid, deadline
                    registered.append(rid)
            if batch:
                _SWEEPER.watch(self)
                data = b"".join(ws_frame(frame) for frame in frames)
                try:
                    ws.send_raw(data)  # under ws.lock, as websocket-client's pongs are
                except Exception as exc:
                    self._connection_lost(ws, exc)
        finally:
            if slots > len(registered):
                self._slots.release(slots - len(registered))
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
            self._timeouts += 1
            if pending.method == "subscribe":
                self._late_subscribes.add(rid)  # unsubscribe if its answer turns up after all
            _settle(pending.future, error=HubError(f"{pending.method}: no answer from {self._shown} in time", "timeout"))
        elif self._refused:
            with self._lock:
                refused = next((r for r in self._refused if r[0] == rid), None)
                if refused is not None:
                    self._refused.remove(refused)
            if refused is not None:
                _settle(refused[1].future, error=refused[2])  # still refused at its deadline: the hub's 429

    def _expire_due(self) -> bool:
        """Fail overdue calls and send again those a 429 refused; returns whether calls are still pending."""
        now = time.monotonic()
        with self._lock:
            due = [rid for rid, p in self._pending.items() if p.deadline <= now]
            busy = len(self._pending) > len(due) or bool(self._refused)
        for rid in due:
            self._expire(rid)
        if self._refused:
            self._refused_send()
        return busy

    def _refused_send(self) -> None:
        """Send again, in order, the calls the hub refused with 429 while it held others, as slots free up under
        the lowered limit (the sweeper calls it every 50 ms while any wait); one whose deadline has passed fails with
        its 429. The hub did not run a refused call (hub protocol v1: 429, retry later), so a write is sent again too.
        Each keeps its id (free again: its answer came) and its deadline."""
        now = time.monotonic()
        late, frames = [], []
        with self._lock:
            ws = self._ws
            while self._refused:
                rid, pending, error = self._refused[0]
                if pending.deadline <= now or ws is None:
                    late.append(self._refused.popleft())
                    continue
                if not self._slots.take_more(1):
                    break
                self._refused.popleft()
                self._pending[rid] = pending
                pending.sent = now  # its latency is the answer to this send
                frames.append(pending.frame)
        for _, pending, error in late:
            _settle(pending.future, error=error)
        if frames:
            try:
                ws.send_raw(b"".join(ws_frame(frame) for frame in frames))
            except Exception as exc:
                self._connection_lost(ws, exc)

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
            sslopt = {"context": self._tls_context(method)} if self._secure else None
            try:
                ws = websocket.create_connection(self.url, timeout=attempt, enable_multithread=True, skip_utf8_validation=True,
                                                 sslopt=sslopt,
                                                 class_=functools.partial(_Connection, max_message_bytes=self.max_frame_bytes))
            except Exception as exc:
                self._failures += 1
                self._retry_at = time.monotonic() + self._backoff()
                self._last_error = self._redact(f"{type(exc).__name__}: {exc}")
                self._connect_failures += 1
                log.warning("cannot connect to hub %s: %s (attempt %d)", self._shown, self._last_error, self._failures)
                raise HubError(f"{method}: cannot connect to hub {self._shown}: {self._last_error}", "connection") from None
            if ws.is_ssl():
                # hub protocol over TLS: one thread does all I/O (an SSLSocket is not safe for recv and send at once)
                conn = _TlsConnection(ws, max_message_bytes=self.max_frame_bytes, io_timeout=self.io_timeout,
                                      name=self._shown)
                with self._lock:
                    self._ws = conn
                self._connects += 1
                threading.Thread(target=conn.run, args=(self._on_message, functools.partial(self._on_end, conn)),
                                 name=f"hub-tls-io {self._shown}", daemon=True).start()
                if not self.tls.verify:
                    log.warning("connected to hub %s WITHOUT checking its TLS certificate (verification is off)",
                                self._shown)
                else:
                    log.info("connected to hub %s (TLS)", self._shown)
                return conn
            ws.settimeout(self.io_timeout)
            with self._lock:
                self._ws = ws
            self._connects += 1
            threading.Thread(target=self._read_loop, args=(ws,), name=f"hub-reader {self._shown}", daemon=True).start()
            log.info("connected to hub %s", self._shown)
            return ws
        finally:
            self._connect_lock.release()

    def _tls_context(self, method: str) -> ssl.SSLContext:
        """The SSLContext of ``self.tls``, made once. Raises a permanent "connection" HubError when the
        settings do not load: no attempt can succeed until they are changed."""
        if self._ssl_context is None:
            try:
                self._ssl_context = self.tls.context()
            except ValueError as exc:
                raise HubError(f"{method}: hub {self._shown}: {exc}", "connection", permanent=True) from None
        return self._ssl_context

    def _on_message(self, frame: bytes) -> None:
        try:
            self._dispatch(frame)
        except Exception:
            log.exception("hub %s: failed to handle a frame; ignored", self._shown)

    def _on_end(self, conn: "_TlsConnection", exc: BaseException | None) -> None:
        self._connection_lost(conn, exc)

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
            self._lost += len(pending)
            refused, self._refused = self._refused, collections.deque()
            subs, self._subs = self._subs, {}
            self._methods = None
            self._failures += 1
            self._retry_at = time.monotonic() + self._backoff()
            if self._refused_at is not None:  # a 429's limit is the connection's (hub protocol v1)
                self._refused_at = None
                self._slots.resize(self._max_in_flight)
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
        for _, pending_call, _ in refused:  # waiting to be sent again after a 429: they hold no slot
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
        self._latency.observe(time.monotonic() - pending.sent)
        if "error" in msg:
            self._hub_errors += 1
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
        if error is not None and error.code == 429 and self._in_flight_refused(rid) and pending.frame is not None \
                and time.monotonic() < pending.deadline:
            with self._lock:
                self._refused.append((rid, pending, error))  # sent again by the sweeper when a slot is free
            _SWEEPER.watch(self)
            return
        _settle(pending.future, result=msg.get("result"), error=error)

    def _in_flight_refused(self, rid: int) -> bool:
        """The hub answered call ``rid`` with 429 (hub protocol v1: too many requests in flight on this connection):
        keep to the number it held then, on this connection. Every call sent before ``rid`` and not answered yet was
        in flight at the hub when it refused ``rid`` (answers come in the order the hub sends them, and it refused at
        once), and every call it held then was sent before ``rid``: so their number is the hub's limit (a bound below
        it if the hub counts other clients' calls too). The limit comes back to ``max_in_flight`` on the next
        connection. Returns whether the hub held any: a 429 with none of ours in flight says nothing of our count
        (the limit is left alone, and the call fails with it rather than being sent again)."""
        with self._lock:
            held = sum(1 for other in self._pending if isinstance(other, int) and other < rid)
        if held == 0:
            return False
        limit = held
        if limit < self._slots.limit:
            self._refused_at = limit
            self._slots.resize(self._in_flight_limit())
            log.warning("hub %s refused a call with 429 at %d calls in flight: keeping to %d in flight on this "
                        "connection (its max_in_flight is %d; set it to what the hub accepts)",
                        self._shown, held, self._slots.limit, self._max_in_flight)
        return True

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

_POOL: dict[tuple[str, str, TlsOptions], HubClient] = {}
_POOL_LOCK = threading.Lock()


def hub_client(url: str, key: str, *, timeout: float = 5.0, max_in_flight: int = 32,
               max_frame_bytes: int | None = None, tls: TlsOptions | None = None) -> HubClient:
    """The process's shared client for (url, key, tls), created on first use.

    Connections live as long as the worker process and are shared by its threads. After
    os.fork() the child starts with an empty pool (it never reuses the parent's sockets).
    `timeout` applies when the client is created. `max_in_flight` (the hub's: what it accepts in flight on one
    connection) applies from the call on, to the shared client too: a hub whose limit was raised or lowered
    (in the admin, say) gets it at its next batch, without a worker restart (``HubClient.max_in_flight``).
    `max_frame_bytes` (bytes; None: the setting HUBSCHED_HUB_MAX_FRAME_BYTES, 16 MiB) applies to every
    connection made after the call.
    `tls` (`TlsOptions`, default: system CA store, verification on) is part of the pool's key: changed
    TLS settings get a new client and connection.
    """
    if max_frame_bytes is None:
        max_frame_bytes = default_max_frame_bytes()
    tls = tls if tls is not None else TlsOptions()
    with _POOL_LOCK:
        client = _POOL.get((url, key, tls))
        if client is None or client._closed:
            client = _POOL[(url, key, tls)] = HubClient(url, key, timeout=timeout, max_in_flight=max_in_flight,
                                                        max_frame_bytes=max_frame_bytes, tls=tls)
        else:
            if client.max_frame_bytes != max_frame_bytes:
                client.max_frame_bytes = max_frame_bytes
            if client.max_in_flight != max_in_flight:
                client.max_in_flight = max_in_flight
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
