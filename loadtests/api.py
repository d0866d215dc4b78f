"""Load test of the cluster's API through the front end (nginx → HAProxy → workers).

    locust -f loadtests                                   # web UI on :8089
    locust -f loadtests --headless -u 20 -r 20 -t 30s     # gated run: exit code 1 on a miss

Every user is a closed loop (no think time) posting to /api/requests, so a run with more users
than workers keeps every worker busy and measures what the deployment delivers against the
capacity model (each worker serves `--capacity-rps` requests/s, ~15 by default: one request at a
time, 66 ms each). At the end of a headless run the thresholds below are checked and a miss sets
a non-zero exit code: per-worker throughput ≥ `--min-capacity-ratio` × capacity, error ratio ≤
`--max-error-ratio`, p95 ≤ `--max-p95-ms`. The number of workers is read from the deployed
front end (HAProxy stats) unless `--workers` is given.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections import Counter
from pathlib import Path

import _lab
from locust import FastHttpUser, constant, events, task
from locust.env import Environment
from locust.runners import WorkerRunner

log = logging.getLogger("clusterkit.loadtest")
per_worker: Counter[str] = Counter()


@events.init_command_line_parser.add_listener
def add_arguments(parser) -> None:
    group = parser.add_argument_group("clusterkit thresholds")
    group.add_argument(
        "--capacity-rps",
        type=float,
        default=1000 / 66,
        help="Requests/s one worker serves in the capacity model (default 15.15: 1 × 66 ms)",
    )
    group.add_argument(
        "--min-capacity-ratio",
        type=float,
        default=0.9,
        help="Fail below this share of capacity per worker (default 0.9)",
    )
    group.add_argument(
        "--max-error-ratio", type=float, default=0.01, help="Fail above this error ratio"
    )
    group.add_argument(
        "--max-p95-ms",
        type=float,
        default=2000,
        help="Fail when the p95 response time exceeds this (default 2000 ms: closed-loop users "
        "wait in HAProxy's queue, so p95 ≈ users / throughput plus the service time)",
    )
    group.add_argument(
        "--report-json",
        default="",
        help="Write the run's figures (throughput, latency, errors, per-worker counts) here",
    )
    group.add_argument(
        "--workers",
        type=int,
        default=0,
        help="Workers behind the front end (default 0: read from HAProxy stats or inventory)",
    )


class ApiUser(FastHttpUser):
    """A client that posts requests back to back (closed loop)."""

    # LOCUST_HOST / --host, else the LBs' virtual address, else the published front end.
    host = _lab.front_end_url()
    wait_time = constant(0)

    def on_start(self) -> None:
        self.session = uuid.uuid4().hex

    @task
    def create_request(self) -> None:
        body = {"payload": {"load": "locust"}, "session": self.session}
        with self.client.post(
            "/api/requests", json=body, name="POST /api/requests", catch_response=True
        ) as response:
            if response.status_code != 200:
                response.failure(f"HTTP {response.status_code}")
                return
            worker = response.headers.get("X-Worker-Id")
            if not worker:
                response.failure("no X-Worker-Id header")
                return
            per_worker[worker] += 1


@events.report_to_master.add_listener
def send_worker_counts(client_id: str, data: dict) -> None:
    data["clusterkit_per_worker"] = dict(per_worker)
    per_worker.clear()


@events.worker_report.add_listener
def receive_worker_counts(client_id: str, data: dict) -> None:
    per_worker.update(data.get("clusterkit_per_worker", {}))


def served_rps(environment: Environment) -> float:
    """Successful requests per second over the run (failures serve nobody)."""
    total = environment.stats.total
    return total.total_rps * (1 - total.fail_ratio)


def evaluate(environment: Environment, workers: int) -> list[str]:
    """Return the threshold misses of the finished run (empty when it passed)."""
    opts = environment.parsed_options
    total = environment.stats.total
    misses: list[str] = []
    if total.num_requests == 0:
        return ["no request was made"]
    per_worker_rps = served_rps(environment) / workers
    floor = opts.min_capacity_ratio * opts.capacity_rps
    if per_worker_rps < floor:
        misses.append(
            f"per-worker throughput {per_worker_rps:.2f} req/s < {floor:.2f} "
            f"({opts.min_capacity_ratio:.0%} of {opts.capacity_rps:.2f})"
        )
    if total.fail_ratio > opts.max_error_ratio:
        misses.append(f"error ratio {total.fail_ratio:.2%} > {opts.max_error_ratio:.2%}")
    p95 = total.get_response_time_percentile(0.95)
    if p95 > opts.max_p95_ms:
        misses.append(f"p95 {p95:.0f} ms > {opts.max_p95_ms:.0f} ms")
    return misses


def write_report(environment: Environment, workers: int, source: str, path: str) -> None:
    total = environment.stats.total
    report = {
        "workers": workers,
        "workers_source": source,
        "users": environment.runner.target_user_count if environment.runner else None,
        "duration_s": round(total.last_request_timestamp - total.start_time, 3)
        if total.last_request_timestamp
        else 0.0,
        "requests": total.num_requests,
        "failures": total.num_failures,
        "error_ratio": total.fail_ratio,
        "throughput_rps": served_rps(environment),
        "per_worker_rps": served_rps(environment) / workers if workers else 0.0,
        "p50_ms": total.get_response_time_percentile(0.5),
        "p95_ms": total.get_response_time_percentile(0.95),
        "p99_ms": total.get_response_time_percentile(0.99),
        "per_worker_requests": dict(sorted(per_worker.items())),
    }
    Path(path).write_text(json.dumps(report, indent=2) + "\n")


@events.quitting.add_listener
def check_thresholds(environment: Environment, **_kwargs) -> None:
    if isinstance(environment.runner, WorkerRunner) or environment.parsed_options is None:
        return
    opts = environment.parsed_options
    workers, source = (opts.workers, "--workers") if opts.workers else _lab.worker_count()
    total = environment.stats.total
    per_worker_rps = served_rps(environment) / workers if workers else 0.0
    lines = [
        f"workers: {workers} (from {source})",
        f"throughput: {served_rps(environment):.2f} req/s served, {per_worker_rps:.2f} per worker "
        f"(capacity model {opts.capacity_rps:.2f})",
        f"errors: {total.num_failures} of {total.num_requests} ({total.fail_ratio:.2%})",
        f"latency: p50 {total.get_response_time_percentile(0.5):.0f} ms, "
        f"p95 {total.get_response_time_percentile(0.95):.0f} ms",
    ]
    if per_worker:
        counts = sorted(per_worker.values())
        lines.append(
            f"spread over {len(per_worker)} workers: min {counts[0]}, max {counts[-1]} "
            f"(max/min {counts[-1] / max(counts[0], 1):.2f})"
        )
    for line in lines:
        log.info(line)
    if opts.report_json:
        write_report(environment, workers, source, opts.report_json)
    if not environment.parsed_options.headless:
        return
    misses = evaluate(environment, workers)
    if misses:
        for miss in misses:
            log.error("threshold missed: %s", miss)
        environment.process_exit_code = 1
    else:
        log.info("all thresholds met")
