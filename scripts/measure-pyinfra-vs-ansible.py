#!/usr/bin/env python3
"""No-op rerun time of the pyinfra engine against `ansible-playbook site.yml` on the lab.

Each engine first converges the deployed lab once (not timed), then reruns --runs times; every
timed rerun must change nothing (Ansible: changed=0 on every host; pyinfra: no operation
changed a host). Writes the runs, their medians and the ratio pyinfra / Ansible to
results/pyinfra-vs-ansible.json.

    python scripts/measure-pyinfra-vs-ansible.py [--runs 3] [--lock /tmp/clusterkit-lab.lock]

With --lock, every single deploy runs under `flock <lock>` (the lock is held for one run).
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
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
import _venv  # noqa: E402

_venv.interpreter_bin_first()
RECAP = re.compile(r"^(\S+)\s+:\s+ok=\d+\s+changed=(\d+)", re.MULTILINE)
PYINFRA_CHANGES = re.compile(r"^pyinfra: \d+ operations, (\d+) changes, (\d+) errors", re.MULTILINE)
ENGINES = {
    "pyinfra": [sys.executable, "-m", "pyinfra_deploy.run"],
    "ansible": ["ansible-playbook", "site.yml"],
}


# Times the command itself, inside the lock (waiting for the lock is not counted).
TIMER = (
    "import subprocess, sys, time; t = time.monotonic(); r = subprocess.run(sys.argv[1:]); "
    "print(f'__elapsed__ {time.monotonic() - t:.3f}'); sys.exit(r.returncode)"
)


def timed(cmd: list[str], lock: str | None) -> tuple[float, str]:
    argv = [sys.executable, "-c", TIMER, *cmd]
    if lock:
        argv = ["flock", lock, *argv]
    env = {**os.environ, "ANSIBLE_FORCE_COLOR": "0"}
    result = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, env=env, check=False)
    if result.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed ({result.returncode}):\n{result.stdout[-3000:]}")
    elapsed = float(result.stdout.rsplit("__elapsed__ ", 1)[1].split()[0])
    return elapsed, result.stdout


def changes(engine: str, out: str) -> int:
    if engine == "ansible":
        return sum(int(n) for _, n in RECAP.findall(out))
    found = PYINFRA_CHANGES.search(out)
    return int(found.group(1)) if found else -1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--lock", help="flock this file around every deploy")
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "pyinfra-vs-ansible.json")
    args = parser.parse_args()

    runs: dict[str, list[float]] = {}
    for engine, cmd in ENGINES.items():
        elapsed, out = timed(cmd, args.lock)
        print(f"{engine}: converge run {elapsed:.1f} s, {changes(engine, out)} changes (not timed)")
        runs[engine] = []
        attempts = 0
        while len(runs[engine]) < args.runs:
            attempts += 1
            if attempts > 2 * args.runs:
                sys.exit(f"{engine}: fewer than {args.runs} no-op reruns in {attempts - 1} runs")
            elapsed, out = timed(cmd, args.lock)
            n = changes(engine, out)
            if n != 0:
                # Something changed underneath (e.g. the app's sources, which build a new
                # wheel): not a no-op, so not counted; the next run converges again.
                what = [line for line in out.splitlines() if line.startswith("changed:")]
                print(f"{engine}: run {attempts} changed {n} (not counted): {what[:5]}")
                continue
            runs[engine].append(elapsed)
            print(f"{engine}: no-op rerun {len(runs[engine])}: {elapsed:.1f} s")

    medians = {engine: statistics.median(times) for engine, times in runs.items()}
    report = {
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "noop_rerun_s": {engine: [round(x, 1) for x in times] for engine, times in runs.items()},
        "noop_rerun_median_s": {engine: round(m, 1) for engine, m in medians.items()},
        "ratio_pyinfra_to_ansible": round(medians["pyinfra"] / medians["ansible"], 3),
        "commands": {
            engine: " ".join(cmd[-3:] if engine == "pyinfra" else cmd)
            for engine, cmd in ENGINES.items()
        },
        "command": "python scripts/measure-pyinfra-vs-ansible.py",
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
