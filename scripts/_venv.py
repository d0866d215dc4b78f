"""Tools next to the running interpreter: `python scripts/<x>.py` with the venv's python finds
ansible-playbook, ansible-inventory, locust, pyinfra and molecule in that venv's bin/ even when
the venv is not activated (its bin/ is not on PATH)."""

from __future__ import annotations

import os
import sys
from pathlib import Path


def interpreter_bin_first() -> None:
    """Put the running interpreter's bin/ first on PATH, for this process and its children.

    sys.executable is not resolved: a venv's bin/python is a link to the base interpreter, and
    the venv's tools sit beside the link, not beside its target."""
    bin_dir = str(Path(sys.executable).parent)
    parts = os.environ.get("PATH", "").split(os.pathsep)
    if parts[:1] != [bin_dir]:
        os.environ["PATH"] = os.pathsep.join([bin_dir, *(p for p in parts if p and p != bin_dir)])
