"""`python manage.py runstack`: run reference hubs, worker, beat, Flower and the web server until Ctrl-C."""

from django.core.management.base import BaseCommand

from hubsched.stack import Stack


class Command(BaseCommand):
    help = "Start the reference hubs, Celery worker and beat, Flower and the web server; Ctrl-C stops all of them."

    def add_arguments(self, parser):
        parser.add_argument("--port", type=int, default=8000, help="web server port on 127.0.0.1 (default 8000)")
        parser.add_argument("--flower-port", type=int, default=5555, help="Flower's port; 0 leaves Flower out")

    def handle(self, *args, port: int, flower_port: int, **options):
        stack = Stack(port=port, flower_port=flower_port or None, out=self.stdout.write)
        self.stdout.write(f"hubsched on http://127.0.0.1:{port}/ (console: /, admin: /admin/, status: /api/v1/status)")
        if flower_port:
            self.stdout.write(f"Flower on http://127.0.0.1:{flower_port}/")
        stack.start()
        raise SystemExit(stack.supervise())
