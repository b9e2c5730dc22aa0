"""The sandbox's result and error types, shared by the worker side and the sandbox processes (no Django here)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# What ScriptError.kind says, and who can act on it.
KINDS = ("syntax", "refused", "runtime", "timeout", "memory", "output", "internal", "killed")


@dataclass
class ScriptResult:
    """One finished run.

    ``bindings``: every binding after the run, by name: the inputs (possibly changed) plus the new
    top-level names the script bound whose values are JSON (modules, functions are left out).
    ``changed``: names of input bindings whose value is no longer ``==`` the input (in-place mutation counts).
    ``output``: what ``print()`` wrote, at most 64 KiB (the rest is cut).
    """

    bindings: dict[str, Any]
    changed: set[str]
    output: str = ""


class ScriptError(Exception):
    """A script that was refused or failed; ``str()`` reads ``line 3, column 5: ZeroDivisionError: division by zero``.

    ``kind``: ``syntax`` (not Python), ``refused`` (the sandbox policy refused it at compile time),
    ``runtime`` (an exception in the script), ``timeout`` (CPU time limit), ``memory`` (memory limit),
    ``output`` (printed too much), ``internal`` (the sandbox itself failed; not the script's fault),
    ``killed`` (stopped on request: ``sandbox_kill``, a person killed the execution).
    ``line``, ``column``: 1-based position in the script, when known. ``traceback``: cut to the script's frames.
    """

    def __init__(
        self,
        kind: str,
        message: str,
        *,
        line: int | None = None,
        column: int | None = None,
        traceback: str = "",
        output: str = "",
    ):
        self.kind = kind
        self.message = message
        self.line = line
        self.column = column
        self.traceback = traceback
        self.output = output
        super().__init__(self.__str__())

    def __str__(self) -> str:
        where = []
        if self.line is not None:
            where.append(f"line {self.line}")
            if self.column is not None:
                where.append(f"column {self.column}")
        return f"{', '.join(where)}: {self.message}" if where else self.message

    def __reduce__(self):
        return (_rebuild, (self.as_dict(),))

    def as_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "message": self.message,
            "line": self.line,
            "column": self.column,
            "traceback": self.traceback,
            "output": self.output,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ScriptError:
        return cls(
            str(data.get("kind") or "internal"),
            str(data.get("message") or ""),
            line=data.get("line"),
            column=data.get("column"),
            traceback=str(data.get("traceback") or ""),
            output=str(data.get("output") or ""),
        )


def _rebuild(data: dict[str, Any]) -> ScriptError:
    return ScriptError.from_dict(data)


@dataclass
class DebugStop:
    """Where a debug run paused: ``event`` is ``breakpoint``, ``step`` or ``end``; ``line`` is 1-based (None at the end).

    ``bindings``: the input bindings' current values; ``locals``: the other variables of the frame that
    stopped (top-level names the script bound, or a function's locals). Values that are not JSON are
    shown as their ``repr``.
    """

    event: str
    line: int | None
    function: str
    bindings: dict[str, Any]
    locals: dict[str, Any]

    def as_dict(self) -> dict[str, Any]:
        return {
            "event": self.event,
            "line": self.line,
            "function": self.function,
            "bindings": self.bindings,
            "locals": self.locals,
        }


@dataclass
class DebugRun:
    """A whole debug run: its stops in order, then either ``result`` or ``error``."""

    stops: list[DebugStop] = field(default_factory=list)
    result: ScriptResult | None = None
    error: ScriptError | None = None
    truncated: bool = False
