"""Render the redis templates the way Ansible does and check what Redis would read.

The templates are rendered for data1 of the lab inventory (tests.unit._render), in the
single-Redis profile. When a redis-server binary is on the controller (or redis-tools'
redis-check-rdb, the same binary), the rendered file also goes through the role's validation
helper, as the role's `validate:` step does.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.unit._render import render as render_template

ROOT = Path(__file__).resolve().parents[2]
VALIDATOR = ROOT / "roles" / "redis" / "files" / "clusterkit-redis-validate"

# Multi-valued directives: every other directive may appear once only.
REPEATABLE = {"save", "rename-command", "include"}


# The single-Redis profile on data1 (the Sentinel profile: test_render_equivalence).
SINGLE_REDIS = {
    "redis_password": "s3cretPassw0rd",
    "redis_sentinel_enabled": False,
    "redis_min_replicas_to_write": 0,
}


def render(name: str, **overrides: object) -> str:
    return render_template(f"redis/{name}", "data1", **{**SINGLE_REDIS, **overrides})


def split_args(line: str) -> list[str]:
    """Split a config line into arguments the way Redis does (sdssplitargs, double quotes)."""
    args: list[str] = []
    i, n = 0, len(line)
    while i < n:
        while i < n and line[i].isspace():
            i += 1
        if i >= n:
            break
        current = ""
        if line[i] == '"':
            i += 1
            while True:
                assert i < n, f"unbalanced quotes: {line!r}"
                ch = line[i]
                if ch == "\\" and i + 1 < n:
                    current += {"n": "\n", "t": "\t", "r": "\r"}.get(line[i + 1], line[i + 1])
                    i += 2
                    continue
                if ch == '"':
                    i += 1
                    assert i >= n or line[i].isspace(), (
                        f"closing quote must end an argument: {line!r}"
                    )
                    break
                current += ch
                i += 1
        else:
            while i < n and not line[i].isspace():
                current += line[i]
                i += 1
        args.append(current)
    return args


def directives(text: str) -> list[list[str]]:
    out = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        out.append(split_args(line))
    return out


def single(parsed: list[list[str]]) -> dict[str, list[str]]:
    seen: dict[str, list[str]] = {}
    for name, *args in parsed:
        if name in REPEATABLE:
            continue
        assert name not in seen, f"directive {name} appears twice"
        seen[name] = args
    return seen


def test_config_starts_with_the_managed_comment() -> None:
    assert render("redis.conf.j2").startswith("#\n# Ansible managed\n#\n")
    assert render("auth.conf.j2").startswith("#\n# Ansible managed\n#\n")


def test_defaults_render_the_expected_directives() -> None:
    parsed = directives(render("redis.conf.j2"))
    conf = single(parsed)
    assert conf["bind"] == ["10.77.0.31", "127.0.0.1"]
    assert conf["port"] == ["6379"]
    assert conf["protected-mode"] == ["yes"]
    assert conf["supervised"] == ["systemd"]
    assert conf["daemonize"] == ["no"]
    assert conf["tcp-backlog"] == ["1024"]
    assert conf["appendonly"] == ["yes"]
    assert conf["appendfsync"] == ["everysec"]
    assert conf["dir"] == ["/var/lib/redis"]
    assert conf["maxmemory"] == ["256mb"]
    assert conf["maxmemory-policy"] == ["volatile-lru"]
    assert "requirepass" not in conf, "the password belongs in the auth file only"
    renames = sorted(args for name, *args in parsed if name == "rename-command")
    assert renames == [["DEBUG", ""], ["FLUSHALL", ""], ["FLUSHDB", ""]]
    saves = [args for name, *args in parsed if name == "save"]
    assert saves == [["3600", "1"], ["300", "100"], ["60", "10000"]]
    # The include comes last, so nothing after it can override the password.
    assert parsed[-1] == ["include", "/etc/redis/redis-auth.conf"]


def test_variables_reach_the_config() -> None:
    text = render(
        "redis.conf.j2",
        redis_port=6380,
        redis_bind_loopback=[],
        redis_maxmemory="2gb",
        redis_maxmemory_policy="allkeys-lru",
        redis_tcp_backlog=511,
        redis_save=[],
        redis_rename_commands={"CONFIG": "ck-config", "KEYS": ""},
        redis_extra_config={"latency-monitor-threshold": 100},
    )
    parsed = directives(text)
    conf = single(parsed)
    assert conf["bind"] == ["10.77.0.31"]
    assert conf["port"] == ["6380"]
    assert conf["maxmemory"] == ["2gb"]
    assert conf["maxmemory-policy"] == ["allkeys-lru"]
    assert conf["tcp-backlog"] == ["511"]
    assert conf["latency-monitor-threshold"] == ["100"]
    assert [args for name, *args in parsed if name == "save"] == [[""]]
    renames = sorted(args for name, *args in parsed if name == "rename-command")
    assert renames == [["CONFIG", "ck-config"], ["KEYS", ""]]


@pytest.mark.parametrize("password", ["s3cretPassw0rd", 'with "quotes" and \\ backslash', "a b"])
def test_auth_file_quotes_the_password(password: str) -> None:
    parsed = directives(render("auth.conf.j2", redis_password=password))
    assert parsed == [["requirepass", password]]


def redis_server(tmp_path: Path) -> str | None:
    found = shutil.which("redis-server")
    if found:
        return found
    check = shutil.which("redis-check-rdb")
    if not check:
        return None
    link = tmp_path / "redis-server"
    link.symlink_to(check)  # the binary picks its role from argv[0]
    return str(link)


@pytest.fixture
def validate(tmp_path: Path):
    server = redis_server(tmp_path)
    if server is None:
        pytest.skip("no redis-server (or redis-check-rdb) on the controller")
    auth = tmp_path / "redis-auth.conf"
    auth.write_text(render("auth.conf.j2"))

    def run(config_text: str) -> subprocess.CompletedProcess[str]:
        candidate = tmp_path / "redis.conf"
        candidate.write_text(config_text.replace("/etc/redis/redis-auth.conf", str(auth)))
        return subprocess.run(
            ["sh", str(VALIDATOR), str(candidate), "1"],
            env={**os.environ, "REDIS_SERVER": server},
            capture_output=True,
            text=True,
            timeout=30,
        )

    return run


def test_real_redis_accepts_the_rendered_config(validate) -> None:
    result = validate(render("redis.conf.j2"))
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize(
    ("overrides", "complaint"),
    [
        ({"redis_maxmemory_policy": "bogus"}, "maxmemory-policy bogus"),
        ({"redis_maxmemory": "lots"}, "maxmemory lots"),
        ({"redis_rename_commands": {"NOSUCHCOMMAND": ""}}, "No such command in rename-command"),
    ],
)
def test_real_redis_rejects_bad_values(validate, overrides: dict, complaint: str) -> None:
    result = validate(render("redis.conf.j2", **overrides))
    assert result.returncode == 1
    assert "FATAL CONFIG FILE ERROR" in result.stderr
    assert complaint in result.stderr
