"""Sandbox escapes known from RestrictedPython's and other Python sandboxes' histories: each is refused or contained."""

from __future__ import annotations

import pytest

from scripts_engine.sandbox import ScriptError, script_execute

# (case id, script, kind of ScriptError, a fragment of its message, why this is the right outcome)
CORPUS = [
    ("dunder-class-walk", "x = ().__class__.__bases__[0].__subclasses__()", "refused", "starts with \"_\"",
     "the classic object.__subclasses__() walk needs a _ attribute; refused at compile time"),
    ("function-globals", "f = lambda: 0\ng = f.__globals__", "refused", "__globals__",
     "__globals__ would hand over the module namespace and its __builtins__"),
    ("builtins-name", "b = __builtins__", "refused", "__builtins__",
     "names starting with _ cannot even be read"),
    ("builtins-via-getattr", "f = lambda: 0\ng = getattr(f, '__globals__')", "runtime", "starts with",
     "getattr() is RestrictedPython's safer_getattr: no _ names at run time either"),
    ("import-os", "import os", "refused", "scripts may import only",
     "only math, statistics, datetime, json, re"),
    ("from-import-subprocess", "from subprocess import Popen", "refused", "scripts may import only",
     "no processes"),
    ("dunder-import", "os = __import__('os')", "refused", "__import__",
     "__import__ is a _ name"),
    ("import-submodule", "import json.decoder", "refused", "scripts may import only",
     "a submodule is another module; only the five names are allowed"),
    ("module-walk-json", "import json\nre = json.decoder", "runtime", "no attribute 'decoder'",
     "allowed modules are proxies holding no module attributes (json.decoder.re.enum.sys ...)"),
    ("module-walk-statistics", "import statistics\nm = statistics.sys.modules", "runtime", "no attribute 'sys'",
     "statistics imports sys; the proxy does not pass it on"),
    ("module-walk-datetime", "import datetime\nt = datetime.sys", "runtime", "no attribute 'sys'",
     "the same for datetime"),
    ("module-loader", "import math\nl = math.__loader__", "refused", "__loader__",
     "the loader would reach the import system"),
    ("module-state-write", "import math\nmath.pi = 3", "runtime", "attribute-less object",
     "module proxies are shared between runs; attribute writes are refused by the write guard"),
    ("setattr-module", "import math\nsetattr(math, 'pi', 3)", "runtime", "attribute-less object",
     "setattr() is RestrictedPython's guarded_setattr"),
    ("str-format-attr", "s = '{0.__class__}'.format(1)", "runtime", "format",
     "format strings walk attributes in C; str.format is refused (RestrictedPython safer_getattr)"),
    ("str-format-map", "s = '{x.__class__}'.format_map({'x': 1})", "runtime", "format",
     "str.format_map is refused for the same reason"),
    ("str-format-unbound", "s = str.format('{0.__class__}', 1)", "runtime", "format",
     "str.format taken from the type is refused too"),
    ("fstring-dunder", "s = f'{(1).__class__}'", "refused", "__class__",
     "an f-string's fields are expressions, checked like any other"),
    ("generator-frame", "g = (i for i in [1])\nf = g.gi_frame.f_back.f_globals", "refused", "restricted name",
     "frame walks from generators (CVE-2023-37271) are refused"),
    ("generator-frame-getattr", "g = (i for i in [1])\nf = getattr(g, 'gi_frame')", "runtime", "restricted name",
     "and at run time through getattr()"),
    ("generator-code", "def g():\n    yield 1\nc = g().gi_code", "refused", "gi_code",
     "code objects are interpreter internals"),
    ("traceback-frame", "try:\n    1/0\nexcept Exception as e:\n    t = e.__traceback__.tb_frame", "refused", "restricted name",
     "tracebacks lead to frames and their globals"),
    ("exception-group", "try:\n    pass\nexcept* ValueError:\n    pass", "refused", "TryStar",
     "try/except* was an escape route (RestrictedPython refuses it)"),
    ("class-definition", "class X:\n    pass", "refused", "class definitions",
     "classes bring metaclasses and type() machinery"),
    ("decorator-class", "@len\nclass X:\n    pass", "refused", "class definitions",
     "decorated classes were used to call builtins without parentheses"),
    ("decorator-function", "@eval\ndef f():\n    pass", "runtime", "name 'eval' is not defined",
     "a decorator is only a call: eval is no builtin here, so it fails"),
    ("type-three-args", "T = type('T', (), {})", "refused", "type()",
     "type() would create classes or reveal types"),
    ("type-indirect", "t = [type][0]", "runtime", "name 'type' is not defined",
     "type is no builtin, so even an indirect use fails"),
    ("eval", "x = eval('1+1')", "refused", "eval()", "no eval"),
    ("exec", "exec('x = 1')", "refused", "exec()", "no exec"),
    ("compile", "c = compile('1', 'f', 'eval')", "refused", "compile()", "no compile"),
    ("eval-alias", "e = eval", "runtime", "name 'eval' is not defined", "eval is not a builtin at all"),
    ("open-file", "f = open('/etc/passwd')", "refused", "no files", "no files"),
    ("globals-call", "g = globals()", "refused", "globals()", "no namespace access"),
    ("vars-call", "v = vars()", "refused", "vars()", "no namespace access"),
    ("rebind-guard", "_getattr_ = getattr", "refused", "_getattr_",
     "the guards cannot be replaced: _ names cannot be bound"),
    ("print-to-file", "import json\nprint('x', file=json)", "runtime", "write",
     "print(file=...) needs a write() that scripts do not have"),
    ("nonlocal", "def f():\n    x = 1\n    def g():\n        nonlocal x\n        x = 2", "refused", "Nonlocal",
     "RestrictedPython refuses nonlocal"),
    ("async-def", "async def f():\n    pass", "refused", "AsyncFunctionDef", "no coroutines (cr_frame walks)"),
    ("sql-internals", "s = sql('x')", "runtime", "no data source named 'x'",
     "sql() reaches only the project's named data sources"),
    ("sql-url", "s = sql\nu = s.__closure__", "refused", "__closure__",
     "the data sources' URLs stay out of reach"),
    ("huge-exponent", "x = 10 ** 10 ** 9", "timeout", "CPU time",
     "big-integer arithmetic is stopped by the CPU time limit"),
    ("huge-repetition", "s = 'x' * (10 ** 11)", "memory", "memory",
     "RLIMIT_AS refuses the allocation"),
    ("list-repetition", "a = [0] * (10 ** 10)", "memory", "memory",
     "same for lists"),
    ("unbounded-growth", "a = []\nwhile True:\n    a.append('x' * 100000)", "memory", "memory",
     "allocation without bound ends at the memory limit"),
    ("recursion-bomb", "def f(n):\n    return f(n + 1)\nf(0)", "runtime", "RecursionError",
     "Python's recursion limit holds; the traceback is cut"),
    ("endless-loop", "while True:\n    pass", "timeout", "CPU time",
     "the CPU timer interrupts the loop"),
    ("swallowed-timeout", "while True:\n    try:\n        while True:\n            pass\n    except BaseException:\n        pass",
     "timeout", "", "a script that catches the interruption is interrupted again, and its process is ended"),
    ("print-bomb", "while True:\n    print('x' * 100000)", "output", "printed more than",
     "printing gigabytes is stopped"),
    ("catastrophic-regex", "import re\nm = re.match('(a+)+$', 'a' * 64 + 'b')", "timeout", "",
     "a regular expression that never returns to Python is ended by RLIMIT_CPU or the wall-clock kill"),
    ("deep-nesting-compile", "x = " + "-" * 100000 + "1", "refused", "too deeply nested",
     "a source that would exhaust the compiler is refused"),
    ("json-bomb", "import json\nx = json.loads('[' * 1000000 + ']' * 1000000)", "runtime", "RecursionError",
     "the JSON decoder's depth check holds"),
]


@pytest.mark.parametrize("case, code, kind, fragment, reason", CORPUS, ids=[c[0] for c in CORPUS])
def test_every_known_escape_is_refused_or_contained(case, code, kind, fragment, reason):
    with pytest.raises(ScriptError) as caught:
        script_execute(code=code, bindings={}, timeout=1.0, memory_limit_mb=128)
    error = caught.value
    assert error.kind == kind, f"{case}: expected {kind} ({reason}), got {error.kind}: {error}"
    assert fragment in str(error), f"{case}: {error}"


def test_the_corpus_holds_at_least_thirty_cases():
    assert len(CORPUS) >= 30


def test_the_sandbox_still_works_after_the_whole_corpus():
    result = script_execute(code="p1 = p1 * 2", bindings={"p1": 21})
    assert result.bindings["p1"] == 42 and result.changed == {"p1"}
