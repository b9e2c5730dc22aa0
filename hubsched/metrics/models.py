"""``ProcessReport``: one row per worker or beat process, the numbers that live only in that process."""

from __future__ import annotations

from django.db import models


class ProcessReport(models.Model):
    """What one process (``host``, ``pid``) last reported (hubsched/metrics/reports.py, every
    ``HUBSCHED_METRICS_REPORT_S``): its hub clients' connection state, calls in flight and call latency, or the
    beat's dispatch lag. ``data`` is ``{source: snapshot}`` (the sources' shapes: docs/metrics.md, "Reported by
    processes"). ``/metrics`` adds the counters of every row up and reads gauges only from rows reported within
    three intervals; rows not reported for ``HUBSCHED_METRICS_REPORT_RETAIN_S`` are deleted (a counter reset)."""

    host = models.CharField("host", max_length=255, help_text="Host name of the process.")
    pid = models.PositiveIntegerField("pid", help_text="Process id on that host.")
    program = models.CharField("program", max_length=64, help_text="worker or beat.")
    data = models.JSONField("data", default=dict, help_text="{source: snapshot}, as last reported.")
    started_at = models.DateTimeField("started", help_text="When the process began reporting.")
    reported_at = models.DateTimeField("reported", db_index=True, help_text="When it last reported.")

    class Meta:
        app_label = "hubsched"
        ordering = ["host", "pid"]
        verbose_name = "process report"
        verbose_name_plural = "process reports"
        constraints = [models.UniqueConstraint(fields=["host", "pid"], name="hubsched_process_report_host_pid")]

    def __str__(self) -> str:
        return f"{self.program} {self.host}:{self.pid}"
