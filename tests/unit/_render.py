"""The Jinja environment the render tests share: Ansible's template settings and its own
`comment` and `bool` filters, so a template renders here as it does in a play."""

from __future__ import annotations

from pathlib import Path

import jinja2
from ansible.plugins.filter.core import comment, to_bool


def environment(templates: Path) -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(templates)),
        trim_blocks=True,
        keep_trailing_newline=True,
        undefined=jinja2.StrictUndefined,
    )
    env.filters["comment"] = comment
    env.filters["bool"] = to_bool
    return env


def trusted(value: object) -> object:
    """Mark every string in value as a template, as Ansible does for role defaults and vars."""
    from ansible.template import trust_as_template

    if isinstance(value, str):
        return trust_as_template(value)
    if isinstance(value, dict):
        return {k: trusted(v) for k, v in value.items()}
    if isinstance(value, list):
        return [trusted(v) for v in value]
    return value


def lab_world(tmp_path_factory, name: str):
    """The pyinfra engine's variables of a copy of inventory/lab (secrets generated there)."""
    import shutil

    from pyinfra_deploy.variables import ROOT, World

    inventory = tmp_path_factory.mktemp(name) / "inventory"
    shutil.copytree(
        ROOT / "inventory" / "lab", inventory, ignore=shutil.ignore_patterns(".secrets")
    )
    world = World(inventory)
    # The facts the deploy sets from each host (pyinfra_deploy.roles.host_release): the lab's
    # release, not whatever a fact cache of an earlier run holds.
    for host in world:
        world[host].set("ansible_distribution", "Debian")
        world[host].set("ansible_distribution_release", "bookworm")
    return world
