"""Render the kit's templates (roles/<role>/templates/*.j2, named "<role>/<file>") exactly as
Ansible's template module does: trim_blocks, no lstrip_blocks, the trailing newline kept,
undefined variables an error, `ansible_managed` = "Ansible managed", and Ansible's own filters
and tests (`comment`, `bool`, `regex_replace` ...) where Jinja has none of its own."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from functools import cache
from typing import Any

import jinja2

from pyinfra_deploy.variables import ROOT, add_ansible_plugins

ROLES = ROOT / "roles"
ANSIBLE_MANAGED = "Ansible managed"


@cache
def environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PrefixLoader(
            {
                role.name: jinja2.FileSystemLoader(str(role / "templates"))
                for role in sorted(ROLES.iterdir())
                if (role / "templates").is_dir()
            }
        ),
        trim_blocks=True,
        lstrip_blocks=False,
        keep_trailing_newline=True,
        undefined=jinja2.StrictUndefined,
        autoescape=False,
    )
    from ansible.plugins.filter.core import comment, to_bool

    add_ansible_plugins(env)
    env.filters["comment"] = comment
    env.filters["bool"] = to_bool
    return env


class Layers(Mapping[str, Any]):
    """Template variables: `extra` (task vars) over `base` (a host's variables), read lazily."""

    def __init__(self, extra: Mapping[str, Any], base: Mapping[str, Any]):
        self.extra = extra
        self.base = base
        self.globals = environment().globals

    def __contains__(self, key: object) -> bool:
        return key in self.extra or key in self.base or key in self.globals

    def __getitem__(self, key: str) -> Any:
        if key in self.extra:
            return self.extra[key]
        if key == "ansible_managed":
            return ANSIBLE_MANAGED
        if key in self.base:
            return self.base[key]
        return self.globals[key]

    def __iter__(self) -> Iterator[str]:
        return iter({**self.globals, **dict.fromkeys(self.base), **self.extra})

    def __len__(self) -> int:
        return len(list(iter(self)))


def render(name: str, variables: Mapping[str, Any], **extra: Any) -> str:
    """Render "<role>/<file>" (roles/<role>/templates/<file>) with a host's variables plus task
    variables `extra`."""
    return _render(environment().get_template(name), variables, extra)


def render_source(source: str, variables: Mapping[str, Any], **extra: Any) -> str:
    """Render template text (not a file of a role) the same way."""
    return _render(environment().from_string(source), variables, extra)


def _render(template: jinja2.Template, variables: Mapping[str, Any], extra: Any) -> str:
    context = template.new_context(
        Layers({"ansible_managed": ANSIBLE_MANAGED, **extra}, variables), shared=True
    )
    return "".join(template.root_render_func(context))
