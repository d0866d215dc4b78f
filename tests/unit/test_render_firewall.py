"""The host firewall's templates, rendered with the lab inventory's variables as the deploy
resolves them (role defaults, inventory, groups): who may reach which port of which host.

The rules are checked as text; `nft -c` checks them in the lab (the role's `validate:`), and
tests/lab/test_firewall.py checks what they let through with real connections.
"""

from __future__ import annotations

from typing import Any

import pytest

from pyinfra_deploy.templating import render
from pyinfra_deploy.variables import HostVars, World
from tests.unit._render import lab


@pytest.fixture(scope="module")
def world() -> World:
    return lab()


def rules_file(world: World, host: str, role: str, rules: Any = None) -> str:
    v = world[host]
    scoped = HostVars(
        world,
        host,
        {
            "firewall_rules_name": role,
            "firewall_rules": rules if rules is not None else v[f"{role}_firewall_rules"],
        },
    )
    return render("firewall/rules.nft.j2", scoped)


def rule_lines(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if "accept" in line]


def test_redis_and_sentinel_are_open_to_the_app_and_redis_hosts_only(world: World) -> None:
    members = "10.77.0.21, 10.77.0.22, 10.77.0.31, 10.77.0.32, 10.77.0.33"
    assert rule_lines(rules_file(world, "data1", "redis")) == [
        f'ip saddr {{ {members} }} tcp dport 6379 accept comment "redis"',
        f'ip saddr {{ {members} }} tcp dport 26379 accept comment "redis-sentinel"',
    ]


def test_mongodb_is_open_to_the_members_and_the_app_hosts(world: World) -> None:
    assert rule_lines(rules_file(world, "data2", "mongodb")) == [
        "ip saddr { 10.77.0.21, 10.77.0.22, 10.77.0.31, 10.77.0.32, 10.77.0.33 } "
        'tcp dport 27017 accept comment "mongodb"'
    ]


def test_etcd_peers_are_members_only(world: World) -> None:
    assert rule_lines(rules_file(world, "data3", "etcd")) == [
        "ip saddr { 10.77.0.21, 10.77.0.22, 10.77.0.31, 10.77.0.32, 10.77.0.33 } "
        'tcp dport 2379 accept comment "etcd clients"',
        "ip saddr { 10.77.0.31, 10.77.0.32, 10.77.0.33 } "
        'tcp dport 2380 accept comment "etcd peers"',
    ]


def test_app_workers_open_to_the_lb_and_the_master_to_the_workers(world: World) -> None:
    master_host = rule_lines(rules_file(world, "app1", "app"))
    assert master_host == [
        'ip saddr { 10.77.0.10, 10.77.0.11 } tcp dport { 8180, 8181 } accept comment "app workers"',
        'ip saddr { 10.77.0.21, 10.77.0.22 } tcp dport 7001 accept comment "app master gRPC"',
    ]
    # A host without the master opens no gRPC port.
    assert rule_lines(rules_file(world, "app2", "app")) == master_host[:1]


def test_front_end_public_ports_are_open_and_stats_closed(world: World) -> None:
    assert rule_lines(rules_file(world, "lb1", "nginx")) == [
        'tcp dport { 80, 443 } accept comment "nginx"'
    ]
    haproxy = rules_file(world, "lb1", "haproxy")
    assert rule_lines(haproxy) == [
        'ip saddr { 10.77.0.10, 10.77.0.11 } tcp dport 8000 accept comment "haproxy api"'
    ]
    assert "# haproxy stats: no source in the inventory, nothing allowed" in haproxy


def test_sources_of_every_kind(world: World) -> None:
    rules = [
        {"name": "mixed", "ports": [5], "from": ["fd00::7", "lb", "192.0.2.0/24", "lb"]},
        {"name": "udp any", "ports": [53], "proto": "udp", "from": ["any", "lb"]},
        {"name": "every port", "from": ["10.1.2.3"]},
        {"name": "empty group", "ports": [5557], "from": ["loadgen"]},
    ]
    text = rules_file(world, "lb1", "custom", rules)
    assert rule_lines(text) == [
        'ip saddr { 10.77.0.10, 10.77.0.11, 192.0.2.0/24 } tcp dport 5 accept comment "mixed"',
        'ip6 saddr { fd00::7 } tcp dport 5 accept comment "mixed"',
        'udp dport 53 accept comment "udp any"',
        'ip saddr { 10.1.2.3 } accept comment "every port"',
    ]
    assert "# empty group: no source in the inventory, nothing allowed" in text


def test_base_drops_input_and_manages_only_its_own_table(world: World) -> None:
    text = render("firewall/nftables.conf.j2", world["data1"])
    assert "policy drop;" in text
    assert "flush ruleset" not in text
    assert text.index("table inet clusterkit\ndelete table inet clusterkit\n") < text.index(
        "policy drop"
    )
    assert 'include "/etc/nftables.d/*.nft"' in text
    assert "log prefix" not in text
    logged = render("firewall/nftables.conf.j2", world["data1"], firewall_log_dropped=True)
    assert logged.index("jump allowed") < logged.index('log prefix "clusterkit-drop: "')


def test_the_lab_lets_the_controller_in(world: World) -> None:
    scoped = HostVars(
        world,
        "data1",
        {
            "firewall_rules_name": "00-base",
            "firewall_rules": [
                {"name": "management", "from": world["data1"]["firewall_management_sources"]}
            ],
        },
    )
    assert rule_lines(render("firewall/rules.nft.j2", scoped)) == [
        'ip saddr { 10.77.0.1 } accept comment "management"'
    ]


def test_vrrp_is_open_between_the_load_balancers_only(world: World) -> None:
    # keepalived's adverts are IP protocol 112 (no ports): from the other LB hosts only.
    assert rule_lines(rules_file(world, "lb1", "keepalived")) == [
        'ip saddr { 10.77.0.10, 10.77.0.11 } meta l4proto vrrp accept comment "keepalived vrrp"'
    ]
