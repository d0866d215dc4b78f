"""Benchmark of the reference app on this machine (not a test: it asserts nothing).

(a) dispatch: N jobs submitted straight into Redis while a master and K workers run
    (SERVICE_TIME_MS=0); jobs/s from the first submission until the last job is applied.
(b) capacity: one worker with SERVICE_TIME_MS=0, a closed-loop HTTP client with C connections
    for D seconds against POST /api/requests; requests/s and latency percentiles.
(c) model: the same with the default capacity model (1 at a time, 66 ms): should give ~15 req/s.

Servers (redis-server, mongod, etcd) come from clusterkit_app.devservers, like the tests'.
Usage: python bench/bench.py [--out results/app-bench.json] [--reps 3] [--jobs 3000] ...
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
from pymongo import MongoClient

from clusterkit_app.devservers import (
    AppProcess,
    EtcdServer,
    MongoServer,
    RedisServer,
    free_port,
)
from clusterkit_app.store import JobQueue, make_redis


class Backends:
    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.redis = RedisServer(workdir)
        self.mongo = MongoServer(workdir)
        self.etcd = EtcdServer(workdir, auth=False)

    def env(self, tag: str, db: int) -> dict[str, str]:
        return {
            **self.redis.env(),
            **self.etcd.env(),
            "REDIS_DB": str(db),
            "MONGODB_URI": self.mongo.uri,
            "MONGODB_DATABASE": f"bench_{tag}",
            "ETCD_PREFIX": f"/bench-{tag}",
            "NODE_ID": f"bench-{tag}",
            "GRPC_TOKEN": "bench",
            "BIND_ADDRESS": "127.0.0.1",
            "LOG_LEVEL": "WARNING",
        }

    def stop(self) -> None:
        for server in (self.etcd, self.mongo, self.redis):
            server.stop()


def start_master(workdir: Path, env: dict[str, str], grpc_port: int) -> AppProcess:
    health = free_port()
    proc = AppProcess(
        f"master-{uuid.uuid4().hex[:6]}",
        workdir,
        {
            **env,
            "MODE": "master",
            "MASTER_SERVER_PORT": str(grpc_port),
            "MASTER_HEALTH_PORT": str(health),
        },
    )
    proc.wait_healthy(health)
    return proc


def start_worker(
    workdir: Path, env: dict[str, str], grpc_port: int, name: str, **extra: str
) -> tuple[AppProcess, int]:
    port = free_port()
    proc = AppProcess(
        name,
        workdir,
        {
            **env,
            "MODE": "worker",
            "MASTER_SERVER_IP": "127.0.0.1",
            "MASTER_SERVER_PORT": str(grpc_port),
            "SERVER_PORT": str(port),
            "WORKER_ID": name,
            **extra,
        },
    )
    proc.wait_healthy(port)
    return proc, port


async def preload(redis_port: int, password: str | None, db: int, n: int) -> None:
    redis = make_redis("127.0.0.1", redis_port, password, db)
    jobs = JobQueue(redis)
    try:
        for start in range(0, n, 200):
            await asyncio.gather(
                *(
                    jobs.submit(f"b{i}", json.dumps({"n": i}))
                    for i in range(start, min(n, start + 200))
                )
            )
    finally:
        await redis.aclose()


def bench_dispatch(b: Backends, rep: int, n: int, workers: int, per_worker: int) -> dict[str, Any]:
    env = {
        **b.env(f"d{rep}", 100 + rep),
        "SERVICE_TIME_MS": "0",
        "MAX_JOBS_IN_FLIGHT_PER_WORKER": str(per_worker),
    }
    grpc_port = free_port()
    procs: list[AppProcess] = []
    client: MongoClient[dict[str, Any]] = MongoClient(b.mongo.uri)
    try:
        procs.append(start_master(b.workdir, env, grpc_port))
        for k in range(workers):
            procs.append(start_worker(b.workdir, env, grpc_port, f"bw{rep}-{k}")[0])
        applied = client[env["MONGODB_DATABASE"]].applied_jobs
        started = time.monotonic()
        asyncio.run(preload(b.redis.port, b.redis.password, 100 + rep, n))
        submitted = time.monotonic() - started
        deadline = started + 300
        while applied.count_documents({}) < n:
            if time.monotonic() > deadline:
                raise TimeoutError("dispatch benchmark did not finish")
            time.sleep(0.02)
        elapsed = time.monotonic() - started
        return {
            "jobs": n,
            "workers": workers,
            "seconds": round(elapsed, 3),
            "submit_seconds": round(submitted, 3),
            "jobs_per_s": round(n / elapsed, 1),
        }
    finally:
        for proc in procs[1:] + procs[:1]:
            proc.stop()
        client.drop_database(env["MONGODB_DATABASE"])
        client.close()


async def closed_loop(port: int, concurrency: int, duration: float) -> dict[str, Any]:
    latencies: list[float] = []
    errors = 0
    stop_at = time.monotonic() + duration
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(
        base_url=f"http://127.0.0.1:{port}", limits=limits, timeout=30
    ) as client:

        async def user(u: int) -> None:
            nonlocal errors
            i = 0
            while time.monotonic() < stop_at:
                t0 = time.monotonic()
                resp = await client.post(
                    "/api/requests", json={"payload": {"u": u, "i": i}, "session": f"s{u}"}
                )
                if resp.status_code == 200:
                    latencies.append(time.monotonic() - t0)
                else:
                    errors += 1
                i += 1

        started = time.monotonic()
        await asyncio.gather(*(user(u) for u in range(concurrency)))
        elapsed = time.monotonic() - started
    latencies.sort()

    def pct(p: float) -> float:
        return round(latencies[min(len(latencies) - 1, int(p * len(latencies)))] * 1000, 2)

    return {
        "concurrency": concurrency,
        "seconds": round(elapsed, 3),
        "requests": len(latencies),
        "errors": errors,
        "req_per_s": round(len(latencies) / elapsed, 1),
        "p50_ms": pct(0.50) if latencies else None,
        "p99_ms": pct(0.99) if latencies else None,
    }


def bench_worker(
    b: Backends, tag: str, db: int, concurrency: int, duration: float, **extra: str
) -> dict[str, Any]:
    env = b.env(tag, db)
    grpc_port = free_port()
    procs: list[AppProcess] = []
    try:
        procs.append(start_master(b.workdir, env, grpc_port))
        proc, port = start_worker(b.workdir, env, grpc_port, f"w-{tag}", **extra)
        procs.append(proc)
        result = asyncio.run(closed_loop(port, concurrency, duration))
        result.update({k.lower(): v for k, v in extra.items()})
        return result
    finally:
        for p in procs[1:] + procs[:1]:
            p.stop()


def median_of(runs: list[dict[str, Any]], key: str) -> float:
    return float(statistics.median(r[key] for r in runs))


def report_header() -> dict[str, Any]:
    """The machine and start time every benchmark report begins with."""
    return {
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="results/app-bench.json")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--jobs", type=int, default=3000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--per-worker", type=int, default=16, help="MAX_JOBS_IN_FLIGHT_PER_WORKER")
    parser.add_argument("--concurrency", type=int, default=16, help="HTTP client connections")
    parser.add_argument("--worker-concurrency", type=int, default=16, help="WORKER_CONCURRENCY")
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--skip-model", action="store_true")
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="clusterkit-bench-"))
    backends = Backends(workdir)
    report: dict[str, Any] = report_header()
    try:
        dispatch = []
        for rep in range(args.reps):
            dispatch.append(bench_dispatch(backends, rep, args.jobs, args.workers, args.per_worker))
            print(f"dispatch rep {rep}: {dispatch[-1]}", flush=True)
        report["dispatch"] = {
            "runs": dispatch,
            "median_jobs_per_s": median_of(dispatch, "jobs_per_s"),
        }

        capacity = []
        for rep in range(args.reps):
            capacity.append(
                bench_worker(
                    backends,
                    f"c{rep}",
                    200 + rep,
                    args.concurrency,
                    args.duration,
                    SERVICE_TIME_MS="0",
                    WORKER_CONCURRENCY=str(args.worker_concurrency),
                )
            )
            print(f"capacity rep {rep}: {capacity[-1]}", flush=True)
        report["worker_capacity"] = {
            "runs": capacity,
            "median_req_per_s": median_of(capacity, "req_per_s"),
            "median_p50_ms": median_of(capacity, "p50_ms"),
            "median_p99_ms": median_of(capacity, "p99_ms"),
        }

        if not args.skip_model:
            model = []
            for rep in range(args.reps):
                model.append(bench_worker(backends, f"m{rep}", 300 + rep, 4, args.duration))
                print(f"model rep {rep}: {model[-1]}", flush=True)
            report["capacity_model_default"] = {
                "runs": model,
                "median_req_per_s": median_of(model, "req_per_s"),
            }
    finally:
        backends.stop()

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nmedian dispatch throughput: {report['dispatch']['median_jobs_per_s']} jobs/s")
    print(f"median worker capacity:     {report['worker_capacity']['median_req_per_s']} req/s")
    if "capacity_model_default" in report:
        print(
            f"median with default model:  {report['capacity_model_default']['median_req_per_s']}"
            " req/s"
        )
    print(f"written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
