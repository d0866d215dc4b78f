"""The few operations the deploy needs beyond pyinfra's own: a file installed only after a
validation command accepted it, and commands that see secrets only through a root-only file
(never on a command line). Each operation looks at the host when it runs and yields nothing
when the host is already as wanted, so a second run reports no change."""

from __future__ import annotations

import hashlib
import secrets
import shlex
from collections.abc import Callable, Generator, Mapping
from io import BytesIO
from pathlib import Path
from typing import IO, Any

from pyinfra import host
from pyinfra.api import FileUploadCommand, FunctionCommand, StringCommand, operation
from pyinfra.api.exceptions import OperationError

Command = StringCommand | FileUploadCommand | FunctionCommand


def escalation() -> dict[str, Any]:
    """sudo for what runs outside an operation, as the host's data asks for the operations
    (pyinfra_deploy/inventory.py: a login user other than root): checks read root's files."""
    if not host.data.get("_sudo"):
        return {}
    out: dict[str, Any] = {"_sudo": True}
    if host.data.get("_sudo_password"):
        out["_sudo_password"] = host.data.get("_sudo_password")
    return out


def run(cmd: str, secrets_env: Mapping[str, str] | None = None) -> tuple[bool, list[str]]:
    """Run a command on the current host now (read-only checks); secrets as environment."""
    if secrets_env:
        path = secret_file(secrets_env)
        cmd = f". {path}; rm -f {path}; {cmd}"
    ok, output = host.run_shell_command(StringCommand(cmd), **escalation())
    return ok, output.stdout_lines


def secret_file(values: Mapping[str, str]) -> str:
    """Upload `export NAME='value'` lines as a mode-0600 file; returns its path on the host."""
    path = f"/root/.clusterkit-{secrets.token_hex(8)}"
    host.put_file(BytesIO(env_lines(values)), path, **escalation())
    return path


def env_lines(values: Mapping[str, str]) -> bytes:
    return "".join(f"export {k}={shlex.quote(str(v))}\n" for k, v in values.items()).encode()


def with_secrets(cmd: str, values: Mapping[str, str]) -> Generator[Command, None, None]:
    """Commands that run `cmd` with `values` in its environment (read from a temp file)."""
    path = f"/root/.clusterkit-{secrets.token_hex(8)}"
    yield FileUploadCommand(BytesIO(env_lines(values)), path)
    yield StringCommand(f"chmod 600 {path}; . {path}; rm -f {path}; {cmd}")


def _digest(src: str | bytes) -> str:
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
    if not force and run(f"test -e {shlex.quote(dest)}")[0]:
        return
    if callable(content):
        content = content()
    body: str | bytes = content.encode() if isinstance(content, str) else (content or b"")
    local: str | bytes = str(src) if src is not None else body
    want = _digest(local)
    ok, out = run(
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


def fail(message: str) -> None:
    raise OperationError(message)


def nothing(*_: Any) -> None:
    """A FunctionCommand body that only marks a change (e.g. a restart requested)."""
