"""Redis on the deployed lab, seen from the controller like the app tier sees it.

Run after `ansible-playbook playbooks/data.yml` (or `site.yml`):
`python -m pytest tests/lab/test_redis.py`.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import time
import uuid

import pytest
import redis
import requests

from tests.conftest import (
    INVENTORY,
    ROOT,
    address,
    group_hosts,
    redis_primary,
    secret,
    sentinel_client,
    setting,
    testinfra_host,
)

REDIS_HOSTS = group_hosts("redis")
PORT = 6379
FRONTEND = os.environ.get("LOCUST_HOST", "http://127.0.0.1:8080")
HA = len(REDIS_HOSTS) >= 3
needs_sentinel = pytest.mark.skipif(not HA, reason="fewer than 3 Redis hosts: no Sentinel")


@pytest.fixture(scope="module")
def redis_host() -> str:
    """The current primary (the single Redis host without Sentinel)."""
    assert REDIS_HOSTS, "inventory has no host in group redis"
    return redis_primary()


@pytest.fixture(scope="module")
def host(redis_host: str):
    """Testinfra host of the Redis server (`docker exec` for lab hosts, else Ansible)."""
    return testinfra_host(redis_host)


@pytest.fixture(scope="module")
def client(redis_host: str) -> redis.Redis:
    c = redis.Redis(
        host=address(redis_host),
        port=PORT,
        password=secret("redis_password"),
        socket_timeout=5,
        decode_responses=True,
    )
    yield c
    c.close()


def raw_command(host_address: str, line: bytes) -> bytes:
    """Send one inline command on a fresh connection (no AUTH) and return the reply line."""
    with socket.create_connection((host_address, PORT), timeout=5) as sock:
        sock.sendall(line + b"\r\n")
        return sock.recv(256)


@pytest.mark.smoke
def test_unauthenticated_ping_is_refused_with_noauth(redis_host: str) -> None:
    reply = raw_command(address(redis_host), b"PING")
    assert reply.startswith(b"-NOAUTH"), reply


def test_unauthenticated_client_gets_nothing(redis_host: str) -> None:
    anonymous = redis.Redis(host=address(redis_host), port=PORT, socket_timeout=5)
    with pytest.raises(redis.AuthenticationError):
        anonymous.get("anything")
    anonymous.close()


def test_wrong_password_is_refused(redis_host: str) -> None:
    intruder = redis.Redis(
        host=address(redis_host), port=PORT, password="not-the-password", socket_timeout=5
    )
    with pytest.raises(redis.AuthenticationError):
        intruder.ping()
    intruder.close()


@pytest.mark.smoke
def test_authenticated_ping_answers_pong(redis_host: str) -> None:
    with socket.create_connection((address(redis_host), PORT), timeout=5) as sock:
        sock.sendall(b"AUTH " + secret("redis_password").encode() + b"\r\nPING\r\n")
        received = b""
        while received.count(b"\r\n") < 2:
            chunk = sock.recv(256)
            assert chunk, "connection closed"
            received += chunk
    assert received == b"+OK\r\n+PONG\r\n"


def test_append_only_file_is_on(client: redis.Redis) -> None:
    assert client.config_get("appendonly") == {"appendonly": "yes"}
    persistence = client.info("persistence")
    assert persistence["aof_enabled"] == 1
    assert persistence["aof_last_write_status"] == "ok"


def test_memory_limit_and_policy(client: redis.Redis, redis_host: str) -> None:
    policy = setting(redis_host, "redis_maxmemory_policy")
    assert client.config_get("maxmemory-policy") == {"maxmemory-policy": policy}
    assert int(client.config_get("maxmemory")["maxmemory"]) > 0


def test_binds_private_address_and_loopback_only(client: redis.Redis, redis_host: str) -> None:
    assert client.config_get("bind") == {"bind": f"{address(redis_host)} 127.0.0.1"}
    assert client.config_get("unixsocket") == {"unixsocket": ""}
    assert client.config_get("tls-port") == {"tls-port": "0"}


@pytest.fixture(scope="module")
def host_view(host) -> dict[str, str]:
    """What the Redis host itself reports, gathered in one command (each is an Ansible run)."""
    out = host.check_output(
        "echo active=$(systemctl is-active redis-server);"
        " echo enabled=$(systemctl is-enabled redis-server);"
        " systemctl show redis-server -p PrivateUsers -p ProtectSystem -p NoNewPrivileges;"
        f" echo listening=$(ss -Hltn 'sport = :{PORT}' | awk '{{print $4}}' | sort | xargs)"
    )
    return dict(line.split("=", 1) for line in out.splitlines())


def test_listening_sockets_on_the_host(host_view: dict[str, str], redis_host: str) -> None:
    expected = sorted([f"{address(redis_host)}:{PORT}", f"127.0.0.1:{PORT}"])
    assert host_view["listening"].split() == expected


def test_unit_runs_with_debians_hardening(host_view: dict[str, str]) -> None:
    assert host_view["active"] == "active"
    assert host_view["enabled"] == "enabled"
    assert host_view["ProtectSystem"] == "strict"
    assert host_view["NoNewPrivileges"] == "yes"


@pytest.mark.parametrize("command", ["FLUSHALL", "FLUSHDB"])
def test_dangerous_commands_are_disabled(client: redis.Redis, command: str) -> None:
    with pytest.raises(redis.ResponseError, match="unknown command"):
        client.execute_command(command)


@pytest.mark.smoke
def test_unit_runs_with_the_container_dropin_only_where_needed(host) -> None:
    service = host.service("redis-server")
    assert service.is_running
    assert service.is_enabled
    props = host.check_output("systemctl show redis-server -p PrivateUsers -p ProtectSystem")
    assert "ProtectSystem=strict" in props


@pytest.mark.serial
def test_data_survives_a_restart(client: redis.Redis, host) -> None:
    key = f"clusterkit:labtest:{uuid.uuid4()}"
    value = uuid.uuid4().hex
    client.set(key, value)
    try:
        host.check_output("systemctl restart redis-server")
        deadline = time.time() + 60
        while True:
            try:
                # with Sentinel the primary takes writes again once a replica is back
                if client.ping() and (
                    not HA or int(client.info("replication").get("min_slaves_good_slaves", 0))
                ):
                    break
            except (redis.ConnectionError, redis.BusyLoadingError):
                pass
            assert time.time() < deadline, "redis did not come back after the restart"
            time.sleep(0.5)
        assert client.get(key) == value
    finally:
        client.delete(key)


def _client(host: str) -> redis.Redis:
    return redis.Redis(
        host=address(host),
        port=PORT,
        password=secret("redis_password"),
        socket_timeout=5,
        decode_responses=True,
    )


def _master_name() -> str:
    return str(setting(REDIS_HOSTS[0], "redis_sentinel_master_name"))


@needs_sentinel
def test_replication_write_on_primary_read_on_replicas() -> None:
    primary = redis_primary()
    key, value = f"clusterkit:labtest:{uuid.uuid4()}", uuid.uuid4().hex
    with _client(primary) as c:
        c.set(key, value)
        assert c.execute_command("WAIT", len(REDIS_HOSTS) - 1, 5000) == len(REDIS_HOSTS) - 1
    try:
        for h in REDIS_HOSTS:
            if h == primary:
                continue
            with _client(h) as c:
                assert c.info("replication")["role"] == "slave"
                assert c.get(key) == value
                with pytest.raises(redis.ReadOnlyError):
                    c.set(key, "written on a replica")
    finally:
        with _client(primary) as c:
            c.delete(key)


@needs_sentinel
def test_every_sentinel_agrees_on_the_primary_and_sees_the_whole_group() -> None:
    primary = address(redis_primary())
    for h in REDIS_HOSTS:
        with sentinel_client(h) as c:
            state = c.sentinel_master(_master_name())
        assert state["ip"] == primary, h
        assert state["is_master"], state
        assert not state["is_sdown"], state
        assert not state["is_odown"], state
        assert state["num-slaves"] == len(REDIS_HOSTS) - 1, (h, state)
        assert state["num-other-sentinels"] == len(REDIS_HOSTS) - 1, (h, state)
        assert state["quorum"] == int(setting(h, "redis_sentinel_quorum"))


@needs_sentinel
def test_primary_refuses_writes_without_replicas_configured() -> None:
    with _client(redis_primary()) as c:
        assert c.config_get("min-replicas-to-write") == {"min-replicas-to-write": "1"}


@needs_sentinel
@pytest.mark.parametrize("password", [None, "not-the-password"])
def test_sentinel_refuses_clients_without_its_password(password: str | None) -> None:
    h = REDIS_HOSTS[0]
    c = redis.Redis(
        host=address(h),
        port=int(setting(h, "redis_sentinel_port")),
        password=password,
        socket_timeout=5,
    )
    with pytest.raises((redis.AuthenticationError, redis.ResponseError)):
        c.sentinel_masters()
    c.close()


def _site_redis() -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["ansible-playbook", "-i", str(INVENTORY), "site.yml", "--tags", "redis"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=1200,
    )


def _changed(run: subprocess.CompletedProcess[str]) -> dict[str, int]:
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]
    return {
        m.group(1): int(m.group(2))
        for m in re.finditer(r"^(\S+)\s+: ok=\d+\s+changed=(\d+)", run.stdout, re.M)
    }


def _submit_job() -> int:
    r = requests.post(f"{FRONTEND}/api/jobs", json={"id": f"labtest-{uuid.uuid4()}"}, timeout=10)
    return r.status_code


@needs_sentinel
@pytest.mark.serial
def test_failover_then_rerun_changes_nothing_and_keeps_the_new_primary() -> None:
    old = redis_primary()
    with sentinel_client(old) as c:
        c.execute_command("SENTINEL", "FAILOVER", _master_name())
    deadline = time.monotonic() + 60
    while True:
        try:
            new = redis_primary()
            if new != old:
                break
        except RuntimeError:
            pass
        assert time.monotonic() < deadline, "no replica was promoted"
        time.sleep(0.5)
    # the old primary becomes a replica of the new one (Sentinel converts it)
    deadline = time.monotonic() + 60
    while _client(old).info("replication").get("master_link_status") != "up":
        assert time.monotonic() < deadline, f"{old} did not become a replica of {new}"
        time.sleep(0.5)
    changed = _changed(_site_redis())
    assert not any(changed.values()), changed
    assert redis_primary() == new
    with _client(new) as c:
        assert c.info("replication")["role"] == "master"
    # the app tier follows without a restart
    deadline = time.monotonic() + 30
    while _submit_job() != 202:
        assert time.monotonic() < deadline, "job submits through the front end keep failing"
        time.sleep(0.5)
