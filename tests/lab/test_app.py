"""The app tier on the deployed lab, seen from the controller: workers over HTTP at their
private addresses, the job outcome in MongoDB, the queue in Redis, processes and journals
through Testinfra.

Run after `ansible-playbook site.yml` (or playbooks/data.yml then playbooks/app.yml):
`python -m pytest tests/lab/test_app.py`. Tests that stop or kill something start it again
and wait until every worker is healthy before they end.
"""

from __future__ import annotations

import json
import re
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pymongo
import pytest
import redis

from tests.conftest import (
    ROOT,
    address,
    group_hosts,
    mongo_uri,
    secret,
    setting,
    testinfra_host,
    worker_ports,
)

MASTER_HOSTS = group_hosts("app_master")
WORKER_HOSTS = group_hosts("app_workers")
MASTER_UNIT = "clusterkit-master.service"
TARGET_UNIT = "clusterkit-app.target"
APP = "/opt/clusterkit/app/venv/bin/clusterkit-app"


WORKERS = [(h, p) for h in WORKER_HOSTS for p in worker_ports(h)]
WORKER_URLS = [f"http://{address(h)}:{p}" for h, p in WORKERS]
MASTER_HEALTH = [
    f"http://{address(h)}:{int(setting(h, 'app_master_health_port'))}/healthz" for h in MASTER_HOSTS
]


def lab_host(name: str):
    return testinfra_host(name)


@pytest.fixture(scope="module")
def client() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=30, limits=httpx.Limits(max_connections=32)) as c:
        yield c


@pytest.fixture(scope="module")
def master():
    assert MASTER_HOSTS, "inventory has no host in group app_master"
    return lab_host(MASTER_HOSTS[0])


@pytest.fixture(scope="module")
def mongo() -> Iterator[pymongo.database.Database]:
    uri = mongo_uri("clusterkit", secret("mongodb_app_password"), "clusterkit")
    c = pymongo.MongoClient(uri, serverSelectionTimeoutMS=10000)
    yield c.clusterkit
    c.close()


@pytest.fixture(scope="module")
def queue() -> Iterator[redis.Redis]:
    c = redis.Redis(
        host=address(group_hosts("redis")[0]),
        port=6379,
        password=secret("redis_password"),
        socket_timeout=5,
        decode_responses=True,
    )
    yield c
    c.close()


def wait_healthy(client: httpx.Client, urls: list[str], timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    pending = list(urls)
    while pending and time.monotonic() < deadline:
        still = []
        for url in pending:
            try:
                if client.get(url, timeout=3).status_code != 200:
                    still.append(url)
            except httpx.HTTPError:
                still.append(url)
        pending = still
        if pending:
            time.sleep(0.5)
    assert not pending, f"not healthy after {timeout} s: {pending}"


def all_healthy(client: httpx.Client) -> None:
    wait_healthy(client, MASTER_HEALTH + [f"{u}/healthz" for u in WORKER_URLS])


def submit(client: httpx.Client, ids: list[str], tag: str) -> None:
    """POST /api/jobs for every id, spread round-robin over all workers, 16 at a time.

    Each thread has a connection pool of its own (one shared pool across threads has failed
    a read with EBADF under this load). A submit whose connection breaks is sent once more:
    POST /api/jobs with an id is idempotent (202, created false), as clients are told to do.
    """
    local = threading.local()
    clients: list[httpx.Client] = []

    def one(i: int) -> None:
        if not hasattr(local, "client"):
            local.client = httpx.Client(timeout=client.timeout)
            clients.append(local.client)
        url = f"{WORKER_URLS[i % len(WORKER_URLS)]}/api/jobs"
        body = {"id": ids[i], "payload": {"test": tag, "n": i}}
        try:
            r = local.client.post(url, json=body)
        except httpx.TransportError:
            r = local.client.post(url, json=body)
        assert r.status_code == 202, (url, r.status_code, r.text)
        assert r.json()["id"] == ids[i]

    try:
        with ThreadPoolExecutor(max_workers=16) as pool:
            list(pool.map(one, range(len(ids))))
    finally:
        for c in clients:
            c.close()


def wait_applied(mongo, prefix: str, count: int, timeout: float = 240) -> list[dict]:
    query = {"_id": {"$regex": f"^{re.escape(prefix)}"}}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if mongo.applied_jobs.count_documents(query) >= count:
            break
        time.sleep(1)
    return list(mongo.applied_jobs.find(query, {"payload": 0}))


def assert_each_applied_once(client, docs: list[dict], ids: list[str]) -> None:
    applied = [d["_id"] for d in docs]
    assert len(applied) == len(ids), f"{len(applied)} of {len(ids)} jobs applied"
    assert sorted(applied) == sorted(ids)  # one document per job: applied exactly once
    assert all(d["attempt"] >= 1 for d in docs)
    # The job records agree: applied, by the worker that wrote the document.
    for doc in docs[:: max(1, len(docs) // 25)]:
        job = client.get(f"{WORKER_URLS[0]}/api/jobs/{doc['_id']}").json()
        assert job["status"] == "applied"
        assert job["applied_by"] == doc["worker_id"]
        assert int(job["attempts"]) >= doc["attempt"]


def main_pid(host) -> int:
    return int(host.check_output(f"systemctl show --value --property MainPID {MASTER_UNIT}"))


# -- serving -------------------------------------------------------------------------------


def test_inventory_has_an_app_tier() -> None:
    assert MASTER_HOSTS, "no host in group app_master"
    assert len(WORKERS) >= 2, WORKERS


@pytest.mark.smoke
@pytest.mark.parametrize("url", WORKER_URLS)
def test_every_worker_answers_healthz_directly(client: httpx.Client, url: str) -> None:
    r = client.get(f"{url}/healthz")
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "ok"


@pytest.mark.smoke
def test_master_answers_healthz_and_every_worker_is_subscribed(client: httpx.Client) -> None:
    ids = set()
    for url in WORKER_URLS:
        r = client.post(f"{url}/api/requests", json={"payload": {}})
        assert r.status_code == 200, r.text
        ids.add(r.headers["x-worker-id"])
    r = client.get(MASTER_HEALTH[0])
    assert r.status_code == 200, r.text
    assert set(r.json()["workers"]) == ids


@pytest.mark.smoke
@pytest.mark.parametrize("url", WORKER_URLS)
def test_post_request_on_every_worker(client: httpx.Client, url: str) -> None:
    session = f"lab-{uuid.uuid4().hex[:8]}"
    r = client.post(f"{url}/api/requests", json={"payload": {"lab": True}, "session": session})
    assert r.status_code == 200, r.text
    body = r.json()
    assert r.headers["x-worker-id"] == body["worker_id"]
    assert body["worker_id"].endswith(url.rsplit(":", 1)[1])
    stored = client.get(f"{url}/api/requests/{body['id']}")
    assert stored.status_code == 200


@pytest.mark.smoke
def app_cli(host, args: str) -> str:
    """`clusterkit-app <args>` on host as its master unit runs the app: the venv's program with
    app.env (app_install_method pip), or the master's image under Podman (image)."""
    exec_start = host.check_output("systemctl show -p ExecStart --value clusterkit-master")
    if "podman" in exec_start:
        image = exec_start.split("argv[]=")[1].split(" ;")[0].split()[-1]
        return host.check_output(
            "podman run --rm --network host --env-file /etc/clusterkit/app.env %s %s", image, args
        )
    return host.check_output(
        "env -i PATH=/usr/bin:/bin sh -c 'set -a; . /etc/clusterkit/app.env; exec %s %s'", APP, args
    )


def test_workers_are_registered_in_etcd(master) -> None:
    out = app_cli(master, "workers")
    keys = [json.loads(line)["key"] for line in out.splitlines() if line.strip()]
    assert sum("/workers/" in k for k in keys) == len(WORKERS), keys
    assert any(k.endswith("/master") for k in keys), keys


# -- jobs -----------------------------------------------------------------------------------


@pytest.mark.serial
def test_1000_jobs_are_applied_exactly_once_spread_over_all_workers(
    client: httpx.Client, mongo
) -> None:
    prefix = f"lab-1000-{uuid.uuid4().hex[:8]}-"
    ids = [f"{prefix}{i:04d}" for i in range(1000)]
    submit(client, ids, "1000")
    docs = wait_applied(mongo, prefix, len(ids))
    assert_each_applied_once(client, docs, ids)
    by_worker: dict[str, int] = {}
    for doc in docs:
        by_worker[doc["worker_id"]] = by_worker.get(doc["worker_id"], 0) + 1
    assert len(by_worker) == len(WORKERS), by_worker  # every worker applied some


@pytest.mark.serial
def test_kill_9_of_the_master_with_jobs_queued_loses_none_and_applies_none_twice(
    client: httpx.Client, mongo, queue, master
) -> None:
    prefix = f"lab-kill-{uuid.uuid4().hex[:8]}-"
    ids = [f"{prefix}{i:04d}" for i in range(600)]
    query = {"_id": {"$regex": f"^{re.escape(prefix)}"}}
    try:
        # Queue the jobs while no master dispatches (a clean stop leaves them durable) ...
        master.check_output(f"systemctl stop {MASTER_UNIT}")
        submit(client, ids, "kill")
        assert queue.llen("jobs:queue") >= len(ids)
        # ... start it, and kill -9 it as soon as it is dispatching.
        master.check_output(f"systemctl start {MASTER_UNIT}")
        deadline = time.monotonic() + 180
        while mongo.applied_jobs.count_documents(query) < 20 and time.monotonic() < deadline:
            time.sleep(0.05)
        killed = main_pid(master)
        queued_at_kill = queue.llen("jobs:queue")
        master.check_output(f"kill -9 {killed}")
        applied_at_kill = mongo.applied_jobs.count_documents(query)
        assert queued_at_kill > 0, "the master had dispatched everything before the kill"
        assert applied_at_kill < len(ids)

        # systemd restarts it (Restart=on-failure); it takes its lock back at once and resumes.
        wait_healthy(client, MASTER_HEALTH, timeout=180)
        assert main_pid(master) not in (0, killed)
        docs = wait_applied(mongo, prefix, len(ids))
        assert_each_applied_once(client, docs, ids)
        assert queue.llen("jobs:queue") == 0 or not any(
            i.startswith(prefix) for i in queue.lrange("jobs:queue", 0, -1)
        )
    finally:
        master.run(f"systemctl start {MASTER_UNIT}")
        all_healthy(client)


@pytest.mark.serial
def test_second_master_with_the_same_node_id_fails_clearly(client: httpx.Client, master) -> None:
    """The master's environment run once more, on the master host and on another app host."""
    others = [h for h in WORKER_HOSTS if h not in MASTER_HOSTS]
    hosts = [master] + [lab_host(h) for h in others[:1]]
    for host in hosts:
        result = host.run(
            "cd / && env -i PATH=/usr/bin:/bin sh -c 'set -a; . /etc/clusterkit/app.env; "
            "MODE=master MASTER_SERVER_PORT=17001 MASTER_HEALTH_PORT=17002; "
            "exec setpriv --reuid clusterkit --regid clusterkit --init-groups timeout 150 %s'",
            APP,
        )
        assert result.rc == 3, (result.rc, result.stderr)
        assert re.search(
            r"another master for NODE_ID=\S+ is running \(holder: \S+\); refusing to start",
            result.stderr,
        ), result.stderr
    all_healthy(client)


# -- stopping a node ------------------------------------------------------------------------


def journal_cursor(host) -> str:
    out = host.check_output("journalctl -n 0 --show-cursor --quiet")
    return out.split("cursor:", 1)[1].strip()


@pytest.mark.serial
def test_stopping_the_app_on_a_host_stops_workers_before_the_master(
    client: httpx.Client, master
) -> None:
    name = MASTER_HOSTS[0]
    local_workers = [f"clusterkit-worker@{p}.service" for p in worker_ports(name)]
    assert local_workers, "the master host runs no workers: nothing to order"
    cursor = journal_cursor(master)
    try:
        # Returns once the target is down; the stop jobs of workers and master run on, in order.
        master.check_output(f"timeout 120 systemctl stop {TARGET_UNIT}")
        units = " ".join([MASTER_UNIT, *local_workers])
        deadline = time.monotonic() + 150
        while master.run(f"systemctl is-active --quiet {units}").rc == 0:  # 0: any is active
            assert time.monotonic() < deadline, "the app did not stop within 150 s"
            time.sleep(1)
        out = master.check_output(
            "journalctl --after-cursor=%s -o json _PID=1 --output-fields=MESSAGE", cursor
        )
        messages = [json.loads(line)["MESSAGE"] for line in out.splitlines() if line.strip()]

        def index(prefix: str, unit: str) -> int:
            found = [i for i, m in enumerate(messages) if m.startswith(f"{prefix} {unit}")]
            assert found, f"no '{prefix} {unit}' in the journal: {messages}"
            return found[0]

        master_stopping = index("Stopping", MASTER_UNIT)
        for unit in local_workers:
            assert index("Stopped", unit) < master_stopping, messages
    finally:
        master.run(f"systemctl start {TARGET_UNIT}")
        all_healthy(client)


# -- scaling down and up (what the scale playbook relies on) --------------------------------


def run_playbook(*args: str) -> None:
    result = subprocess.run(
        ["ansible-playbook", "playbooks/app.yml", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]


@pytest.mark.serial
def test_lowering_workers_per_host_stops_and_disables_the_surplus(client: httpx.Client) -> None:
    # A worker-only host if there is one (the master host keeps all its workers).
    name = ([h for h in WORKER_HOSTS if h not in MASTER_HOSTS] or WORKER_HOSTS)[-1]
    ports = worker_ports(name)
    assert len(ports) >= 2, "needs two workers on the host to scale down"
    host = lab_host(name)
    surplus = f"clusterkit-worker@{ports[-1]}.service"
    try:
        run_playbook(
            "--limit", name, "--tags", "run", "-e", f"app_workers_per_host={len(ports) - 1}"
        )
        assert not host.service(surplus).is_running
        assert not host.service(surplus).is_enabled
        wait_healthy(client, [f"http://{address(name)}:{p}/healthz" for p in ports[:-1]], 30)
    finally:
        run_playbook("--limit", name, "--tags", "run")
    assert host.service(surplus).is_running
    assert host.service(surplus).is_enabled
    all_healthy(client)


@pytest.mark.serial
def test_master_holds_its_lock_at_the_end(client: httpx.Client) -> None:
    text = client.get(MASTER_HEALTH[0].replace("/healthz", "/metrics")).text
    assert re.search(r"^clusterkit_master_lock_held 1(\.0)?$", text, re.M), text[:2000]
