#!/usr/bin/env python3
"""Measure deploy wall times on a lab and write them to results/deploy-times.json.

1. Fresh deploy: the lab is removed (playbooks/teardown.yml), then `ansible-playbook site.yml`
   creates the hosts (image from the cache) and deploys them, what `make up` does once the venv,
   collections and Docker engine are there. Repeated --fresh-runs times.
2. No-op: `ansible-playbook site.yml` again, --noop-runs times; each must report changed=0.

Medians, per-host seconds (median / hosts), the inventory, its host count, the machine's CPUs and
the slowest tasks of the median no-op run (profile_tasks) go to the JSON file.

    python scripts/measure-deploy.py [-i inventory/lab] [--fresh-runs 3] [--noop-runs 3]

Scaling with hosts: --hosts N1 N2 ... measures a lab of each size (the inventory plus extra app
hosts app3, app4, ... until it has N hosts), writes results/deploy-scaling.json (figures per size,
a linear fit seconds = a + b * hosts, and its estimate for 50 hosts) and results/deploy-scaling.png,
and removes the enlarged lab afterwards:

    python scripts/measure-deploy.py -i inventory/lab --hosts 6 14 --fresh-runs 1 --noop-runs 3
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
import _venv  # noqa: E402

_venv.interpreter_bin_first()
RECAP = re.compile(r"^(\S+)\s+:\s+ok=\d+\s+changed=(\d+)", re.MULTILINE)
# profile_tasks' summary lines: "role : task name ----- 1.23s"
PROFILE = re.compile(r"^(.+?) -{2,} (\d+\.\d+)s$", re.MULTILINE)


def playbook(inventory: Path, path: str, log: Path) -> tuple[float, str]:
    cmd = ["ansible-playbook", "-i", str(inventory), path]
    env = os.environ | {"ANSIBLE_FORCE_COLOR": "0"}
    start = time.monotonic()
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=False, env=env)
    elapsed = time.monotonic() - start
    log.write_text(result.stdout + result.stderr)
    if result.returncode != 0:
        tail = result.stdout[-3000:]
        sys.exit(f"{' '.join(cmd)} failed ({result.returncode}), see {log}:\n{tail}")
    return elapsed, result.stdout


def python_loop_s() -> float:
    """Seconds for a fixed pure-Python loop (median of 3): the controller's speed, so figures
    from machines of different speed can be compared (Ansible's no-op is controller-bound)."""
    times = []
    for _ in range(3):
        start = time.perf_counter()
        total = 0
        for i in range(5_000_000):
            total += i
        times.append(time.perf_counter() - start)
    return round(statistics.median(times), 3)


def hosts_of(inventory: Path) -> list[str]:
    sys.path.insert(0, str(ROOT))
    from clusterkit.inventory import ansible_inventory

    hostvars = ansible_inventory((ROOT / inventory).resolve())["_meta"]["hostvars"]
    return sorted(h for h in hostvars if h != "localhost")


def top_tasks(output: str, limit: int = 15) -> list[dict]:
    tasks = [{"task": name.strip(), "s": float(s)} for name, s in PROFILE.findall(output)]
    return sorted(tasks, key=lambda t: -t["s"])[:limit]


def measure(inventory: Path, fresh_runs: int, noop_runs: int, logs: Path) -> dict:
    hosts = hosts_of(inventory)
    fresh: list[float] = []
    for i in range(fresh_runs):
        playbook(inventory, "playbooks/teardown.yml", logs / "teardown.log")
        elapsed, _ = playbook(inventory, "site.yml", logs / f"fresh-{i + 1}.log")
        fresh.append(elapsed)
        print(f"{len(hosts)} hosts: fresh deploy {i + 1}: {elapsed:.1f} s", flush=True)
    noop: list[tuple[float, str]] = []
    for i in range(noop_runs):
        elapsed, out = playbook(inventory, "site.yml", logs / f"noop-{i + 1}.log")
        changed = {host: int(n) for host, n in RECAP.findall(out) if int(n)}
        if changed:
            sys.exit(f"no-op run {i + 1} was not a no-op: {changed} (log {logs})")
        noop.append((elapsed, out))
        print(f"{len(hosts)} hosts: no-op run {i + 1}: {elapsed:.1f} s", flush=True)
    report: dict = {"inventory": str(inventory), "hosts": len(hosts), "host_names": hosts}
    if fresh:
        median = statistics.median(fresh)
        report |= {
            "fresh_deploy_s": [round(x, 1) for x in fresh],
            "fresh_deploy_median_s": round(median, 1),
            "fresh_deploy_per_host_s": round(median / len(hosts), 1),
        }
    if noop:
        times = [t for t, _ in noop]
        median = statistics.median(times)
        median_out = sorted(noop, key=lambda r: r[0])[len(noop) // 2][1]
        report |= {
            "noop_s": [round(x, 1) for x in times],
            "noop_median_s": round(median, 1),
            "noop_per_host_s": round(median / len(hosts), 1),
            "noop_slowest_tasks": top_tasks(median_out),
        }
    return report


def enlarged_inventory(base: Path, total_hosts: int, dest: Path) -> Path:
    """A copy of the lab inventory `base` with extra app hosts until it has total_hosts hosts."""
    if dest.exists():
        shutil.rmtree(dest)
    shutil.copytree(base, dest, ignore=shutil.ignore_patterns(".secrets"))
    hosts_file = dest / "hosts.yml"
    data = yaml.safe_load(hosts_file.read_text())
    children = data["all"]["children"]
    lab = children["lab"]["hosts"]
    extra = total_hosts - len(lab)
    if extra < 0:
        sys.exit(f"{base} already has {len(lab)} hosts, more than {total_hosts}")
    taken = {ipaddress.ip_address(h["clusterkit_address"]) for h in lab.values()}
    template = lab["app2"] if "app2" in lab else next(iter(lab.values()))
    prefix = template["ansible_host"][: -len("app2")] if "app2" in lab else "clusterkit-"
    network = ipaddress.ip_network(f"{template['clusterkit_address']}/24", strict=False)
    free = (a for a in network.hosts() if a not in taken and int(a) % 256 > 40)
    number = 3
    for _ in range(extra):
        while f"app{number}" in lab:
            number += 1
        name = f"app{number}"
        lab[name] = {"ansible_host": f"{prefix}{name}", "clusterkit_address": str(next(free))}
        children["app_workers"]["hosts"][name] = None
    hosts_file.write_text(yaml.safe_dump(data, sort_keys=False))
    # Secrets stay those of the base lab (the same cluster, more app hosts).
    if (base / ".secrets").exists():
        shutil.copytree(base / ".secrets", dest / ".secrets")
    return dest


def fit(points: list[tuple[int, float]]) -> dict:
    """Least squares: seconds = a + b * hosts."""
    n = len(points)
    mx = sum(x for x, _ in points) / n
    my = sum(y for _, y in points) / n
    sxx = sum((x - mx) ** 2 for x, _ in points)
    b = sum((x - mx) * (y - my) for x, y in points) / sxx if sxx else 0.0
    a = my - b * mx
    return {
        "fixed_s": round(a, 1),
        "per_host_s": round(b, 2),
        "estimate_50_hosts_s": round(a + 50 * b),
    }


def plot(sizes: list[dict], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for key, label in (("fresh_deploy_median_s", "fresh deploy"), ("noop_median_s", "no-op")):
        points = [(s["hosts"], s[key]) for s in sizes if key in s]
        if points:
            ax.plot(*zip(*points, strict=True), marker="o", label=label)
    ax.set_xlabel("hosts")
    ax.set_ylabel("ansible-playbook site.yml, s (median)")
    ax.set_title(f"Deploy time by lab size ({os.cpu_count()} CPUs, shared)")
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=100)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-i", "--inventory", type=Path, default=ROOT / "inventory" / "lab")
    parser.add_argument("--fresh-runs", type=int, default=3)
    parser.add_argument("--noop-runs", type=int, default=3)
    parser.add_argument("--hosts", type=int, nargs="+", help="lab sizes to measure (scaling)")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    inventory = args.inventory.resolve()
    logs = ROOT / ".cache" / "measure-deploy"
    logs.mkdir(parents=True, exist_ok=True)
    common = {
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "python_loop_s": python_loop_s(),
        },
    }

    if not args.hosts:
        report = common | measure(inventory, args.fresh_runs, args.noop_runs, logs)
        report["command"] = "python scripts/measure-deploy.py " + " ".join(sys.argv[1:])
        out = args.out or ROOT / "results" / "deploy-times.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {out}")
        return

    base_hosts = len(hosts_of(inventory))
    sizes = []
    for total in args.hosts:
        inv = inventory
        if total != base_hosts:
            inv = enlarged_inventory(inventory, total, ROOT / ".cache" / f"lab-{total}-hosts")
        size_logs = logs / f"{total}-hosts"
        size_logs.mkdir(exist_ok=True)
        sizes.append(measure(inv, args.fresh_runs, args.noop_runs, size_logs))
        if inv != inventory:
            # The enlarged lab is removed at once (it is the heaviest thing on the machine).
            playbook(inv, "playbooks/teardown.yml", size_logs / "teardown.log")
    report = common | {"sizes": sizes}
    for key in ("fresh_deploy_median_s", "noop_median_s"):
        points = [(s["hosts"], s[key]) for s in sizes if key in s]
        if len(points) >= 2:
            report[key.replace("median_s", "fit")] = fit(points)
    report["command"] = "python scripts/measure-deploy.py " + " ".join(sys.argv[1:])
    out = args.out or ROOT / "results" / "deploy-scaling.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    plot(sizes, out.with_suffix(".png"))
    print(f"wrote {out} and {out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
