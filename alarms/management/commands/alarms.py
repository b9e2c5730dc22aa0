"""``python manage.py alarms``: the alarms' process. It runs the system checks (alarms/system.py) every
``HUBSCHED_ALARMS_CHECK_S`` seconds and sends pending notifications (grouped, retried, repeated:
alarms/notifications) every second. ``--once`` runs one round of both and exits. Stop it with SIGTERM or Ctrl-C.

Run one per site: two would each probe the hubs; notifications are claimed row by row, so none is sent twice.
"""

from __future__ import annotations

import logging
import signal
import threading
import time

from django.conf import settings
from django.core.management.base import BaseCommand
from django.db import close_old_connections

logger = logging.getLogger(__name__)

DISPATCH_S = 1.0


class Command(BaseCommand):
    help = "Run the system alarm checks and send notifications (the alarms process of make run and compose)."

    def add_arguments(self, parser):
        parser.add_argument("--once", action="store_true", help="One round of checks and notifications, then exit.")

    def handle(self, *args, once: bool = False, **options):
        from alarms.notifications.dispatch import notifications_dispatch
        from alarms.system import SystemChecks

        stop = threading.Event()
        if not once:
            for sig in (signal.SIGTERM, signal.SIGINT):
                signal.signal(sig, lambda *_: stop.set())
        checks = SystemChecks()
        next_check = 0.0
        self.stdout.write(f"alarms: system checks every {settings.HUBSCHED_ALARMS_CHECK_S:g} s, notifications every "
                          f"{DISPATCH_S:g} s")
        while not stop.is_set():
            now = time.monotonic()
            if now >= next_check:
                next_check = now + settings.HUBSCHED_ALARMS_CHECK_S
                try:
                    open_alarms = checks.run()
                    logger.info("alarms: system checks: %s", open_alarms)
                except Exception:
                    logger.exception("alarms: system checks failed; trying again at the next round")
            try:
                notifications_dispatch()
            except Exception:
                logger.exception("alarms: sending notifications failed; trying again in %s s", DISPATCH_S)
            close_old_connections()
            if once:
                break
            stop.wait(DISPATCH_S)
        self.stdout.write("alarms: stopped")
