"""manage.py script_run FILE --bindings JSON: run a script once in the sandbox and print its bindings as JSON."""

from __future__ import annotations

import json
import sys

from django.core.management.base import BaseCommand, CommandError

from scripts_engine.sandbox import ScriptError, script_execute
from scripts_engine.services import result_payload

from ._script_args import add_script_arguments, error_text, read_bindings, read_data_sources, read_script


class Command(BaseCommand):
    help = "Run a script once on the given bindings; prints the resulting bindings as JSON (non-zero exit on error)."

    def add_arguments(self, parser) -> None:
        add_script_arguments(parser)
        parser.add_argument("--changed", action="store_true",
                            help='print {"bindings", "changed", "output"} instead of the bindings alone')

    def handle(self, *args, **options) -> None:
        self.stdin = options.get("stdin") or sys.stdin  # call_command(..., stdin=...) in tests
        code = read_script(options["file"], self.stdin)
        try:
            result = script_execute(
                code=code,
                bindings=read_bindings(options["bindings"]),
                timeout=options["timeout"],
                memory_limit_mb=options["memory_mb"],
                data_sources=read_data_sources(options),
            )
        except ScriptError as exc:
            raise CommandError(f"script {exc.kind} error: {error_text(exc)}") from None
        if options["changed"]:
            payload = result_payload(result)
        else:
            payload = result.bindings
            if result.output:
                self.stderr.write(result.output, ending="")
        self.stdout.write(json.dumps(payload, indent=2, ensure_ascii=False))
