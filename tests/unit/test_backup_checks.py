"""playbooks/backup.yml and restore.yml refuse bad input on the controller, before any host.

These run the real ansible-playbook against inventory/example (hosts that do not exist): every
refusal below happens in the first play, on localhost, so no host is ever contacted. The whole
backup-and-restore path runs against the lab in tests/lab/test_backup.py.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
INVENTORY = "inventory/example"
PARTS = {
    "redis/dump.rdb": b"REDIS0010 fake rdb",
    "redis/info.json": b'{"source": "data1"}',
    "mongodb/mongodb.tar.gz": b"fake dump",
    "mongodb/info.json": b'{"replset": "rs0", "database": "clusterkit"}',
    "etcd/etcd.db": b"fake snapshot",
    "etcd/info.json": b'{"source": "data1"}',
}


def playbook(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["ansible-playbook", "-i", INVENTORY, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )


def make_backup(root: Path, name: str = "20261203T120000Z", **manifest: object) -> Path:
    backup = root / name
    files = {}
    for rel, data in PARTS.items():
        path = backup / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        files[rel] = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    body = {
        "format": 1,
        "name": name,
        "components": {
            "redis": {"source": "data1"},
            "mongodb": {"replset": "rs0", "database": "clusterkit"},
            "etcd": {"source": "data1"},
        },
        "files": files,
    }
    body.update(manifest)
    (backup / "manifest.json").write_text(json.dumps(body))
    return backup


@pytest.mark.parametrize("name", ["playbooks/backup.yml", "playbooks/restore.yml"])
def test_playbooks_pass_syntax_check(name: str) -> None:
    result = playbook(name, "--syntax-check")
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("relative", [False, True], ids=["absolute", "relative"])
def test_a_complete_backup_passes_the_checks(tmp_path: Path, relative: bool) -> None:
    """The checks restore.yml's first play makes, alone (the next plays would reach hosts).
    A relative -e backup=<dir> is relative to where ansible-playbook runs (the lab's
    inventory/lab/.backups/<name>), not to the role or the playbook."""
    backup = make_backup(tmp_path / "backups")
    if relative:
        backup = Path(os.path.relpath(backup, ROOT))
    checks = tmp_path / "checks.yml"
    checks.write_text(
        "- hosts: localhost\n"
        "  gather_facts: false\n"
        "  tasks:\n"
        "    - ansible.builtin.import_role: {name: backup, tasks_from: verify.yml}\n"
        "    - ansible.builtin.debug: {var: backup__restoring}\n"
    )
    result = playbook(str(checks), "-e", f"backup={backup}")
    assert result.returncode == 0, result.stdout[-3000:]
    assert '"redis",' in result.stdout


def damaged(tmp_path: Path) -> Path:
    backup = make_backup(tmp_path)
    with (backup / "etcd" / "etcd.db").open("ab") as f:
        f.write(b"x")
    return backup


def without_manifest(tmp_path: Path) -> Path:
    backup = make_backup(tmp_path)
    (backup / "manifest.json").unlink()
    return backup


def without_a_part(tmp_path: Path) -> Path:
    backup = make_backup(tmp_path)
    (backup / "redis" / "dump.rdb").unlink()
    return backup


@pytest.mark.parametrize(
    ("make", "extra", "expected"),
    [
        (None, [], "Name a complete backup"),
        (lambda p: make_backup(p, name="20261203T120000Z.partial"), [], "without .partial"),
        (without_manifest, [], "manifest.json does not exist"),
        (damaged, [], "etcd/etcd.db missing or with a SHA-256 other than the manifest's"),
        (without_a_part, [], "redis/dump.rdb missing or with a SHA-256"),
        (lambda p: make_backup(p, format=2), [], "this kit reads 1"),
        (
            lambda p: make_backup(p, components={"etcd": {}}),
            ["-e", '{"backup_restore_components": ["redis"]}'],
            "does not fit",
        ),
    ],
    ids=[
        "no-backup",
        "partial",
        "no-manifest",
        "checksum",
        "missing-file",
        "format",
        "component-not-in-backup",
    ],
)
def test_restore_refuses_before_any_host(tmp_path: Path, make, extra, expected: str) -> None:
    args = ["playbooks/restore.yml", *extra]
    if make is not None:
        args += ["-e", f"backup={make(tmp_path)}"]
    result = playbook(*args)
    assert result.returncode != 0
    assert expected in result.stdout, result.stdout[-3000:]
    # Refused in the first play, on the controller: no host was reached.
    assert "Restore | etcd" not in result.stdout
    assert "UNREACHABLE" not in result.stdout


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ('{"backup_components": ["redis", "postgres"]}', "a list of redis, mongodb, etcd"),
        ('{"backup_keep": 0}', "backup_keep at least 1"),
    ],
    ids=["unknown-component", "keep-zero"],
)
def test_backup_refuses_bad_variables_before_any_host(
    tmp_path: Path, extra: str, expected: str
) -> None:
    result = playbook(
        "playbooks/backup.yml", "-e", extra, "-e", f"backup_root={tmp_path / 'backups'}"
    )
    assert result.returncode != 0
    assert expected in result.stdout, result.stdout[-3000:]
    assert "UNREACHABLE" not in result.stdout
    assert not (tmp_path / "backups").exists()
