"""The e-mail adapter: one message through Django's mail backend (settings.EMAIL_BACKEND); raises ``EmailError``."""

from __future__ import annotations

from django.conf import settings
from django.core.mail import EmailMessage


class EmailError(Exception):
    """The mail backend did not take the message."""


def email_send(*, to: list[str], subject: str, text: str) -> None:
    """Send one plain-text message to ``to`` from ``DEFAULT_FROM_EMAIL``. Raises ``EmailError``."""
    try:
        sent = EmailMessage(subject=subject, body=text, from_email=settings.DEFAULT_FROM_EMAIL, to=to).send()
    except Exception as exc:  # smtplib's and socket's errors, whatever the backend raises
        raise EmailError(f"{type(exc).__name__}: {exc}") from None
    if not sent:
        raise EmailError("the mail backend sent nothing")
