"""The app's Redis client against a real primary + 2 replicas + 3 Sentinels (redis-server in
Sentinel mode): job submits follow a failover without a restart, and no acknowledged job is
lost, neither after SENTINEL FAILOVER nor after a kill -9 of the primary."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from redis.exceptions import RedisError

from clusterkit_app.config import load_config
from clusterkit_app.devservers import RedisSentinelGroup
from clusterkit_app.store import JobQueue, NotReplicatedError, make_redis, redis_for


@pytest.fixture(scope="module")
def group(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisSentinelGroup]:
    g = RedisSentinelGroup(Path(tmp_path_factory.mktemp("sentinel")))
    yield g
    g.stop()


def queue_for(group: RedisSentinelGroup) -> JobQueue:
    config = load_config({"NODE_ID": "n1", **group.env()})
    return JobQueue(redis_for(config), config.redis_wait_replicas, 500)


async def submit_through(
    jobs: JobQueue, fault: object, prefix: str, after: int = 20
) -> tuple[list[str], float]:
    """Submit jobs back to back (a failed submit is resent with the same id, as a client does
    after a 503) while `fault()` runs once `after` jobs are in. Returns the acknowledged ids and
    the longest time between two acknowledgements (the outage as a client sees it)."""
    acked: list[str] = []
    gap = 0.0
    last_ack = time.monotonic()
    n = 0
    deadline = time.monotonic() + 60
    done: asyncio.Future[None] | None = None
    after_fault = 0
    while after_fault < after and time.monotonic() < deadline:
        job_id = f"{prefix}-{n}"
        try:
            await jobs.submit(job_id, json.dumps({"n": n}))
        except (RedisError, OSError):
            await asyncio.sleep(0.05)
            continue
        gap = max(gap, time.monotonic() - last_ack)
        last_ack = time.monotonic()
        acked.append(job_id)
        n += 1
        if done is None and len(acked) == after:
            done = asyncio.get_running_loop().run_in_executor(None, fault)  # type: ignore[arg-type]
        elif done is not None and done.done():
            after_fault += 1
    assert done is not None and done.done(), "the fault did not finish in time"
    done.result()
    assert after_fault >= after, f"only {after_fault} jobs got through after the fault"
    return acked, gap


async def assert_all_present(jobs: JobQueue, ids: list[str]) -> None:
    missing = [i for i in ids if not await jobs.get(i)]
    assert not missing, f"acknowledged jobs lost: {missing}"
    queued = set(await jobs.redis.lrange("jobs:queue", 0, -1))
    assert set(ids) <= queued


def test_kill_9_of_the_primary_loses_no_acknowledged_job(group: RedisSentinelGroup) -> None:
    group.wait_healthy()
    old = group.primary_index()

    async def scenario() -> float:
        jobs = queue_for(group)
        acked, gap = await submit_through(jobs, lambda: group.kill(old), "killed")
        assert group.primary_index() != old
        await assert_all_present(jobs, acked)
        await jobs.redis.aclose()
        return gap

    gap = asyncio.run(scenario())
    print(f"kill -9 of the primary: no submit acknowledged for {gap:.2f} s")
    # the old primary comes back as a replica of the new one; the group is whole again
    group.restart(old)
    group.wait_healthy()
    assert group.role(old) == "slave"


def test_planned_failover_loses_no_acknowledged_job(group: RedisSentinelGroup) -> None:
    # Sentinel starts no second failover of a group within 2 x failover-timeout of the last
    group.wait_healthy()
    old = group.primary_index()

    async def scenario() -> None:
        jobs = queue_for(group)
        acked, _ = await submit_through(jobs, group.planned_failover, "planned")
        await asyncio.to_thread(group.wait_healthy)
        assert group.primary_index() != old
        await assert_all_present(jobs, acked)
        await jobs.redis.aclose()

    asyncio.run(scenario())


def test_submit_without_a_replica_is_not_acknowledged(redis_server, redis_db) -> None:  # type: ignore[no-untyped-def]
    async def scenario() -> None:
        client = make_redis("127.0.0.1", redis_server.port, redis_server.password, redis_db)
        jobs = JobQueue(client, wait_replicas=1, wait_timeout_ms=20)
        with pytest.raises(NotReplicatedError):
            await jobs.submit("lonely", "{}")
        # the job is stored (a resend finds it) but was never acknowledged
        assert await jobs.get("lonely")
        await client.aclose()

    asyncio.run(scenario())
