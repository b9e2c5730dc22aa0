"""The hub protocol client against a hub built on another WebSocket library (aiohttp) than the reference hub.

A second implementation catches what the reference hub forgives: aiohttp pings on its own schedule and
checks every text frame's UTF-8, so a pong written into the middle of a request frame drops the
connection ("invalid UTF-8"), which the reference hub's workload never provoked.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import threading
from typing import Iterator

import pytest
from aiohttp import WSMsgType, web

from hubs.client import HubClient, HubError

KEY = "demo-key"
PUMP = "plant/line1/pump1"

pytestmark = pytest.mark.timeout(60)


class AiohttpHub:
    """A minimal hub (hub protocol v1: getInfo, getEntityParams, setEntityParams; 401, 404) on aiohttp.

    It pings every connection every ``ping_interval`` seconds and records each connection's end:
    ``connections`` (count) and ``ends`` (``(close code, exception text)`` per closed connection).
    """

    def __init__(self, *, key: str = KEY, ping_interval: float = 0.05):
        self.key, self.ping_interval = key, ping_interval
        self.values: dict[str, dict] = {PUMP: {"flow": 1.5, "mode": "auto"}}
        self.connections = 0
        self.pings = 0
        self.ends: list[tuple[int | None, str]] = []

    def answer(self, text: str) -> str:
        try:
            request = json.loads(text)
        except ValueError:
            return json.dumps({"id": None, "error": {"code": -32700, "message": "parse error"}})
        rid = request.get("id")
        if request.get("key") != self.key:
            return json.dumps({"id": rid, "error": {"code": 401, "message": "wrong or missing key"}})
        method, params = request.get("method"), request.get("params") or {}
        if method == "getInfo":
            return json.dumps({"id": rid, "result": {"hub": "aiohttp", "protocol": 1, "time": "2026-12-01T10:00:00.000Z",
                                                     "methods": ["getInfo", "getEntityParams", "setEntityParams"]}})
        entity = params.get("entity")
        if entity not in self.values:
            return json.dumps({"id": rid, "error": {"code": 404, "message": f"unknown entity {entity!r}"}})
        if method == "getEntityParams":
            keys = params.get("keys") or list(self.values[entity])
            values = [{"key": k, "value": self.values[entity][k], "ts": "2026-12-01T10:00:00.000Z", "quality": "good"}
                      for k in keys]
            return json.dumps({"id": rid, "result": {"entity": entity, "values": values}})
        if method == "setEntityParams":
            self.values[entity].update(params["values"])
            return json.dumps({"id": rid, "result": {"entity": entity, "written": list(params["values"])}})
        return json.dumps({"id": rid, "error": {"code": -32601, "message": f"method not found: {method}"}})

    async def handle(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(max_msg_size=64 * 1024 * 1024)
        await ws.prepare(request)
        self.connections += 1

        async def pinger():
            while not ws.closed:
                await asyncio.sleep(self.ping_interval)
                with contextlib.suppress(Exception):
                    await ws.ping(b"hub")
                    self.pings += 1

        task = asyncio.create_task(pinger())
        try:
            async for msg in ws:
                if msg.type == WSMsgType.TEXT:
                    await ws.send_str(self.answer(msg.data))
        finally:
            task.cancel()
            self.ends.append((ws.close_code, repr(ws.exception())))
        return ws


@contextlib.contextmanager
def serve_aiohttp_hub(hub: AiohttpHub, *, ssl_context=None, path: str = "/connect") -> Iterator[str]:
    """Run ``hub`` on 127.0.0.1 on a free port in a thread; yields its ws:// URL (wss:// with ``ssl_context``)."""
    loop = asyncio.new_event_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    app = web.Application()
    app.router.add_get(path, hub.handle)
    runner = web.AppRunner(app, handle_signals=False)
    loop.run_until_complete(runner.setup())
    loop.run_until_complete(web.SockSite(runner, sock, ssl_context=ssl_context).start())
    thread = threading.Thread(target=loop.run_forever, name="aiohttp-hub", daemon=True)
    thread.start()
    try:
        yield f"{'wss' if ssl_context else 'ws'}://127.0.0.1:{port}{path}"
    finally:
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


@pytest.fixture
def aiohttp_hub():
    hub = AiohttpHub()
    with serve_aiohttp_hub(hub) as url:
        hub.url = url
        yield hub


def test_it_reads_and_writes_through_an_aiohttp_hub(aiohttp_hub):
    with HubClient(aiohttp_hub.url, KEY, timeout=5) as client:
        assert client.set_entity_params(PUMP, {"mode": "manual"}) == ["mode"]
        assert [v["value"] for v in client.get_entity_params(PUMP, ["mode"])] == ["manual"]


def test_its_pongs_never_land_inside_large_pipelined_requests(aiohttp_hub):
    # The hub pings every 50 ms while 32 requests of 256 KiB each are in flight: the reader thread
    # answers each ping while a caller's thread is writing a request frame on the same socket.
    big = "x" * (256 * 1024)
    with HubClient(aiohttp_hub.url, KEY, timeout=30, max_in_flight=32) as client:
        futures = client.call_many_async(
            [("setEntityParams", {"entity": PUMP, "values": {"mode": f"{i}:{big}"}}) for i in range(200)])
        failures = []
        for future in futures:
            try:
                assert future.result(60) == {"entity": PUMP, "written": ["mode"]}
            except HubError as exc:
                failures.append(str(exc))
        assert aiohttp_hub.pings > 0  # the hub did ping during the run
        assert failures == [], f"{len(failures)} of 200 failed; first: {failures[0]}; hub saw {aiohttp_hub.ends}"
        assert aiohttp_hub.connections == 1 and aiohttp_hub.ends == [], aiohttp_hub.ends
        assert client.get_entity_params(PUMP, ["mode"])[0]["value"].startswith("199:")
