"""Where window functions run: inline, in threads, in processes, on Dask.

``executor=`` of ``@streaming`` accepts a name (``'process'``, ``'thread'``,
``'inline'``, or ``'async'``: an event loop, the default for ``async def``
functions), an Executor class (instantiated with ``max_workers``), an
Executor instance (used as is, never shut down by minibatch), a Dask
``distributed.Client`` (used as is) or a scheduler address ``'dask://host:port'``
(minibatch connects a client and closes it when the consumer stops).
"""
import concurrent.futures
import multiprocessing
import os
import signal
from typing import Any, NamedTuple

from minibatch.errors import ConfigurationError


class LocalExecutor(concurrent.futures.Executor):
    """Runs each submitted call at once, in the calling thread.

    The consumer does exactly what it would with a pool, minus the
    parallelism: handy for tests, debugging and functions that are cheap.
    """

    def __init__(self, max_workers=None, **kwargs):
        self._max_workers = 1

    def submit(self, fn, /, *args, **kwargs):
        future = concurrent.futures.Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except KeyboardInterrupt:
            raise  # Ctrl-C stops the consumer; it is not a window failure
        except BaseException as exc:  # sys.exit() in the function included: the window failed, the consumer goes on
            future.set_exception(exc)
        return future

    def shutdown(self, wait=True, **kwargs):
        pass


def _ignore_interrupts():
    # Ctrl-C goes to the whole process group; the consumer process decides how
    # to stop (finish or release in-flight windows), so workers must not die first.
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _process_pool(max_workers):
    # fork: the workers start fast and never re-import the user's __main__
    # (which, in the quick start, is a blocking @streaming call). Workers do
    # not touch the database, so inherited connections are never used.
    methods = multiprocessing.get_all_start_methods()
    context = multiprocessing.get_context('fork' if 'fork' in methods else None)
    return concurrent.futures.ProcessPoolExecutor(max_workers=max_workers, mp_context=context,
                                                  initializer=_ignore_interrupts)


def _asyncio_executor(concurrency):
    from minibatch.asyncio_executor import AsyncioExecutor
    return AsyncioExecutor(max_workers=concurrency)


EXECUTORS = {
    'process': _process_pool,
    'thread': lambda n: concurrent.futures.ThreadPoolExecutor(max_workers=n, thread_name_prefix='minibatch'),
    'inline': lambda n: LocalExecutor(),
    'async': lambda n: _asyncio_executor(n),
    'local': lambda n: LocalExecutor(),
}


def default_workers():
    return os.cpu_count() or 1


def check_executor(executor: Any = None, workers: int | None = None) -> None:
    """Raise ConfigurationError for an ``executor=`` / ``workers=`` that :func:`make_executor` would refuse.

    Creates nothing, so ``@streaming`` can reject bad arguments where they are written.
    """
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 1):
        raise ConfigurationError(f'workers must be an integer >= 1, got {workers!r}')
    if executor is None:
        return
    if _is_dask_address(executor):
        from minibatch.errors import require
        require('distributed', 'dask')
        if not executor.split('://', 1)[1].strip('/'):
            raise ConfigurationError(f'executor {executor!r} names no Dask scheduler; use "dask://host:port"')
        return
    if _is_dask_client(executor):
        return
    if isinstance(executor, str):
        if executor not in EXECUTORS:
            raise ConfigurationError(f'unknown executor {executor!r}; use one of {sorted(EXECUTORS)}, '
                                     'an Executor class or an Executor instance')
    elif isinstance(executor, type):
        if not issubclass(executor, concurrent.futures.Executor):
            raise ConfigurationError(f'executor must be a name, an Executor class or instance, got {executor!r}')
    elif not hasattr(executor, 'submit'):
        raise ConfigurationError(f'executor must be a name, an Executor class or instance, got {executor!r}')


class ExecutorSetup(NamedTuple):
    """What :func:`make_executor` made of an ``executor=`` argument."""
    #: the object with ``submit(fn, *args)`` that runs window functions
    executor: Any
    #: how many windows may be in flight at once (backpressure)
    capacity: int
    #: minibatch created it, so minibatch shuts it down
    owned: bool
    #: calls cross a process boundary: the function must be marshalled
    ships_functions: bool


def make_executor(executor: Any = None, workers: int | None = None) -> ExecutorSetup:
    """Start the executor that ``executor=`` names (see the module docstring) and say how to use it.

    :raises ConfigurationError: an unknown name, or something that is no executor
    """
    check_executor(executor, workers)
    if _is_dask_address(executor) or _is_dask_client(executor):
        from minibatch.dask import DaskExecutor
        instance = DaskExecutor(executor)
        return ExecutorSetup(instance, workers or instance.capacity(), True, True)
    n = workers or default_workers()
    if executor is None:
        executor = 'process'
    if isinstance(executor, str):
        instance = EXECUTORS[executor](n)
        return ExecutorSetup(instance, _capacity(instance, n), True, executor == 'process')
    if isinstance(executor, type) and issubclass(executor, concurrent.futures.Executor):
        instance = executor(max_workers=n)
        return ExecutorSetup(instance, _capacity(instance, n), True, _ships(instance))
    if hasattr(executor, 'submit'):
        return ExecutorSetup(executor, _capacity(executor, workers or None), False, _ships(executor))
    raise ConfigurationError(f'executor must be a name, an Executor class or instance, got {executor!r}')


def _capacity(executor, default):
    return getattr(executor, '_max_workers', None) or default or default_workers()


def _ships(executor):
    from minibatch.asyncio_executor import AsyncioExecutor
    return not isinstance(executor, (LocalExecutor, concurrent.futures.ThreadPoolExecutor, AsyncioExecutor))


def _is_dask_address(obj):
    return isinstance(obj, str) and obj.startswith(('dask://', 'tcp://'))


def _is_dask_client(obj):
    return type(obj).__module__.startswith('distributed') and type(obj).__name__ == 'Client'
