"""Hosts reached over SSH as an ordinary user who escalates with sudo (inventory/standalone,
inventory/trixie): a new SSH session still connects after the firewall is applied, the login
user is not root and owns nothing the deploy wrote, and a firewall change that would cut the
deploy's own SSH source is refused before it reaches the host. Skipped for inventories whose
hosts are reached with `docker exec` (the default lab)."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from tests.conftest import INVENTORY, ROOT, inventory, secret, templated_hostvar

HOSTVARS = inventory()["_meta"]["hostvars"]
SSH_HOSTS = sorted(h for h, v in HOSTVARS.items() if v.get("ansible_connection") == "ssh")

pytestmark = [
    pytest.mark.smoke,
    pytest.mark.skipif(not SSH_HOSTS, reason="no host of this inventory is reached over SSH"),
]


def ssh(host: str, command: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    """A new SSH session to host as the inventory's login user (its key, its pinned host key)."""
    key = templated_hostvar(host, "ansible_ssh_private_key_file")
    known_hosts = templated_hostvar(host, "lab_ssh_known_hosts")
    argv = [
        "ssh",
        "-i", key,
        "-o", f"UserKnownHostsFile={known_hosts}",
        "-o", "StrictHostKeyChecking=yes",
        "-o", "BatchMode=yes",
        "-o", "IdentitiesOnly=yes",
        "-o", "ConnectTimeout=10",
        f"{HOSTVARS[host]['ansible_user']}@{templated_hostvar(host, 'ansible_host')}",
        command,
    ]  # fmt: skip
    return subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=60)


def sudo(host: str, command: str) -> subprocess.CompletedProcess:
    """command as root through sudo: with the become password when the inventory sets one."""
    if "ansible_become_password" in HOSTVARS[host]:
        return ssh(host, f"sudo -S -p '' {command}", stdin=secret("become_password") + "\n")
    return ssh(host, f"sudo -n {command}")


@pytest.mark.parametrize("host", SSH_HOSTS)
def test_a_new_ssh_session_connects_after_the_firewall_is_applied(host: str) -> None:
    table = sudo(host, "nft list table inet clusterkit")
    assert table.returncode == 0, table.stderr
    assert "policy drop" in table.stdout, "the host firewall is not in place"
    assert f"dport {HOSTVARS[host].get('firewall_ssh_port', 22)}" in table.stdout


@pytest.mark.parametrize("host", SSH_HOSTS)
def test_the_login_user_is_not_root_and_owns_nothing_the_deploy_wrote(host: str) -> None:
    who = ssh(host, "id -u")
    assert who.returncode == 0, who.stderr
    assert who.stdout.strip() != "0"
    user = HOSTVARS[host]["ansible_user"]
    owned = sudo(host, f"find /etc /opt /srv /usr/local /var/lib -xdev -user {user}")
    assert owned.returncode == 0, owned.stderr
    assert owned.stdout.split() == []


@pytest.mark.parametrize("host", SSH_HOSTS)
def test_sudo_needs_the_password_where_the_inventory_sets_one(host: str) -> None:
    without = ssh(host, "sudo -n true")
    if "ansible_become_password" in HOSTVARS[host]:
        assert without.returncode != 0, "sudo let the login user in without its password"
        assert sudo(host, "true").returncode == 0
    else:
        assert without.returncode == 0, without.stderr


@pytest.mark.serial
def test_a_firewall_change_that_cuts_the_ssh_source_is_refused_and_ssh_still_connects() -> None:
    host = SSH_HOSTS[0]
    before = sudo(host, "nft list table inet clusterkit").stdout
    cut = {"firewall_ssh_sources": ["192.0.2.10/32"], "firewall_management_sources": []}
    env = dict(os.environ, ANSIBLE_FORCE_COLOR="0")
    run = subprocess.run(
        ["ansible-playbook", "-i", str(INVENTORY), "site.yml", "--tags", "firewall",
         "-e", json.dumps(cut)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    out = run.stdout + run.stderr
    assert run.returncode != 0, "the lockout was applied:\n" + out[-3000:]
    assert "lock this session" in out, out[-3000:]
    assert "firewall_ssh_sources" in out
    # Refused before the host changed: the rules in force are the ones from before.
    assert sudo(host, "nft list table inet clusterkit").stdout == before
    assert ssh(host, "true").returncode == 0
