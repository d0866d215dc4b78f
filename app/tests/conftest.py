"""Fixtures: real redis-server, mongod (1-member replica set) and etcd (auth on), started once per
session on 127.0.0.1 with free ports; app processes started per test. Everything is stopped at the
end. Missing binaries: run app/scripts/test-deps.sh."""

from __future__ import annotations

import itertools
import json
import signal
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from clusterkit_app.devservers import (
    AppProcess,
    EtcdServer,
    MongoServer,
    RedisServer,
    free_port,
)

_redis_db = itertools.count(1)


@pytest.fixture(scope="session")
def servers_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("servers")


@pytest.fixture(scope="session")
def redis_server(servers_dir: Path) -> Iterator[RedisServer]:
    server = RedisServer(servers_dir)
    yield server
    server.stop()


@pytest.fixture(scope="session")
def mongo_server(servers_dir: Path) -> Iterator[MongoServer]:
    server = MongoServer(servers_dir)
    yield server
    server.stop()


@pytest.fixture(scope="session")
def etcd_server(servers_dir: Path) -> Iterator[EtcdServer]:
    server = EtcdServer(servers_dir, auth=True)
    yield server
    server.stop()


@pytest.fixture
def redis_db() -> int:
    db = next(_redis_db)
    assert db < 1024, "more Redis databases than redis-server offers"
    return db


@pytest.fixture
def backend_env(
    redis_server: RedisServer, mongo_server: MongoServer, etcd_server: EtcdServer, redis_db: int
) -> dict[str, str]:
    """Environment pointing at the session servers, isolated per test (Redis db, Mongo db, etcd
    prefix, NODE_ID)."""
    tag = uuid.uuid4().hex[:8]
    return {
        **redis_server.env(),
        **etcd_server.env(),
        "REDIS_DB": str(redis_db),
        "MONGODB_URI": mongo_server.uri,
        "MONGODB_DATABASE": f"ck_{tag}",
        "ETCD_PREFIX": f"/ck-{tag}",
        "NODE_ID": f"node-{tag}",
        "GRPC_TOKEN": f"token-{tag}",
        "BIND_ADDRESS": "127.0.0.1",
        "LOG_LEVEL": "INFO",
    }


def http_json(
    method: str, url: str, body: Any = None, timeout: float = 10
) -> tuple[int, Any, dict[str, str]]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method)
    req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, json.loads(resp.read() or b"null"), dict(resp.headers)
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"null"), dict(err.headers)


class Cluster:
    """Master and worker processes of one NODE_ID, all stopped by the fixture."""

    def __init__(self, workdir: Path, env: dict[str, str]) -> None:
        self.workdir = workdir
        self.env = env
        self.grpc_port = free_port()
        self.procs: list[AppProcess] = []
        self.worker_ports: dict[str, int] = {}

    def start_master(self, name: str = "master", **extra: str) -> tuple[AppProcess, int]:
        health = free_port()
        env = {
            **self.env,
            "MODE": "master",
            "MASTER_SERVER_PORT": str(self.grpc_port),
            "MASTER_HEALTH_PORT": str(health),
            **extra,
        }
        proc = AppProcess(name, self.workdir, env)
        self.procs.append(proc)
        return proc, health

    def start_worker(self, name: str, **extra: str) -> tuple[AppProcess, int]:
        port = free_port()
        env = {
            **self.env,
            "MODE": "worker",
            "MASTER_SERVER_IP": "127.0.0.1",
            "MASTER_SERVER_PORT": str(self.grpc_port),
            "SERVER_PORT": str(port),
            "WORKER_ID": name,
            **extra,
        }
        proc = AppProcess(name, self.workdir, env)
        self.procs.append(proc)
        self.worker_ports[name] = port
        return proc, port

    def stop(self) -> None:
        # workers before the master, as the deployment does
        for proc in sorted(self.procs, key=lambda p: p.name.startswith("master")):
            proc.signal(signal.SIGTERM)
        deadline = time.monotonic() + 15
        for proc in self.procs:
            proc.stop(timeout=max(0.1, deadline - time.monotonic()))


@pytest.fixture
def cluster(tmp_path: Path, backend_env: dict[str, str]) -> Iterator[Cluster]:
    c = Cluster(tmp_path, backend_env)
    yield c
    c.stop()
