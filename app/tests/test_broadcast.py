"""The broadcast channel against a real redis-server: in-process channels, then master and worker
processes (roll call, broadcasts, forged messages, admin authentication)."""

from __future__ import annotations

import asyncio
import signal
import socket
import time
import urllib.request
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import redis
from starlette.applications import Starlette

from clusterkit_app.admin_api import admin_routes
from clusterkit_app.broadcast import Message, now_ms, seal
from clusterkit_app.broadcast_channel import BroadcastChannel, BroadcastUnavailable
from clusterkit_app.devservers import RedisServer, wait_until
from clusterkit_app.http_api import read_json_object
from clusterkit_app.store import make_redis

from .conftest import Cluster, http_json

TOKEN = "channel-test-token"


async def until(predicate: Any, timeout: float = 20.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.02)


@pytest.fixture
async def clients(redis_server: RedisServer, redis_db: int) -> AsyncIterator[list[Any]]:
    made: list[Any] = []

    def new() -> Any:
        c = make_redis("127.0.0.1", redis_server.port, redis_server.password, redis_db)
        made.append(c)
        return c

    yield [new() for _ in range(3)]
    for c in made:
        await c.aclose()


async def start(channels: list[BroadcastChannel]) -> list[asyncio.Task[None]]:
    tasks = [asyncio.create_task(c.run()) for c in channels]
    await until(lambda: all(c.subscribed.is_set() for c in channels), what="subscriptions")
    return tasks


async def stop(tasks: list[asyncio.Task[None]]) -> None:
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


def channels_for(clients: list[Any], node: str, db: int, token: str = TOKEN) -> list[Any]:
    return [
        BroadcastChannel(c, token, node, f"p{i}", "worker", db=db) for i, c in enumerate(clients)
    ]


async def test_every_subscriber_gets_each_message_once(clients: list[Any], redis_db: int) -> None:
    chans = channels_for(clients, "n-once", redis_db)
    seen: dict[str, list[str]] = {c.sender_id: [] for c in chans}
    for c in chans:

        async def record(msg: Message, me: str = c.sender_id) -> None:
            seen[me].append(msg.id)

        c.on("invalidate-cache", record)
    tasks = await start(chans)
    try:
        sent = [(await chans[i % 3].publish("invalidate-cache", {"i": i})).id for i in range(30)]
        await until(lambda: all(len(v) >= 30 for v in seen.values()), what="deliveries")
        # the same signed bytes seen again (a duplicate delivery) are not acted on again
        _, wire = seal(TOKEN, "invalidate-cache", {}, "p0", "n-once")
        await clients[0].publish(chans[0].channel, wire)
        await clients[0].publish(chans[0].channel, wire)
        await until(lambda: all(c.dropped["duplicate"] == 1 for c in chans), what="duplicates")
        for c in chans:
            assert sorted(seen[c.sender_id]) == sorted([*sent, wire.split('"id":"')[1][:32]])
            assert c.received["invalidate-cache"] == 31
    finally:
        await stop(tasks)


async def test_forged_messages_are_dropped_and_counted(clients: list[Any], redis_db: int) -> None:
    [chan] = channels_for(clients[:1], "n-forged", redis_db)
    acted: list[Message] = []

    async def act(msg: Message) -> None:
        acted.append(msg)

    chan.on("config", act)
    tasks = await start([chan])
    raw = clients[1]
    try:
        _, good = seal(TOKEN, "config", {"k": 1}, "p9", "n-forged")
        head, sig, body = good.split(".", 2)
        forged = {
            "bad_signature": seal("wrong-token", "config", {"k": 2}, "p9", "n-forged")[1],
            "unsigned": body,
            "stale": seal(TOKEN, "config", {}, "p9", "n-forged", ts_ms=now_ms() - 120_000)[1],
            "misdirected": seal(TOKEN, "config", {}, "p9", "other-node")[1],
            "malformed": "ck1.not-a-message",
        }
        for wire in forged.values():
            await raw.publish(chan.channel, wire)
        await raw.execute_command("PUBLISH", chan.channel, b"\xff\xfe")  # not UTF-8
        await raw.publish(chan.channel, f"{head}.{sig}.{body.replace('1', '2')}")  # tampered
        await raw.publish(chan.channel, good)
        await raw.publish(chan.channel, good)  # replayed within the window
        await until(lambda: len(acted) == 1 and chan.dropped["duplicate"] == 1, what="drops")
        assert acted[0].payload == {"k": 1}
        assert chan.dropped == {
            "bad_signature": 2,
            "unsigned": 1,
            "stale": 1,
            "misdirected": 1,
            "malformed": 2,
            "duplicate": 1,
        }
        assert chan.received == {"config": 1}
        assert chan.subscriptions == 1  # no forged message broke the subscription
    finally:
        await stop(tasks)


async def test_rollcall_in_process(clients: list[Any], redis_db: int) -> None:
    chans = channels_for(clients, "n-roll", redis_db)
    with pytest.raises(BroadcastUnavailable):
        await chans[0].rollcall(0.1)  # not subscribed yet
    tasks = await start(chans)
    try:
        answers = await chans[0].rollcall(0.5)
        assert [a["id"] for a in answers] == ["p0", "p1", "p2"]
        assert {a["role"] for a in answers} == {"worker"}
    finally:
        await stop(tasks[1:])
    answers = await chans[0].rollcall(0.5)
    assert [a["id"] for a in answers] == ["p0"]
    await stop(tasks[:1])


async def test_admin_endpoints_are_off_without_a_token(clients: list[Any], redis_db: int) -> None:
    [chan] = channels_for(clients[:1], "n-off", redis_db)
    for token, status in ((None, 403), ("", 403), (TOKEN, 401)):
        app = Starlette(routes=admin_routes(chan, token, read_json_object, 1024))
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://w") as c:
            for bearer in ("", "Bearer ", "Bearer wrong", f"Bearer {TOKEN}x"):
                headers = {"Authorization": bearer} if bearer else {}
                assert (await c.get("/api/admin/broadcast", headers=headers)).status_code == status
                resp = await c.post("/api/admin/rollcall", headers=headers)
                assert resp.status_code == status and "error" in resp.json()
            if token:
                ok = await c.get(
                    "/api/admin/broadcast", headers={"Authorization": f"Bearer {token}"}
                )
                assert ok.status_code == 200 and ok.json()["id"] == "p0"
    assert chan.sent == {}


# -- processes -------------------------------------------------------------------------------


def admin(
    port: int, method: str, path: str, token: str | None, body: Any = None
) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    r = httpx.request(
        method, f"http://127.0.0.1:{port}{path}", json=body, headers=headers, timeout=20
    )
    return r.status_code, r.json()


def metric_text(port: int) -> str:
    return urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()


def test_cluster_rollcall_broadcast_and_forgeries(cluster: Cluster) -> None:
    token = cluster.env["GRPC_TOKEN"]
    master, health = cluster.start_master()
    master.wait_healthy(health)
    names = ["w1", "w2", "w3"]
    for name in names:
        cluster.start_worker(name, SERVICE_TIME_MS="0")
    ports = [cluster.worker_ports[n] for n in names]
    for proc in cluster.procs[1:]:
        proc.wait_healthy(cluster.worker_ports[proc.name])

    def subscribed(port: int) -> bool:
        return http_json("GET", f"http://127.0.0.1:{port}/healthz")[1]["broadcast"] == "subscribed"

    wait_until(lambda: all(subscribed(p) for p in ports), 30, "workers subscribed")
    wait_until(lambda: "clusterkit_broadcast_subscribed 1.0" in metric_text(health), 30, "master")

    # authentication
    assert admin(ports[0], "POST", "/api/admin/rollcall", None)[0] == 401
    assert admin(ports[0], "POST", "/api/admin/rollcall", token + "x")[0] == 401
    assert admin(ports[0], "POST", "/api/admin/rollcall?timeout=99", token)[0] == 422
    bad_kind = {"kind": "rollcall"}
    assert admin(ports[0], "POST", "/api/admin/broadcast", token, bad_kind)[0] == 422

    # roll call: every live process answers
    master_id = f"master:{socket.gethostname()}:{master.pid}"
    status, body = admin(ports[1], "POST", "/api/admin/rollcall?timeout=1", token)
    assert status == 200, body
    assert set(body["ids"]) == {*names, master_id}
    assert {n["id"]: n["role"] for n in body["nodes"]}[master_id] == "master"

    # broadcasts: each one acted on once by every worker and the master
    for i in range(5):
        status, sent = admin(
            ports[i % 3], "POST", "/api/admin/broadcast", token, {"kind": "invalidate-cache"}
        )
        assert status == 202, sent

    def received(port: int) -> dict[str, int]:
        return dict(admin(port, "GET", "/api/admin/broadcast", token)[1]["received"])

    wait_until(lambda: all(received(p).get("invalidate-cache") == 5 for p in ports), 20, "5 each")
    line = 'clusterkit_broadcast_received_total{kind="invalidate-cache"} 5.0'
    wait_until(lambda: line in metric_text(health), 20, "master received 5")

    # forged messages straight into the channel are counted and not acted on
    node = cluster.env["NODE_ID"]
    channel = f"clusterkit:{cluster.env['REDIS_DB']}:{node}:broadcast"
    env = cluster.env
    raw = redis.Redis(port=int(env["REDIS_PORT"]), password=env["REDIS_PASSWORD"])
    try:
        _, old = seal(token, "invalidate-cache", {}, "w1", node, ts_ms=now_ms() - 3_600_000)
        _, unsigned = seal(token, "invalidate-cache", {}, "w1", node)
        for wire in (
            seal("not-the-token", "invalidate-cache", {}, "w1", node)[1],
            unsigned.split(".", 2)[2],
            old,
        ):
            raw.publish(channel, wire)
    finally:
        raw.close()
    for port in ports:
        wait_until(
            lambda p=port: (
                admin(p, "GET", "/api/admin/broadcast", token)[1]["dropped"]
                == {"bad_signature": 1, "unsigned": 1, "stale": 1}
            ),
            20,
            "forgeries counted",
        )
        assert received(port)["invalidate-cache"] == 5
        assert 'clusterkit_broadcast_dropped_total{reason="stale"} 1.0' in metric_text(port)
    assert line in metric_text(health)

    # a stopped worker is not in the roll call
    w3 = cluster.procs[-1]
    w3.signal(signal.SIGTERM)
    assert w3.wait(20) == 0
    status, body = admin(ports[0], "POST", "/api/admin/rollcall", token)
    assert status == 200 and set(body["ids"]) == {"w1", "w2", master_id}
