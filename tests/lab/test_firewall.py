"""The host firewall (roles/firewall) of the deployed lab, tested with real connections between
the lab hosts.

- Every host runs nftables with table `inet clusterkit`: input dropped unless allowed.
- Each service port answers the tiers that need it and nobody else: a connection from a host
  outside the tier gets no answer at all (dropped), one from inside connects.
- The controller (a management source) is never locked out: every other lab test connects
  from it.
- Only the clusterkit table is managed: Docker's embedded DNS in the containers (its NAT rules
  live in the same network namespace) keeps working, also after nftables.service restarts.

Run after `ansible-playbook site.yml`: `python -m pytest tests/lab/test_firewall.py`.
"""

from __future__ import annotations

import json
import shlex

import pytest

from tests.conftest import (
    address,
    group_hosts,
    lab_container,
    setting,
    testinfra_host,
    worker_ports,
)

HOSTS = group_hosts("lab")

# Runs on a lab host with its own python3: one TCP connect per target, printed as
# {"addr:port": "open" | "refused" | "dropped"}. A dropped SYN times out; refused means the
# packet got through and nothing listens there.
CONNECT = r"""
import json, socket, sys
out = {}
for host, port in json.loads(sys.argv[1]):
    try:
        socket.create_connection((host, port), timeout=float(sys.argv[2])).close()
        out[f"{host}:{port}"] = "open"
    except ConnectionRefusedError:
        out[f"{host}:{port}"] = "refused"
    except OSError:
        out[f"{host}:{port}"] = "dropped"
print(json.dumps(out))
"""


def lab(name: str):
    return testinfra_host(name)


def connect_from(source: str, targets: list[tuple[str, int]], timeout: float = 2.0) -> dict:
    host = lab(source)
    out = host.check_output(
        f"python3 -c {shlex.quote(CONNECT)} {shlex.quote(json.dumps(targets))} {timeout}"
    )
    return dict(json.loads(out))


def ports_of(tier: str) -> list[tuple[str, int]]:
    """The service ports of a tier, on every host of it."""
    out: list[tuple[str, int]] = []
    for h in group_hosts(tier):
        if tier == "redis":
            out.append((address(h), int(setting(h, "redis_port"))))
            if len(group_hosts("redis")) >= 3:  # Sentinel on each
                out.append((address(h), int(setting(h, "redis_sentinel_port"))))
        elif tier == "mongodb":
            out.append((address(h), int(setting(h, "mongodb_port"))))
        elif tier == "etcd":
            out.append((address(h), int(setting(h, "etcd_client_port"))))
            out.append((address(h), int(setting(h, "etcd_peer_port"))))
        elif tier == "app_workers":
            out += [(address(h), p) for p in worker_ports(h)]
        elif tier == "app_master":
            out.append((address(h), int(setting(h, "app_master_grpc_port"))))
    return out


def outsider(*tiers: str) -> str:
    """A lab host in none of the tiers."""
    inside = {h for t in tiers for h in group_hosts(t)}
    others = [h for h in HOSTS if h not in inside]
    if not others:
        pytest.skip(f"every lab host is in {tiers}")
    return others[0]


pytestmark = pytest.mark.skipif(not HOSTS, reason="no lab hosts in the inventory")


@pytest.mark.smoke
@pytest.mark.parametrize("name", HOSTS)
def test_every_host_drops_input_unless_allowed(name: str) -> None:
    host = lab(name)
    assert host.service("nftables").is_running
    assert host.service("nftables").is_enabled
    ruleset = host.check_output("nft list table inet clusterkit")
    assert "hook input priority filter; policy drop;" in ruleset
    assert "jump allowed" in ruleset


# (tier whose ports are probed, tiers allowed to reach them)
ALLOWED = {
    "redis": ["redis", "app_master", "app_workers"],  # replication, Sentinels
    "mongodb": ["mongodb", "app_master", "app_workers"],
    "etcd": ["etcd"],  # the peer port is for members only; clients below
    "app_workers": ["lb"],
    "app_master": ["app_workers"],
}


@pytest.mark.parametrize("tier", sorted(ALLOWED))
def test_a_host_outside_the_tiers_that_need_it_gets_no_answer(tier: str) -> None:
    source = outsider(tier, *ALLOWED[tier])
    answers = connect_from(source, ports_of(tier))
    assert answers, f"no ports of {tier}"
    through = {k: v for k, v in answers.items() if v != "dropped"}
    assert not through, f"{source} (not in {ALLOWED[tier]}) reached {tier}: {through}"


@pytest.mark.parametrize(
    ("tier", "source_tier"),
    [
        ("redis", "app_workers"),
        ("redis", "redis"),
        ("mongodb", "app_workers"),
        ("mongodb", "mongodb"),
        ("etcd", "etcd"),
        ("app_workers", "lb"),
        ("app_master", "app_workers"),
    ],
)
def test_the_tiers_that_need_a_port_reach_it(tier: str, source_tier: str) -> None:
    source = group_hosts(source_tier)[-1]
    targets = [t for t in ports_of(tier) if t[0] != address(source)]
    answers = connect_from(source, targets)
    assert answers, f"no ports of {tier} on another host than {source}"
    assert set(answers.values()) == {"open"}, f"from {source}: {answers}"


@pytest.mark.smoke
def test_app_hosts_reach_the_etcd_client_port_but_not_the_peer_port() -> None:
    members = group_hosts("etcd")
    apps = [h for h in group_hosts("app_workers") + group_hosts("app_master") if h not in members]
    if not apps:
        pytest.skip("no app host outside group etcd")
    source = apps[0]
    client = [(address(h), int(setting(h, "etcd_client_port"))) for h in members]
    peer = [(address(h), int(setting(h, "etcd_peer_port"))) for h in members]
    answers = connect_from(source, client + peer)
    assert {answers[f"{a}:{p}"] for a, p in client} == {"open"}, answers
    assert {answers[f"{a}:{p}"] for a, p in peer} == {"dropped"}, answers


def test_the_public_ports_of_the_load_balancer_are_open_to_every_tier() -> None:
    lb = group_hosts("lb")[0]
    source = outsider("lb")
    port = int(setting(lb, "nginx_http_port"))
    assert connect_from(source, [(address(lb), port)]) == {f"{address(lb)}:{port}": "open"}


def test_stats_page_is_closed_to_other_tiers() -> None:
    lb = group_hosts("lb")[0]
    source = outsider("lb")
    port = int(setting(lb, "haproxy_stats_port"))
    assert connect_from(source, [(address(lb), port)]) == {f"{address(lb)}:{port}": "dropped"}


@pytest.mark.serial
def test_docker_dns_survives_a_firewall_restart() -> None:
    name = HOSTS[0]
    host = lab(name)
    peer = lab_container(HOSTS[-1])
    assert host.run(f"getent hosts {shlex.quote(peer)}").rc == 0
    host.check_output("systemctl restart nftables")
    assert host.service("nftables").is_running
    assert "policy drop" in host.check_output("nft list table inet clusterkit")
    resolved = host.run(f"getent hosts {shlex.quote(peer)}")
    assert resolved.rc == 0, f"container DNS broken after a firewall restart: {resolved.stderr}"
