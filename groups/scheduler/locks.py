"""The overlap lock (one execution of a group at a time) and the per-hub gate (runs in flight per hub).

Two backends, chosen by ``locks_backend()``:

- Redis (``HUBSCHED_LOCK_URL``, else the broker URL when it is ``redis://``): a group lock is
  ``SET hubsched:run:<id> <token> NX PX <ttl>``, released by compare-and-delete; a worker that dies
  leaves a lock that expires after the TTL (``HUBSCHED_RUN_LOCK_TTL_S``, default 60 s, refreshed
  while a batch works through its groups), as in a distributed cron. The hub gate is a sorted set of
  leases scored by their expiry (the Redis counting-semaphore pattern).
- Files (the embedded ``filesystem://`` broker, one machine): POSIX record locks (``fcntl.lockf``) on
  one byte per group in ``var/locks/runs.lock`` and one byte per gate slot in ``var/locks/hubs.lock``.
  The kernel drops a process's record locks when it exits, so a dead worker heals at once. Record
  locks do not exclude threads of one process, so a process-local set does that.
"""

from __future__ import annotations

import fcntl
import os
import threading
import time
import uuid
from pathlib import Path

# the group locks of a batch in one command (a pipeline of SETs cost 30 us of client CPU per group);
# returns the 1-based positions of the keys it locked
_ACQUIRE = """
local got = {}
for i, key in ipairs(KEYS) do
  if redis.call('SET', key, ARGV[1], 'NX', 'PX', ARGV[2]) then got[#got + 1] = i end
end
return got
"""

_RELEASE = """
local n = 0
for i, key in ipairs(KEYS) do
  if redis.call('GET', key) == ARGV[1] then n = n + redis.call('DEL', key) end
end
return n
"""

_GATE_ENTER = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
if redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[3]) then
  redis.call('ZADD', KEYS[1], ARGV[1] + ARGV[2], ARGV[4])
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
"""


class RedisLocks:
    def __init__(self, url: str, *, ttl: float = 60.0, prefix: str = "hubsched"):
        import redis

        self.redis = redis.Redis.from_url(url)
        self.ttl_ms = max(1, int(ttl * 1000))
        self.prefix = prefix
        self._acquire = self.redis.register_script(_ACQUIRE)
        self._release = self.redis.register_script(_RELEASE)
        self._gate_enter = self.redis.register_script(_GATE_ENTER)

    def _key(self, group_id: int) -> str:
        return f"{self.prefix}:run:{group_id}"

    def acquire(self, group_ids: list[int]) -> tuple[str, list[int]]:
        """Try to lock each group; returns (token, the ids locked). One round trip."""
        token = uuid.uuid4().hex
        if not group_ids:
            return token, []
        got = self._acquire(keys=[self._key(gid) for gid in group_ids], args=[token, self.ttl_ms])
        return token, [group_ids[i - 1] for i in got]

    def refresh(self, token: str, group_ids: list[int]) -> None:
        pipe = self.redis.pipeline(transaction=False)
        for gid in group_ids:
            pipe.pexpire(self._key(gid), self.ttl_ms)
        pipe.execute()

    def release(self, token: str, group_ids: list[int]) -> None:
        if group_ids:
            self._release(keys=[self._key(g) for g in group_ids], args=[token])

    def gate_enter(self, hub_id: int, limit: int) -> str | None:
        token = uuid.uuid4().hex
        now_ms = int(time.time() * 1000)
        ok = self._gate_enter(keys=[f"{self.prefix}:hub:{hub_id}"], args=[now_ms, self.ttl_ms, limit, token])
        return token if ok else None

    def gate_leave(self, hub_id: int, token: str) -> None:
        self.redis.zrem(f"{self.prefix}:hub:{hub_id}", token)


class FileLocks:
    MAX_SLOTS = 1024

    # Per process, shared by every FileLocks on the same directory: the open descriptors (never
    # closed: closing any descriptor of a file drops all of the process's record locks on it) and
    # the locks this process holds (record locks do not exclude the process's own threads).
    _fds: dict[str, int] = {}
    _held: set[str] = set()
    _pid: int | None = None
    _mutex = threading.Lock()

    def __init__(self, directory: str | Path):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)

    def _fd(self, path: str) -> int:
        cls = FileLocks
        if cls._pid != os.getpid():  # after fork: record locks are not inherited, nor are our sets
            cls._fds, cls._held, cls._pid = {}, set(), os.getpid()
        fd = cls._fds.get(path)
        if fd is None:
            fd = cls._fds[path] = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        return fd

    def _slot(self, name: str, offset: int) -> tuple[int, str]:
        """(descriptor, held-set key) of one lock byte; call with ``_mutex`` held."""
        path = str(self.directory / name)
        return self._fd(path), f"{path}:{offset}"

    def _try(self, name: str, offset: int) -> bool:
        with FileLocks._mutex:
            fd, slot = self._slot(name, offset)
            if slot in FileLocks._held:
                return False
            try:
                fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, offset, os.SEEK_SET)
            except OSError:
                return False
            FileLocks._held.add(slot)
            return True

    def _free(self, name: str, offset: int) -> None:
        with FileLocks._mutex:
            fd, slot = self._slot(name, offset)
            if slot in FileLocks._held:
                fcntl.lockf(fd, fcntl.LOCK_UN, 1, offset, os.SEEK_SET)
                FileLocks._held.discard(slot)

    def acquire(self, group_ids: list[int]) -> tuple[str, list[int]]:
        return "", [gid for gid in group_ids if self._try("runs.lock", gid)]

    def refresh(self, token: str, group_ids: list[int]) -> None:
        pass  # held until released or the process ends

    def release(self, token: str, group_ids: list[int]) -> None:
        for gid in group_ids:
            self._free("runs.lock", gid)

    def gate_enter(self, hub_id: int, limit: int) -> str | None:
        for slot in range(min(limit, self.MAX_SLOTS)):
            if self._try("hubs.lock", hub_id * self.MAX_SLOTS + slot):
                return str(slot)
        return None

    def gate_leave(self, hub_id: int, token: str) -> None:
        self._free("hubs.lock", hub_id * self.MAX_SLOTS + int(token))


_BACKEND = None
_BACKEND_PID = None


def locks_backend():
    """The process's lock backend (see the module docstring for the choice)."""
    global _BACKEND, _BACKEND_PID
    if _BACKEND is None or _BACKEND_PID != os.getpid():
        from django.conf import settings

        url = settings.HUBSCHED_LOCK_URL
        broker = settings.CELERY_BROKER_URL or ""
        if not url and broker.startswith(("redis://", "rediss://")):
            url = broker
        ttl = settings.HUBSCHED_RUN_LOCK_TTL_S
        if url.startswith(("redis://", "rediss://")):
            _BACKEND = RedisLocks(url, ttl=ttl)
        else:
            _BACKEND = FileLocks(Path(settings.VAR_DIR) / "locks")
        _BACKEND_PID = os.getpid()
    return _BACKEND
