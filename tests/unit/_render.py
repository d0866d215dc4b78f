"""The one render helper of the template tests: a template of roles/<role>/templates/, named
"<role>/<file>", rendered for a host of the lab inventory through the pyinfra engine's own
Jinja environment and variables (test_render_equivalence proves both engines render the same
bytes as Ansible's template module).

    render("redis/redis.conf.j2", "data1", redis_save=[])

`overrides` take the place of a task's `vars:`: they win over the inventory and the role
defaults, and the role's derived defaults are computed from them (as in a play).
"""

from __future__ import annotations

import atexit
import shutil
import tempfile
from functools import cache
from pathlib import Path
from typing import Any

from pyinfra_deploy import templating
from pyinfra_deploy.variables import ROOT, HostVars, World

LAB_RELEASE = {"ansible_distribution": "Debian", "ansible_distribution_release": "bookworm"}


@cache
def lab() -> World:
    """The variables of a private copy of inventory/lab (its secrets generated there), with the
    facts the deploy reads from each host set to the lab's release."""
    tmp = Path(tempfile.mkdtemp(prefix="clusterkit-render-"))
    atexit.register(shutil.rmtree, tmp, ignore_errors=True)
    inventory = tmp / "inventory"
    shutil.copytree(
        ROOT / "inventory" / "lab", inventory, ignore=shutil.ignore_patterns(".secrets")
    )
    world = World(inventory)
    for host in world:
        for fact, value in LAB_RELEASE.items():
            world[host].set(fact, value)
    return world


def host_vars(host: str, **overrides: Any) -> HostVars:
    """A lab host's variables with `overrides` as task variables (and the lab's release as the
    facts the deploy reads from the host)."""
    return HostVars(lab(), host, {**LAB_RELEASE, **overrides})


def render(template: str, host: str, **overrides: Any) -> str:
    """roles/<role>/templates/<file> ("<role>/<file>") as the deploy writes it on `host`."""
    return templating.render(template, host_vars(host, **overrides))


def render_text(source: str, host: str, **overrides: Any) -> str:
    """Template text (e.g. an edited copy of a role's template) rendered the same way."""
    return templating.render_source(source, host_vars(host, **overrides))


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
