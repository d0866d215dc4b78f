"""End to end: real master and worker processes (python -m clusterkit_app) against real
redis-server, mongod and etcd."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from typing import Any

import pytest
from pymongo import MongoClient

from clusterkit_app.devservers import EtcdServer, RedisServer, free_port, wait_until

from .conftest import Cluster, http_json

pytestmark = pytest.mark.integration


def mongo(env: dict[str, str]) -> Any:
    client: MongoClient[dict[str, Any]] = MongoClient(env["MONGODB_URI"])
    return client, client[env["MONGODB_DATABASE"]]


def metric(port: int, name: str, labels: str = "") -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    pattern = re.escape(name + (("{" + labels + "}") if labels else "")) + r" ([0-9.e+]+)"
    found = re.search(pattern, text)
    return float(found.group(1)) if found else 0.0


def submit(ports: list[int], n: int, prefix: str) -> list[str]:
    ids = []
    for i in range(n):
        port = ports[i % len(ports)]
        status, body, _ = http_json(
            "POST",
            f"http://127.0.0.1:{port}/api/jobs",
            {"id": f"{prefix}-{i}", "payload": {"i": i}},
        )
        assert status == 202, body
        ids.append(body["id"])
    return ids


def start_pair(cluster: Cluster, **extra: str) -> list[int]:
    master, health = cluster.start_master(**extra)
    master.wait_healthy(health)
    ports = []
    for name in ("w1", "w2"):
        proc, port = cluster.start_worker(name, **extra)
        ports.append(port)
    for proc in cluster.procs[1:]:
        proc.wait_healthy(cluster.worker_ports[proc.name])
    return ports


def assert_exactly_once(cluster: Cluster, ids: list[str], ports: list[int]) -> None:
    client, db = mongo(cluster.env)
    try:
        wait_until(lambda: db.applied_jobs.count_documents({}) >= len(ids), 60, "all jobs applied")
        applied = {d["_id"]: d for d in db.applied_jobs.find()}
        assert set(applied) == set(ids)  # none lost, none unknown

        # every apply that had an effect is counted by the worker that made it
        def effects() -> float:
            return sum(
                metric(p, "clusterkit_jobs_applied_total", 'result="applied"') for p in ports
            )

        wait_until(lambda: effects() >= len(ids), 10, "workers' apply counters")
        time.sleep(0.3)
        assert effects() == len(ids)
        by_worker = {
            w: sum(1 for d in applied.values() if d["worker_id"] == w) for w in ("w1", "w2")
        }
        assert by_worker["w1"] > 0 and by_worker["w2"] > 0, by_worker
        # the API agrees, and the master eventually records every ack
        for job_id in ids[:: max(1, len(ids) // 20)]:
            status, body, _ = http_json("GET", f"http://127.0.0.1:{ports[0]}/api/jobs/{job_id}")
            assert status == 200 and body["status"] == "applied" and body["attempts"] >= 1
    finally:
        client.close()


def test_jobs_applied_exactly_once_over_two_workers(cluster: Cluster) -> None:
    ports = start_pair(cluster, SERVICE_TIME_MS="5")
    ids = submit(ports, 200, "job")
    assert_exactly_once(cluster, ids, ports)


def test_master_kill9_midway_loses_and_duplicates_nothing(cluster: Cluster) -> None:
    slow = {"SERVICE_TIME_MS": "100", "MAX_JOBS_IN_FLIGHT_PER_WORKER": "2"}  # ~40 jobs/s
    ports = start_pair(cluster, **slow)
    ids = submit(ports, 200, "k9")
    client, db = mongo(cluster.env)
    try:
        wait_until(lambda: db.applied_jobs.count_documents({}) >= 30, 30, "some jobs applied")
        master = cluster.procs[0]
        os.kill(master.pid, signal.SIGKILL)
        master.wait(10)
        done_at_kill = db.applied_jobs.count_documents({})
        assert done_at_kill < len(ids), "too late: every job was already applied"
    finally:
        client.close()
    # the restarted master takes over the lock at once (its predecessor's pid is dead) and
    # re-queues whatever the dead master had in flight
    restarted, health = cluster.start_master("master-restarted", **slow)
    restarted.wait_healthy(health, timeout=30)
    assert_exactly_once(cluster, ids, ports)
    assert "re-queued" in restarted.log()


def test_second_master_for_same_node_id_exits_3(cluster: Cluster) -> None:
    first, health = cluster.start_master()
    first.wait_healthy(health)
    second, _ = cluster.start_master("master-second")
    assert second.wait(20) == 3
    message = f"another master for NODE_ID={cluster.env['NODE_ID']} is running (holder: "
    assert message in second.log()
    assert "refusing to start" in second.log()
    assert first.alive()


def test_standby_master_takes_over_after_kill9(cluster: Cluster) -> None:
    first, health = cluster.start_master(LOCK_TTL_S="3")
    first.wait_healthy(health)
    standby, standby_health = cluster.start_master("master-standby", MASTER_LOCK_WAIT="1")
    time.sleep(1.5)
    assert standby.alive()
    assert "waiting for it" in standby.log()
    os.kill(first.pid, signal.SIGKILL)
    killed = time.monotonic()
    standby.wait_healthy(standby_health, timeout=10)
    assert time.monotonic() - killed < 3 + 2  # within the lease TTL (plus the retry period)


def test_master_that_loses_its_lease_stops(cluster: Cluster, etcd_server: EtcdServer) -> None:
    master, health = cluster.start_master(LOCK_TTL_S="3")
    master.wait_healthy(health)
    key = f"{cluster.env['ETCD_PREFIX']}/nodes/{cluster.env['NODE_ID']}/master"
    holder = json.loads(etcd_server.get(key) or "{}")
    assert holder["pid"] == master.pid
    etcd_server.revoke(holder["lease"])  # as if etcd had expired it
    assert master.wait(10) == 4
    assert "master lock lost" in master.log()


def test_worker_sigterm_drains(cluster: Cluster, etcd_server: EtcdServer) -> None:
    master, health = cluster.start_master()
    master.wait_healthy(health)
    worker, port = cluster.start_worker("w-drain", SERVICE_TIME_MS="400", DRAIN_GRACE_S="0")
    worker.wait_healthy(port)
    key = f"{cluster.env['ETCD_PREFIX']}/nodes/{cluster.env['NODE_ID']}/workers/w-drain"
    assert json.loads(etcd_server.get(key) or "{}")["port"] == port

    results: list[int] = []

    def call(i: int) -> None:
        status, _, _ = http_json(
            "POST", f"http://127.0.0.1:{port}/api/requests", {"payload": {"i": i}}, timeout=20
        )
        results.append(status)

    threads = [threading.Thread(target=call, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    wait_until(lambda: metric(port, "clusterkit_requests_waiting") == 2, 10, "3 requests queued")
    worker.signal(signal.SIGTERM)
    wait_until(
        lambda: http_json("GET", f"http://127.0.0.1:{port}/healthz")[0] == 503, 5, "health 503"
    )
    status, body, _ = http_json("GET", f"http://127.0.0.1:{port}/healthz")
    assert status == 503 and body["status"] == "draining"
    for t in threads:
        t.join(20)
    assert results == [200, 200, 200]  # in-flight (and queued) requests completed
    assert worker.wait(20) == 0
    assert etcd_server.get(key) is None  # lease revoked
    assert "drains" in master.log()


def test_standalone_and_workers_listing(
    tmp_path: Any, backend_env: dict[str, str], redis_server: RedisServer
) -> None:
    port, grpc_port, health = free_port(), free_port(), free_port()
    env = {
        **backend_env,
        "MODE": "standalone",
        "SERVER_PORT": str(port),
        "MASTER_SERVER_PORT": str(grpc_port),
        "MASTER_HEALTH_PORT": str(health),
        "WORKER_ID": "solo",
    }
    cluster = Cluster(tmp_path, env)
    from clusterkit_app.devservers import AppProcess

    proc = AppProcess("standalone", tmp_path, env)
    cluster.procs.append(proc)
    try:
        proc.wait_healthy(port)
        status, body, _headers = http_json("POST", f"http://127.0.0.1:{port}/api/jobs", {})
        assert status == 202
        wait_until(
            lambda: (
                http_json("GET", f"http://127.0.0.1:{port}/api/jobs/{body['id']}")[1]["status"]
                == "applied"
            ),
            10,
            "job applied",
        )
        listing = subprocess.run(
            [sys.executable, "-m", "clusterkit_app", "workers"],
            env={**os.environ, **env},
            capture_output=True,
            text=True,
            timeout=20,
        )
        assert listing.returncode == 0, listing.stderr
        keys = [json.loads(line)["key"] for line in listing.stdout.splitlines()]
        assert any(k.endswith("/workers/solo") for k in keys)
        assert any(k.endswith("/master") for k in keys)
    finally:
        cluster.stop()
    assert proc.proc.returncode == 0
