"""`manage.py hub_conformance URL [--key-file PATH]`: run hub protocol v1's checks against a hub.

The hub's API key comes from ``--key-file`` (its first line) or ``$HUB_KEY``, never from the command line,
where every user of the machine could read it (``ps``). ``--key K`` was removed and says so.
"""

import argparse
import os

from django.core.management.base import BaseCommand, CommandError

from hubs.conformance import format_report, hub_conformance_check
from hubs.hubsim.cli import KeyFileError, key_file_read

KEY_ENV = "HUB_KEY"


def key_removed(value: str) -> str:
    # declared so that argparse does not read `--key K` as an abbreviation of `--key-file K`
    raise argparse.ArgumentTypeError(f"--key was removed: pass the key in ${KEY_ENV} or --key-file PATH")


def key_read(*, key_file: str | None) -> str:
    """The key from the file's first line, else from ``$HUB_KEY``. Raises CommandError when there is none."""
    if key_file:
        try:
            return key_file_read(key_file)
        except KeyFileError as exc:
            raise CommandError(str(exc)) from None
    key = os.environ.get(KEY_ENV, "").strip()
    if not key:
        raise CommandError(f"no hub key: set ${KEY_ENV} or pass --key-file PATH")
    return key


class Command(BaseCommand):
    help = ("Check a hub against hub protocol v1; prints pass/fail per check, exits non-zero on a failure. "
            f"The hub's key from --key-file PATH or ${KEY_ENV}.")
    requires_system_checks = []

    def add_arguments(self, parser):
        parser.add_argument("url", help="the hub's endpoint, e.g. ws://10.10.20.8/connect")
        parser.add_argument("--key-file", metavar="PATH", help=f"file whose first line is the hub's API key (default ${KEY_ENV})")
        parser.add_argument("--key", type=key_removed, help=argparse.SUPPRESS)
        parser.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for each answer")
        parser.add_argument("--no-write", action="store_true",
                            help="skip the setEntityParams checks (they only write current values back)")

    def handle(self, *args, **options):
        key = key_read(key_file=options["key_file"])
        results = hub_conformance_check(url=options["url"], key=key, timeout=options["timeout"],
                                        write=not options["no_write"])
        self.stdout.write(format_report(results))
        failed = sum(r.status == "fail" for r in results)
        if failed:
            raise CommandError(f"{failed} conformance checks failed")
