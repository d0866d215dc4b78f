"""Verify the firewall role with two real containers: what reaches the server, not what the
rule files say. The server listens on 8080-8082; its rules let the client reach 8080 only."""

import json
import os
import re
import shlex

import pytest
import testinfra

testinfra_hosts = ["ansible://fw_server"]

PORTS = (8080, 8081, 8082)
CONNECT = """
import json, socket, sys
out = {}
for port in (8080, 8081, 8082):
    try:
        socket.create_connection((sys.argv[1], port), timeout=2).close()
        out[port] = "open"
    except ConnectionRefusedError:
        out[port] = "refused"
    except OSError:
        out[port] = "dropped"
print(json.dumps(out))
"""


def address(host) -> str:
    route = host.check_output("ip -4 route get 1.1.1.1")
    return re.search(r"\bsrc (\S+)", route).group(1)


@pytest.fixture(scope="module")
def client():
    inventory = os.environ["MOLECULE_INVENTORY_FILE"]
    return testinfra.get_host(f"ansible://firewall-client?ansible_inventory={inventory}")


@pytest.fixture(scope="module")
def listening(host):
    for port in PORTS:
        host.run(
            f"systemctl is-active -q probe-{port} || systemd-run --unit probe-{port} "
            f"python3 -m http.server {port} --bind 0.0.0.0"
        )
    for port in PORTS:
        host.run(f"timeout 10 sh -c 'until ss -Hltn | grep -q :{port}; do sleep 0.2; done'")
    return address(host)


def answers(source, target: str) -> dict[str, str]:
    return json.loads(source.check_output(f"python3 -c {shlex.quote(CONNECT)} {target}"))


def test_nftables_runs_and_drops_by_default(host):
    assert host.service("nftables").is_running
    assert host.service("nftables").is_enabled
    assert "policy drop;" in host.check_output("nft list table inet clusterkit")


def test_the_client_reaches_only_the_port_opened_to_it(host, client, listening):
    assert answers(client, listening) == {"8080": "open", "8081": "dropped", "8082": "dropped"}


def test_the_server_reaches_itself(host, listening):
    assert answers(host, listening) == {"8080": "open", "8081": "open", "8082": "open"}


def test_restart_keeps_the_rules_and_other_tables(host, client, listening):
    host.check_output("nft add table ip other-tool")
    host.check_output("systemctl restart nftables")
    assert host.run("nft list table ip other-tool").rc == 0, "a restart flushed another table"
    host.check_output("nft delete table ip other-tool")
    assert answers(client, listening)["8081"] == "dropped"
