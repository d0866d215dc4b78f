"""pyinfra inventory generated from the Ansible inventory ($CLUSTERKIT_INVENTORY, default
inventory/lab), via `ansible-inventory --list`: one pyinfra group per Ansible group, the same
host names (`inventory_hostname` in the host data). Hosts that Ansible reaches with the
community.docker.docker connection (the lab) use pyinfra's @docker connector on the container
named by ansible_host; every other host uses SSH (ansible_host, ansible_port, ansible_user,
ansible_ssh_private_key_file, the known_hosts file of lab_ssh_known_hosts, rendered like
Ansible renders them) and, for a login user other than root, sudo (with
ansible_become_password when the inventory sets one).

    pyinfra -y pyinfra_deploy/inventory.py pyinfra_deploy/deploy.py
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pyinfra_deploy.variables import (  # noqa: E402
    ansible_inventory,
    groups_of,
    inventory_path,
    world,
)

DOCKER_CONNECTIONS = {"community.docker.docker", "docker"}


def _target(name: str, hostvars: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    data: dict[str, Any] = {"inventory_hostname": name}
    if hostvars.get("ansible_connection") in DOCKER_CONNECTIONS:
        return f"@docker/{hostvars.get('ansible_host', name)}", data
    if hostvars.get("ansible_connection") == "local":
        return "@local", data
    v = world()[name]
    data["ssh_hostname"] = str(v["ansible_host"]) if "ansible_host" in hostvars else name
    if "ansible_port" in hostvars:
        data["ssh_port"] = int(v["ansible_port"])
    if "ansible_user" in hostvars:
        data["ssh_user"] = str(v["ansible_user"])
        if data["ssh_user"] != "root":
            data["_sudo"] = True
            if "ansible_become_password" in hostvars:
                data["_sudo_password"] = str(v["ansible_become_password"])
    if "ansible_ssh_private_key_file" in hostvars:
        data["ssh_key"] = str(v["ansible_ssh_private_key_file"])
    if "lab_ssh_known_hosts" in hostvars:
        # Host keys pinned by the lab (roles/lab/tasks/ssh.yml): nothing is trusted on first use.
        data["ssh_known_hosts_file"] = str(v["lab_ssh_known_hosts"])
        data["ssh_strict_host_key_checking"] = "yes"
    return name, data


def _groups() -> dict[str, list[tuple[str, dict[str, Any]]]]:
    inventory = ansible_inventory(inventory_path())
    hostvars = inventory["_meta"]["hostvars"]
    out: dict[str, list[tuple[str, dict[str, Any]]]] = {}
    for group, hosts in groups_of(inventory).items():
        if group in ("all", "ungrouped") or not hosts:
            continue
        out[group] = [_target(h, hostvars.get(h, {})) for h in hosts]
    return out


_GROUPS = _groups()
globals().update(_GROUPS)
# Hosts in no group at all still get deployed (the common role).
clusterkit_all = [
    _target(h, hv)
    for h, hv in ansible_inventory(inventory_path())["_meta"]["hostvars"].items()
    if h != "localhost"
]
