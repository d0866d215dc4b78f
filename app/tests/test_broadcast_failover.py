"""The broadcast channel across a Redis Sentinel failover (a primary, two replicas and three
Sentinels as real processes): subscribers subscribe again by themselves, and every message
published once they have is delivered to each of them exactly once. Messages published during
the gap may be lost (pub/sub keeps nothing); this test does not count on them either way."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from clusterkit_app.broadcast import Message
from clusterkit_app.broadcast_channel import BroadcastChannel
from clusterkit_app.config import load_config
from clusterkit_app.devservers import RedisSentinelGroup, wait_until
from clusterkit_app.store import redis_for

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def group(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisSentinelGroup]:
    g = RedisSentinelGroup(Path(tmp_path_factory.mktemp("bcast-sentinel")))
    yield g
    g.stop()


def sentinel_client(group: RedisSentinelGroup) -> Any:
    return redis_for(load_config({"NODE_ID": "n1", **group.env()}))


async def until(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.05)


async def deliver_across(group: RedisSentinelGroup, fault: Any, resubscribe: bool) -> None:
    """Three subscribers get 5 messages, ``fault()`` moves the primary, and once they are
    subscribed again (``resubscribe``: each one must have lost its connection) 10 more
    messages reach each of them exactly once, in order. Publishers use the Sentinel client too."""
    old = group.primary_index()
    clients = [sentinel_client(group) for _ in range(3)]
    chans = [
        BroadcastChannel(c, "failover-token", "n-fo", f"s{i}", "worker")
        for i, c in enumerate(clients)
    ]
    got: dict[str, list[int]] = {c.sender_id: [] for c in chans}
    for c in chans:

        async def record(msg: Message, me: str = c.sender_id) -> None:
            got[me].append(int(msg.payload["n"]))

        c.on("config", record)
    tasks = [asyncio.create_task(c.run()) for c in chans]
    try:
        await until(lambda: all(c.subscriptions == 1 for c in chans), 20, "subscribed")
        for n in range(5):
            await chans[0].publish("config", {"n": n})
        await until(lambda: all(len(v) == 5 for v in got.values()), 20, "before")

        await asyncio.to_thread(fault)
        await asyncio.to_thread(wait_until, lambda: group.primary_index() != old, 60, "failover")
        if resubscribe:
            await until(lambda: all(c.subscriptions >= 2 for c in chans), 60, "resubscribed")
        await until(lambda: all(c.subscribed.is_set() for c in chans), 60, "subscribed")
        # published once every subscriber is back: each one gets all of them, once
        for n in range(100, 110):
            await chans[n % 3].publish("config", {"n": n})
        await until(lambda: all(len(v) == 15 for v in got.values()), 20, "after")
        await asyncio.sleep(0.3)
        for received in got.values():
            assert received == [*range(5), *range(100, 110)]
        assert all(not c.dropped for c in chans)
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for c in clients:
            await c.aclose()


def test_subscribers_follow_a_planned_failover(group: RedisSentinelGroup) -> None:
    group.wait_healthy()
    asyncio.run(deliver_across(group, group.planned_failover, resubscribe=False))
    group.wait_healthy()


def test_subscribers_follow_a_kill_9_of_the_primary(group: RedisSentinelGroup) -> None:
    group.wait_healthy()
    old = group.primary_index()
    asyncio.run(deliver_across(group, lambda: group.kill(old), resubscribe=True))
    assert group.primary_index() != old
