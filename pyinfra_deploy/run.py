"""Run the pyinfra deploy and summarise what it changed.

    python -m pyinfra_deploy.run                  deploy ($CLUSTERKIT_INVENTORY, default the lab)
    python -m pyinfra_deploy.run --check-noop     deploy, and fail when anything changed
    python -m pyinfra_deploy.run -- --limit lb    extra arguments for pyinfra

pyinfra runs with --yes and --json; its progress goes to stderr, the summary to stdout:
the operations that changed a host, and the totals. Exit status 1 when an operation failed
(or, with --check-noop, when one changed something).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def deploy(extra: list[str]) -> tuple[int, dict, float]:
    pyinfra = Path(sys.executable).with_name("pyinfra")
    argv = [
        str(pyinfra),
        "-y",
        "--json",
        *extra,
        str(HERE / "inventory.py"),
        str(HERE / "deploy.py"),
    ]
    start = time.monotonic()
    run = subprocess.run(argv, cwd=HERE.parent, stdout=subprocess.PIPE, text=True)
    elapsed = time.monotonic() - start
    try:
        payload = json.loads(run.stdout[run.stdout.index("{") :])
    except ValueError:
        payload = {}
    return run.returncode, payload, elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check-noop", action="store_true", help="fail when anything changed")
    parser.add_argument("extra", nargs="*", help="arguments passed on to pyinfra (after --)")
    args = parser.parse_args()
    rc, payload, elapsed = deploy(args.extra)
    results = (payload.get("results") or {}).get("operations") or []
    changed = [(op["name"], op["success"]) for op in results if op.get("success")]
    errors = [(op["name"], op["error"]) for op in results if op.get("error")]
    for name, hosts in changed:
        print(f"changed: {name} on {', '.join(hosts)}")
    for name, hosts in errors:
        print(f"FAILED: {name} on {', '.join(hosts)}")
    print(
        f"pyinfra: {len(results)} operations, {sum(len(h) for _, h in changed)} changes, "
        f"{sum(len(h) for _, h in errors)} errors, {elapsed:.1f} s (exit status {rc})"
    )
    if rc != 0 or errors or not results:
        return 1
    if args.check_noop and changed:
        print("pyinfra: the deploy is not idempotent, the run above changed the hosts")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
