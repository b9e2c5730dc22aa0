"""Inside a sandbox process: the script's namespace and guards, its limits, sql(), the debugger, and the result.

Runs only in the sandbox child (child.py), never in the worker: the limits here (a CPU timer,
RLIMIT_CPU, RLIMIT_AS) apply to the whole process.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import operator
import resource
import signal
import sys
import traceback
import types
from collections import OrderedDict
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from typing import Any

from RestrictedPython import PrintCollector, safe_builtins
from RestrictedPython.Guards import (
    full_write_guard,
    guarded_iter_unpack_sequence,
    guarded_unpack_sequence,
    safer_getattr,
    safer_getattr_raise,
)

from .data_sources import DataSource, SqlError, engines_dispose, run_begins, sql_factory  # noqa: F401
from .data_sources import _plain
from .errors import DebugStop, ScriptError
from .policy import ALLOWED_MODULES, SCRIPT_FILENAME, script_compile_code

OUTPUT_KEEP = 64 * 1024  # characters of print() output kept
OUTPUT_STOP = 1024 * 1024  # characters printed after which the script is stopped
RESULT_MAX_BYTES = 16 * 1024 * 1024  # bindings after the run, as JSON
MAX_STOPS = 1000  # debugger stops recorded per run
REPR_MAX = 2000  # characters of a non-JSON value's repr shown by the debugger

_missing = object()


# --- limits -------------------------------------------------------------------------------------


class _Limit(BaseException):
    """Raised into the script when it passes a limit; BaseException so that ``except Exception`` does not catch it."""


class _CpuLimit(_Limit):
    pass


class _OutputLimit(_Limit):
    pass


class RunState:
    """What one run has printed and whether it has passed a limit (a script may swallow the exception; this may not)."""

    def __init__(self) -> None:
        self.parts: list[str] = []
        self.kept = 0
        self.total = 0
        self.stopped: str | None = None  # "timeout" | "output"

    def write(self, text: str) -> None:
        if self.stopped == "output":
            raise _OutputLimit()
        text = str(text)
        self.total += len(text)
        if self.kept < OUTPUT_KEEP:
            piece = text[: OUTPUT_KEEP - self.kept]
            self.parts.append(piece)
            self.kept += len(piece)
        if self.total > OUTPUT_STOP:
            self.stopped = "output"
            raise _OutputLimit()

    @property
    def output(self) -> str:
        text = "".join(self.parts)
        if self.total > self.kept:
            text += f"\n[output cut: {self.total - self.kept} more characters]"
        return text


_state: RunState | None = None
_armed = False  # the CPU timer belongs to a running script


def _on_cpu_limit(signum, frame) -> None:
    if _armed and _state is not None:
        _state.stopped = "timeout"
        # A script that swallows the exception is interrupted again shortly; RLIMIT_CPU ends the process at last.
        signal.setitimer(signal.ITIMER_PROF, 0.05)
        raise _CpuLimit()


def install_process_limits() -> None:
    """Once per sandbox process: no core files, and the CPU-timer handler."""
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    signal.signal(signal.SIGPROF, _on_cpu_limit)


def _vm_size_bytes() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[0]) * resource.getpagesize()
    except OSError:
        return 0


class _Limits:
    """CPU time (a profiling timer, then RLIMIT_CPU as backstop) and address space for the length of one run."""

    def __init__(self, timeout: float, memory_limit_mb: int):
        self.timeout = max(0.001, float(timeout))
        self.memory = int(memory_limit_mb) * 1024 * 1024

    def __enter__(self):
        usage = resource.getrusage(resource.RUSAGE_SELF)
        used = usage.ru_utime + usage.ru_stime
        # RLIMIT_CPU counts the process's life in whole seconds; SIGXCPU's default action ends the process.
        resource.setrlimit(resource.RLIMIT_CPU, (int(used + self.timeout) + 2, resource.RLIM_INFINITY))
        if self.memory:
            resource.setrlimit(resource.RLIMIT_AS, (_vm_size_bytes() + self.memory, resource.RLIM_INFINITY))
        global _armed
        _armed = True
        signal.setitimer(signal.ITIMER_PROF, self.timeout)
        return self

    def __exit__(self, *exc) -> None:
        global _armed
        _armed = False  # first: a signal arriving from here on is ignored
        signal.setitimer(signal.ITIMER_PROF, 0)
        resource.setrlimit(resource.RLIMIT_AS, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
        resource.setrlimit(resource.RLIMIT_CPU, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))


# --- guards -------------------------------------------------------------------------------------


class SafeModule:
    """A read-only stand-in for an allowed module: its public functions, classes and constants, never a module.

    Walking from an allowed module to another (``json.decoder``, ``statistics.sys``) is how module
    allow-lists are escaped; the proxy holds no module, and attribute writes go through ``_write_``,
    which refuses them.
    """

    __slots__ = ("_name", "_members")

    def __init__(self, module: types.ModuleType):
        object.__setattr__(self, "_name", module.__name__)
        members = {}
        for key, value in vars(module).items():
            if key.startswith("_") or isinstance(value, types.ModuleType):
                continue
            if isinstance(value, (dict, list, set, bytearray)):
                continue  # mutable module state would be shared between runs
            members[key] = value
        object.__setattr__(self, "_members", members)

    def __getattr__(self, name: str):
        try:
            return self._members[name]
        except KeyError:
            raise AttributeError(f"module {self._name!r} has no attribute {name!r} in scripts") from None

    def __repr__(self) -> str:
        return f"<module {self._name!r}>"


# Imported when the sandbox process starts, before any run's RLIMIT_AS: loading an extension module
# (math is one) under a script's memory limit could fail, and a run should not pay for the import.
_MODULES = {name: SafeModule(importlib.import_module(name)) for name in ALLOWED_MODULES}


def guarded_import(name, globals=None, locals=None, fromlist=(), level=0):
    # The policy refuses other imports at compile time; this is the run-time half.
    if level or name not in _MODULES:
        raise ImportError(f"import of {name!r}: scripts may import only {', '.join(ALLOWED_MODULES)}")
    return _MODULES[name]


def guarded_getattr(obj, name, default=_missing):
    """RestrictedPython's ``safer_getattr`` (no ``_`` names, no str.format, no frame walks), and never a module."""
    if default is _missing:
        value = safer_getattr_raise(obj, name)
    else:
        value = safer_getattr(obj, name, default)
    if isinstance(value, types.ModuleType):
        raise AttributeError(f"{name!r} is a module; scripts reach modules only by importing allowed ones")
    if isinstance(value, (types.FrameType, types.CodeType, types.TracebackType)):
        raise AttributeError(f"{name!r} is interpreter internals, not available in scripts")
    return value


def guarded_getitem(obj, index):
    return obj[index]


def guarded_apply(func, *args, **kwargs):
    return func(*args, **kwargs)


_INPLACE = {
    "+=": operator.iadd,
    "-=": operator.isub,
    "*=": operator.imul,
    "/=": operator.itruediv,
    "//=": operator.ifloordiv,
    "%=": operator.imod,
    "**=": operator.ipow,
    "<<=": operator.ilshift,
    ">>=": operator.irshift,
    "|=": operator.ior,
    "^=": operator.ixor,
    "&=": operator.iand,
    "@=": operator.imatmul,
}


def guarded_inplacevar(op: str, target, value):
    return _INPLACE[op](target, value)


class _CappedPrint(PrintCollector):
    """RestrictedPython's PrintCollector writing into the run's capped output."""

    def write(self, text: str) -> None:
        if _state is not None:
            _state.write(text)
        super().write(text[:OUTPUT_KEEP])


def _print_factory(_getattr_=None):
    return _CappedPrint(_getattr_)


def _safe_getattr_builtin(obj, name, *default):
    return guarded_getattr(obj, name, *default[:1])


def _hasattr(obj, name) -> bool:
    try:
        guarded_getattr(obj, name)
    except (AttributeError, NotImplementedError, TypeError):
        return False
    return True


def _builtins() -> dict[str, Any]:
    names = dict(safe_builtins)
    # RestrictedPython leaves these out because they iterate in C past a _getiter_ guard; ours is plain
    # iter() (the guard that matters here is on attributes), so they are as safe as a for loop.
    for name in (
        "list", "dict", "tuple", "set", "frozenset", "sorted", "reversed", "zip", "enumerate", "map",
        "filter", "min", "max", "sum", "any", "all", "iter", "next", "format", "bin",
    ):
        names[name] = getattr(__import__("builtins"), name)
    for name in ("__build_class__", "id"):
        names.pop(name, None)
    names["getattr"] = _safe_getattr_builtin
    names["hasattr"] = _hasattr
    names["__import__"] = guarded_import
    return names


SCRIPT_BUILTINS = _builtins()
GUARD_NAMES = {
    "_getattr_": guarded_getattr,
    "_getitem_": guarded_getitem,
    "_getiter_": iter,
    "_write_": full_write_guard,
    "_inplacevar_": guarded_inplacevar,
    "_apply_": guarded_apply,
    "_iter_unpack_sequence_": guarded_iter_unpack_sequence,
    "_unpack_sequence_": guarded_unpack_sequence,
    "_print_": _print_factory,
}
HELPER_NAMES = {"sql"}


# --- sql() --------------------------------------------------------------------------------------

# sql("name"), its guards and its connections are in data_sources.py (imported above); the run
# calls run_begins() first, and the process calls engines_dispose() before it ends.


# --- compiling, with a cache --------------------------------------------------------------------

_compiled: OrderedDict[str, types.CodeType | ScriptError] = OrderedDict()


def compiled(code: str) -> types.CodeType:
    key = hashlib.sha256(code.encode("utf-8", "surrogatepass")).hexdigest()
    hit = _compiled.get(key)
    if hit is None:
        try:
            hit = script_compile_code(code)
        except ScriptError as exc:
            hit = exc
        _compiled[key] = hit
        if len(_compiled) > 512:
            _compiled.popitem(last=False)
    else:
        _compiled.move_to_end(key)
    if isinstance(hit, ScriptError):
        raise ScriptError(hit.kind, hit.message, line=hit.line, column=hit.column, traceback=hit.traceback)
    return hit


# --- JSON out -----------------------------------------------------------------------------------


def _json_default(value):
    if isinstance(value, (datetime, date, time)):
        return value.isoformat()
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, (set, frozenset)):
        return sorted(value, key=repr)
    if isinstance(value, Decimal):
        return _plain(value)
    raise TypeError(f"{type(value).__name__} is not a JSON value")


def to_json(value) -> str:
    return json.dumps(value, default=_json_default, ensure_ascii=False)


def _shown(value):
    """A value as the debugger shows it: itself when JSON, else its (cut) repr."""
    try:
        return json.loads(to_json(value))
    except (TypeError, ValueError, RecursionError):
        text = repr(value)
        return text if len(text) <= REPR_MAX else text[:REPR_MAX] + "..."


def _same(before, after) -> bool:
    try:
        if before == after:
            return True
    except Exception:
        return False
    try:  # NaN != NaN, yet an unchanged NaN is not a change
        return to_json(before) == to_json(after)
    except (TypeError, ValueError, RecursionError):
        return False


def _visible(namespace: dict, name: str, value) -> bool:
    if name.startswith("_") or name in HELPER_NAMES:
        return False
    return not isinstance(value, (types.ModuleType, SafeModule, types.FunctionType, types.BuiltinFunctionType,
                                  types.GeneratorType, type, DataSource))


# --- the debugger -------------------------------------------------------------------------------


class _Tracer:
    """sys.settrace hook: stops before a breakpoint line, or before the next line after a ``step``."""

    def __init__(self, breakpoints, actions, input_names, ask=None):
        self.breakpoints = {int(b) for b in breakpoints or ()}
        self.actions = list(actions or [])
        self.input_names = list(input_names)
        self.ask = ask  # interactive: called with each stop, returns "step" or "continue"
        self.stepping = False
        self.stops: list[DebugStop] = []
        self.truncated = False

    def global_trace(self, frame, event, arg):
        if frame.f_code.co_filename != SCRIPT_FILENAME:
            return None
        return self.local_trace

    def local_trace(self, frame, event, arg):
        if event != "line" or frame.f_code.co_filename != SCRIPT_FILENAME or frame.f_lineno < 1:
            return self.local_trace
        line = frame.f_lineno
        if self.stepping:
            event_name = "step"
        elif line in self.breakpoints:
            event_name = "breakpoint"
        else:
            return self.local_trace
        if len(self.stops) >= MAX_STOPS:
            self.truncated = True
            self.stepping = False
            self.breakpoints = set()
            sys.settrace(None)
            return None
        stop = self.snapshot(frame, event_name, line)
        self.stops.append(stop)
        action = self.ask(stop) if self.ask else (self.actions.pop(0) if self.actions else "continue")
        self.stepping = action == "step"
        return self.local_trace

    def snapshot(self, frame, event: str, line: int | None) -> DebugStop:
        module_ns = frame.f_globals
        bindings = {n: _shown(module_ns[n]) for n in self.input_names if n in module_ns}
        if frame.f_code.co_name == "<module>":
            scope = {n: v for n, v in module_ns.items() if n not in bindings and _visible(module_ns, n, v)}
            function = "<module>"
        else:
            scope = {n: v for n, v in frame.f_locals.items() if not n.startswith("_")}
            function = frame.f_code.co_name
        return DebugStop(event, line, function, bindings, {n: _shown(v) for n, v in scope.items()})

    def end_stop(self, namespace: dict) -> DebugStop:
        bindings = {n: _shown(namespace[n]) for n in self.input_names if n in namespace}
        scope = {n: _shown(v) for n, v in namespace.items() if n not in bindings and _visible(namespace, n, v)}
        return DebugStop("end", None, "<module>", bindings, scope)


# --- one run ------------------------------------------------------------------------------------


def _script_frames(tb) -> list[traceback.FrameSummary]:
    return [f for f in traceback.extract_tb(tb) if f.filename == SCRIPT_FILENAME]


def _error_from_exception(exc: BaseException, code: str, kind: str, message: str) -> ScriptError:
    frames = _script_frames(exc.__traceback__)
    lines = code.splitlines()
    text = ["Traceback (script frames only):"]
    if len(frames) > 12:  # a recursion: the first frames and the last ones say it all
        text_skip = len(frames) - 12
        shown = frames[:6] + [None] + frames[-6:]
    else:
        text_skip, shown = 0, frames
    for f in shown:
        if f is None:
            text.append(f"  ... {text_skip} more frames ...")
            continue
        where = "the script" if f.name == "<module>" else f"{f.name}()"
        text.append(f'  line {f.lineno}, in {where}')
        if f.lineno and 0 < f.lineno <= len(lines):
            source = lines[f.lineno - 1]
            text.append(f"    {source.strip()}")
            col = getattr(f, "colno", None)
            end = getattr(f, "end_colno", None)
            if col is not None and getattr(f, "end_lineno", f.lineno) == f.lineno and end:
                indent = len(source) - len(source.lstrip())
                text.append("    " + " " * (col - indent) + "^" * max(1, end - col))
    text.append(message)
    last = frames[-1] if frames else None
    column = getattr(last, "colno", None) if last else None
    return ScriptError(
        kind,
        message,
        line=last.lineno if last else None,
        column=column + 1 if column is not None else None,
        traceback="\n".join(text),
    )


def run(request: dict, ask=None) -> dict:
    """Run one request (see child.py for its shape); returns the reply as a dict ready for JSON.

    Reply: ``{"ok": true, "bindings": {...}, "changed": [...], "output": str, "stops": [...]}`` or
    ``{"ok": false, "error": {...}, "stops": [...], "replace": bool}`` (``replace``: this process should end).
    """
    global _state
    code = request["code"]
    debug = request.get("debug")
    try:
        code_object = compiled(code)
    except ScriptError as exc:
        return {"ok": False, "error": exc.as_dict(), "stops": []}
    inputs_json = request.get("bindings_json") or "{}"
    bindings = json.loads(inputs_json)
    pristine = json.loads(inputs_json)
    namespace: dict[str, Any] = {"__builtins__": SCRIPT_BUILTINS, "__name__": "__script__"}
    namespace.update(GUARD_NAMES)
    run_begins()  # no connection state from an earlier run reaches this one
    namespace["sql"] = sql_factory(request.get("data_sources") or {})
    namespace.update(bindings)
    tracer = _Tracer(debug.get("breakpoints"), debug.get("actions"), list(bindings), ask) if debug else None
    state = _state = RunState()
    failure: BaseException | None = None
    replace = False
    try:
        with _Limits(request.get("timeout", 2.0), request.get("memory_limit_mb", 256)):
            if tracer:
                sys.settrace(tracer.global_trace)
            try:
                exec(code_object, namespace)
            finally:
                sys.settrace(None)
    except BaseException as exc:  # the script's own, or a limit: reported below, never raised
        failure = exc
    finally:
        _state = None
    stops = [s.as_dict() for s in tracer.stops] if tracer else []
    error: ScriptError | None = None
    if state.stopped == "timeout" or isinstance(failure, _CpuLimit):
        error = _error_from_exception(failure, code, "timeout", f"stopped: the script used its {request.get('timeout', 2.0)} s of CPU time") if failure else ScriptError("timeout", "stopped: CPU time limit")
        replace = True  # it may have been interrupted inside a driver; start clean
    elif state.stopped == "output" or isinstance(failure, _OutputLimit):
        message = f"stopped: the script printed more than {OUTPUT_STOP} characters"
        error = _error_from_exception(failure, code, "output", message) if failure else ScriptError("output", message)
    elif isinstance(failure, MemoryError):
        limit = request.get("memory_limit_mb", 256)
        error = _error_from_exception(failure, code, "memory", f"stopped: the script needed more than {limit} MB of memory")
        replace = True
    elif isinstance(failure, RecursionError):
        error = _error_from_exception(failure, code, "runtime", f"RecursionError: {failure}")
    elif failure is not None:
        message = f"{type(failure).__name__}: {failure}" if str(failure) else type(failure).__name__
        error = _error_from_exception(failure, code, "runtime", message)
    if error is not None:
        error.output = state.output
        namespace.clear()
        return {"ok": False, "error": error.as_dict(), "stops": stops, "replace": replace, "truncated": bool(tracer and tracer.truncated)}
    if tracer:
        stops.append(tracer.end_stop(namespace).as_dict())
    return _reply(namespace, bindings, pristine, state, stops, code, bool(tracer and tracer.truncated))


def _reply(namespace, bindings, pristine, state, stops, code, truncated) -> dict:
    out: dict[str, str] = {}
    changed: list[str] = []
    size = 0
    for name, value in namespace.items():
        is_input = name in pristine
        if not is_input and not _visible(namespace, name, value):
            continue
        try:
            text = to_json(value)
        except (TypeError, ValueError, RecursionError) as exc:
            if is_input:
                message = f"TypeError: binding {name!r} holds a {type(value).__name__}, which cannot be stored ({exc})"
                return {"ok": False, "error": ScriptError("runtime", message, output=state.output).as_dict(), "stops": stops}
            continue
        size += len(text)
        if size > RESULT_MAX_BYTES:
            message = f"the bindings after the run exceed {RESULT_MAX_BYTES // (1024 * 1024)} MB as JSON"
            return {"ok": False, "error": ScriptError("output", message, output=state.output).as_dict(), "stops": stops}
        out[name] = text
        if is_input and not _same(pristine[name], value):
            changed.append(name)
    for name in pristine:  # an input the script deleted keeps its value
        if name not in out:
            out[name] = to_json(pristine[name])
    return {"ok": True, "bindings_raw": out, "changed": changed, "output": state.output, "stops": stops, "truncated": truncated}
