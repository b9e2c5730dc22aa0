"""`python manage.py hub_sync HUB`: read a live hub's entity tree and parameters into the database."""

from django.core.management.base import BaseCommand, CommandError

from hubs.client import HubError
from hubs.selectors import hub_find
from hubs.services import hub_entities_sync


class Command(BaseCommand):
    help = "Create or update a hub's entities and parameters from the hub itself (getEntities, getParams)."

    def add_arguments(self, parser):
        parser.add_argument("hub", help="hub name or id")
        parser.add_argument("--project", help="project name, when several projects have a hub of that name")

    def handle(self, *args, hub, project, **options):
        try:
            found = hub_find(ref=hub, project_name=project)
        except LookupError as exc:
            raise CommandError(str(exc)) from None
        try:
            changes = hub_entities_sync(hub=found)
        except HubError as exc:
            raise CommandError(f"hub {found.name!r}: {exc}; nothing was changed") from None
        for label, names in (("added", changes.added), ("changed", changes.changed), ("gone", changes.gone)):
            for name in names:
                self.stdout.write(f"{label:8} {name}")
        self.stdout.write(f"hub {found.name!r}: {changes.summary()}")
