"""The shipped inventories parse, and the preflight play refuses bad ones before any host changes.

These run the real ansible-inventory / ansible-playbook; no host is contacted (the preflight
play only evaluates variables on the controller).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
GROUPS = ["lb", "app_master", "app_workers", "redis", "mongodb", "etcd", "loadgen"]


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=300)


INVENTORIES = ["inventory/lab", "inventory/example", "inventory/standalone", "inventory/trixie"]


@pytest.mark.parametrize("inventory", INVENTORIES)
def test_inventory_graph_has_every_group(inventory: str) -> None:
    result = run("ansible-inventory", "-i", inventory, "--graph")
    assert result.returncode == 0, result.stderr
    for group in GROUPS:
        assert f"@{group}:" in result.stdout


def test_lab_inventory_puts_every_host_in_group_lab() -> None:
    result = run("ansible-inventory", "-i", "inventory/lab", "--graph", "lab")
    assert result.returncode == 0, result.stderr
    for host in ["lb1", "app1", "app2", "data1", "data2", "data3"]:
        assert host in result.stdout


@pytest.mark.parametrize("playbook", ["site.yml", "playbooks/teardown.yml"])
@pytest.mark.parametrize("inventory", INVENTORIES)
def test_playbooks_pass_syntax_check(inventory: str, playbook: str) -> None:
    result = run("ansible-playbook", "-i", inventory, playbook, "--syntax-check")
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(
    "inventory", ["inventory/example", "inventory/standalone", "inventory/trixie"]
)
def test_preflight_accepts_the_shipped_inventories(inventory: str) -> None:
    result = run("ansible-playbook", "-i", inventory, "playbooks/preflight.yml")
    assert result.returncode == 0, result.stdout + result.stderr


def example() -> dict:
    return yaml.safe_load((ROOT / "inventory/example/hosts.yml").read_text())


def without_group(name: str) -> dict:
    inv = example()
    inv["all"]["children"][name]["hosts"] = {}
    return inv


def with_even_etcd() -> dict:
    inv = example()
    del inv["all"]["children"]["etcd"]["hosts"]["data3.example.internal"]
    return inv


def without_address() -> dict:
    inv = example()
    del inv["all"]["children"]["lb"]["hosts"]["lb1.example.internal"]["clusterkit_address"]
    return inv


def with_duplicate_address() -> dict:
    inv = example()
    workers = inv["all"]["children"]["app_workers"]["hosts"]
    workers["app2.example.internal"]["clusterkit_address"] = "10.0.0.21"
    return inv


def with_bad_type() -> dict:
    inv = example()
    inv["all"]["vars"]["common_nofile_limit"] = "plenty"
    return inv


def with_vars(**values: object) -> dict:
    inv = example()
    inv["all"]["vars"].update(values)
    return inv


def with_host_vars(host: str, group: str, **values: object) -> dict:
    inv = example()
    hosts = inv["all"]["children"][group]["hosts"]
    hosts[host] = {**(hosts[host] or {}), **values}
    return inv


def with_two_masters() -> dict:
    inv = example()
    inv["all"]["children"]["app_master"]["hosts"]["app2.example.internal"] = None
    return inv


def with_workers_of_an_unknown_node() -> dict:
    return with_host_vars("app2.example.internal", "app_workers", app_node_id="node2")


def with_lb_vars(**values: object) -> dict:
    inv = example()
    inv["all"]["children"]["lb"]["vars"].update(values)
    return inv


def without_vip() -> dict:
    inv = example()
    del inv["all"]["children"]["lb"]["vars"]
    return inv


def standalone_with_second_redis_host() -> dict:
    inv = yaml.safe_load((ROOT / "inventory/standalone/hosts.yml").read_text())
    children = inv["all"]["children"]
    children["lab"]["hosts"]["solo2"] = {"clusterkit_address": "10.78.0.11"}
    children["redis"]["hosts"]["solo2"] = None
    return inv


def with_one_lb_without_vip() -> dict:
    inv = without_vip()
    del inv["all"]["children"]["lb"]["hosts"]["lb2.example.internal"]
    return inv


def test_preflight_accepts_one_load_balancer_without_a_virtual_address(tmp_path: Path) -> None:
    path = tmp_path / "hosts.yml"
    path.write_text(yaml.safe_dump(with_one_lb_without_vip()))
    result = run("ansible-playbook", "-i", str(path), "playbooks/preflight.yml")
    assert result.returncode == 0, result.stdout + result.stderr


BAD = {
    "no-redis": (without_group("redis"), "Inventory group 'redis' has no hosts"),
    "no-master": (without_group("app_master"), "Inventory group 'app_master' has no hosts"),
    "even-etcd": (with_even_etcd(), "Inventory group 'etcd' has 2 hosts; use an odd number"),
    "no-address": (without_address(), "Host lb1.example.internal needs clusterkit_address"),
    "duplicate-address": (with_duplicate_address(), "clusterkit_address must be unique per host"),
    "bad-type": (with_bad_type(), "argument 'common_nofile_limit' is of type str"),
    "two-masters": (
        with_two_masters(),
        "Group app_master has 2 hosts for NODE_ID node1: app1.example.internal, "
        "app2.example.internal",
    ),
    "workers-without-master": (
        with_workers_of_an_unknown_node(),
        "Host app2.example.internal runs workers for NODE_ID node2 (app_node_id), but no host",
    ),
    "no-worker-hosts": (without_group("app_workers"), "Inventory group 'app_workers' has no hosts"),
    "zero-workers": (
        with_vars(app_workers_per_host=0),
        "No app worker would run: app_workers_per_host is 0 on every host of group app_workers",
    ),
    "unknown-balance": (
        with_vars(haproxy_balance="fastest"),
        "value of haproxy_balance must be one of: leastconn, roundrobin",
    ),
    "workers-on-grpc-port": (
        with_vars(app_worker_base_port=7000),
        "Port clash on app1.example.internal: port 7001 is used by the master gRPC port "
        "(app_master_grpc_port) and app worker 1 (app_worker_base_port 7000 + 1",
    ),
    "workers-on-health-port": (
        with_host_vars("app1.example.internal", "app_workers", app_master_health_port=8181),
        "port 8181 is used by the master health port (app_master_health_port) and app worker 1",
    ),
    "haproxy-on-nginx-port": (
        with_vars(haproxy_api_port=80),
        "Port clash on lb1.example.internal: port 80 is used by the HAProxy API frontend "
        "(haproxy_api_port) and nginx HTTP (nginx_http_port)",
    ),
    "stats-on-https-port": (
        with_vars(nginx_tls_enabled=True, haproxy_stats_port=443),
        "port 443 is used by the HAProxy stats page (haproxy_stats_port) and nginx HTTPS",
    ),
    "etcd-on-redis-port": (
        with_vars(etcd_peer_port=6379),
        "Port clash on data1.example.internal: port 6379 is used by Redis (redis_port) and etcd "
        "peers (etcd_peer_port)",
    ),
    "port-out-of-range": (
        with_vars(redis_port=70000),
        "redis_port=70000: a port is a whole number from 1 to 65535 on data1.example.internal",
    ),
    "port-zero": (
        with_host_vars("app1.example.internal", "app_workers", app_worker_base_port=0),
        "app_worker_base_port=0: a port is a whole number from 1 to 65535 on app1.example.internal",
    ),
    "count-zero": (
        with_host_vars("lb1.example.internal", "lb", haproxy_health_check_rise=0),
        "haproxy_health_check_rise=0: a count, size, limit or timeout is at least 1 on "
        "lb1.example.internal",
    ),
    "timeout-negative": (
        with_vars(redis_start_timeout=-5),
        "redis_start_timeout=-5: a count, size, limit or timeout is at least 1",
    ),
    "name-empty": (
        with_vars(mongodb_replset_name=""),
        'mongodb_replset_name="": a user, group, name or id is one non-empty word',
    ),
    "name-with-a-space": (
        with_vars(redis_sentinel_master_name="my primary"),
        'redis_sentinel_master_name="my primary": a user, group, name or id is one',
    ),
    "port-empty": (
        with_vars(etcd_client_port=""),
        "argument 'etcd_client_port' is of type str and we were unable to convert to int",
    ),
    "empty-redis-password": (
        with_vars(redis_password=""),
        "redis_password is set to an empty value for data1.example.internal",
    ),
    "empty-grpc-token": (
        with_host_vars("app2.example.internal", "app_workers", app_grpc_token=""),
        "app_grpc_token is set to an empty value for app2.example.internal",
    ),
    "empty-secrets-dir": (
        with_vars(clusterkit_secrets_dir=""),
        "The secrets directory '' (clusterkit_secrets_dir, or mongodb_secrets_dir for MongoDB) "
        "cannot hold the generated passwords",
    ),
    "firewall-unknown-group": (
        with_vars(redis_firewall_sources=["app_master", "app_wrokers"]),
        "redis_firewall_sources on data1.example.internal must be a list of inventory groups, "
        "addresses or networks, or `any`; not understood: ['app_wrokers']",
    ),
    "firewall-sources-not-a-list": (
        with_vars(firewall_management_sources="10.0.0.5"),
        "firewall_management_sources on lb1.example.internal must be a list",
    ),
    "two-lbs-without-vip": (
        without_vip(),
        "Group lb has 2 hosts (lb1.example.internal, lb2.example.internal) but "
        "keepalived_virtual_ipaddress is not set for lb1.example.internal, lb2.example.internal",
    ),
    "vip-outside-subnet": (
        with_lb_vars(keepalived_virtual_ipaddress="10.0.1.100"),
        "keepalived_virtual_ipaddress 10.0.1.100 of lb1.example.internal is not a free IPv4 "
        "address of the host's subnet 10.0.0.0/24 (clusterkit_address 10.0.0.10 with "
        "keepalived_vip_prefix 24)",
    ),
    "vip-outside-narrow-prefix": (
        with_lb_vars(keepalived_vip_prefix=28),
        "keepalived_virtual_ipaddress 10.0.0.100 of lb1.example.internal is not a free IPv4 "
        "address of the host's subnet 10.0.0.0/28",
    ),
    "vip-is-a-host-address": (
        with_lb_vars(keepalived_virtual_ipaddress="10.0.0.21"),
        "keepalived_virtual_ipaddress 10.0.0.21 of lb1.example.internal is not a free IPv4",
    ),
    "router-id-two-vips": (
        with_host_vars("lb2.example.internal", "lb", keepalived_virtual_ipaddress="10.0.0.101"),
        "Duplicate keepalived_virtual_router_id 51 on lb1.example.internal",
    ),
    "vip-two-router-ids": (
        with_host_vars("lb2.example.internal", "lb", keepalived_virtual_router_id=52),
        "hosts with address 10.0.0.100: lb1.example.internal, lb2.example.internal (ids 51, 52)",
    ),
    "router-id-reserved": (
        with_lb_vars(keepalived_reserved_router_ids=[50, 51]),
        "reserved by keepalived_reserved_router_ids: [50, 51]",
    ),
    "router-id-out-of-range": (
        with_lb_vars(keepalived_virtual_router_id=300),
        "Duplicate keepalived_virtual_router_id 300",
    ),
    "unknown-profile": (
        with_vars(clusterkit_profile="solo"),
        "clusterkit_profile=solo is not a profile: use `cluster` (the default) or `standalone`",
    ),
    "standalone-on-a-cluster": (
        with_vars(clusterkit_profile="standalone"),
        "clusterkit_profile=standalone needs exactly one host, in every group",
    ),
    "standalone-second-host": (
        standalone_with_second_redis_host(),
        "this inventory has hosts solo, solo2 and lb=solo, redis=solo+solo2, mongodb=solo",
    ),
    "lab-release-not-supported": (
        with_vars(lab_debian_suite="sid"),
        "lab_debian_suite must be one of: bookworm, trixie",
    ),
    "secrets-dir-is-a-file": (
        with_vars(clusterkit_secrets_dir="{{ inventory_dir }}/hosts.yml"),
        "/hosts.yml' (clusterkit_secrets_dir, or mongodb_secrets_dir for MongoDB) cannot hold",
    ),
}


@pytest.mark.parametrize(("inventory", "expected"), list(BAD.values()), ids=list(BAD))
def test_preflight_refuses_bad_inventories(tmp_path: Path, inventory: dict, expected: str) -> None:
    path = tmp_path / "hosts.yml"
    path.write_text(yaml.safe_dump(inventory))
    result = run("ansible-playbook", "-i", str(path), "site.yml")
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert expected in output
    # Nothing past the preflight ran: no lab, no host play.
    assert "PLAY [Lab" not in output
    assert "PLAY [Data" not in output


@pytest.mark.parametrize(
    ("group", "host", "variable", "app_variable"),
    [
        ("redis", "data1.example.internal", "redis_password", "app_redis_password"),
        ("mongodb", "data1.example.internal", "mongodb_app_password", "app_mongodb_password"),
        ("etcd", "data1.example.internal", "etcd_app_password", "app_etcd_password"),
    ],
)
def test_app_uses_the_password_the_inventory_gives_the_data_tier(
    tmp_path: Path, group: str, host: str, variable: str, app_variable: str
) -> None:
    path = tmp_path / "hosts.yml"
    path.write_text(yaml.safe_dump(with_host_vars(host, group, **{variable: "from-inventory"})))
    secrets = tmp_path / "secrets"

    def app_value(inventory: Path) -> str:
        result = run(
            "ansible", "-i", str(inventory), "app2.example.internal", "-m", "ansible.builtin.debug",
            "-a", f"var={app_variable}", "-e", "@roles/app/defaults/main.yml",
            "-e", f"clusterkit_secrets_dir={secrets}",
        )  # fmt: skip
        assert result.returncode == 0, result.stdout + result.stderr
        return result.stdout

    assert f'"{app_variable}": "from-inventory"' in app_value(path)
    # Without it in the inventory, the app reads the file the data role generates.
    path.write_text(yaml.safe_dump(example()))
    generated = (secrets / variable).read_text().split(" salt=")[0].strip()
    assert f'"{app_variable}": "{generated}"' in app_value(path)
