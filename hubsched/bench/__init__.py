"""Benchmarks run by ``python manage.py bench <name>``; each is a module with HELP, add_arguments and run.

To add one: write ``hubsched/bench/<name>.py`` with ``HELP``, ``add_arguments(parser)`` and
``run(**options) -> dict`` (plus ``report(result) -> str`` for the text form), then add one line to
``BENCHES`` below.
"""

BENCHES = {
    "scheduler": "hubsched.bench.scheduler",
    "e2e": "hubsched.bench.e2e",
    "log": "hubsched.bench.log",
}
