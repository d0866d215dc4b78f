"""pyinfra inventory generated from the Ansible inventory ($CLUSTERKIT_INVENTORY, default
inventory/lab), via `ansible-inventory --list`: one pyinfra group per Ansible group, the same
host names (`inventory_hostname` in the host data). Hosts that Ansible reaches with the
community.docker.docker connection (the lab) use pyinfra's @docker connector on the container
named by ansible_host; every other host uses SSH (ansible_host, ansible_port, ansible_user).

    pyinfra -y pyinfra_deploy/inventory.py pyinfra_deploy/deploy.py
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pyinfra_deploy.variables import ansible_inventory, groups_of, inventory_path  # noqa: E402

DOCKER_CONNECTIONS = {"community.docker.docker", "docker"}


def _target(name: str, hostvars: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    data: dict[str, Any] = {"inventory_hostname": name}
    address = str(hostvars.get("ansible_host", name))
    if hostvars.get("ansible_connection") in DOCKER_CONNECTIONS:
        return f"@docker/{address}", data
    if hostvars.get("ansible_connection") == "local":
        return "@local", data
    data["ssh_hostname"] = address
    if "ansible_port" in hostvars:
        data["ssh_port"] = int(hostvars["ansible_port"])
    if "ansible_user" in hostvars:
        data["ssh_user"] = hostvars["ansible_user"]
        if hostvars["ansible_user"] != "root":
            data["_sudo"] = True
    if "ansible_ssh_private_key_file" in hostvars:
        data["ssh_key"] = hostvars["ansible_ssh_private_key_file"]
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
