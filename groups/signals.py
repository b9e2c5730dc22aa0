"""Keeps each group's django-celery-beat PeriodicTask in step when a group or its hub is saved or deleted."""

from __future__ import annotations

from django.db import transaction
from django.db.models.signals import post_delete, post_save
from django.dispatch import receiver
from django.utils import timezone

from hubs.models import Hub, Project

from .models import Group, GroupKey


@receiver(post_save, sender=Group, dispatch_uid="groups.group_saved")
def group_saved(sender, instance: Group, raw: bool = False, **kwargs) -> None:
    if raw:  # loaddata: rows are restored as they were
        return
    from .services import group_schedule_sync

    group_schedule_sync(group=instance)


@receiver(post_delete, sender=Group, dispatch_uid="groups.group_deleted")
def group_deleted(sender, instance: Group, **kwargs) -> None:
    from .services import group_schedule_remove

    transaction.on_commit(lambda: group_schedule_remove(group=instance))


@receiver(post_save, sender=Hub, dispatch_uid="groups.hub_saved")
@receiver(post_save, sender=Project, dispatch_uid="groups.project_saved")
def hub_saved(sender, instance, raw: bool = False, **kwargs) -> None:
    # A hub's enabled flag and a project's time zone shape its groups' PeriodicTasks.
    if raw:
        return
    from .services import group_schedule_sync

    groups = Group.objects.select_related("hub__project", "periodic_task")
    groups = groups.filter(hub=instance) if isinstance(instance, Hub) else groups.filter(hub__project=instance)
    for group in groups:
        group_schedule_sync(group=group)
    # The beat scheduler reads changes through Group.updated_at (a hub's URL, key or enabled flag).
    groups.update(updated_at=timezone.now())


@receiver(post_save, sender=GroupKey, dispatch_uid="groups.group_key_saved")
@receiver(post_delete, sender=GroupKey, dispatch_uid="groups.group_key_deleted")
def group_key_changed(sender, instance: GroupKey, raw: bool = False, **kwargs) -> None:
    # An on-change group subscribes to its keys: the beat scheduler sees key edits through updated_at.
    if raw:
        return
    origin = kwargs.get("origin")  # post_delete: what the deletion started from
    if isinstance(origin, Group) or getattr(origin, "model", None) is Group:
        return  # the keys go with their group: no watermark to move (a bulk delete would UPDATE once a key)
    Group.objects.filter(pk=instance.group_id).update(updated_at=timezone.now())
