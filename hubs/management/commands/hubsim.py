"""`manage.py hubsim`: run the reference hub in the foreground (Ctrl-C stops); its key from $HUBSIM_KEY or --key-file."""

from django.core.management.base import BaseCommand, CommandError

from hubs.hubsim.cli import KeyFileError, add_arguments, run_from_options


class Command(BaseCommand):
    help = "Run the reference hub (hub protocol v1 simulator) in the foreground; the key from $HUBSIM_KEY or --key-file."
    requires_system_checks = []

    def add_arguments(self, parser):
        add_arguments(parser)

    def handle(self, *args, **options):
        try:
            run_from_options(options, out=self.stdout.write)
        except KeyFileError as exc:
            raise CommandError(str(exc)) from None
        except KeyboardInterrupt:
            pass
