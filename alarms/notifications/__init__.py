"""Alarm notifications: routes to e-mail and webhooks, grouped, repeated and retried (dispatch.py).

``notifications_connect()`` connects the ``alarm_transition`` signal to the creation of pending notifications;
call it once from ``AlarmsConfig.ready()`` (no side effects at import).
"""


def notifications_connect() -> None:
    """Connect ``alarms.signals.alarm_transition`` to ``dispatch.notifications_on_transition``; idempotent."""
    from ..signals import alarm_transition
    from .dispatch import notifications_on_transition

    alarm_transition.connect(notifications_on_transition, dispatch_uid="alarms.notifications.on_transition")
