"""Progressive traffic shift from a legacy API server to the workers, under load, with the
automatic rollback (playbooks/shift-traffic.yml, docs/load-balancers.md "Moving traffic from a
legacy server").

A stand-in legacy server (a small Python HTTP server: `POST /api/requests` answers 200 with a
JSON body and `X-Worker-Id: legacy`, any GET answers 200) runs on every LB host on
127.0.0.1:LEGACY_PORT as a transient systemd unit, and the front ends are deployed with
`haproxy_legacy_backends` pointing at it. Under the Locust scenario the test shifts 0 -> 10 ->
50 -> 100 % with no failed request, checking after each step from HAProxy's stats what share
each side served; reloads HAProxy at 50 % and checks the weights stayed; reruns the whole plan
(nothing changes); goes back to 10 %, then breaks the new side (every worker in maintenance on
every LB) as soon as the step to 50 % has moved the weights, and checks that the play rolls
back to 10 % on every LB, fails saying so, and that requests failed only between the fault and
the rollback. The lab is restored whatever happens: workers ready, front ends redeployed without
legacy servers, stand-ins stopped.

    python -m pytest tests/chaos/test_traffic_shift.py -q     # ~2 min on the 2-vCPU lab machine
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import shlex
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.chaos import ha
from tests.chaos.conftest import SERVER_NAMES, background_load, on, running, wait_until
from tests.conftest import INVENTORY, ROOT, group_hosts, setting

LEGACY_PORT = 8990
UNIT = "clusterkit-legacy-standin"
SCRIPT = f"/run/{UNIT}.py"
SPLIT = "api_split"  # haproxy_split_backend_name's default
LEGACY_VARS = {
    "haproxy_legacy_backends": [{"name": "legacy1", "address": "127.0.0.1", "port": LEGACY_PORT}],
    "haproxy_legacy_health_check_path": "/healthz",
}
PLAYBOOK_TIMEOUT_S = 300
# Share measured over a few seconds after each step: roundrobin weights split exactly, so the
# new side's share is the step's within a few requests.
SHARE_WINDOW_S = 3.0
SHARE_TOLERANCE = 0.05
# From the fault to the weights being back at the previous step on every LB: the watch reads
# each LB every 2 s (shift_poll_s), judges a window once it has 10 requests to the new side,
# then the rollback sets the weights over the runtime API of each LB.
MAX_DETECTION_S = 8.0

STANDIN = """
import json, sys, uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Legacy(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def send(self, status, doc):
        body = json.dumps(doc).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-Worker-Id", "legacy")
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        self.send(200, {"status": "ok", "worker": "legacy"})

    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if self.path.split("?")[0] == "/api/requests":
            self.send(200, {"id": uuid.uuid4().hex, "worker": "legacy"})
        else:
            self.send(404, {"error": "not found"})

    def log_message(self, *args):
        pass


ThreadingHTTPServer.daemon_threads = True
ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Legacy).serve_forever()
"""


# -- the load balancers' runtime API ----------------------------------------------------------


def runtime(lb: str, command: str) -> str:
    sock = setting(lb, "haproxy_runtime_socket")
    return on(lb, f"echo {shlex.quote(command)} | socat -t 5 stdio UNIX-CONNECT:{sock}")


def weights(lb: str) -> tuple[int, int]:
    """(new, legacy): the split backend's current weights on lb."""
    out = runtime(lb, f"get weight {SPLIT}/new; get weight {SPLIT}/legacy").split()
    return int(out[0]), int(out[3])


def served(lbs: list[str]) -> dict[str, int]:
    """Requests each side of the split backend has served, summed over the LBs (stot)."""
    out = {"new": 0, "legacy": 0}
    for lb in lbs:
        lines = runtime(lb, "show stat").splitlines()
        header = lines[0].lstrip("# ").split(",")
        for line in lines[1:]:
            row = dict(zip(header, line.split(","), strict=False))
            if row.get("pxname") == SPLIT and row.get("svname") in out:
                out[row["svname"]] += int(row["stot"] or 0)
    return out


def share_of_new(lbs: list[str], seconds: float = SHARE_WINDOW_S) -> dict[str, float]:
    before = served(lbs)
    time.sleep(seconds)
    after = served(lbs)
    new, legacy = after["new"] - before["new"], after["legacy"] - before["legacy"]
    return {"new": new, "legacy": legacy, "share": round(new / max(new + legacy, 1), 3)}


def set_workers(lbs: list[str], state: str) -> None:
    command = "; ".join(f"set server app_workers/{name} state {state}" for name in SERVER_NAMES)
    for lb in lbs:
        runtime(lb, command)


# -- playbooks --------------------------------------------------------------------------------


def playbook(tmp_path: Path, name: str, extra: dict[str, Any], *args: str) -> subprocess.Popen:
    path = tmp_path / f"extra-{time.monotonic_ns()}.json"
    path.write_text(json.dumps(extra))
    return subprocess.Popen(
        ["ansible-playbook", "-i", str(INVENTORY), name, "-e", f"@{path}", *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "ANSIBLE_NOCOLOR": "1", "ANSIBLE_FORCE_COLOR": "0"},
    )


def finished(proc: subprocess.Popen) -> tuple[int, str]:
    """Waits for a playbook; its output is kept beside its extra-vars file (tmp_path)."""
    out, _ = proc.communicate(timeout=PLAYBOOK_TIMEOUT_S)
    extra = next(a for a in proc.args if str(a).startswith("@"))
    Path(extra[1:]).with_suffix(".log").write_text(out)
    return proc.returncode, out


def shift(tmp_path: Path, **extra: Any) -> tuple[int, str]:
    return finished(shift_started(tmp_path, **extra))


def shift_started(tmp_path: Path, **extra: Any) -> subprocess.Popen:
    # The legacy servers as the inventory would have them (the play checks they are set).
    return playbook(tmp_path, "playbooks/shift-traffic.yml", {**LEGACY_VARS, **extra})


def changed(out: str) -> int:
    return sum(int(n) for n in re.findall(r"\bchanged=(\d+)", out))


def deploy_front_ends(tmp_path: Path, extra: dict[str, Any]) -> None:
    code, out = finished(playbook(tmp_path, "playbooks/frontends.yml", extra, "--tags", "haproxy"))
    assert code == 0, f"frontends.yml failed: {out[-3000:]}"


# -- the stand-in legacy server ---------------------------------------------------------------


def start_standins(lbs: list[str]) -> None:
    encoded = base64.b64encode(STANDIN.encode()).decode()
    for lb in lbs:
        on(lb, f"systemctl stop {UNIT}; systemctl reset-failed {UNIT}", check=False)
        on(lb, f"echo {encoded} | base64 -d > {SCRIPT}")
        on(
            lb,
            f"systemd-run --unit={UNIT} --property=Restart=on-failure "
            f"python3 {SCRIPT} {LEGACY_PORT}",
        )
    for lb in lbs:
        wait_until(
            f"the stand-in legacy server answering on {lb}",
            lambda lb=lb: (
                on(
                    lb,
                    f"curl -s -o /dev/null -w '%{{http_code}}' http://127.0.0.1:{LEGACY_PORT}/healthz",
                    check=False,
                )
                == "200"
            ),
            20,
            0.3,
        )


def stop_standins(lbs: list[str]) -> None:
    for lb in lbs:
        if running(lb):
            on(
                lb,
                f"systemctl stop {UNIT}; systemctl reset-failed {UNIT}; rm -f {SCRIPT}",
                check=False,
            )


def legacy_up(lb: str) -> bool:
    """The stand-in passes HAProxy's checks on lb (show servers state: srv_op_state 2)."""
    rows = [line.split() for line in runtime(lb, "show servers state legacy").splitlines()[2:]]
    return any(len(r) > 5 and r[3] == "legacy1" and r[5] == "2" for r in rows)


@contextmanager
def legacy_front_ends(tmp_path: Path, lbs: list[str]) -> Iterator[None]:
    """The front ends with the stand-in as legacy server; afterwards, the normal lab again."""
    try:
        start_standins(lbs)
        deploy_front_ends(tmp_path, LEGACY_VARS)
        wait_until(
            "HAProxy sees the legacy server UP on every LB",
            lambda: all(legacy_up(lb) for lb in lbs),
            30,
            0.5,
        )
        yield
    finally:
        # Workers first (the redeploy's reload saves and reloads the servers' states), then
        # the config without legacy servers, then the stand-ins.
        for lb in lbs:
            if running(lb):
                # HAProxy not answering: the redeploy below starts it.
                with contextlib.suppress(AssertionError):
                    set_workers([lb], "ready")
        deploy_front_ends(tmp_path, {})
        stop_standins(lbs)
        # The state file and the watch's file as a lab that never shifted has them: the reload
        # saved the split backend's servers just before they went away.
        for lb in lbs:
            if running(lb):
                state = setting(lb, "haproxy_server_state_file")
                watch = (
                    Path(setting(lb, "haproxy_runtime_socket")).parent / "clusterkit-shift-watch"
                )
                on(
                    lb,
                    f"rm -f {watch}; umask 027; echo 'show servers state' | socat -t 5 stdio "
                    f"UNIX-CONNECT:{setting(lb, 'haproxy_runtime_socket')} > {state}.new "
                    f"&& mv {state}.new {state}",
                    check=False,
                )


# -- the scenario -----------------------------------------------------------------------------


def test_traffic_moves_step_by_step_and_rolls_back_when_the_new_side_fails(
    tmp_path: Path, chaos_results: dict[str, dict[str, Any]]
) -> None:
    lbs = group_hosts("lb")
    if not lbs:
        pytest.skip("no load balancer in the inventory")
    started = time.monotonic()
    shares: dict[int, dict[str, float]] = {}
    with legacy_front_ends(tmp_path, lbs):
        deployed = time.monotonic()
        with background_load(tmp_path, 170) as load:
            shares[0] = share_of_new(lbs)
            for step in (10, 50, 100):
                code, out = shift(tmp_path, shift_percent=step, shift_watch_s=4)
                assert code == 0, f"shift to {step}% failed: {out[-3000:]}"
                assert {lb: weights(lb) for lb in lbs} == dict.fromkeys(lbs, (step, 100 - step))
                shares[step] = share_of_new(lbs)
                if step == 50:
                    # A reload keeps the weights the playbook saved (the config still says 0).
                    for lb in lbs:
                        pid = runtime(lb, "show info").split("Pid: ")[1].split()[0]
                        on(lb, "systemctl reload haproxy")
                        wait_until(
                            f"a new HAProxy worker on {lb}",
                            lambda lb=lb, pid=pid: (
                                "Pid: " in (info := runtime(lb, "show info"))
                                and info.split("Pid: ")[1].split()[0] != pid
                            ),
                            30,
                            0.3,
                        )
                        reply = runtime(lb, f"get weight {SPLIT}/new")
                        assert reply == "50 (initial 0)", f"{lb} after a reload: {reply}"

            # The whole plan again, at its last step: nothing moves, nothing is watched.
            rerun_started = time.monotonic()
            code, out = shift(tmp_path, shift_steps=[10, 50, 100])
            rerun_s = time.monotonic() - rerun_started
            assert code == 0, out[-3000:]
            assert changed(out) == 0, (
                f"a rerun at the current step changed something: {out[-3000:]}"
            )
            assert "Nothing to do" in out

            # Back to 10 % (a decrease, allowed explicitly), then the step to 50 % breaks.
            code, out = shift(
                tmp_path, shift_percent=10, shift_allow_decrease=True, shift_watch_s=0
            )
            assert code == 0, out[-3000:]
            proc = shift_started(tmp_path, shift_percent=50, shift_watch_s=30)
            wait_until(
                "the step to 50 % on every LB",
                lambda: all(weights(lb)[0] == 50 for lb in lbs),
                60,
                0.1,
            )
            fault_at = time.time()
            set_workers(lbs, "maint")
            rolled_back_at = wait_until(
                "the weights back at 10 % on every LB",
                lambda: all(weights(lb) == (10, 90) for lb in lbs),
                30,
                0.1,
            )
            set_workers(lbs, "ready")
            restored_at = time.time()
            code, failed_out = finished(proc)
            states = {
                lb: on(
                    lb,
                    f"grep -E ' {SPLIT} [0-9]+ (new|legacy) ' "
                    f"{setting(lb, 'haproxy_server_state_file')}",
                )
                for lb in lbs
            }
            figures = load.finish()
        report = json.loads(load.report.read_text())
    duration_s = time.monotonic() - started

    per_worker = report.get("per_worker_requests", {})
    message = next((line for line in failed_out.splitlines() if "Rolled back to" in line), "")
    in_window = figures.errors_between(fault_at, restored_at)
    # Requests the load sent in the same window (1 s samples, as errors_between counts).
    sent = [n for ts, n, _ in figures.history if fault_at - 1 <= ts <= restored_at + 1]
    sent_in_window = sent[-1] - sent[0] if len(sent) > 1 else 0
    row = {
        "requests": figures.requests,
        "errors": figures.errors,
        "error_ratio": round(figures.error_ratio, 5),
        "rps": figures.rps,
        "error_kinds": figures.error_kinds,
        "shares": {str(k): v for k, v in shares.items()},
        "legacy_requests": per_worker.get("legacy", 0),
        "worker_requests": sum(n for w, n in per_worker.items() if w != "legacy"),
        "errors_before_fault": figures.errors_between(0, fault_at - 1.5),
        "errors_in_fault_window": in_window,
        "requests_in_fault_window": sent_in_window,
        "seconds_with_errors": len(figures.error_seconds(fault_at, restored_at)),
        "detection_s": round(rolled_back_at - fault_at, 2),
        "fault_window_s": round(restored_at - fault_at, 2),
        "rerun_s": round(rerun_s, 1),
        "deploy_s": round(deployed - started, 1),
        "test_s": round(duration_s, 1),
        "rollback_message": message.strip()[:400],
    }
    chaos_results["traffic shift 0-10-50-100, rollback at 50"] = row
    print(json.dumps(row, indent=1))

    assert code != 0, f"the play did not fail on the broken new side: {failed_out[-3000:]}"
    assert "Rolled back to 10%" in failed_out, failed_out[-3000:]
    assert "error ratio" in failed_out, failed_out[-3000:]
    for lb, lines in states.items():
        saved = {line.split()[3]: int(line.split()[7]) for line in lines.splitlines()}
        assert saved == {"new": 10, "legacy": 90}, f"{lb} saved {lines!r}"
    assert shares[0]["new"] == 0, shares
    assert shares[100]["legacy"] == 0, shares
    for step in (10, 50):
        assert abs(shares[step]["share"] - step / 100) <= SHARE_TOLERANCE, shares
    assert row["legacy_requests"] > 0, per_worker
    assert row["worker_requests"] > 0, per_worker
    # No failed request while moving traffic (and reloading), and none after the rollback:
    # only the new side's requests between the fault and the rollback fail.
    assert row["errors_before_fault"] == 0, figures.error_kinds
    assert in_window == figures.errors, (in_window, figures.errors, figures.error_kinds)
    assert rolled_back_at - fault_at <= MAX_DETECTION_S, row
    # At 50 % the new side gets every second request (roundrobin): at most that half of the
    # window's requests fail. (Closed-loop users get a 503 back at once and send the next
    # request, so the count follows the users' loop, not the outage's length.)
    assert in_window <= 0.5 * sent_in_window + 10, row
    assert ha.vip() is None or len(ha.vip_holders(on, running)) == 1
