"""Monitoring of the deployed lab (roles/exporters, roles/monitoring, docs/monitoring.md):
Prometheus scrapes every target the inventory implies, the exporters answer the monitoring
hosts only, and an alert fires for real: a stopped worker reaches Alertmanager's API as
InstanceDown within ALERT_BOUND_S and is resolved within RESOLVE_BOUND_S of its restart.

The controller reaches Prometheus and Alertmanager on the monitoring host's private address
(the controller is a management source of the host firewall).
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.parse
import urllib.request

import pytest

from tests import conftest
from tests.conftest import ROOT, address, group_hosts, setting, worker_ports
from tests.lab.test_firewall import connect_from

MONITORING = group_hosts("monitoring")
pytestmark = pytest.mark.skipif(not MONITORING, reason="no monitoring hosts in the inventory")

# Scrape and rule evaluation every 5 s, InstanceDown `for: 10s`: an alert is firing 10-20 s
# after the target stops answering, and Prometheus sends it to Alertmanager at once. The bounds
# leave room for a busy 2-vCPU machine; docs/monitoring.md states them.
ALERT_BOUND_S = 45
RESOLVE_BOUND_S = 30
RESULTS = ROOT / "results" / "monitoring-alert.json"


def prometheus() -> str:
    host = MONITORING[0]
    return f"http://{address(host)}:{int(setting(host, 'monitoring_prometheus_port'))}"


def alertmanager() -> str:
    host = MONITORING[0]
    return f"http://{address(host)}:{int(setting(host, 'monitoring_alertmanager_port'))}"


def get_json(url: str) -> dict | list:
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.load(response)


def targets() -> list[dict]:
    return get_json(f"{prometheus()}/api/v1/targets?state=active")["data"]["activeTargets"]


def query(expr: str) -> list[dict]:
    url = f"{prometheus()}/api/v1/query?query={urllib.parse.quote(expr)}"
    return get_json(url)["data"]["result"]


def active_alerts(name: str) -> list[dict]:
    flt = urllib.parse.quote(f'alertname="{name}"')
    return get_json(f"{alertmanager()}/api/v2/alerts?active=true&filter={flt}")


def expected_targets() -> set[tuple[str, str]]:
    """(job, host:port) of every target the inventory implies (the node exporters aside)."""
    out = set()
    for h in group_hosts("lb"):
        out |= {("haproxy", f"{address(h)}:8404"), ("nginx", f"{address(h)}:9113")}
    for h in group_hosts("redis"):
        out.add(("redis", f"{address(h)}:9121"))
    for h in group_hosts("etcd"):
        out.add(("etcd", f"{address(h)}:{int(setting(h, 'etcd_client_port'))}"))
    for h in group_hosts("app_master"):
        out.add(("app-master", f"{address(h)}:{int(setting(h, 'app_master_health_port'))}"))
    for h in group_hosts("app_workers"):
        out |= {("app-worker", f"{address(h)}:{p}") for p in worker_ports(h)}
    for h in MONITORING:
        out |= {("prometheus", f"{address(h)}:9090"), ("alertmanager", f"{address(h)}:9093")}
    return out


def wait_all_up(seconds: float) -> list[dict]:
    deadline = time.monotonic() + seconds
    while True:
        current = targets()
        down = [t for t in current if t["health"] != "up"]
        if not down or time.monotonic() > deadline:
            return current
        time.sleep(1)


@pytest.mark.smoke
def test_prometheus_has_every_target_up() -> None:
    current = wait_all_up(30)
    found = {(t["labels"]["job"], t["labels"]["instance"]) for t in current}
    hosts = set(group_hosts("lab")) | {
        h for g in ("lb", "redis", "mongodb") for h in group_hosts(g)
    }
    node_hosts = {t["labels"]["host"] for t in current if t["labels"]["job"] == "node"}
    assert hosts <= node_hosts, f"no node exporter scraped on {sorted(hosts - node_hosts)}"
    missing = expected_targets() - found
    assert not missing, f"targets the inventory implies that Prometheus does not scrape: {missing}"
    down = [(t["labels"]["job"], t["labels"]["instance"], t["lastError"]) for t in current]
    down = [d for d, t in zip(down, current, strict=True) if t["health"] != "up"]
    assert not down, f"targets not up: {down}"


def test_the_rules_are_loaded_and_the_mongodb_probe_reports_every_member() -> None:
    groups = get_json(f"{prometheus()}/api/v1/rules")["data"]["groups"]
    alerts = {r["name"] for g in groups for r in g["rules"] if r["type"] == "alerting"}
    assert {"InstanceDown", "HAProxyBackendServersDown", "EtcdNoLeader"} <= alerts
    members = len(group_hosts("mongodb"))
    deadline = time.monotonic() + 30
    while True:
        healthy = query("clusterkit_mongodb_member_healthy == 1")
        if len(healthy) == members * members or time.monotonic() > deadline:
            break
        time.sleep(1)
    # Every member's probe reports every member healthy.
    assert len(healthy) == members * members, healthy
    assert len(query("clusterkit_mongodb_member_state == 1")) == members  # one primary, seen by all
    assert query("etcd_server_has_leader == 0") == []


def test_exporters_answer_the_monitoring_hosts_only() -> None:
    data, lb, mon = group_hosts("redis")[0], group_hosts("lb")[0], MONITORING[0]
    ports = [(address(data), 9100), (address(data), 9121), (address(lb), 9113)]
    assert set(connect_from(mon, ports).values()) == {"open"}
    outsider = group_hosts("app_workers")[-1]
    assert set(connect_from(outsider, ports).values()) == {"dropped"}
    # Prometheus and Alertmanager: the monitoring hosts and the management sources only.
    ui = [(address(mon), 9090), (address(mon), 9093)]
    assert set(connect_from(outsider, ui).values()) == {"dropped"}


def test_prometheus_and_alertmanager_listen_on_the_private_address_only() -> None:
    host = conftest.testinfra_host(MONITORING[0])
    listening = host.check_output(
        "ss -Hltn '( sport = :9090 or sport = :9093 )' | awk '{print $4}'"
    )
    assert sorted(listening.split()) == [
        f"{address(MONITORING[0])}:9090",
        f"{address(MONITORING[0])}:9093",
    ]


def test_nginx_stub_status_stays_on_loopback() -> None:
    lb = group_hosts("lb")[0]
    try:
        urllib.request.urlopen(f"http://{address(lb)}/nginx_status", timeout=5)
        status = 200
    except urllib.error.HTTPError as error:
        status = error.code
    assert status == 403
    rate = query(f'nginx_connections_accepted{{host="{lb}"}}')
    assert rate, "the nginx exporter reads stub_status on loopback"


def wait_for(predicate, seconds: float, step: float = 0.5) -> float | None:
    """Seconds until predicate() is true, or None after `seconds`."""
    start = time.monotonic()
    while time.monotonic() - start < seconds:
        if predicate():
            return time.monotonic() - start
        time.sleep(step)
    return None


@pytest.mark.serial
def test_a_stopped_worker_fires_instance_down_and_it_resolves() -> None:
    host = group_hosts("app_workers")[-1]
    port = worker_ports(host)[-1]
    instance = f"{address(host)}:{port}"
    unit = f"clusterkit-worker@{port}.service"
    box = conftest.testinfra_host(host)

    def firing() -> bool:
        return any(a["labels"].get("instance") == instance for a in active_alerts("InstanceDown"))

    # A test before this one may have restarted workers: start from every target up and no
    # alert for this worker left.
    wait_all_up(60)
    assert wait_for(lambda: not firing(), 60) is not None, f"InstanceDown for {instance} active"

    def haproxy_firing() -> bool:
        return len(active_alerts("HAProxyBackendServersDown")) >= len(group_hosts("lb"))

    fired = haproxy = None
    try:
        box.check_output(f"systemctl stop {unit}")
        stopped = time.monotonic()
        # Both alerts polled side by side: seconds from the stop until each is in Alertmanager.
        while time.monotonic() - stopped < ALERT_BOUND_S and (fired is None or haproxy is None):
            if fired is None and firing():
                fired = time.monotonic() - stopped
            if haproxy is None and haproxy_firing():
                haproxy = time.monotonic() - stopped
            time.sleep(0.5)
        alert = [a for a in active_alerts("InstanceDown") if a["labels"]["instance"] == instance]
    finally:
        box.check_output(f"systemctl start {unit}")
    started = time.monotonic()
    resolved = wait_for(lambda: not firing(), RESOLVE_BOUND_S)
    resolved_in = None if resolved is None else time.monotonic() - started
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(
        json.dumps(
            {
                "stopped": unit,
                "host": host,
                "instance_down_in_alertmanager_s": None if fired is None else round(fired, 1),
                "haproxy_servers_down_in_alertmanager_s": None
                if haproxy is None
                else round(haproxy, 1),
                "resolved_after_restart_s": None if resolved_in is None else round(resolved_in, 1),
                "bounds_s": {"fire": ALERT_BOUND_S, "resolve": RESOLVE_BOUND_S},
                "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            },
            indent=2,
        )
        + "\n"
    )
    assert fired is not None, (
        f"InstanceDown for {instance} not in Alertmanager after {ALERT_BOUND_S} s"
    )
    assert alert[0]["labels"]["job"] == "app-worker"
    assert alert[0]["labels"]["server"] == f"{host}-{port}"
    assert alert[0]["status"]["state"] == "active"
    assert haproxy is not None, "HAProxyBackendServersDown did not reach Alertmanager from every LB"
    assert resolved is not None, (
        f"InstanceDown for {instance} still active {RESOLVE_BOUND_S} s after the restart"
    )
    # The lab as it was: the worker serving and UP in HAProxy, every target up.
    assert box.service(unit).is_running
    assert wait_for(lambda: not active_alerts("HAProxyBackendServersDown"), 60) is not None
    assert all(t["health"] == "up" for t in wait_all_up(30))


def test_the_console_renders() -> None:
    with urllib.request.urlopen(f"{prometheus()}/consoles/clusterkit.html", timeout=10) as r:
        page = r.read().decode()
    assert "clusterkit API" in page
    assert "Throughput per worker" in page
