"""The kit's default strategy: Mitogen's linear strategy when Mitogen is installed.

Mitogen keeps one Python interpreter per host for the whole run and sends modules to it over
the connection, instead of starting Python and unpacking each module for every task: a no-op
`site.yml` on the lab takes about a third of the time. Task order and results are those of
Ansible's own `linear` strategy, which this falls back to (with a warning) where Mitogen is
not installed, for example with a system Ansible. Mitogen only accelerates connections named
by their short names (`docker`, `ssh`); others run as with `linear`. Tasks on the controller
itself (connection `local`) are left to Ansible: Mitogen's `async_status` never sees an async
job finish under ansible-core 2.19 (Molecule's create and destroy playbooks wait on those).
"""

from __future__ import annotations

from ansible.utils.display import Display

try:
    import ansible_mitogen.strategy
    from ansible_mitogen.plugins.strategy.mitogen_linear import StrategyModule

    ansible_mitogen.strategy.REDIRECTED_CONNECTION_PLUGINS = tuple(
        name for name in ansible_mitogen.strategy.REDIRECTED_CONNECTION_PLUGINS if name != "local"
    )
except ImportError as error:  # pragma: no cover - depends on what is installed
    from ansible.plugins.strategy.linear import StrategyModule

    Display().warning(
        f"Mitogen is not importable ({error}); running with Ansible's linear strategy. "
        "Install it with `make venv` (requirements.txt pins it) for faster runs."
    )

__all__ = ["StrategyModule"]
