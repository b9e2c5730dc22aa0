"""One object per process, made on first use: for machinery (threads, sockets, caches) that must not cross fork()."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class PerProcess(Generic[T]):
    """Holds one ``T`` per process, made by ``factory()`` on the first ``get()``; thread-safe.

    A process forked after that (Celery's prefork pool, the sandbox pool) starts with none and makes
    its own: threads do not survive fork(), and sockets must not be shared with the parent.
    """

    def __init__(self, factory: Callable[[], T]) -> None:
        self._factory = factory
        self._value: T | None = None
        self._lock = threading.Lock()
        os.register_at_fork(after_in_child=self.reset)

    def get(self) -> T:
        value = self._value
        if value is None:
            with self._lock:
                if self._value is None:
                    self._value = self._factory()
                value = self._value
        return value

    def peek(self) -> T | None:
        """The object if this process has made one, else None (to flush or clear without making one)."""
        return self._value

    def reset(self) -> None:
        self._value = None
        self._lock = threading.Lock()
