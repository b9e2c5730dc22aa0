"""`python manage.py forward`: the log's consumers, each sink's forwarder and the run recorder (streams.forwarding)."""

from __future__ import annotations

import signal
import threading

from django.core.management.base import BaseCommand, CommandError


class Command(BaseCommand):
    help = ("Forward the durable log to the sinks and record the runs, one process per consumer, until SIGTERM or "
            "Ctrl-C (docs/streams.md).")

    def add_arguments(self, parser) -> None:
        parser.add_argument("--once", action="store_true",
                            help="Commit what the log holds now for every consumer, then exit (no lease: stop the others first).")
        parser.add_argument("--consumer", default="", metavar="NAME",
                            help="Run only this consumer (runs, sink:<id>, sink:default), in this process: what the "
                                 "supervisor starts for each.")

    def handle(self, *args, once: bool = False, consumer: str = "", **options) -> None:
        from django.conf import settings

        from streams.forwarding.process import ForwarderProcess, consumer_run, forwarders_catch_up

        # A consumer runs for months and makes a statement or more a second: DEBUG's query log would cost each one
        # (the statement quoted and kept, 9,000 per connection) for nothing anyone reads.
        settings.DEBUG = False
        if once:
            for name, records in forwarders_catch_up().items():
                self.stdout.write(f"{name}: {records} records")
            return
        stop = threading.Event()
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda *_: stop.set())
        if consumer:
            try:
                consumer_run(name=consumer, stop=stop)
            except LookupError as exc:
                raise CommandError(str(exc)) from None
            return
        self.stdout.write("forward: running (SIGTERM or Ctrl-C stops)")
        ForwarderProcess().run(stop)
        self.stdout.write("forward: stopped")
