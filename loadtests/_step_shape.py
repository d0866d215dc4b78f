"""Opt-in step load: add it to the locustfile list to ramp in steps instead of all at once.

    locust -f loadtests,loadtests/_step_shape.py --headless -u 40 -t 2m \
        --step-users 10 --step-seconds 20

Starts with `--step-users` users and adds as many every `--step-seconds` until `-u` users run;
stops after `-t` (or when the last step has run for `--step-seconds` when no -t is given).
It is not picked up by `locust -f loadtests` (its name starts with "_").
"""

from __future__ import annotations

from locust import LoadTestShape, events


@events.init_command_line_parser.add_listener
def add_arguments(parser) -> None:
    group = parser.add_argument_group("clusterkit step load")
    group.add_argument("--step-users", type=int, default=5, help="Users added per step")
    group.add_argument("--step-seconds", type=float, default=15, help="Seconds per step")


class StepLoadShape(LoadTestShape):
    def tick(self) -> tuple[int, float] | None:
        opts = self.runner.environment.parsed_options
        run_time = self.get_run_time()
        max_users = opts.num_users or opts.step_users
        steps = -(-max_users // opts.step_users)  # ceiling division
        limit = opts.run_time or steps * opts.step_seconds
        if run_time >= limit:
            return None
        users = min(max_users, (int(run_time // opts.step_seconds) + 1) * opts.step_users)
        return users, opts.step_users
