"""Windows on a Dask cluster: a ``concurrent.futures`` face on a ``distributed.Client``.

The consumer keeps doing what it does with a local pool — claims, lease
renewal, commit or undo in the consumer process — while the function runs on
the cluster's workers. A window whose task fails (the function raised, or
Dask gave up on it after workers died: ``KilledWorker``) fails like any other
window: it is retried and finally dead-lettered.
"""
import concurrent.futures
import threading

from minibatch.errors import require


class DaskExecutor(concurrent.futures.Executor):
    """Run submitted calls as Dask tasks.

    :param client: a ``distributed.Client`` (used as is, left open), or a
        scheduler address ``'dask://host:port'`` / ``'tcp://host:port'`` (a client
        is connected now and closed by :meth:`shutdown`)
    :raises ConnectionError: the scheduler at the address did not answer within ``CONNECT_TIMEOUT``
    """
    #: seconds to wait for the scheduler of a ``'dask://host:port'`` address
    CONNECT_TIMEOUT = 10.0

    def __init__(self, client):
        distributed = require('distributed', 'dask')
        if isinstance(client, str):
            address = 'tcp://' + client.split('://', 1)[1]
            try:
                self.client = distributed.Client(address, set_as_default=False, timeout=self.CONNECT_TIMEOUT)
            except OSError as exc:
                raise ConnectionError(f'cannot reach the Dask scheduler at {address} within '
                                      f'{self.CONNECT_TIMEOUT:g}s: {exc}') from exc
            self._owns_client = True
        else:
            self.client = client
            self._owns_client = False
        self._lock = threading.Lock()
        self._pending = set()

    def capacity(self):
        """How many tasks the cluster runs at once now (its worker threads); at least 1."""
        return max(1, sum(self.client.nthreads().values()))

    def submit(self, fn, /, *args, **kwargs):
        """Submit ``fn(*args, **kwargs)`` as a Dask task; return a ``concurrent.futures.Future``.

        ``pure=False``: two windows with equal data are two tasks, never one
        cached result.
        """
        result = concurrent.futures.Future()
        task = self.client.submit(fn, *args, pure=False, **kwargs)
        with self._lock:
            self._pending.add(task)

        def settle(done):
            with self._lock:
                self._pending.discard(done)
            if result.done():
                return
            try:
                if done.status == 'cancelled':
                    result.cancel() or result.set_exception(concurrent.futures.CancelledError())
                    return
                result.set_result(done.result())
            except BaseException as exc:  # the task's own exception, or KilledWorker
                if not result.done():
                    result.set_exception(exc)
        task.add_done_callback(settle)

        def cancel_task(future):
            # the runner cancels a window past its timeout, or at the end of the stop grace: the
            # task must stop on the cluster too, not run on unseen
            if future.cancelled():
                self.client.cancel(task)
        result.add_done_callback(cancel_task)
        return result

    def shutdown(self, wait=True, *, cancel_futures=False):
        """Cancel unfinished tasks if asked; close the client if this executor connected it."""
        with self._lock:
            pending = list(self._pending)
        if cancel_futures and pending:
            self.client.cancel(pending)
        if self._owns_client:
            self.client.close()
