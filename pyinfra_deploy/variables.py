"""Variables of the Ansible roles, resolved the way Ansible resolves them, for pyinfra.

The Ansible inventory (`ansible-inventory --list`) gives groups and host variables; the
roles' `defaults/main.yml` (lowest precedence) and `vars/main.yml` (above the inventory) hold
Jinja expressions. Values are rendered lazily when first read, with Ansible's filters and
tests, native types (`{{ some_list }}` gives a list) and `lookup('ansible.builtin.password')`
reading and writing the same secret files as Ansible's own lookup.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator, Mapping
from functools import cache
from pathlib import Path
from typing import Any

import jinja2
import yaml
from jinja2.nativetypes import NativeEnvironment

ROOT = Path(__file__).resolve().parent.parent
ROLES = (
    "common",
    "firewall",
    "redis",
    "mongodb",
    "etcd",
    "app",
    "haproxy",
    "nginx",
    "keepalived",
    "loadgen",
    "exporters",
    "monitoring",
    # The lab's settings (its network, images): read by the tests and scripts; no deploy
    # step of the pyinfra engine uses them (the lab is created by playbooks/lab.yml).
    "lab",
)
TEMPLATE_MARKERS = ("{{", "{%", "{#")


def inventory_path() -> Path:
    """The Ansible inventory pyinfra deploys to: $CLUSTERKIT_INVENTORY, else the lab."""
    return Path(os.environ.get("CLUSTERKIT_INVENTORY", ROOT / "inventory" / "lab")).resolve()


def tool(name: str) -> Path | str:
    """A command next to the running interpreter (a venv's bin/), else `name` from PATH."""
    beside = Path(sys.executable).parent / name
    return beside if beside.exists() else name


@cache
def ansible_inventory(path: Path) -> dict[str, Any]:
    """`ansible-inventory --list` of an inventory (groups, host variables, not templated)."""
    out = subprocess.run(
        # The venv's tool beside the running interpreter, found without the venv on PATH.
        [str(tool("ansible-inventory")), "-i", str(path), "--list"],
        cwd=ROOT,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return json.loads(out)


def groups_of(inv: dict[str, Any]) -> dict[str, list[str]]:
    """Every group with its hosts, children included (like Ansible's `groups`)."""

    def hosts(group: str, seen: frozenset[str] = frozenset()) -> list[str]:
        entry = inv.get(group, {})
        out = list(entry.get("hosts", []))
        for child in entry.get("children", []):
            if child not in seen:
                out += [h for h in hosts(child, seen | {group}) if h not in out]
        return out

    # Empty groups appear only as a child of another group in `ansible-inventory --list`.
    names = [k for k in inv if k != "_meta"]
    names += sorted({c for k in names for c in inv[k].get("children", [])} - set(names))
    result = {name: hosts(name) for name in names}
    result["all"] = list(inv["_meta"]["hostvars"])
    return result


def password_lookup(path: str, length: int = 20, chars: list[str] | None = None) -> str:
    """Ansible's `password` lookup without encryption: same file format, same generator."""
    from ansible.plugins.lookup.password import (
        _gen_candidate_chars,
        _parse_content,
        _read_password_file,
        _write_password_file,
    )
    from ansible.utils.encrypt import random_password

    b_path = os.fsencode(path)
    content = _read_password_file(b_path)
    if content is not None:
        return _parse_content(content)[0]
    candidates = _gen_candidate_chars(chars or ["ascii_letters", "digits", ".,:-_"])
    password = random_password(length, candidates)
    _write_password_file(b_path, password)
    return password


def lookup(name: str, *terms: Any, **kwargs: Any) -> Any:
    if name in ("password", "ansible.builtin.password"):
        return password_lookup(str(terms[0]), **kwargs)
    if name in ("file", "ansible.builtin.file"):
        return Path(str(terms[0])).read_text().rstrip("\n")
    raise NotImplementedError(f"lookup({name!r}) is not available to the pyinfra deploy")


class ChainableStrictUndefined(jinja2.ChainableUndefined, jinja2.StrictUndefined):
    """Undefined that survives `a.b['c']` (for `| default`) and fails on any real use."""


class _Env(NativeEnvironment):
    """Native types as in Ansible 2.19: a template of one expression keeps the value's
    type; anything else is a string (no literal_eval of concatenated output)."""

    @staticmethod
    def concat(values: Iterator[Any]) -> Any:  # type: ignore[override]
        parts = list(values)
        if len(parts) == 1:
            return parts[0]
        return "".join(str(p) for p in parts)


def add_ansible_plugins(env: jinja2.Environment) -> None:
    """Ansible's filters and tests that Jinja lacks (Jinja's own builtins stay)."""
    from ansible.plugins.filter.core import FilterModule as CoreFilters
    from ansible.plugins.filter.mathstuff import FilterModule as MathFilters
    from ansible.plugins.filter.urlsplit import FilterModule as UrlFilters
    from ansible.plugins.test.core import TestModule as CoreTests

    for module in (CoreFilters(), MathFilters(), UrlFilters()):
        for name, func in module.filters().items():
            env.filters.setdefault(name, func)
    for name, func in CoreTests().tests().items():
        env.tests.setdefault(name, func)


@cache
def _environment() -> jinja2.Environment:
    env = _Env(undefined=ChainableStrictUndefined)
    add_ansible_plugins(env)
    # Ansible's `bool` (yes/no/on/off, not Jinja's absence of one).
    from ansible.plugins.filter.core import to_bool

    env.filters["bool"] = to_bool
    env.globals["lookup"] = lookup
    env.globals["query"] = lambda name, *t, **k: [lookup(name, *t, **k)]
    return env


@cache
def _role_files(role: str) -> tuple[dict[str, Any], dict[str, Any]]:
    def load(kind: str) -> dict[str, Any]:
        path = ROOT / "roles" / role / kind / "main.yml"
        return (yaml.safe_load(path.read_text()) or {}) if path.exists() else {}

    return load("defaults"), load("vars")


class HostVars(Mapping[str, Any]):
    """One host's variables, rendered on first read (then cached), with Ansible's precedence:
    role defaults < inventory < role vars < `overrides` (like set_fact / extra vars)."""

    def __init__(self, world: World, name: str, overrides: Mapping[str, Any] | None = None):
        self.world = world
        self.name = name
        self.raw: dict[str, tuple[Any, str]] = {}
        for role in ROLES:
            for key, value in _role_files(role)[0].items():
                self.raw[key] = (value, role)
        for key, value in world.inventory["_meta"]["hostvars"].get(name, {}).items():
            self.raw[key] = (value, "")
        for role in ROLES:
            for key, value in _role_files(role)[1].items():
                self.raw[key] = (value, role)
        for key, value in (overrides or {}).items():
            self.raw[key] = (value, "")
        self.cache: dict[str, Any] = {}
        self.magic: dict[str, Any] = {
            "inventory_hostname": name,
            "inventory_hostname_short": name.split(".")[0],
            "groups": world.groups,
            "group_names": sorted(g for g, hs in world.groups.items() if name in hs and g != "all"),
            "hostvars": world,
            "inventory_dir": str(world.inventory_dir),
            "playbook_dir": str(ROOT),
            "ansible_managed": "Ansible managed",
        }
        self.role_path = str(ROOT / "roles" / "common")

    def __contains__(self, key: object) -> bool:
        return (
            key in self.magic
            or key in self.raw
            or key == "role_path"
            or key in _environment().globals
        )

    def __getitem__(self, key: str) -> Any:
        if key in self.magic:
            return self.magic[key]
        if key == "role_path":
            return self.role_path
        if key not in self.raw:
            return _environment().globals[key]
        if key not in self.cache:
            value, role = self.raw[key]
            self.cache[key] = self.render(value, role)
        return self.cache[key]

    def __iter__(self) -> Iterator[str]:
        return iter({**self.raw, **self.magic})

    def __len__(self) -> int:
        return len({**self.raw, **self.magic})

    def set(self, key: str, value: Any) -> None:
        """A value that is already final (like set_fact)."""
        self.raw[key] = (value, "")
        self.cache[key] = value

    def render(self, value: Any, role: str = "") -> Any:
        if isinstance(value, str):
            if not any(m in value for m in TEMPLATE_MARKERS):
                return value
            saved = self.role_path
            if role:
                self.role_path = str(ROOT / "roles" / role)
            try:
                template = _environment().from_string(value)
                ctx = template.new_context(self, shared=True)
                result = template.environment.concat(template.root_render_func(ctx))
            finally:
                self.role_path = saved
            if isinstance(result, jinja2.Undefined):
                result._fail_with_undefined_error()
            return result
        if isinstance(value, dict):
            return {self.render(k, role): self.render(v, role) for k, v in value.items()}
        if isinstance(value, list):
            return [self.render(v, role) for v in value]
        return value


class World(Mapping[str, HostVars]):
    """Every host's variables (Ansible's `hostvars`), from one Ansible inventory."""

    def __init__(self, path: Path | None = None, inventory: dict[str, Any] | None = None):
        self.path = path or inventory_path()
        self.inventory = inventory if inventory is not None else ansible_inventory(self.path)
        self.inventory_dir = self.path if self.path.is_dir() else self.path.parent
        self.groups = groups_of(self.inventory)
        self.hosts: dict[str, HostVars] = {}

    def __getitem__(self, name: str) -> HostVars:
        if name not in self.inventory["_meta"]["hostvars"]:
            raise KeyError(name)
        if name not in self.hosts:
            self.hosts[name] = HostVars(self, name)
        return self.hosts[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self.inventory["_meta"]["hostvars"])

    def __len__(self) -> int:
        return len(self.inventory["_meta"]["hostvars"])


@cache
def world() -> World:
    return World()
