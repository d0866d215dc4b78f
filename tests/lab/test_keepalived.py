"""The load balancers' virtual address (keepalived): exactly one LB holds it, it answers through
nginx -> HAProxy -> a worker, both LBs' HAProxy balance over every worker, and it moves to the
other LB when nginx stops on its holder (or the holder's container stops), without moving back
when the old holder returns (no flapping). Every test leaves both LBs serving.

Runs only when the inventory has two or more LB hosts with a virtual address on a lab network
that exists on this machine (tests.conftest.virtual_address); traffic goes to the lab only.
The failover times are written to results/keepalived.json."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest
import requests

from tests.conftest import (
    ROOT,
    address,
    group_hosts,
    lab_container,
    secret,
    testinfra_host,
    virtual_address,
    worker_names,
)

VIP = virtual_address()
LBS = group_hosts("lb")
FAILOVER_BOUND_S = 15.0  # generous: about 3 s are expected (2 failed checks + takeover)
STAY_S = 10.0  # how long the address must stay put after the old holder is back
RESULTS = ROOT / "results" / "keepalived.json"

pytestmark = pytest.mark.skipif(
    VIP is None or len(LBS) < 2,
    reason="no virtual address of two or more LBs on a lab network of this machine",
)


def lb(name: str):
    return testinfra_host(name)


def holders() -> list[str]:
    out = []
    for name in LBS:
        result = lb(name).run(f"ip -4 -o addr show to {VIP}/32")
        if result.rc == 0 and f" {VIP}/" in result.stdout:
            out.append(name)
    return out


def vip_serves(timeout: float = 1.0) -> bool:
    try:
        return requests.get(f"http://{VIP}/", timeout=timeout).status_code == 200
    except requests.RequestException:
        return False


def wait_for_holder(name: str, timeout: float) -> float:
    """Seconds until `name` is the only holder and the VIP answers (fails after timeout)."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if holders() == [name] and vip_serves():
            return time.monotonic() - start
        time.sleep(0.1)
    pytest.fail(f"{name} did not take over {VIP} within {timeout} s (holders: {holders()})")


def assert_stays_on(name: str, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert holders() == [name], f"{VIP} moved: holders {holders()}, expected {name}"
        time.sleep(0.5)


def lb_stats(name: str) -> dict[str, str]:
    r = requests.get(
        f"http://{address(name)}:8404/;csv",
        auth=("admin", secret("haproxy_stats_password")),
        timeout=5,
    )
    r.raise_for_status()
    rows = [line.split(",") for line in r.text.splitlines() if line and line[0] != "#"]
    return {row[1]: row[17] for row in rows if row[0] == "app_workers" and row[1] != "BACKEND"}


def record(name: str, seconds: float) -> None:
    data = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    data[name] = {"seconds": round(seconds, 2), "measured": time.strftime("%Y-%m-%dT%H:%M:%SZ")}
    Path(RESULTS).write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def healthy(name: str, timeout: float = 120) -> None:
    """Wait until nginx, HAProxy and keepalived run on `name` and its check passes."""
    host = lb(name)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        r = host.run(
            "systemctl is-active nginx haproxy keepalived && /etc/keepalived/check-frontend.sh"
        )
        if r.rc == 0:
            return
        time.sleep(0.5)
    pytest.fail(f"{name}: nginx, haproxy, keepalived not all healthy after {timeout} s")


@pytest.fixture(autouse=True)
def both_lbs_serving():
    for name in LBS:
        healthy(name)
    deadline = time.monotonic() + 30
    while len(holders()) != 1 and time.monotonic() < deadline:
        time.sleep(0.5)
    yield
    for name in LBS:
        if (
            subprocess.run(["docker", "start", lab_container(name)], capture_output=True).returncode
            != 0
        ):
            pytest.fail(f"could not start the container of {name}")
        lb(name).run("systemctl start nginx haproxy keepalived")
    for name in LBS:
        healthy(name)


def test_exactly_one_lb_holds_the_virtual_address() -> None:
    assert len(holders()) == 1, holders()


def test_the_virtual_address_answers_through_nginx_haproxy_and_a_worker() -> None:
    r = requests.post(f"http://{VIP}/api/requests", json={"payload": {"vip": True}}, timeout=30)
    assert r.status_code == 200, r.text
    assert r.headers["X-Worker-Id"] in worker_names()
    assert requests.get(f"http://{VIP}:8404/;csv", timeout=5).status_code == 401  # stats ask


def test_every_lb_balances_over_every_worker() -> None:
    for name in LBS:
        assert lb_stats(name) == {w: "UP" for w in worker_names()}, name


def test_keepalived_runs_vrrp_only_with_its_secret_kept_private() -> None:
    for name in LBS:
        host = lb(name)
        assert host.service("keepalived").is_running
        assert host.service("keepalived").is_enabled
        conf = host.file("/etc/keepalived/keepalived.conf")
        assert conf.mode == 0o600
        assert conf.user == "root"
        assert "--vrrp" in host.check_output(
            "cat /proc/$(pidof -s keepalived)/cmdline | tr '\\0' ' '"
        )
        assert "meta l4proto vrrp" in host.check_output("nft list chain inet clusterkit allowed")


@pytest.mark.serial
def test_failover_when_nginx_stops_and_no_move_back() -> None:
    first = holders()[0]
    other = next(n for n in LBS if n != first)
    start = time.monotonic()
    lb(first).run("systemctl stop nginx")
    taken = wait_for_holder(other, FAILOVER_BOUND_S)
    seconds = time.monotonic() - start
    print(f"VIP failover after nginx stopped on {first}: {seconds:.2f} s")
    record("nginx_stopped_failover", seconds)
    assert taken < FAILOVER_BOUND_S
    # The old holder comes back: its check passes again, and the address stays where it is.
    lb(first).run("systemctl start nginx")
    healthy(first)
    assert_stays_on(other, STAY_S)
    assert vip_serves()


@pytest.mark.serial
def test_failover_when_the_holder_stops_and_no_move_back() -> None:
    first = holders()[0]
    other = next(n for n in LBS if n != first)
    start = time.monotonic()
    stop = subprocess.Popen(["docker", "stop", lab_container(first)], stdout=subprocess.DEVNULL)
    wait_for_holder(other, FAILOVER_BOUND_S + 10)
    seconds = time.monotonic() - start
    stop.wait(timeout=60)
    print(f"VIP failover after docker stop of {first}: {seconds:.2f} s")
    record("holder_stopped_failover", seconds)
    assert seconds < FAILOVER_BOUND_S
    subprocess.run(["docker", "start", lab_container(first)], check=True, capture_output=True)
    healthy(first)
    assert_stays_on(other, STAY_S)
    assert vip_serves()
