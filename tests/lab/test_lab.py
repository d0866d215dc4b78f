"""The lab hosts are real systemd machines, built as the README says (never --privileged)."""

from __future__ import annotations

import docker
import pytest

from tests.conftest import address, group_hosts, hostvar
from tests.lab._published import network_name, published

LAB_HOSTS = group_hosts("lab")


@pytest.fixture(scope="module")
def client() -> docker.DockerClient:
    return docker.from_env()


def container(client: docker.DockerClient, host: str):
    # By name: another lab instance (another inventory) has containers with the same host label.
    c = client.containers.get(hostvar(host, "ansible_host"))
    assert c.labels.get("io.clusterkit.host") == host, c.labels
    return c


def test_lab_has_the_default_hosts() -> None:
    assert sorted(LAB_HOSTS) == ["app1", "app2", "data1", "data2", "data3", "lb1"]


@pytest.mark.smoke
@pytest.mark.parametrize("host", LAB_HOSTS)
def test_container_runs_systemd_without_privileges(client, host: str) -> None:
    c = container(client, host)
    assert c.status == "running"
    config = c.attrs["HostConfig"]
    assert config["Privileged"] is False
    # SYS_ADMIN for systemd, NET_ADMIN for the host firewall, nothing else.
    assert {cap.removeprefix("CAP_") for cap in config["CapAdd"]} == {"SYS_ADMIN", "NET_ADMIN"}
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
    assert networks[network_name()]["IPAMConfig"]["IPv4Address"] == address(host)
    exit_code, out = c.exec_run(["hostname"])
    assert out.decode().strip() == host


def test_only_the_load_balancer_publishes_ports_and_only_on_loopback(client) -> None:
    for host in LAB_HOSTS:
        ports = container(client, host).attrs["HostConfig"]["PortBindings"] or {}
        bindings = [b for binds in ports.values() for b in binds or []]
        if host in group_hosts("lb"):
            assert {b["HostPort"] for b in bindings} >= {
                published(port).rsplit(":", 1)[1] for port in (80, 443, 8404)
            }
        else:
            assert bindings == []
        assert all(b["HostIp"] == "127.0.0.1" for b in bindings)
