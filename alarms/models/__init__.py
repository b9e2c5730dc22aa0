"""The alarms app's models: rules, alarms and their journal (alarms.py); notifications (notifications.py)."""

from .alarms import *  # noqa: F401,F403
from .notifications import *  # noqa: F401,F403
