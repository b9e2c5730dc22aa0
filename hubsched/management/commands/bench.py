"""``python manage.py bench <name> [options]``: run one benchmark (see ``hubsched.bench.BENCHES``)."""

from __future__ import annotations

import json
from importlib import import_module

from django.core.management.base import BaseCommand

from hubsched.bench import BENCHES as _BENCHES

# hubsched/bench/__init__.py lists the others; the fault (issue 12) and failover (issue 13) benchmarks are added here
BENCHES = {**_BENCHES, "faults": "hubsched.bench.faults", "failover": "hubsched.bench.failover",
           "multihost": "hubsched.bench.multihost"}
BENCHES["pipeline"] = "hubsched.bench.pipeline"  # issue 19: batch reads across a round trip
BENCHES["api_bulk"] = "hubsched.bench.api_bulk"  # issue 15: the API's bulk group writes
BENCHES["metrics"] = "hubsched.bench.metrics"  # issue 16: the cost of a GET /metrics scrape
BENCHES["rules"] = "hubsched.bench.rules"  # issue 16: alarm rule evaluation in the worker


class Command(BaseCommand):
    help = "Run a benchmark: " + ", ".join(BENCHES)

    def add_arguments(self, parser):
        subparsers = parser.add_subparsers(dest="bench", required=True, metavar="{" + ",".join(BENCHES) + "}")
        for name, path in BENCHES.items():
            module = import_module(path)
            sub = subparsers.add_parser(name, help=module.HELP, description=module.HELP)
            sub.add_argument("--json", action="store_true", help="Print one JSON object instead of a table.")
            module.add_arguments(sub)

    def handle(self, *args, bench: str, json: bool = False, **options):
        module = import_module(BENCHES[bench])
        keep = {k: v for k, v in options.items() if k not in {"verbosity", "settings", "pythonpath", "traceback",
                                                               "no_color", "force_color", "skip_checks", "stdout", "stderr"}}
        result = module.run(log=self.stderr.write if options.get("verbosity", 1) >= 1 else (lambda _: None), **keep)
        self.stdout.write(_json.dumps(result, indent=2) if json else module.report(result))


_json = json
