"""`python manage.py forward`: the log's consumers, each sink's forwarder and the run recorder (streams.forwarding)."""

from __future__ import annotations

import signal
import threading

from django.core.management.base import BaseCommand


class Command(BaseCommand):
    help = "Forward the durable log to the sinks and record the runs, until SIGTERM or Ctrl-C (docs/streams.md)."

    def add_arguments(self, parser) -> None:
        parser.add_argument("--once", action="store_true",
                            help="Commit what the log holds now for every consumer, then exit (no lease: stop the others first).")

    def handle(self, *args, once: bool = False, **options) -> None:
        from streams.forwarding.process import ForwarderProcess, forwarders_catch_up

        if once:
            for name, records in forwarders_catch_up().items():
                self.stdout.write(f"{name}: {records} records")
            return
        stop = threading.Event()
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda *_: stop.set())
        self.stdout.write("forward: running (SIGTERM or Ctrl-C stops)")
        ForwarderProcess().run(stop)
        self.stdout.write("forward: stopped")
