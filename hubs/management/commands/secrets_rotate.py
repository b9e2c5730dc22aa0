"""`python manage.py secrets_rotate`: re-encrypt every stored secret with the first key of HUBSCHED_SECRETS_KEY."""

from django.core.management.base import BaseCommand, CommandError

from hubs.services import secrets_rotate
from hubsched.secrets import SecretsKeyError


class Command(BaseCommand):
    help = (
        "Re-encrypt every hub key and sink and data source URL with the first key of HUBSCHED_SECRETS_KEY "
        "(set it to NEW,OLD first), in one transaction; prints how many values were re-encrypted."
    )

    def handle(self, *args, **options):
        try:
            count = secrets_rotate()
        except SecretsKeyError as exc:
            raise CommandError(f"{exc}; nothing was changed") from None
        self.stdout.write(f"{count} secrets re-encrypted with the first key of HUBSCHED_SECRETS_KEY")
