"""Replication and Sentinel on three hosts: one primary and two replicas, three Sentinels that
agree, authentication on both ports, and a failover when the primary dies and stays down,
after which the old primary rejoins as a replica and a rerun of the role changes nothing.

The tests run in file order and build on each other (the failover moves the primary)."""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
import time

import pytest
import testinfra

NAMES = ["redis-1", "redis-2", "redis-3"]
ADDRESS = {"redis-1": "10.93.0.11", "redis-2": "10.93.0.12", "redis-3": "10.93.0.13"}
MASTER = "clusterkit"
REDIS, SENTINEL = 6379, 26379
# Only the first instance runs these tests; they act on all three (docker exec: fast).
testinfra_hosts = [f"docker://{NAMES[0]}"]

# Passwords stay on the hosts: the shell reads them from the role's file into REDISCLI_AUTH.
PASSWORD_KEY = {REDIS: "password", SENTINEL: "sentinel_password"}


def node(name: str):
    return testinfra.get_host(f"docker://{name}")


def cli(name: str, port: int, *args: str, on: str | None = None, auth: bool = True) -> str:
    """redis-cli run on `name` against `on`'s private address (default: its own)."""
    env = (
        f"REDISCLI_AUTH=\"$(sed -n 's/^{PASSWORD_KEY[port]}=//p' /etc/redis/clusterkit-ha.conf)\" "
        if auth
        else ""
    )
    out = node(name).run(
        f"{env}redis-cli --no-auth-warning -h {ADDRESS[on or name]} -p {port} {' '.join(args)}"
    )
    return out.stdout + out.stderr


def info(name: str) -> dict[str, str]:
    text = cli(name, REDIS, "INFO", "replication")
    return dict(line.split(":", 1) for line in text.splitlines() if ":" in line)


def sentinel_master(name: str) -> dict[str, str]:
    """SENTINEL MASTER as a dict (redis-cli prints the flat field/value list one per line)."""
    lines = cli(name, SENTINEL, "SENTINEL", "MASTER", MASTER).splitlines()
    return dict(zip(lines[::2], lines[1::2], strict=False))


def sentinel_primary(name: str) -> str:
    return ":".join(cli(name, SENTINEL, "SENTINEL", "GET-MASTER-ADDR-BY-NAME", MASTER).split())


def wait_for(check, timeout: float, what: str) -> float:
    """Poll `check` (returns an error text, or None when satisfied); seconds it took."""
    start = time.monotonic()
    while True:
        problem = check()
        if problem is None:
            return time.monotonic() - start
        if time.monotonic() - start > timeout:
            pytest.fail(f"{what} not within {timeout} s: {problem}")
        time.sleep(0.5)


def group_problem(primary: str) -> str | None:
    """None when `primary` is the only primary with the two others linked to it."""
    roles = {n: info(n) for n in NAMES}
    if roles[primary].get("role") != "master" or roles[primary].get("connected_slaves") != "2":
        return f"{primary}: {roles[primary]}"
    for n in NAMES:
        if n == primary:
            continue
        r = roles[n]
        want = {"role": "slave", "master_host": ADDRESS[primary], "master_link_status": "up"}
        if any(r.get(k) != v for k, v in want.items()):
            return f"{n}: {r}"
    return None


def sentinels_problem(primary: str) -> str | None:
    """None when every Sentinel names `primary` and sees 2 replicas and 2 other Sentinels."""
    for n in NAMES:
        state = sentinel_master(n)
        want = {
            "ip": ADDRESS[primary],
            "flags": "master",
            "num-slaves": "2",
            "num-other-sentinels": "2",
            "quorum": "2",
        }
        if any(state.get(k) != v for k, v in want.items()):
            return f"{n}: {state}"
    return None


def current_primary() -> str:
    masters = [n for n in NAMES if info(n).get("role") == "master"]
    assert len(masters) == 1, masters
    return masters[0]


def test_one_primary_and_two_replicas_with_link_up() -> None:
    wait_for(lambda: group_problem(current_primary()), 30, "two replicas linked to the primary")


def test_a_write_reaches_both_replicas_and_replicas_refuse_writes() -> None:
    primary = current_primary()
    assert cli(primary, REDIS, "SET", "molecule:replicated", "yes").strip() == "OK"
    assert cli(primary, REDIS, "WAIT", "2", "5000").strip() == "2"
    for n in NAMES:
        if n != primary:
            assert cli(n, REDIS, "GET", "molecule:replicated").strip() == "yes"
            assert "READONLY" in cli(n, REDIS, "SET", "molecule:replicated", "no")


def test_three_sentinels_agree_on_the_primary_and_see_the_group() -> None:
    primary = current_primary()
    wait_for(lambda: sentinels_problem(primary), 30, "Sentinels agreeing")


@pytest.mark.parametrize(
    ("port", "command"), [(REDIS, "GET molecule:replicated"), (SENTINEL, "SENTINEL MASTERS")]
)
def test_unauthenticated_commands_are_refused_from_a_neighbour(port: int, command: str) -> None:
    for i, target in enumerate(NAMES):
        neighbour = NAMES[(i + 1) % len(NAMES)]
        for cmd in ("PING", command):
            out = cli(neighbour, port, cmd, on=target, auth=False)
            assert "NOAUTH" in out, (target, port, cmd, out)
        # ...and answered with the password, so the refusal is authentication, not reachability.
        assert cli(neighbour, port, "PING", on=target).strip() == "PONG", (target, port)


def test_a_dead_primary_is_failed_over_and_rejoins_as_a_replica() -> None:
    old = current_primary()
    assert cli(old, REDIS, "SET", "molecule:before-failover", "kept").strip() == "OK"
    assert cli(old, REDIS, "WAIT", "2", "5000").strip() == "2"
    others = [n for n in NAMES if n != old]
    # SIGKILL, then stop: systemd's restart of a killed redis-server (Restart=always) would
    # bring it back before down-after-milliseconds (3000) and nothing would fail over.
    node(old).check_output("systemctl kill -s SIGKILL redis-server; systemctl stop redis-server")

    def promoted() -> str | None:
        views = {n: sentinel_primary(n) for n in others}
        new = set(views.values())
        if len(new) == 1 and new != {f"{ADDRESS[old]}:{REDIS}"}:
            return None
        return str(views)

    took = wait_for(promoted, 20, "Sentinel promoting a replica")
    new = next(n for n in others if sentinel_primary(others[0]) == f"{ADDRESS[n]}:{REDIS}")
    print(f"failover took {took:.1f} s: {old} -> {new}")
    assert info(new)["role"] == "master"
    assert cli(new, REDIS, "GET", "molecule:before-failover").strip() == "kept"

    # Restored, the old primary starts as a replica of the new one (clusterkit-redis-ha
    # asks the Sentinels), and the group is whole again around the new primary.
    node(old).check_output("systemctl start redis-server")
    wait_for(lambda: group_problem(new), 30, f"{old} rejoining as a replica of {new}")
    assert cli(old, REDIS, "GET", "molecule:before-failover").strip() == "kept"
    wait_for(lambda: sentinels_problem(new), 30, "Sentinels agreeing on the new primary")


def test_a_rerun_after_the_failover_changes_nothing_and_keeps_the_new_primary() -> None:
    primary = current_primary()
    # The converge play without the rejected-config check (its canary write needs redis-1 to
    # be the primary).
    with tempfile.NamedTemporaryFile("w", suffix=".yml", delete=False) as play:
        play.write("- hosts: redis\n  roles: [common, redis]\n")
    run = subprocess.run(
        ["ansible-playbook", "-i", os.environ["MOLECULE_INVENTORY_FILE"], play.name],
        capture_output=True,
        text=True,
        timeout=900,
    )
    os.unlink(play.name)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]
    changed = {
        m.group(1): int(m.group(2))
        for m in re.finditer(r"^(\S+)\s+: ok=\d+\s+changed=(\d+)", run.stdout, re.M)
    }
    assert set(changed) == set(NAMES), run.stdout[-2000:]
    assert not any(changed.values()), changed
    assert current_primary() == primary
    assert group_problem(primary) is None
