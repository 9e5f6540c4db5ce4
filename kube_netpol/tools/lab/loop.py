"""An asyncio event loop on its own thread: hosts every server and runs the probes.

That thread is also the one that enters namespaces (briefly, to create
sockets), so the caller's threads never change namespace.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any, Awaitable, Callable, Coroutine, TypeVar

T = TypeVar("T")


class LoopThread:
    def __init__(self, name: str) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    @property
    def thread(self) -> threading.Thread:
        return self._thread

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_forever()
        finally:
            self._loop.close()

    def call(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        """Run a coroutine on the loop and wait for its result from another thread."""
        if threading.current_thread() is self._thread:
            coro.close()
            raise RuntimeError("LoopThread.call from its own thread would deadlock")
        if not self._thread.is_alive():
            coro.close()
            raise RuntimeError("the lab's event loop is stopped")
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def stop(self, shutdown: Callable[[], Awaitable[None]], timeout: float = 10.0) -> None:
        """Cancel every task, run ``shutdown`` on the loop, then stop the loop and join its thread."""
        if not self._thread.is_alive():
            return
        if threading.current_thread() is self._thread:
            raise RuntimeError("cannot stop the lab's event loop from its own thread")

        async def finish() -> None:
            current = asyncio.current_task()
            tasks = [task for task in asyncio.all_tasks() if task is not current]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await shutdown()

        future = asyncio.run_coroutine_threadsafe(finish(), self._loop)
        try:
            future.result(timeout)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout)
