"""Render the app tier's templates and derived variables without any host.

Templates are rendered for app1 of the lab inventory (tests.unit._render) with the values
under test; the role's derived variables
(master of each node ID, worker ports, connection strings, environment files) go through
Ansible's own Templar with a made-up inventory.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.unit._render import render as render_template
from tests.unit._render import trusted

ROOT = Path(__file__).resolve().parents[2]
ROLE = ROOT / "roles" / "app"


def render(name: str, **variables: object) -> str:
    return render_template(f"app/{name}", "app1", **variables)


UNIT_VARS = {
    "app_install_method": "pip",
    "app_node_id": "node1",
    "app_user": "clusterkit",
    "app_group": "clusterkit",
    "app_config_dir": "/etc/clusterkit",
    "app_command": "/opt/clusterkit/app/venv/bin/clusterkit-app",
    "app_restart_sec": 2,
    "app_master_stop_timeout": 30,
    "app_worker_stop_timeout": 45,
    "app_worker_base_port": 8180,
    "app_master_unit": "clusterkit-master.service",
    "app_target_unit": "clusterkit-app.target",
}


def parse_unit(text: str) -> dict[str, list[tuple[str, str]]]:
    """systemd unit syntax: [Section] and Key=Value lines, keys may repeat."""
    sections: dict[str, list[tuple[str, str]]] = {}
    current = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = line[1:-1]
            assert current not in sections, f"section {current} twice"
            sections[current] = []
            continue
        assert current is not None, f"directive outside a section: {line}"
        key, sep, value = line.partition("=")
        assert sep, f"not a directive: {line}"
        assert re.fullmatch(r"[A-Za-z]+", key), f"not a directive: {line}"
        sections[current].append((key, value))
    return sections


def values(unit: dict[str, list[tuple[str, str]]], section: str, key: str) -> list[str]:
    return [v for k, v in unit[section] if k == key]


# -- environment files --------------------------------------------------------------------

NASTY = {
    "PLAIN": "node1",
    "URI": "mongodb://u:p%2F@h1:27017,h2:27017/db?replicaSet=rs0&authSource=db",
    "QUOTES": """it's "quoted" """,
    "SHELL": "$HOME `id` $(id) \\n back\\slash",
    "EMPTY": "",
    "NUMBER": 8180,
    "NONE": None,
}


def test_environment_file_lines_are_quoted_assignments() -> None:
    text = render(
        "environment.j2",
        app_env_description="test",
        app_env_vars=NASTY,
        app_group="clusterkit",
        app_install_method="pip",
    )
    assert text.startswith("#\n# Ansible managed\n#\n")
    assignments = [line for line in text.splitlines() if not line.startswith("#")]
    assert len(assignments) == len(NASTY)
    for line in assignments:
        assert re.fullmatch(r'[A-Z_][A-Z0-9_]*=".*"', line), line
    # Sorted, so the file only changes when a value does.
    names = [line.split("=", 1)[0] for line in assignments]
    assert names == sorted(names)


def test_environment_file_reads_back_exactly_in_a_posix_shell(tmp_path: Path) -> None:
    path = tmp_path / "app.env"
    path.write_text(
        render(
            "environment.j2",
            app_env_description="t",
            app_env_vars=NASTY,
            app_group="clusterkit",
            app_install_method="pip",
        )
    )
    # Exactly what the role's `validate:` does before the app's check-config runs.
    script = (
        'set -a; . "$1"; exec python3 -c '
        '"import json, os; print(json.dumps({k: os.environ[k] for k in os.environ}))"'
    )
    out = subprocess.run(
        ["/usr/bin/env", "-i", "PATH=/usr/bin:/bin", "/bin/sh", "-c", script, "sh", str(path)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    env = json.loads(out)
    expected = {k: "" if v is None else str(v) for k, v in NASTY.items()}
    assert {k: env[k] for k in expected} == expected


def podman_env_file(text: str) -> dict[str, str]:
    """How podman 4 reads --env-file: comments and blank lines skipped, NAME=value with the
    value taken literally after the first '=' (no quotes, no escapes)."""
    out = {}
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        name, sep, value = line.partition("=")
        assert sep, line
        out[name.lstrip()] = value
    return out


def test_environment_file_for_podman_reads_back_exactly() -> None:
    values = {k: v for k, v in NASTY.items()}
    text = render(
        "environment.j2",
        app_env_description="t",
        app_env_vars=values,
        app_group="clusterkit",
        app_install_method="image",
    )
    assert text.startswith("#\n# Ansible managed\n#\n")
    assert "--env-file" in text
    assignments = [line for line in text.splitlines() if not line.startswith("#")]
    names = [line.split("=", 1)[0] for line in assignments]
    assert names == sorted(NASTY)
    expected = {k: "" if v is None else str(v) for k, v in NASTY.items()}
    assert podman_env_file(text) == expected


# -- systemd units --------------------------------------------------------------------------


def test_master_unit() -> None:
    text = render("clusterkit-master.service.j2", **UNIT_VARS)
    assert text.startswith("#\n# Ansible managed\n#\n")
    unit = parse_unit(text)
    assert set(unit) == {"Unit", "Service", "Install"}
    assert values(unit, "Unit", "PartOf") == ["clusterkit-app.target"]
    assert values(unit, "Service", "ExecStart") == [UNIT_VARS["app_command"]]
    assert values(unit, "Service", "User") == ["clusterkit"]
    assert values(unit, "Service", "EnvironmentFile") == [
        "/etc/clusterkit/app.env",
        "/etc/clusterkit/master.env",
    ]
    assert values(unit, "Service", "Restart") == ["on-failure"]
    assert values(unit, "Service", "RestartPreventExitStatus") == ["2"]
    assert values(unit, "Service", "TimeoutStopSec") == ["30"]
    assert values(unit, "Install", "WantedBy") == ["clusterkit-app.target"]
    # No secret ever goes into a unit (units are world-readable).
    assert not values(unit, "Service", "Environment")


def test_worker_unit_is_a_template_ordered_after_the_master() -> None:
    unit = parse_unit(render("clusterkit-worker@.service.j2", **UNIT_VARS))
    after = " ".join(values(unit, "Unit", "After")).split()
    # Ordered after the master: stopping both stops the workers first.
    assert "clusterkit-master.service" in after
    assert values(unit, "Unit", "PartOf") == ["clusterkit-app.target"]
    assert values(unit, "Service", "Environment") == ["SERVER_PORT=%i"]
    assert values(unit, "Service", "EnvironmentFile") == [
        "/etc/clusterkit/app.env",
        "/etc/clusterkit/worker.env",
    ]
    assert values(unit, "Service", "ExecStart") == [UNIT_VARS["app_command"]]
    assert values(unit, "Service", "Restart") == ["on-failure"]
    assert values(unit, "Service", "TimeoutStopSec") == ["45"]
    assert values(unit, "Install", "WantedBy") == ["clusterkit-app.target"]


IMAGE_VARS = {
    **UNIT_VARS,
    "app_install_method": "image",
    "app_podman": "/usr/bin/podman",
    "app_image_refs": {"master": "clusterkit/app:k-master", "worker": "clusterkit/app:k-worker"},
    "app_image_unit_args": [],
}


def exec_start(unit: dict[str, list[tuple[str, str]]]) -> list[str]:
    """ExecStart's words, with systemd's line continuations joined."""
    (line,) = values(unit, "Service", "ExecStart")
    return line.split()


def parse_continued(text: str) -> dict[str, list[tuple[str, str]]]:
    return parse_unit(re.sub(r"\\\n\s*", " ", text))


@pytest.mark.parametrize(
    ("template", "component", "env_file", "timeout"),
    [
        ("clusterkit-master.service.j2", "master", "master.env", "30"),
        ("clusterkit-worker@.service.j2", "worker", "worker.env", "45"),
    ],
)
def test_units_run_the_image_with_podman(
    template: str, component: str, env_file: str, timeout: str
) -> None:
    unit = parse_continued(render(template, **IMAGE_VARS))
    words = exec_start(unit)
    assert words[:3] == ["/usr/bin/podman", "run", "--rm"]
    assert words[-1] == f"clusterkit/app:k-{component}"
    joined = " ".join(words)
    for option in ("--network host", "--uts host", "--read-only", "--replace", "--log-driver none"):
        assert option in joined
    assert f"--stop-timeout {timeout}" in joined
    assert f"--env-file /etc/clusterkit/app.env --env-file /etc/clusterkit/{env_file}" in joined
    assert ("--env SERVER_PORT=%i" in joined) == (component == "worker")
    # The master's lock names its PID: a restarted master must see the old one dead.
    assert ("--pid host" in joined) == (component == "master")
    assert "--no-healthcheck" not in words
    # podman runs as root, the image as its own user; systemd reads no environment file.
    assert not values(unit, "Service", "User")
    assert not values(unit, "Service", "EnvironmentFile")
    assert not values(unit, "Service", "Environment")
    assert values(unit, "Service", "KillMode") == ["mixed"]
    assert values(unit, "Service", "TimeoutStopSec") == [timeout]
    assert values(unit, "Service", "Restart") == ["on-failure"]
    assert values(unit, "Service", "RestartPreventExitStatus") == ["2"]
    assert values(unit, "Install", "WantedBy") == ["clusterkit-app.target"]


def test_image_unit_passes_extra_podman_arguments_before_the_image() -> None:
    variables = {**IMAGE_VARS, "app_image_unit_args": ["--no-healthcheck", "--memory", "512m"]}
    words = exec_start(parse_continued(render("clusterkit-worker@.service.j2", **variables)))
    assert words[-4:] == ["--no-healthcheck", "--memory", "512m", "clusterkit/app:k-worker"]


def test_podman_settings_for_container_hosts() -> None:
    import tomllib

    containers = tomllib.loads(render("podman-containers.conf.j2"))
    assert containers == {
        "containers": {"keyring": False, "default_sysctls": []},
        "engine": {"cgroup_manager": "cgroupfs", "events_logger": "file", "no_pivot_root": True},
    }
    storage = tomllib.loads(render("podman-storage.conf.j2"))
    assert storage["storage"]["driver"] == "vfs"


def test_target_unit_starts_with_the_system() -> None:
    unit = parse_unit(render("clusterkit-app.target.j2", **UNIT_VARS))
    assert values(unit, "Install", "WantedBy") == ["multi-user.target"]


# -- derived variables (Ansible's own templating) ----------------------------------------

ansible_template = pytest.importorskip("ansible.template")


HOSTVARS = {
    "app1": {"clusterkit_address": "10.0.0.21"},
    "app2": {"clusterkit_address": "10.0.0.22"},
    "app3": {"clusterkit_address": "10.0.0.23", "app_node_id": "node2"},
    "data1": {"clusterkit_address": "10.0.0.31", "redis_port": 6380},
    "data2": {"clusterkit_address": "10.0.0.32"},
    "data3": {"clusterkit_address": "10.0.0.33"},
}
GROUPS = {
    "app_master": ["app1", "app3"],
    "app_workers": ["app1", "app2", "app3"],
    "redis": ["data1"],
    "mongodb": ["data1", "data2", "data3"],
    "etcd": ["data1", "data2", "data3"],
}


def derived(host: str, **overrides: object):
    from ansible.parsing.dataloader import DataLoader

    defaults = yaml.safe_load((ROLE / "defaults" / "main.yml").read_text())
    role_vars = yaml.safe_load((ROLE / "vars" / "main.yml").read_text())
    variables = {
        **trusted(defaults),
        # inventory and extra values, then the role's vars/ (highest precedence, as in Ansible)
        **HOSTVARS[host],
        "groups": GROUPS,
        "hostvars": HOSTVARS,
        "inventory_hostname": host,
        "role_path": "/repo/roles/app",
        "app_redis_password": "redis-pw",
        "app_mongodb_password": "p/w@x",
        "app_etcd_password": "etcd-pw",
        "app_grpc_token": "token",
        **overrides,
        **trusted(role_vars),
    }
    templar = ansible_template.Templar(loader=DataLoader(), variables=variables)

    def get(name: str):
        return templar.template(ansible_template.trust_as_template("{{ " + name + " }}"))

    return get


def test_worker_host_finds_the_master_of_its_node_id() -> None:
    get = derived("app2")
    assert get("app_master_host") == "app1"
    assert get("app_master_address") == "10.0.0.21"
    assert get("app_runs_master") is False
    assert get("app_worker_ports") == [8180, 8181]
    worker = get("app_env_worker")
    assert worker == {
        "MODE": "worker",
        "BIND_ADDRESS": "10.0.0.22",
        "MASTER_SERVER_IP": "10.0.0.21",
        "MASTER_SERVER_PORT": 7001,
    }


def test_second_node_id_has_its_own_master() -> None:
    get = derived("app3", app_node_id="node2")
    assert get("app_node_master_hosts") == ["app3"]
    assert get("app_master_address") == "10.0.0.23"
    assert get("app_runs_master") is True
    assert get("app_env_master")["MASTER_SERVER_IP"] == "10.0.0.23"
    assert get("app_env_shared")["NODE_ID"] == "node2"


def test_connection_strings_from_the_data_groups() -> None:
    shared = derived("app1")("app_env_shared")
    assert shared["REDIS_HOST"] == "10.0.0.31"
    assert shared["REDIS_PORT"] == 6380  # the redis host's redis_port wins over 6379
    assert shared["MONGODB_URI"] == (
        "mongodb://clusterkit:p%2Fw%40x@10.0.0.31:27017,10.0.0.32:27017,10.0.0.33:27017"
        "/clusterkit?replicaSet=rs0&authSource=clusterkit"
    )
    assert shared["ETCD_ENDPOINTS"] == (
        "http://10.0.0.31:2379,http://10.0.0.32:2379,http://10.0.0.33:2379"
    )
    assert shared["ETCD_USER"] == "clusterkit"
    assert shared["GRPC_TOKEN"] == "token"


def test_extra_environment_overrides_and_extends() -> None:
    get = derived(
        "app1",
        app_environment={"SERVICE_TIME_MS": 0, "REDIS_DB": 3},
        app_worker_environment={"DRAIN_GRACE_S": 2},
    )
    shared = get("app_env_shared")
    assert shared["SERVICE_TIME_MS"] == 0
    assert shared["REDIS_DB"] == 3
    assert get("app_env_worker")["DRAIN_GRACE_S"] == 2
    assert "DRAIN_GRACE_S" not in get("app_env_master")


def test_workers_per_host_sets_the_ports_and_zero_removes_all() -> None:
    assert derived("app2", app_workers_per_host=4)("app_worker_ports") == [8180, 8181, 8182, 8183]
    assert derived("app2", app_workers_per_host=0)("app_worker_ports") == []
    assert derived("data1")("app_worker_ports") == []  # not in group app_workers


def test_image_method_validates_with_the_image_and_turns_the_healthcheck_off_in_containers() -> (
    None
):
    get = derived(
        "app1", app_install_method="image", app_image_key="abc", app_podman_container_host=True
    )
    assert get("app_image_refs") == {
        "master": "clusterkit/app:abc-master",
        "worker": "clusterkit/app:abc-worker",
    }
    assert get("app_image_unit_args") == ["--no-healthcheck"]
    check = get("app_env_validate")
    assert "/usr/bin/podman run --rm --network none --read-only" in check
    assert check.endswith("sh clusterkit/app:abc-worker  %s")  # no file loaded before
    assert derived("app1", app_install_method="image")("app_image_unit_args") == []
    pip = derived("app1")("app_env_validate")
    assert pip.startswith("/usr/bin/env -i PATH=")
    assert pip.endswith("exec /opt/clusterkit/app/venv/bin/clusterkit-app check-config' sh  %s")


def test_defaults_argument_spec_and_readme_list_the_same_variables() -> None:
    defaults = yaml.safe_load((ROLE / "defaults" / "main.yml").read_text())
    options = yaml.safe_load((ROLE / "meta" / "argument_specs.yml").read_text())["argument_specs"][
        "main"
    ]["options"]
    readme = (ROLE / "README.md").read_text()
    table = readme.split("## Role Variables", 1)[1].split("\n## ", 1)[0].split("Derived", 1)[0]
    documented = set(re.findall(r"`(app_[a-z_]+)`", table)) - {"app_master", "app_workers"}
    assert set(defaults) == set(options) == documented
    for name, option in options.items():
        if "default" in option:
            assert option["default"] == defaults[name], name
    assert options["app_install_method"]["choices"] == ["pip", "image", "none"]


def test_pyinfra_engine_refuses_the_image_method() -> None:
    from pyinfra_deploy.roles.app import refuse_unsupported

    class Host(dict):
        name = "app1"

    with pytest.raises(RuntimeError, match="app_install_method=image is not implemented"):
        refuse_unsupported(Host(app_install_method="image"))
    refuse_unsupported(Host(app_install_method="pip"))
