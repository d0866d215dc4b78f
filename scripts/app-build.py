#!/usr/bin/env python3
"""Prepare the app tier's Python artifacts on the controller, cached so nothing is redone.

  app-build.py wheel [--app-dir DIR] [--cache-dir DIR]
      Build the app's wheel (`pip wheel --no-deps`) into <cache-dir>/<hash>/, where <hash> is a
      hash of what goes into the wheel (pyproject.toml, README.md, src/**). Nothing is built
      when that directory already holds the wheel.

  app-build.py wheelhouse --artifact WHEEL --python-version 3.11.2 --machine x86_64 --glibc 2.36
                          [--cache-dir DIR]
      Download the artifact and its dependencies as wheels for that target (CPython,
      glibc/manylinux) and pack them in one tar: <cache-dir>/wheelhouse/<key>/<key>.tar, where
      <key> is the artifact's hash plus the target. Hosts unpack it and install with
      `pip install --no-index --find-links`. Nothing is downloaded when it exists.

Both print one JSON object: the path(s), the cache key and "built" (whether anything was
made now). The app role runs them on the controller; "built" tells Ansible what changed.
Concurrent runs are serialized with a lock file in the cache directory.
"""

from __future__ import annotations

import argparse
import contextlib
import email.parser
import fcntl
import hashlib
import json
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path

try:  # ansible-core depends on packaging; pip vendors it too
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name
except ImportError:  # pragma: no cover
    from pip._vendor.packaging.requirements import Requirement
    from pip._vendor.packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent
# What ends up in the wheel (and its metadata); everything else in app/ does not matter here.
INPUTS = ("pyproject.toml", "README.md", "src")
SKIP_PARTS = {"__pycache__", ".mypy_cache", ".ruff_cache", ".pytest_cache"}
DONE = ".complete"


def source_hash(app_dir: Path) -> str:
    digest = hashlib.sha256()
    for name in INPUTS:
        base = app_dir / name
        if not base.exists():
            continue
        files = [base] if base.is_file() else sorted(p for p in base.rglob("*") if p.is_file())
        for path in files:
            rel = path.relative_to(app_dir)
            if SKIP_PARTS.intersection(rel.parts) or path.suffix in (".pyc", ".pyo"):
                continue
            digest.update(str(rel).encode() + b"\0")
            digest.update(path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def file_hash(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


@contextlib.contextmanager
def locked(cache_dir: Path) -> Iterator[None]:
    cache_dir.mkdir(parents=True, exist_ok=True)
    with open(cache_dir / ".lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def pip(args: list[str]) -> None:
    cmd = [sys.executable, "-m", "pip", "--disable-pip-version-check", *args]
    result = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        sys.stderr.write(result.stdout + result.stderr)
        raise SystemExit(f"app-build: {' '.join(cmd[2:5])} ... failed (exit {result.returncode})")


def make(target: Path, fill: Callable[[Path], None]) -> bool:
    """Create <target> with fill(tmpdir) unless it is complete already. True if made now."""
    if (target / DONE).exists():
        return False
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".tmp-") as tmp:
        out = Path(tmp) / "out"
        out.mkdir()
        fill(out)
        (out / DONE).write_text("")
        shutil.rmtree(target, ignore_errors=True)
        out.rename(target)
    return True


def prune(parent: Path, keep: int, current: Path) -> None:
    entries = [
        p for p in parent.iterdir() if p.is_dir() and not p.name.startswith(".") and p != current
    ]
    entries = [p for p in entries if (p / DONE).exists()]
    entries.sort(key=lambda p: p.stat().st_mtime, reverse=True)
    for old in entries[max(keep - 1, 0) :]:
        shutil.rmtree(old, ignore_errors=True)


def cmd_wheel(args: argparse.Namespace) -> dict:
    app_dir = args.app_dir.resolve()
    if not (app_dir / "pyproject.toml").is_file():
        raise SystemExit(f"app-build: no pyproject.toml in {app_dir}")
    cache = args.cache_dir.resolve() / "wheel"
    digest = source_hash(app_dir)
    target = cache / digest
    with locked(args.cache_dir.resolve()):
        cache.mkdir(parents=True, exist_ok=True)
        built = make(
            target, lambda out: pip(["wheel", "--no-deps", "--quiet", "-w", str(out), str(app_dir)])
        )
        prune(cache, args.keep, target)
    wheels = sorted(target.glob("*.whl"))
    if len(wheels) != 1:
        raise SystemExit(f"app-build: expected one wheel in {target}, found {len(wheels)}")
    return {"wheel": str(wheels[0]), "hash": digest, "built": built}


def platform_args(python_version: str, machine: str, glibc: str) -> list[str]:
    match = re.fullmatch(r"2\.(\d+)", glibc)
    if not match:
        raise SystemExit(f"app-build: a wheelhouse needs a glibc host (got libc {glibc!r})")
    minor = int(match.group(1))
    cp = "".join(python_version.split(".")[:2])
    tags = [f"manylinux_2_{m}_{machine}" for m in range(minor, 4, -1)]
    tags += [f"manylinux2014_{machine}", f"manylinux2010_{machine}", f"manylinux1_{machine}"]
    tags += [f"linux_{machine}", "any"]
    # The full version (3.11.2) matters: markers such as python_full_version < "3.11.3" pick
    # dependencies.
    out = ["--only-binary=:all:", "--implementation", "cp", "--python-version", python_version]
    for abi in (f"cp{cp}", "abi3", "none"):
        out += ["--abi", abi]
    for tag in tags:
        out += ["--platform", tag]
    return out


def target_environment(python_version: str, machine: str) -> dict[str, str]:
    """Marker environment of the hosts (pip download evaluates markers for the controller)."""
    return {
        "python_version": ".".join(python_version.split(".")[:2]),
        "python_full_version": python_version,
        "implementation_version": python_version,
        "implementation_name": "cpython",
        "platform_python_implementation": "CPython",
        "platform_machine": machine,
        "platform_system": "Linux",
        "sys_platform": "linux",
        "os_name": "posix",
        "platform_release": "",
        "platform_version": "",
        "extra": "",
    }


def requirements_of(wheel: Path) -> list[str]:
    with zipfile.ZipFile(wheel) as archive:
        name = next(
            n for n in archive.namelist() if n.count("/") == 1 and n.endswith(".dist-info/METADATA")
        )
        meta = email.parser.HeaderParser().parsestr(archive.read(name).decode())
    return meta.get_all("Requires-Dist") or []


def missing_for_target(wheels: Path, env: dict[str, str]) -> list[str]:
    """Requirements that apply on the target but have no wheel yet (e.g. a dependency with
    python_full_version < "3.11.3" when the controller runs 3.11.7 and the hosts 3.11.2)."""
    have = {canonicalize_name(w.name.split("-")[0]) for w in wheels.glob("*.whl")}
    missing: dict[str, str] = {}
    for wheel in sorted(wheels.glob("*.whl")):
        for line in requirements_of(wheel):
            req = Requirement(line)
            if req.marker is not None and not req.marker.evaluate(env):
                continue
            name = canonicalize_name(req.name)
            if name not in have:
                req.marker = None
                missing[name] = str(req)
    return sorted(missing.values())


def fill_wheelhouse(
    out: Path, key: str, artifact: Path, extra: list[str], env: dict[str, str]
) -> None:
    wheels = out / "wheels"
    pip(["download", "--quiet", "-d", str(wheels), *extra, str(artifact)])
    for _ in range(10):
        missing = missing_for_target(wheels, env)
        if not missing:
            break
        pip(["download", "--quiet", "-d", str(wheels), *extra, *missing])
    else:
        raise SystemExit(f"app-build: dependencies still missing for the target: {missing}")
    with tarfile.open(out / f"{key}.tar", "w") as tar:
        for path in sorted(wheels.iterdir()):
            tar.add(path, arcname=path.name)
    shutil.rmtree(wheels)


def cmd_wheelhouse(args: argparse.Namespace) -> dict:
    artifact = args.artifact.resolve()
    if not artifact.is_file():
        raise SystemExit(f"app-build: artifact {artifact} not found")
    if not re.fullmatch(r"3\.\d+\.\d+", args.python_version):
        raise SystemExit(f"app-build: --python-version like 3.11.2, got {args.python_version!r}")
    target_name = f"cp{args.python_version}-{args.machine}-glibc{args.glibc}"
    key = f"{file_hash(artifact)}-{target_name}"
    cache = args.cache_dir.resolve() / "wheelhouse"
    target = cache / key
    extra = platform_args(args.python_version, args.machine, args.glibc)
    with locked(args.cache_dir.resolve()):
        cache.mkdir(parents=True, exist_ok=True)
        env = target_environment(args.python_version, args.machine)
        built = make(target, lambda out: fill_wheelhouse(out, key, artifact, extra, env))
        prune(cache, args.keep * 2, target)
    archive = target / f"{key}.tar"
    with tarfile.open(archive) as tar:
        files = sorted(tar.getnames())
    return {"archive": str(archive), "key": key, "files": files, "built": built}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache-dir", type=Path, default=ROOT / ".cache" / "app")
    parser.add_argument("--keep", type=int, default=3, help="cached builds to keep (default 3)")
    sub = parser.add_subparsers(dest="command", required=True)
    wheel = sub.add_parser("wheel", help="build the app's wheel (cached by source hash)")
    wheel.add_argument("--app-dir", type=Path, default=ROOT / "app")
    house = sub.add_parser("wheelhouse", help="download an artifact's dependencies for a target")
    house.add_argument("--artifact", type=Path, required=True)
    house.add_argument("--python-version", required=True, help="e.g. 3.11.2")
    house.add_argument("--machine", required=True, help="e.g. x86_64, aarch64")
    house.add_argument("--glibc", required=True, help="e.g. 2.36")
    args = parser.parse_args()
    result = cmd_wheel(args) if args.command == "wheel" else cmd_wheelhouse(args)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
