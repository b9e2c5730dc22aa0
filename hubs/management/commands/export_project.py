"""`python manage.py export_project NAME -o FILE`: write a project as a hubsched.project/1 document."""

from django.core.management.base import BaseCommand, CommandError

from hubs.models import Project
from hubs.services import project_export


class Command(BaseCommand):
    help = "Write a project as a JSON document (hubsched.project/1). Secrets are ${NAME} references unless --include-secrets."

    def add_arguments(self, parser):
        parser.add_argument("name", help="project name")
        parser.add_argument("-o", "--output", default="-", help="file to write (default: standard output)")
        parser.add_argument(
            "--include-secrets", action="store_true", help="write hub keys and password-holding URLs in clear"
        )

    def handle(self, *args, name, output, include_secrets, **options):
        project = Project.objects.filter(name=name).first()
        if project is None:
            raise CommandError(f"no project named {name!r}")
        text = project_export(project=project, include_secrets=include_secrets)
        if output == "-":
            self.stdout.write(text, ending="")
            return
        with open(output, "w", encoding="utf-8") as fh:
            fh.write(text)
        self.stderr.write(f"project {name!r} written to {output}")
