"""Admin for scripts, sinks and data sources (URLs shown with their password hidden)."""

from django.contrib import admin, messages
from django.db.models import Count

from hubs.project_document.export import url_redacted

from .models import DataSource, Script, Sink


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
class SinkAdmin(admin.ModelAdmin):
    list_display = ("name", "project", "safe_url", "layout", "table", "enabled")
    list_filter = ("enabled", "layout", "project")
    search_fields = ("name", "table", "project__name")  # not the URL: it may hold a password
    list_select_related = ("project",)
    actions = ["enable", "disable"]

    @admin.display(description="SQLAlchemy URL")
    def safe_url(self, obj):
        return url_redacted(obj.url)

    @admin.action(description="Enable selected sinks")
    def enable(self, request, queryset):
        self.message_user(request, f"{queryset.update(enabled=True)} sink(s) enabled.", messages.SUCCESS)

    @admin.action(description="Disable selected sinks")
    def disable(self, request, queryset):
        self.message_user(request, f"{queryset.update(enabled=False)} sink(s) disabled.", messages.SUCCESS)


@admin.register(DataSource)
class DataSourceAdmin(admin.ModelAdmin):
    list_display = ("name", "project", "safe_url")
    list_filter = ("project",)
    search_fields = ("name", "project__name")
    list_select_related = ("project",)

    @admin.display(description="SQLAlchemy URL")
    def safe_url(self, obj):
        return url_redacted(obj.url)
