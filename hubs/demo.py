"""The demo project: two reference hubs on this machine, their entity trees, groups, a doubling script."""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import transaction

from .hubsim.tree import demo_tree
from .models import Hub, Project
from .project_document.importer import entity_tree_write

DEMO_PROJECT = "demo"
# (hub, port, the environment variable holding its key, the key without it); docker-compose.yml gives each
# reference hub the same variable as HUBSIM_KEY, so the demo project and its hubs agree.
DEMO_HUBS = (("hub-a", 8765, "HUB_A_KEY", "demo-key-a"), ("hub-b", 8766, "HUB_B_KEY", "demo-key-b"))


def demo_hub_key(*, env_name: str, default: str) -> str:
    """A demo hub's key: ``$<env_name>`` when set (compose), else the development default."""
    return os.environ.get(env_name) or default

# (hub, group, period s, [(entity, key, alias)], script name or None)
DEMO_GROUPS = (
    (
        "hub-a",
        "line1-pumps",
        1.0,
        [
            ("plant/line1/pump1", "flow", "pump1_flow"),
            ("plant/line1/pump1", "pressure", "pump1_pressure"),
            ("plant/line1/pump2", "flow", "pump2_flow"),
            ("plant/line1/pump2", "pressure", "pump2_pressure"),
            ("plant/line1/pump1", "alarms", "pump1_alarms"),
        ],
        None,
    ),
    ("hub-a", "burner-stage", 5.0, [("plant/utilities/boiler/burner", "stage", "stage")], "double-stage"),
    (
        "hub-b",
        "boiler",
        10.0,
        [
            ("plant/utilities/boiler", "temperature", "temperature"),
            ("plant/utilities/boiler", "pressure", "pressure"),
            ("plant/utilities/boiler", "level", "level"),
            ("plant/utilities/boiler", "alarms", "alarms"),
        ],
        None,
    ),
    (
        "hub-b",
        "mixer",
        2.0,
        [
            ("plant/line2/mixer", "rpm", "rpm"),
            ("plant/line2/mixer", "temperature", "temperature"),
            ("plant/line2/mixer/pt201", "value", "pt201"),
            ("plant/line2/mixer", "recipe", "recipe"),
        ],
        None,
    ),
)

DOUBLING_SCRIPT = """\
# Doubles the burner stage and writes it back to the hub; starts over at 1 past 1024.
stage = stage * 2 if stage < 1024 else 1
"""


@dataclass
class DemoSummary:
    project: Project
    created: bool
    admin_username: str
    admin_password: str


def demo_admin_ensure(*, username: str = "admin") -> tuple[str, str]:
    """Create the demo superuser once; its password is kept in ``var/admin-password`` (mode 600)."""
    path = Path(settings.VAR_DIR) / "admin-password"
    password = path.read_text().strip() if path.exists() else ""
    user_model = get_user_model()
    user = user_model.objects.filter(username=username).first()
    if user is None or not password:
        password = password or secrets.token_urlsafe(12)
        path.write_text(password + "\n")
        path.chmod(0o600)
        if user is None:
            user_model.objects.create_superuser(username=username, email="", password=password)
        else:
            user.set_password(password)
            user.save(update_fields=["password"])
    return username, password


def demo_load(*, hub_urls: dict[str, str] | None = None) -> DemoSummary:
    """Create or refresh the demo project (idempotent); returns it with the admin credentials.

    ``hub_urls`` maps hub name to URL; by default hub-a is ws://127.0.0.1:8765/connect and hub-b
    ws://127.0.0.1:8766/connect, where ``make run`` starts them. Raises ``ValueError`` for a name
    that is not a demo hub.
    """
    unknown = set(hub_urls or {}) - {name for name, *_ in DEMO_HUBS}
    if unknown:
        raise ValueError(f"not a demo hub: {', '.join(sorted(unknown))} (demo hubs: hub-a, hub-b)")
    from groups.models import Group, GroupKey
    from scripts_engine.models import Script

    with transaction.atomic():
        project, created = Project.objects.get_or_create(
            name=DEMO_PROJECT,
            defaults={"description": "Two reference hubs on this machine (make run starts them)."},
        )
        hubs = {}
        for name, port, env_name, default_key in DEMO_HUBS:
            hubs[name], _ = Hub.objects.update_or_create(
                project=project,
                name=name,
                defaults={
                    "url": (hub_urls or {}).get(name, f"ws://127.0.0.1:{port}/connect"),
                    "api_key": demo_hub_key(env_name=env_name, default=default_key),
                    "timeout": 5.0,
                    "enabled": True,
                },
            )
            entity_tree_write(hub=hubs[name], tree=demo_tree(name))
        script, _ = Script.objects.update_or_create(
            project=project,
            name="double-stage",
            defaults={"code": DOUBLING_SCRIPT, "description": "Doubles the burner stage and writes it back."},
        )
        for hub_name, group_name, period, keys, script_name in DEMO_GROUPS:
            group, _ = Group.objects.update_or_create(
                hub=hubs[hub_name],
                name=group_name,
                defaults={"period": period, "script": script if script_name else None, "enabled": True},
            )
            for position, (entity, key, alias) in enumerate(keys):
                GroupKey.objects.update_or_create(
                    group=group, entity=entity, key=key, defaults={"alias": alias, "position": position}
                )
    username, password = demo_admin_ensure()
    return DemoSummary(project=project, created=created, admin_username=username, admin_password=password)
