"""Admin for scripts, sinks and data sources (URLs shown with their password hidden)."""

from django.contrib import admin, messages
from django.db.models import Count

from hubsched.secrets import url_mask

from .forms import DataSourceForm, SinkForm
from .models import DataSource, Script, Sink


class MaskedURLAdmin(admin.ModelAdmin):
    """A view-only change page shows a field's value as it is: there the URL gives way to its masked form."""

    def _view_only(self, request, obj) -> bool:
        return obj is not None and not self.has_change_permission(request, obj)

    def get_fields(self, request, obj=None):
        fields = super().get_fields(request, obj)
        return ["safe_url" if f == "url" else f for f in fields] if self._view_only(request, obj) else fields

    def get_readonly_fields(self, request, obj=None):
        readonly = tuple(super().get_readonly_fields(request, obj))
        return (*readonly, "safe_url") if self._view_only(request, obj) else readonly

    @admin.display(description="SQLAlchemy URL")
    def safe_url(self, obj):
        return url_mask(obj.url)


@admin.register(Script)
class ScriptAdmin(admin.ModelAdmin):
    list_display = ("name", "project", "description", "timeout", "memory_limit_mb", "group_count")
    list_filter = ("project",)
    search_fields = ("name", "description", "code")
    list_select_related = ("project",)

    def get_queryset(self, request):
        return super().get_queryset(request).annotate(_groups=Count("groups"))

    @admin.display(description="groups", ordering="_groups")
    def group_count(self, obj):
        return obj._groups


@admin.register(Sink)
class SinkAdmin(MaskedURLAdmin):
    form = SinkForm  # the URL's password is write-only: shown as ***, and *** keeps the stored one
    list_display = ("name", "project", "safe_url", "layout", "table", "local_infile", "enabled")
    list_filter = ("enabled", "layout", "local_infile", "project")
    search_fields = ("name", "table", "project__name")  # not the URL: it may hold a password
    list_select_related = ("project",)
    actions = ["enable", "disable"]

    @admin.action(description="Enable selected sinks", permissions=["change"])
    def enable(self, request, queryset):
        self.message_user(request, f"{queryset.update(enabled=True)} sink(s) enabled.", messages.SUCCESS)

    @admin.action(description="Disable selected sinks", permissions=["change"])
    def disable(self, request, queryset):
        self.message_user(request, f"{queryset.update(enabled=False)} sink(s) disabled.", messages.SUCCESS)


@admin.register(DataSource)
class DataSourceAdmin(MaskedURLAdmin):
    form = DataSourceForm  # as for sinks: the URL's password is write-only
    list_display = ("name", "project", "safe_url", "writable", "allow_ddl")
    list_filter = ("writable", "allow_ddl", "project")
    search_fields = ("name", "project__name")  # not the URL: it may hold a password
    list_select_related = ("project",)
