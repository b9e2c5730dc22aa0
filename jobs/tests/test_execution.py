"""The worker side of jobs (jobs/execution.py): misfire, overlap, kill, timeout, retries, lost runs, the fence.

Commands run for real (bash in a temporary directory); runs are real rows. Tests that run two executions at once use
threads, so they need a database the threads share (``transactional_db``).
"""

from __future__ import annotations

import os
import threading
import time
from datetime import datetime, timedelta, timezone

import pytest

from hubs.models import Project
from jobs.execution import job_execute, job_ticks_run
from jobs.models import Job, JobRun, JobStats
from jobs.services import job_run_kill


@pytest.fixture
def project(db):
    return Project.objects.create(name="plant")


@pytest.fixture
def jobs_dir(settings, tmp_path):
    settings.HUBSCHED_JOBS_DIR = tmp_path
    settings.HUBSCHED_JOBS_KILL_GRACE_S = 1.0
    return tmp_path


def shell_job(project, name="job", script="true", **fields) -> Job:
    return Job.objects.create(project=project, name=name, kind="shell", argv=["bash", "-c", script], **fields)


def now() -> datetime:
    return datetime.now(timezone.utc)


def wait_for(predicate, timeout: float = 10.0, what: str = "it"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"{what} did not happen within {timeout} s")


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    status = open(f"/proc/{pid}/status").read()
    return "zombie" in status


def needs_concurrent_writers() -> None:
    """Skip on SQLite's shared in-memory test database, which fails a second writer thread at once ('table is
    locked'; seen in full runs): these tests run with DATABASE_URL on PostgreSQL (docs/jobs.md, "Tests")."""
    from django.db import connection

    if connection.vendor == "sqlite":
        pytest.skip("SQLite's shared in-memory test database fails a second writer at once ('table is locked'); "
                    "run with DATABASE_URL on PostgreSQL")


def in_thread(target, **kwargs) -> tuple[threading.Thread, dict]:
    result: dict = {}

    def run():
        from django.db import connection

        try:
            result["run"] = target(**kwargs)
        finally:
            connection.close()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, result


def test_a_shell_job_writes_its_file_and_is_recorded_ok_with_its_output(project, jobs_dir):
    job = shell_job(project, script="echo hello > out.txt; echo done; echo warn >&2")
    run = job_execute(job_id=job.pk, scheduled_for=now())
    assert run.status == "ok" and run.exit_code == 0 and run.attempts == 1
    assert (jobs_dir / "out.txt").read_text() == "hello\n"
    assert run.stdout == "done\n" and run.stderr == "warn\n" and run.stdout_bytes == 5
    assert run.worker and run.finished_at >= run.started_at
    assert JobStats.objects.get(job=job).last_run_at == run.scheduled_for


def test_a_failing_command_is_failed_with_its_exit_code_and_counted(project, jobs_dir):
    job = shell_job(project, script="exit 3")
    run = job_execute(job_id=job.pk, scheduled_for=now())
    assert run.status == "failed" and run.exit_code == 3 and "exit code 3" in run.error
    assert JobStats.objects.get(job=job).failures == 1


def test_retries_with_backoff_until_an_attempt_succeeds(project, jobs_dir):
    job = shell_job(project, script="n=$(cat n 2>/dev/null || echo 0); echo $((n+1)) > n; [ $n -ge 1 ]",
                    retries=3, retry_backoff=0.1)
    run = job_execute(job_id=job.pk, scheduled_for=now())
    assert run.status == "ok" and run.attempts == 2
    assert (jobs_dir / "n").read_text() == "2\n"


def test_a_timeout_stops_the_command_and_records_timeout(project, jobs_dir):
    job = shell_job(project, script="echo $$ > pid; sleep 30", timeout=0.5)
    run = job_execute(job_id=job.pk, scheduled_for=now())
    assert run.status == "timeout" and "timed out" in run.error
    assert wait_for(lambda: gone(int((jobs_dir / "pid").read_text())), what="the command ending")


@pytest.mark.django_db(transaction=True)
def test_a_job_killed_mid_run_is_recorded_killed_with_its_process_tree_gone(project, jobs_dir):
    needs_concurrent_writers()
    job = shell_job(project, script="sleep 300 & echo $! > child; echo $$ > pid; wait")
    thread, result = in_thread(job_execute, job_id=job.pk, scheduled_for=now())
    wait_for(lambda: (jobs_dir / "child").exists() and (jobs_dir / "pid").exists(), what="the job starting")
    run = wait_for(lambda: JobRun.objects.filter(job=job, status="running", pid__isnull=False).first(), what="its pid")
    job_run_kill(run=run, by="alice")
    thread.join(15)
    run.refresh_from_db()
    assert run.status == "killed" and run.killed_by == "alice" and "killed by alice" in run.error
    for name in ("pid", "child"):
        pid = int((jobs_dir / name).read_text())
        assert wait_for(lambda: gone(pid), what=f"{name} {pid} ending")


@pytest.mark.django_db(transaction=True)
def test_overlap_forbid_skips_a_tick_while_a_run_is_running(project, jobs_dir):
    needs_concurrent_writers()
    job = shell_job(project, script="touch started; sleep 2")
    thread, _ = in_thread(job_execute, job_id=job.pk, scheduled_for=now())
    wait_for(lambda: (jobs_dir / "started").exists(), what="the first run starting")
    second = job_execute(job_id=job.pk, scheduled_for=now())
    assert second.status == "skipped" and "was still running (overlap: forbid)" in second.error
    thread.join(15)
    assert sorted(JobRun.objects.filter(job=job).values_list("status", flat=True)) == ["ok", "skipped"]


@pytest.mark.django_db(transaction=True)
def test_overlap_replace_stops_the_older_run_then_starts(project, jobs_dir):
    needs_concurrent_writers()
    # the first run makes a marker and sleeps; the second sees the marker and ends at once
    job = shell_job(project, script="if [ -f marker ]; then echo second; exit 0; fi; touch marker; sleep 300",
                    overlap="replace")
    thread, result = in_thread(job_execute, job_id=job.pk, scheduled_for=now())
    wait_for(lambda: (jobs_dir / "marker").exists(), what="the first run starting")
    second = job_execute(job_id=job.pk, scheduled_for=now())
    thread.join(15)
    first = result["run"]
    first.refresh_from_db()
    assert first.status == "killed" and first.killed_by == f"replaced by run {second.pk}"
    assert second.status == "ok" and second.stdout == "second\n"
    assert first.finished_at <= second.finished_at


@pytest.mark.django_db(transaction=True)
def test_overlap_allow_runs_both(project, jobs_dir):
    needs_concurrent_writers()
    job = shell_job(project, script="touch started-$$; sleep 1", overlap="allow")
    thread, result = in_thread(job_execute, job_id=job.pk, scheduled_for=now())
    wait_for(lambda: list(jobs_dir.glob("started-*")), what="the first run starting")
    second = job_execute(job_id=job.pk, scheduled_for=now())
    thread.join(15)
    assert second.status == "ok" and result["run"].status == "ok"


def test_a_tick_later_than_its_grace_is_missed_when_misfires_are_skipped(project, jobs_dir):
    job = shell_job(project, script="touch ran", misfire="skip")
    t = time.time() - 5
    out = job_ticks_run(job_id=job.pk, ticks=[[t, job.grace_seconds, 0, [-job.pk]]])
    assert out == {"ran": 0, "ok": 0, "failed": 0, "skipped": 0, "missed": 1}
    run = JobRun.objects.get(job=job)
    assert run.status == "missed" and "misfire grace (1 s)" in run.error
    assert not (jobs_dir / "ran").exists()


def test_late_ticks_within_the_grace_run_once_as_the_latest(project, jobs_dir):
    job = shell_job(project, script="echo x >> ran", misfire="run_late", misfire_grace=60)
    t = time.time()
    ticks = [[t - 30, 60.0, 0, [-job.pk]], [t - 20, 60.0, 1, [-job.pk]], [t - 90, 60.0, 2, [-job.pk]]]
    out = job_ticks_run(job_id=job.pk, ticks=ticks)
    assert out["ran"] == 1 and out["ok"] == 1 and out["missed"] == 2
    runs = {round(r.scheduled_for.timestamp()): r for r in JobRun.objects.filter(job=job)}
    assert runs[round(t - 20)].status == "ok"
    assert runs[round(t - 30)].status == "missed" and "coalesced" in runs[round(t - 30)].error
    assert runs[round(t - 90)].status == "missed" and "misfire grace" in runs[round(t - 90)].error
    assert (jobs_dir / "ran").read_text() == "x\n"


def test_a_tick_recorded_already_runs_nothing_twice(project, jobs_dir):
    job = shell_job(project, script="echo x >> ran")
    at = now()
    first = job_execute(job_id=job.pk, scheduled_for=at)
    again = job_execute(job_id=job.pk, scheduled_for=at)  # a redelivered message
    assert again.pk == first.pk and (jobs_dir / "ran").read_text() == "x\n"


def test_a_batch_of_a_fenced_off_beat_round_is_refused_and_records_nothing(project, jobs_dir):
    class Refuse:
        def admit(self, fence):
            return False

    job = shell_job(project, script="touch ran")
    out = job_ticks_run(job_id=job.pk, ticks=[[time.time(), 1.0, 0, [-job.pk]]], fence=[3, 9], fences=Refuse())
    assert out == {"refused": True} and not JobRun.objects.exists() and not (jobs_dir / "ran").exists()


def test_a_running_run_whose_worker_stopped_beating_is_recorded_lost_by_the_next_run(project, jobs_dir, settings):
    settings.HUBSCHED_JOBS_LOST_AFTER_S = 30
    job = shell_job(project, script="true")
    stale = JobRun.objects.create(job=job, scheduled_for=now() - timedelta(minutes=5), status="running",
                                  started_at=now() - timedelta(minutes=5), heartbeat_at=now() - timedelta(minutes=4))
    run = job_execute(job_id=job.pk, scheduled_for=now())
    stale.refresh_from_db()
    assert stale.status == "lost" and "stopped beating" in stale.error and stale.finished_at is not None
    assert run.status == "ok"  # forbid: the lost run no longer holds the job
    assert JobStats.objects.get(job=job).failures == 1


def test_shell_jobs_turned_off_on_the_worker_are_failed_and_run_nothing(project, jobs_dir, settings):
    settings.HUBSCHED_JOBS_SHELL = False
    job = shell_job(project, script="touch ran")
    run = job_execute(job_id=job.pk, scheduled_for=now())
    assert run.status == "failed" and "HUBSCHED_JOBS_SHELL" in run.error and not (jobs_dir / "ran").exists()


def test_output_beyond_the_limit_keeps_the_last_part_and_the_full_size(project, jobs_dir):
    job = shell_job(project, script="head -c 300000 /dev/zero | tr '\\0' a; echo END", output_limit_kib=4)
    run = job_execute(job_id=job.pk, scheduled_for=now())
    assert run.status == "ok" and run.stdout_bytes == 300004
    assert len(run.stdout) == 4096 and run.stdout.endswith("aEND\n")


def test_run_now_through_the_task_records_who_asked(project, jobs_dir):
    from jobs.tasks import job_run_now

    job = shell_job(project, script="true", enabled=False)  # a disabled job still runs when asked
    result = job_run_now(job.pk, now().isoformat(), "bob")
    run = JobRun.objects.get(pk=result["run"])
    assert run.status == "ok" and run.requested_by == "bob"


def test_a_failed_run_raises_the_jobs_failure_alarm_and_the_next_ok_run_clears_it(project, jobs_dir):
    from alarms.models import Alarm

    job = shell_job(project, script="[ -f ok ] || exit 4")
    job_execute(job_id=job.pk, scheduled_for=now())
    alarm = Alarm.objects.get(kind="job_failed", subject=f"job:{job.pk}")
    assert alarm.state == "active" and alarm.project_id == project.pk and "exit code 4" in alarm.message
    (jobs_dir / "ok").touch()
    job_execute(job_id=job.pk, scheduled_for=now())
    alarm.refresh_from_db()
    assert alarm.state == "cleared" and list(alarm.events.values_list("transition", flat=True).order_by("pk")) == [
        "raised", "cleared"]
