"""Helpers for the etcd scenario: other instances, etcdctl with credentials, the secrets."""

from __future__ import annotations

import os
import shlex
from pathlib import Path

import pytest
import testinfra

MEMBERS = ["etcd-1", "etcd-2", "etcd-3"]


def inventory_file() -> str:
    return os.environ["MOLECULE_INVENTORY_FILE"]


def member(name: str):
    """testinfra host of another instance of the scenario."""
    return testinfra.get_host(f"ansible://{name}?ansible_inventory={inventory_file()}")


def secret(name: str) -> str:
    # The role's password lookup writes beside the inventory Molecule generated.
    path = Path(inventory_file()).parent / ".secrets" / name
    return path.read_text().split(" salt=")[0].strip()


def etcdctl(host, *args: str, user: str | None = None, password: str | None = None):
    """etcdctl v3 against the instance's local member (credentials in its environment)."""
    env = ["ETCDCTL_API=3", "ETCDCTL_ENDPOINTS=http://127.0.0.1:2379"]
    if user:
        env += [f"ETCDCTL_USER={user}", f"ETCDCTL_PASSWORD={password}"]
    return host.run("env " + " ".join(shlex.quote(a) for a in [*env, "etcdctl", *args]))


@pytest.fixture(scope="module")
def root_password() -> str:
    return secret("etcd_root_password")


@pytest.fixture(scope="module")
def app_password() -> str:
    return secret("etcd_app_password")
