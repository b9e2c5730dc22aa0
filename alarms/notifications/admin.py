"""Admin of the notifications: routes (webhook headers write-only, "Send a test message"), attempts read-only.
Imported by alarms/admin.py."""

from __future__ import annotations

import json

from django import forms
from django.contrib import admin, messages

from ..models import NotificationAttempt, NotificationRoute


class NotificationRouteForm(forms.ModelForm):
    """``webhook_headers`` is write-only: never rendered back; left empty it keeps the stored headers, and
    ``clear_headers`` removes them."""

    webhook_headers = forms.CharField(
        label="webhook headers", required=False, widget=forms.PasswordInput(render_value=False),
        help_text='JSON object, e.g. {"Authorization": "Bearer ..."}; never shown back. Empty: keep the stored ones.')
    clear_headers = forms.BooleanField(label="remove the stored headers", required=False)

    class Meta:
        model = NotificationRoute
        fields = "__all__"

    def clean_webhook_headers(self):
        value = self.cleaned_data.get("webhook_headers") or ""
        if not value:
            return self.instance.webhook_headers if self.instance.pk else ""
        try:
            json.loads(value)
        except ValueError:
            raise forms.ValidationError("give a JSON object of text values") from None
        return value

    def clean(self):
        cleaned = super().clean()
        if cleaned.get("clear_headers"):
            cleaned["webhook_headers"] = ""
            self.instance.webhook_headers = ""
        return cleaned


@admin.register(NotificationRoute)
class NotificationRouteAdmin(admin.ModelAdmin):
    form = NotificationRouteForm
    list_display = ("name", "project", "kind", "min_severity", "group_wait_s", "repeat_interval_s", "enabled")
    list_filter = ("kind", "enabled", "project")
    search_fields = ("name", "email_to", "webhook_url")
    actions = ["send_test"]

    @admin.action(description="Send a test message", permissions=["change"])
    def send_test(self, request, queryset):
        from .dispatch import route_test_send

        for route in queryset:
            attempt = route_test_send(route=route, by=request.user)
            if attempt.ok:
                self.message_user(request, f"{route.name}: test message sent", messages.SUCCESS)
            else:
                self.message_user(request, f"{route.name}: test message failed: {attempt.error}", messages.ERROR)


@admin.register(NotificationAttempt)
class NotificationAttemptAdmin(admin.ModelAdmin):
    list_display = ("at", "route", "number", "ok", "status", "alarms_count", "final", "test", "error")
    list_filter = ("ok", "final", "test", "route")
    readonly_fields = [f.name for f in NotificationAttempt._meta.fields]
    list_select_related = ("route",)

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False
