"""Render the mongodb role's templates the way Ansible does and check what mongod, systemd and
logrotate would read.

Templates go through a plain Jinja2 environment (trim_blocks, keep_trailing_newline, a stand-in
for Ansible's `comment` filter; otherwise only Jinja2's own filters), with the role's defaults
and representative host values. When a mongod binary is on the controller (the role's download
cache, the app's test cache, or $MONGOD_BIN), the rendered config is also checked with
`mongod --config <file> --outputConfig`, the same check the role's `validate:` runs.
"""

from __future__ import annotations

import configparser
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.unit._render import environment

ROOT = Path(__file__).resolve().parents[2]
TEMPLATES = ROOT / "roles" / "mongodb" / "templates"
DEFAULTS = yaml.safe_load((ROOT / "roles" / "mongodb" / "defaults" / "main.yml").read_text())


def render(name: str, **overrides: object) -> str:
    env = environment(TEMPLATES)
    variables = {k: v for k, v in DEFAULTS.items() if not (isinstance(v, str) and "{{" in v)}
    variables.update(
        ansible_managed="Ansible managed",
        mongodb_bind_address="10.77.0.31",
        mongodb_bin="/usr/local/bin/mongod",
    )
    variables.update(overrides)
    return env.get_template(name).render(**variables)


def find_mongod() -> str | None:
    candidates = [os.environ.get("MONGOD_BIN", "")]
    candidates += sorted(str(p) for p in (ROOT / ".cache" / "mongodb").glob("mongod-*"))
    cache = os.environ.get("CLUSTERKIT_CACHE") or Path.home() / ".cache" / "clusterkit"
    candidates.append(str(Path(cache) / "mongodb" / "bin" / "mongod"))
    candidates.append(shutil.which("mongod") or "")
    return next((c for c in candidates if c and os.access(c, os.X_OK)), None)


# ---------------------------------------------------------------- mongod.conf


def test_config_is_yaml_with_replica_set_auth_and_binds():
    text = render("mongod.conf.j2")
    assert text.startswith("#\n# Ansible managed\n#\n")
    conf = yaml.safe_load(text)
    assert conf["net"] == {"port": 27017, "bindIp": "127.0.0.1,10.77.0.31"}
    assert conf["replication"] == {"replSetName": "rs0"}
    assert conf["security"] == {"authorization": "enabled", "keyFile": "/etc/mongodb/keyfile"}
    assert conf["storage"] == {"dbPath": "/var/lib/mongodb"}
    assert conf["systemLog"]["path"] == "/var/log/mongodb/mongod.log"
    assert conf["systemLog"]["logRotate"] == "reopen"
    assert conf["systemLog"]["logAppend"] is True


def test_optional_sizes_appear_only_when_set():
    conf = yaml.safe_load(
        render("mongod.conf.j2", mongodb_wiredtiger_cache_size_gb=0.5, mongodb_oplog_size_mb=1024)
    )
    assert conf["storage"]["wiredTiger"]["engineConfig"]["cacheSizeGB"] == 0.5
    assert conf["replication"]["oplogSizeMB"] == 1024


def test_loopback_bind_address_is_not_repeated():
    conf = yaml.safe_load(render("mongod.conf.j2", mongodb_bind_address="127.0.0.1"))
    assert conf["net"]["bindIp"] == "127.0.0.1"


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {
            "mongodb_wiredtiger_cache_size_gb": 0.25,
            "mongodb_oplog_size_mb": 512,
            "mongodb_port": 27018,
        },
    ],
)
def test_config_passes_mongods_own_check(tmp_path, overrides):
    mongod = find_mongod()
    if mongod is None:
        pytest.skip("no mongod on the controller (run the role once, or app/scripts/test-deps.sh)")
    path = tmp_path / "mongod.conf"
    path.write_text(render("mongod.conf.j2", **overrides))
    out = subprocess.run(
        [mongod, "--config", str(path), "--outputConfig"], capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    effective = yaml.safe_load(out.stdout)
    assert effective["replication"]["replSetName"] == "rs0"
    assert effective["security"]["authorization"] == "enabled"


def test_mongods_check_rejects_a_broken_config(tmp_path):
    mongod = find_mongod()
    if mongod is None:
        pytest.skip("no mongod on the controller")
    path = tmp_path / "mongod.conf"
    path.write_text(render("mongod.conf.j2", mongodb_port="not-a-port"))
    out = subprocess.run(
        [mongod, "--config", str(path), "--outputConfig"], capture_output=True, text=True
    )
    assert out.returncode != 0


# ---------------------------------------------------------------- mongod.service


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
