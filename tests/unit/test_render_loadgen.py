"""Render the load generation worker unit and the loadgen role's defaults without any host.

The template is rendered with the lab inventory (tests.unit._render); the
role's defaults and derived
variables (Locust version from requirements.txt, workers per host from the vCPUs) go through
Ansible's own Templar.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.unit._render import render as render_template
from tests.unit._render import trusted

ROOT = Path(__file__).resolve().parents[2]
ROLE = ROOT / "roles" / "loadgen"
UNIT = "clusterkit-locust-worker@.service"


def render(**overrides: object) -> str:
    # The lab has no load generators; every host carries the role's defaults.
    return render_template("loadgen/locust-worker.service.j2", "app1", **{**UNIT_VARS, **overrides})


UNIT_VARS = {
    "loadgen_master_host": "10.77.0.1",
    "loadgen_master_port": 5557,
    "loadgen_workers_per_host": 4,
    "loadgen_worker_extra_args": [],
    "loadgen_venv": "/opt/clusterkit/loadgen/venv",
    "loadgen_loadtests_dir": "/opt/clusterkit/loadgen/loadtests",
    "loadgen_user": "locust",
    "loadgen_group": "locust",
    "loadgen_restart_sec": 2,
    "loadgen_nofile_limit": 65536,
}


def parse_unit(text: str) -> list[tuple[str, list[tuple[str, str]]]]:
    """systemd unit syntax, in file order: [Section] and Key=Value lines, keys may repeat."""
    sections: list[tuple[str, list[tuple[str, str]]]] = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            assert line[1:-1] not in [name for name, _ in sections], f"section {line} twice"
            sections.append((line[1:-1], []))
            continue
        assert sections, f"directive outside a section: {line}"
        key, sep, value = line.partition("=")
        assert sep, f"not a directive: {line}"
        assert re.fullmatch(r"[A-Za-z]+", key), f"not a directive: {line}"
        sections[-1][1].append((key, value))
    return sections


def values(unit: list[tuple[str, list[tuple[str, str]]]], section: str, key: str) -> list[str]:
    return [v for name, items in unit if name == section for k, v in items if k == key]


def exec_argv(command_line: str) -> list[str]:
    """Split an ExecStart= line the way systemd does for what the template emits: words,
    double quotes with backslash escapes, then %% and $$ unescaped."""
    return [w.replace("%%", "%").replace("$$", "$") for w in shlex.split(command_line)]


# -- the unit ---------------------------------------------------------------------------


def test_unit_is_managed_and_sections_come_in_order() -> None:
    text = render()
    assert text.startswith("#\n# Ansible managed\n#\n")
    assert [name for name, _ in parse_unit(text)] == ["Unit", "Service", "Install"]


def test_execstart_runs_a_worker_of_the_master() -> None:
    unit = parse_unit(render())
    commands = values(unit, "Service", "ExecStart")
    assert len(commands) == 1
    # Exactly this command line, in this order: the load tests, then worker mode and where
    # the master is.
    assert exec_argv(commands[0]) == [
        "/opt/clusterkit/loadgen/venv/bin/locust",
        "-f",
        "/opt/clusterkit/loadgen/loadtests",
        "--worker",
        "--master-host",
        "10.77.0.1",
        "--master-port",
        "5557",
    ]


def test_master_address_and_port_come_from_the_variables() -> None:
    unit = parse_unit(
        render(loadgen_master_host="loadmaster.example.internal", loadgen_master_port=6000)
    )
    argv = exec_argv(values(unit, "Service", "ExecStart")[0])
    assert argv[argv.index("--master-host") + 1] == "loadmaster.example.internal"
    assert argv[argv.index("--master-port") + 1] == "6000"
    assert values(unit, "Unit", "Description") == [
        "Locust worker %i (master loadmaster.example.internal:6000)"
    ]


def test_unit_starts_after_the_network_and_always_comes_back() -> None:
    unit = parse_unit(render())
    # Ordered after the network is online (and pulls it in): a worker's first act is to
    # connect to its master.
    assert "network-online.target" in " ".join(values(unit, "Unit", "After")).split()
    assert "network-online.target" in " ".join(values(unit, "Unit", "Wants")).split()
    # The master tells its workers to quit at the end of a run (exit 0): only
    # Restart=always brings them back for the next one, without a start limit.
    assert values(unit, "Service", "Restart") == ["always"]
    assert values(unit, "Service", "RestartSec") == ["2"]
    assert values(unit, "Unit", "StartLimitIntervalSec") == ["0"]
    assert values(unit, "Service", "User") == ["locust"]
    assert values(unit, "Service", "Group") == ["locust"]
    assert values(unit, "Service", "LimitNOFILE") == ["65536"]
    assert values(unit, "Service", "SyslogIdentifier") == ["clusterkit-locust-worker-%i"]
    assert values(unit, "Install", "WantedBy") == ["multi-user.target"]


def test_extra_arguments_are_appended_quoted_for_systemd() -> None:
    extra = ["--loglevel", "WARNING", 'a "quoted" value', "50% of $HOME", "back\\slash"]
    unit = parse_unit(render(loadgen_worker_extra_args=extra))
    line = values(unit, "Service", "ExecStart")[0]
    argv = exec_argv(line)
    assert argv[:8] == exec_argv(values(parse_unit(render()), "Service", "ExecStart")[0])
    assert argv[8:] == extra
    # Specifiers and variables are escaped, so systemd passes them on literally.
    assert '"50%% of $$HOME"' in line


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="needs systemd-analyze")
def test_rendered_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    locust = venv / "bin" / "locust"
    locust.write_text("#!/bin/sh\n")
    locust.chmod(0o755)
    unit = tmp_path / UNIT
    unit.write_text(
        render(loadgen_venv=str(venv), loadgen_worker_extra_args=["--loglevel", "50% $X"])
    )
    # What the role's `validate:` runs before the unit replaces the installed one.
    result = subprocess.run(
        ["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    locust.unlink()
    result = subprocess.run(
        ["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode != 0
    assert "is not executable" in result.stderr


# -- the role's defaults (Ansible's own templating) ---------------------------------------

ansible_template = pytest.importorskip("ansible.template")


def derived(**overrides: object):
    from ansible.parsing.dataloader import DataLoader
    from ansible.plugins.loader import init_plugin_loader
    from ansible.utils.collection_loader import AnsibleCollectionConfig

    # The defaults use lookups by their full names (ansible.builtin.file, .fileglob), which
    # resolve once the collection loader is in place, as ansible-playbook sets it up.
    if AnsibleCollectionConfig.collection_finder is None:
        init_plugin_loader()

    defaults = yaml.safe_load((ROLE / "defaults" / "main.yml").read_text())
    role_vars = yaml.safe_load((ROLE / "vars" / "main.yml").read_text())
    variables = {
        **trusted(defaults),
        "role_path": str(ROLE),
        "ansible_facts": {},
        **overrides,
        **trusted(role_vars),
    }
    templar = ansible_template.Templar(loader=DataLoader(), variables=variables)

    def get(name: str):
        return templar.template(ansible_template.trust_as_template("{{ " + name + " }}"))

    return get


def requirements_pin(package: str) -> str:
    for line in (ROOT / "requirements.txt").read_text().splitlines():
        name, sep, version = line.partition("==")
        if sep and name.strip() == package:
            return version.strip()
    raise AssertionError(f"{package} is not pinned in requirements.txt")


def test_locust_version_is_the_controllers_pin() -> None:
    assert derived()("loadgen_locust_version") == requirements_pin("locust") == "2.47.0"


def test_workers_per_host_default_to_the_vcpus_else_one() -> None:
    with_facts = derived(ansible_facts={"processor_vcpus": 4})
    assert int(with_facts("loadgen_workers_per_host")) == 4
    assert with_facts("loadgen_worker_indexes") == [1, 2, 3, 4]
    without_facts = derived()
    assert int(without_facts("loadgen_workers_per_host")) == 1
    assert without_facts("loadgen_worker_indexes") == [1]
    assert derived(loadgen_workers_per_host=0)("loadgen_worker_indexes") == []


def test_every_load_test_is_copied_and_paths_derive_from_home() -> None:
    get = derived(loadgen_home="/srv/lg")
    files = [Path(f).name for f in get("loadgen_loadtests_files")]
    assert files == sorted(p.name for p in (ROOT / "loadtests").glob("*.py"))
    assert "api.py" in files
    assert get("loadgen_venv") == "/srv/lg/venv"
    assert get("loadgen_loadtests_dir") == "/srv/lg/loadtests"
    assert Path(get("loadgen_cache_dir")).resolve() == ROOT / ".cache" / "loadgen"


def test_defaults_argument_spec_and_readme_list_the_same_variables() -> None:
    defaults = yaml.safe_load((ROLE / "defaults" / "main.yml").read_text())
    spec = yaml.safe_load((ROLE / "meta" / "argument_specs.yml").read_text())
    options = spec["argument_specs"]["main"]["options"]
    readme = (ROLE / "README.md").read_text()
    table = readme.split("## Role Variables", 1)[1].split("\n## ", 1)[0]
    documented = set(re.findall(r"`(loadgen_[a-z_]+)`", table.split("Derived", 1)[0]))
    assert all(name.startswith("loadgen_") for name in defaults)
    assert set(defaults) == set(options) == documented
    for name, option in options.items():
        if "default" in option:
            assert option["default"] == defaults[name], name
