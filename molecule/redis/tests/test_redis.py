"""Verify the redis role on a real systemd container: what Redis does, not what files say."""

import re
import time

import pytest

# The initial primary; replication, Sentinel and authentication across the group are in
# test_sentinel.py (which runs after this file: it moves the primary).
testinfra_hosts = ["ansible://redis-1"]

# The password never appears in this file or in a command line: the shell reads it from the
# file the role wrote and hands it to redis-cli through REDISCLI_AUTH.
AUTH = 'REDISCLI_AUTH="$(sed -n \'s/^requirepass "\\(.*\\)"$/\\1/p\' /etc/redis/redis-auth.conf)" '


DROPIN = "/etc/systemd/system/redis-server.service.d/clusterkit-container.conf"


def cli(host, *args, address="127.0.0.1", auth=True):
    cmd = (AUTH if auth else "") + "redis-cli --no-auth-warning -h {} -p 6379 {}".format(
        address, " ".join(args)
    )
    return host.run(cmd)


@pytest.fixture(scope="module")
def private_address(host):
    # The role binds to clusterkit_address or, as here, the default route's IPv4 address.
    route = host.check_output("ip -4 route get 1.1.1.1")
    return re.search(r"\bsrc (\S+)", route).group(1)


def wait_for_pong(host, timeout=30):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if cli(host, "PING").stdout.strip() == "PONG":
            return
        time.sleep(0.5)
    pytest.fail("redis did not answer PING after the restart")


def test_service_running_and_enabled(host):
    service = host.service("redis-server")
    assert service.is_running
    assert service.is_enabled


def test_container_dropin_relaxes_only_private_users(host):
    props = dict(
        line.split("=", 1)
        for line in host.check_output(
            "systemctl show redis-server --property "
            "PrivateUsers,ProtectSystem,NoNewPrivileges,PrivateTmp,PrivateDevices,"
            "RestrictNamespaces,MemoryDenyWriteExecute,DropInPaths"
        ).splitlines()
    )
    assert props["PrivateUsers"] == "no"
    assert DROPIN in props["DropInPaths"]
    # Debian's hardening stays in force.
    assert props["ProtectSystem"] == "strict"
    hardening = (
        "NoNewPrivileges",
        "PrivateTmp",
        "PrivateDevices",
        "RestrictNamespaces",
        "MemoryDenyWriteExecute",
    )
    for key in hardening:
        assert props[key] == "yes", key
    lines = host.file(DROPIN).content_string.splitlines()
    settings = [line for line in lines if line and not line.startswith(("#", "["))]
    assert settings == ["PrivateUsers=no"]


def test_listens_on_private_address_and_loopback_only(host, private_address):
    # (ss cannot name the owning process here: root in a container lacks CAP_SYS_PTRACE.)
    lines = host.check_output("ss -Hltn 'sport = :6379'").splitlines()
    listening = sorted(line.split()[3] for line in lines)
    assert listening == sorted([f"{private_address}:6379", "127.0.0.1:6379"])


def test_unauthenticated_ping_is_refused_on_loopback(host):
    out = cli(host, "PING", auth=False)
    assert "NOAUTH" in out.stdout + out.stderr


def test_wrong_password_is_refused(host):
    out = host.run("redis-cli --no-auth-warning -a not-the-password -h 127.0.0.1 PING")
    assert "WRONGPASS" in out.stdout + out.stderr


def test_authenticated_ping_answers(host, private_address):
    for address in ("127.0.0.1", private_address):
        assert cli(host, "PING", address=address).stdout.strip() == "PONG"


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("appendonly", "yes"),
        ("appendfsync", "everysec"),
        ("maxmemory", str(256 * 1024 * 1024)),
        ("maxmemory-policy", "volatile-lru"),
        ("tcp-backlog", "1024"),
        ("protected-mode", "yes"),
        ("save", "3600 1 300 100 60 10000"),
        ("dir", "/var/lib/redis"),
    ],
)
def test_running_config(host, name, value):
    assert cli(host, "CONFIG", "GET", name).stdout.splitlines() == [name, value]


def test_aof_is_written(host):
    info = cli(host, "INFO", "persistence").stdout
    assert "aof_enabled:1" in info
    assert "aof_last_write_status:ok" in info
    manifest = host.file("/var/lib/redis/appendonlydir/appendonly.aof.manifest")
    assert manifest.exists
    assert manifest.user == "redis"


@pytest.mark.parametrize("command", ["FLUSHALL", "FLUSHDB", "DEBUG SLEEP 0"])
def test_dangerous_commands_are_disabled(host, command):
    out = cli(host, command)
    assert "unknown command" in out.stdout + out.stderr


def test_config_command_stays_usable(host):
    assert cli(host, "CONFIG", "GET", "maxclients").stdout.splitlines() == ["maxclients", "10000"]


def test_password_kept_out_of_the_main_config(host):
    conf = host.file("/etc/redis/redis.conf")
    assert not re.search(r"^\s*requirepass", conf.content_string, re.MULTILINE)
    assert "include /etc/redis/redis-auth.conf" in conf.content_string
    auth = host.file("/etc/redis/redis-auth.conf")
    assert (auth.user, auth.group, auth.mode) == ("root", "redis", 0o640)


def test_data_survives_a_restart(host):
    assert cli(host, "SET", "molecule:restart", "kept").stdout.strip() == "OK"
    host.check_output("systemctl restart redis-server")
    wait_for_pong(host)
    assert cli(host, "GET", "molecule:restart").stdout.strip() == "kept"
    # The key stored before the failed bogus-policy change (converge) is still there.
    assert cli(host, "GET", "molecule:canary").stdout.strip() == "alive"


def test_validator_accepts_the_deployed_config_and_rejects_a_bad_one(host):
    assert host.run("clusterkit-redis-validate /etc/redis/redis.conf").rc == 0
    host.check_output(
        "sed 's/^maxmemory-policy .*/maxmemory-policy bogus/' /etc/redis/redis.conf"
        " > /tmp/bad-redis.conf"
    )
    bad = host.run("clusterkit-redis-validate /tmp/bad-redis.conf")
    assert bad.rc == 1
    assert "FATAL CONFIG FILE ERROR" in bad.stderr
    assert "maxmemory-policy bogus" in bad.stderr
