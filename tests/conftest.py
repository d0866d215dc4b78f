"""Shared fixtures: the deployed inventory, its host variables and generated secrets."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from functools import cache
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "loadtests"))
sys.path.insert(0, str(ROOT / "scripts"))
# ansible-playbook, ansible-inventory and locust from the venv that runs pytest, also when the
# venv is not on PATH (`.venv/bin/python -m pytest`).
import _venv  # noqa: E402

_venv.interpreter_bin_first()

# Where clients reach the deployed front end and HAProxy's stats (LOCUST_HOST and
# CLUSTERKIT_STATS_URL win; then the LBs' virtual address when its lab network exists here;
# then the first LB's published 127.0.0.1 ports), as the load tests do.
import _lab  # noqa: E402
from _lab import front_end_url, stats_url, virtual_address  # noqa: E402

__all__ = ["front_end_url", "stats_url", "virtual_address"]


def stats_base_url() -> str:
    """HAProxy's stats frontend (stats_url() without its /stats;csv path)."""
    return stats_url().removesuffix("/stats;csv").rstrip("/")


INVENTORY = Path(os.environ.get("CLUSTERKIT_INVENTORY", ROOT / "inventory" / "lab"))


def inventory() -> dict:
    """`ansible-inventory --list` of the inventory under test (group vars merged, not templated)."""
    if not (ROOT / INVENTORY).is_dir():
        raise pytest.UsageError(f"CLUSTERKIT_INVENTORY={INVENTORY}: no such inventory directory")
    return _lab.inventory()


def group_hosts(group: str) -> list[str]:
    return list(inventory().get(group, {}).get("hosts", []))


def hostvar(host: str, name: str):
    return inventory()["_meta"]["hostvars"][host][name]


@cache
def templated_hostvar(host: str, name: str, default: str = "") -> str:
    """A host variable templated the way Ansible does (`ansible-inventory --list` leaves
    templates such as ansible_host: "{{ clusterkit_address }}" as they are)."""
    from ansible.inventory.manager import InventoryManager
    from ansible.parsing.dataloader import DataLoader
    from ansible.template import Templar
    from ansible.vars.manager import VariableManager

    loader = DataLoader()
    manager = InventoryManager(loader=loader, sources=[str(INVENTORY)])
    variables = VariableManager(loader=loader, inventory=manager).get_vars(
        host=manager.get_host(host)
    )
    return str(Templar(loader=loader, variables=variables).template(variables.get(name, default)))


def lab_container(host: str) -> str:
    """The Docker container of a lab host: lab_container_name (hosts reached over SSH), else
    its ansible_host (hosts reached with `docker exec`), as roles/lab names them."""
    names = inventory()["_meta"]["hostvars"][host]
    if "lab_container_name" in names:
        return str(names["lab_container_name"])
    return templated_hostvar(host, "ansible_host", host)


def inventory_name(host) -> str:
    """The inventory name of a Testinfra host (its container's host, for a lab container)."""
    name = host.backend.get_hostname()
    return {lab_container(h): h for h in group_hosts("lab")}.get(name, name)


@pytest.fixture(scope="module")
def host(_testinfra_host):
    """Testinfra's `host` (modules with testinfra_hosts = ["ansible://<group>"]), but lab hosts
    reached as testinfra_host() reaches them: Testinfra's own ansible backend reads the
    inventory untemplated, so it cannot follow an SSH inventory's templated settings."""
    name = _testinfra_host.backend.get_hostname()
    return testinfra_host(name) if name in group_hosts("lab") else _testinfra_host


def testinfra_host(host: str):
    """Testinfra host: `docker exec` into the container of a lab host (as root, the way a
    console would look at the machine), Ansible with become for any other host."""
    import testinfra

    if host in group_hosts("lab"):
        return testinfra.get_host(f"docker://{lab_container(host)}")
    return testinfra.get_host(
        f"ansible://{host}?ansible_inventory={INVENTORY}&force_ansible=True", sudo=True
    )


# Its name starts with "test": pytest would collect it in every module that imports it.
testinfra_host.__test__ = False  # type: ignore[attr-defined]


@cache
def role_defaults(role: str) -> dict:
    return yaml.safe_load((ROOT / "roles" / role / "defaults" / "main.yml").read_text()) or {}


def setting(host: str, name: str):
    """A role variable as deployed on host: the inventory's value, else the role's default
    (the role is the variable's prefix: app_workers_per_host -> roles/app)."""
    try:
        return hostvar(host, name)
    except KeyError:
        return role_defaults(name.split("_", 1)[0])[name]


def worker_ports(host: str) -> list[int]:
    """The ports of the app workers deployed on host."""
    base = int(setting(host, "app_worker_base_port"))
    return list(range(base, base + int(setting(host, "app_workers_per_host"))))


def address(host: str) -> str:
    """The host's private address (what services bind to)."""
    return hostvar(host, "clusterkit_address")


def secret(name: str) -> str:
    """A secret generated by the playbooks into <inventory>/.secrets/<name>."""
    path = INVENTORY / ".secrets" / name
    if not path.exists():
        pytest.fail(f"secret {name} not found at {path}: deploy first (make up)")
    # ansible's password lookup stores "value salt=..." for some options; the value comes first.
    return path.read_text().split(" salt=")[0].strip()


@pytest.fixture(scope="session")
def lab_inventory() -> dict:
    return inventory()


def sentinel_client(host: str):
    """An authenticated client of the Sentinel on host (redis_sentinel_port)."""
    import redis

    return redis.Redis(
        host=address(host),
        port=int(setting(host, "redis_sentinel_port")),
        password=secret("redis_sentinel_password"),
        socket_timeout=5,
        decode_responses=True,
    )


def redis_primary() -> str:
    """Inventory name of the current Redis primary, as a majority of the Sentinels report it
    (the group's first host when it has fewer than three hosts: no Sentinel)."""
    hosts = group_hosts("redis")
    if len(hosts) < 3:
        return hosts[0]
    by_address = {address(h): h for h in hosts}
    seen: list[str] = []
    for h in hosts:
        try:
            with sentinel_client(h) as c:
                reply = c.sentinel_get_master_addr_by_name(
                    str(setting(h, "redis_sentinel_master_name"))
                )
        except OSError:
            continue
        except Exception as exc:  # redis errors: that Sentinel does not count
            if "redis" not in type(exc).__module__:
                raise
            continue
        if reply:
            seen.append(by_address.get(reply[0], reply[0]))
    if not seen or seen.count(max(set(seen), key=seen.count)) <= len(hosts) // 2:
        raise RuntimeError(f"no majority of the Sentinels names a primary: {seen}")
    return max(set(seen), key=seen.count)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked `restore` destroy the data hosts: they run only when -m names them."""
    if "restore" in (config.getoption("markexpr") or ""):
        return
    skip = pytest.mark.skip(reason="destroys the lab's data hosts: run with -m restore")
    for item in items:
        if item.get_closest_marker("restore"):
            item.add_marker(skip)


def playbook(*args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    """`ansible-playbook -i <inventory under test> ARGS` from the kit's root, output captured."""
    return subprocess.run(
        ["ansible-playbook", "-i", str(INVENTORY), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def mongo_uri(user: str, password: str, source: str, direct_to: str | None = None) -> str:
    """A MongoDB URI for the inventory's replica set (or one member, direct_to), as user."""
    host = group_hosts("mongodb")[0]
    port = int(setting(host, "mongodb_port"))
    if direct_to is not None:
        return f"mongodb://{user}:{password}@{direct_to}:{port}/?authSource={source}&directConnection=true"
    members = ",".join(f"{address(h)}:{port}" for h in group_hosts("mongodb"))
    replset = setting(host, "mongodb_replset_name")
    return f"mongodb://{user}:{password}@{members}/?replicaSet={replset}&authSource={source}"


# How long a measurement waits for the runner's background lanes to go quiet: the longest
# Molecule scenario takes about 4 minutes on a loaded 2-core machine.
QUIET_WAIT_S = 600


@pytest.fixture(scope="module")
def quiet_machine() -> Iterator[None]:
    """A module that measures throughput runs with the test runner's background lanes held
    (scripts/run-tests.sh, the Molecule scenarios beside the lab's stages): it asks
    ($CLUSTERKIT_QUIET_DIR/request), waits until the lane says nothing of it runs (granted),
    and lets the lane go on afterwards. Outside the runner there is nothing to hold."""
    folder = os.environ.get("CLUSTERKIT_QUIET_DIR")
    if not folder or not Path(folder).is_dir():
        yield
        return
    request, granted = Path(folder) / "request", Path(folder) / "granted"
    request.touch()
    try:
        deadline = time.monotonic() + QUIET_WAIT_S
        while not granted.exists() and time.monotonic() < deadline:
            time.sleep(2)
        if not granted.exists():
            print(f"quiet_machine: background lanes still busy after {QUIET_WAIT_S} s")
        yield
    finally:
        request.unlink(missing_ok=True)
