#!/usr/bin/env python3
"""Measure the latency nginx + HAProxy add in front of the workers (p50 and more).

Sequential requests over kept-alive connections, one path after the other request by request
(so machine noise hits every path alike), two kinds of request:

  post     POST /api/requests (the API's real work: one MongoDB write, one Redis update)
  get404   GET /api/latency-probe (answered 404 by the worker's router: no backend work, so
           the worker's own time barely varies and the proxies' share stands out)

Two vantage points:

  on_lb            from the first load balancer host itself (run there with Ansible's script
                   module): worker directly vs 127.0.0.1:8000 (HAProxy) vs 127.0.0.1:80
                   (nginx -> HAProxy). Both proxied paths and the direct one cross the same
                   network to the workers, so the difference is what nginx and HAProxy add
                   (comparable to a loopback nginx -> HAProxy -> upstream setup). For
                   calibration, a minimal ("stock") HAProxy and nginx over the same workers
                   run there during the measurement as well (stock_haproxy, stock_nginx).
  from_controller  from the controller: worker directly vs HAProxy and nginx on the load
                   balancer's address vs 127.0.0.1:8080 (the lab's published port). These
                   proxied paths also cross one more network hop (controller -> lb -> worker).

The workers should run with SERVICE_TIME_MS=0, so the service time does not drown the proxy
overhead: `--redeploy` runs playbooks/app.yml with SERVICE_TIME_MS=0 added to the workers'
environment first and runs it again without it at the end (also on failure).

    python scripts/measure-proxy-latency.py --redeploy [--samples 3000]
        [--out results/proxy-latency.json]

Only the standard library is used, so the same file runs on the load balancer (--local).
"""

from __future__ import annotations

import argparse
import base64
import http.client
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
import _venv  # noqa: E402

_venv.interpreter_bin_first()
KINDS = {
    "post": ("POST", "/api/requests", json.dumps({"payload": {"probe": "latency"}}).encode(), 200),
    "get404": ("GET", "/api/latency-probe", None, 404),
}


# --- measuring (runs on the controller or, with --local, on the load balancer) -----------


class Route:
    """One path: kept-alive connections to one or more endpoints, used in turn."""

    def __init__(self, endpoints: list[list]) -> None:
        self.endpoints = [(h, int(p)) for h, p in endpoints]
        self.conns = [http.client.HTTPConnection(h, p, timeout=30) for h, p in self.endpoints]
        self.i = 0
        self.samples: list[float] = []
        self.errors = 0

    def once(self, kind: str, record: bool = True) -> None:
        method, path, body, expected = KINDS[kind]
        n = self.i % len(self.conns)
        self.i += 1
        conn = self.conns[n]
        headers = {"Content-Type": "application/json"} if body else {}
        start = time.perf_counter_ns()
        try:
            conn.request(method, path, body=body, headers=headers)
            resp = conn.getresponse()
            resp.read()
            ok = resp.status == expected
        except (OSError, http.client.HTTPException):
            # A kept-alive connection the server closed meanwhile: reconnect, count it.
            conn.close()
            self.conns[n] = http.client.HTTPConnection(*self.endpoints[n], timeout=30)
            ok = False
        elapsed_us = (time.perf_counter_ns() - start) / 1000.0
        if not ok:
            self.errors += 1
        elif record:
            self.samples.append(elapsed_us)


def pct(samples: list[float], q: float) -> float:
    s = sorted(samples)
    return s[min(len(s) - 1, int(q * len(s)))]


def summary(route: Route) -> dict:
    s = route.samples
    return {
        "n": len(s),
        "errors": route.errors,
        "p50_us": round(statistics.median(s), 1),
        "p90_us": round(pct(s, 0.90), 1),
        "p99_us": round(pct(s, 0.99), 1),
        "min_us": round(min(s), 1),
    }


def measure(spec: dict) -> dict:
    """spec: {"paths": {name: [[host, port], ...]}, "samples": n, "warmup": n, "kinds": [...]}"""
    out: dict = {}
    for kind in spec["kinds"]:
        routes = {name: Route(endpoints) for name, endpoints in spec["paths"].items()}
        for route in routes.values():
            for _ in range(spec["warmup"]):
                route.once(kind, record=False)
        for _ in range(spec["samples"]):
            for route in routes.values():
                route.once(kind)
        out[kind] = {name: summary(route) for name, route in routes.items()}
    return out


STOCK_HAPROXY = """\
defaults
  mode http
  timeout connect 5s
  timeout client 30s
  timeout server 30s
frontend stock
  bind 127.0.0.1:{haproxy_port}
  default_backend workers
backend workers
  balance roundrobin
{servers}
"""

STOCK_NGINX = """\
worker_processes auto;
pid {dir}/nginx.pid;
error_log {dir}/error.log;
events {{ worker_connections 1024; }}
http {{
  access_log off;
  upstream stock {{ server 127.0.0.1:{haproxy_port}; keepalive 16; }}
  server {{
    listen 127.0.0.1:{nginx_port};
    location / {{
      proxy_pass http://stock;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }}
  }}
}}
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def with_stock_proxies(spec: dict) -> dict:
    """Start a minimal ("stock") HAProxy over the same workers and a minimal nginx with
    upstream keepalive in front of it, on free loopback ports, measure them along with the
    deployed ones, and stop them again (by their process ids)."""
    with tempfile.TemporaryDirectory() as work:
        haproxy_port, nginx_port = free_port(), free_port()
        servers = "\n".join(
            f"  server w{i} {host}:{port}" for i, (host, port) in enumerate(spec["paths"]["direct"])
        )
        Path(work, "haproxy.cfg").write_text(
            STOCK_HAPROXY.format(haproxy_port=haproxy_port, servers=servers)
        )
        Path(work, "nginx.conf").write_text(
            STOCK_NGINX.format(dir=work, haproxy_port=haproxy_port, nginx_port=nginx_port)
        )
        procs = [
            subprocess.Popen(
                ["haproxy", "-f", f"{work}/haproxy.cfg", "-db"], stdout=subprocess.DEVNULL
            ),
            subprocess.Popen(
                ["nginx", "-c", f"{work}/nginx.conf", "-g", "daemon off;"],
                stdout=subprocess.DEVNULL,
            ),
        ]
        try:
            time.sleep(2)
            spec = dict(spec, paths=dict(spec["paths"]))
            spec["paths"]["stock_haproxy"] = [["127.0.0.1", haproxy_port]]
            spec["paths"]["stock_nginx"] = [["127.0.0.1", nginx_port]]
            return measure(spec)
        finally:
            for proc in procs:
                proc.terminate()
                proc.wait(timeout=10)


def added(result: dict, pairs: dict[str, tuple[str, str]]) -> dict:
    return {
        kind: {
            label: round(paths[a]["p50_us"] - paths[b]["p50_us"], 1)
            for label, (a, b) in pairs.items()
            if a in paths and b in paths
        }
        for kind, paths in result.items()
    }


# --- orchestration (controller) ----------------------------------------------------------


def inventory(path: str):
    """The inventory model (clusterkit.inventory); imported here: the --local side of this
    script runs on a lab host, without the kit."""
    sys.path.insert(0, str(ROOT))
    from clusterkit import inventory as model

    return model, model.load(path)


def workers(inv) -> list[list]:
    model, world = inv
    return [[w.address, w.port] for w in model.workers(world)]


def redeploy(inv_path: str, inv, service_time_ms: int | None) -> None:
    cmd = ["ansible-playbook", "-i", inv_path, "playbooks/app.yml"]
    if service_time_ms is not None:
        model, world = inv
        env = {}
        for h in model.group(world, "app_workers"):
            env.update(world[h]["app_worker_environment"])
        env["SERVICE_TIME_MS"] = str(service_time_ms)
        cmd += ["-e", json.dumps({"app_worker_environment": env})]
    print("+", " ".join(cmd), file=sys.stderr, flush=True)
    subprocess.run(cmd, cwd=ROOT, check=True, stdout=subprocess.DEVNULL)


def on_lb(inv_path: str, lb: str, spec: dict) -> dict:
    """Run this file on the load balancer with Ansible's script module (--local)."""
    encoded = base64.b64encode(json.dumps(spec).encode()).decode()
    env = dict(
        os.environ,
        ANSIBLE_STDOUT_CALLBACK="json",
        ANSIBLE_LOAD_CALLBACK_PLUGINS="1",
    )
    run = subprocess.run(
        [
            "ansible",
            lb,
            "-i",
            inv_path,
            "-m",
            "ansible.builtin.script",
            "-a",
            f"{Path(__file__).resolve()} --local {encoded}",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    try:
        # The json callback's document comes first (other callbacks may print after it).
        start = 0 if run.stdout.startswith("{") else run.stdout.index("\n{") + 1
        doc, _ = json.JSONDecoder().raw_decode(run.stdout[start:])
        host = doc["plays"][0]["tasks"][0]["hosts"][lb]
        return json.loads(host["stdout"])
    except (KeyError, IndexError, ValueError) as exc:
        raise SystemExit(
            f"measurement on {lb} failed: {exc}\n{run.stdout[-2000:]}{run.stderr[-2000:]}"
        ) from exc


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "-i", "--inventory", default=os.environ.get("CLUSTERKIT_INVENTORY", "inventory/lab")
    )
    ap.add_argument(
        "--samples", type=int, default=3000, help="requests per path and kind (default 3000)"
    )
    ap.add_argument("--warmup", type=int, default=50)
    ap.add_argument(
        "--redeploy",
        action="store_true",
        help="redeploy the workers with SERVICE_TIME_MS=0 first and restore them at the end",
    )
    ap.add_argument("--out", default="results/proxy-latency.json")
    ap.add_argument("--local", help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.local:
        spec = json.loads(base64.b64decode(args.local))
        print(json.dumps(with_stock_proxies(spec) if spec.get("stock") else measure(spec)))
        return 0

    inv = inventory(args.inventory)
    model, world = inv
    lb = model.group(world, "lb")[0]
    lb_addr = world[lb]["clusterkit_address"]
    haproxy_port = int(world[lb]["haproxy_api_port"])
    kinds = list(KINDS)
    lb_spec = {
        "stock": True,
        "paths": {
            "direct": workers(inv),
            "haproxy": [["127.0.0.1", haproxy_port]],
            "nginx": [["127.0.0.1", 80]],
        },
        "samples": args.samples,
        "warmup": args.warmup,
        "kinds": kinds,
    }
    controller_spec = {
        "paths": {
            "direct": workers(inv),
            "haproxy": [[lb_addr, haproxy_port]],
            "nginx": [[lb_addr, 80]],
            "published": [["127.0.0.1", 8080]],
        },
        "samples": args.samples,
        "warmup": args.warmup,
        "kinds": kinds,
    }
    pairs = {
        "nginx_plus_haproxy": ("nginx", "direct"),
        "haproxy": ("haproxy", "direct"),
        "nginx": ("nginx", "haproxy"),
        "docker_port_publishing": ("published", "nginx"),
        "stock_nginx_plus_haproxy": ("stock_nginx", "direct"),
        "stock_haproxy": ("stock_haproxy", "direct"),
    }
    if args.redeploy:
        redeploy(args.inventory, inv, 0)
    try:
        lb_result = on_lb(args.inventory, lb, lb_spec)
        controller_result = measure(controller_spec)
    finally:
        if args.redeploy:
            redeploy(args.inventory, inv, None)

    result = {
        "added_p50_us": {
            "on_lb": added(lb_result, pairs),
            "from_controller": added(controller_result, pairs),
        },
        "on_lb": lb_result,
        "from_controller": controller_result,
        "meta": {
            "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "controller": platform.node(),
            "cpus": os.cpu_count(),
            "loadavg_at_end": [round(x, 2) for x in os.getloadavg()],
            "load_balancer": lb,
            "workers": len(workers(inv)),
            "samples_per_path_and_kind": args.samples,
            "requests": {k: f"{v[0]} {v[1]} -> {v[3]}" for k, v in KINDS.items()},
            "service_time_ms": 0 if args.redeploy else "as deployed",
            "command": "python scripts/measure-proxy-latency.py"
            + (" --redeploy" if args.redeploy else ""),
        },
    }
    out = ROOT / args.out
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    for where, res in (("on_lb", lb_result), ("from_controller", controller_result)):
        for kind, paths in res.items():
            for name, r in paths.items():
                print(
                    f"{where:15} {kind:6} {name:9} p50 {r['p50_us']:8.1f} us"
                    f"  p90 {r['p90_us']:8.1f}"
                    f"  p99 {r['p99_us']:8.1f}  errors {r['errors']}"
                )
    print("added at p50 (us):", json.dumps(result["added_p50_us"], indent=1))
    print(f"written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
