"""keepalived's templates, rendered with the lab inventory's variables as the deploy resolves
them (role defaults, inventory, groups, the generated VRRP password): what each LB host's
keepalived would read. When a `keepalived` binary is on the controller, the config also goes
through the role's validator (`keepalived -t`), as its `validate:` step does (the lab and
Molecule run it).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from pyinfra_deploy.templating import render
from pyinfra_deploy.variables import ROOT, HostVars, World
from tests.unit._render import lab


@pytest.fixture(scope="module")
def world() -> World:
    return lab()


def conf(world: World, host: str, **overrides: object) -> str:
    v = HostVars(world, host, {"keepalived__interface": "eth0", **overrides})
    return render("keepalived/keepalived.conf.j2", v)


def block(text: str, header: str) -> list[str]:
    """The lines inside `header { ... }` (nested blocks flattened), stripped."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip() == header + " {")
    depth, out = 0, []
    for line in lines[start:]:
        depth += line.count("{") - line.count("}")
        out.append(line.strip())
        if depth == 0:
            return out[1:-1]
    raise AssertionError(f"{header} not closed")


def test_every_host_starts_as_backup_without_preemption(world: World) -> None:
    for host, priority in (("lb1", "150"), ("lb2", "149")):
        instance = block(conf(world, host), "vrrp_instance clusterkit_vip")
        assert "state BACKUP" in instance
        assert "nopreempt" in instance
        assert f"priority {priority}" in instance
        assert "virtual_router_id 77" in instance


def test_vrrp_goes_unicast_to_the_other_load_balancer(world: World) -> None:
    for host, src, peer in (
        ("lb1", "10.77.0.10", "10.77.0.11"),
        ("lb2", "10.77.0.11", "10.77.0.10"),
    ):
        text = conf(world, host)
        assert f"unicast_src_ip {src}" in block(text, "vrrp_instance clusterkit_vip")
        assert block(text, "unicast_peer") == [peer]


def test_the_virtual_address_is_on_the_private_interface(world: World) -> None:
    assert block(conf(world, "lb1"), "virtual_ipaddress") == ["10.77.0.100/24 dev eth0"]
    assert block(conf(world, "lb1", keepalived__interface="ens3"), "virtual_ipaddress") == [
        "10.77.0.100/24 dev ens3"
    ]


def test_authentication_uses_the_generated_eight_character_secret(world: World) -> None:
    auth = block(conf(world, "lb1"), "authentication")
    assert auth[0] == "auth_type PASS"
    password = auth[1].split()[1]
    # keepalived uses 8 characters of a PASS password: exactly 8 are generated, once, and
    # both hosts read the same file.
    assert re.fullmatch(r"[A-Za-z0-9]{8}", password)
    assert block(conf(world, "lb2"), "authentication")[1] == f"auth_pass {password}"
    stored = (world.path / ".secrets" / "keepalived_auth_pass").read_text()
    assert stored.split(" salt=")[0].strip() == password


def test_the_check_runs_unprivileged_and_is_tracked(world: World) -> None:
    text = conf(world, "lb1")
    assert block(text, "global_defs")[-2:] == [
        "enable_script_security",
        "script_user keepalived_script",
    ]
    script = block(text, "vrrp_script chk_frontend")
    assert script[0] == 'script "/etc/keepalived/check-frontend.sh"'
    assert {"fall 2", "rise 2", "interval 1"} <= set(script)
    assert block(text, "track_script") == ["chk_frontend"]


def test_preemption_can_be_turned_on(world: World) -> None:
    assert "nopreempt" not in block(
        conf(world, "lb1", keepalived_nopreempt=False), "vrrp_instance clusterkit_vip"
    )


def test_the_check_script_fails_on_no_answer_and_bad_gateway(world: World, tmp_path: Path) -> None:
    text = render("keepalived/check-frontend.sh.j2", world["lb1"])
    assert "'http://127.0.0.1:80/api/healthz'" in text
    assert subprocess.run(["sh", "-n", "-c", text]).returncode == 0
    # Run it against a fake curl printing each status: 000, 502, 504 fail; 200, 404, 503 pass.
    script = tmp_path / "check.sh"
    script.write_text(text)
    fake = tmp_path / "bin"
    fake.mkdir()
    curl = fake / "curl"
    curl.write_text('#!/bin/sh\nprintf %s "$STATUS"\n')
    curl.chmod(0o755)
    outcome = {}
    for status in ("000", "200", "404", "502", "503", "504"):
        env = {"PATH": f"{fake}:/usr/bin:/bin", "STATUS": status}
        outcome[status] = subprocess.run(["sh", str(script)], env=env).returncode
    assert outcome == {"000": 1, "200": 0, "404": 0, "502": 1, "503": 0, "504": 1}


def test_vrrp_only_mode(world: World) -> None:
    text = render("keepalived/keepalived.default.j2", world["lb1"])
    assert 'DAEMON_ARGS="--vrrp"' in text.splitlines()


VALIDATE = ROOT / "roles" / "keepalived" / "files" / "clusterkit-keepalived-validate"


@pytest.mark.parametrize(
    ("behaviour", "passes"),
    [
        ("exit 0", True),
        # Debian 12's keepalived 2.2.7 ends every config test with script_user by SIGTERM to
        # its own process group: silent means no error was found.
        ("kill -TERM 0", True),
        ("echo '(Line 29) number 9999 outside range' >&2; kill -TERM 0", False),
        ("echo '(Line 3) Unknown keyword' >&2; exit 4", False),
        ("exit 3", False),
    ],
)
def test_the_validator_reads_keepalived_config_test(
    tmp_path: Path, behaviour: str, passes: bool
) -> None:
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "keepalived").write_text(f"#!/bin/sh\n{behaviour}\n")
    (fake / "keepalived").chmod(0o755)
    env = {"PATH": f"{fake}:/usr/bin:/bin"}
    result = subprocess.run([str(VALIDATE), "/dev/null"], env=env, capture_output=True, text=True)
    assert (result.returncode == 0) is passes, result.stderr


@pytest.mark.skipif(
    shutil.which("keepalived") is None or subprocess.run(["id", "keepalived_script"]).returncode,
    reason="no keepalived (and its script user) on the controller",
)
def test_keepalived_accepts_the_config(world: World, tmp_path: Path) -> None:
    path = tmp_path / "keepalived.conf"
    path.write_text(conf(world, "lb1"))
    result = subprocess.run([str(VALIDATE), str(path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
