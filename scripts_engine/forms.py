"""Admin forms of sinks and data sources: the database URL's secrets are write-only.

The change form shows the URL as ``hubsched.secrets.url_mask`` writes it (``postgresql://ann:***@db/x``);
a URL submitted with ``***`` where a secret was keeps the stored secret (``url_secrets_keep``), so a person
can change the table or the database name without knowing the password, and never sees it.
"""

from __future__ import annotations

from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from django import forms
from django.core.exceptions import ValidationError

from hubsched.secrets import MASK, url_mask

from .models import DataSource, Sink


class MaskedURLInput(forms.TextInput):
    """A text input that renders its URL masked: neither the stored nor a just-typed password is sent back."""

    def __init__(self, attrs=None):
        super().__init__({"size": 80, "autocomplete": "off", "spellcheck": "false", **(attrs or {})})

    def format_value(self, value):
        return url_mask(value) if value else super().format_value(value)


def _host_port(parts) -> tuple[str, int | None]:
    try:
        return (parts.hostname or "", parts.port)
    except ValueError:  # a port that is not a number: never the same server
        return (parts.hostname or "", -1)


def url_secrets_keep(*, submitted: str, stored: str) -> str:
    """``submitted`` with each ``***`` that stands for a secret of ``stored`` replaced by that secret.

    The secrets are those ``url_mask`` hides: the password (the whole user info when it has no ``:``), and
    the values of secret-looking query parameters (matched by name). They are put back only when
    ``submitted`` names the same host and port as ``stored``, and, for a password, the same user: a stored
    password is never sent to another server, nor used as another user's. Raises ``ValidationError``
    (code ``masked_secret``) for a ``***`` that cannot be filled in that way. A URL without ``***``
    (``sqlite:///x``, a new password typed in full) is returned as it is.
    """
    if MASK not in submitted:
        return submitted
    new, old = urlsplit(submitted), urlsplit(stored or "")
    same_server = bool(stored) and _host_port(new) == _host_port(old)
    retype = "still holds *** where a secret was: type the secret again"
    netloc = new.netloc
    old_userinfo = old.netloc.rsplit("@", 1)[0] if "@" in old.netloc else ""
    if "@" in netloc:
        userinfo, host = netloc.rsplit("@", 1)
        user, sep, password = userinfo.partition(":")
        old_user, old_sep, old_password = old_userinfo.partition(":")
        if sep and password == MASK:
            if not (same_server and old_sep and user == old_user):
                raise ValidationError(f"the password {retype} (the host, port or user changed, or none was stored)",
                                      code="masked_secret")
            netloc = f"{user}:{old_password}@{host}"
        elif not sep and user == MASK:
            if not (same_server and old_userinfo):
                raise ValidationError(f"the user info {retype} (the host or port changed, or none was stored)",
                                      code="masked_secret")
            netloc = f"{old_userinfo}@{host}"
    query = new.query
    if MASK in query:
        new_user = netloc.rsplit("@", 1)[0].partition(":")[0] if "@" in netloc else ""
        same_user = new_user == old_userinfo.partition(":")[0]
        old_values = dict(parse_qsl(old.query, keep_blank_values=True))
        pairs = []
        for name, value in parse_qsl(query, keep_blank_values=True):
            if value == MASK:
                if not (same_server and same_user and name in old_values):
                    raise ValidationError(f"query parameter {name!r} {retype} (the host, port or user changed, "
                                          "or none was stored)", code="masked_secret")
                value = old_values[name]
            pairs.append((name, value))
        query = urlencode(pairs)
    return urlunsplit((new.scheme, netloc, new.path, query, new.fragment))


class _MaskedURLForm(forms.ModelForm):
    def clean_url(self):
        submitted = (self.cleaned_data.get("url") or "").strip()
        stored = type(self.instance).objects.get(pk=self.instance.pk).url if self.instance.pk else ""
        return url_secrets_keep(submitted=submitted, stored=stored)


class SinkForm(_MaskedURLForm):
    class Meta:
        model = Sink
        fields = "__all__"
        widgets = {"url": MaskedURLInput()}


class DataSourceForm(_MaskedURLForm):
    class Meta:
        model = DataSource
        fields = "__all__"
        widgets = {"url": MaskedURLInput()}


class SinkConsoleForm(SinkForm):
    """The console's sink form: the admin's (the URL masked, a ``***`` keeping the stored secret) for a sink's
    name, URL, layout, table and switch."""

    class Meta(SinkForm.Meta):
        fields = ["name", "url", "layout", "table", "enabled"]
