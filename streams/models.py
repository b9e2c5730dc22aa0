"""What the durable log's consumers keep in the Django database: their offsets, their state, and the
executions a sink refused (the quarantine).

A sink's own consumer offset lives in the sink database, committed with the values it covers
(``streams.forwarding.offsets``); only consumers whose work lands in this database (the run recorder)
keep theirs here, in ``ConsumerOffset``, committed in the same transaction as the runs.
"""

from __future__ import annotations

from django.db import models


class ConsumerOffset(models.Model):
    """The last offset of ``stream`` that ``consumer`` has processed, for consumers writing to this database."""

    stream = models.CharField("stream", max_length=200, help_text="Stream of the log (streams.log.STREAM_NAME).")
    consumer = models.CharField("consumer", max_length=200, help_text="Consumer name (runs: the run recorder).")
    offset = models.BigIntegerField("offset", help_text="Last record processed; the consumer resumes at offset + 1.")
    updated_at = models.DateTimeField("updated", auto_now=True, help_text="When the offset last moved.")

    class Meta:
        verbose_name = "consumer offset"
        verbose_name_plural = "consumer offsets"
        constraints = [models.UniqueConstraint(fields=["stream", "consumer"], name="consumer_offset_unique")]

    def __str__(self) -> str:
        return f"{self.consumer}@{self.stream}: {self.offset}"


class ForwarderKind(models.TextChoices):
    SINK = "sink", "sink forwarder"
    RUNS = "runs", "run recorder"


class ForwarderState(models.TextChoices):
    RUNNING = "running", "running"  # leading, and the last write went through
    RETRYING = "retrying", "retrying"  # leading, the database refuses connections or writes: backing off
    STANDBY = "standby", "standby"  # another process holds the lease
    STOPPED = "stopped", "stopped"  # the process ended cleanly


class Forwarder(models.Model):
    """A consumer of the log run by ``manage.py forward``: one sink's forwarder, or the run recorder.

    The row is its lease (one process leads each: ``owner`` until ``lease_until``) and what it last
    reported (every ``HUBSCHED_FORWARDER_REPORT_S``): position, lag, state, counters. The lease keeps
    standbys idle; correctness does not rest on it: every commit compares and sets the consumer
    offset in the same transaction (``streams.forwarding.offsets``), so two leaders never store twice.
    """

    name = models.CharField("name", max_length=200, unique=True, help_text="sink:<id>, sink:default or runs.")
    kind = models.CharField("kind", max_length=8, choices=ForwarderKind.choices, help_text="What it writes.")
    sink = models.ForeignKey(
        "scripts_engine.Sink", null=True, blank=True, on_delete=models.CASCADE, related_name="forwarders",
        verbose_name="sink", help_text="The sink it feeds; empty for the default sink and the run recorder.",
    )
    stream = models.CharField("stream", max_length=200, help_text="Stream it reads.")
    owner = models.CharField("owner", max_length=200, blank=True, help_text="host:pid of the process leading it.")
    lease_until = models.DateTimeField("lease until", null=True, blank=True, help_text="The lead is free after this.")
    state = models.CharField("state", max_length=16, choices=ForwarderState.choices, default=ForwarderState.STANDBY,
                             help_text="What the leading process last said.")
    position = models.BigIntegerField("position", null=True, blank=True,
                                      help_text="Last offset committed (with the values it covers).")
    committed_at = models.DateTimeField("committed", null=True, blank=True, help_text="When the last commit went in.")
    lag_records = models.BigIntegerField("lag (records)", null=True, blank=True,
                                         help_text="Records behind the end of the stream (an upper bound on RabbitMQ).")
    lag_values = models.BigIntegerField("lag (values)", null=True, blank=True,
                                        help_text="Values in the records read but not yet committed, plus an estimate for the rest.")
    lag_seconds = models.FloatField("lag (s)", null=True, blank=True,
                                    help_text="Age of the oldest record not yet committed.")
    backlog_percent = models.FloatField("backlog (% of retention)", default=0.0,
                                        help_text="The backlog's age (or size, where known) over the log's retention.")
    executions_total = models.BigIntegerField("executions", default=0, help_text="Executions committed since it started.")
    values_total = models.BigIntegerField("values", default=0, help_text="Values committed since it started.")
    records_in_rate = models.FloatField("in (records/s)", default=0.0, help_text="Records appended to the stream per second.")
    records_out_rate = models.FloatField("out (records/s)", default=0.0, help_text="Records it committed per second.")
    dropped_records = models.BigIntegerField("dropped", default=0,
                                             help_text="Records retention dropped before it read them (lost to this sink).")
    write_seconds = models.JSONField("write seconds", default=dict, blank=True,
                                     help_text="Seconds each committed batch took (hubsched.metrics.histogram snapshot).")
    last_error = models.TextField("last error", blank=True, help_text="The last write or read error, masked.")
    reported_at = models.DateTimeField("reported", null=True, blank=True, help_text="When the leader last reported.")

    class Meta:
        ordering = ["name"]
        verbose_name = "forwarder"
        verbose_name_plural = "forwarders"
        permissions = [("read_stream", "Can read the log's streams over HTTP")]

    def __str__(self) -> str:
        return self.name


class QuarantinedExecution(models.Model):
    """An execution a sink's database refused several times (a value too long for a column, a type it
    rejects), set aside so that the forwarder goes on; retried, exported or deleted from the admin."""

    forwarder = models.ForeignKey(Forwarder, on_delete=models.CASCADE, related_name="quarantine",
                                  verbose_name="forwarder", help_text="The sink forwarder that set it aside.")
    stream = models.CharField("stream", max_length=200, help_text="Stream it was read from.")
    offset = models.BigIntegerField("offset", help_text="Its record's offset in the stream.")
    group_id = models.BigIntegerField("group id", help_text="The group executed (kept when the group is deleted).")
    tick = models.DateTimeField("tick", help_text="The execution's scheduled time.")
    project = models.CharField("project", max_length=200, help_text="Project name at execution.")
    hub = models.CharField("hub", max_length=200, help_text="Hub name at execution.")
    group = models.CharField("group", max_length=200, help_text="Group name at execution.")
    values_count = models.PositiveIntegerField("values", default=0, help_text="Values the execution holds.")
    body = models.BinaryField("record", help_text="The log record as read (streams.codec, format version 1).")
    error = models.TextField("error", help_text="What the database said, masked.")
    tries = models.PositiveIntegerField("tries", default=0, help_text="Writes tried before it was set aside.")
    created_at = models.DateTimeField("quarantined", auto_now_add=True, help_text="When it was set aside.")

    class Meta:
        ordering = ["-created_at"]
        verbose_name = "quarantined execution"
        verbose_name_plural = "quarantined executions"
        constraints = [
            # a replayed batch quarantines an execution once
            models.UniqueConstraint(fields=["forwarder", "group_id", "tick"], name="quarantine_unique_execution"),
        ]

    def __str__(self) -> str:
        return f"{self.hub}/{self.group} @ {self.tick:%Y-%m-%d %H:%M:%S}"
