"""Faults under load: each scenario runs the project's Locust scenario (loadtests/) through the
front end for a bounded time, injects one fault while it runs, and asserts what users and jobs
saw. Every scenario starts on a healthy lab and leaves it healthy (tests/chaos/conftest.py).

    python -m pytest tests/chaos -q        # ~4 min on the 2-vCPU reference machine

Figures of every scenario go to results/chaos.json and results/chaos.md.
"""

from __future__ import annotations

import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pymongo
import pytest
import redis
from clusterkit_app.config import Config
from clusterkit_app.store import INFLIGHT, QUEUE, job_key

from tests.chaos import ha
from tests.chaos.conftest import (
    FRONTEND,
    MASTER_HEALTH,
    MASTER_HOSTS,
    WORKER_HOSTS,
    WORKER_URLS,
    WORKERS,
    HaproxyWatch,
    JobBatch,
    JobFigures,
    LoadFigures,
    background_load,
    container,
    etcd_leader,
    etcd_status,
    fault,
    http_ok,
    main_pid,
    mongo_member_state,
    mongo_self_state,
    on,
    wait_stopped,
    wait_until,
)
from tests.conftest import address, worker_ports

# Bounds the scenarios assert (README "Faults (chaos suite)" explains each).
# One worker killed, the master killed, an etcd member stopped, Redis restarted.
MAX_ERROR_RATIO = 0.005
MAX_DOWN_S = 3.0  # a killed worker is DOWN in HAProxy within this (checks: 2 s + 1 x 500 ms)
# A MongoDB primary stopped: requests fail while no primary is elected and the workers'
# drivers find the new one. Election after a clean stop (election handoff) takes ~1-2 s;
# the workers' writes wait up to serverSelectionTimeoutMS (5 s) for a primary and are
# retried once (retryable writes). Allowed: failures within 10 s of the stop, at most 10 s of
# seconds with failures, and no more than 5% of the run.
MAX_ELECTION_BURST_S = 10
MAX_ELECTION_ERROR_RATIO = 0.05
# A whole app host stopped (docker stop: its workers drain, then the host is gone) and
# started again: requests in flight are retried by HAProxy on another worker.
MAX_HOST_STOP_ERROR_RATIO = 0.01
# The Redis primary restarted: it comes back with a new replication ID, its replicas resync in
# full (after repl-diskless-sync-delay, 1 s), and with min-replicas-to-write it refuses writes
# until one has. Requests may fail from the restart until every replica is in sync again,
# which must take no longer than this; none may fail outside that pause.
MAX_REDIS_WRITE_PAUSE_S = 10


def record(
    results: dict[str, dict[str, Any]],
    name: str,
    load: LoadFigures,
    jobs: JobFigures | None = None,
    **extra: Any,
) -> None:
    row: dict[str, Any] = {
        "requests": load.requests,
        "errors": load.errors,
        "error_ratio": round(load.error_ratio, 5),
        "rps": load.rps,
        "error_kinds": load.error_kinds,
    }
    if jobs is not None:
        row.update({f"jobs_{k}": v for k, v in jobs.as_dict().items()})
    row.update({k: round(v, 2) if isinstance(v, float) else v for k, v in extra.items()})
    results[name] = row


def assert_exactly_once(jobs: JobFigures) -> None:
    assert jobs.lost == 0, f"{jobs.lost} job(s) lost: {jobs}"
    assert jobs.duplicated == 0, f"{jobs.duplicated} job(s) applied twice: {jobs}"


def since(t: float | None, start: float) -> float | None:
    return None if t is None else round(t - start, 2)


def worker_only_hosts() -> list[str]:
    return [h for h in WORKER_HOSTS if h not in MASTER_HOSTS]


def master_id() -> str | None:
    try:
        r = httpx.get(MASTER_HEALTH[0], timeout=2)
    except httpx.HTTPError:
        return None
    return str(r.json().get("master_id")) if r.status_code == 200 else None


def lock_ttl_s() -> int:
    """The master lock's lease TTL as deployed (LOCK_TTL_S in the master's environment files,
    else the app's default)."""
    out = on(MASTER_HOSTS[0], "cat /etc/clusterkit/app.env /etc/clusterkit/master.env")
    values = [
        line.split("=", 1)[1].strip('"')
        for line in out.splitlines()
        if line.startswith("LOCK_TTL_S=")
    ]
    return int(values[-1]) if values else Config.lock_ttl_s


# -- 1. kill -9 of one worker -----------------------------------------------------------------


def test_kill_9_of_a_worker_is_routed_around_and_it_comes_back(
    tmp_path: Path, chaos_results: dict[str, dict[str, Any]]
) -> None:
    host, port = WORKERS[-1]
    server, unit = f"{host}-{port}", f"clusterkit-worker@{port}.service"
    with HaproxyWatch() as watch, background_load(tmp_path, 25) as load:
        time.sleep(3)
        killed_pid = main_pid(host, unit)
        killed_at = fault(host, f"kill -9 {killed_pid}")
        down = watch.wait(server, "DOWN", killed_at, 15)
        up = watch.wait(server, "UP", down or killed_at, 45)
        assert load.remaining() > 0, "the fault outlasted the load run"
        figures = load.finish()
    record(
        chaos_results,
        "worker kill -9",
        figures,
        server=server,
        down_s=since(down, killed_at),
        up_s=since(up, killed_at),
    )
    assert figures.errors / max(figures.requests, 1) <= MAX_ERROR_RATIO, figures.error_kinds
    assert down is not None, f"HAProxy never marked {server} DOWN: {watch.changes}"
    assert down - killed_at <= MAX_DOWN_S, f"{server} DOWN after {down - killed_at:.2f} s"
    assert up is not None, f"{server} not UP again after systemd's restart: {watch.changes}"
    assert main_pid(host, unit) not in (0, killed_pid)


# -- 2. kill -9 of the master with jobs queued and in flight ----------------------------------


def test_kill_9_of_the_master_loses_no_job_and_a_master_serves_within_the_lease_ttl(
    tmp_path: Path,
    chaos_results: dict[str, dict[str, Any]],
    mongo: pymongo.database.Database[dict[str, Any]],
    queue: redis.Redis,
) -> None:
    master = MASTER_HOSTS[0]
    ttl = lock_ttl_s()
    batch = JobBatch("master-kill")
    with HaproxyWatch(), background_load(tmp_path, 30) as load:
        submitter = threading.Thread(
            target=batch.submit, args=(0, 1500, WORKER_URLS), kwargs={"threads": 16}
        )
        submitter.start()
        query = {"_id": {"$regex": f"^{batch.prefix}"}}
        wait_until(
            "jobs being applied while more are queued",
            lambda: mongo.applied_jobs.count_documents(query) >= 100 and queue.llen(QUEUE) > 0,
            60,
        )
        killed = master_id()
        queued, in_flight = queue.llen(QUEUE), queue.zcard(INFLIGHT)
        killed_at = fault(master, f"kill -9 {main_pid(master, 'clusterkit-master.service')}")
        serving = wait_until(
            "a new master serving (healthz 200)",
            lambda: master_id() not in (None, killed),
            ttl + 30,
            0.1,
        )
        dispatching = wait_until(
            "the new master dispatching to every worker",
            lambda: (
                len(httpx.get(MASTER_HEALTH[0], timeout=2).json().get("workers", []))
                == len(WORKERS)
            ),
            60,
            0.2,
        )
        submitter.join(120)
        figures = load.finish()
    jobs = batch.settle(mongo)
    record(
        chaos_results,
        "master kill -9",
        figures,
        jobs,
        takeover_s=serving - killed_at,
        all_workers_subscribed_s=dispatching - killed_at,
        lock_ttl_s=ttl,
        queued_at_kill=queued,
        in_flight_at_kill=in_flight,
    )
    assert queued > 0, "no job was queued at the kill"
    assert in_flight > 0, "no job was in flight at the kill"
    assert jobs.submitted == 1500, jobs
    assert_exactly_once(jobs)
    assert serving - killed_at <= ttl, f"takeover {serving - killed_at:.1f} s > lease TTL {ttl} s"
    assert figures.errors / max(figures.requests, 1) <= MAX_ERROR_RATIO, figures.error_kinds


# -- 3. an etcd member, a MongoDB secondary, the MongoDB primary ------------------------------


def test_stopping_the_etcd_leader_keeps_the_api_and_the_master_lock(
    tmp_path: Path,
    chaos_results: dict[str, dict[str, Any]],
    mongo: pymongo.database.Database[dict[str, Any]],
) -> None:
    leader = etcd_leader()
    leader_id = etcd_status()[leader]["header"]["member_id"]
    others = [h for h in etcd_status() if h != leader]
    before = master_id()
    batch = JobBatch("etcd")
    with background_load(tmp_path, 25) as load, batch.trickle([FRONTEND]):
        time.sleep(2)
        stopped_at = fault(leader, "systemctl stop etcd")

        def new_leader() -> bool:
            status = etcd_status()
            ids = {status[h].get("leader") for h in others if status[h]}
            return len(ids) == 1 and None not in ids and leader_id not in ids

        elected = wait_until("a new etcd leader", new_leader, 20)
        # Down for longer than the master's lease TTL: its keepalives must go to the others.
        time.sleep(max(0.0, stopped_at + lock_ttl_s() + 1 - time.time()))
        on(leader, "systemctl start etcd")
        back = wait_until(
            "the etcd member healthy again",
            lambda: http_ok(f"http://{address(leader)}:2379/health"),
            30,
        )
        assert load.remaining() > 0, "the fault outlasted the load run"
        figures = load.finish()
    jobs = batch.settle(mongo)
    after = master_id()
    record(
        chaos_results,
        "etcd leader stopped",
        figures,
        jobs,
        member=leader,
        new_leader_s=elected - stopped_at,
        member_stopped_s=back - stopped_at,
        master_kept_lock=before == after,
    )
    assert figures.errors / max(figures.requests, 1) <= MAX_ERROR_RATIO, figures.error_kinds
    assert_exactly_once(jobs)
    assert before == after, f"the master changed ({before} -> {after}): it lost its etcd lock"


def test_stopping_a_mongodb_secondary_then_the_primary_keeps_the_api_serving(
    tmp_path: Path,
    chaos_results: dict[str, dict[str, Any]],
    mongo: pymongo.database.Database[dict[str, Any]],
) -> None:
    members = mongo_member_state()
    primary = next(h for h, s in members.items() if s == "PRIMARY")
    secondary = next(h for h, s in members.items() if s == "SECONDARY")

    def state_of(host: str) -> str | None:
        # Its own view: the primary's may still say SECONDARY from before the stop, and a
        # primary stopped while the other member is still starting has no majority to hand
        # over to (the election then waits for the 10 s election timeout).
        return mongo_self_state(host)

    # mongod's clean stop takes ~15 s (a primary steps down at once, then every member spends
    # MongoDB's quiesce period telling clients it is going): the stops run in the background.
    batch = JobBatch("mongodb")
    with background_load(tmp_path, 60) as load, batch.trickle([FRONTEND]):
        time.sleep(2)
        secondary_at = fault(secondary, "systemctl stop --no-block mongod")
        wait_stopped(secondary, "mongod.service")
        on(secondary, "systemctl start mongod")
        wait_until("the secondary back", lambda: state_of(secondary) == "SECONDARY", 60, 0.5)
        primary_at = fault(primary, "systemctl stop --no-block mongod")
        elected = wait_until(
            "a new primary",
            lambda: any(s == "PRIMARY" and h != primary for h, s in mongo_member_state().items()),
            30,
            0.2,
        )
        wait_stopped(primary, "mongod.service")
        on(primary, "systemctl start mongod")
        wait_until("the old primary back", lambda: state_of(primary) == "SECONDARY", 60, 0.5)
        ended = time.time()
        assert load.remaining() > 2, "the fault outlasted the load run"
        figures = load.finish()
    jobs = batch.settle(mongo)
    during_secondary = figures.errors_between(secondary_at, primary_at - 1)
    burst = figures.errors_between(primary_at, ended)
    burst_seconds = figures.error_seconds(primary_at, ended)
    burst_span = (burst_seconds[-1] - burst_seconds[0] + 1) if burst_seconds else 0
    record(
        chaos_results,
        "MongoDB secondary, then primary stopped",
        figures,
        jobs,
        secondary=secondary,
        primary=primary,
        secondary_stop_errors=during_secondary,
        election_s=elected - primary_at,
        election_error_burst=burst,
        election_error_burst_s=burst_span,
        election_error_last_s=(burst_seconds[-1] - int(primary_at)) if burst_seconds else None,
    )
    assert during_secondary == 0, f"{during_secondary} errors while a secondary was stopped"
    assert burst_span <= MAX_ELECTION_BURST_S, burst_seconds
    if burst_seconds:
        assert burst_seconds[-1] - primary_at <= MAX_ELECTION_BURST_S, burst_seconds
    assert figures.errors / max(figures.requests, 1) <= MAX_ELECTION_ERROR_RATIO
    assert_exactly_once(jobs)


# -- 4. restart of Redis: queued jobs and sessions survive ------------------------------------


def test_restarting_redis_keeps_queued_jobs_and_sessions(
    tmp_path: Path,
    chaos_results: dict[str, dict[str, Any]],
    mongo: pymongo.database.Database[dict[str, Any]],
    queue: redis.Redis,
) -> None:
    # The primary: a replica's restart would not touch the queue the jobs wait in.
    host = ha.redis_primary()
    assert host is not None, f"no Redis primary: {ha.redis_problems()}"
    persistence = queue.config_get("appendonly") | queue.config_get("appendfsync")
    sessions = {f"chaos-session-{i:02d}-{batch_tag()}": 0 for i in range(20)}
    with httpx.Client(timeout=30) as client:
        for sid in sessions:
            for _ in range(3):
                r = client.post(f"{FRONTEND}/api/requests", json={"payload": {}, "session": sid})
                assert r.status_code == 200, r.text
    sessions = {sid: int(queue.hget(f"session:{sid}", "requests") or 0) for sid in sessions}
    assert set(sessions.values()) == {3}, sessions
    batch = JobBatch("redis")
    with background_load(tmp_path, 25) as load:
        batch.submit(0, 1500, WORKER_URLS, threads=16)
        queued = queue.lrange(QUEUE, 0, -1)
        restarted_at = fault(host, "systemctl restart redis-server")
        wait_until("Redis answering", lambda: _pings(queue), 30)
        kept = [i for i in queued if queue.exists(job_key(i))]
        sessions_after = {
            sid: int(queue.hget(f"session:{sid}", "requests") or 0) for sid in sessions
        }
        back = time.time()
        in_sync = wait_until(
            "every replica in sync with the restarted primary",
            lambda: not ha.redis_problems(),
            MAX_REDIS_WRITE_PAUSE_S + 20,
        )
        figures = load.finish()
    jobs = batch.settle(mongo)
    outside_pause = figures.errors - figures.errors_between(restarted_at, in_sync)
    record(
        chaos_results,
        "Redis primary restarted",
        figures,
        jobs,
        redis_config=persistence,
        queued_at_restart=len(queued),
        queued_kept=len(kept),
        sessions=len(sessions),
        sessions_kept=sum(sessions_after[s] >= n for s, n in sessions.items()),
        restart_s=back - restarted_at,
        write_pause_s=in_sync - restarted_at,
        errors_outside_pause=outside_pause,
    )
    assert queued, "no job was queued at the restart"
    assert len(kept) == len(queued), f"{len(queued) - len(kept)} queued jobs gone"
    assert sessions_after == sessions, "sessions changed across the restart"
    assert in_sync - restarted_at <= MAX_REDIS_WRITE_PAUSE_S, ha.redis_problems()
    assert outside_pause == 0, figures.error_kinds
    assert_exactly_once(jobs)


def batch_tag() -> str:
    return f"{time.time_ns():x}"[-8:]


def _pings(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False


# -- 5. a whole app host stopped and started --------------------------------------------------


def test_stopping_an_app_host_is_routed_around_and_it_comes_back(
    tmp_path: Path,
    chaos_results: dict[str, dict[str, Any]],
    mongo: pymongo.database.Database[dict[str, Any]],
) -> None:
    hosts = worker_only_hosts()
    if not hosts:
        pytest.skip("every app host runs the master: stopping one stops job dispatch")
    host = hosts[-1]
    servers = [f"{host}-{p}" for p in worker_ports(host)]
    batch = JobBatch("app-host")
    name = container(host)
    with HaproxyWatch() as watch, background_load(tmp_path, 50) as load:
        with batch.trickle([FRONTEND]):
            time.sleep(2)
            stopped_at = time.time()
            subprocess.run(["docker", "stop", name], check=True, capture_output=True)
            stop_done = time.time()
            time.sleep(max(0.0, stopped_at + 10 - time.time()))
            started_at = time.time()
            subprocess.run(["docker", "start", name], check=True, capture_output=True)
            ups = [watch.wait(s, "UP", started_at, 90) for s in servers]
        downs = [watch.first(s, "DOWN", stopped_at) for s in servers]
        assert load.remaining() > 0, "the fault outlasted the load run"
        figures = load.finish()
    jobs = batch.settle(mongo)
    record(
        chaos_results,
        "app host stopped and started",
        figures,
        jobs,
        host=host,
        stop_s=stop_done - stopped_at,
        down_s=max((since(d, stopped_at) or 0.0) for d in downs) if all(downs) else None,
        up_s=max((since(u, started_at) or 0.0) for u in ups) if all(ups) else None,
    )
    assert all(downs), f"not marked DOWN: {watch.changes}"
    assert all(ups), f"not UP again after the start: {watch.changes}"
    assert figures.errors / max(figures.requests, 1) <= MAX_HOST_STOP_ERROR_RATIO, (
        figures.error_kinds
    )
    assert_exactly_once(jobs)
