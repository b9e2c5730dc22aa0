"""The console: the integrators' and operators' pages at ``/`` (server-rendered, made interactive with htmx)."""

from django.apps import AppConfig


class ConsoleConfig(AppConfig):
    name = "console"
    verbose_name = "console"
