"""What a script may say: RestrictedPython's policy plus ours (import allow-list, no classes, no eval/exec/type)."""

from __future__ import annotations

import ast
import types

from RestrictedPython import RestrictingNodeTransformer

from .errors import ScriptError

SCRIPT_FILENAME = "<script>"
# The only modules a script may import; each is handed over as a read-only proxy (see runtime.py).
ALLOWED_MODULES = ("math", "statistics", "datetime", "json", "re")
# Big enough for any real script; bounds the parser's and compiler's work at save time.
MAX_SOURCE_CHARS = 256 * 1024

# Calls refused at compile time because they open the interpreter back up; none of these names is
# a builtin in the sandbox either, so an indirect use (f = eval) fails at run time with a NameError.
REFUSED_CALLS = {
    "eval": "eval() is not available in scripts",
    "exec": "exec() is not available in scripts",
    "compile": "compile() is not available in scripts",
    "open": "open() is not available in scripts: no files",
    "input": "input() is not available in scripts",
    "breakpoint": "breakpoint() is not available in scripts; use the debugger's breakpoints",
    "globals": "globals() is not available in scripts",
    "locals": "locals() is not available in scripts",
    "vars": "vars() is not available in scripts",
    "dir": "dir() is not available in scripts",
    "type": "type() is not available in scripts; use isinstance()",
    "super": "super() is not available in scripts",
    "object": "object() is not available in scripts",
    "memoryview": "memoryview() is not available in scripts",
    "help": "help() is not available in scripts",
    "exit": "exit() is not available in scripts",
    "quit": "quit() is not available in scripts",
}


class ScriptPolicy(RestrictingNodeTransformer):
    """RestrictedPython's transformer, recording each refusal with its line and (1-based) column."""

    def __init__(self, errors=None, warnings=None, used_names=None):
        super().__init__(errors, warnings, used_names)
        self.located: list[tuple[int | None, int | None, str]] = []

    def error(self, node: ast.AST, info: str) -> None:
        super().error(node, info)
        line = getattr(node, "lineno", None)
        col = getattr(node, "col_offset", None)
        self.located.append((line or None, None if col is None or not line else col + 1, info))

    def visit_Import(self, node: ast.Import):
        for alias in node.names:
            self._check_module(node, alias.name)
        return super().visit_Import(node)

    def visit_ImportFrom(self, node: ast.ImportFrom):
        if node.level:
            self.error(node, "relative imports are not allowed in scripts")
        else:
            self._check_module(node, node.module or "")
        return super().visit_ImportFrom(node)

    def _check_module(self, node: ast.AST, name: str) -> None:
        if name not in ALLOWED_MODULES:
            self.error(node, f"import of {name!r}: scripts may import only {', '.join(ALLOWED_MODULES)}")

    def visit_ClassDef(self, node: ast.ClassDef):
        # Classes bring metaclasses, __init_subclass__ and type() machinery; scripts do not need them.
        self.error(node, "class definitions are not allowed in scripts")
        return node

    def visit_Call(self, node: ast.Call):
        if isinstance(node.func, ast.Name) and node.func.id in REFUSED_CALLS:
            self.error(node, REFUSED_CALLS[node.func.id])
        return super().visit_Call(node)


def script_compile_code(code: str) -> types.CodeType:
    """Compile ``code`` under the sandbox policy; returns the code object (file name ``<script>``).

    Raises ``ScriptError`` kind ``syntax`` (not Python) or ``refused`` (policy), with the first
    offending line and 1-based column; every refusal is listed in ``traceback``.
    """
    if not isinstance(code, str):
        raise ScriptError("refused", "the script is not text")
    if len(code) > MAX_SOURCE_CHARS:
        raise ScriptError("refused", f"the script has {len(code)} characters; the limit is {MAX_SOURCE_CHARS}")
    try:
        tree = ast.parse(code, SCRIPT_FILENAME, "exec")
    except SyntaxError as exc:
        raise _syntax_error(exc) from None
    except (RecursionError, MemoryError, ValueError) as exc:
        raise ScriptError("refused", f"the script is too deeply nested to compile ({type(exc).__name__})") from None
    policy = ScriptPolicy()
    try:
        tree = policy.visit(tree)
    except (RecursionError, MemoryError):
        raise ScriptError("refused", "the script is too deeply nested to compile") from None
    if policy.located:
        line, column, info = policy.located[0]
        listing = "\n".join(f"line {ln}, column {col}: {msg}" for ln, col, msg in policy.located)
        raise ScriptError("refused", f"refused: {info}", line=line, column=column, traceback=listing)
    try:
        return compile(tree, SCRIPT_FILENAME, "exec", dont_inherit=True)
    except SyntaxError as exc:  # e.g. 'return' outside function: found by the compiler, not the parser
        raise _syntax_error(exc) from None
    except (RecursionError, MemoryError, ValueError) as exc:
        raise ScriptError("refused", f"the script is too deeply nested to compile ({type(exc).__name__})") from None


def _syntax_error(exc: SyntaxError) -> ScriptError:
    text = (exc.text or "").rstrip("\n")
    caret = ""
    if text and exc.offset:
        caret = f"\n    {text.strip()}\n    {' ' * max(0, exc.offset - 1 - (len(text) - len(text.lstrip())))}^"
    return ScriptError(
        "syntax",
        f"{type(exc).__name__}: {exc.msg}",
        line=exc.lineno,
        column=exc.offset,
        traceback=f'  File "{SCRIPT_FILENAME}", line {exc.lineno}{caret}\n{type(exc).__name__}: {exc.msg}',
    )
