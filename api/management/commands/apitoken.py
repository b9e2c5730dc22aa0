"""``manage.py apitoken create|list|revoke``: API tokens from the shell, for a site's first script or CI."""

from __future__ import annotations

from datetime import timedelta

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone


class Command(BaseCommand):
    help = ("Make, list or revoke API tokens. `create` prints the token once on standard output "
            "(nothing else is printed there, so `TOKEN=$(python manage.py apitoken create --user admin --name ci)` works).")

    def add_arguments(self, parser):
        sub = parser.add_subparsers(dest="action", required=True)
        create = sub.add_parser("create", help="make a token for a user; prints it once")
        create.add_argument("--user", required=True, help="username whose permissions the token acts with")
        create.add_argument("--name", required=True, help="what the token is for")
        create.add_argument("--expires-days", type=float, default=None, help="days until it expires (default: never)")
        listing = sub.add_parser("list", help="tokens of a user (or everyone's), never their secrets")
        listing.add_argument("--user", default=None)
        revoke = sub.add_parser("revoke", help="revoke a token by its prefix (hs_<prefix>_…)")
        revoke.add_argument("prefix")

    def handle(self, *args, action: str, **options):
        from api.models import ApiToken
        from api.services import api_token_create, api_token_revoke

        if action == "create":
            try:
                user = get_user_model().objects.get_by_natural_key(options["user"])
            except get_user_model().DoesNotExist:
                raise CommandError(f"--user: no user {options['user']!r}") from None
            days = options["expires_days"]
            expires = timezone.now() + timedelta(days=days) if days is not None else None
            try:
                _token, raw = api_token_create(user=user, name=options["name"], expires_at=expires)
            except ValueError as exc:
                raise CommandError(str(exc)) from None
            self.stdout.write(raw)
        elif action == "list":
            tokens = ApiToken.objects.select_related("user")
            if options["user"]:
                tokens = tokens.filter(user__username=options["user"])
            for t in tokens:
                self.stdout.write(f"{t.prefix}\t{t.user.get_username()}\t{t.name}\t{t.state}\t"
                                  f"expires {t.expires_at or 'never'}\tlast used {t.last_used_at or 'never'}")
        else:
            token = ApiToken.objects.filter(prefix=options["prefix"].removeprefix("hs_").split("_")[0]).first()
            if token is None:
                raise CommandError(f"no token with prefix {options['prefix']!r}")
            api_token_revoke(token=token)
            self.stdout.write(f"revoked {token.prefix} ({token.name})")
