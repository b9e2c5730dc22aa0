"""The alarms app's configuration."""

from django.apps import AppConfig


class AlarmsConfig(AppConfig):
    name = "alarms"
    verbose_name = "Alarms"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from .notifications import notifications_connect

        notifications_connect()  # an alarm's transitions make its routes' pending notifications
