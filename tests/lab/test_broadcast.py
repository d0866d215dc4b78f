"""The app's broadcast channel on the deployed lab: a roll call through the front end answers
for every worker the inventory deploys (and the master), a broadcast reaches every worker once,
and messages published straight into the lab's Redis without the server token are dropped.

Run after `ansible-playbook site.yml`: `python -m pytest tests/lab/test_broadcast.py`. Reads
only (the forged messages change nothing but the workers' drop counters).
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import pytest
import redis
from clusterkit_app.broadcast import now_ms, seal

from tests.conftest import (
    address,
    front_end_url,
    group_hosts,
    redis_primary,
    secret,
    setting,
    worker_ports,
)

FRONT = front_end_url().rstrip("/")
WORKER_HOSTS = group_hosts("app_workers")
WORKER_URLS = [f"http://{address(h)}:{p}" for h in WORKER_HOSTS for p in worker_ports(h)]
KIND = "lab-check"


@pytest.fixture(scope="module")
def token() -> str:
    return secret("app_grpc_token")


@pytest.fixture(scope="module")
def client(token: str) -> Iterator[httpx.Client]:
    with httpx.Client(timeout=30, headers={"Authorization": f"Bearer {token}"}) as c:
        yield c


@pytest.fixture(scope="module")
def worker_ids(client: httpx.Client) -> dict[str, str]:
    """WORKER_ID of every worker the inventory deploys, asked at its own address."""
    ids = {}
    for url in WORKER_URLS:
        r = client.get(f"{url}/healthz")
        assert r.status_code == 200, (url, r.text)
        assert r.json().get("broadcast") == "subscribed", (url, r.text)
        ids[url] = r.json()["worker_id"]
    return ids


def stats(client: httpx.Client) -> dict[str, dict]:
    out = {}
    for url in WORKER_URLS:
        r = client.get(f"{url}/api/admin/broadcast")
        assert r.status_code == 200, (url, r.text)
        out[url] = r.json()
    return out


def wait_for(check, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.2)


def test_admin_endpoints_need_the_server_token(token: str) -> None:
    for headers in ({}, {"Authorization": f"Bearer {token}x"}, {"Authorization": token}):
        r = httpx.post(f"{FRONT}/api/admin/rollcall", headers=headers, timeout=30)
        assert r.status_code == 401, r.text
        r = httpx.post(f"{FRONT}/api/admin/broadcast", json={"kind": KIND}, headers=headers)
        assert r.status_code == 401, r.text


def test_rollcall_through_the_front_end_answers_for_every_worker(
    client: httpx.Client, worker_ids: dict[str, str]
) -> None:
    assert len(WORKER_URLS) >= 2, WORKER_URLS
    r = client.post(f"{FRONT}/api/admin/rollcall", params={"timeout": 2})
    assert r.status_code == 200, r.text
    nodes = r.json()["nodes"]
    workers = {n["id"] for n in nodes if n["role"] == "worker"}
    masters = [n["id"] for n in nodes if n["role"] == "master"]
    assert workers == set(worker_ids.values())
    assert len(masters) == 1, masters  # the lock holder of the node ID
    assert r.json()["asked_by"] in workers


def test_broadcast_reaches_every_worker_once(
    client: httpx.Client, worker_ids: dict[str, str]
) -> None:
    before = {u: s["received"].get(KIND, 0) for u, s in stats(client).items()}
    r = client.post(f"{FRONT}/api/admin/broadcast", json={"kind": KIND, "payload": {"n": 1}})
    assert r.status_code == 202, r.text

    def counts() -> dict[str, int]:
        return {u: s["received"].get(KIND, 0) - before[u] for u, s in stats(client).items()}

    wait_for(lambda: all(v >= 1 for v in counts().values()))
    time.sleep(1)
    assert counts() == dict.fromkeys(WORKER_URLS, 1)


def test_forged_broadcasts_in_the_lab_redis_are_dropped(
    client: httpx.Client, worker_ids: dict[str, str]
) -> None:
    host = WORKER_HOSTS[0]
    node, db = str(setting(host, "app_node_id")), int(setting(host, "app_redis_db"))
    channel = f"clusterkit:{db}:{node}:broadcast"
    token = secret("app_grpc_token")
    _, signed = seal(token, KIND, {}, "forger", node)
    forged = {
        "bad_signature": seal("not-the-token", KIND, {}, "forger", node)[1],
        "unsigned": signed.split(".", 2)[2],
        "stale": seal(token, KIND, {}, "forger", node, ts_ms=now_ms() - 3_600_000)[1],
    }
    before = stats(client)
    primary = redis_primary()
    r = redis.Redis(
        host=address(primary),
        port=int(setting(primary, "redis_port")),
        password=secret("redis_password"),
        socket_timeout=5,
    )
    try:
        for wire in forged.values():
            r.publish(channel, wire)
    finally:
        r.close()

    def dropped(url: str, now: dict[str, dict]) -> dict[str, int]:
        old = before[url]["dropped"]
        return {k: now[url]["dropped"].get(k, 0) - old.get(k, 0) for k in forged}

    wait_for(
        lambda: all(dropped(u, stats(client)) == dict.fromkeys(forged, 1) for u in WORKER_URLS)
    )
    after = stats(client)
    for url in WORKER_URLS:
        assert after[url]["received"].get(KIND, 0) == before[url]["received"].get(KIND, 0)
