"""keepalived on two hosts: one holds the virtual address, the tracked check moves it when the
front end (a stand-in HTTP server on port 80) stops on the holder, and it does not move back
when the front end returns (nopreempt). The scenario's network is its own (10.91.0.0/24)."""

from __future__ import annotations

import os
import time

import pytest
import testinfra

VIP = "10.91.0.100"
NAMES = ["keepalived-1", "keepalived-2"]
# Only the first instance runs the tests; they act on both.
testinfra_hosts = [f"ansible://{NAMES[0]}"]


def node(name: str):
    return testinfra.get_host(
        f"ansible://{name}?ansible_inventory={os.environ['MOLECULE_INVENTORY_FILE']}"
    )


def holders() -> list[str]:
    return [n for n in NAMES if f" {VIP}/" in node(n).run(f"ip -4 -o addr show to {VIP}/32").stdout]


def wait_holders(want: list[str], timeout: float) -> float:
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if holders() == want:
            return time.monotonic() - start
        time.sleep(0.2)
    pytest.fail(f"holders of {VIP}: {holders()}, expected {want} within {timeout} s")


def test_keepalived_runs_with_a_private_config() -> None:
    for name in NAMES:
        host = node(name)
        assert host.service("keepalived").is_running
        conf = host.file("/etc/keepalived/keepalived.conf")
        assert conf.mode == 0o600
        assert "auth_type PASS" in conf.content_string
        assert "nopreempt" in conf.content_string
        validate = "/usr/local/sbin/clusterkit-keepalived-validate"
        assert host.run(f"{validate} /etc/keepalived/keepalived.conf").rc == 0
        assert host.user("keepalived_script").exists


def test_exactly_one_host_holds_the_address() -> None:
    wait_holders(holders()[:1] or ["?"], 15)
    assert len(holders()) == 1, holders()


def test_the_address_serves_from_the_other_host() -> None:
    first = holders()[0]
    other = next(n for n in NAMES if n != first)
    assert node(other).check_output(f"curl -s --max-time 2 http://{VIP}/") == first


def test_failover_on_a_stopped_front_end_and_no_move_back() -> None:
    first = holders()[0]
    other = next(n for n in NAMES if n != first)
    node(first).run("systemctl stop stub-frontend")
    try:
        seconds = wait_holders([other], 15)
        print(f"failover after the front end stopped on {first}: {seconds:.1f} s")
        assert node(first).check_output(f"curl -s --max-time 2 http://{VIP}/") == other
    finally:
        node(first).run("systemctl start stub-frontend")
    # The old holder's check passes again (rise 2); the address stays on the other host.
    time.sleep(6)
    assert holders() == [other]
