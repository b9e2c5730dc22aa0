"""The script sandbox: compile under RestrictedPython's policy, run in a pool of limited processes, debug.

Public API (groups/execution.py and the scripts_engine services use only these)::

    script_compile(code=...)                       -> None, or ScriptError(kind="syntax"|"refused")
    script_execute(code=..., bindings=..., ...)    -> ScriptResult, or ScriptError
    sandbox_kill(token)                            -> pid killed, or None (script_execute(token=...) names the run)
    script_debug_run(code=..., bindings=..., breakpoints=[3, 7], actions=["step", ...]) -> DebugRun
"""

from __future__ import annotations

import json
from typing import Any, Callable

from .errors import DebugRun, DebugStop, ScriptError, ScriptResult
from .policy import ALLOWED_MODULES, script_compile_code
from .pool import sandbox_kill, sandbox_pool, sandbox_pool_close, wall_deadline_s

__all__ = [
    "ALLOWED_MODULES",
    "DebugRun",
    "DebugStop",
    "ScriptError",
    "ScriptResult",
    "sandbox_kill",
    "sandbox_pool_close",
    "script_compile",
    "script_debug_run",
    "script_execute",
]


def script_compile(*, code: str) -> None:
    """Check ``code`` without running it; raises ``ScriptError`` kind ``syntax`` or ``refused`` with line and column."""
    script_compile_code(code)


DataSources = dict[str, "str | dict[str, Any]"]


def _data_sources(data_sources: DataSources | None) -> dict[str, dict[str, Any]]:
    """``{name: {"url": str, "writable": bool, "allow_ddl": bool}}`` from that shape or ``{name: url}`` (read-only)."""
    shaped: dict[str, dict[str, Any]] = {}
    for name, value in (data_sources or {}).items():
        if isinstance(value, str):
            value = {"url": value}
        if not isinstance(value, dict) or not isinstance(value.get("url"), str) or not value["url"]:
            raise ScriptError("internal", f"data source {name!r}: expected a URL or {{'url': ..., 'writable': ..., 'allow_ddl': ...}}")
        shaped[str(name)] = {"url": value["url"], "writable": bool(value.get("writable")),
                             "allow_ddl": bool(value.get("allow_ddl"))}
    return shaped


def _request(code: str, bindings: dict[str, Any], timeout: float, memory_limit_mb: int,
             data_sources: DataSources | None, debug: dict | None) -> dict:
    try:
        bindings_json = json.dumps(bindings, ensure_ascii=False, default=str)
    except (TypeError, ValueError) as exc:
        raise ScriptError("internal", f"the bindings are not JSON: {exc}") from None
    return {
        "op": "run",
        "code": code,
        "bindings_json": bindings_json,
        "timeout": float(timeout),
        "memory_limit_mb": int(memory_limit_mb),
        "data_sources": _data_sources(data_sources),
        "debug": debug,
    }


def _result(reply: dict) -> ScriptResult:
    return ScriptResult(
        bindings=reply.get("bindings") or {},
        changed=set(reply.get("changed") or ()),
        output=reply.get("output") or "",
    )


def script_execute(
    *,
    code: str,
    bindings: dict[str, Any],
    timeout: float = 2.0,
    memory_limit_mb: int = 256,
    data_sources: DataSources | None = None,
    wall_s: float | None = None,
    token: object = None,
) -> ScriptResult:
    """Run ``code`` once on ``bindings`` (name -> JSON value) in a sandbox process; returns the ScriptResult.

    ``timeout``: CPU seconds (the process is killed past twice that in wall-clock time, at least one
    second more); ``memory_limit_mb``: what the script may allocate; ``data_sources``: name ->
    ``{"url": SQLAlchemy URL, "writable": bool, "allow_ddl": bool}`` (or a bare URL: read-only, no
    DDL), reachable as ``sql("name")`` (what each refuses: sandbox/data_sources.py, docs/scripts.md).
    ``wall_s``: wall-clock seconds at most (an execution's remaining time), below the default; ``token``
    (hashable) names the run, so that ``sandbox_kill(token)`` can stop it from another thread (kind ``killed``).
    Raises ``ScriptError`` (see its ``kind``); thread-safe.
    """
    request = _request(code, bindings, timeout, memory_limit_mb, data_sources, None)
    wall = wall_deadline_s(float(timeout))
    if wall_s is not None:
        wall = max(0.0, min(wall, float(wall_s)))
    reply = sandbox_pool().run(request, wall_s=wall, token=token)
    if not reply.get("ok"):
        raise ScriptError.from_dict(reply.get("error") or {})
    return _result(reply)


def script_debug_run(
    *,
    code: str,
    bindings: dict[str, Any],
    breakpoints: list[int] | None = None,
    actions: list[str] | None = None,
    on_stop: Callable[[DebugStop], str] | None = None,
    timeout: float = 2.0,
    memory_limit_mb: int = 256,
    data_sources: DataSources | None = None,
) -> DebugRun:
    """Run ``code`` under the debugger; returns every stop and the result (or the error). Never raises for the script.

    The run stops before each line in ``breakpoints`` (1-based), and, after a stop, takes the next of
    ``actions``: ``"step"`` stops again before the next line run, ``"continue"`` (the default once
    they run out) runs to the next breakpoint. With ``on_stop`` (interactive), it is called at each
    stop and returns the action instead. The last stop is always the end (``event="end"``), unless
    the script failed. At most 1,000 stops are recorded (``truncated``). Nothing is written anywhere.
    """
    for action in actions or ():
        if action not in ("step", "continue"):
            raise ValueError(f"unknown debugger action {action!r}: use 'step' or 'continue'")
    debug = {"breakpoints": sorted({int(b) for b in breakpoints or ()}), "actions": list(actions or ()),
             "interactive": on_stop is not None}
    request = _request(code, bindings, timeout, memory_limit_mb, data_sources, debug)

    def ask(stop: dict) -> str:
        action = on_stop(_stop(stop)) if on_stop else "continue"
        return action if action in ("step", "continue") else "continue"

    run = DebugRun()
    try:
        reply = sandbox_pool().run(request, wall_s=wall_deadline_s(float(timeout)), on_stop=ask if on_stop else None)
    except ScriptError as exc:
        run.error = exc
        return run
    run.stops = [_stop(s) for s in reply.get("stops") or ()]
    run.truncated = bool(reply.get("truncated"))
    if reply.get("ok"):
        run.result = _result(reply)
    else:
        run.error = ScriptError.from_dict(reply.get("error") or {})
    return run


def _stop(data: dict) -> DebugStop:
    return DebugStop(
        event=data.get("event", "breakpoint"),
        line=data.get("line"),
        function=data.get("function", "<module>"),
        bindings=data.get("bindings") or {},
        locals=data.get("locals") or {},
    )
