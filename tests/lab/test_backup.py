"""Backup and restore, end to end on the lab (marker `restore`: it destroys the data hosts).

Known data is written through the API and etcd: requests (MongoDB), sessions (Redis), jobs
applied before the backup and jobs still queued at the backup (the master is stopped), and a
key under the app's etcd prefix. Then playbooks/backup.yml; a damaged copy and a manifest of
another replica set are refused before any host changes; the data hosts' containers are
removed, site.yml recreates them empty, playbooks/restore.yml restores the backup, and every
record, session, job and key is back, the queued jobs are applied once each (and the applied
ones not again), every worker answers on its own port (restore.yml restarts them, drained), the
API serves new writes, and a rerun of site.yml changes nothing.

    python -m pytest tests/lab/test_backup.py -m restore
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import uuid
from pathlib import Path

import pytest
import requests

from tests.conftest import (
    INVENTORY,
    ROOT,
    address,
    front_end_url,
    group_hosts,
    lab_container,
    mongo_uri,
    secret,
    setting,
    worker_ports,
)
from tests.conftest import (
    playbook as run_playbook,
)
from tests.conftest import testinfra_host as lab_host

pytestmark = pytest.mark.restore

API = front_end_url()
PLAYBOOK_TIMEOUT_S = 20 * 60
REQUESTS = 30
JOBS_APPLIED = 10
JOBS_QUEUED = 10
ETCD_KEY = "/clusterkit/backup-test/marker"


def playbook(*args: str) -> subprocess.CompletedProcess[str]:
    return run_playbook(*args, timeout=PLAYBOOK_TIMEOUT_S)


def ok(result: subprocess.CompletedProcess[str]) -> None:
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]


def session() -> requests.Session:
    s = requests.Session()
    s.headers["Content-Type"] = "application/json"
    return s


def wait_for(check, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = check()
            if last:
                return last
        except (requests.RequestException, ValueError, KeyError) as exc:
            last = exc
        time.sleep(1)
    pytest.fail(f"{what}: not within {timeout:.0f} s (last: {last})")


def etcdctl(host: str, *args: str) -> str:
    cmd = lab_host(host).run(
        "ETCDCTL_API=3 ETCDCTL_USER=root ETCDCTL_PASSWORD=%s etcdctl" + " %s" * len(args),
        secret("etcd_root_password"),
        *args,
    )
    assert cmd.rc == 0, cmd.stderr
    return cmd.stdout


def job(http: requests.Session, job_id: str) -> dict:
    r = http.get(f"{API}/api/jobs/{job_id}", timeout=10)
    r.raise_for_status()
    return r.json()


def sessions_counted(sessions: dict[str, int]) -> dict[str, int]:
    """Each session's request counter, read from the Redis primary (HGET session:<id>)."""
    import redis

    from tests.conftest import redis_primary

    primary = redis_primary()
    counts = {}
    # One Redis database per NODE_ID: look in each until the session is found.
    with redis.Redis(
        host=address(primary),
        port=int(setting(primary, "redis_port")),
        password=secret("redis_password"),
        decode_responses=True,
        socket_timeout=5,
    ) as client:
        dbs = [int(k[2:]) for k in client.info("keyspace")]
    for db in dbs:
        with redis.Redis(
            host=address(primary),
            port=int(setting(primary, "redis_port")),
            password=secret("redis_password"),
            db=db,
            decode_responses=True,
            socket_timeout=5,
        ) as client:
            for sid in sessions:
                value = client.hget(f"session:{sid}", "requests")
                if value is not None:
                    counts[sid] = int(value)
    return counts


def count_requests(ids: list[str]) -> int:
    """How many of these request documents MongoDB holds (a new client, primary reads)."""
    import pymongo

    uri = mongo_uri("clusterkit", secret("mongodb_app_password"), "clusterkit")
    with pymongo.MongoClient(uri, serverSelectionTimeoutMS=30000) as client:
        return client.clusterkit.requests.count_documents({"_id": {"$in": ids}})


@pytest.fixture(scope="module")
def master():
    hosts = group_hosts("app_master")
    assert hosts, "no app_master host"
    return lab_host(hosts[0])


def test_backup_destroy_recreate_restore(master, tmp_path: Path):
    http = session()
    # A clean start: the tests before this one (the chaos suite) may leave workers restarting.
    wait_for(
        lambda: http.get(f"{API}/api/requests/{uuid.uuid4().hex}", timeout=10).status_code == 404,
        180,
        "a worker answers through the front end",
    )

    # -- known data -----------------------------------------------------------------------
    sessions = {uuid.uuid4().hex: 0 for _ in range(3)}
    requests_written: dict[str, dict] = {}
    for i in range(REQUESTS):
        sid = list(sessions)[i % len(sessions)]
        payload = {"n": i, "note": "backup-test"}
        r = http.post(f"{API}/api/requests", json={"payload": payload, "session": sid}, timeout=10)
        assert r.ok, r.text
        requests_written[r.json()["id"]] = payload
        sessions[sid] += 1

    applied_ids = [uuid.uuid4().hex for _ in range(JOBS_APPLIED)]
    for jid in applied_ids:
        r = http.post(f"{API}/api/jobs", json={"id": jid, "payload": {"job": jid}}, timeout=10)
        assert r.status_code == 202, r.text
    applied_before = {
        jid: wait_for(
            lambda jid=jid: job(http, jid)["applied_at"], 120, f"job {jid} applied before backup"
        )
        for jid in applied_ids
    }

    # Jobs still queued when the backup is taken: the master (which dispatches) is stopped.
    assert master.run("systemctl stop clusterkit-master.service").rc == 0
    queued_ids = [uuid.uuid4().hex for _ in range(JOBS_QUEUED)]
    try:
        for jid in queued_ids:
            r = http.post(f"{API}/api/jobs", json={"id": jid, "payload": {"job": jid}}, timeout=10)
            assert r.status_code == 202, r.text
        assert all(job(http, jid)["status"] == "queued" for jid in queued_ids)

        etcd_host = group_hosts("etcd")[0]
        marker = uuid.uuid4().hex
        etcdctl(etcd_host, "put", ETCD_KEY, marker)
        assert sessions_counted(sessions) == sessions

        # -- backup ---------------------------------------------------------------------------
        started = time.monotonic()
        result = playbook("playbooks/backup.yml")
        ok(result)
        backup_s = time.monotonic() - started
    finally:
        master.run("systemctl start clusterkit-master.service")
    backups = sorted(
        p for p in (INVENTORY / ".backups").iterdir() if p.is_dir() and "." not in p.name
    )
    backup = backups[-1]
    manifest = json.loads((backup / "manifest.json").read_text())
    assert set(manifest["components"]) == {"redis", "mongodb", "etcd"}
    assert manifest["components"]["mongodb"]["collections"]["requests"] >= REQUESTS
    assert (
        manifest["components"]["mongodb"]["source"] != manifest["components"]["mongodb"]["primary"]
    ), "the MongoDB part is read from a secondary"
    redis_part = manifest["components"]["redis"]
    assert not redis_part["primary"].startswith(
        str(setting(redis_part["source"], "clusterkit_address")) + ":"
    ), "the Redis part is read from a replica"
    sums = subprocess.run(
        ["sha256sum", "-c", "SHA256SUMS"], cwd=backup, capture_output=True, text=True
    )
    assert sums.returncode == 0, sums.stdout + sums.stderr

    # -- a damaged backup and a manifest of another replica set: refused, nothing changes ---
    damaged = tmp_path / "damaged"
    shutil.copytree(backup, damaged)
    with (damaged / "redis" / "dump.rdb").open("ab") as f:
        f.write(b"x")
    result = playbook("playbooks/restore.yml", "-e", f"backup={damaged}")
    assert result.returncode != 0
    assert "redis/dump.rdb" in result.stdout, result.stdout[-3000:]
    assert "SHA-256" in result.stdout
    assert "Restore | etcd" not in result.stdout, "refused before any host changes"

    foreign = tmp_path / "foreign"
    shutil.copytree(backup, foreign)
    other = json.loads((foreign / "manifest.json").read_text())
    other["components"]["mongodb"]["replset"] = "another-set"
    (foreign / "manifest.json").write_text(json.dumps(other))
    result = playbook("playbooks/restore.yml", "-e", f"backup={foreign}")
    assert result.returncode != 0
    assert "another-set" in result.stdout, result.stdout[-3000:]
    assert "mongodb_replset_name" in result.stdout
    assert "Restore | etcd" not in result.stdout, "refused before any host changes"

    # -- destroy the data hosts, recreate them empty, restore ----------------------------
    data_hosts = sorted(set(group_hosts("redis") + group_hosts("mongodb") + group_hosts("etcd")))
    subprocess.run(
        ["docker", "rm", "-f", *[lab_container(h) for h in data_hosts]],
        check=True,
        capture_output=True,
    )
    started = time.monotonic()
    ok(playbook("site.yml"))
    redeploy_s = time.monotonic() - started
    # The recreated data tier is empty: none of the requests is there (asked of MongoDB with a
    # new client: the running workers' clients do not take the new replica set's primary until
    # they restart, which restore.yml does).
    some_id = next(iter(requests_written))
    assert count_requests(list(requests_written)) == 0, "the recreated MongoDB is empty"

    started = time.monotonic()
    ok(playbook("playbooks/restore.yml", "-e", f"backup={backup}"))
    restore_s = time.monotonic() - started

    # -- everything is back -----------------------------------------------------------------
    def all_requests_back() -> bool:
        for rid, payload in requests_written.items():
            r = http.get(f"{API}/api/requests/{rid}", timeout=10)
            if r.status_code != 200 or r.json()["payload"] != payload:
                return False
        return True

    wait_for(all_requests_back, 120, "every request document is back")
    assert sessions_counted(sessions) == sessions
    assert etcdctl(etcd_host, "get", ETCD_KEY, "--print-value-only").strip() == marker

    for jid, applied_at in applied_before.items():
        assert job(http, jid)["applied_at"] == applied_at, f"job {jid} applied again"
    wait_for(
        lambda: all(job(http, jid)["status"] == "applied" for jid in queued_ids),
        180,
        "the jobs queued at the backup are applied after the restore",
    )
    for jid in queued_ids:
        assert job(http, jid)["attempts"] >= 1

    # Every worker answers on its own port (not only through the front end, which would route
    # around one that keeps requests waiting).
    for host in group_hosts("app_workers"):
        for port in worker_ports(host):
            r = http.get(f"http://{address(host)}:{port}/api/requests/{some_id}", timeout=10)
            assert r.status_code == 200, f"{host}:{port}: {r.status_code} {r.text[:200]}"

    # New writes after the restore.
    r = http.post(f"{API}/api/requests", json={"payload": {"after": "restore"}}, timeout=10)
    assert r.ok, r.text
    assert http.get(f"{API}/api/requests/{r.json()['id']}", timeout=10).ok

    # A restored cluster is what the inventory describes: a rerun of site.yml changes nothing.
    started = time.monotonic()
    rerun = subprocess.run(
        ["bash", "scripts/check-idempotence.sh", "-i", str(INVENTORY)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=PLAYBOOK_TIMEOUT_S,
    )
    assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-3000:]
    rerun_s = time.monotonic() - started

    figures = {
        "backup_s": round(backup_s, 1),
        "redeploy_s": round(redeploy_s, 1),
        "restore_s": round(restore_s, 1),
        "rerun_after_restore_s": round(rerun_s, 1),
        "backup_bytes": sum(f["bytes"] for f in manifest["files"].values()),
        "requests": REQUESTS,
        "jobs_applied_before": JOBS_APPLIED,
        "jobs_queued": JOBS_QUEUED,
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    (ROOT / "results").mkdir(exist_ok=True)
    (ROOT / "results" / "backup-restore.json").write_text(json.dumps(figures, indent=1) + "\n")
