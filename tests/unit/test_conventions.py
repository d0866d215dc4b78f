"""The roles' conventions, checked over every role so that a new one cannot drift from them:

- a role has a README, an argument spec (`meta/argument_specs.yml`) and tasks;
- every public default (`<role>_name`) is an option of one of the role's entry points, so that
  preflight checks its type, and is named in the role's README;
- a default that is derived, not meant to be set, carries the internal prefix (`<role>__name`)
  and is not an option;
- every template of the kit starts with `{{ ansible_managed | comment }}` (after a shebang);
- handlers are notified through topics of one form, `<role> <what>` (`haproxy reload`,
  `app workers changed`): every handler listens to such topics, every `notify:` of a role
  names one of its handlers' topics;
- a registered variable is internal: `<role>__name`, never a name that looks like a setting.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
ROLES = sorted(p for p in (ROOT / "roles").iterdir() if (p / "tasks").is_dir())
TEMPLATES = sorted((ROOT / "roles").glob("*/templates/*.j2"))


def load(path: Path) -> dict:
    return (yaml.safe_load(path.read_text()) or {}) if path.exists() else {}


def defaults(role: Path) -> dict:
    return load(role / "defaults" / "main.yml")


def entry_points(role: Path) -> dict[str, dict]:
    return load(role / "meta" / "argument_specs.yml").get("argument_specs", {})


def task_files(role: Path) -> list[Path]:
    return sorted(p for kind in ("tasks", "handlers") for p in (role / kind).glob("*.yml"))


def tasks(items: object) -> list[dict]:
    """Every task of a task list, those inside block/rescue/always included."""
    out: list[dict] = []
    for item in items if isinstance(items, list) else []:
        if isinstance(item, dict):
            out.append(item)
            for key in ("block", "rescue", "always"):
                out += tasks(item.get(key))
    return out


def as_list(value: object) -> list[str]:
    if value is None:
        return []
    return [str(v) for v in value] if isinstance(value, list) else [str(value)]


def options(role: Path) -> dict[str, dict]:
    merged: dict[str, dict] = {}
    for entry in entry_points(role).values():
        merged |= entry.get("options") or {}
    return merged


@pytest.mark.parametrize("role", ROLES, ids=lambda p: p.name)
def test_a_role_has_a_readme_a_spec_and_tasks(role: Path) -> None:
    assert (role / "README.md").is_file(), f"{role.name}: no README.md"
    assert entry_points(role), f"{role.name}: no meta/argument_specs.yml entry points"
    for entry in entry_points(role):
        assert (role / "tasks" / f"{entry}.yml").is_file(), f"{role.name}: no tasks/{entry}.yml"


@pytest.mark.parametrize("role", ROLES, ids=lambda p: p.name)
def test_every_default_carries_the_role_prefix(role: Path) -> None:
    wrong = [name for name in defaults(role) if not name.startswith(f"{role.name}_")]
    assert not wrong, f"{role.name}: defaults without the prefix {role.name}_: {wrong}"


@pytest.mark.parametrize("role", ROLES, ids=lambda p: p.name)
def test_every_public_default_is_an_option_and_every_internal_one_is_not(role: Path) -> None:
    spec = options(role)
    public = [name for name in defaults(role) if not name.startswith(f"{role.name}__")]
    internal = [name for name in defaults(role) if name.startswith(f"{role.name}__")]
    assert not [n for n in public if n not in spec], (
        f"{role.name}: defaults no entry point declares (add them to meta/argument_specs.yml, "
        f"or name a derived value {role.name}__...): {[n for n in public if n not in spec]}"
    )
    assert not [n for n in internal if n in spec], f"{role.name}: internal names declared"


@pytest.mark.parametrize("role", ROLES, ids=lambda p: p.name)
def test_every_public_default_is_named_in_the_role_readme(role: Path) -> None:
    readme = (role / "README.md").read_text()
    public = [name for name in defaults(role) if not name.startswith(f"{role.name}__")]
    missing = [name for name in public if name not in readme]
    assert not missing, f"{role.name}: README.md does not name {missing}"


@pytest.mark.parametrize("template", TEMPLATES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_template_starts_with_the_managed_comment(template: Path) -> None:
    lines = template.read_text().splitlines()
    head = lines[1:3] if lines and lines[0].startswith("#!") else lines[:2]
    assert any("ansible_managed" in line for line in head), f"{template}: {lines[:1]}"


@pytest.mark.parametrize("role", ROLES, ids=lambda p: p.name)
def test_handlers_listen_to_topics_of_their_role(role: Path) -> None:
    path = role / "handlers" / "main.yml"
    handlers = tasks(yaml.safe_load(path.read_text())) if path.exists() else []
    topics = {t for h in handlers for t in as_list(h.get("listen"))}
    without = [h.get("name") for h in handlers if not as_list(h.get("listen"))]
    assert not without, f"{role.name}: handlers without a `listen:` topic: {without}"
    wrong = sorted(t for t in topics if not t.startswith(f"{role.name} "))
    assert not wrong, f"{role.name}: topics not of the form '{role.name} <what>': {wrong}"
    notified = {
        topic
        for path in task_files(role)
        for task in tasks(yaml.safe_load(path.read_text()))
        for topic in as_list(task.get("notify"))
    }
    assert notified <= topics, f"{role.name}: notify names no handler topic: {notified - topics}"


@pytest.mark.parametrize("role", ROLES, ids=lambda p: p.name)
def test_registered_variables_are_internal(role: Path) -> None:
    registered = {
        str(task["register"])
        for path in task_files(role)
        for task in tasks(yaml.safe_load(path.read_text()))
        if "register" in task
    }
    wrong = sorted(r for r in registered if not r.startswith(f"{role.name}__"))
    assert not wrong, f"{role.name}: registered variables without {role.name}__: {wrong}"
