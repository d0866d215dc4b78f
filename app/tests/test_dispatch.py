from __future__ import annotations

from clusterkit_app.dispatch import Dispatcher


def picks(d: Dispatcher, n: int) -> list[str]:
    out = []
    for i in range(n):
        slot = d.pick()
        assert slot is not None
        d.assign(slot.worker_id, f"job-{len(d.owner)}-{i}")
        out.append(slot.worker_id)
    return out


def test_ties_are_round_robin() -> None:
    d = Dispatcher(max_in_flight=4)
    for w in ("a", "b", "c"):
        d.add_worker(w)
    assert picks(d, 6) == ["a", "b", "c", "a", "b", "c"]


def test_fewest_in_flight_wins() -> None:
    d = Dispatcher(max_in_flight=4)
    d.add_worker("a")
    d.add_worker("b")
    d.assign("a", "j1")
    d.assign("a", "j2")
    assert picks(d, 2) == ["b", "b"]
    # now 2 and 2: round-robin continues after "b"
    assert picks(d, 2) == ["a", "b"]


def test_completion_frees_a_slot_for_that_worker() -> None:
    d = Dispatcher(max_in_flight=2)
    d.add_worker("a")
    d.add_worker("b")
    d.assign("a", "j1")
    d.assign("b", "j2")
    d.assign("b", "j3")
    d.complete("j1")
    slot = d.pick()
    assert slot is not None and slot.worker_id == "a"


def test_per_worker_bound() -> None:
    d = Dispatcher(max_in_flight=2)
    d.add_worker("a")
    d.add_worker("b")
    assert d.free_slots() == 4
    picks(d, 4)
    assert d.pick() is None
    assert d.free_slots() == 0


def test_draining_worker_gets_nothing() -> None:
    d = Dispatcher(max_in_flight=4)
    d.add_worker("a")
    d.add_worker("b")
    d.set_draining("a")
    assert picks(d, 3) == ["b", "b", "b"]
    assert d.free_slots() == 1


def test_removed_worker_returns_its_jobs() -> None:
    d = Dispatcher(max_in_flight=4)
    d.add_worker("a")
    d.add_worker("b")
    d.assign("a", "j1")
    d.assign("b", "j2")
    d.assign("a", "j3")
    assert d.remove_worker("a") == ["j1", "j3"]
    assert d.owner == {"j2": "b"}
    assert d.complete("j1") is None
    assert picks(d, 1) == ["b"]


def test_reconnect_with_same_id_orphans_old_jobs() -> None:
    d = Dispatcher(max_in_flight=4)
    d.add_worker("a")
    d.assign("a", "j1")
    assert d.add_worker("a") == ["j1"]
    assert d.in_flight() == 0


def test_no_workers() -> None:
    assert Dispatcher(max_in_flight=1).pick() is None
