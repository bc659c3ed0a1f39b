"""``async def`` window functions: an event loop per consumer, ``concurrency`` windows awaiting at once.

Same promises as for plain functions (commit, sink, retries, dead letters), on both stores.
"""
import asyncio
import threading
import uuid

import pytest

import minibatch as mb
from minibatch.errors import ConfigurationError
from tests.helpers import ListSink, wait_until


def name_of(prefix='async'):
    return f'{prefix}-{uuid.uuid4().hex[:8]}'


def run_until(em, condition, timeout=30):
    thread = threading.Thread(target=em.run, daemon=True)
    thread.start()
    try:
        wait_until(condition, timeout=timeout, message='the async consumer to finish its windows')
    finally:
        em.stop()
        thread.join(30)
    assert not thread.is_alive()


def test_async_function_windows_run_on_an_event_loop_and_commit(store_url):
    name = name_of()
    stream = mb.stream(name, url=store_url)
    stream.append([{'i': i} for i in range(12)])
    sink = ListSink()

    async def total(window):
        await asyncio.sleep(0.01)
        return {'sum': sum(m['i'] for m in window.data), 'thread': threading.current_thread().name}

    em = mb.make_emitter(name, total, size=3, url=store_url, sink=sink)
    run_until(em, lambda: len(sink.items) == 4)
    assert sorted(item['sum'] for item in sink.items) == [3, 12, 21, 30]
    assert {item['thread'] for item in sink.items} == {'minibatch-asyncio'}  # the consumer's event loop
    assert em.capacity == 100  # the default concurrency
    stats = stream.stats()
    assert (stats['available'], stats['claimed'], stats['retry'], stats['processed']) == (0, 0, 0, 12)


def test_concurrency_bounds_the_windows_awaiting_at_once(store_url):
    name = name_of()
    mb.stream(name, url=store_url).append([{'i': i} for i in range(24)])
    running, peak, done = [0], [0], []

    async def slow(window):
        running[0] += 1  # one event loop: no lock needed
        peak[0] = max(peak[0], running[0])
        await asyncio.sleep(0.1)
        running[0] -= 1
        done.append(window.data[0]['i'])

    em = mb.make_emitter(name, slow, size=1, url=store_url, concurrency=4)
    run_until(em, lambda: len(done) == 24)
    assert em.capacity == 4
    assert 1 < peak[0] <= 4, peak[0]  # windows overlapped, never more than concurrency
    assert sorted(done) == list(range(24))


def test_a_failing_async_function_is_retried_then_dead_lettered(store_url):
    name = name_of()
    stream = mb.stream(name, url=store_url)
    stream.append({'poison': True})
    calls = []

    async def refuse(window):
        calls.append(1)
        raise ValueError('async refusal')

    em = mb.make_emitter(name, refuse, size=1, url=store_url, max_attempts=2, retry_backoff=0.05)
    run_until(em, lambda: stream.stats()['dead'] == 1)
    assert len(calls) == 2
    [dead] = stream.dead_letters()
    assert 'async refusal' in dead.error


@pytest.mark.parametrize('executor', ['thread', 'inline'])
def test_async_function_on_another_executor_runs_to_completion(store_url, executor):
    name = name_of()
    mb.stream(name, url=store_url).append([{'i': 1}, {'i': 2}])
    sink = ListSink()

    async def double(window):
        await asyncio.sleep(0)
        return [m['i'] * 2 for m in window.data]

    em = mb.make_emitter(name, double, size=2, url=store_url, sink=sink, executor=executor)
    em.run(blocking=False)
    em.close()
    assert sink.items == [[2, 4]]


def test_concurrency_is_refused_for_a_plain_function_and_when_out_of_range(store_url):
    with pytest.raises(ConfigurationError, match='concurrency'):
        mb.make_emitter(name_of(), lambda window: None, size=1, url=store_url, concurrency=10)

    async def fn(window):
        pass
    with pytest.raises(ConfigurationError, match='concurrency'):
        mb.make_emitter(name_of(), fn, size=1, url=store_url, concurrency=0)


def test_sys_exit_in_an_async_function_is_a_failed_attempt(store_url):
    import sys
    name = name_of()
    stream = mb.stream(name, url=store_url)
    stream.append([{'exit': True}, {'exit': False}])
    sink = ListSink()

    async def fn(window):
        if window.data[0]['exit']:
            sys.exit(3)
        return window.data

    em = mb.make_emitter(name, fn, size=1, url=store_url, sink=sink, max_attempts=1)
    run_until(em, lambda: stream.stats()['dead'] == 1 and sink.items)
    assert sink.items == [[{'exit': False}]]
    assert 'sys.exit(3)' in stream.dead_letters()[0].error
