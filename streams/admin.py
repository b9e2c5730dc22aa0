"""Admin for the durable log's consumers: forwarders and their alarms, consumer offsets, and the quarantine
(retry, export as JSON, delete)."""

from __future__ import annotations

import json

from django.conf import settings
from django.contrib import admin, messages
from django.db.models import BooleanField, Case, Count, Value, When
from django.http import HttpResponse
from django.urls import reverse
from django.utils import timezone
from django.utils.html import format_html, format_html_join

from hubsched.secrets import text_mask

from .models import ConsumerOffset, Forwarder, QuarantinedExecution
from .quarantine import quarantined_export, quarantined_retry
from .selectors import forwarder_alarms, forwarders_wanted

RECORD_SHOWN_CHARS = 200_000  # a record larger than this is cut on its page; the export holds it whole
ALARM_STYLE = "color:#ba2121;font-weight:bold"


class ReadOnlyAdmin(admin.ModelAdmin):
    """Rows the forwarders write: looked at, never added, edited or deleted by hand (by anyone)."""

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


@admin.register(Forwarder)
class ForwarderAdmin(ReadOnlyAdmin):
    list_display = ("name", "kind", "sink", "state_shown", "owner", "lease_until", "position", "lag_records",
                    "lag_values", "lag_seconds", "backlog_shown", "records_in_rate", "records_out_rate",
                    "dropped_records", "quarantined", "error_shown", "reported_at", "alarm")
    list_filter = ("kind", "state", "stream")
    search_fields = ("name", "owner", "sink__name", "last_error")
    list_select_related = ("sink",)
    exclude = ("last_error",)  # shown masked again instead (error_shown)
    readonly_fields = ("alarm", "quarantined", "error_shown")

    def get_queryset(self, request):
        wanted = forwarders_wanted()
        is_wanted = Value(True) if wanted is None else Case(
            When(name__in=sorted(wanted), then=Value(True)), default=Value(False), output_field=BooleanField())
        return super().get_queryset(request).annotate(_quarantined=Count("quarantine"), _wanted=is_wanted)

    @admin.display(description="state", ordering="state")
    def state_shown(self, obj):
        if obj.state != "running":
            return format_html('<span style="{}">{}</span>', ALARM_STYLE, obj.get_state_display())
        return obj.get_state_display()

    @admin.display(description="backlog (% of retention)", ordering="backlog_percent")
    def backlog_shown(self, obj):
        text = f"{obj.backlog_percent:.1f} %"
        if obj.backlog_percent >= settings.HUBSCHED_LOG_BACKLOG_ALARM_PERCENT:
            return format_html('<span style="{}">{}</span>', ALARM_STYLE, text)
        return text

    @admin.display(description="quarantined", ordering="_quarantined")
    def quarantined(self, obj):
        count = getattr(obj, "_quarantined", None)
        if count is None:
            count = obj.quarantine.count()
        if not count:
            return 0
        link = reverse("admin:streams_quarantinedexecution_changelist") + f"?forwarder__id__exact={obj.pk}"
        return format_html('<a href="{}">{}</a>', link, count)

    @admin.display(description="last error")
    def error_shown(self, obj):
        error = text_mask(obj.last_error)  # masked when reported; again, for what was written before
        return error[:200] + ("…" if len(error) > 200 else "") if error else "-"

    @admin.display(description="alarm")
    def alarm(self, obj):
        if not getattr(obj, "_wanted", True):
            return "none: the configuration no longer asks for it (its sink disabled or gone)"
        reasons = forwarder_alarms(obj, now=timezone.now())
        if not reasons:
            return "-"
        return format_html('<span style="{}">{}</span>', ALARM_STYLE, "; ".join(reasons))


@admin.register(ConsumerOffset)
class ConsumerOffsetAdmin(ReadOnlyAdmin):
    list_display = ("consumer", "stream", "offset", "updated_at")
    list_filter = ("stream",)
    search_fields = ("consumer", "stream")


@admin.register(QuarantinedExecution)
class QuarantinedExecutionAdmin(admin.ModelAdmin):
    """Executions a sink refused. Retry needs ``streams.change_quarantinedexecution`` (operator); export
    the view permission; delete Django's own, ``streams.delete_quarantinedexecution``. A row is never
    edited: its page shows it, and the record decoded."""

    list_display = ("forwarder", "hub_group", "tick", "values_count", "short_error", "tries", "created_at")
    list_filter = ("forwarder", "project", "hub", "group", "created_at")
    search_fields = ("project", "hub", "group", "error")
    list_select_related = ("forwarder",)
    date_hierarchy = "created_at"
    fields = ("forwarder", "stream", "offset", "project", "hub", "group", "group_id", "tick", "values_count",
              "error", "tries", "created_at", "record")
    readonly_fields = fields
    actions = ["retry", "export_json"]

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False  # read-only rows; retrying is an action of its own (has_retry_permission)

    def has_retry_permission(self, request):
        return request.user.has_perm("streams.change_quarantinedexecution")

    @admin.display(description="hub / group", ordering="hub")
    def hub_group(self, obj):
        return f"{obj.hub}/{obj.group}"

    @admin.display(description="error")
    def short_error(self, obj):
        return obj.error[:160] + ("…" if len(obj.error) > 160 else "")

    @admin.display(description="record (decoded)")
    def record(self, obj):
        raw = bytes(obj.body or b"")
        text = raw.decode("utf-8", errors="replace")
        try:
            text = json.dumps(json.loads(text), indent=2, ensure_ascii=False)
        except ValueError:
            pass  # not JSON: shown as it is
        cut = len(text) > RECORD_SHOWN_CHARS
        return format_html('<pre style="white-space:pre-wrap;max-height:40em;overflow:auto">{}</pre>{}',
                           text[:RECORD_SHOWN_CHARS],
                           f"… cut at {RECORD_SHOWN_CHARS} characters of {len(text)}: export it for the whole record"
                           if cut else "")

    @admin.action(description="Retry: write to the sink again (removed once stored)", permissions=["retry"])
    def retry(self, request, queryset):
        result = quarantined_retry(ids=list(queryset.values_list("pk", flat=True)))
        kept = result["refused"] + result["unreachable"] + result["unreadable"]
        if result["stored"]:
            self.message_user(request, f"{result['stored']} execution(s) stored ({result['values']} values) and "
                                       "removed from the quarantine.", messages.SUCCESS)
        if kept:
            parts = [f"{result[kind]} {label}" for kind, label in (
                ("refused", "refused again"), ("unreachable", "not written: the sink could not be reached"),
                ("unreadable", "not written: unreadable or without a sink")) if result[kind]]
            detail = format_html_join("", "<li>{}</li>", ((error,) for error in result["errors"]))
            self.message_user(request, format_html("{}; kept in the quarantine.<ul>{}</ul>", ", ".join(parts), detail),
                              messages.ERROR)
        if result["missing"]:
            self.message_user(request, f"{result['missing']} execution(s) were no longer quarantined.", messages.INFO)

    @admin.action(description="Export as JSON (the records decoded)", permissions=["view"])
    def export_json(self, request, queryset):
        body = quarantined_export(ids=list(queryset.values_list("pk", flat=True)))
        response = HttpResponse(body, content_type="application/json")
        stamp = timezone.now().strftime("%Y%m%dT%H%M%SZ")
        response["Content-Disposition"] = f'attachment; filename="quarantine-{stamp}.json"'
        return response
