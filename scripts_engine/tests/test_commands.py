"""manage.py script_run and script_debug, run as an integrator would run them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def manage(*args: str, stdin: str = "") -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "manage.py", *args], cwd=ROOT, input=stdin, capture_output=True,
                          text=True, timeout=60)


def test_script_run_prints_the_resulting_bindings_as_json(tmp_path):
    script = tmp_path / "double.py"
    script.write_text("p1 = p1 * 2\nlabel = 'x' + str(p1)\n")
    done = manage("script_run", str(script), "--bindings", '{"p1": 21}')
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"p1": 42, "label": "x42"}


def test_script_run_exits_non_zero_with_the_error_on_stderr(tmp_path):
    script = tmp_path / "bad.py"
    script.write_text("x = 1\ny = p1[5]\n")
    done = manage("script_run", str(script), "--bindings", '{"p1": [1]}')
    assert done.returncode != 0 and done.stdout == ""
    assert "line 2, column 5: IndexError: list index out of range" in done.stderr


def test_script_run_refuses_an_escape_before_running_it(tmp_path):
    script = tmp_path / "escape.py"
    script.write_text("import os\nos.system('true')\n")
    done = manage("script_run", str(script))
    assert done.returncode != 0 and "refused: import of 'os'" in done.stderr


def test_script_run_reaches_a_data_source(tmp_path):
    script = tmp_path / "sql.py"
    script.write_text("rows = sql('local').query('SELECT :x * 2 AS y', x=p1)\n")
    done = manage("script_run", str(script), "--bindings", '{"p1": 4}', "--data-source", f"local=sqlite:///{tmp_path / 'a.db'}")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["rows"] == [{"y": 8}]


def test_script_debug_stops_at_each_break_and_shows_the_bindings(tmp_path):
    script = tmp_path / "calc.py"
    script.write_text("a = p1 + 1\nb = a * 2\np1 = b\n")
    done = manage("script_debug", str(script), "--bindings", '{"p1": 1}', "--break", "2", "--break", "3")
    assert done.returncode == 0, done.stderr
    stops = json.loads(done.stdout)["stops"]
    assert [(s["line"], s["bindings"], s["locals"]) for s in stops] == [
        (2, {"p1": 1}, {"a": 2}), (3, {"p1": 1}, {"a": 2, "b": 4}), (None, {"p1": 4}, {"a": 2, "b": 4}),
    ]


def test_script_debug_interactive_steps_on_n_and_continues_on_c(tmp_path):
    script = tmp_path / "calc.py"
    script.write_text("a = 1\nb = 2\nc = 3\n")
    done = manage("script_debug", str(script), "--break", "1", "--interactive", stdin="n\nc\n")
    assert done.returncode == 0, done.stderr
    assert [s["line"] for s in json.loads(done.stdout)["stops"]] == [1, 2, None]
    assert "-- step at line 2" in done.stderr


def test_script_run_takes_a_data_source_read_only_unless_marked_writable(tmp_path):
    import sqlite3

    db = tmp_path / "plant.db"
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE events (tag TEXT)")
    conn.close()
    script = tmp_path / "insert.py"
    script.write_text("n = sql('local').insert('events', {'tag': 'p1'})\n")
    done = manage("script_run", str(script), "--data-source", f"local=sqlite:///{db}")
    assert done.returncode != 0
    assert 'sql("local"): insert() is not allowed on a read-only data source (writable is off)' in done.stderr
    done = manage("script_run", str(script), "--data-source", f"local=sqlite:///{db},writable")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["n"] == 1
    ddl = tmp_path / "ddl.py"
    ddl.write_text("sql('local').query('CREATE TABLE more (a INTEGER)')\n")
    done = manage("script_run", str(ddl), "--data-source", f"local=sqlite:///{db},writable")
    assert done.returncode != 0 and "allow_ddl is off" in done.stderr
    done = manage("script_run", str(ddl), "--data-source", f"local=sqlite:///{db},writable,allow_ddl")
    assert done.returncode == 0, done.stderr
    done = manage("script_run", str(ddl), "--data-source", f"local=sqlite:///{db},allow_ddl")
    assert done.returncode != 0 and "allow_ddl needs writable" in done.stderr
