"""A batch's reads against a hub that counts the calls it holds: they all go out at once when the hub's limit allows
(one round trip a batch across a WAN, issue 19), and never more at once than the hub's ``max_in_flight``."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from groups.execution import execute_batch
from groups.models import Group, GroupKey
from hubs.client import hub_clients_close_all
from hubs.hubsim.server import serve_handler_in_thread
from hubs.tests.test_client_in_flight import KEY, CountingHub

pytestmark = pytest.mark.timeout(60)

TICK = datetime(2026, 11, 20, 10, 0, 10, tzinfo=timezone.utc)


def _batch(hub, n: int) -> list:
    for i in range(n):
        group = Group.objects.create(hub=hub, name=f"g{i}", period=1.0)
        GroupKey.objects.bulk_create([GroupKey(group=group, entity=f"bench/e{i}", key=k, position=p)
                                      for p, k in enumerate(("k000", "k001"))])
    groups = list(Group.objects.filter(hub=hub).select_related("hub__project", "script").prefetch_related("keys"))
    return [(g, TICK) for g in groups]


@pytest.mark.parametrize(("hub_limit", "groups", "peak"), [(150, 100, 100), (10, 30, 10)])
def test_a_batchs_reads_fill_the_hubs_limit_and_never_pass_it(project, make_hub, hub_limit, groups, peak):
    counting = CountingHub(limit=1000, hold=0.5)  # long enough for the hub to take a whole batch
    with serve_handler_in_thread(counting.handler) as server:
        try:
            hub = make_hub(server.url, key=KEY, timeout=10.0)
            hub.max_in_flight = hub_limit
            hub.save()
            outcomes = execute_batch(ticks=_batch(hub, groups))
            assert [o.error for o in outcomes] == [""] * groups
            assert all(o.values == 2 for o in outcomes)
            assert (counting.peak, counting.refused) == (peak, 0)
        finally:
            hub_clients_close_all()
