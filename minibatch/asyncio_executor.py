"""Running ``async def`` window functions: many windows in flight on one event loop.

A consumer whose function is a coroutine function (``async def``) runs it on
an :class:`AsyncioExecutor`: one event loop in a background thread of the
consumer process, with up to ``concurrency`` windows awaiting at once. Each
window is still a ``concurrent.futures.Future`` to the runner, so leases,
retries, dead letters and draining work exactly as for any other executor.
Functions wait for I/O here, not for the CPU: a function that computes for
long blocks the loop, and every other window with it.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import inspect
import threading
from typing import Any, Callable

#: windows awaiting at once when ``concurrency=`` is not given
DEFAULT_CONCURRENCY = 100


class AsyncioExecutor(concurrent.futures.Executor):
    """An Executor whose ``submit(fn, *args)`` runs the coroutine ``fn(*args)`` on its own event loop.

    A plain function submitted runs in the loop's thread (it must be quick).
    ``shutdown(wait=True)`` waits for the coroutines running, then stops the
    loop; ``cancel_futures=True`` cancels them instead. A loop that does not
    stop within ``STOP_JOIN`` seconds (a coroutine blocks it with a call that
    never returns) is left to its daemon thread, so the process can still exit.
    """
    #: seconds ``shutdown(wait=True)`` waits for the loop's thread to end once the loop is told to stop
    STOP_JOIN = 5.0

    def __init__(self, max_workers: int | None = None):
        self._max_workers = max_workers or DEFAULT_CONCURRENCY
        self._loop = asyncio.new_event_loop()
        self._running: set[concurrent.futures.Future[Any]] = set()
        self._lock = threading.Lock()
        self._closed = False
        self._thread = threading.Thread(target=self._run_loop, name='minibatch-asyncio', daemon=True)
        self._thread.start()

    def _run_loop(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_forever()

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> concurrent.futures.Future[Any]:
        with self._lock:
            if self._closed:
                raise RuntimeError('cannot submit to an AsyncioExecutor that was shut down')
            future = asyncio.run_coroutine_threadsafe(_call(fn, args, kwargs), self._loop)
            self._running.add(future)
        future.add_done_callback(self._running.discard)
        return future

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            running = list(self._running)
        if cancel_futures:
            for future in running:
                future.cancel()
        elif wait:
            concurrent.futures.wait(running)
        self._loop.call_soon_threadsafe(self._loop.stop)
        if wait:
            self._thread.join(self.STOP_JOIN)
            if not self._thread.is_alive():  # (a running loop cannot be closed)
                self._loop.close()


async def _call(fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    try:
        result = fn(*args, **kwargs)
        if inspect.isawaitable(result):
            result = await result
        return result
    except SystemExit as exc:
        # asyncio lets SystemExit stop the whole loop; here it is one window's failure
        raise WindowExit(exc.code) from exc
    except KeyboardInterrupt as exc:
        # the same (the loop's thread would die, and every window with it); Ctrl-C goes to
        # the consumer's main thread, never here: this is the function's own raise
        raise WindowExit(None, 'the window function raised KeyboardInterrupt') from exc


class WindowExit(Exception):
    """The window function called ``sys.exit()`` or raised KeyboardInterrupt: a failed attempt of its window,
    not the consumer's end."""

    def __init__(self, code: object, message: str | None = None):
        super().__init__(message or f'the window function called sys.exit({code!r})')
        self.code = code


def is_async(fn: Any) -> bool:
    """True if calling ``fn`` returns a coroutine (an ``async def`` function, or an object whose __call__ is one)."""
    return inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(getattr(fn, '__call__', None))


class RunCoroutine:
    """Calls an ``async def`` function to completion on a loop of its own (picklable if ``fn`` is).

    For a coroutine function run on a process, thread or Dask executor
    (``executor=`` given explicitly): each window then gets ``asyncio.run``.
    """

    def __init__(self, fn: Callable[..., Any]):
        self.fn = fn

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return asyncio.run(_call(self.fn, args, kwargs))
