"""The loadgen role (roles/loadgen) is not implemented by the pyinfra engine: a host in group
loadgen stops the deploy (before any host changes: pyinfra collects every operation first),
pointing to ansible-playbook playbooks/loadgen.yml."""

from __future__ import annotations

from pyinfra.api import deploy

from pyinfra_deploy.helpers import Vars


@deploy("loadgen")
def loadgen(v: Vars) -> None:
    """Refuse: the loadgen role is Ansible's only."""
    raise RuntimeError(
        "group loadgen has hosts: the pyinfra deploy does not implement the loadgen role, "
        "run ansible-playbook playbooks/loadgen.yml for them"
    )
