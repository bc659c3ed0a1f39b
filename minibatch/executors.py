"""Where window functions run: inline, in threads, in processes, on Dask.

``executor=`` of ``@streaming`` accepts a name (``'process'``, ``'thread'``,
``'inline'``, or ``'async'``: an event loop, the default for ``async def``
functions), an Executor class (instantiated with ``max_workers``), an
Executor instance (used as is, never shut down by minibatch), a Dask
``distributed.Client`` (used as is) or a scheduler address ``'dask://host:port'``
(minibatch connects a client and closes it when the consumer stops).

Process pool workers die with their consumer and obey SIGTERM (see
:func:`_init_worker`); thread pool threads never keep a process from exiting
and can be abandoned (:class:`ThreadExecutor`); an inline function can be
interrupted in the main thread (:class:`Alarm`). What to do with a window that
timed out is :func:`minibatch.inflight.stop_window`'s.
"""
import concurrent.futures
import ctypes
import functools
import multiprocessing
import os
import pickle
import queue
import signal
import sys
import threading
import time
import traceback
from multiprocessing.reduction import ForkingPickler
from typing import Any, Callable, NamedTuple

from minibatch.errors import ConfigurationError, MinibatchError


class WindowTimeout(MinibatchError, TimeoutError):
    """A window function ran longer than its ``timeout=``: a failed attempt of that window."""

    def __init__(self, seconds: float, detail: str = ''):
        super().__init__(f'the window function timed out after {seconds:g} s' + (f'; {detail}' if detail else ''))
        self.seconds = seconds


class WorkerError(MinibatchError, RuntimeError):
    """The window function raised an exception that cannot travel back from its worker process; this has its text."""


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


#: Linux: workers ask the kernel for SIGKILL when their consumer dies (prctl); False: the watchdog thread only
PDEATHSIG = sys.platform.startswith('linux')
#: seconds between a worker's checks that its consumer is alive, where prctl is not used
WATCHDOG_INTERVAL = 0.5


def _init_worker(consumer: int) -> None:
    """Initializer of a process pool worker: Ctrl-C ignored, SIGTERM ends it, and it dies with its consumer.

    Ctrl-C goes to the whole process group; the consumer decides how to stop
    (finish or give back its windows), so workers must not die first. SIGTERM
    is the default again: a forked worker inherits the consumer's handler, which
    would only set a stop flag nobody reads, and the pool itself stops broken
    workers with SIGTERM.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    die_with_parent(consumer)


def die_with_parent(parent: int, pdeathsig: bool | None = None) -> None:
    """End this process as soon as process ``parent`` is gone (a consumer killed with kill -9 leaves no workers).

    On Linux the kernel sends SIGKILL when the parent dies (``prctl(PR_SET_PDEATHSIG)``;
    note that it fires when the parent *thread* that forked us ends, and the
    runner's thread is the one that starts the pool). Elsewhere, or with
    ``pdeathsig=False``, a daemon thread checks every ``WATCHDOG_INTERVAL`` s
    whether we were re-parented (``os.getppid()`` changed) and exits then.
    """
    use_prctl = PDEATHSIG if pdeathsig is None else pdeathsig
    if not (use_prctl and _set_pdeathsig()):
        threading.Thread(target=_watch_parent, args=(parent,), name='minibatch-watchdog', daemon=True).start()
    if os.getppid() != parent:  # it died before we could ask: we are an orphan already
        os._exit(1)


def _set_pdeathsig() -> bool:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_pdeathsig = 1  # from <linux/prctl.h>
        return bool(libc.prctl(pr_set_pdeathsig, signal.SIGKILL, 0, 0, 0) == 0)
    except (OSError, AttributeError):  # no libc to load, or no prctl in it
        return False


def _watch_parent(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(WATCHDOG_INTERVAL)
    os._exit(1)  # the windows we run belong to a dead consumer: their leases expire, others redo them


def _process_pool(max_workers):
    # fork: the workers start fast and never re-import the user's __main__
    # (which, in the quick start, is a blocking @streaming call). Workers do
    # not touch the database, so inherited connections are never used.
    methods = multiprocessing.get_all_start_methods()
    context = multiprocessing.get_context('fork' if 'fork' in methods else None)
    return concurrent.futures.ProcessPoolExecutor(max_workers=max_workers, mp_context=context,
                                                  initializer=_init_worker, initargs=(os.getpid(),))


class ThreadExecutor(concurrent.futures.Executor):
    """A pool of daemon threads, from which a thread running a stuck call can be abandoned.

    ``concurrent.futures.ThreadPoolExecutor`` joins its threads when the
    interpreter exits, so one window function that never returns keeps the
    process alive for ever. Here :meth:`abandon` leaves such a thread to itself
    (a thread cannot be killed) and starts another in its place; ``shutdown``
    never waits for abandoned threads, and the process exits without them.
    Any exception of a call, ``SystemExit`` included, is its future's.
    """

    def __init__(self, max_workers: int | None = None, thread_name_prefix: str = 'minibatch'):
        self._max_workers = max_workers or default_workers()
        self._prefix = thread_name_prefix
        self._calls: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._threads: set[threading.Thread] = set()  # those serving the queue (not abandoned)
        self._running: dict[concurrent.futures.Future[Any], threading.Thread] = {}
        self._closed = False
        self._started = 0
        for _ in range(self._max_workers):
            self._start_thread()

    def _start_thread(self) -> None:
        self._started += 1
        thread = threading.Thread(target=self._serve, name=f'{self._prefix}_{self._started}', daemon=True)
        self._threads.add(thread)
        thread.start()

    def _serve(self) -> None:
        me = threading.current_thread()
        while True:
            call = self._calls.get()
            if call is None:  # shut down
                return
            future, fn, args, kwargs = call
            del call
            if not future.set_running_or_notify_cancel():
                continue
            with self._lock:
                self._running[future] = me
            try:
                result = fn(*args, **kwargs)
            except BaseException as exc:  # sys.exit() in the function too: that call failed, the pool goes on
                future.set_exception(exc)
            else:
                future.set_result(result)
            with self._lock:
                self._running.pop(future, None)
                if me not in self._threads:
                    return  # abandoned meanwhile: another thread serves the queue in our place
            del future, fn, args, kwargs

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> concurrent.futures.Future[Any]:
        with self._lock:
            if self._closed:
                raise RuntimeError('cannot schedule new futures after shutdown')
            future: concurrent.futures.Future[Any] = concurrent.futures.Future()
            self._calls.put((future, fn, args, kwargs))
        return future

    def abandon(self, future: concurrent.futures.Future[Any]) -> bool:
        """Leave the thread running ``future`` to itself and start another; cancel it if not started.

        Returns False if ``future`` is neither running here nor waiting (it finished).
        """
        with self._lock:
            thread = self._running.pop(future, None)
            if thread is None:
                return future.cancel()
            self._threads.discard(thread)
            if not self._closed:
                self._start_thread()
            return True

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        with self._lock:
            self._closed = True
            threads = list(self._threads)
        if cancel_futures:
            while True:
                try:
                    call = self._calls.get_nowait()
                except queue.Empty:
                    break
                if call is not None:
                    call[0].cancel()
        for _ in threads:
            self._calls.put(None)
        if wait:
            for thread in threads:
                if thread is not threading.current_thread():
                    thread.join()


class Alarm:
    """Calls ``fn`` with a SIGALRM after ``seconds`` that raises :class:`WindowTimeout` inside it.

    For the inline executor, whose functions run in the consumer's own thread.
    Only the main thread receives signals: elsewhere (a ``blocking=False``
    consumer) the function runs without a limit. An interval timer already set
    (e.g. by pytest-timeout) is put back afterwards, less the time spent; if
    it is due first, it is left alone. A function that catches the timeout and
    returns fails all the same.
    """

    def __init__(self, fn: Callable[..., Any], seconds: float):
        self.fn = fn
        self.seconds = seconds

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if threading.current_thread() is not threading.main_thread() or not hasattr(signal, 'setitimer'):
            return self.fn(*args, **kwargs)  # (no SIGALRM on Windows either)
        other, interval = signal.getitimer(signal.ITIMER_REAL)
        if other and other <= self.seconds:  # the timer someone else set rings first: theirs to handle
            return self.fn(*args, **kwargs)
        state = {'fired': False, 'finished': False}

        def on_alarm(signum: int, frame: Any) -> None:
            state['fired'] = True
            if not state['finished']:
                raise WindowTimeout(self.seconds, 'interrupted by SIGALRM (inline executor)')
        started = time.monotonic()
        previous = signal.signal(signal.SIGALRM, on_alarm)
        try:
            try:
                signal.setitimer(signal.ITIMER_REAL, self.seconds)
                result = self.fn(*args, **kwargs)
            finally:
                # (a handler that runs before this line raises; the outer finally still cleans up)
                state['finished'] = True
                signal.setitimer(signal.ITIMER_REAL, 0)
        finally:
            signal.signal(signal.SIGALRM, previous)
            if other:
                signal.setitimer(signal.ITIMER_REAL, max(other - (time.monotonic() - started), 0.001), interval)
        if state['fired']:
            raise WindowTimeout(self.seconds, 'the function caught the interruption')
        return result


class SendableErrors:
    """Calls ``fn`` in a worker process; an exception that could not be pickled back becomes a :class:`WorkerError`.

    A process pool pickles a call's exception to send it to the consumer; one
    that fails to pickle there, or to unpickle here (an ``__init__`` with other
    arguments than its ``args``), would break the whole pool, and every window
    in it, instead of failing its own window with its own message.
    """

    def __init__(self, fn: Callable[..., Any]):
        self.fn = fn
        functools.update_wrapper(self, fn, updated=())  # its name, for Dask's task keys and logs

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return self.fn(*args, **kwargs)
        except BaseException as exc:
            try:
                pickle.loads(ForkingPickler.dumps(exc))  # what the pool will do with it
            except Exception as why:
                text = ''.join(traceback.format_exception(exc))
                error = WorkerError(f'{text}(the exception above could not be sent back from the worker process: '
                                    f'{type(why).__name__}: {why})')
            else:
                raise
        # raised out here, not in the except block: its __context__ must not be the exception that cannot travel
        raise error


def _asyncio_executor(concurrency):
    from minibatch.asyncio_executor import AsyncioExecutor
    return AsyncioExecutor(max_workers=concurrency)


EXECUTORS = {
    'process': _process_pool,
    'thread': lambda n: ThreadExecutor(max_workers=n),
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
        dask = DaskExecutor(executor)
        return ExecutorSetup(dask, workers or dask.capacity(), True, True)
    n = workers or default_workers()
    if executor is None:
        executor = 'process'
    if isinstance(executor, str):
        instance = EXECUTORS[executor](n)
        return ExecutorSetup(instance, _capacity(instance, n), True, executor == 'process')
    if isinstance(executor, type) and issubclass(executor, concurrent.futures.Executor):
        instance = executor(max_workers=n)  # type: ignore[call-arg]  # (the Executor base takes no arguments)
        return ExecutorSetup(instance, _capacity(instance, n), True, _ships(instance))
    if hasattr(executor, 'submit'):
        return ExecutorSetup(executor, _capacity(executor, workers or None), False, _ships(executor))
    raise ConfigurationError(f'executor must be a name, an Executor class or instance, got {executor!r}')


def _capacity(executor, default):
    return getattr(executor, '_max_workers', None) or default or default_workers()


def _ships(executor):
    from minibatch.asyncio_executor import AsyncioExecutor
    return not isinstance(executor, (LocalExecutor, ThreadExecutor, concurrent.futures.ThreadPoolExecutor,
                                     AsyncioExecutor))


def _is_dask_address(obj):
    return isinstance(obj, str) and obj.startswith(('dask://', 'tcp://'))


def _is_dask_client(obj):
    return type(obj).__module__.startswith('distributed') and type(obj).__name__ == 'Client'
