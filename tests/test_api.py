"""The public API as the original minibatch documents it, over every store.

Each test passes ``url=store_url`` explicitly, runs consumers inline (or
with the LocalExecutor) unless it is about process pools, and waits for
results by polling a condition with a deadline, never by a fixed sleep.
"""
import collections
import datetime
import multiprocessing
import os
import subprocess
import sys
import textwrap
import threading
import time
import uuid

import mongoengine
import pytest

import minibatch as mb
from minibatch import Buffer, CountWindow, Stream, WindowEmitter, streaming
from minibatch.store.base import STATES
from tests.helpers import ListSink, wait_until

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def name_of(prefix='s'):
    return f'{prefix}-{uuid.uuid4().hex[:8]}'


def is_mongo(url):
    return url.startswith('mongodb')


class Collector:
    """A window function that records every window's data (runs inline, in this process)."""

    def __init__(self, result=None):
        self.windows = []
        self.result = result

    def __call__(self, window):
        self.windows.append([d for d in window.data])
        return self.result

    def values(self, key='i'):
        return [d[key] for w in self.windows for d in w]


def fill(stream, n, key='i'):
    stream.append([{key: i} for i in range(n)])


def rounds(emitter, n):
    for _ in range(n):
        emitter.run(blocking=False)


def stop_and_join(emitter, timeout=10.0):
    emitter.stop()
    emitter.thread.join(timeout)
    assert not emitter.thread.is_alive(), 'the consumer thread did not stop'


# -- streams ---------------------------------------------------------------
def test_stream_returns_stream_document(store_url):
    name = name_of()
    before = datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None)
    stream = mb.stream(name, url=store_url)
    assert isinstance(stream, Stream)
    assert isinstance(stream, mongoengine.Document)
    assert stream.name == name
    assert isinstance(stream.created, datetime.datetime)
    assert abs((stream.created - before).total_seconds()) < 5
    assert isinstance(stream.last_read, datetime.datetime)
    assert stream.interval == 1.0


def test_get_or_create_twice_is_the_same_stream(store_url):
    name = name_of()
    first = Stream.get_or_create(name, url=store_url)
    first.append({'a': 1})
    second = mb.stream(name, url=store_url)
    assert second.name == first.name
    assert second.created == first.created
    assert second.stats()['available'] == 1
    # interval= given again updates the existing stream
    third = mb.stream(name, url=store_url, interval=5)
    assert third.interval == 5.0
    assert third.created == first.created
    assert [s.name for s in mb.get_store(store_url).list_streams()] == [name]


# -- producing -------------------------------------------------------------
def test_append_one_dict_and_a_list(store_url):
    stream = mb.stream(name_of(), url=store_url)
    stream.append({'i': 0, 'text': 'hello', 'nested': {'x': [1, 2]}})
    assert stream.stats()['available'] == 1
    stream.append([{'i': 1}, {'i': 2}, {'i': 3}])
    assert stream.stats()['available'] == 4
    data = [b.data for b in stream.buffer()]
    assert data == [{'i': 0, 'text': 'hello', 'nested': {'x': [1, 2]}}, {'i': 1}, {'i': 2}, {'i': 3}]


def test_batchsize_collects_and_flush_writes(store_url):
    stream = mb.stream(name_of(), url=store_url, batchsize=5)
    for i in range(4):
        stream.append({'i': i})
    assert stream.stats()['available'] == 0, 'a partial batch was written before it was full'
    stream.flush()
    assert stream.stats()['available'] == 4
    for i in range(4, 9):  # 5 more: the fifth completes a batch, which is written at once
        stream.append({'i': i})
    assert stream.stats()['available'] == 9
    stream.flush()  # nothing pending: a no-op
    assert [b.data['i'] for b in stream.buffer()] == list(range(9))


def test_partial_batch_is_flushed_automatically(store_url):
    stream = mb.stream(name_of(), url=store_url, batchsize=100)
    stream.append([{'i': 0}, {'i': 1}])
    stream.append({'i': 2})
    started = time.monotonic()
    wait_until(lambda: stream.stats()['available'] == 3, timeout=3.0, message='background flush of a partial batch')
    assert time.monotonic() - started < 2.5
    assert [b.data['i'] for b in stream.buffer()] == [0, 1, 2]


def test_partial_batch_is_flushed_at_interpreter_exit(store_url):
    name = name_of()
    script = textwrap.dedent(f"""
        import minibatch as mb
        import minibatch.batching
        minibatch.batching.FLUSH_INTERVAL = 3600  # only the exit hook may write the batch
        stream = mb.stream({name!r}, url={store_url!r}, batchsize=100)
        for i in range(5):
            stream.append({{'i': i}})
        print('before-exit', stream.stats()['available'])
    """)
    env = dict(os.environ, PYTHONPATH=ROOT)
    proc = subprocess.run([sys.executable, '-c', script], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert 'before-exit 0' in proc.stdout
    stream = mb.stream(name, url=store_url)
    assert [b.data['i'] for b in stream.buffer()] == [0, 1, 2, 3, 4]


# -- inspecting and removing -----------------------------------------------
def test_buffer_window_and_stats(store_url):
    stream = mb.stream(name_of(), url=store_url)
    fill(stream, 5)
    counts = stream.stats()
    assert set(STATES) | {'windows'} <= set(counts)
    assert counts['available'] == 5 and counts['windows'] == 0 and counts['done'] == 0
    assert len(list(stream.buffer(processed=False))) == 5
    assert [b.data['i'] for b in stream.buffer(limit=2)] == [0, 1]
    assert all(isinstance(b, Buffer) and b.processed is False for b in stream.buffer())

    fn = Collector()
    em = streaming(stream.name, size=2, keep=True, url=store_url, executor='inline').make(fn)
    rounds(em, 2)
    assert fn.windows == [[{'i': 0}, {'i': 1}], [{'i': 2}, {'i': 3}]]
    windows = list(stream.window())
    assert [w.data for w in windows] == fn.windows
    assert all(w.processed for w in windows)
    assert [w.data for w in stream.window(processed=True)] == fn.windows
    assert list(stream.window(processed=False)) == []
    assert [b.data['i'] for b in stream.buffer(processed=True)] == [0, 1, 2, 3]
    assert [b.data['i'] for b in stream.buffer(processed=False)] == [4]
    counts = stream.stats()
    assert (counts['available'], counts['done'], counts['windows']) == (1, 4, 2)


def test_clear_and_delete(store_url):
    store = mb.get_store(store_url)
    stream = mb.stream(name_of(), url=store_url)
    other = mb.stream(name_of('other'), url=store_url)
    fill(stream, 3)
    fill(other, 2)
    assert stream.clear() == 3
    assert stream.stats()['available'] == 0
    assert store.get_stream(stream.name) is not None, 'clear() must keep the stream'
    assert other.stats()['available'] == 2, 'clear() touched another stream'
    fill(stream, 2)
    stream.delete()
    assert store.get_stream(stream.name) is None
    assert store.counts(stream.name)['available'] == 0
    assert other.stats()['available'] == 2, 'delete() touched another stream'


# -- consuming -------------------------------------------------------------
def test_count_window_with_make_and_one_round(store_url):
    stream = mb.stream(name_of(), url=store_url)
    fill(stream, 7)
    fn = Collector()
    em = streaming(stream.name, size=2, keep=True, url=store_url, executor='inline').make(fn)
    assert isinstance(em, CountWindow)
    em.run(blocking=False)
    assert fn.windows == [[{'i': 0}, {'i': 1}]], 'one round must cut exactly one window'
    rounds(em, 4)
    assert fn.windows == [[{'i': 0}, {'i': 1}], [{'i': 2}, {'i': 3}], [{'i': 4}, {'i': 5}]]
    counts = stream.stats()
    assert counts['done'] == 6 and counts['available'] == 1, counts
    assert [b.data['i'] for b in stream.buffer(processed=True)] == list(range(6))


def test_streaming_decorator_non_blocking_delivers_every_message_once(store_url):
    stream = mb.stream(name_of(), url=store_url)
    fill(stream, 10)
    fn = Collector()

    @streaming(stream.name, size=2, keep=True, url=store_url, executor='inline', blocking=False)
    def consume(window):
        return fn(window)

    em = consume  # the decorator returns the running emitter
    try:
        wait_until(lambda: len(fn.windows) == 5, timeout=20, message='5 windows')
        wait_until(lambda: stream.stats()['done'] == 10, timeout=10, message='10 messages kept as done')
    finally:
        stop_and_join(em)
    assert all(len(w) == 2 for w in fn.windows)
    assert sorted(fn.values()) == list(range(10))
    counts = stream.stats()
    assert counts['available'] == 0 and counts['claimed'] == 0 and counts['done'] == 10


def test_keep_false_removes_committed_messages(store_url):
    stream = mb.stream(name_of(), url=store_url)
    fill(stream, 4)
    fn = Collector()
    em = streaming(stream.name, size=2, url=store_url, executor='inline').make(fn)
    rounds(em, 2)
    assert fn.values() == [0, 1, 2, 3]
    counts = stream.stats()
    assert sum(counts[s] for s in STATES) == 0, counts


@pytest.mark.parametrize('relaxed', [True, False], ids=['relaxed', 'fixed'])
def test_interval_windows_deliver_every_message_once(store_url, relaxed):
    stream = mb.stream(name_of(), url=store_url)
    fn = Collector()
    em = streaming(stream.name, interval=0.2, relaxed=relaxed, url=store_url, executor='inline',
                   blocking=False)(fn)
    assert type(em).__name__ == ('RelaxedTimeWindow' if relaxed else 'FixedTimeWindow')
    try:
        fill(stream, 6)
        wait_until(lambda: len(fn.values()) >= 6, timeout=20, message='first 6 messages')
        stream.append([{'i': i} for i in range(6, 10)])
        wait_until(lambda: len(fn.values()) >= 10, timeout=20, message='all 10 messages')
        wait_until(lambda: stream.stats()['available'] == 0 and stream.stats()['claimed'] == 0, timeout=10,
                   message='all messages committed')
    finally:
        stop_and_join(em)
    values = fn.values()
    assert sorted(values) == list(range(10)), collections.Counter(values)
    assert len(fn.windows) >= 2  # two bursts, each in some window of its own


def test_local_executor_importable_and_usable(store_url):
    from minibatch.tests.util import LocalExecutor
    stream = mb.stream(name_of(), url=store_url)
    fill(stream, 4)
    seen = []

    def fn(window):
        seen.append(threading.get_ident())
        return window.data

    em = streaming(stream.name, size=2, url=store_url, executor=LocalExecutor).make(fn)
    rounds(em, 2)
    assert seen == [threading.get_ident()] * 2  # ran inline, in this thread
    stream2 = mb.stream(name_of(), url=store_url)
    fill(stream2, 2)
    em = streaming(stream2.name, size=2, url=store_url, executor=LocalExecutor()).make(fn)
    em.run(blocking=False)
    assert len(seen) == 3


# -- custom emitters -------------------------------------------------------
class SortedWindow(WindowEmitter):
    """The seed README's custom emitter, reading the stream through ``self.buffer()`` (any store)."""

    def window_ready(self):
        data = []
        for obj in sorted(self.buffer(), key=lambda obj: obj.data['value']):
            if obj.data['value'] % 2 == 0:
                data.append(obj)
                if len(data) >= self.interval:
                    break
        self._data = data
        return len(self._data) == self.interval, ()

    def query(self, *args):
        return self._data


class SeedSortedWindow(WindowEmitter):
    """The seed README's custom emitter verbatim (MongoDB only: it uses the mongoengine queryset)."""

    def window_ready(self):
        qs = Buffer.objects.no_cache().filter(processed=False)
        data = []
        for obj in sorted(qs, key=lambda obj: obj.data['value']):
            if obj.data['value'] % 2 == 0:
                data.append(obj)
                if len(data) >= self.interval:
                    break
        self._data = data
        return len(self._data) == self.interval, ()

    def query(self, *args):
        return self._data


VALUES = [5, 2, 8, 3, 4, 6, 1, 7]


def check_sorted_window(url, emitter_class):
    stream = mb.stream(name_of(), url=url)
    stream.append([{'value': v} for v in VALUES])
    fn = Collector()
    em = streaming(stream.name, interval=2, emitter=emitter_class, url=url, executor='inline').make(fn)
    assert isinstance(em, emitter_class) and em.interval == 2
    rounds(em, 3)
    # the evens, smallest first, two per window, in the emitter's order; the odds are never emitted
    assert [[d['value'] for d in w] for w in fn.windows] == [[2, 4], [6, 8]]
    assert sorted(b.data['value'] for b in stream.buffer()) == [1, 3, 5, 7]


def test_custom_emitter_sorted_window(store_url):
    check_sorted_window(store_url, SortedWindow)


def test_custom_emitter_sorted_window_seed_verbatim(store_url):
    if not is_mongo(store_url):
        pytest.skip('Buffer.objects (mongoengine querysets) exists on MongoDB only')
    check_sorted_window(store_url, SeedSortedWindow)


def test_unknown_kwargs_reach_a_custom_emitter(store_url):
    class Greeting(CountWindow):
        def __init__(self, stream, greeting=None, **kwargs):
            super().__init__(stream, **kwargs)
            self.greeting = greeting

        def emit(self, qs):
            for message in qs:
                message.data['greeting'] = self.greeting
                message.data['suffix'] = self.kwargs['suffix']
            return super().emit(qs)

    stream = mb.stream(name_of(), url=store_url)
    fill(stream, 2)
    fn = Collector()
    em = streaming(stream.name, size=2, emitter=Greeting, url=store_url, executor='inline',
                   greeting='hello', suffix='!').make(fn)
    assert em.greeting == 'hello'
    assert em.kwargs == {'suffix': '!'}
    em.run(blocking=False)
    assert fn.windows == [[{'i': 0, 'greeting': 'hello', 'suffix': '!'}, {'i': 1, 'greeting': 'hello', 'suffix': '!'}]]


# -- sinks -----------------------------------------------------------------
def test_sink_gets_return_value_or_window_data(store_url):
    stream = mb.stream(name_of(), url=store_url)
    fill(stream, 4)
    sink = ListSink()
    em = streaming(stream.name, size=2, url=store_url, executor='inline', sink=sink).make(
        lambda w: {'sum': sum(d['i'] for d in w.data)})
    rounds(em, 2)
    assert sink.items == [{'sum': 1}, {'sum': 5}]

    other = mb.stream(name_of(), url=store_url)
    fill(other, 2)
    sink2 = ListSink()
    em = streaming(other.name, size=2, url=store_url, executor='inline', sink=sink2).make(lambda w: None)
    em.run(blocking=False)
    assert sink2.items == [[{'i': 0}, {'i': 1}]]


# -- stopping --------------------------------------------------------------
def test_queue_true_stops_a_blocking_consumer(store_url):
    stream = mb.stream(name_of(), url=store_url)
    fill(stream, 2)
    q = multiprocessing.Queue()
    fn = Collector()
    errors = []

    def consumer():
        try:
            streaming(stream.name, size=2, url=store_url, executor='inline', queue=q)(fn)
        except Exception as exc:  # surfaced by the assertion below
            errors.append(exc)

    thread = threading.Thread(target=consumer, daemon=True)
    thread.start()
    wait_until(lambda: len(fn.windows) == 1, timeout=20, message='the first window')
    assert thread.is_alive(), 'a blocking consumer returned before it was stopped'
    q.put(True)
    thread.join(10)
    assert not thread.is_alive(), 'putting True on the queue did not stop the consumer'
    assert errors == []
    assert fn.windows == [[{'i': 0}, {'i': 1}]]


def test_stop_from_another_thread_ends_a_blocking_run(store_url):
    stream = mb.stream(name_of(), url=store_url)
    fn = Collector()
    em = streaming(stream.name, size=1, url=store_url, executor='inline').make(fn)
    thread = threading.Thread(target=em.run, daemon=True)  # run() blocks by default
    thread.start()
    stream.append({'i': 1})
    wait_until(lambda: fn.windows == [[{'i': 1}]], timeout=20, message='the window')
    # let it go idle for a while, so that it sleeps between polls
    wait_until(lambda: not thread.is_alive() or getattr(em, '_idle', 1.0) >= 0.5, timeout=10,
               message='the consumer to idle')
    assert thread.is_alive()
    started = time.monotonic()
    em.stop()
    thread.join(10)
    assert not thread.is_alive(), 'stop() did not end the blocking run'
    assert em.stopped
    # stopping is prompt enough to be used interactively
    assert time.monotonic() - started < 3.0


# -- process pools ---------------------------------------------------------
def test_closures_and_lambdas_run_in_the_default_process_pool(store_url):
    stream = mb.stream(name_of(), url=store_url)
    fill(stream, 6)
    factor = 10

    def closure(window):
        return {'pid': os.getpid(), 'values': [d['i'] * factor for d in window.data]}

    sink = ListSink()
    em = streaming(stream.name, size=2, url=store_url, sink=sink, workers=2, blocking=False)(closure)
    try:
        wait_until(lambda: len(sink.items) == 3, timeout=60, message='3 windows from the process pool')
    finally:
        stop_and_join(em, timeout=30)
    assert sorted(v for item in sink.items for v in item['values']) == [0, 10, 20, 30, 40, 50]
    assert all(item['pid'] != os.getpid() for item in sink.items), 'the function did not run in a worker process'
    assert em.capacity == 2

    other = mb.stream(name_of(), url=store_url)
    fill(other, 4)
    sink2 = ListSink()
    em = streaming(other.name, size=2, url=store_url, sink=sink2, workers=2, blocking=False)(
        lambda w: (os.getpid(), sum(d['i'] for d in w.data) + factor))
    try:
        wait_until(lambda: len(sink2.items) == 2, timeout=60, message='2 windows from a lambda')
    finally:
        stop_and_join(em, timeout=30)
    assert sorted(total for _, total in sink2.items) == [11, 15]
    assert all(pid != os.getpid() for pid, _ in sink2.items)


# -- MongoDB specifics -----------------------------------------------------
def test_connectdb_and_reconnect_after_disconnect(mongo_url):
    import pymongo.database
    db = mb.connectdb(url=mongo_url)
    assert isinstance(db, pymongo.database.Database)
    assert db.name == mongo_url.rsplit('/', 1)[1].split('?')[0]
    name = name_of()
    mb.stream(name, url=mongo_url).append({'i': 0})
    assert Buffer.objects(stream=name).count() == 1
    mongoengine.disconnect(alias='minibatch')
    stream = mb.stream(name, url=mongo_url)
    stream.append({'i': 1})
    assert stream.stats()['available'] == 2
    assert [b.data['i'] for b in Buffer.objects(stream=name).order_by('_id')] == [0, 1]
    assert mongoengine.connection.get_db('minibatch').name == db.name


def _child_append(name, url):
    import minibatch
    minibatch.stream(name, url=url).append({'from': 'child', 'pid': os.getpid()})


def test_forked_child_reconnects(mongo_url):
    name = name_of()
    stream = mb.stream(name, url=mongo_url)
    stream.append({'from': 'parent'})
    assert stream.stats()['available'] == 1  # the parent has used its connection
    ctx = multiprocessing.get_context('fork')
    child = ctx.Process(target=_child_append, args=(name, mongo_url))
    child.start()
    child.join(60)
    assert child.exitcode == 0
    wait_until(lambda: stream.stats()['available'] == 2, timeout=5, message="the child's message")
    # ObjectIds of different processes order by arrival only to the second: compare without order
    data = sorted((b.data for b in stream.buffer()), key=lambda d: d['from'])
    assert data == [{'from': 'child', 'pid': child.pid}, {'from': 'parent'}]
    stream.append({'from': 'parent again'})  # the parent's connection still works
    assert stream.stats()['available'] == 3


def test_get_or_create_passes_pymongo_kwargs(mongo_url):
    name = name_of()
    stream = Stream.get_or_create(name, url=mongo_url, serverSelectionTimeoutMS=2000, directConnection=True)
    stream.append({'i': 0})
    assert stream.stats()['available'] == 1
    client = mongoengine.connection.get_connection(stream.store.alias)
    assert client.options.server_selection_timeout == 2.0
    assert client.options.direct_connection is True


def test_pymongo_kwargs_apply_even_after_a_default_connection(mongo_url):
    name = name_of()
    plain = mb.stream(name, url=mongo_url)
    plain.append({'i': 0})
    tuned = Stream.get_or_create(name, url=mongo_url, serverSelectionTimeoutMS=1500, appname='mb-api-test')
    tuned.append({'i': 1})
    client = mongoengine.connection.get_connection(tuned.store.alias)
    assert client.options.server_selection_timeout == 1.5
    assert client.options.pool_options.metadata['application'] == {'name': 'mb-api-test'}
    assert [b.data['i'] for b in tuned.buffer()] == [0, 1]
    assert [b.data['i'] for b in plain.buffer()] == [0, 1]


def test_buffer_objects_sees_waiting_messages(mongo_url):
    name = name_of()
    stream = mb.stream(name, url=mongo_url)
    fill(stream, 3)
    waiting = Buffer.objects.filter(processed=False, stream=name)
    assert sorted(b.data['i'] for b in waiting) == [0, 1, 2]
    fn = Collector()
    streaming(name, size=2, keep=True, url=mongo_url, executor='inline').make(fn).run(blocking=False)
    assert [b.data['i'] for b in Buffer.objects.filter(processed=False, stream=name)] == [2]
    assert sorted(b.data['i'] for b in Buffer.objects.filter(processed=True, stream=name)) == [0, 1]
    assert stream.buffer(processed=False).count() == 1  # a queryset on MongoDB


# -- housekeeping ----------------------------------------------------------
def test_housekeep_removes_old_messages_processed_or_not(store_url):
    stream = mb.stream(name_of(), url=store_url, max_age=3600)
    assert stream.max_age == 3600
    fill(stream, 6)
    fn = Collector()
    em = streaming(stream.name, size=2, keep=True, url=store_url, executor='inline').make(fn)
    rounds(em, 2)
    counts = stream.stats()
    assert (counts['done'], counts['available'], counts['windows']) == (4, 2, 2)
    assert stream.housekeep() == 0  # nothing is an hour old
    removed = []
    wait_until(lambda: removed.append(stream.housekeep(max_age=0.2)) or sum(removed) >= 8, timeout=5,
               message='4 done and 2 waiting messages and 2 windows to age out')
    assert sum(removed) == 8
    counts = stream.stats()
    assert (counts['done'], counts['available'], counts['windows'], counts['expired']) == (0, 0, 0, 2)
    assert list(stream.buffer()) == []
    stream.stop()


def test_fixed_time_window_merges_slots_it_is_far_behind(store_url):
    stream = mb.stream(name_of(), url=store_url)
    an_hour_ago = stream.last_read - datetime.timedelta(hours=1)
    stream.store.update_stream(stream.name, last_read=an_hour_ago)
    stream.append([{'i': i} for i in range(5)])
    fn = Collector()
    em = streaming(stream.name, interval=1.0, relaxed=False, url=store_url, executor='inline').make(fn)
    # the messages belong to the slot that is running now; once it is over, the
    # next round cuts one window for the whole missed hour, not 3,600 slots
    wait_until(lambda: em.run(blocking=False) and fn.windows, timeout=10, interval=0.1, message='the window')
    assert [[d['i'] for d in w] for w in fn.windows] == [[0, 1, 2, 3, 4]]
    assert em.stats['windows'] <= 2
    behind = datetime.datetime.utcnow() - stream.store.get_stream(stream.name).last_read
    assert datetime.timedelta(0) <= behind < datetime.timedelta(seconds=2)


def test_count_window_reads_ahead_and_drops_what_others_took(store_url):
    stream = mb.stream('ahead', url=store_url)
    stream.append([{'i': i} for i in range(20)])
    seen = []
    emitter = mb.make_emitter('ahead', lambda w: seen.append([m['i'] for m in w.data]), size=2, url=store_url,
                              executor='inline')
    reads = []
    original = emitter.buffer
    emitter.buffer = lambda **kw: reads.append(kw) or original(**kw)
    for _ in range(3):
        emitter.run(blocking=False)
    assert seen == [[0, 1], [2, 3], [4, 5]] and len(reads) == 1  # one read, three windows
    # another consumer takes messages this one had read ahead
    other = stream.store
    other.claim('ahead', [m.id for m in other.find_available('ahead', limit=2)], 'other', 60)
    for _ in range(3):  # the round whose claim finds them taken cuts no window, and moves on
        emitter.run(blocking=False)
    emitter.close()
    assert seen[3:] == [[8, 9], [10, 11]], 'a window was cut from messages another consumer held'
    assert len(reads) == 2  # [8, 9] came from the read-ahead; only [10, 11] needed a new read
    assert stream.stats()['claimed'] == 2


def test_import_minibatch_does_not_import_mongoengine_until_a_document_class_is_used(tmp_path):
    # the embedded store and the CLI must not pay for mongoengine (and pymongo) at import
    code = ('import sys, minibatch as mb\n'
            f'store = mb.get_store("sqlite:///{tmp_path}/s.db")\n'
            'store.append("s", [{"x": 1}])\n'
            'assert store.counts("s")["available"] == 1\n'
            'print("mongoengine" in sys.modules)\n'
            'print(mb.Stream.__name__, "mongoengine" in sys.modules)\n')
    out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.split() == ['False', 'Stream', 'True']
