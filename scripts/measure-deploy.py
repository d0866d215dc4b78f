#!/usr/bin/env python3
"""Measure deploy wall times on the lab and write them to results/deploy-times.json.

1. `make down` then `make up` (images and venv already present): a full deploy of fresh hosts.
2. `ansible-playbook site.yml` again, several times: the no-op rerun (must report changed=0).

    python scripts/measure-deploy.py [--noop-runs 3] [--out results/deploy-times.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RECAP = re.compile(r"^(\S+)\s+:\s+ok=\d+\s+changed=(\d+)", re.MULTILINE)


def timed(cmd: list[str]) -> tuple[float, str]:
    start = time.monotonic()
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=False)
    elapsed = time.monotonic() - start
    if result.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed ({result.returncode}):\n{result.stdout[-3000:]}")
    return elapsed, result.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--noop-runs", type=int, default=3)
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "deploy-times.json")
    args = parser.parse_args()

    timed(["make", "down"])
    up_s, _ = timed(["make", "up"])
    print(f"make up (fresh hosts, images and venv present): {up_s:.1f} s")

    noop: list[float] = []
    for i in range(args.noop_runs):
        elapsed, out = timed(["ansible-playbook", "site.yml"])
        changed = {host: int(n) for host, n in RECAP.findall(out) if int(n)}
        if changed:
            sys.exit(f"rerun {i + 1} was not a no-op: {changed}")
        noop.append(elapsed)
        print(f"no-op rerun {i + 1}: {elapsed:.1f} s")

    report = {
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "make_up_fresh_hosts_s": round(up_s, 1),
        "noop_rerun_s": [round(x, 1) for x in noop],
        "noop_rerun_median_s": round(statistics.median(noop), 1),
        "command": "python scripts/measure-deploy.py",
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
