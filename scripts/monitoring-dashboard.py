"""Render the clusterkit dashboard from the live lab's Prometheus as a PNG.

    python scripts/monitoring-dashboard.py                      # 60 s of Locust load, then the plot
    python scripts/monitoring-dashboard.py --load-seconds 0 --minutes 15   # no load, last 15 min

Four panels from Prometheus' query_range API (the same expressions as the console
/consoles/clusterkit.html and the alert rules): request rate per load balancer (HAProxy's API
frontend), the 5xx error ratio, the p95 latency of POST /api/requests (workers' histogram), and
the throughput of every worker. Writes results/monitoring-dashboard.png (and .json with the
series). The inventory is $CLUSTERKIT_INVENTORY (default inventory/lab); the load goes where
the load tests send it ($LOCUST_HOST, else the front end of that inventory).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "loadtests"))
import _lab  # noqa: E402

PANELS = [
    (
        "Requests per second (HAProxy API frontend)",
        'sum by (host) (rate(haproxy_frontend_http_requests_total{proxy="api"}[30s]))',
        "host",
        "req/s",
    ),
    (
        "Error ratio (5xx share of API responses)",
        'sum(rate(haproxy_frontend_http_responses_total{proxy="api",code="5xx"}[30s]))'
        ' / sum(rate(haproxy_frontend_http_responses_total{proxy="api"}[30s]))',
        None,
        "ratio",
    ),
    (
        "p95 latency of POST /api/requests",
        "histogram_quantile(0.95, sum by (le) (rate(clusterkit_request_seconds_bucket[30s])))",
        None,
        "seconds",
    ),
    (
        "Throughput per worker",
        'sum by (server) (rate(clusterkit_http_requests_total{job="app-worker",'
        ' route="/api/requests"}[30s]))',
        "server",
        "req/s",
    ),
]


def prometheus_url() -> str:
    inv = _lab.inventory()
    hosts = inv.get("monitoring", {}).get("hosts", [])
    if not hosts:
        sys.exit("the inventory has no monitoring hosts")
    address = inv["_meta"]["hostvars"][hosts[0]]["clusterkit_address"]
    return f"http://{address}:9090"


def query_range(base: str, expr: str, start: float, end: float, step: float) -> list[dict]:
    params = urllib.parse.urlencode({"query": expr, "start": start, "end": end, "step": step})
    with urllib.request.urlopen(f"{base}/api/v1/query_range?{params}", timeout=30) as r:
        return json.load(r)["data"]["result"]


def load(seconds: int) -> None:
    host = _lab.front_end_url()
    users = 3 * max(_lab.inventory_worker_count(), 1)
    cmd = [
        str(Path(sys.executable).with_name("locust")),
        "-f",
        str(ROOT / "loadtests"),
        "--headless",
        "-u",
        str(users),
        "-r",
        str(users),
        "-t",
        f"{seconds}s",
        "--host",
        host,
        "--only-summary",
    ]
    print(f"load: {users} users on {host} for {seconds} s", flush=True)
    # The run's own gate (exit status) is not the point here; the figures are.
    subprocess.run(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, check=False)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--load-seconds", type=int, default=60)
    parser.add_argument("--minutes", type=float, default=None, help="window (default: the load)")
    parser.add_argument("--out", default=str(ROOT / "results" / "monitoring-dashboard.png"))
    args = parser.parse_args()
    base = prometheus_url()
    start = time.time()
    if args.load_seconds > 0:
        load(args.load_seconds)
        time.sleep(10)  # the last scrapes of the run
    end = time.time()
    if args.minutes:
        start = end - args.minutes * 60
    else:
        start -= 30
    step = max(5.0, (end - start) / 300)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(13, 8), sharex=True)
    data = {}
    for ax, (title, expr, label, unit) in zip(axes.flat, PANELS, strict=True):
        series = query_range(base, expr, start, end, step)
        data[title] = series
        for s in series:
            xs = [float(t) - start for t, _ in s["values"]]
            ys = [float(v) for _, v in s["values"]]
            ax.plot(xs, ys, label=s["metric"].get(label, "") if label else None)
        ax.set_title(title)
        ax.set_ylabel(unit)
        ax.grid(alpha=0.3)
        if label and series:
            ax.legend(fontsize=7, ncol=2)
    for ax in axes[1]:
        ax.set_xlabel("seconds")
    stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(end))
    fig.suptitle(f"clusterkit: Prometheus at {base} ({stamp})")
    fig.tight_layout()
    out = Path(args.out)
    out.parent.mkdir(exist_ok=True)
    fig.savefig(out, dpi=90)
    out.with_suffix(".json").write_text(
        json.dumps({"prometheus": base, "start": start, "end": end, "panels": data}) + "\n"
    )
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
