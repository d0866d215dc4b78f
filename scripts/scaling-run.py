#!/usr/bin/env python3
"""Scaling run: throughput against the number of workers, with the kit's own playbooks.

For each N (default 1, 2, 4, 8, 16 total workers) the app tier is redeployed with N workers
spread over the hosts of group `app_workers` (playbooks/app.yml + playbooks/frontends.yml with
per-host `app_workers_per_host` from an overlay inventory), the script waits until HAProxy
reports exactly N servers UP, then drives a closed-loop Locust load large enough to saturate N
workers and records throughput, p50/p95/p99, errors, the per-worker spread and the load
generator's own CPU use. Finally the default deployment is restored.

Writes results/scaling.{csv,json,md,png}; exits 1 when the efficiency X(N) / (N · X(1)) falls
below --min-efficiency at any N.

    python scripts/scaling-run.py [--workers 1,2,4,8,16] [--duration 30] [--min-efficiency 0.9]

Another deployment than the lab: CLUSTERKIT_INVENTORY=<inventory dir>, CLUSTERKIT_STATS_URL=
<HAProxy stats CSV URL> and LOCUST_HOST=<front end URL> (see loadtests/_lab.py).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
import _venv  # noqa: E402

_venv.interpreter_bin_first()
sys.path.insert(0, str(ROOT / "loadtests"))
import _lab  # noqa: E402

INVENTORY = _lab.INVENTORY  # CLUSTERKIT_INVENTORY, default inventory/lab
CAPACITY_RPS = 1000 / 66


def app_hosts() -> list[str]:
    return list(_lab.inventory()["app_workers"]["hosts"])


def frontend_url() -> str | None:
    """Where the load goes: LOCUST_HOST when set, else None (loadtests' default,
    http://127.0.0.1:8080, the lab's published front end)."""
    return os.environ.get("LOCUST_HOST") or None


def spread(total: int, hosts: list[str]) -> dict[str, int]:
    """N workers over the hosts, as evenly as possible (the first hosts take the remainder)."""
    base, extra = divmod(total, len(hosts))
    return {h: base + (1 if i < extra else 0) for i, h in enumerate(hosts)}


def deploy(counts: dict[str, int] | None, log: Path) -> None:
    """Redeploy app tier and front ends; `counts` None restores the inventory's defaults."""
    cmd = ["ansible-playbook", "-i", str(INVENTORY)]
    with tempfile.TemporaryDirectory() as tmp:
        if counts is not None:
            overlay = Path(tmp) / "scale.yml"
            hosts = {h: {"app_workers_per_host": n} for h, n in counts.items()}
            overlay.write_text(yaml.safe_dump({"all": {"hosts": hosts}}))
            cmd += ["-i", str(overlay)]
        # Secrets stay where the lab inventory keeps them, whatever inventory_dir says.
        cmd += ["-e", f"clusterkit_secrets_dir={INVENTORY / '.secrets'}"]
        cmd += ["playbooks/app.yml", "playbooks/frontends.yml"]
        with log.open("a") as out:
            result = subprocess.run(cmd, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
    if result.returncode != 0:
        sys.exit(f"deploy failed ({' '.join(cmd)}); see {log}")


def wait_for_servers(n: int, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    servers: list[_lab.Server] = []
    while time.monotonic() < deadline:
        try:
            servers = _lab.backend_servers()
        except Exception:  # noqa: BLE001 - stats may be reloading
            servers = []
        if len(servers) == n and all(s.status == "UP" for s in servers):
            return
        time.sleep(1)
    sys.exit(f"HAProxy did not report {n} servers UP within {timeout:.0f} s: {servers}")


def cpu_times() -> tuple[int, int]:
    """(busy, total) jiffies of the whole machine, from /proc/stat (idle + iowait are idle)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    total = sum(fields[:8])  # guest time is already counted in user
    return total - fields[3] - fields[4], total


def run_locust(
    n: int, users: int, duration: int, report: Path, host: str | None
) -> tuple[dict, float, float]:
    """One headless Locust run; returns its report, the CPU seconds Locust used and the share
    of the whole machine's CPU that was busy meanwhile (everything: lab, proxies, Locust)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    machine_before = cpu_times()
    cmd = [
        "locust", "-f", "loadtests", "--headless", "-u", str(users), "-r", str(users),
        "-t", f"{duration}s", "--workers", str(n), "--report-json", str(report),
        "--only-summary", "--loglevel", "WARNING",
        # The gate is this script's efficiency check, not the per-run thresholds.
        "--min-capacity-ratio", "0", "--max-error-ratio", "1", "--max-p95-ms", "1e9",
    ]  # fmt: skip
    if host:
        cmd += ["--host", host]
    subprocess.run(cmd, cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
    machine_after = cpu_times()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    busy = (machine_after[0] - machine_before[0]) / max(machine_after[1] - machine_before[1], 1)
    return json.loads(report.read_text()), cpu, busy


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ns = [r["workers"] for r in rows]
    x1 = rows[0]["throughput_rps"] / rows[0]["workers"]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    ax1.plot(ns, [r["throughput_rps"] for r in rows], "o-", label="measured")
    ax1.plot(ns, [n * x1 for n in ns], "--", color="grey", label="ideal N·X(1)")
    ax1.plot(ns, [n * CAPACITY_RPS for n in ns], ":", color="green", label="capacity model")
    ax1.set(xlabel="workers", ylabel="throughput (req/s)", title="Throughput vs workers")
    ax1.set_xscale("log", base=2)
    ax1.set_yscale("log", base=2)
    ax1.legend()
    ax2.plot(ns, [r["efficiency"] for r in rows], "o-")
    ax2.axhline(0.9, color="red", linestyle="--", label="floor 0.9")
    ax2.set(xlabel="workers", ylabel="X(N) / (N·X(1))", title="Scaling efficiency", ylim=(0, 1.2))
    ax2.set_xscale("log", base=2)
    ax2.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", default="1,2,4,8,16", help="comma-separated N values")
    parser.add_argument("--duration", type=int, default=30, help="seconds of load per N")
    parser.add_argument("--users-per-worker", type=int, default=3)
    parser.add_argument("--min-efficiency", type=float, default=0.9)
    parser.add_argument("--out", type=Path, default=ROOT / "results")
    args = parser.parse_args()
    ns = [int(x) for x in args.workers.split(",")]
    args.out.mkdir(parents=True, exist_ok=True)
    log = args.out / "scaling-deploy.log"
    log.write_text("")
    hosts = app_hosts()
    host = frontend_url()
    print(f"load goes to {host or 'http://127.0.0.1:8080 (loadtests default)'}", flush=True)

    rows: list[dict] = []
    try:
        for n in ns:
            counts = spread(n, hosts)
            print(f"N={n}: deploying {counts} ...", flush=True)
            deploy(counts, log)
            wait_for_servers(n)
            users = max(n * args.users_per_worker, 2)
            with tempfile.NamedTemporaryFile(suffix=".json") as tmp:
                report, cpu, busy = run_locust(n, users, args.duration, Path(tmp.name), host)
            per_worker = list(report["per_worker_requests"].values())
            row = {
                "workers": n,
                "users": users,
                "throughput_rps": round(report["throughput_rps"], 2),
                "per_worker_rps": round(report["per_worker_rps"], 2),
                "p50_ms": report["p50_ms"],
                "p95_ms": report["p95_ms"],
                "p99_ms": report["p99_ms"],
                "requests": report["requests"],
                "failures": report["failures"],
                "workers_seen": len(per_worker),
                "spread_max_over_min": round(max(per_worker) / max(min(per_worker), 1), 3)
                if per_worker
                else None,
                "loadgen_cpu_percent_of_one_core": round(100 * cpu / report["duration_s"], 1)
                if report["duration_s"]
                else None,
                "machine_cpu_busy_percent": round(100 * busy, 1),
            }
            x1 = rows[0]["throughput_rps"] / rows[0]["workers"] if rows else row["per_worker_rps"]
            row["efficiency"] = round(row["throughput_rps"] / (n * x1), 3) if x1 else 0.0
            rows.append(row)
            print(
                f"N={n}: {row['throughput_rps']} req/s ({row['per_worker_rps']}/worker), "
                f"efficiency {row['efficiency']}, p95 {row['p95_ms']} ms, "
                f"errors {row['failures']}, loadgen CPU {row['loadgen_cpu_percent_of_one_core']}%, "
                f"machine CPU busy {row['machine_cpu_busy_percent']}%",
                flush=True,
            )
    finally:
        print("restoring the inventory's worker counts ...", flush=True)
        deploy(None, log)

    write_outputs(rows, args, host or "http://127.0.0.1:8080")
    worst = min(r["efficiency"] for r in rows)
    if worst < args.min_efficiency:
        sys.exit(f"efficiency {worst} < {args.min_efficiency}")
    print(f"scaling ok: efficiency ≥ {worst} at every N")


def write_outputs(rows: list[dict], args: argparse.Namespace, frontend: str) -> None:
    out = args.out
    with (out / "scaling.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    cpu = [r["loadgen_cpu_percent_of_one_core"] or 0 for r in rows]
    summary = {
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": "python scripts/scaling-run.py " + " ".join(sys.argv[1:]),
        "machine_cpus": os.cpu_count(),
        "inventory": str(INVENTORY),
        "frontend": frontend,
        "duration_s_per_step": args.duration,
        "capacity_model_rps_per_worker": round(CAPACITY_RPS, 2),
        "x1_rps": rows[0]["throughput_rps"],
        "min_efficiency": min(r["efficiency"] for r in rows),
        "loadgen_cpu_percent_max": max(cpu),
        "loadgen_cpu_percent_median": statistics.median(cpu),
        "loadgen_bottleneck": max(cpu) > 80,
        "rows": rows,
    }
    (out / "scaling.json").write_text(json.dumps(summary, indent=2) + "\n")
    lines = [
        "| workers | users | req/s | req/s per worker | efficiency | p50 ms | p95 ms | p99 ms "
        "| errors | spread max/min | Locust CPU % of a core | machine CPU busy % |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['workers']} | {r['users']} | {r['throughput_rps']} | {r['per_worker_rps']} "
            f"| {r['efficiency']} | {r['p50_ms']} | {r['p95_ms']} | {r['p99_ms']} "
            f"| {r['failures']}/{r['requests']} | {r['spread_max_over_min']} "
            f"| {r['loadgen_cpu_percent_of_one_core']} | {r['machine_cpu_busy_percent']} |"
        )
    verdict = "was" if summary["loadgen_bottleneck"] else "was not"
    lines.append("")
    median_cpu = summary["loadgen_cpu_percent_median"]
    lines.append(
        f"Load generator: at most {max(cpu)}% of one core (median {median_cpu}%), "
        f"so it {verdict} the bottleneck."
    )
    last = rows[-1]
    lines.append(
        f"At N={last['workers']} the machine's {os.cpu_count()} CPUs were "
        f"{last['machine_cpu_busy_percent']}% busy (everything on it: the lab's services, "
        "nginx, HAProxy and Locust): below ~90% busy the stack, not the machine, set the pace."
    )
    (out / "scaling.md").write_text("\n".join(lines) + "\n")
    plot(rows, out / "scaling.png")
    print(f"wrote {out}/scaling.csv, .json, .md, .png")


if __name__ == "__main__":
    main()
