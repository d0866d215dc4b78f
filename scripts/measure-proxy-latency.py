#!/usr/bin/env python3
"""Measure the latency nginx + HAProxy add in front of the workers (p50 and more).

Sends sequential `POST /api/requests` (one at a time, kept-alive connections) by four paths,
interleaved in rounds so that machine noise hits all of them alike:

  direct     controller -> worker                    (every worker in turn)
  haproxy    controller -> HAProxy :8000 -> worker   (lb host's private address)
  nginx      controller -> nginx :80 -> HAProxy -> worker
  published  controller -> 127.0.0.1:8080 (Docker's port publishing) -> nginx -> ...

and reports percentiles per path and the differences of the medians: what nginx + HAProxy
add (nginx - direct), HAProxy alone (haproxy - direct), nginx alone (nginx - haproxy).

The workers should run with SERVICE_TIME_MS=0, so the service time does not drown the proxy
overhead: `--redeploy` runs playbooks/app.yml with SERVICE_TIME_MS=0 added to the workers'
environment first and runs it again without it at the end (also on failure).

    python scripts/measure-proxy-latency.py --redeploy [--samples 3000]
        [--out results/proxy-latency.json]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BODY = json.dumps({"payload": {"probe": "latency"}}).encode()
HEADERS = {"Content-Type": "application/json"}


def inventory(inv: str) -> dict:
    out = subprocess.run(
        ["ansible-inventory", "-i", inv, "--list", "--export"],
        cwd=ROOT,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return json.loads(out)


def hostvars(inv: dict, host: str) -> dict:
    return inv["_meta"]["hostvars"].get(host, {})


def group(inv: dict, name: str) -> list[str]:
    return list(inv.get(name, {}).get("hosts", []))


def workers(inv: dict) -> list[tuple[str, int]]:
    out = []
    for h in group(inv, "app_workers"):
        hv = hostvars(inv, h)
        count = int(hv.get("app_workers_per_host", 2))
        base = int(hv.get("app_worker_base_port", 8180))
        out += [(hv["clusterkit_address"], base + i) for i in range(count)]
    return out


def redeploy(inv_path: str, inv: dict, service_time_ms: int | None) -> None:
    cmd = ["ansible-playbook", "-i", inv_path, "playbooks/app.yml"]
    if service_time_ms is not None:
        env = {}
        for h in group(inv, "app_workers"):
            env.update(hostvars(inv, h).get("app_worker_environment", {}))
        env["SERVICE_TIME_MS"] = str(service_time_ms)
        cmd += ["-e", json.dumps({"app_worker_environment": env})]
    print("+", " ".join(cmd), file=sys.stderr, flush=True)
    subprocess.run(cmd, cwd=ROOT, check=True, stdout=subprocess.DEVNULL)


class Route:
    """One path: kept-alive connections to one or more endpoints, used in turn."""

    def __init__(self, name: str, endpoints: list[tuple[str, int]], prefix: str = "") -> None:
        self.name = name
        self.conns = [http.client.HTTPConnection(h, p, timeout=30) for h, p in endpoints]
        self.url = prefix + "/api/requests"
        self.samples: list[float] = []
        self.errors = 0
        self.i = 0

    def once(self, record: bool = True) -> None:
        conn = self.conns[self.i % len(self.conns)]
        self.i += 1
        start = time.perf_counter_ns()
        try:
            conn.request("POST", self.url, body=BODY, headers=HEADERS)
            resp = conn.getresponse()
            resp.read()
            ok = resp.status == 200
        except (OSError, http.client.HTTPException):
            conn.close()
            ok = False
        elapsed = (time.perf_counter_ns() - start) / 1000.0  # microseconds
        if not ok:
            self.errors += 1
        elif record:
            self.samples.append(elapsed)


def pct(samples: list[float], q: float) -> float:
    s = sorted(samples)
    return s[min(len(s) - 1, int(q * len(s)))]


def summary(samples: list[float]) -> dict:
    return {
        "n": len(samples),
        "p50_us": round(statistics.median(samples), 1),
        "p90_us": round(pct(samples, 0.90), 1),
        "p99_us": round(pct(samples, 0.99), 1),
        "min_us": round(min(samples), 1),
        "mean_us": round(statistics.fmean(samples), 1),
    }


def measure(inv: dict, samples: int, round_size: int, warmup: int) -> dict:
    lb = group(inv, "lb")[0]
    lb_addr = hostvars(inv, lb)["clusterkit_address"]
    haproxy_port = int(hostvars(inv, lb).get("haproxy_api_port", 8000))
    paths = [
        Route("direct", workers(inv)),
        Route("haproxy", [(lb_addr, haproxy_port)]),
        Route("nginx", [(lb_addr, 80)]),
        Route("published", [("127.0.0.1", 8080)]),
    ]
    for p in paths:
        for _ in range(warmup):
            p.once(record=False)
    rounds = max(1, samples // round_size)
    for r in range(rounds):
        # Rotate the order each round, so no path always runs first.
        order = paths[r % len(paths) :] + paths[: r % len(paths)]
        for p in order:
            for _ in range(round_size):
                p.once()
    result = {p.name: summary(p.samples) | {"errors": p.errors} for p in paths}
    med = {p.name: statistics.median(p.samples) for p in paths}
    result["added_p50_us"] = {
        "nginx_plus_haproxy": round(med["nginx"] - med["direct"], 1),
        "haproxy": round(med["haproxy"] - med["direct"], 1),
        "nginx": round(med["nginx"] - med["haproxy"], 1),
        "docker_port_publishing": round(med["published"] - med["nginx"], 1),
    }
    return result


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "-i", "--inventory", default=os.environ.get("CLUSTERKIT_INVENTORY", "inventory/lab")
    )
    ap.add_argument("--samples", type=int, default=3000, help="requests per path (default 3000)")
    ap.add_argument(
        "--round", type=int, default=50, help="requests per path per round (default 50)"
    )
    ap.add_argument("--warmup", type=int, default=100)
    ap.add_argument(
        "--redeploy",
        action="store_true",
        help="redeploy the workers with SERVICE_TIME_MS=0 first and restore them at the end",
    )
    ap.add_argument("--out", default="results/proxy-latency.json")
    args = ap.parse_args()

    inv = inventory(args.inventory)
    if args.redeploy:
        redeploy(args.inventory, inv, 0)
    try:
        result = measure(inv, args.samples, args.round, args.warmup)
    finally:
        if args.redeploy:
            redeploy(args.inventory, inv, None)

    result["meta"] = {
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "host": platform.node(),
        "cpus": os.cpu_count(),
        "loadavg_at_end": os.getloadavg(),
        "request": "POST /api/requests, sequential, kept-alive connections",
        "service_time_ms": 0 if args.redeploy else "as deployed",
        "workers": len(workers(inv)),
        "command": "python scripts/measure-proxy-latency.py"
        + (" --redeploy" if args.redeploy else ""),
    }
    out = ROOT / args.out
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    for name in ("direct", "haproxy", "nginx", "published"):
        r = result[name]
        print(
            f"{name:10} p50 {r['p50_us']:9.1f} us  p90 {r['p90_us']:9.1f}"
            f"  p99 {r['p99_us']:9.1f}  errors {r['errors']}"
        )
    print("added at p50 (us):", json.dumps(result["added_p50_us"]))
    print(f"written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
