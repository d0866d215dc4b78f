"""Verify the exporters and monitoring roles on one monitoring host: Prometheus and Alertmanager
run on the private address only, Prometheus scrapes its node exporter, the deployed configs
pass promtool and amtool, and the alert rules pass their unit tests with the host's promtool."""

import json
import time

import pytest

testinfra_hosts = ["ansible://monitoring"]


@pytest.fixture(scope="module")
def address(host):
    route = host.check_output("ip -4 route get 1.1.1.1")
    return route.split(" src ")[1].split()[0]


def api(host, url: str) -> dict:
    """GET url on the host (its python3: the bare host image has no curl), as JSON."""
    get = (
        "import sys, urllib.request; "
        "print(urllib.request.urlopen(sys.argv[1], timeout=5).read().decode())"
    )
    return json.loads(host.check_output(f"python3 -c '{get}' '{url}'"))


@pytest.mark.parametrize(
    "unit", ["prometheus", "prometheus-alertmanager", "prometheus-node-exporter"]
)
def test_units_run(host, unit) -> None:
    assert host.service(unit).is_running
    assert host.service(unit).is_enabled


def test_prometheus_and_alertmanager_listen_on_the_private_address_only(host, address) -> None:
    listening = host.check_output(
        "ss -Hltn '( sport = :9090 or sport = :9093 or sport = :9094 or sport = :9100 )'"
        " | awk '{print $4}' | sort"
    ).split()
    assert listening == [f"{address}:9090", f"{address}:9093", f"{address}:9100"]


def test_prometheus_scrapes_its_node_exporter(host, address) -> None:
    # The role's targets carry a `host` label. Debian's package starts Prometheus with its own
    # example config (job node on localhost:9100) before the role's replaces it; a restart
    # leaves no staleness marker, so that target's last `up` of 0 stays visible for the
    # 5-minute lookback: not one of the role's targets.
    url = f"http://{address}:9090/api/v1/query?query=up%7Bhost%21%3D%22%22%7D"
    deadline = time.monotonic() + 120
    while True:
        result = api(host, url)["data"]["result"]
        up = {r["metric"]["job"]: r["value"][1] for r in result}
        if set(up.values()) == {"1"} or time.monotonic() > deadline:
            break
        time.sleep(1)
    errors = {
        t["labels"]["job"]: t.get("lastError", "")
        for t in api(host, f"http://{address}:9090/api/v1/targets")["data"]["activeTargets"]
    }
    assert up == {"node": "1", "prometheus": "1", "alertmanager": "1"}, errors
    result = api(host, f"http://{address}:9090/api/v1/query?query=node_load1")["data"]["result"]
    assert result[0]["metric"]["host"] == "monitoring-1"


def test_the_alert_rules_are_loaded(host, address) -> None:
    groups = api(host, f"http://{address}:9090/api/v1/rules")["data"]["groups"]
    names = {r["name"] for g in groups for r in g["rules"]}
    assert {"InstanceDown", "EtcdNoLeader", "RedisNoPrimary", "DiskNearlyFull"} <= names


def test_the_alert_rules_pass_their_unit_tests(host) -> None:
    out = host.run("cd /root/rules-test && promtool test rules clusterkit.rules.test.yml")
    assert out.rc == 0, out.stdout + out.stderr
    assert "SUCCESS" in out.stdout


def test_the_deployed_configs_pass_their_checks(host) -> None:
    assert host.run("promtool check config /etc/prometheus/prometheus.yml").rc == 0
    assert host.run("amtool check-config /etc/prometheus/alertmanager.yml").rc == 0


def test_the_haproxy_password_is_for_prometheus_only(host) -> None:
    secret = host.file("/etc/prometheus/secrets/haproxy_stats_password")
    assert secret.user == "root"
    assert secret.group == "prometheus"
    assert secret.mode == 0o640
