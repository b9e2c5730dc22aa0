"""A real, misbehaving hub for tests: a WebSocket server that breaks the contract on purpose.

Each mode is one item of hub protocol v1's "What a client must survive" (plus error injection):

  slow                answers after `delay` seconds (without holding up other requests)
  not_json            sends a text frame that is not JSON and a binary junk frame before each answer
  close_mid_request   drops the connection when a request arrives, without answering
  never_answer        reads requests and never answers
  wrong_ids           answers ids that were never asked (a string one and an integer one), then the right one
  out_of_order        holds answers and sends each batch of `batch` in reverse order
  error               answers every request with error `code` (503, 429, ...)
  wrong_types         correct ids, but results with values and items of unexpected types and shapes
  ghost_notifications sends dataChange for subscriptions that do not exist or were dropped
  bad_values          answers like the reference hub, with the fields of chosen values replaced:
                      `overrides` {(entity, key): {"quality": "excellent", "ts": ..., "value": ...}}
  huge_frame          answers with a text frame header announcing `frame_bytes` (200 MB) and
                      streams its payload as fast as the client reads it
  huge_message        the same in fragments of `fragment_bytes`: a text frame without FIN, then
                      continuation frames, each small, the message `frame_bytes` in all
  malformed_error     answers every request with `{"id": id, "error": error}`, `error` as given: an object
                      with a code of the wrong type (`{"code": "401"}`), a bare string or number, ...
  going_away          closes the connection when a request arrives, with close code `close_code`
                      (1001, going away) and `close_reason`, without answering

In the huge modes `streamed` counts the payload bytes the client's socket took (written minus
what still waits in the server's buffer), and `close_codes` the close codes clients sent.

`times` limits the fault to the first N requests (counted over all connections); after
that the hub answers like the reference hub, whose state produces every correct answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import struct
from typing import Iterator

from .protocol import error_frame
from .server import HubServer, RunningServer, _ConnectionSession, serve_handler_in_thread

MODES = ("slow", "not_json", "close_mid_request", "never_answer", "wrong_ids", "out_of_order",
         "error", "wrong_types", "ghost_notifications", "bad_values", "huge_frame", "huge_message",
         "malformed_error", "going_away")


class FaultyHub:
    def __init__(self, mode: str, *, key: str = "demo-key", name: str = "faulty", delay: float = 2.0,
                 code: int = 503, times: int | None = None, batch: int = 4, methods: set[str] | None = None,
                 frame_bytes: int = 200_000_000, fragment_bytes: int = 256 * 1024,
                 overrides: dict[tuple[str, str], dict] | None = None, error=None,
                 close_code: int = 1001, close_reason: str = "hub restarting"):
        if mode not in MODES:
            raise ValueError(f"unknown fault mode {mode!r}; one of {', '.join(MODES)}")
        self.mode, self.delay, self.code, self.times, self.batch = mode, delay, code, times, batch
        self.frame_bytes, self.fragment_bytes = frame_bytes, fragment_bytes
        self.overrides = overrides or {}
        self.error, self.close_code, self.close_reason = error, close_code, close_reason
        self.streamed = 0  # huge modes: payload bytes the client's socket took
        self.close_codes: list[int | None] = []
        self.hub = HubServer(key=key, name=name, methods=methods)
        self.received = 0   # requests received
        self.faulted = 0    # requests that got the fault

    @property
    def state(self):
        return self.hub.state

    async def handler(self, ws) -> None:
        session = _ConnectionSession(self.hub, ws)
        held: list[str] = []
        tasks: set[asyncio.Task] = set()

        async def later(coro):
            task = asyncio.create_task(coro)
            tasks.add(task)
            task.add_done_callback(tasks.discard)

        async def send_after(answer: str, delay: float):
            await asyncio.sleep(delay)
            with contextlib.suppress(Exception):
                await ws.send(answer)
                session.start_pending()

        async def flush_held(after: float):
            await asyncio.sleep(after)
            batch, held[:] = held[:], []
            for answer in reversed(batch):
                with contextlib.suppress(Exception):
                    await ws.send(answer)
            session.start_pending()

        try:
            async for message in ws:
                self.received += 1
                answer = self.hub.protocol.handle(message, session)
                if self.times is not None and self.faulted >= self.times:
                    await ws.send(answer)
                    session.start_pending()
                    continue
                self.faulted += 1
                mode = self.mode
                if mode == "slow":
                    await later(send_after(answer, self.delay))
                elif mode == "not_json":
                    await ws.send("this is not JSON {")
                    await ws.send(b"\x00\xff\xfe junk")
                    await ws.send(answer)
                    session.start_pending()
                elif mode == "malformed_error":
                    rid = json.loads(answer).get("id")
                    await ws.send(json.dumps({"id": rid, "error": self.error}))
                elif mode == "going_away":
                    await ws.close(self.close_code, self.close_reason)
                    return
                elif mode == "close_mid_request":
                    ws.transport.abort()
                    return
                elif mode == "never_answer":
                    continue
                elif mode == "wrong_ids":
                    wrong = json.loads(answer)
                    for rid in (f"never-asked-{self.received}", 10**9 + self.received):
                        wrong["id"] = rid
                        await ws.send(json.dumps(wrong))
                    await ws.send(answer)
                    session.start_pending()
                elif mode == "out_of_order":
                    held.append(answer)
                    if len(held) >= self.batch:
                        await flush_held(0)
                    elif len(held) == 1:
                        await later(flush_held(0.2))  # a lone answer still goes out
                elif mode == "error":
                    rid = json.loads(answer).get("id")  # the hub's own answer has parsed the request
                    await ws.send(error_frame(rid, self.code, f"injected error {self.code}: retry later"))
                elif mode == "wrong_types":
                    await ws.send(_garble(answer))
                    session.start_pending()
                elif mode == "bad_values":
                    await ws.send(_override(message, answer, self.overrides))
                    session.start_pending()
                elif mode in ("huge_frame", "huge_message"):
                    await self._stream_huge(ws)
                    return
                elif mode == "ghost_notifications":
                    await ws.send(_ghost("s-ghost"))
                    await ws.send(answer)
                    session.start_pending()
                    try:
                        request = json.loads(message)
                    except ValueError:
                        continue
                    if isinstance(request, dict) and request.get("method") == "unsubscribe":
                        # as if it crossed the unsubscribe on the wire
                        await ws.send(_ghost(str((request.get("params") or {}).get("subscription"))))
        except Exception:
            pass
        finally:
            for task in list(tasks):
                task.cancel()
            session.close()

    async def _stream_huge(self, ws) -> None:
        """Write a frame header announcing ``frame_bytes`` (or, in huge_message, fragment headers) straight
        to the socket, then its payload in 64 KiB chunks whenever the client has taken the previous ones
        (at most 256 KiB waiting in the server's buffer), until it is all sent or the client closes."""
        transport = ws.transport
        chunk = b" " * 65536
        total, written, fragment_left = self.frame_bytes, 0, 0
        if self.mode == "huge_frame":
            transport.write(_frame_header(0x81, total))
            fragment_left = total
        while written < total and not transport.is_closing():
            buffered = transport.get_write_buffer_size()
            self.streamed = max(self.streamed, written - buffered)
            if buffered > 256 * 1024:
                await asyncio.sleep(0.002)
                continue
            if fragment_left == 0:  # huge_message: the next fragment, text first, never FIN
                fragment_left = min(self.fragment_bytes, total - written)
                transport.write(_frame_header(0x01 if written == 0 else 0x00, fragment_left))
            n = min(len(chunk), fragment_left)
            transport.write(chunk[:n])
            written += n
            fragment_left -= n
        if not transport.is_closing():
            self.streamed = max(self.streamed, written - transport.get_write_buffer_size())
        with contextlib.suppress(Exception):
            await asyncio.wait_for(ws.wait_closed(), 5)
        self.close_codes.append(ws.close_code)


def _override(request: str, answer: str, overrides: dict[tuple[str, str], dict]) -> str:
    """The answer with the fields of the values of ``overrides`` replaced (getEntityParams answers only)."""
    try:
        entity = (json.loads(request).get("params") or {}).get("entity")
        msg = json.loads(answer)
    except (ValueError, AttributeError):
        return answer
    values = (msg.get("result") or {}).get("values") if isinstance(msg, dict) else None
    if not isinstance(values, list):
        return answer
    for item in values:
        item.update(overrides.get((entity, item.get("key")), {}))
    return json.dumps(msg)


def _frame_header(first_byte: int, length: int) -> bytes:
    """An unmasked server frame header (RFC 6455 5.2) with a 64-bit length."""
    return bytes((first_byte, 127)) + struct.pack("!Q", length)


def _ghost(subscription: str) -> str:
    return json.dumps({"method": "dataChange", "params": {
        "subscription": subscription, "entity": "plant/line1/pump1",
        "values": [{"key": "flow", "value": 1.0, "ts": "2026-11-20T10:00:00.120Z", "quality": "good"}]}})


def _garble(answer: str) -> str:
    """The same answer with values and list items of unexpected types."""
    msg = json.loads(answer)
    result = msg.get("result")
    if not isinstance(result, dict):
        return answer
    if "values" in result:
        weird = [{"nested": {"deeper": [1, "two", None]}}, "a string", None, [1, 2], True]
        result["values"] = [
            {"key": v["key"], "value": weird[i % len(weird)], "ts": 1234567890, "quality": "excellent"}
            for i, v in enumerate(result["values"])
        ] + ["not an object", {"value": 1}, {"key": 42, "value": 2}]
    if "entities" in result:
        result["entities"] = "not a list"
    if "params" in result:
        result["params"] = result["params"][:1] + [17, {"name": "no key"}]
    if "written" in result:
        result["written"] = {"not": "a list"}
    if "time" in result:
        result["time"] = 1234567890
    if "methods" in result:
        result["methods"] = "getEntities"
    return json.dumps(msg)


@contextlib.contextmanager
def serve_in_thread(mode: str, *, port: int = 0, key: str = "demo-key", host: str = "127.0.0.1",
                    **options) -> Iterator[RunningServer]:
    """Run a misbehaving hub on a background thread; yields an object with `.url`, `.port`,
    `.faulty` (received / faulted counters, `.state`) and `.drop_connections()`.
    Options: delay (s), code, times, batch, methods, name, frame_bytes, fragment_bytes, overrides, error,
    close_code, close_reason."""
    faulty = FaultyHub(mode, key=key, **options)
    with serve_handler_in_thread(faulty.handler, host=host, port=port) as running:
        running.faulty = faulty
        yield running


def unused_port(host: str = "127.0.0.1") -> int:
    """A TCP port where nothing listens (bound and released at once), for an unreachable hub."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def unreachable_url(host: str = "127.0.0.1") -> str:
    return f"ws://{host}:{unused_port(host)}/connect"
