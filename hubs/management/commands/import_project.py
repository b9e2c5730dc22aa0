"""`python manage.py import_project FILE [--replace]`: read a hubsched.project/1 document, all or nothing."""

import sys

from django.core.management.base import BaseCommand, CommandError

from hubs.project_document import ProjectDocumentError
from hubs.project_document.validation import max_bytes
from hubs.services import project_import


class Command(BaseCommand):
    help = "Import a project from a JSON document (hubsched.project/1); ${NAME} references are read from the environment."

    def add_arguments(self, parser):
        parser.add_argument("file", help="document to read ('-' for standard input)")
        parser.add_argument(
            "--replace", action="store_true", help="update a project of the same name in place (run history is kept)"
        )

    def handle(self, *args, file, replace, **options):
        limit = max_bytes()
        try:
            if file == "-":
                raw = sys.stdin.buffer.read(limit + 1)
            else:
                with open(file, "rb") as fh:
                    raw = fh.read(limit + 1)  # the service refuses it by size; never read more than that
        except OSError as exc:
            raise CommandError(f"{file}: {exc.strerror}") from None
        try:
            result = project_import(raw=raw, replace=replace)
        except ProjectDocumentError as exc:
            raise CommandError(f"{file}: refused, nothing was changed:\n  " + "\n  ".join(exc.errors)) from None
        verb = "created" if result.created else "replaced"
        self.stdout.write(f"project {result.project.name!r} {verb} (id {result.project.pk})")
