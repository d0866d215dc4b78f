"""The tests, scripts and the pyinfra engine find ansible-inventory, ansible-playbook and the
other tools next to the interpreter that runs them, with the venv not on PATH (issue seen as a
new user: `.venv/bin/python -m pytest tests/unit` failed unless `.venv/bin` was on PATH)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MINIMAL_PATH = "/usr/bin:/bin"
BIN = Path(sys.executable).parent


def run(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in {"PATH", "VIRTUAL_ENV"}}
    env["PATH"] = MINIMAL_PATH
    return subprocess.run(
        [sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )


@pytest.fixture(autouse=True, scope="module")
def tools_are_not_on_the_minimal_path() -> None:
    if not (BIN / "ansible-inventory").exists():
        pytest.skip(f"ansible-inventory is not beside {sys.executable}")
    found = shutil.which("ansible-inventory", path=MINIMAL_PATH)
    if found:
        pytest.skip(f"{found} is on {MINIMAL_PATH}: the test could not fail")


def test_pytest_runs_the_inventory_tests_without_the_venv_on_path() -> None:
    result = run("-m", "pytest", "-q", "-p", "no:cacheprovider",
                 "tests/unit/test_inventories.py", "-k", "graph")  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    # One case per inventory directory (the lab, the example, the one-host profiles).
    assert re.search(r"\b[3-9] passed", result.stdout), result.stdout[-3000:]


def test_the_pyinfra_engine_reads_the_inventory_without_the_venv_on_path() -> None:
    code = (
        "from pyinfra_deploy.variables import ansible_inventory, inventory_path; "
        "print(sorted(ansible_inventory(inventory_path())['_meta']['hostvars']))"
    )
    result = run("-c", code)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "'lb1'" in result.stdout


def test_scripts_put_the_interpreter_bin_first_on_path() -> None:
    code = (
        "import shutil, sys; sys.path.insert(0, 'scripts'); import _venv; "
        "_venv.interpreter_bin_first(); "
        "print(shutil.which('ansible-playbook')); print(shutil.which('locust'))"
    )
    result = run("-c", code)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split() == [str(BIN / "ansible-playbook"), str(BIN / "locust")]
