"""Forms of hubs shared by the admin and the console: one rule per field (the model's), written once."""

from __future__ import annotations

from django import forms

from .models import Hub


class ProjectImportForm(forms.Form):
    """A project document to import (``hubs.services.project_import_as``): the admin's and the console's."""

    document = forms.FileField(help_text="A hubsched.project/1 JSON document, as export writes it.")
    replace = forms.BooleanField(
        required=False, help_text="Update the project of the same name in place; its groups keep their run history."
    )


class HubForm(forms.ModelForm):
    # The key is write-only: never rendered back into the page; left blank, the current key is kept.
    api_key = forms.CharField(
        label="API key",
        required=False,
        strip=False,
        widget=forms.PasswordInput(render_value=False, attrs={"autocomplete": "new-password"}),
        help_text="Sent with every request. Leave blank to keep the current key; it is never shown.",
    )
    clear_api_key = forms.BooleanField(label="clear the API key", required=False)
    # The TLS client key, the same way: write-only, kept when left blank.
    tls_client_key = forms.CharField(
        label="TLS client key",
        required=False,
        strip=False,
        widget=forms.Textarea(attrs={"rows": 3, "autocomplete": "off", "placeholder": "-----BEGIN PRIVATE KEY-----"}),
        help_text="Unencrypted PEM private key of the client certificate. Leave blank to keep the current key; "
        "it is never shown.",
    )
    clear_tls_client_key = forms.BooleanField(label="clear the TLS client key", required=False)

    class Meta:
        model = Hub
        fields = "__all__"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.initial["tls_client_key"] = ""  # a textarea would render the stored key back into the page
        if "redundancy_priority" in self.fields:  # left empty (a hub in no set): 0
            self.fields["redundancy_priority"].required = False

    def clean_redundancy_priority(self):
        value = self.cleaned_data.get("redundancy_priority")
        return 0 if value is None else value

    def clean(self):
        cleaned = super().clean()
        stored = Hub.objects.get(pk=self.instance.pk) if self.instance.pk else None
        for name in ("api_key", "tls_client_key"):
            if cleaned.get(f"clear_{name}"):
                cleaned[name] = ""
            elif not cleaned.get(name) and stored is not None:
                cleaned[name] = getattr(stored, name)
        return cleaned


class HubConsoleForm(HubForm):
    """The console's hub form: the connection settings (name, URL, key, timeout, in-flight limit, enabled); TLS and
    redundancy stay in the admin and the project document. The key is write-only as in ``HubForm``."""

    tls_client_key = None
    clear_tls_client_key = None

    class Meta:
        model = Hub
        fields = ["name", "url", "api_key", "timeout", "max_in_flight", "enabled"]

    def clean(self):
        cleaned = super().clean()
        cleaned.pop("tls_client_key", None)  # not a field here (HubForm.clean fills it in)
        return cleaned
