"""The sandbox process: reads run requests from the worker on a pipe, runs each script, answers.

Frames both ways are a 4-byte big-endian length and UTF-8 JSON. Request::

    {"op": "run", "code": str, "bindings_json": str, "timeout": s, "memory_limit_mb": int,
     "data_sources": {name: {"url": str, "writable": bool, "allow_ddl": bool}},
     "debug": null | {"breakpoints": [line], "actions": ["step"|"continue"], "interactive": bool}}

Answers: zero or more ``{"op": "stop", "stop": {...}}`` (interactive debugging only; the worker answers
each with ``{"action": "step"|"continue"}``), then one ``{"op": "result", ...}`` (see runtime.run).
Started by pool.py as ``python -I -c`` with a bare environment; fds 0 and 1 are the pipe, and are
replaced by /dev/null for everything else.
"""

from __future__ import annotations

import json
import os
import struct
import sys

_HEADER = struct.Struct(">I")


def _read_exact(fd: int, n: int) -> bytes:
    chunks = []
    while n:
        chunk = os.read(fd, n)
        if not chunk:
            raise EOFError
        chunks.append(chunk)
        n -= len(chunk)
    return b"".join(chunks)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _send(fd: int, payload: bytes) -> None:
    _write_all(fd, _HEADER.pack(len(payload)) + payload)


def _asker(fd_in: int, fd_out: int):
    """Interactive debugging: send each stop to the worker and return the action it answers."""

    def ask(stop) -> str:
        _send(fd_out, json.dumps({"op": "stop", "stop": stop.as_dict()}).encode())
        (n,) = _HEADER.unpack(_read_exact(fd_in, _HEADER.size))
        return json.loads(_read_exact(fd_in, n)).get("action", "continue")

    return ask


def _encode_reply(reply: dict) -> bytes:
    raw = reply.pop("bindings_raw", None)
    reply["op"] = "result"
    if raw is None:
        return json.dumps(reply, ensure_ascii=False).encode("utf-8", "surrogatepass")
    # The binding values are JSON already (runtime.to_json); splice them in rather than encode twice.
    head = json.dumps(reply, ensure_ascii=False)[:-1]
    body = ",".join(f"{json.dumps(k)}:{v}" for k, v in raw.items())
    return f'{head}, "bindings": {{{body}}}}}'.encode("utf-8", "surrogatepass")


def main() -> None:
    fd_in, fd_out = os.dup(0), os.dup(1)
    devnull = os.open(os.devnull, os.O_RDWR)
    os.dup2(devnull, 0)
    os.dup2(devnull, 1)
    from . import runtime

    runtime.install_process_limits()
    runs = 0
    while True:
        try:
            (size,) = _HEADER.unpack(_read_exact(fd_in, _HEADER.size))
            request = json.loads(_read_exact(fd_in, size))
        except EOFError:
            return
        if request.get("op") == "exit":
            return
        interactive = (request.get("debug") or {}).get("interactive")
        try:
            reply = runtime.run(request, _asker(fd_in, fd_out) if interactive else None)
        except MemoryError:
            reply = {"ok": False, "error": {"kind": "memory", "message": "the sandbox ran out of memory"}, "replace": True}
        except BaseException as exc:  # the sandbox's own failure: say so, then end
            reply = {"ok": False, "error": {"kind": "internal", "message": f"sandbox: {type(exc).__name__}: {exc}"}, "replace": True}
        runs += 1
        if runs >= int(request.get("recycle_after", 100_000)):
            reply["replace"] = True
        try:
            payload = _encode_reply(reply)
        except MemoryError:
            payload = json.dumps({"op": "result", "ok": False, "replace": True,
                                  "error": {"kind": "memory", "message": "the result did not fit in memory"}}).encode()
        _send(fd_out, payload)
        if reply.get("replace"):
            runtime.engines_dispose()
            return


if __name__ == "__main__":
    sys.exit(main())
