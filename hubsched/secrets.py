"""Secrets at rest and on show: Fernet encryption of model fields, and masking of URLs before they are shown or logged.

The key: ``HUBSCHED_SECRETS_KEY`` (settings, from the environment), one or more Fernet keys separated by
commas; the first encrypts, every one decrypts (``cryptography``'s MultiFernet), so a key is rotated by
putting the new one first and running ``python manage.py secrets_rotate``. On the embedded defaults
(no ``HUBSCHED_SECRETS_KEY``, not production) a key is made once in ``var/secrets.key`` (mode 0600);
production mode refuses to start without the environment's key (hubsched/settings.py).
"""

from __future__ import annotations

import logging
import os
import re
import threading
from pathlib import Path
from urllib.parse import unquote_plus

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from django.core.exceptions import ImproperlyConfigured
from django.db import models

MASK = "***"
# Stored values start with this, so that a clear value left from before encryption is told apart.
PREFIX = "fernet:"
# Query parameters whose values are secrets (case-insensitive, matched as substrings: `api_key`, `access_token`).
SECRET_QUERY_WORDS = ("password", "passwd", "pwd", "secret", "token", "key", "auth", "signature", "credential")


class SecretsKeyError(ImproperlyConfigured):
    """The secrets key is missing, malformed, or not the key a stored value was encrypted with."""


_lock = threading.Lock()
_cipher: MultiFernet | None = None


def _keys_text() -> str:
    from django.conf import settings

    configured = getattr(settings, "HUBSCHED_SECRETS_KEY", "")
    if configured:
        return configured
    path = Path(settings.VAR_DIR) / "secrets.key"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        try:  # O_EXCL: of two processes starting at once, one writes the key and the other reads it
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass
        else:
            with os.fdopen(fd, "w") as out:
                out.write(Fernet.generate_key().decode() + "\n")
    return path.read_text().strip()


def cipher() -> MultiFernet:
    """The process's MultiFernet, made on first use from the settings' key (or ``var/secrets.key``).

    Invalidated by ``cipher_reset()`` (tests that change the key). Raises SecretsKeyError for a malformed key.
    """
    global _cipher
    if _cipher is None:
        with _lock:
            if _cipher is None:
                text = _keys_text()
                try:
                    _cipher = MultiFernet([Fernet(k.strip().encode()) for k in text.split(",") if k.strip()])
                except (ValueError, TypeError) as exc:
                    raise SecretsKeyError(f"HUBSCHED_SECRETS_KEY: not a list of Fernet keys ({exc})") from None
    return _cipher


def cipher_reset() -> None:
    global _cipher
    with _lock:
        _cipher = None


def secret_encrypt(value: str) -> str:
    """``value`` as stored: ``fernet:<token>``; the empty string stays empty (no secret to hide)."""
    if not value:
        return ""
    return PREFIX + cipher().encrypt(value.encode("utf-8")).decode("ascii")


def secret_decrypt(stored: str) -> str:
    """The clear text of a stored value; a value without the prefix is returned as it is (stored before
    encryption; the migration that brought encryption encrypts such rows). Raises SecretsKeyError when no
    configured key opens it."""
    if not stored or not stored.startswith(PREFIX):
        return stored or ""
    try:
        return cipher().decrypt(stored[len(PREFIX):].encode("ascii")).decode("utf-8")
    except InvalidToken:
        raise SecretsKeyError(
            "a stored secret cannot be decrypted: HUBSCHED_SECRETS_KEY does not hold the key it was encrypted with"
        ) from None


def secret_reencrypt(stored: str) -> str:
    """``stored`` encrypted with the first key (``MultiFernet.rotate``); for key rotation."""
    if not stored:
        return ""
    if not stored.startswith(PREFIX):
        return secret_encrypt(stored)
    try:
        return PREFIX + cipher().rotate(stored[len(PREFIX):].encode("ascii")).decode("ascii")
    except InvalidToken:
        raise SecretsKeyError("a stored secret cannot be decrypted with any key of HUBSCHED_SECRETS_KEY") from None


class EncryptedTextField(models.TextField):
    """A text column holding ``fernet:<token>``; Python sees the clear text.

    Lookups other than ``isnull`` cannot work on it (every encryption of a value differs): filter in
    Python. The clear text never reaches the database, its logs or a dump.
    """

    description = "Text encrypted at rest (Fernet)"

    def from_db_value(self, value, expression, connection):
        return value if value is None else secret_decrypt(value)

    def to_python(self, value):
        return value

    def get_prep_value(self, value):
        value = super().get_prep_value(value)
        if value is None:
            return None
        return value if value.startswith(PREFIX) else secret_encrypt(value)


def encrypt_in_place(*fields: tuple[str, str, str]):
    """A migration's RunPython function that encrypts the rows of ``(app_label, model, field)`` stored in
    clear before the field became an EncryptedTextField: each is written back, which encrypts it (the field
    reads a value without its prefix as clear text, and encrypts every value it writes)."""

    def forwards(apps, schema_editor):
        for app_label, model, field in fields:
            Model = apps.get_model(app_label, model)
            for pk, value in Model.objects.values_list("pk", field):
                if value:
                    Model.objects.filter(pk=pk).update(**{field: value})

    return forwards


# --- masking --------------------------------------------------------------------------------------

_URL_IN_TEXT = re.compile(r"\b[a-zA-Z][a-zA-Z0-9+.-]*://[^\s'\"<>]+")
# Punctuation that ends a sentence rather than a URL ("... at ws://hub/x?token=t: refused").
_URL_TRAILER = ".,;:!?)]}"
_SCHEME = re.compile(r"[a-zA-Z][a-zA-Z0-9+.-]*:(//)?")
_PAIR = re.compile(r"(?P<name>[^&;=?#]*)=(?P<value>[^&;#]*)")


def _pairs_mask(part: str) -> str:
    """``name=value`` pairs of a query or fragment, a secret-looking name's non-empty value masked, the rest kept byte for byte."""

    def one(match: re.Match) -> str:
        name = unquote_plus(match.group("name")).lower()
        if match.group("value") and any(word in name for word in SECRET_QUERY_WORDS):
            return f"{match.group('name')}={MASK}"
        return match.group(0)

    return _PAIR.sub(one, part) if "=" in part else part


def _userinfo_end(url: str, start: int) -> int:
    """Index of the ``@`` that ends the user info of ``url`` (authority from ``start``), or -1 when it has none.

    Two readers must both find nothing left: ``urllib.parse`` takes the authority up to the first ``/?#``
    and the user info up to its last ``@``; SQLAlchemy's ``make_url`` takes a user of ``[^:/]*`` and a
    password up to the first ``@`` (``postgresql://u:p/ss@h/db`` is password ``p/ss`` to it). The end is
    the later of the two, so a password is masked whichever reader the URL meets.
    """
    authority_end = len(url)
    for char in "/?#":
        found = url.find(char, start)
        if found != -1:
            authority_end = min(authority_end, found)
    end = url.rfind("@", start, authority_end)  # urllib.parse
    first_at = url.find("@", start)
    if first_at != -1:
        user, sep, _ = url[start:first_at].partition(":")
        if "/" not in user:  # SQLAlchemy
            end = max(end, first_at)
    return end


def url_mask(url: str) -> str:
    """``url`` safe to show or log: a password becomes ``***`` (the user before it stays), and so does
    every non-empty query value whose name looks secret (``token``, ``password``, ``api_key``...).

    ``postgresql://ann:pw@db/x?sslmode=require&token=t`` -> ``postgresql://ann:***@db/x?sslmode=require&token=***``.
    A user without a password (``https://TOKEN@host/``, a token in that place) becomes ``***`` too; a
    password holding ``/``, ``#`` or ``@`` unencoded is masked as a whole (``_userinfo_end``). Name=value
    pairs of the fragment are masked like the query's (``#access_token=...``). Everything else is kept byte
    for byte. A text that is not a URL (no ``scheme:``) is returned as it is.
    """
    return _url_mask(url, lone_user=True)


def _url_mask(url: str, *, lone_user: bool) -> str:
    """``url_mask``; ``lone_user``: whether a user without a password is masked too."""
    head = _SCHEME.match(url)
    if head is None:
        return url
    start = head.end()
    out = url[:start]
    if head.group(1):
        end = _userinfo_end(url, start)
        if end != -1:
            user, sep, _password = url[start:end].partition(":")
            if sep or lone_user:
                out += f"{user}:{MASK}@" if sep else f"{MASK}@"
                start = end + 1
    before, hash_sep, fragment = url[start:].partition("#")
    path, query_sep, query = before.partition("?")
    return out + path + query_sep + _pairs_mask(query) + hash_sep + _pairs_mask(fragment)


def _url_in_text_mask(match: re.Match) -> str:
    url = match.group(0)
    trailer = len(url) - len(url.rstrip(_URL_TRAILER))
    if trailer:
        return url_mask(url[:-trailer]) + url[-trailer:]
    return url_mask(url)


def text_mask(text: str, *, secrets: tuple[str, ...] = ()) -> str:
    """``text`` (an error message, a log line) with every URL in it masked (``url_mask``) and every one of
    ``secrets`` (a hub key, say) replaced by ``***`` where it stands as a whole word."""
    if not text:
        return text
    text = _URL_IN_TEXT.sub(_url_in_text_mask, text)
    for secret in secrets:
        if secret:
            text = re.sub(rf"(?<![\w-]){re.escape(secret)}(?![\w-])", MASK, text)
    return text


def url_has_password(url: str) -> bool:
    """Whether ``url`` carries a secret: a password in its user info (``user:pw@``, ``:pw@``), or a
    non-empty secret-looking query or fragment value (``?token=t``). A user alone (``reader@db``) is not
    one: a SQLAlchemy URL names its database user there. Export writes a reference for such a URL."""
    return _url_mask(url, lone_user=False) != url


class MaskingFormatter(logging.Formatter):
    """The log formatter of every hubsched process (settings.LOGGING): each line it writes, traceback
    included, has its URLs masked (``text_mask``), so that a password or token inside a URL never reaches a
    log, whichever code logged it. Costs one regex pass per log line (logs are per event, not per value)."""

    def format(self, record: logging.LogRecord) -> str:
        return text_mask(super().format(record))
