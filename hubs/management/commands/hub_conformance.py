"""`manage.py hub_conformance URL --key K`: run hub protocol v1's checks against a hub."""

from django.core.management.base import BaseCommand, CommandError

from hubs.conformance import format_report, hub_conformance_check


class Command(BaseCommand):
    help = "Check a hub against hub protocol v1; prints pass/fail per check, exits non-zero on a failure."
    requires_system_checks = []

    def add_arguments(self, parser):
        parser.add_argument("url", help="the hub's endpoint, e.g. ws://10.10.20.8/connect")
        parser.add_argument("--key", required=True, help="the hub's API key")
        parser.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for each answer")
        parser.add_argument("--no-write", action="store_true",
                            help="skip the setEntityParams checks (they only write current values back)")

    def handle(self, *args, **options):
        results = hub_conformance_check(url=options["url"], key=options["key"], timeout=options["timeout"],
                                        write=not options["no_write"])
        self.stdout.write(format_report(results))
        failed = sum(r.status == "fail" for r in results)
        if failed:
            raise CommandError(f"{failed} conformance checks failed")
