"""The project package doubles as an app so that cross-cutting commands (runstack, bench) live here."""

from django.apps import AppConfig, apps
from django.db.models.signals import post_migrate


class HubschedConfig(AppConfig):
    name = "hubsched"
    verbose_name = "hubsched"

    def ready(self):
        from .roles import ROLE_APPS, roles_sync_after_migrate

        # post_migrate is sent once per app with models: hang the role sync on the last of the apps whose
        # permissions the roles hold, so it runs once per migrate (and per test flush), after their permissions.
        last = [config for config in apps.get_app_configs() if config.label in ROLE_APPS][-1]
        post_migrate.connect(roles_sync_after_migrate, sender=last, dispatch_uid="hubsched.roles_sync")
