"""Job queue transitions (real redis-server) and the idempotent apply (real mongod)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from clusterkit_app.devservers import MongoServer, RedisServer
from clusterkit_app.store import INFLIGHT, QUEUE, Documents, JobQueue, make_redis


@pytest.fixture
async def jobs(redis_server: RedisServer, redis_db: int) -> AsyncIterator[JobQueue]:
    client = make_redis("127.0.0.1", redis_server.port, redis_server.password, redis_db)
    await client.flushdb()
    yield JobQueue(client)
    await client.aclose()


@pytest.fixture
async def docs(
    mongo_server: MongoServer, request: pytest.FixtureRequest
) -> AsyncIterator[Documents]:
    d = Documents(mongo_server.uri, f"t_{request.node.name[:40]}", "tests")
    await d.client.drop_database(d.db.name)
    yield d
    await d.client.drop_database(d.db.name)
    await d.close()


async def test_submit_is_atomic_and_idempotent(jobs: JobQueue) -> None:
    assert await jobs.submit("j1", '{"a":1}') is True
    assert await jobs.submit("j1", '{"a":2}') is False
    record = await jobs.get("j1")
    assert record["status"] == "queued" and record["attempts"] == "0"
    assert record["payload"] == '{"a":1}'
    assert await jobs.redis.llen(QUEUE) == 1


async def test_claim_ack_lifecycle(jobs: JobQueue) -> None:
    for i in range(3):
        await jobs.submit(f"j{i}", "{}")
    claimed = await jobs.claim(2, ack_timeout_s=30)
    assert [c.id for c in claimed] == ["j0", "j1"]  # FIFO
    assert all(c.attempt == 1 for c in claimed)
    assert await jobs.depth() == (1, 2)
    assert (await jobs.get("j0"))["status"] == "dispatched"
    assert await jobs.ack("j0", "w1")
    record = await jobs.get("j0")
    assert record["status"] == "applied" and record["applied_by"] == "w1"
    assert await jobs.depth() == (1, 1)


async def test_requeue_goes_first_and_counts_attempts(jobs: JobQueue) -> None:
    await jobs.submit("a", "{}")
    await jobs.submit("b", "{}")
    [first] = await jobs.claim(1, 30)
    assert first.id == "a"
    assert await jobs.requeue("a") is True
    assert await jobs.requeue("a") is False  # no longer in flight
    again = await jobs.claim(2, 30)
    assert [(c.id, c.attempt) for c in again] == [("a", 2), ("b", 1)]


async def test_overdue_and_recover(jobs: JobQueue) -> None:
    await jobs.submit("x", "{}")
    await jobs.submit("y", "{}")
    await jobs.claim(1, ack_timeout_s=0)  # x: already overdue
    await jobs.claim(1, ack_timeout_s=60)  # y
    assert await jobs.overdue() == ["x"]
    assert await jobs.requeue("y", only_if_due=True) is False
    # a new master re-queues everything left in flight by its predecessor
    assert await jobs.recover() == 2
    assert await jobs.redis.zcard(INFLIGHT) == 0
    assert sorted(c.id for c in await jobs.claim(5, 30)) == ["x", "y"]


async def test_session_counter(jobs: JobQueue) -> None:
    assert await jobs.touch_session("s1") == 1
    assert await jobs.touch_session("s1") == 2
    assert await jobs.redis.ttl("session:s1") > 0


async def test_apply_is_idempotent(docs: Documents) -> None:
    assert await docs.apply_job("job-1", "w1", 1, "{}") is True
    assert await docs.apply_job("job-1", "w2", 2, "{}") is False
    doc = await docs.get_applied("job-1")
    assert doc is not None and doc["worker_id"] == "w1" and doc["attempt"] == 1
    assert await docs.db.applied_jobs.count_documents({}) == 1


@pytest.mark.parametrize(("setting", "w"), [("majority", "majority"), ("1", 1)])
async def test_request_documents_use_the_configured_write_concern(
    mongo_server: MongoServer, setting: str, w: object
) -> None:
    d = Documents(mongo_server.uri, "t_request_wc", "tests", setting)
    try:
        assert d.requests.write_concern.document == {"w": w, "j": True}
        assert d.db.applied_jobs.write_concern.document == {"w": "majority"}
        await d.insert_request({"_id": "r1", "payload": "{}"})
        assert (await d.get_request("r1")) == {"_id": "r1", "payload": "{}"}
    finally:
        await d.client.drop_database("t_request_wc")
        await d.close()


async def test_a_connection_closed_by_redis_is_replaced_not_failed(
    jobs: JobQueue, redis_server: RedisServer
) -> None:
    """What a Redis restart does to the pool: the server closes every connection. The next
    commands on them reconnect and succeed instead of failing one request per connection."""
    await jobs.touch_session("s-restart")
    own = await jobs.redis.client_id()
    admin = make_redis("127.0.0.1", redis_server.port, redis_server.password, 0)
    try:
        assert await admin.client_kill_filter(_id=own) == 1
    finally:
        await admin.aclose()
    assert await jobs.touch_session("s-restart") == 2
    assert await jobs.submit("after-restart", "{}") is True
