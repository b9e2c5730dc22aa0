"""`manage.py hubsim`: run the reference hub in the foreground (Ctrl-C stops)."""

from django.core.management.base import BaseCommand

from hubs.hubsim.cli import add_arguments, run_from_options


class Command(BaseCommand):
    help = "Run the reference hub (hub protocol v1 simulator) in the foreground."
    requires_system_checks = []

    def add_arguments(self, parser):
        add_arguments(parser)

    def handle(self, *args, **options):
        try:
            run_from_options(options, out=self.stdout.write)
        except KeyboardInterrupt:
            pass
