"""manage.py script_debug FILE --bindings JSON --break 3 --break 7: run a script under the debugger.

Prints every stop (bindings and locals) and the result as JSON; ``--interactive`` asks at each stop
instead: ``n`` (next line), ``c`` (continue to the next breakpoint), ``q`` (stop asking).
Nothing is written to a hub or a sink.
"""

from __future__ import annotations

import json
import sys

from django.core.management.base import BaseCommand, CommandError

from scripts_engine.sandbox import DebugStop, script_debug_run
from scripts_engine.services import result_payload

from ._script_args import add_script_arguments, error_text, read_bindings, read_data_sources, read_script


class Command(BaseCommand):
    help = "Run a script under the debugger: stops at breakpoints (and steps), showing every binding and local."

    def add_arguments(self, parser) -> None:
        add_script_arguments(parser)
        parser.add_argument("--break", dest="breakpoints", action="append", type=int, default=[], metavar="LINE",
                            help="stop before this line (repeatable)")
        parser.add_argument("--step", dest="actions", action="append_const", const="step", default=[],
                            help="after a stop, stop again at the next line (repeatable: once per stop)")
        parser.add_argument("--interactive", action="store_true", help="ask n/c/q at each stop (reads stdin)")

    def handle(self, *args, **options) -> None:
        self.stdin = options.get("stdin") or sys.stdin  # call_command(..., stdin=...) in tests
        code = read_script(options["file"], self.stdin)
        on_stop = self._ask if options["interactive"] else None
        self._quiet = False
        run = script_debug_run(
            code=code,
            bindings=read_bindings(options["bindings"]),
            breakpoints=options["breakpoints"],
            actions=options["actions"],
            on_stop=on_stop,
            timeout=options["timeout"] if not options["interactive"] else max(options["timeout"], 2.0),
            memory_limit_mb=options["memory_mb"],
            data_sources=read_data_sources(options),
        )
        payload = {"stops": [s.as_dict() for s in run.stops], "truncated": run.truncated}
        if run.result is not None:
            payload["result"] = result_payload(run.result)
        self.stdout.write(json.dumps(payload, indent=2, ensure_ascii=False))
        if run.error is not None:
            raise CommandError(f"script {run.error.kind} error: {error_text(run.error)}")

    def _ask(self, stop: DebugStop) -> str:
        if self._quiet:
            return "continue"
        where = f"line {stop.line}" + (f" in {stop.function}()" if stop.function != "<module>" else "")
        self.stderr.write(f"-- {stop.event} at {where}")
        self.stderr.write(f"   bindings: {json.dumps(stop.bindings, ensure_ascii=False)}")
        self.stderr.write(f"   locals:   {json.dumps(stop.locals, ensure_ascii=False)}")
        while True:
            self.stderr.write("(n)ext line, (c)ontinue, (q)uit asking? ", ending="")
            self.stderr.flush()
            answer = self.stdin.readline()
            if not answer:  # end of input: run to the end
                return "continue"
            answer = answer.strip().lower()
            if answer in ("n", "next", "s", "step"):
                return "step"
            if answer in ("c", "continue", ""):
                return "continue"
            if answer in ("q", "quit"):
                self._quiet = True
                return "continue"
