from __future__ import annotations

import os
import subprocess
import sys

import pytest

from clusterkit_app.config import ConfigError, load_config

BASE = {"NODE_ID": "idp1", "MODE": "worker", "MASTER_SERVER_IP": "10.0.0.1", "GRPC_TOKEN": "s"}


def bad(env: dict[str, str]) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(env)
    return info.value.name


def test_defaults() -> None:
    cfg = load_config(BASE)
    assert cfg.mode == "worker"
    assert cfg.server_port == 8180
    assert cfg.master_server_port == 7001
    assert cfg.master_health_port == 7002
    assert cfg.worker_concurrency == 1
    assert cfg.service_time_ms == 66
    assert cfg.lock_ttl_s == 10
    assert cfg.etcd_prefix == "/clusterkit"
    assert cfg.worker_id.endswith("-8180")
    assert cfg.master_target == "10.0.0.1:7001"
    assert cfg.etcd_endpoints == ("http://127.0.0.1:2379",)
    assert cfg.request_write_concern == "majority"


def test_request_write_concern_1() -> None:
    assert load_config({**BASE, "REQUEST_WRITE_CONCERN": "1"}).request_write_concern == "1"


def test_standalone_needs_only_node_id() -> None:
    cfg = load_config({"NODE_ID": "dev"})
    assert cfg.mode == "standalone"
    assert cfg.grpc_token  # generated


@pytest.mark.parametrize(
    ("change", "name"),
    [
        ({"NODE_ID": ""}, "NODE_ID"),
        ({"NODE_ID": "has space"}, "NODE_ID"),
        ({"MODE": "boss"}, "MODE"),
        ({"SERVER_PORT": "http"}, "SERVER_PORT"),
        ({"SERVER_PORT": "70000"}, "SERVER_PORT"),
        ({"MASTER_SERVER_IP": ""}, "MASTER_SERVER_IP"),
        ({"GRPC_TOKEN": ""}, "GRPC_TOKEN"),
        ({"WORKER_CONCURRENCY": "0"}, "WORKER_CONCURRENCY"),
        ({"SERVICE_TIME_MS": "-1"}, "SERVICE_TIME_MS"),
        ({"WORK_MODE": "gpu"}, "WORK_MODE"),
        ({"ETCD_ENDPOINTS": "127.0.0.1:2379"}, "ETCD_ENDPOINTS"),
        ({"ETCD_USER": "root"}, "ETCD_PASSWORD"),
        ({"ETCD_PREFIX": "nope"}, "ETCD_PREFIX"),
        ({"MONGODB_URI": "http://x"}, "MONGODB_URI"),
        ({"LOCK_TTL_S": "1"}, "LOCK_TTL_S"),
        ({"MASTER_LOCK_WAIT": "maybe"}, "MASTER_LOCK_WAIT"),
        ({"JOB_ACK_TIMEOUT_S": "soon"}, "JOB_ACK_TIMEOUT_S"),
        ({"LOG_LEVEL": "LOUD"}, "LOG_LEVEL"),
        ({"REDIS_DB": "x"}, "REDIS_DB"),
        ({"REQUEST_WRITE_CONCERN": "2"}, "REQUEST_WRITE_CONCERN"),
    ],
)
def test_invalid_variables_are_named(change: dict[str, str], name: str) -> None:
    assert bad({**BASE, **change}) == name


def test_master_requires_token() -> None:
    assert bad({"NODE_ID": "idp1", "MODE": "master"}) == "GRPC_TOKEN"


def test_cli_exits_2_with_the_variable_name() -> None:
    env = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME")}
    env.update({"MODE": "worker", "GRPC_TOKEN": "x", "MASTER_SERVER_IP": "127.0.0.1"})
    proc = subprocess.run(
        [sys.executable, "-m", "clusterkit_app"],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 2
    assert "NODE_ID" in proc.stderr
    assert proc.stderr.count("\n") == 1


def test_redis_sentinels_are_parsed() -> None:
    cfg = load_config({**BASE, "REDIS_SENTINELS": "10.0.0.31:26379, h2:26380"})
    assert cfg.redis_sentinels == (("10.0.0.31", 26379), ("h2", 26380))
    assert cfg.redis_sentinel_master == "clusterkit"
    assert load_config(BASE).redis_sentinels == ()


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("REDIS_SENTINELS", "10.0.0.31"),
        ("REDIS_SENTINELS", "h1:26379,,h2:1"),
        ("REDIS_SENTINELS", "h1:0"),
        ("REDIS_SENTINEL_MASTER", "bad name"),
        ("REDIS_WAIT_REPLICAS", "-1"),
        ("REDIS_WAIT_TIMEOUT_MS", "0"),
    ],
)
def test_bad_redis_sentinel_settings_name_the_variable(name: str, value: str) -> None:
    assert bad({**BASE, name: value}) == name
