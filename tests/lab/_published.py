"""Where the lab publishes the front end's ports on the controller (lab_published_ports of the
first lb host, "127.0.0.1:HOSTPORT:CONTAINERPORT"), so the tests reach the lab under test
(CLUSTERKIT_INVENTORY), not whichever lab holds the default ports."""

from __future__ import annotations

from tests.conftest import group_hosts, inventory

DEFAULT_HOST_PORTS = {80: 8080, 443: 8443, 8404: 8404}


def published(container_port: int) -> str:
    """host:port on the controller for container_port of the first lb host."""
    lb = group_hosts("lb")[0]
    for entry in inventory()["_meta"]["hostvars"][lb].get("lab_published_ports", []):
        parts = str(entry).split(":")
        if len(parts) == 3 and int(parts[2]) == container_port:
            return f"{parts[0]}:{parts[1]}"
    return f"127.0.0.1:{DEFAULT_HOST_PORTS.get(container_port, container_port)}"


def network_name() -> str:
    """The lab's Docker network (lab_network_name, default clusterkit-lab)."""
    lab = group_hosts("lab")
    hostvars = inventory()["_meta"]["hostvars"]
    return hostvars[lab[0]].get("lab_network_name", "clusterkit-lab") if lab else "clusterkit-lab"
