"""Admin of API tokens: a user makes and revokes their own; ``api.manage_apitoken`` sees and revokes all."""

from __future__ import annotations

from django import forms
from django.contrib import admin
from django.template.response import TemplateResponse

from .models import ApiToken
from .services import api_token_check, api_token_revoke, api_token_secret


class ApiTokenForm(forms.ModelForm):
    class Meta:
        model = ApiToken
        fields = ("name", "expires_at")

    def clean(self):
        data = super().clean()
        if self.instance.pk is None:
            try:
                data["name"] = api_token_check(name=data.get("name", ""), expires_at=data.get("expires_at"))
            except ValueError as exc:
                field, _, message = str(exc).partition(": ")
                self.add_error(field, message)
        return data


@admin.register(ApiToken)
class ApiTokenAdmin(admin.ModelAdmin):
    list_display = ("name", "prefix", "user", "state", "created_at", "expires_at", "last_used_at")
    list_filter = ("revoked_at", "expires_at")
    search_fields = ("name", "prefix", "user__username")
    fields = ("name", "expires_at", "prefix", "user", "created_at", "last_used_at", "revoked_at")
    readonly_fields = ("prefix", "user", "created_at", "last_used_at", "revoked_at")
    actions = ["revoke"]
    form = ApiTokenForm

    def _manages_all(self, request) -> bool:
        return request.user.has_perm("api.manage_apitoken")

    def get_queryset(self, request):
        qs = super().get_queryset(request).select_related("user")
        return qs if self._manages_all(request) else qs.filter(user=request.user)

    def get_readonly_fields(self, request, obj=None):
        # a token's name and expiry are set when it is made; afterwards it can only be revoked
        return self.readonly_fields + (("name", "expires_at") if obj else ())

    def save_model(self, request, obj, form, change):
        if change:
            return
        obj.prefix, obj.digest, raw = api_token_secret()
        obj.user = request.user
        obj.save()
        obj.shown_once = raw  # for response_add only: never stored, never in a cookie or a message

    def response_add(self, request, obj, post_url_continue=None):
        """The page after adding shows the token, once (not through ``messages``: they may travel in a cookie)."""
        raw = getattr(obj, "shown_once", None)
        if raw is None:
            return super().response_add(request, obj, post_url_continue)
        context = {**self.admin_site.each_context(request), "opts": self.opts, "token": obj, "raw": raw,
                   "title": "API token created"}
        response = TemplateResponse(request, "admin/api/apitoken/created.html", context)
        response["Cache-Control"] = "no-store"
        return response

    def delete_model(self, request, obj):
        api_token_revoke(token=obj)  # a deleted token would lose its audit trail: it is revoked instead
        obj.delete()

    @admin.action(description="Revoke the selected tokens", permissions=["delete"])
    def revoke(self, request, queryset):
        for token in queryset:
            api_token_revoke(token=token)
        self.message_user(request, f"{queryset.count()} token(s) revoked.")
