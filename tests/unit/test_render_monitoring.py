"""The monitoring configs of the lab inventory, rendered and checked with the tools the
monitoring host runs: promtool (check config, check rules, test rules) and amtool
(check-config), from Debian's packages via scripts/promtool.py (downloaded into .cache/ on
first use, nothing installed).

The variables are the lab's as the pyinfra engine resolves them (role defaults and vars over the
inventory); tests/unit/test_render_equivalence.py proves Ansible renders the same bytes.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pyinfra_deploy.templating import render
from tests.unit._render import lab

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "roles" / "monitoring" / "files" / "rules"
sys.path.insert(0, str(ROOT / "scripts"))
import promtool as promtool_script  # noqa: E402

pytestmark = pytest.mark.xdist_group("promtool")


@pytest.fixture(scope="module")
def tools() -> Path:
    return promtool_script.tools_dir()


@pytest.fixture(scope="module")
def world():
    return lab()


def run(tool: Path, *args: str, cwd: Path | None = None) -> str:
    done = subprocess.run([str(tool), *args], capture_output=True, text=True, cwd=cwd)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout + done.stderr


def test_the_alert_rules_pass_promtool_check(tools: Path) -> None:
    out = run(tools / "promtool", "check", "rules", str(RULES / "clusterkit.rules.yml"))
    assert "SUCCESS" in out


def test_the_alert_rules_pass_their_unit_tests(tools: Path) -> None:
    out = run(tools / "promtool", "test", "rules", "clusterkit.rules.test.yml", cwd=RULES)
    assert "SUCCESS" in out


def test_every_alert_has_a_unit_test() -> None:
    rules = yaml.safe_load((RULES / "clusterkit.rules.yml").read_text())
    tests = yaml.safe_load((RULES / "clusterkit.rules.test.yml").read_text())
    alerts = {r["alert"] for g in rules["groups"] for r in g["rules"] if "alert" in r}
    tested = {
        t["alertname"]
        for case in tests["tests"]
        for t in case.get("alert_rule_test", [])
        if t.get("exp_alerts")
    }
    assert alerts == tested, f"alerts without a firing test: {sorted(alerts - tested)}"


def prometheus_config(world) -> dict:
    return yaml.safe_load(render("monitoring/prometheus.yml.j2", world["mon1"]))


def test_targets_come_from_the_inventory(world) -> None:
    config = prometheus_config(world)
    jobs = {
        job["job_name"]: [(sc["targets"][0], sc["labels"]["host"]) for sc in job["static_configs"]]
        for job in config["scrape_configs"]
    }
    hosts = sorted(h for h in world if h != "localhost")
    assert [h for _, h in jobs["node"]] == hosts
    assert ("10.77.0.22:8181", "app2") in jobs["app-worker"]
    assert len(jobs["app-worker"]) == 4
    assert jobs["app-master"] == [("10.77.0.21:7002", "app1")]
    data = ["10.77.0.31", "10.77.0.32", "10.77.0.33"]
    assert [t for t, _ in jobs["redis"]] == [f"{a}:9121" for a in data]
    assert [t for t, _ in jobs["etcd"]] == [f"{a}:2379" for a in data]
    assert [t for t, _ in jobs["haproxy"]] == ["10.77.0.10:8404", "10.77.0.11:8404"]
    assert [t for t, _ in jobs["nginx"]] == ["10.77.0.10:9113", "10.77.0.11:9113"]
    haproxy = next(j for j in config["scrape_configs"] if j["job_name"] == "haproxy")
    secret = "/etc/prometheus/secrets/haproxy_stats_password"
    assert haproxy["basic_auth"]["password_file"] == secret
    assert config["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"] == [
        "10.77.0.40:9093"
    ]
    assert config["rule_files"] == ["/etc/prometheus/rules/*.yml"]


def test_prometheus_and_alertmanager_configs_pass_their_checks(
    tools: Path, world, tmp_path: Path
) -> None:
    text = render("monitoring/prometheus.yml.j2", world["mon1"])
    # The rendered file names the host's paths; point them at copies here for the check.
    (tmp_path / "secret").write_text("x")
    (tmp_path / "rules").mkdir()
    (tmp_path / "rules" / "clusterkit.rules.yml").write_text(
        (RULES / "clusterkit.rules.yml").read_text()
    )
    text = text.replace("/etc/prometheus/secrets/haproxy_stats_password", str(tmp_path / "secret"))
    text = text.replace("/etc/prometheus/rules/", str(tmp_path / "rules") + "/")
    (tmp_path / "prometheus.yml").write_text(text)
    out = run(tools / "promtool", "check", "config", str(tmp_path / "prometheus.yml"))
    assert "SUCCESS" in out
    assert "1 rule files found" in out
    (tmp_path / "alertmanager.yml").write_text(
        render("monitoring/alertmanager.yml.j2", world["mon1"])
    )
    run(tools / "amtool", "check-config", str(tmp_path / "alertmanager.yml"))


def test_prometheus_and_alertmanager_listen_on_the_private_address_only(world) -> None:
    args = world["mon1"]["monitoring__prometheus_args"]
    assert "--web.listen-address=10.77.0.40:9090" in args
    am = world["mon1"]["monitoring__alertmanager_args"]
    assert "--web.listen-address=10.77.0.40:9093" in am
    # One monitoring host: no cluster listener at all (Alertmanager's default is 0.0.0.0:9094).
    assert "--cluster.listen-address=" in am


def test_exporters_bind_privately_and_open_their_ports_to_the_monitoring_hosts_only(world) -> None:
    lb = world["lb1"]
    assert "-web.listen-address=10.77.0.10:9113" in lb["exporters__nginx_args"]
    assert "-nginx.scrape-uri=http://127.0.0.1:80/nginx_status" in lb["exporters__nginx_args"]
    assert lb["exporters__firewall_ports"] == [8404, 9100, 9113]
    assert world["data1"]["exporters__firewall_ports"] == [2379, 9100, 9121]
    assert world["app1"]["exporters__firewall_ports"] == [7002, 8180, 8181, 9100]
    assert world["mon1"]["exporters__firewall_ports"] == [9100]
    for host in ("lb1", "data1", "app2", "mon1"):
        assert world[host]["exporters__firewall_rules"][0]["from"] == ["monitoring"]
    units = [u["unit"] for u in world["data1"]["exporters__units"]]
    assert units == [
        "prometheus-node-exporter",
        "prometheus-redis-exporter",
        "clusterkit-mongodb-metrics",
    ]


def test_the_secrets_go_to_root_only_files(world) -> None:
    text = render(
        "monitoring/default.j2",
        world["data1"],
        monitoring_default_unit="prometheus-redis-exporter.service",
        monitoring_default_args=["-a"],
        monitoring_default_env={"REDIS_PASSWORD": "p4ss"},
    )
    assert 'REDIS_PASSWORD="p4ss"' in text
    assert 'ARGS="-a"' in text
    configure = (ROOT / "roles" / "exporters" / "tasks" / "configure.yml").read_text()
    assert "'0600' if item.env" in configure
