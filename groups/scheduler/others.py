"""A beat for the PeriodicTasks that are not hubsched groups: ``-S groups.scheduler.others:OtherTasksScheduler``.

hubsched's Scheduler runs groups only. Every group also has a mirror PeriodicTask (for people to see
in the admin), so django-celery-beat's own DatabaseScheduler on the same database would run every
group a second time. This one is that DatabaseScheduler without the mirrors.
"""

from __future__ import annotations

from django_celery_beat.schedulers import DatabaseScheduler


class OtherTasksScheduler(DatabaseScheduler):
    def enabled_models_qs(self):
        # django-celery-beat's documented override point; a mirror is a PeriodicTask with a group
        return super().enabled_models_qs().filter(hubsched_group__isnull=True)
