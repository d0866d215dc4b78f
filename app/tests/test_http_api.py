"""HTTP API validation and behaviour, in-process (ASGI) against real Redis and MongoDB."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx
import pytest

from clusterkit_app.capacity import CapacityGate
from clusterkit_app.devservers import MongoServer, RedisServer
from clusterkit_app.http_api import InFlightMiddleware, build_app
from clusterkit_app.store import Documents, JobQueue, make_redis


@dataclass
class Ctx:
    worker_id: str
    jobs: JobQueue
    docs: Documents
    gate: CapacityGate
    max_body_bytes: int
    draining: bool = False
    master_connected: bool = True


@pytest.fixture
async def ctx(
    redis_server: RedisServer, mongo_server: MongoServer, redis_db: int
) -> AsyncIterator[Ctx]:
    redis = make_redis("127.0.0.1", redis_server.port, redis_server.password, redis_db)
    docs = Documents(mongo_server.uri, f"http_{redis_db}", "tests")
    yield Ctx("w-test", JobQueue(redis), docs, CapacityGate(1, 0), 1024)
    await docs.client.drop_database(docs.db.name)
    await docs.close()
    await redis.aclose()


@pytest.fixture
async def client(ctx: Ctx) -> AsyncIterator[httpx.AsyncClient]:
    app = InFlightMiddleware(build_app(ctx))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://w") as c:
        yield c


COMMON_BAD = [
    (b"", 400),
    (b"{not json", 400),
    (b"\xff\xfe\x00", 400),
    (b"[" * 5000 + b"]" * 5000, 413),
    (b"[1, 2]", 422),
    (b'"text"', 422),
    (b"null", 422),
    (b'{"payload": [1]}', 422),
    (b'{"payload": "x"}', 422),
    (b'{"payload": {"big": "' + b"x" * 2000 + b'"}}', 413),
]
CASES = (
    [("/api/requests", b, s) for b, s in COMMON_BAD]
    + [("/api/jobs", b, s) for b, s in COMMON_BAD]
    + [
        ("/api/requests", b'{"session": 5}', 422),
        ("/api/requests", b'{"session": "bad id!"}', 422),
        ("/api/requests", b'{"session": ""}', 422),
        ("/api/jobs", b'{"id": {"a": 1}}', 422),
        ("/api/jobs", b'{"id": "-leading-dash"}', 422),
        ("/api/jobs", b'{"id": "' + b"x" * 200 + b'"}', 422),
    ]
)


@pytest.mark.parametrize(("path", "body", "status"), CASES)
async def test_bad_bodies_are_4xx_json(
    client: httpx.AsyncClient, path: str, body: bytes, status: int
) -> None:
    resp = await client.post(path, content=body, headers={"Content-Type": "application/json"})
    assert resp.status_code == status, resp.text
    assert "error" in resp.json()


async def test_deep_nesting_within_limit_is_4xx(client: httpx.AsyncClient, ctx: Ctx) -> None:
    ctx.max_body_bytes = 65536
    body = b'{"payload": {"a": ' + b"[" * 30000 + b"]" * 30000 + b"}}"
    resp = await client.post("/api/requests", content=body)
    assert resp.status_code == 400


async def test_declared_oversize_is_413(client: httpx.AsyncClient) -> None:
    resp = await client.post("/api/jobs", content=b"{}", headers={"Content-Length": "99999"})
    assert resp.status_code in (400, 413)


async def test_request_roundtrip(client: httpx.AsyncClient, ctx: Ctx) -> None:
    resp = await client.post("/api/requests", json={"payload": {"k": [1, 2]}, "session": "s-1"})
    assert resp.status_code == 200
    body = resp.json()
    assert body["worker_id"] == "w-test" and body["session"] == "s-1"
    assert resp.headers["X-Worker-Id"] == "w-test"
    got = await client.get(f"/api/requests/{body['id']}")
    assert got.status_code == 200
    assert got.json()["payload"] == {"k": [1, 2]}
    assert await ctx.jobs.redis.hget("session:s-1", "requests") == "1"
    assert (await client.get("/api/requests/nope")).status_code == 404
    assert (await client.get("/api/requests/" + "%00")).status_code == 404


async def test_job_submission_is_idempotent(client: httpx.AsyncClient) -> None:
    first = await client.post("/api/jobs", json={"id": "job-7", "payload": {}})
    again = await client.post("/api/jobs", json={"id": "job-7", "payload": {"x": 1}})
    assert first.status_code == again.status_code == 202
    assert first.json() == {"id": "job-7", "created": True}
    assert again.json() == {"id": "job-7", "created": False}
    status = (await client.get("/api/jobs/job-7")).json()
    assert status["status"] == "queued" and status["attempts"] == 0
    assert (await client.get("/api/jobs/unknown")).status_code == 404


async def test_capacity_one_serializes_requests(client: httpx.AsyncClient, ctx: Ctx) -> None:
    ctx.gate = CapacityGate(1, 20)
    results = await asyncio.gather(
        *(client.post("/api/requests", json={"payload": {"i": i}}) for i in range(5))
    )
    assert [r.status_code for r in results] == [200] * 5
    assert ctx.gate.max_in_service == 1 and ctx.gate.served == 5


async def test_health_and_drain(client: httpx.AsyncClient, ctx: Ctx) -> None:
    resp = await client.get("/healthz")
    assert resp.status_code == 200
    assert resp.json()["master"] == "connected"
    # Without the master's job stream the worker still serves requests and job submits, so it
    # stays healthy (in the load balancer) and says so.
    ctx.master_connected = False
    resp = await client.get("/healthz")
    assert resp.status_code == 200
    assert resp.json()["master"] == "disconnected"
    assert (await client.post("/api/jobs", json={"payload": {}})).status_code == 202
    ctx.master_connected = True
    ctx.draining = True
    resp = await client.get("/healthz")
    assert resp.status_code == 503 and resp.json()["status"] == "draining"


async def test_misc_endpoints(client: httpx.AsyncClient) -> None:
    spec = (await client.get("/openapi.json")).json()
    assert {"/api/requests", "/api/jobs", "/api/jobs/{id}", "/healthz"} <= set(spec["paths"])
    await client.post("/api/requests", json={})
    text = (await client.get("/metrics")).text
    assert "clusterkit_http_requests_total" in text
    assert "clusterkit_request_service_seconds_bucket" in text
    resp = await client.get("/nowhere")
    assert resp.status_code == 404 and "error" in resp.json()
    resp = await client.delete("/api/jobs")
    assert resp.status_code == 405 and "error" in resp.json()
