"""Render the etcd config template the way Ansible does and check what etcd would read.

The template is rendered for data1 of the lab inventory (tests.unit._render) with the
bootstrap values the role works out. The result must load as YAML
with the expected settings and pass the role's validation helper. When an etcd binary is on
the controller ($ETCD_BIN, the app's test cache filled by app/scripts/test-deps.sh, or PATH),
the helper also starts a throwaway etcd on it, as the role's `validate:` step does on hosts.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.unit._render import render as render_template

ROOT = Path(__file__).resolve().parents[2]
VALIDATOR = ROOT / "roles" / "etcd" / "files" / "clusterkit-etcd-validate"

CLUSTER = "data1=http://10.77.0.31:2380,data2=http://10.77.0.32:2380,data3=http://10.77.0.33:2380"


def render(**overrides: object) -> str:
    bootstrap = {"etcd__initial_cluster": CLUSTER, "etcd__initial_cluster_state": "new"}
    return render_template("etcd/etcd.conf.yml.j2", "data1", **{**bootstrap, **overrides})


def etcd_binary() -> str | None:
    cache = os.environ.get("CLUSTERKIT_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "clusterkit"
    )
    for candidate in (
        os.environ.get("ETCD_BIN"),
        os.path.join(cache, "etcd/usr/bin/etcd"),
        shutil.which("etcd"),
    ):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


def validate(text: str, tmp_path: Path, *, run: bool) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "etcd.conf.yml"
    path.write_text(text)
    env = dict(os.environ)
    if run:
        env["ETCD_BIN"] = etcd_binary() or ""
    args = [sys.executable, str(VALIDATOR), str(path)] + ([] if run else ["--no-run"])
    return subprocess.run(args, env=env, capture_output=True, text=True, timeout=60)


def test_renders_the_member_settings() -> None:
    text = render()
    assert text.startswith("#\n# Ansible managed\n#\n")
    config = yaml.safe_load(text)
    assert config["name"] == "data1"
    assert config["data-dir"] == "/var/lib/etcd/clusterkit"
    assert config["listen-client-urls"] == "http://10.77.0.31:2379,http://127.0.0.1:2379"
    assert config["advertise-client-urls"] == "http://10.77.0.31:2379"
    assert config["listen-peer-urls"] == "http://10.77.0.31:2380"
    assert config["initial-advertise-peer-urls"] == "http://10.77.0.31:2380"
    assert config["initial-cluster"] == CLUSTER
    assert config["initial-cluster-state"] == "new"
    assert config["initial-cluster-token"] == "clusterkit-etcd"
    assert config["enable-v2"] is False
    # The JSON gateway (/v3/...) the app's client uses is off unless a config file says so.
    assert config["enable-grpc-gateway"] is True
    # etcd reads the retention as a string and the numbers as integers.
    assert config["auto-compaction-retention"] == "1h"
    assert config["quota-backend-bytes"] == 2147483648
    assert config["heartbeat-interval"] == 250
    assert config["log-level"] == "info"


def test_joining_member_gets_state_existing() -> None:
    joined = "data1=http://10.77.0.31:2380,data4=http://10.77.0.34:2380"
    config = yaml.safe_load(
        render(
            etcd_name="data4",
            etcd_address="10.77.0.34",
            etcd__initial_cluster=joined,
            etcd__initial_cluster_state="existing",
        )
    )
    assert config["initial-cluster-state"] == "existing"
    assert config["initial-cluster"] == joined


def test_extra_settings_keep_their_types() -> None:
    extra = {"snapshot-count": 5000, "pre-vote": True, "cors": "*",
             "experimental-watch-progress-notify-interval": "10m"}  # fmt: skip
    config = yaml.safe_load(render(etcd_extra_config=extra))
    for key, value in extra.items():
        assert config[key] == value


def test_loopback_address_listed_once() -> None:
    loopback = {"etcd_address": "127.0.0.1", "etcd__initial_cluster": "data1=http://127.0.0.1:2380"}
    config = yaml.safe_load(render(**loopback))
    assert config["listen-client-urls"] == "http://127.0.0.1:2379"


def test_validator_accepts_the_rendered_config(tmp_path: Path) -> None:
    result = validate(render(), tmp_path, run=False)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        ({"etcd_extra_config": {"snapshot-cuont": 5000}}, "unknown setting"),
        ({"etcd__initial_cluster_state": "fresh"}, "initial-cluster-state"),
        ({"etcd__initial_cluster": "data2=http://10.77.0.32:2380"}, "does not list this member"),
        ({"etcd__initial_cluster": "data1=http://10.77.0.99:2380"}, "initial-advertise-peer-urls"),
        ({"etcd_address": "10.77.0.31:2379"}, "not http(s)://host:port"),
        ({"etcd_extra_config": {"heartbeat-interval": 50}}, "heartbeat-interval is set twice"),
    ],
)
def test_validator_rejects_mistakes(tmp_path: Path, overrides: dict, reason: str) -> None:
    result = validate(render(**overrides), tmp_path, run=False)
    assert result.returncode == 1
    assert reason in result.stderr


def test_validator_rejects_what_is_not_yaml(tmp_path: Path) -> None:
    result = validate(render() + "name: [unclosed\n", tmp_path, run=False)
    assert result.returncode == 1


needs_etcd = pytest.mark.skipif(etcd_binary() is None, reason="no etcd binary on the controller")


@needs_etcd
def test_real_etcd_starts_on_the_rendered_config(tmp_path: Path) -> None:
    result = validate(render(), tmp_path, run=True)
    assert result.returncode == 0, result.stderr


@needs_etcd
@pytest.mark.parametrize(
    "overrides",
    [
        {"etcd_log_level": "loud"},
        {"etcd_extra_config": {"snapshot-count": "many"}},
        {"etcd_auto_compaction_retention": "soon"},
        {"etcd_election_timeout": 50},
    ],
)
def test_real_etcd_rejects_bad_values(tmp_path: Path, overrides: dict) -> None:
    result = validate(render(**overrides), tmp_path, run=True)
    assert result.returncode == 1, result.stderr
    assert "etcd exited" in result.stderr


def validate_for(version: str, text: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """The validator (reading only) as it runs on a host whose etcd is `version`."""
    fake = tmp_path / "etcd"
    fake.write_text(f"#!/bin/sh\necho 'etcd Version: {version}'\n")
    fake.chmod(0o755)
    path = tmp_path / "etcd.conf.yml"
    path.write_text(text)
    env = {**os.environ, "ETCD_BIN": str(fake)}
    args = [sys.executable, str(VALIDATOR), str(path), "--no-run"]
    return subprocess.run(args, env=env, capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize(
    ("version", "extra", "accepted"),
    [
        ("3.4.23", {}, True),  # bookworm
        ("3.5.16", {}, True),  # trixie
        ("3.4.23", {"log-output": "default"}, True),
        ("3.5.16", {"log-output": "default"}, False),  # removed in 3.5
        ("3.5.16", {"socket-reuse-port": True}, True),
        ("3.4.23", {"socket-reuse-port": True}, False),  # new in 3.5
    ],
)
def test_validator_knows_the_settings_of_the_installed_series(
    tmp_path: Path, version: str, extra: dict, accepted: bool
) -> None:
    result = validate_for(version, render(etcd_extra_config=extra), tmp_path)
    assert (result.returncode == 0) is accepted, result.stderr
    if not accepted:
        assert f"unknown setting(s) for etcd {version[:3]}" in result.stderr


def test_validator_refuses_a_series_it_does_not_know(tmp_path: Path) -> None:
    result = validate_for("3.6.1", render(), tmp_path)
    assert result.returncode == 1
    assert "etcd 3.6 is not a release this check knows" in result.stderr
