"""How the long-running parts run as processes: logging set up once, run until SIGTERM/SIGINT.

Before: a part with async `start()` and `stop()` (the control plane, the node agent). After
`await run_until_signalled(part)`: it was started, ran until SIGTERM or SIGINT, and was stopped —
also when start or the wait raised. `main(amain, args)` is the shared `if __name__` body.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Awaitable, Callable
from typing import Any, Protocol


class Part(Protocol):
    async def start(self) -> None: ...
    async def stop(self) -> None: ...


async def run_until_signalled(part: Part) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await part.start()
    try:
        await stop.wait()
    finally:
        await part.stop()
    return 0


def main(amain: Callable[[Any], Awaitable[int]], args: Any) -> int:
    logging.basicConfig(level=args.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return asyncio.run(amain(args))
