"""`python manage.py load_demo`: create or refresh the demo project (idempotent) and its admin user."""

from django.core.management.base import BaseCommand, CommandError

from hubs.demo import demo_load


def hub_url(text: str) -> tuple[str, str]:
    name, sep, url = text.partition("=")
    if not sep or not name or not url.startswith(("ws://", "wss://")):
        raise CommandError(f"--hub-url {text!r}: expected NAME=ws://host:port/path")
    return name, url


class Command(BaseCommand):
    help = "Create or refresh the demo project: two reference hubs, their entity trees, four groups, a script."

    def add_arguments(self, parser):
        parser.add_argument(
            "--hub-url",
            action="append",
            default=[],
            metavar="NAME=URL",
            help="where a demo hub listens (default hub-a=ws://127.0.0.1:8765/connect, hub-b=ws://127.0.0.1:8766/connect)",
        )

    def handle(self, *args, **options):
        try:
            summary = demo_load(hub_urls=dict(hub_url(text) for text in options["hub_url"]))
        except ValueError as exc:
            raise CommandError(str(exc)) from None
        project = summary.project
        verb = "created" if summary.created else "refreshed"
        self.stdout.write(
            f"demo project {verb}: {project.hubs.count()} hubs, "
            f"{sum(h.entities.count() for h in project.hubs.all())} entities, "
            f"{sum(h.groups.count() for h in project.hubs.all())} groups"
        )
        self.stdout.write(f"admin user: {summary.admin_username} / {summary.admin_password}")
