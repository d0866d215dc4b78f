from __future__ import annotations

import asyncio

from clusterkit_app.capacity import CapacityGate


async def run_many(gate: CapacityGate, n: int) -> tuple[list[str], int]:
    events: list[str] = []
    current = 0
    peak = 0

    async def one(i: int) -> None:
        nonlocal current, peak

        async def work() -> None:
            nonlocal current, peak
            current += 1
            peak = max(peak, current)
            events.append(f"start{i}")
            await asyncio.sleep(0)
            events.append(f"end{i}")
            current -= 1

        await gate.serve(work)

    tasks = []
    for i in range(n):
        tasks.append(asyncio.create_task(one(i)))
        await asyncio.sleep(0)  # arrival order = i
    await asyncio.gather(*tasks)
    return events, peak


async def test_concurrency_one_serializes_in_arrival_order() -> None:
    gate = CapacityGate(concurrency=1, service_time_ms=5)
    events, peak = await run_many(gate, 6)
    assert peak == 1
    assert events == [e for i in range(6) for e in (f"start{i}", f"end{i}")]
    assert gate.served == 6 and gate.in_service == 0 and gate.waiting == 0


async def test_concurrency_three_never_exceeds_three() -> None:
    gate = CapacityGate(concurrency=3, service_time_ms=5)
    _, peak = await run_many(gate, 10)
    assert peak == 3
    assert gate.max_in_service == 3
    assert gate.in_service == 0


async def test_slot_is_held_for_the_service_time() -> None:
    gate = CapacityGate(concurrency=1, service_time_ms=30)
    loop = asyncio.get_running_loop()
    started = loop.time()
    await gate.serve(lambda: asyncio.sleep(0))
    assert loop.time() - started >= 0.029


async def test_cancelled_waiter_gives_its_place_back() -> None:
    gate = CapacityGate(concurrency=1, service_time_ms=20)
    first = asyncio.create_task(gate.serve(lambda: asyncio.sleep(0)))
    await asyncio.sleep(0)
    second = asyncio.create_task(gate.serve(lambda: asyncio.sleep(0)))
    await asyncio.sleep(0)
    assert gate.waiting == 1
    second.cancel()
    await first
    await asyncio.sleep(0)
    assert gate.in_service == 0 and gate.waiting == 0
    await gate.serve(lambda: asyncio.sleep(0))
    assert gate.served == 2


async def test_cpu_mode_holds_the_slot_too() -> None:
    gate = CapacityGate(concurrency=1, service_time_ms=10, work_mode="cpu")
    await gate.serve(lambda: asyncio.sleep(0))
    assert gate.served == 1
