"""The project package doubles as an app so that cross-cutting commands (runstack, bench) live here."""

from django.apps import AppConfig


class HubschedConfig(AppConfig):
    name = "hubsched"
    verbose_name = "hubsched"
