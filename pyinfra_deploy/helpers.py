"""The operations the roles share (pyinfra_deploy/roles/), beyond pyinfra's own: files installed
only after their validation command accepted them, packages and services, commands that see
secrets only through a root-only file (never on a command line), waits, and the checks they
run on the host. Each operation looks at the host when it runs and yields nothing when the
host is already as wanted, so a second run reports no change."""

from __future__ import annotations

import hashlib
import json
import secrets
import shlex
import subprocess
import sys
from collections.abc import Callable, Generator, Mapping
from functools import cache
from io import BytesIO
from pathlib import Path
from typing import IO, Any

from pyinfra import host
from pyinfra.api import FileUploadCommand, FunctionCommand, StringCommand, operation
from pyinfra.api.operation import OperationMeta
from pyinfra.facts.server import Command as CommandFact
from pyinfra.operations import files, server

from pyinfra_deploy.templating import render
from pyinfra_deploy.variables import ROOT, HostVars

Vars = HostVars
Command = StringCommand | FileUploadCommand | FunctionCommand
CONTROLLER_PYTHON = sys.executable
# systemd-analyze verify for a unit file uploaded under another name (`%s`).
UNIT_VALIDATE = (
    '/bin/sh -c \'d=$(mktemp -d) && cp "$1" "$d/$2" && systemd-analyze verify "$d/$2"; '
    'rc=$?; rm -rf "$d"; exit $rc\' sh %s {unit}'
)


def quote(value: Any) -> str:
    """`value` as one shell word."""
    return shlex.quote(str(value))


# ------------------------------------------------------------------- looking at the host now


def sudo_arguments() -> dict[str, Any]:
    """sudo for what runs outside an operation, as the host's data asks for the operations
    (pyinfra_deploy/inventory.py: a login user other than root): checks read root's files."""
    if not host.data.get("_sudo"):
        return {}
    out: dict[str, Any] = {"_sudo": True}
    if host.data.get("_sudo_password"):
        out["_sudo_password"] = host.data.get("_sudo_password")
    return out


def run_now(cmd: str, secrets_env: Mapping[str, str] | None = None) -> tuple[bool, list[str]]:
    """Run a command on the current host now (read-only checks); secrets as environment."""
    if secrets_env:
        path = _upload_secret_file(secrets_env)
        cmd = f". {path}; rm -f {path}; {cmd}"
    ok, output = host.run_shell_command(StringCommand(cmd), **sudo_arguments())
    return ok, output.stdout_lines


def fact_output(cmd: str) -> str:
    """The output of `cmd` on the current host, as a pyinfra fact (asked once per run)."""
    return host.get_fact(CommandFact, cmd)


@cache
def is_container(name: str) -> bool:
    """Whether host `name` (the current one) is a container (roles/common/tasks/facts.yml)."""
    return fact_output("systemd-detect-virt --container || true").strip() not in ("", "none")


@cache
def host_python(name: str, app_python: str = "python3") -> dict[str, str]:
    """Version, machine and libc of `app_python` on host `name` (the current one)."""
    out = fact_output(
        f"{app_python} -c \"import json, platform, sys; print(json.dumps({{'version': '%d.%d.%d' % "
        "sys.version_info[:3], 'machine': platform.machine(), 'libc': platform.libc_ver()[1]}))\"",
    )
    return json.loads(out)


@cache
def on_controller(*argv: str) -> str:
    """A command on the controller (downloads, builds: cached by the commands themselves)."""
    return subprocess.run(argv, cwd=ROOT, check=True, capture_output=True, text=True).stdout


# ------------------------------------------------------------------------------- secrets


def _export_lines(values: Mapping[str, str]) -> bytes:
    return "".join(f"export {k}={shlex.quote(str(v))}\n" for k, v in values.items()).encode()


def _upload_secret_file(values: Mapping[str, str]) -> str:
    """Upload `export NAME='value'` lines as a mode-0600 file; returns its path on the host."""
    path = f"/root/.clusterkit-{secrets.token_hex(8)}"
    host.put_file(BytesIO(_export_lines(values)), path, **sudo_arguments())
    return path


def with_secrets(cmd: str, values: Mapping[str, str]) -> Generator[Command, None, None]:
    """Commands that run `cmd` with `values` in its environment (read from a temp file)."""
    path = f"/root/.clusterkit-{secrets.token_hex(8)}"
    yield FileUploadCommand(BytesIO(_export_lines(values)), path)
    yield StringCommand(f"chmod 600 {path}; . {path}; rm -f {path}; {cmd}")


# ---------------------------------------------------------------------------- operations


def _sha1(src: str | bytes) -> str:
    if isinstance(src, bytes):
        return hashlib.sha1(src).hexdigest()  # noqa: S324 - a content check, as pyinfra's own
    digest = hashlib.sha1()  # noqa: S324
    with open(src, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@operation()
def installed_file(
    dest: str,
    content: str | bytes | Callable[[], str] | None = None,
    src: str | Path | None = None,
    mode: str = "0644",
    user: str = "root",
    group: str = "root",
    validate: str | None = None,
    force: bool = True,
) -> Generator[Command, None, None]:
    """Install `content` (or the controller file `src`) at `dest`, with owner and mode. A new
    version is uploaded next to `dest`, checked with `validate` (`%s` = its path) and only
    then moved into place, so a rejected one never replaces the file in use. With
    `force=False` an existing `dest` is left as it is (written once, like Ansible's force: no)."""
    if not force and run_now(f"test -e {shlex.quote(dest)}")[0]:
        return
    if callable(content):
        content = content()
    body: str | bytes = content.encode() if isinstance(content, str) else (content or b"")
    local: str | bytes = str(src) if src is not None else body
    want = _sha1(local)
    ok, out = run_now(
        f"if [ -e {shlex.quote(dest)} ]; then stat -c '%U %G %a' {shlex.quote(dest)}; "
        f"sha1sum {shlex.quote(dest)} | cut -d' ' -f1; fi"
    )
    current = out if ok and len(out) == 2 else None
    owner = f"{user} {group} {int(mode, 8):o}"
    if current is not None and current[1] == want:
        if current[0] != owner:
            yield f"chown {user}:{group} {shlex.quote(dest)} && chmod {mode} {shlex.quote(dest)}"
        return
    candidate = f"{Path(dest).parent}/.{Path(dest).name}.clusterkit-new"
    upload: str | IO[bytes] = local if isinstance(local, str) else BytesIO(local)
    yield FileUploadCommand(upload, candidate)
    steps = [
        f"chown {user}:{group} {shlex.quote(candidate)}",
        f"chmod {mode} {shlex.quote(candidate)}",
    ]
    if validate:
        check = validate.replace("%s", shlex.quote(candidate))
        steps.append(f"{{ {check} ; }} || {{ rm -f {shlex.quote(candidate)}; exit 1; }}")
    steps.append(f"mv -f {shlex.quote(candidate)} {shlex.quote(dest)}")
    yield " && ".join(steps)


@operation()
def ensure(
    check: Callable[[], bool],
    apply: Callable[[], Generator[Command, None, None]],
) -> Generator[Command, None, None]:
    """Run the commands of `apply` only when `check` (run on the host now) says they are due."""
    if check():
        yield from apply()


def mark_changed(*_: Any) -> None:
    """A FunctionCommand body that only marks a change (e.g. a restart requested)."""


def has_changed(op: OperationMeta) -> bool:
    """Whether an operation of this run changed the host (False before it has run)."""
    return op.is_complete() and op.did_change()


def any_changed(*ops: OperationMeta) -> Callable[[], bool]:
    """A condition (`_if`, `check`): whether any of `ops` changed the host."""
    return lambda: any(has_changed(op) for op in ops)


def barrier(name: str) -> OperationMeta:
    """An operation every host runs (and that changes nothing): pyinfra orders operations per
    host, so this makes every host finish what comes before it first, as a play does."""
    return server.shell(name=f"--- {name} ---", commands=[])


def shell(name: str, commands: list[str], **kwargs: Any) -> OperationMeta:
    """Commands that always run (or when `_if` says so)."""
    return server.shell(name=name, commands=commands, **kwargs)


def directory(
    path: str, user: str = "root", group: str = "root", mode: str = "0755", name: str = ""
) -> OperationMeta:
    """The directory `path` with owner and mode (the operation named "Create <path>")."""
    return files.directory(
        name=name or f"Create {path}", path=path, user=user, group=group, mode=mode
    )


def system_user(label: str, user: str, group: str, home: str, comment: str) -> None:
    """A system group and a system user in it that cannot log in; its home is not created."""
    server.group(name=f"Create the {label} group", group=group, system=True)
    server.user(
        name=f"Create the {label} user",
        user=user,
        group=group,
        system=True,
        home=home,
        shell="/usr/sbin/nologin",
        create_home=False,
        ensure_home=False,
        comment=comment,
    )


def write_template(
    v: Vars,
    name: str,
    dest: str,
    mode: str = "0644",
    user: str = "root",
    group: str = "root",
    validate: str | None = None,
    **extra: Any,
) -> OperationMeta:
    """The role template `name` ("<role>/<file>") rendered for the host, at `dest`."""
    return installed_file(
        name=f"Write {dest}",
        dest=dest,
        content=render(name, v, **extra),
        mode=mode,
        user=user,
        group=group,
        validate=validate,
    )


def write_default_file(v: Vars, unit: str, args: list[str], env: dict[str, str]) -> OperationMeta:
    """/etc/default/<unit> from templates/monitoring/default.j2 (root-only with secrets)."""
    scoped = HostVars(
        v.world,
        v.name,
        {
            "monitoring_default_unit": f"{unit}.service",
            "monitoring_default_args": args,
            "monitoring_default_env": env,
        },
    )
    return write_template(
        scoped, "monitoring/default.j2", f"/etc/default/{unit}", mode="0600" if env else "0644"
    )


def apt_install(packages: list[str], name: str, recommends: bool = True) -> OperationMeta:
    """Install missing packages (the index is refreshed only when something is missing);
    `recommends=False` as common_install_recommends: false (apt's --no-install-recommends)."""
    names = " ".join(quote(p) for p in packages)
    extra = "" if recommends else "--no-install-recommends "

    def missing() -> bool:
        ok, out = run_now(f"dpkg-query -W -f='${{Status}}\\n' {names} 2>/dev/null || true")
        return len([s for s in out if s.endswith(" installed")]) != len(packages)

    def install() -> Generator[Command, None, None]:
        yield "apt-get update -q"
        yield f"DEBIAN_FRONTEND=noninteractive apt-get install -y -q {extra}{names}"

    return ensure(name=name, check=missing, apply=install)


def enable_and_start(
    unit: str, enabled: bool = True, running: bool = True, no_block: bool = False, **kwargs: Any
) -> OperationMeta:
    """Enable `unit` at boot and start it, where it is not yet (`no_block`: activating is
    enough)."""
    u = quote(unit)

    def due() -> bool:
        _, out = run_now(
            f"systemctl is-enabled {u} 2>/dev/null; systemctl is-active {u} 2>/dev/null"
        )
        out = out + ["", ""]
        return (enabled and out[0] not in ("enabled", "static")) or (
            running and out[1] != "active" and not (no_block and out[1] == "activating")
        )

    def apply() -> Generator[Command, None, None]:
        if enabled:
            yield f"systemctl enable {u}"
        if running:
            yield f"systemctl start {'--no-block ' if no_block else ''}{u}"

    return ensure(name=f"Run {unit}", check=due, apply=apply, **kwargs)


# ----------------------------------------------------------------------------------- waits


def retry_until(cmd: str, seconds: int, what: str) -> str:
    """Shell that retries `cmd` once a second for `seconds` seconds, then fails naming `what`."""
    return (
        f"for _ in $(seq 1 {int(seconds)}); do if {cmd}; then exit 0; fi; sleep 1; done; "
        f"echo {quote(what + ' not ready in time')} >&2; exit 1"
    )


def http_ok(url: str) -> str:
    """Shell that succeeds when `url` answers without an HTTP error (Python on the host)."""
    return (
        "python3 -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=3)' "
        f"{quote(url)} >/dev/null 2>&1"
    )


def wait_until(name: str, ready: str, seconds: int, what: str) -> OperationMeta:
    """Wait (at most `seconds`) until the shell test `ready` succeeds on the host; no change
    when it already does."""
    return ensure(
        name=name,
        check=lambda: not run_now(ready)[0],
        apply=lambda: iter([retry_until(f"{{ {ready}; }}", seconds, what)]),
    )


def wait_for_page(name: str, url: str, seconds: int, what: str) -> OperationMeta:
    """Wait until `url` answers 200 or 301 on the host."""
    page = (
        f"code=$(curl -s -o /dev/null --max-time 2 -w '%{{http_code}}' {quote(url)}); "
        '[ "$code" = 200 ] || [ "$code" = 301 ]'
    )
    return wait_until(name, page, seconds, what)


def wait_for_http(name: str, url: str, seconds: int) -> OperationMeta:
    """Wait until `url` answers 200 on the host."""
    ok = f"[ \"$(curl -s -o /dev/null --max-time 2 -w '%{{http_code}}' {quote(url)})\" = 200 ]"
    return wait_until(name, ok, seconds, url)
