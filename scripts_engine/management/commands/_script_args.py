"""Arguments shared by the script_run and script_debug commands."""

from __future__ import annotations

import json
from pathlib import Path

from django.core.management.base import CommandError


def add_script_arguments(parser) -> None:
    parser.add_argument("file", help="the script file ('-' reads standard input)")
    parser.add_argument("--bindings", default="{}", help='the bindings as a JSON object, or @FILE: {"p1": 2.5}')
    parser.add_argument("--timeout", type=float, default=2.0, help="CPU time limit, seconds (default 2)")
    parser.add_argument("--memory-mb", type=int, default=256, help="memory limit, MB (default 256)")
    parser.add_argument("--data-source", action="append", default=[], metavar="NAME=URL[,writable[,allow_ddl]]",
                        help='a data source for sql("NAME"), read-only unless ",writable" follows the URL; '
                             '",writable,allow_ddl" allows DDL too (repeatable)')
    parser.add_argument("--project", help="take the data sources of this project (by name)")


def read_script(path: str, stdin) -> str:
    if path == "-":
        return stdin.read()
    try:
        return Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise CommandError(f"cannot read {path}: {exc.strerror}") from None


def read_bindings(text: str) -> dict:
    if text.startswith("@"):
        try:
            text = Path(text[1:]).read_text(encoding="utf-8")
        except OSError as exc:
            raise CommandError(f"cannot read {text[1:]}: {exc.strerror}") from None
    try:
        bindings = json.loads(text)
    except ValueError as exc:
        raise CommandError(f"--bindings is not JSON: {exc}") from None
    if not isinstance(bindings, dict):
        raise CommandError("--bindings must be a JSON object of name -> value")
    return bindings


_FLAGS = ("writable", "allow_ddl")


def read_data_sources(options: dict) -> dict[str, dict]:
    """``--project``'s data sources, then each ``--data-source`` (which wins), in script_execute's shape."""
    sources: dict[str, dict] = {}
    if options.get("project"):
        from hubs.models import Project
        from scripts_engine.services import script_data_sources

        project = Project.objects.filter(name=options["project"]).first()
        if project is None:
            raise CommandError(f"no project named {options['project']!r}")
        sources.update(script_data_sources(project_id=project.pk))
    for item in options.get("data_source") or ():
        name, sep, url = item.partition("=")
        flags = set()
        while True:
            head, comma, last = url.rpartition(",")
            if not comma or last.strip() not in _FLAGS:
                break
            flags.add(last.strip())
            url = head
        if not sep or not name or not url:
            raise CommandError(f"--data-source {item!r}: expected NAME=URL[,writable[,allow_ddl]]")
        if "allow_ddl" in flags and "writable" not in flags:
            raise CommandError(f"--data-source {name}: allow_ddl needs writable (DDL is a write)")
        sources[name] = {"url": url, "writable": "writable" in flags, "allow_ddl": "allow_ddl" in flags}
    return sources


def error_text(error) -> str:
    text = str(error)
    if error.traceback:
        text += "\n" + error.traceback
    if error.output:
        text += "\n--- output ---\n" + error.output
    return text
