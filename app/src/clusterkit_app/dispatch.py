"""Worker selection for the master: fewest jobs in flight, ties broken round-robin.

Pure bookkeeping (no I/O) so that it can be unit-tested; the master owns one instance.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class WorkerSlot:
    worker_id: str
    order: int
    in_flight: set[str] = field(default_factory=set)
    draining: bool = False


class Dispatcher:
    def __init__(self, max_in_flight: int) -> None:
        if max_in_flight < 1:
            raise ValueError("max_in_flight must be >= 1")
        self.max_in_flight = max_in_flight
        self.workers: dict[str, WorkerSlot] = {}
        self.owner: dict[str, str] = {}  # job id -> worker id
        self._joined = 0
        self._last_order = -1

    def add_worker(self, worker_id: str) -> list[str]:
        """Register a worker. If one with the same id was connected, it is replaced and its jobs
        are returned for re-dispatch."""
        orphans = self.remove_worker(worker_id)
        self.workers[worker_id] = WorkerSlot(worker_id, self._joined)
        self._joined += 1
        return orphans

    def remove_worker(self, worker_id: str) -> list[str]:
        """Forget a worker; returns the ids of the jobs it had in flight (to re-dispatch)."""
        slot = self.workers.pop(worker_id, None)
        if slot is None:
            return []
        for job_id in slot.in_flight:
            self.owner.pop(job_id, None)
        return sorted(slot.in_flight)

    def set_draining(self, worker_id: str) -> int:
        slot = self.workers.get(worker_id)
        if slot is None:
            return 0
        slot.draining = True
        return len(slot.in_flight)

    def free_slots(self) -> int:
        return sum(
            self.max_in_flight - len(s.in_flight)
            for s in self.workers.values()
            if not s.draining and len(s.in_flight) < self.max_in_flight
        )

    def pick(self) -> WorkerSlot | None:
        """The eligible worker with the fewest jobs in flight; among equals, the next one after
        the previously picked worker in join order (round-robin)."""
        eligible = [
            s
            for s in self.workers.values()
            if not s.draining and len(s.in_flight) < self.max_in_flight
        ]
        if not eligible:
            return None
        fewest = min(len(s.in_flight) for s in eligible)
        tied = sorted((s for s in eligible if len(s.in_flight) == fewest), key=lambda s: s.order)
        after = [s for s in tied if s.order > self._last_order]
        chosen = after[0] if after else tied[0]
        self._last_order = chosen.order
        return chosen

    def assign(self, worker_id: str, job_id: str) -> None:
        previous = self.owner.get(job_id)
        if previous is not None and previous in self.workers:
            self.workers[previous].in_flight.discard(job_id)
        self.workers[worker_id].in_flight.add(job_id)
        self.owner[job_id] = worker_id

    def complete(self, job_id: str) -> str | None:
        """A job left flight (acked or timed out); returns the worker that held it."""
        worker_id = self.owner.pop(job_id, None)
        if worker_id is not None and worker_id in self.workers:
            self.workers[worker_id].in_flight.discard(job_id)
        return worker_id

    def in_flight(self) -> int:
        return len(self.owner)
