"""Sandbox escapes known from RestrictedPython's and other Python sandboxes' histories: each is refused or contained."""

from __future__ import annotations

import hashlib
import sqlite3

import pytest

from scripts_engine.sandbox import ScriptError, pool, script_execute

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


# --- sql(): a data source reaches its own database and nothing else -------------------------------


@pytest.fixture
def hubsched_db(tmp_path):
    """A SQLite file standing for hubsched's own database: an admin's password hash, a hub key, a project."""
    path = tmp_path / "hubsched.sqlite3"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE auth_user (username TEXT, password TEXT, is_superuser INTEGER)")
        db.execute("INSERT INTO auth_user VALUES ('admin', 'pbkdf2_sha256$870000$salt$hash', 1)")
        db.execute("CREATE TABLE hubs_hub (name TEXT, api_key TEXT)")
        db.execute("INSERT INTO hubs_hub VALUES ('hub-a', 'fernet:secret-key')")
        db.execute("CREATE TABLE hubs_project (id INTEGER, name TEXT)")
        db.execute("INSERT INTO hubs_project VALUES (1, 'plant')")
    db.close()
    return path


@pytest.fixture
def plant_db(tmp_path):
    """The project's own SQLite data source, with one table ``t``."""
    path = tmp_path / "plant.sqlite3"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, value REAL)")
        db.execute("INSERT INTO t VALUES (1, 2.5)")
    db.close()
    return path


def digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def sources(path) -> list[dict]:
    """The same SQLite file as every kind of data source: what is refused here is refused on all of them."""
    url = f"sqlite:///{path}"
    return [{"url": url}, {"url": url, "writable": True}, {"url": url, "writable": True, "allow_ddl": True}]


def sql_refused(code: str, source: dict, fragment: str) -> ScriptError:
    with pytest.raises(ScriptError) as caught:
        script_execute(code=code, bindings={}, data_sources={"plant": source})
    error = caught.value
    assert error.kind == "runtime" and f'SqlError: sql("plant"): {fragment}' in str(error), str(error)
    return error


def test_a_script_cannot_attach_hubsched_s_database_and_read_its_secrets(hubsched_db, plant_db):
    before = digest(hubsched_db)
    attack = (
        "s = sql('plant')\n"
        f"s.query(\"ATTACH DATABASE '{hubsched_db}' AS h\")\n"
        "hashes = s.query('SELECT password FROM h.auth_user')\n"
        "keys = s.query('SELECT api_key FROM h.hubs_hub')\n"
        "s.query(\"UPDATE h.hubs_project SET name = 'owned'\")\n"
    )
    for source in sources(plant_db):
        error = sql_refused(attack, source, "ATTACH is not allowed on a data source")
        assert error.line == 2 and "pbkdf2" not in str(error)
        # A bound file name is refused the same way.
        sql_refused(f"sql('plant').query('ATTACH DATABASE :f AS h', f={str(hubsched_db)!r})", source,
                    "ATTACH is not allowed on a data source")
    assert digest(hubsched_db) == before


def test_no_attachment_is_left_on_the_pooled_connection_for_the_next_run(hubsched_db, plant_db):
    pool.sandbox_pool_close()
    with pool._pool_lock:
        pool._pool = pool.SandboxPool(size=1)  # the next run lands on the same process and pool
    try:
        source = sources(plant_db)[2]
        code = f"try:\n    sql('plant').query(\"ATTACH DATABASE '{hubsched_db}' AS h\")\nexcept Exception:\n    pass"
        script_execute(code=code, bindings={}, data_sources={"plant": source})
        after = script_execute(code="dbs = [r['name'] for r in sql('plant').query('PRAGMA database_list')]",
                               bindings={}, data_sources={"plant": source})
        assert after.bindings["dbs"] == ["main"]
        sql_refused("rows = sql('plant').query('SELECT password FROM h.auth_user')", source, "no such table")
    finally:
        pool.sandbox_pool_close()


def test_detach_is_refused(plant_db):
    for source in sources(plant_db):
        sql_refused("sql('plant').query('DETACH DATABASE main')", source, "DETACH is not allowed on a data source")


def test_vacuum_into_is_refused_and_writes_no_copy(plant_db, tmp_path):
    copy = tmp_path / "stolen.sqlite3"
    for source in sources(plant_db):
        sql_refused(f"sql('plant').query(\"VACUUM INTO '{copy}'\")", source, "VACUUM INTO is not allowed on a data source")
        sql_refused("sql('plant').query('VACUUM')", source, "VACUUM is not allowed on a data source")
    assert not copy.exists()


def test_load_extension_is_refused(plant_db, tmp_path):
    for source in sources(plant_db):
        sql_refused(f"sql('plant').query(\"SELECT load_extension('{tmp_path / 'evil.so'}')\")", source,
                    "load_extension() is not allowed on a data source")


WRITING_PRAGMAS = ["PRAGMA user_version = 5", "PRAGMA journal_mode = DELETE", "PRAGMA main.user_version = 5",
                   "PRAGMA query_only = OFF", "PRAGMA writable_schema = ON", "PRAGMA optimize",
                   "PRAGMA wal_checkpoint(TRUNCATE)"]


@pytest.mark.parametrize("statement", WRITING_PRAGMAS)
def test_a_pragma_that_writes_is_refused(plant_db, statement):
    with sqlite3.connect(plant_db) as db:
        db.execute("PRAGMA journal_mode = WAL")
    db.close()
    for source in sources(plant_db):
        sql_refused(f"sql('plant').query({statement!r})", source, "PRAGMA ")
    with sqlite3.connect(plant_db) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == 0
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    db.close()


def test_a_pragma_that_reads_is_allowed(plant_db):
    code = ("cols = [r['name'] for r in sql('plant').query('PRAGMA table_info(t)')]\n"
            "version = sql('plant').query('PRAGMA user_version')[0]['user_version']\n"
            "listed = [r['name'] for r in sql('plant').query(\"SELECT name FROM pragma_table_info('t')\")]")
    for source in sources(plant_db):
        result = script_execute(code=code, bindings={}, data_sources={"plant": source})
        assert result.bindings["cols"] == result.bindings["listed"] == ["id", "value"]
        assert result.bindings["version"] == 0
