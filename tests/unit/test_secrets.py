"""No secret is committed in clear.

Scans the files git tracks (`git ls-files`) with detect-secrets (private keys, cloud and service
tokens, high-entropy strings, passwords assigned in YAML/ini/Python), and checks what the kit
itself must keep out of git: the generated-secrets directories (`<inventory>/.secrets/`) are
ignored and untracked, no key or certificate file is tracked, and every vault file is encrypted.

Known findings that are not secrets (test fixtures, checksums, docs) are listed in
`secrets-allowlist.yml` beside this file, each with the reason. The scanner's own tests plant
secrets in a throw-away git repository and check that each one is reported.
"""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from detect_secrets.core import scan
from detect_secrets.settings import default_settings

ROOT = Path(__file__).resolve().parents[2]
ALLOWLIST = Path(__file__).with_name("secrets-allowlist.yml")
VAULT_HEADER = "$ANSIBLE" + "_VAULT;"  # split: this file is scanned too
# Files that hold keys or certificates by their name: never tracked.
KEY_FILE = re.compile(r"(^|/)(id_(rsa|dsa|ecdsa|ed25519)|.*\.(pem|key|p12|pfx|jks|keystore))$")
# Files meant to be ansible-vault encrypted by their name.
VAULT_FILE = re.compile(r"(^|/)([^/]*vault[^/]*\.ya?ml|vault)$")
SECRETS_DIR = re.compile(r"(^|/)\.secrets(/|$)")


@dataclass(frozen=True)
class Finding:
    path: str
    line: int
    kind: str
    secret_sha1: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.kind} (sha1 {self.secret_sha1})"


def git(repo: Path, *args: str) -> str:
    result = subprocess.run(
        ["git", "-C", str(repo), *args], capture_output=True, text=True, check=True, timeout=60
    )
    return result.stdout


def tracked_files(repo: Path) -> list[str]:
    return [p for p in git(repo, "ls-files", "-z").split("\0") if p and (repo / p).is_file()]


def is_text(path: Path) -> bool:
    try:
        path.read_text(encoding="utf-8")
    except (UnicodeDecodeError, OSError):
        return False
    return True


def detect(repo: Path, files: list[str]) -> list[Finding]:
    """detect-secrets' findings (every plugin, default filters) in the given text files."""
    found: list[Finding] = []
    with default_settings():
        for name in files:
            if not is_text(repo / name):
                continue
            for secret in scan.scan_file(str(repo / name)):
                found.append(Finding(name, secret.line_number, secret.type, secret.secret_hash))
    return found


def policy_problems(repo: Path, files: list[str]) -> list[str]:
    """The kit's own rules for files that must not be committed in clear."""
    problems: list[str] = []
    for name in files:
        if SECRETS_DIR.search(name):
            problems.append(f"{name}: generated secrets are tracked (git rm --cached it)")
        if KEY_FILE.search(name):
            problems.append(f"{name}: a key or certificate file is tracked")
        path = repo / name
        if not is_text(path):
            continue
        text = path.read_text(encoding="utf-8")
        if VAULT_FILE.search(name) and not text.startswith(VAULT_HEADER):
            problems.append(f"{name}: vault file is not encrypted (ansible-vault encrypt {name})")
        elif VAULT_HEADER in text and not text.startswith(VAULT_HEADER):
            # inline `!vault |` values are encrypted; a vault header anywhere else means a
            # decrypted or pasted-together file
            for line in text.splitlines():
                if VAULT_HEADER in line and not re.match(r"^\s+" + re.escape(VAULT_HEADER), line):
                    problems.append(f"{name}: vault header in the middle of the file")
                    break
    for inventory in sorted(p for p in (repo / "inventory").glob("*") if p.is_dir()):
        probe = f"{inventory.relative_to(repo).as_posix()}/.secrets/redis_password"
        ignored = subprocess.run(
            ["git", "-C", str(repo), "check-ignore", "-q", "--no-index", probe], timeout=60
        )
        if ignored.returncode != 0:
            problems.append(f"{probe}: not git-ignored (add inventory/*/.secrets/ to .gitignore)")
    return problems


def load_allowlist(path: Path = ALLOWLIST) -> set[tuple[str, str, str]]:
    entries = yaml.safe_load(path.read_text()) or []
    for entry in entries:
        assert set(entry) == {"path", "type", "sha1", "why"}, entry
        assert entry["why"].strip(), f"allow-list entry without a reason: {entry}"
        assert re.fullmatch(r"[0-9a-f]{40}", entry["sha1"]), f"not a SHA-1: {entry}"
    return {(e["path"], e["type"], e["sha1"]) for e in entries}


def unexpected(findings: list[Finding], allowed: set[tuple[str, str, str]]) -> list[Finding]:
    return [f for f in findings if (f.path, f.kind, f.secret_sha1) not in allowed]


# ---------------------------------------------------------------------------------------------
# The repository
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def files() -> list[str]:
    # The allow-list holds only SHA-1 hashes (checked by load_allowlist), which read as
    # high-entropy strings themselves.
    allowlist = ALLOWLIST.relative_to(ROOT).as_posix()
    return [name for name in tracked_files(ROOT) if name != allowlist]


def test_tracked_files_hold_no_secret(files: list[str]) -> None:
    found = unexpected(detect(ROOT, files), load_allowlist())
    assert not found, (
        "possible secrets in tracked files (remove them, or if one is not a secret add it to "
        f"{ALLOWLIST.relative_to(ROOT)} with the reason):\n" + "\n".join(map(str, found))
    )


def test_allowlist_has_no_stale_entries(files: list[str]) -> None:
    found = {(f.path, f.kind, f.secret_sha1) for f in detect(ROOT, files)}
    stale = load_allowlist() - found
    assert not stale, f"allow-list entries that match nothing any more: {sorted(stale)}"


def test_no_generated_secret_key_file_or_clear_vault_is_tracked(files: list[str]) -> None:
    assert policy_problems(ROOT, files) == []


# ---------------------------------------------------------------------------------------------
# The scanner finds planted secrets
# ---------------------------------------------------------------------------------------------

# Built at run time so that this file itself holds no key or token.
FAKE_KEY = "\n".join(
    [
        "-----BEGIN " + "RSA PRIVATE KEY-----",
        "MIIEpAIBAAKCAQEA" + "q" * 48,
        "-----END RSA PRIVATE KEY-----",
    ]
)
PLANTED = "Zq8" + "xT4vLp2" + "Nw9sKd7" + "Hc3Rj6Ym"  # random-looking, 24 characters
FAKE_TOKEN = "ghp_" + "A1b2C3d4E5f6G7h8I9j0" + "K1l2M3n4O5p6Q7r8"


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    git(tmp_path, "init", "-q")
    (tmp_path / ".gitignore").write_text((ROOT / ".gitignore").read_text())
    (tmp_path / "inventory" / "prod" / "group_vars").mkdir(parents=True)
    (tmp_path / "README.md").write_text("nothing to see\n")
    return tmp_path


def commit(repo: Path, files: dict[str, str], *force: str) -> list[str]:
    for name, text in files.items():
        (repo / name).parent.mkdir(parents=True, exist_ok=True)
        (repo / name).write_text(text)
    git(repo, "add", ".")
    if force:
        git(repo, "add", "-f", *force)
    return tracked_files(repo)


def test_a_clean_repository_passes(repo: Path) -> None:
    files = commit(repo, {"inventory/prod/group_vars/all.yml": "redis_port: 6379\n"})
    assert detect(repo, files) == []
    assert policy_problems(repo, files) == []


@pytest.mark.parametrize(
    ("name", "text", "kind"),
    [
        ("deploy/id_ed25519.txt", FAKE_KEY + "\n", "Private Key"),
        ("inventory/prod/group_vars/all.yml", f"redis_password: {PLANTED}\n", "Secret Keyword"),
        ("settings.ini", f"[db]\npassword = {PLANTED}\n", "Secret Keyword"),
        ("tool.py", f'API_TOKEN = "{FAKE_TOKEN}"\n', "GitHub Token"),
    ],
    ids=["private-key", "yaml-password", "ini-password", "py-token"],
)
def test_planted_secrets_are_found(repo: Path, name: str, text: str, kind: str) -> None:
    files = commit(repo, {name: text})
    found = unexpected(detect(repo, files), load_allowlist())
    assert kind in {f.kind for f in found if f.path == name}, found


def test_tracked_generated_secrets_are_found(repo: Path) -> None:
    files = commit(
        repo, {"inventory/prod/.secrets/redis_password": PLANTED}, "inventory/prod/.secrets"
    )
    assert any(".secrets" in p for p in policy_problems(repo, files))


def test_missing_gitignore_rule_is_found(repo: Path) -> None:
    (repo / ".gitignore").write_text("*.retry\n")
    files = commit(repo, {"inventory/prod/hosts.yml": "all: {}\n"})
    assert any("not git-ignored" in p for p in policy_problems(repo, files))


def test_clear_vault_and_key_files_are_found(repo: Path) -> None:
    files = commit(
        repo,
        {
            "inventory/prod/group_vars/vault.yml": "vault_redis_password: hunter2\n",
            "certs/server.key": "not really a key\n",
            "inventory/prod/group_vars/encrypted.yml": VAULT_HEADER + "1.1;AES256\n6162\n",
        },
    )
    problems = policy_problems(repo, files)
    assert any("vault.yml: vault file is not encrypted" in p for p in problems), problems
    assert any("server.key: a key or certificate file" in p for p in problems), problems
    assert not any("encrypted.yml" in p for p in problems), problems
