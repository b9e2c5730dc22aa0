from django.apps import AppConfig


class GroupsConfig(AppConfig):
    name = "groups"
    verbose_name = "Groups and runs"

    def ready(self) -> None:
        from . import signals  # noqa: F401  (keeps PeriodicTasks in step with groups)
