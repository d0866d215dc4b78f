"""Render the mongodb role's templates the way Ansible does and check what mongod, systemd and
logrotate would read.

Templates are rendered for data1 of the lab inventory (tests.unit._render). When a mongod
binary is on the controller (the role's download cache, the app's test cache, or $MONGOD_BIN),
the rendered config is also checked with `mongod --config <file> --outputConfig`, the same
check the role's `validate:` runs.
"""

from __future__ import annotations

import configparser
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.unit._render import render as render_template

ROOT = Path(__file__).resolve().parents[2]
DEFAULTS = yaml.safe_load((ROOT / "roles" / "mongodb" / "defaults" / "main.yml").read_text())
MONGOD = "/usr/local/bin/mongod"


def render(name: str, **overrides: object) -> str:
    return render_template(f"mongodb/{name}", "data1", **{"mongodb_bin": MONGOD, **overrides})


def unit(**overrides: object) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(interpolation=None, strict=True)
    parser.optionxform = str  # systemd keys are case-sensitive
    parser.read_string(render("mongod.service.j2", **overrides))
    return parser


def test_unit_runs_mongod_with_the_config_as_mongodb():
    service = unit()["Service"]
    assert service["ExecStart"] == "/usr/local/bin/mongod --config /etc/mongod.conf"
    assert service["User"] == "mongodb"
    assert service["Group"] == "mongodb"
    assert service["Type"] == "simple"
    assert service["LimitNOFILE"] == "64000"
    assert service["Restart"] == "on-failure"
    assert unit()["Install"]["WantedBy"] == "multi-user.target"


def test_unit_follows_the_install_method_binary_path():
    service = unit(mongodb_bin="/usr/bin/mongod")["Service"]
    assert service["ExecStart"].startswith("/usr/bin/mongod ")


def test_unit_passes_systemd_analyze(tmp_path):
    analyze = shutil.which("systemd-analyze")
    if analyze is None or not Path("/run/systemd/system").exists():
        pytest.skip("no systemd on the controller")
    path = tmp_path / "mongod.service"
    path.write_text(render("mongod.service.j2", mongodb_bin="/bin/true"))
    out = subprocess.run([analyze, "verify", str(path)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr


# ---------------------------------------------------------------- logrotate


def test_logrotate_rotates_the_log_and_reopens_it():
    text = render("logrotate.j2")
    assert text.startswith("#\n# Ansible managed\n#\n")
    assert "/var/log/mongodb/mongod.log {" in text
    assert "    rotate 14\n" in text
    assert "systemctl reload mongod.service" in text
    assert text.count("{") == text.count("}") == 1


def test_logrotate_accepts_the_file(tmp_path):
    logrotate = shutil.which("logrotate") or (
        "/usr/sbin/logrotate" if Path("/usr/sbin/logrotate").exists() else None
    )
    if logrotate is None:
        pytest.skip("no logrotate on the controller")
    path = tmp_path / "mongod"
    path.write_text(render("logrotate.j2", mongodb_log_path=str(tmp_path / "mongod.log")))
    path.chmod(0o644)
    out = subprocess.run(
        [logrotate, "--debug", "--state", str(tmp_path / "state"), str(path)],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr
