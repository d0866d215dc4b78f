"""The shipped inventories parse, and the preflight play refuses bad ones before any host changes.

These run the real ansible-inventory / ansible-playbook; no host is contacted (the preflight
play only evaluates variables on the controller).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
GROUPS = ["lb", "app_master", "app_workers", "redis", "mongodb", "etcd", "loadgen"]


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("inventory", ["inventory/lab", "inventory/example"])
def test_inventory_graph_has_every_group(inventory: str) -> None:
    result = run("ansible-inventory", "-i", inventory, "--graph")
    assert result.returncode == 0, result.stderr
    for group in GROUPS:
        assert f"@{group}:" in result.stdout


def test_lab_inventory_puts_every_host_in_group_lab() -> None:
    result = run("ansible-inventory", "-i", "inventory/lab", "--graph", "lab")
    assert result.returncode == 0, result.stderr
    for host in ["lb1", "app1", "app2", "data1", "data2", "data3"]:
        assert host in result.stdout


@pytest.mark.parametrize("playbook", ["site.yml", "playbooks/teardown.yml"])
@pytest.mark.parametrize("inventory", ["inventory/lab", "inventory/example"])
def test_playbooks_pass_syntax_check(inventory: str, playbook: str) -> None:
    result = run("ansible-playbook", "-i", inventory, playbook, "--syntax-check")
    assert result.returncode == 0, result.stdout + result.stderr


def test_preflight_accepts_the_example_inventory() -> None:
    result = run("ansible-playbook", "-i", "inventory/example", "playbooks/preflight.yml")
    assert result.returncode == 0, result.stdout + result.stderr


def example() -> dict:
    return yaml.safe_load((ROOT / "inventory/example/hosts.yml").read_text())


def without_group(name: str) -> dict:
    inv = example()
    inv["all"]["children"][name]["hosts"] = {}
    return inv


def with_even_etcd() -> dict:
    inv = example()
    del inv["all"]["children"]["etcd"]["hosts"]["data3.example.internal"]
    return inv


def without_address() -> dict:
    inv = example()
    del inv["all"]["children"]["lb"]["hosts"]["lb1.example.internal"]["clusterkit_address"]
    return inv


def with_duplicate_address() -> dict:
    inv = example()
    workers = inv["all"]["children"]["app_workers"]["hosts"]
    workers["app2.example.internal"]["clusterkit_address"] = "10.0.0.21"
    return inv


def with_bad_type() -> dict:
    inv = example()
    inv["all"]["vars"]["common_nofile_limit"] = "plenty"
    return inv


@pytest.mark.parametrize(
    ("inventory", "expected"),
    [
        (without_group("redis"), "Inventory group 'redis' has no hosts"),
        (without_group("app_master"), "Inventory group 'app_master' has no hosts"),
        (with_even_etcd(), "Inventory group 'etcd' has 2 hosts; use an odd number"),
        (without_address(), "Host lb1.example.internal needs clusterkit_address"),
        (with_duplicate_address(), "clusterkit_address must be unique per host"),
        (with_bad_type(), "argument 'common_nofile_limit' is of type str"),
    ],
    ids=["no-redis", "no-master", "even-etcd", "no-address", "duplicate-address", "bad-type"],
)
def test_preflight_refuses_bad_inventories(tmp_path: Path, inventory: dict, expected: str) -> None:
    path = tmp_path / "hosts.yml"
    path.write_text(yaml.safe_dump(inventory))
    result = run("ansible-playbook", "-i", str(path), "site.yml")
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert expected in output
    # Nothing past the preflight ran: no lab, no host play.
    assert "PLAY [Lab" not in output
    assert "PLAY [Data" not in output
