from django.apps import AppConfig


class StreamsConfig(AppConfig):
    name = "streams"
    verbose_name = "Durable log"

    def ready(self) -> None:
        from django.core.signals import setting_changed

        setting_changed.connect(_log_settings_changed, dispatch_uid="streams.log_settings_changed")


def _log_settings_changed(*, setting: str, **kwargs) -> None:
    """A changed HUBSCHED_LOG_* setting (override_settings) makes the next ``log()`` anew."""
    if setting.startswith("HUBSCHED_LOG_"):
        from streams.log import log_reset

        log_reset()
