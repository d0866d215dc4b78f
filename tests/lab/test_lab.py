"""The lab hosts are real systemd machines, built as the README says (never --privileged)."""

from __future__ import annotations

import ipaddress

import docker
import pytest

from tests.conftest import address, group_hosts, hostvar, inventory, lab_container, setting

LAB_HOSTS = group_hosts("lab")


def lab_network() -> str:
    return str(setting(LAB_HOSTS[0], "lab_network_name"))


def test_docker_hands_out_addresses_away_from_the_fixed_ones(client) -> None:
    # Docker's own range (lab_ip_range) holds no host's address and not the virtual address.
    ipam = client.networks.get(lab_network()).attrs["IPAM"]["Config"][0]
    dynamic = ipaddress.ip_network(ipam["IPRange"])
    fixed = [address(h) for h in LAB_HOSTS]
    vip = hostvar(group_hosts("lb")[0], "keepalived_virtual_ipaddress")
    assert all(ipaddress.ip_address(a) not in dynamic for a in [*fixed, vip])


@pytest.fixture(scope="module")
def client() -> docker.DockerClient:
    return docker.from_env()


def container(client: docker.DockerClient, host: str):
    # By name: another lab instance (another inventory) has containers with the same host label.
    c = client.containers.get(lab_container(host))
    assert c.labels.get("io.clusterkit.host") == host, c.labels
    return c


def test_lab_has_the_default_hosts() -> None:
    assert sorted(LAB_HOSTS) == ["app1", "app2", "data1", "data2", "data3", "lb1", "lb2", "mon1"]


@pytest.mark.smoke
@pytest.mark.parametrize("host", LAB_HOSTS)
def test_container_runs_systemd_without_privileges(client, host: str) -> None:
    c = container(client, host)
    assert c.status == "running"
    config = c.attrs["HostConfig"]
    assert config["Privileged"] is False
    # SYS_ADMIN for systemd, NET_ADMIN for the host firewall (and keepalived's address),
    # NET_RAW on the load balancers for VRRP, nothing else.
    wanted = {"SYS_ADMIN", "NET_ADMIN"} | ({"NET_RAW"} if host in group_hosts("lb") else set())
    assert {cap.removeprefix("CAP_") for cap in config["CapAdd"]} == wanted
    assert config["CgroupnsMode"] == "host"
    exit_code, out = c.exec_run(["ps", "-o", "comm=", "-p", "1"])
    assert exit_code == 0
    assert out.decode().strip() == "systemd"
    exit_code, out = c.exec_run(["systemctl", "is-system-running"])
    assert out.decode().strip() in {"running", "degraded"}


@pytest.mark.parametrize("host", LAB_HOSTS)
def test_container_has_its_fixed_address(client, host: str) -> None:
    c = container(client, host)
    networks = c.attrs["NetworkSettings"]["Networks"]
    network = lab_network()
    assert networks[network]["IPAMConfig"]["IPv4Address"] == address(host)
    exit_code, out = c.exec_run(["hostname"])
    assert out.decode().strip() == host


def test_only_the_load_balancer_publishes_ports_and_only_on_loopback(client) -> None:
    for host in LAB_HOSTS:
        ports = container(client, host).attrs["HostConfig"]["PortBindings"] or {}
        bindings = [b for binds in ports.values() for b in binds or []]
        # What the inventory publishes (lb1: 8080, 8443, 8404 in the default lab), nothing else;
        # only load balancers publish anything.
        published = inventory()["_meta"]["hostvars"][host].get("lab_published_ports", [])
        inventory_ports = {str(p).split(":")[1] for p in published}
        assert {b["HostPort"] for b in bindings} == inventory_ports
        assert host in group_hosts("lb") or bindings == []
        assert all(b["HostIp"] == "127.0.0.1" for b in bindings)
