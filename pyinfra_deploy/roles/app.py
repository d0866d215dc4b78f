"""The app role (roles/app): the reference app from a wheelhouse built on the controller, in a
venv on the host, with its environment files and systemd units; the master and the workers
restarted only for new code or config (the workers one at a time, each healthy before the
next), surplus workers stopped. The image install method is Ansible's only."""

from __future__ import annotations

import json
from collections.abc import Generator
from pathlib import Path
from typing import Any

from pyinfra.api import deploy
from pyinfra.api.operation import OperationMeta

from pyinfra_deploy import helpers
from pyinfra_deploy.helpers import Command, Vars, quote
from pyinfra_deploy.roles.firewall import role_rules
from pyinfra_deploy.variables import ROOT


def refuse_unsupported(v: Vars) -> None:
    """Refuse what the pyinfra deploy does not implement, before any host changes (deploy.py
    calls it first; preflight.yml)."""
    if v["app_install_method"] == "image":
        raise RuntimeError(
            f"{v.name}: app_install_method=image is not implemented by the pyinfra deploy: use "
            "ansible-playbook for this inventory, or app_install_method: pip"
        )


def _install(v: Vars) -> list[OperationMeta]:
    """install.yml: the group and user, then the app in its venv (the operations whose change
    restarts the app)."""
    grp, usr = v["app_group"], v["app_user"]
    helpers.system_user("app", usr, grp, v["app_home"], "clusterkit app")
    if v["app_install_method"] != "pip":
        return []
    if v["app_artifact"] or not v.render("{{ app_wheelhouse | bool }}"):
        raise RuntimeError(
            "the pyinfra deploy installs the default artifact with a wheelhouse only"
        )
    return [_install_pip(v)]


def _build(v: Vars) -> tuple[str, dict[str, Any]]:
    """The app's wheel and this host's wheelhouse, built on the controller."""
    py = helpers.host_python(v.name, v["app_python"])
    cache_dir = str(Path(v["app_cache_dir"]).resolve())
    build = [
        helpers.CONTROLLER_PYTHON,
        str(ROOT / "scripts/app-build.py"),
        "--cache-dir",
        cache_dir,
    ]
    app_dir = str(Path(v["app_source_dir"]).resolve())
    wheel = json.loads(helpers.on_controller(*build, "wheel", "--app-dir", app_dir))["wheel"]
    house = json.loads(
        helpers.on_controller(
            *build,
            "wheelhouse",
            "--artifact",
            wheel,
            "--python-version",
            py["version"],
            "--machine",
            py["machine"],
            "--glibc",
            py["libc"],
        )
    )
    return wheel, house


def _install_pip(v: Vars) -> OperationMeta:
    home, venv = v["app_home"], v["app_venv"]
    wheel, house = _build(v)
    key, artifact = house["key"], Path(wheel).name
    src = f"{home}/wheelhouse/{key}"
    for path in (home, f"{home}/dist", f"{home}/wheelhouse"):
        helpers.directory(path)
    tar = f"{home}/dist/{key}.tar"
    helpers.installed_file(name="Copy the wheelhouse", dest=tar, src=house["archive"])
    helpers.ensure(
        name="Unpack the wheelhouse",
        check=lambda: not helpers.run_now(f"test -e {quote(src + '/' + artifact)}")[0],
        apply=lambda: iter(
            [f"mkdir -p {quote(src)} && tar -xf {quote(tar)} -C {quote(src)} --no-same-owner"]
        ),
    )

    def old() -> list[str]:
        _, out = helpers.run_now(
            f"ls -1d {quote(home)}/dist/* {quote(home)}/dist/.[!.]* {quote(home)}/wheelhouse/* "
            f"{quote(home)}/wheelhouse/.[!.]* 2>/dev/null || true"
        )
        return [p for p in out if p and p not in (src, tar)]

    helpers.ensure(
        name="Remove wheelhouses of earlier versions",
        check=lambda: bool(old()),
        apply=lambda: iter([f"rm -rf {' '.join(quote(p) for p in old())}"]),
    )
    helpers.ensure(
        name="Create the app venv",
        check=lambda: not helpers.run_now(f"test -e {quote(venv)}/bin/python")[0],
        apply=lambda: iter([f"{quote(v['app_python'])} -m venv {quote(venv)}"]),
    )
    marker = f"{key} {venv}"
    pip = f"{venv}/bin/python -m pip install -q --disable-pip-version-check --no-input"
    extra = " ".join(quote(a) for a in v["app_pip_extra_args"])
    wanted = f"--find-links {quote(src)} {extra} {quote(src + '/' + artifact)}"
    installed = helpers.ensure(
        name="Install the app into the venv",
        check=lambda: (
            helpers.run_now(f"cat {quote(home)}/installed 2>/dev/null || true")[1] != [marker]
        ),
        apply=lambda: iter(
            [
                f"{pip} --no-index {wanted}",
                f"{pip} --force-reinstall --no-deps --no-index {wanted}",
            ]
        ),
    )
    helpers.installed_file(
        name="Record which artifact the venv holds",
        dest=f"{home}/installed",
        content=marker + "\n",
    )
    return installed


def _configure(v: Vars) -> tuple[OperationMeta, list[OperationMeta], list[OperationMeta]]:
    """configure.yml: the environment files and the units; the operations whose change restarts
    every process, the master, the workers. systemd reloads for new units right after."""
    grp, conf_dir = v["app_group"], v["app_config_dir"]
    helpers.directory(conf_dir, group=grp, mode="0750")
    check_cmd = v["app_check_command"]

    def env_validate(loaded: list[str]) -> str | None:
        if not check_cmd:
            return None
        return (
            "/usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin /bin/sh -c "
            f'\'set -a; for f in "$@"; do . "$f" || exit 2; done; exec {check_cmd}\' sh '
            + " ".join(loaded)
            + " %s"
        )

    def env_file(name: str, loaded: list[str], env: Any, description: str) -> OperationMeta:
        return helpers.write_template(
            v,
            "app/environment.j2",
            f"{conf_dir}/{name}",
            mode="0640",
            group=grp,
            validate=env_validate(loaded),
            app_env_vars=env,
            app_env_description=description,
        )

    runs_master, workers = bool(v["app_runs_master"]), int(v["app_worker_count"])
    master_unit = v["app_master_unit"]
    shared = env_file(
        "app.env",
        [],
        v["app_env_shared"],
        f"Environment shared by the app's master and workers (NODE_ID={v['app_node_id']}).",
    )
    loaded = [f"{conf_dir}/app.env"]
    master_ops: list[OperationMeta] = []
    worker_ops: list[OperationMeta] = []
    if runs_master:
        master_ops.append(
            env_file(
                "master.env",
                loaded,
                v["app_env_master"],
                f"Environment of {master_unit} (loaded after app.env).",
            )
        )
    if workers:
        worker_ops.append(
            env_file(
                "worker.env",
                loaded,
                v["app_env_worker"],
                f"Environment of every {v['app_worker_unit_template']} "
                "instance (loaded after app.env).",
            )
        )

    def unit_file(name: str) -> Any:
        return helpers.write_template(
            v,
            f"app/{name}.j2",
            f"/etc/systemd/system/{name}",
            validate=helpers.UNIT_VALIDATE.format(unit=name),
        )

    units = [unit_file(v["app_target_unit"])]
    if runs_master:
        master_ops.append(unit_file(master_unit))
        units.append(master_ops[-1])
    worker_ops.append(unit_file(v["app_worker_unit_template"]))
    units.append(worker_ops[-1])
    helpers.shell(
        "Reload systemd after a unit change",
        ["systemctl daemon-reload"],
        _if=helpers.any_changed(*units),
    )
    return shared, master_ops, worker_ops


def _service_master(v: Vars, restart_for: list[OperationMeta]) -> None:
    """service.yml, the master: started and healthy, restarted for new code or config; stopped
    where the host left group app_master."""
    master_unit, timeout = v["app_master_unit"], int(v["app_health_timeout"])
    master_url = (
        f"http://{v['app_health_host']}:{int(v['app_master_health_port'])}{v['app_health_path']}"
    )
    if v["app_runs_master"]:
        started = helpers.enable_and_start(master_unit)
        helpers.ensure(
            name="Wait until the master reports healthy",
            check=lambda: not helpers.run_now(helpers.http_ok(master_url))[0],
            apply=lambda: iter(
                [helpers.retry_until(helpers.http_ok(master_url), timeout, "master")]
            ),
        )
        helpers.ensure(
            name="Restart the master for its new code or config",
            check=lambda: helpers.any_changed(*restart_for)() and not helpers.has_changed(started),
            apply=lambda: iter(
                [
                    f"systemctl restart {master_unit}",
                    helpers.retry_until(helpers.http_ok(master_url), timeout, "master"),
                ]
            ),
        )
    else:
        helpers.ensure(
            name="Stop the master (not in group app_master)",
            check=lambda: helpers.run_now(
                f"test -e /etc/systemd/system/{master_unit} && "
                f"{{ systemctl is-enabled --quiet {master_unit} || "
                f"systemctl is-active --quiet {master_unit}; }}"
            )[0],
            apply=lambda: iter([f"systemctl disable --now {master_unit}"]),
        )


def _service_workers(v: Vars, restart_for: list[OperationMeta]) -> None:
    """service.yml, the workers: started and healthy, restarted one at a time for new code or
    config, the surplus ones stopped; then the unit that groups them."""
    addr, timeout = v["app_health_host"], int(v["app_health_timeout"])
    health, target = v["app_health_path"], v["app_target_unit"]
    ports = [int(p) for p in v["app_worker_ports"]]
    started_workers = [helpers.enable_and_start(f"clusterkit-worker@{p}.service") for p in ports]
    for p in ports:
        url = f"http://{addr}:{p}{health}"
        helpers.ensure(
            name=f"Wait until worker {p} reports healthy",
            check=lambda url=url: not helpers.run_now(helpers.http_ok(url))[0],
            apply=lambda url=url: iter(
                [helpers.retry_until(helpers.http_ok(url), timeout, f"worker {url}")]
            ),
        )

    def restart_workers() -> Generator[Command, None, None]:
        for p, op in zip(ports, started_workers, strict=True):
            if not helpers.has_changed(op):
                url = f"http://{addr}:{p}{health}"
                yield f"systemctl restart clusterkit-worker@{p}.service"
                yield helpers.retry_until(helpers.http_ok(url), timeout, f"worker {url}")

    helpers.ensure(
        name="Restart the workers one at a time",
        check=lambda: (
            helpers.any_changed(*restart_for)()
            and any(not helpers.has_changed(op) for op in started_workers)
        ),
        apply=restart_workers,
        _serial=True,
    )

    def surplus() -> list[int]:
        _, out = helpers.run_now(
            "{ systemctl list-units --all --plain --no-legend --full 'clusterkit-worker@*.service' "
            f"| awk '{{print $1}}'; ls -1 /etc/systemd/system/{target}.wants 2>/dev/null; }} "
            "| sed -n 's/^clusterkit-worker@\\([0-9][0-9]*\\)[.]service$/\\1/p' | sort -u"
        )
        return sorted({int(p) for p in out if p.strip()} - set(ports))

    helpers.ensure(
        name="Stop and disable the surplus workers",
        check=lambda: bool(surplus()),
        apply=lambda: iter(
            [f"systemctl disable --now clusterkit-worker@{p}.service" for p in surplus()]
        ),
    )
    helpers.enable_and_start(target)


@deploy("app")
def app(v: Vars) -> None:
    """The app role's main entry, on the hosts of groups app_master and app_workers."""
    refuse_unsupported(v)
    installed = _install(v)
    shared, master_ops, worker_ops = _configure(v)
    role_rules(v, "app", list(v["app_firewall_rules"]))  # firewall.yml
    _service_master(v, [*installed, shared, *master_ops])
    _service_workers(v, [*installed, shared, *worker_ops])
