"""The shared deadline heap behind route and per-try timeouts: it cancels exactly the task
whose deadline passed, says so, and keeps memory bounded by live deadlines."""

from __future__ import annotations

import asyncio

from waypoint.proxy import Deadlines


def test_a_passed_deadline_cancels_its_task_and_only_that():
    async def main():
        dl = Deadlines()

        async def wait(delay_s: float, work_s: float) -> str:
            d = dl.arm(delay_s)
            try:
                await asyncio.sleep(work_s)
                return "done"
            except asyncio.CancelledError:
                if dl.expired(d):
                    return "timed out"
                raise
            finally:
                dl.disarm(d)

        return await asyncio.gather(wait(0.05, 5), wait(5, 0.01), wait(0.02, 0.2))

    assert asyncio.run(main()) == ["timed out", "done", "timed out"]


def test_disarmed_deadlines_do_not_pile_up():
    async def main():
        dl = Deadlines()
        for _ in range(20000):
            dl.disarm(dl.arm(3600))
        live = dl.arm(3600)
        assert len(dl.heap) < 10000
        dl.disarm(live)
        return dl

    asyncio.run(main())
