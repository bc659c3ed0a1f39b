"""The Dask executor: windows run on a real distributed LocalCluster, commit/undo stay with the consumer."""
import logging
import os

import pytest

import minibatch as mb
from minibatch.errors import ConfigurationError

from tests.conftest import require_module
from tests.helpers import wait_until

distributed = require_module('distributed', "pip install 'minibatch[dask]'")


@pytest.fixture(scope='module')
def cluster():
    """Two worker processes, one thread each, on loopback."""
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host='127.0.0.1',
                                  dashboard_address='127.0.0.1:0', silence_logs=logging.ERROR) as cluster:
        yield cluster


@pytest.fixture
def client(cluster):
    with distributed.Client(cluster, set_as_default=False) as client:
        yield client


class ListSink:
    def __init__(self):
        self.items = []

    def put(self, data):
        self.items.append(data)


def where_it_ran(window):
    """Runs on a Dask worker: says which process handled which messages."""
    return {'pid': os.getpid(), 'worker': distributed.get_worker().address, 'ids': [m['i'] for m in window.data]}


def run_until(emitter, condition, timeout=60):
    """Run rounds of the emitter until ``condition()`` holds."""
    def step():
        emitter.run(blocking=False)
        return condition()
    try:
        wait_until(step, timeout=timeout, interval=0, message='consumer progress')
    finally:
        emitter.close()


def test_windows_run_on_dask_workers_and_commit(store_url, client):
    stream = mb.stream('dask-ok', url=store_url)
    stream.append([{'i': i} for i in range(12)])
    sink = ListSink()
    emitter = mb.make_emitter('dask-ok', where_it_ran, size=3, url=store_url, executor=client, sink=sink)
    run_until(emitter, lambda: sum(len(item['ids']) for item in sink.items) == 12)
    assert sorted(i for item in sink.items for i in item['ids']) == list(range(12))  # each exactly once
    assert all(item['pid'] != os.getpid() for item in sink.items), 'a window ran in the consumer process'
    assert {item['worker'] for item in sink.items} <= set(client.scheduler_info()['workers'])
    assert stream.stats()['backlog'] == 0 and stream.stats()['in_flight'] == 0
    assert not client.status == 'closed', 'the consumer closed a client it did not create'


def test_dask_address_connects_and_closes_its_own_client(store_url, cluster):
    stream = mb.stream('dask-addr', url=store_url)
    stream.append([{'i': i} for i in range(4)])
    sink = ListSink()
    address = cluster.scheduler_address.replace('tcp://', 'dask://')
    emitter = mb.make_emitter('dask-addr', where_it_ran, size=2, url=store_url, executor=address, sink=sink)
    run_until(emitter, lambda: sum(len(item['ids']) for item in sink.items) == 4)
    assert emitter._executor is None  # closed with the consumer
    assert stream.stats()['backlog'] == 0


def test_blocking_consumer_on_dask_with_parallel_windows(store_url, client):
    stream = mb.stream('dask-run', url=store_url)
    stream.append([{'i': i} for i in range(20)])
    sink = ListSink()
    emitter = mb.streaming('dask-run', size=2, url=store_url, executor=client, sink=sink, blocking=False)(
        where_it_ran)
    try:
        wait_until(lambda: stream.stats()['backlog'] == 0 and stream.stats()['in_flight'] == 0, timeout=60,
                   message='all 20 messages processed on the cluster')
    finally:
        emitter.stop()
        emitter.thread.join(30)
    assert not emitter.thread.is_alive()
    assert sorted(i for item in sink.items for i in item['ids']) == list(range(20))


def flaky(window):
    """Fails the first time it sees a window (marker file per window), then succeeds."""
    marker = os.path.join(window.data[0]['dir'], f"seen-{window.data[0]['i']}")
    if not os.path.exists(marker):
        open(marker, 'w').close()
        raise RuntimeError(f"first attempt of message {window.data[0]['i']} fails")
    return {'ids': [m['i'] for m in window.data]}


def always_fails(window):
    raise ValueError('poison on the cluster')


def test_failing_window_on_dask_is_retried_then_committed(store_url, client, tmp_path):
    stream = mb.stream('dask-retry', url=store_url)
    stream.append([{'i': i, 'dir': str(tmp_path)} for i in range(3)])
    sink = ListSink()
    emitter = mb.make_emitter('dask-retry', flaky, size=1, url=store_url, executor=client, sink=sink,
                              retry_backoff=0, max_attempts=3)
    run_until(emitter, lambda: len(sink.items) == 3)
    assert sorted(item['ids'][0] for item in sink.items) == [0, 1, 2]
    assert emitter.stats['failed'] == 3 and stream.dead_letters() == []


def test_window_failing_on_dask_every_time_is_dead_lettered(store_url, client):
    stream = mb.stream('dask-dead', url=store_url)
    stream.append({'i': 'poison'})
    emitter = mb.make_emitter('dask-dead', always_fails, size=1, url=store_url, executor=client,
                              retry_backoff=0, max_attempts=2)
    run_until(emitter, lambda: stream.stats()['dead'] == 1)
    (dead,) = stream.dead_letters()
    assert dead.data == {'i': 'poison'} and dead.attempts == 2 and 'poison on the cluster' in dead.error


def test_bad_dask_address_is_refused_at_decoration():
    with pytest.raises(ConfigurationError, match='dask://host:port'):
        mb.streaming('s', size=1, executor='dask://')


def sleeps_long(seconds):
    import time
    time.sleep(seconds)
    return seconds


def test_a_window_cancelled_by_the_runner_is_cancelled_on_the_cluster(client):
    # a timeout (or the end of the stop grace) cancels the window's future: the task must not run on unseen
    from minibatch.dask import DaskExecutor
    executor = DaskExecutor(client)
    result = executor.submit(sleeps_long, 60)
    wait_until(lambda: len(executor._pending) == 1, timeout=30, message='the task submitted')
    [task] = list(executor._pending)
    assert result.cancel() or result.done()
    wait_until(lambda: task.status == 'cancelled', timeout=30, message='the Dask task cancelled')
