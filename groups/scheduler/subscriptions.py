"""On-change groups: the hub subscriptions held by the beat process, one per group and entity.

A background thread subscribes and unsubscribes (a hub that is down must not stall the clock) and
retries a failed or lost subscription every ``retry_s``. Each ``dataChange`` is handed to
``post_event(group_id, entity, values)``; the engine applies the deadband and dispatches.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable

from .engine import GroupSpec

logger = logging.getLogger(__name__)


def _default_client(url: str, key: str, timeout: float):
    from hubs.client import hub_client

    return hub_client(url, key, timeout=timeout)


class Subscriptions:
    def __init__(self, post_event: Callable[[int, str, list], None], *, client_factory=None, retry_s: float = 5.0):
        self.post_event = post_event
        self.client_factory = client_factory or _default_client
        self.retry_s = retry_s
        self._commands: queue.SimpleQueue = queue.SimpleQueue()
        self._active: dict[int, tuple[object, list[str], GroupSpec]] = {}
        self._retry: dict[int, tuple[float, GroupSpec]] = {}
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    # called from the beat thread
    def want(self, spec: GroupSpec) -> None:
        self._commands.put(("want", spec))
        self._start()

    def drop(self, group_id: int) -> None:
        self._commands.put(("drop", group_id))

    def stop(self) -> None:
        self._stop.set()
        self._commands.put(("stop", None))
        if self._thread is not None:
            self._thread.join(timeout=5)

    def active(self) -> dict[int, list[str]]:
        return {gid: list(sids) for gid, (_, sids, _) in list(self._active.items())}

    def _start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="hubsched-subscriptions", daemon=True)
            self._thread.start()

    # the subscriptions thread
    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                kind, arg = self._commands.get(timeout=0.5)
            except queue.Empty:
                kind, arg = None, None
            if kind == "stop":
                break
            if kind == "want":
                self._unsubscribe(arg.id)
                self._subscribe(arg)
            elif kind == "drop":
                self._retry.pop(arg, None)
                self._unsubscribe(arg)
            elif kind == "lost":
                spec = self._active.pop(arg, (None, None, None))[2]
                if spec is not None:
                    self._retry[arg] = (time.monotonic() + self.retry_s, spec)
            now = time.monotonic()
            for gid, (when, spec) in list(self._retry.items()):
                if when <= now:
                    del self._retry[gid]
                    self._subscribe(spec)
        for gid in list(self._active):
            self._unsubscribe(gid)

    def _subscribe(self, spec: GroupSpec) -> None:
        by_entity: dict[str, list[str]] = {}
        for entity, key in spec.keys:
            by_entity.setdefault(entity, []).append(key)
        if not by_entity:
            logger.warning("on-change group %s reads no keys: nothing to subscribe to", spec.id)
            return
        sids: list[str] = []
        client = None
        try:
            client = self.client_factory(spec.hub_url, spec.hub_key, spec.hub_timeout)
            for entity, keys in by_entity.items():
                sids.append(
                    client.subscribe(
                        entity,
                        keys,
                        callback=lambda params, gid=spec.id: self.post_event(gid, params.get("entity"), params.get("values")),
                        on_change=True,
                        on_end=lambda _sid, gid=spec.id: self._commands.put(("lost", gid)),
                    )
                )
        except Exception as exc:  # HubError or a connection fault: retry later, never stop the thread
            logger.warning("on-change group %s: cannot subscribe (%s); retrying in %.0f s", spec.id, exc, self.retry_s)
            self._active[spec.id] = (client, sids, spec)
            self._unsubscribe(spec.id)
            self._retry[spec.id] = (time.monotonic() + self.retry_s, spec)
            return
        self._active[spec.id] = (client, sids, spec)

    def _unsubscribe(self, group_id: int) -> None:
        client, sids, _ = self._active.pop(group_id, (None, [], None))
        for sid in sids:
            try:
                client.unsubscribe(sid)
            except Exception as exc:
                logger.info("on-change group %s: unsubscribe %s failed (%s)", group_id, sid, exc)
