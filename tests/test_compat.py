"""Programs written for minibatch 0.6 run unchanged: its defaults, signatures and attributes.

Each test states one fact of 0.6 (read from its released source) and checks
ours on every store. docs/compatibility.rst lists the same surface as a table.
"""
import inspect
import logging
import multiprocessing
import threading
import uuid

import pytest

import minibatch as mb
from minibatch import CountWindow, FixedTimeWindow, RelaxedTimeWindow, Stream, WindowEmitter, retention, streaming
from minibatch.errors import ConfigurationError
from tests.helpers import ListSink, wait_until


def name_of(prefix='compat'):
    return f'{prefix}-{uuid.uuid4().hex[:8]}'


class Windows:
    """An inline window function recording each window's data."""

    def __init__(self):
        self.seen = []

    def __call__(self, window):
        self.seen.append(list(window.data))


def rounds(emitter, n):
    for _ in range(n):
        emitter.run(blocking=False)


# -- 1. window defaults ----------------------------------------------------
def test_count_window_without_size_is_a_window_of_one(store_url):
    name = name_of()
    mb.stream(name, url=store_url).append([{'i': i} for i in range(3)])
    fn = Windows()
    em = CountWindow(name, url=store_url, emitfn=fn, executor='inline')
    assert (em.size, em.interval) == (1, 0.01)
    rounds(em, 3)
    assert fn.seen == [[{'i': 0}], [{'i': 1}], [{'i': 2}]]


def test_count_window_size_is_the_count_and_interval_how_often_it_looks(store_url):
    name = name_of()
    mb.stream(name, url=store_url).append([{'i': i} for i in range(4)])
    fn = Windows()
    em = CountWindow(name, size=3, interval=2, url=store_url, emitfn=fn, executor='inline')
    assert (em.size, em.interval) == (3, 2)
    rounds(em, 2)
    assert fn.seen == [[{'i': 0}, {'i': 1}, {'i': 2}]]  # the 4th waits for two more


def test_count_window_given_only_interval_counts_that_many(store_url):
    em = CountWindow(name_of(), interval=4, url=store_url)
    assert (em.size, em.interval) == (4, 4)


@pytest.mark.parametrize('build', ['make_emitter', 'streaming'])
def test_no_size_nor_interval_makes_a_count_window_of_one(store_url, build):
    name = name_of()
    mb.stream(name, url=store_url).append([{'i': 0}, {'i': 1}])
    fn = Windows()
    if build == 'make_emitter':
        em = mb.make_emitter(name, fn, url=store_url, executor='inline')
    else:
        em = streaming(name, url=store_url, executor='inline').make(fn)
    assert type(em) is CountWindow and em.size == 1
    rounds(em, 2)
    assert fn.seen == [[{'i': 0}], [{'i': 1}]]


def test_emitter_count_window_takes_size_and_interval(store_url):
    fn = Windows()
    em = streaming(name_of(), emitter=CountWindow, size=2, interval=0.5, url=store_url, executor='inline').make(fn)
    assert type(em) is CountWindow and (em.size, em.interval) == (2, 0.5)


def test_size_with_interval_and_no_emitter_is_a_time_window_as_in_06(store_url, caplog):
    # 0.6's make_emitter tests interval before size: the size is ignored
    with caplog.at_level(logging.WARNING, logger='minibatch'):
        em = streaming(name_of(), size=5, interval=2, url=store_url, executor='inline').make(Windows())
    assert type(em) is RelaxedTimeWindow and em.interval == 2.0
    assert any('size=5 is ignored' in r.getMessage() for r in caplog.records), caplog.text
    em = mb.make_emitter(name_of(), Windows(), size=5, interval=2, url=store_url, executor='inline')
    assert type(em) is FixedTimeWindow


def test_make_emitter_defaults_to_fixed_time_windows_streaming_to_relaxed(store_url):
    # 0.6: make_emitter(relaxed=False), streaming(relaxed=True)
    assert type(mb.make_emitter(name_of(), Windows(), interval=1, url=store_url)) is FixedTimeWindow
    assert type(streaming(name_of(), interval=1, url=store_url).make(Windows())) is RelaxedTimeWindow
    assert type(mb.make_emitter(name_of(), Windows(), interval=1, relaxed=True, url=store_url)) is RelaxedTimeWindow


def test_size_with_relaxed_false_is_still_a_count_window(store_url):
    em = mb.make_emitter(name_of(), Windows(), size=2, url=store_url)  # relaxed=False by default here
    assert type(em) is CountWindow and em.size == 2


class SortedWindow(WindowEmitter):
    """The seed README's custom emitter: even values, in batches of ``interval``, sorted by value."""

    def window_ready(self):
        evens = sorted((m for m in self.buffer() if m.data['value'] % 2 == 0), key=lambda m: m.data['value'])
        self._data = evens[:self.interval]
        return len(self._data) == self.interval, ()

    def query(self, *args):
        return self._data


def test_custom_emitter_gets_size_as_size_and_interval(store_url):
    name = name_of()
    mb.stream(name, url=store_url).append([{'value': v} for v in (8, 3, 6, 4, 1, 2)])
    fn = Windows()
    em = streaming(name, emitter=SortedWindow, size=2, url=store_url, executor='inline').make(fn)
    assert (em.size, em.interval) == (2, 2)
    rounds(em, 2)
    assert fn.seen == [[{'value': 2}, {'value': 4}], [{'value': 6}, {'value': 8}]]
    assert type(streaming(name, emitter=SortedWindow, url=store_url).make(fn)).__name__ == 'SortedWindow'
    assert streaming(name, emitter=SortedWindow, url=store_url).make(fn).interval == 1  # 0.6's default


def _consume_until_told(name, url, queue, emitter):
    kwargs = {'emitter': emitter} if emitter else {}
    # the 0.6 test pattern: a blocking consumer in a child process, stopped by True on a queue

    @streaming(name, size=2, keep=True, url=url, queue=queue, **kwargs)
    def process(window):
        return window


@pytest.mark.slow
@pytest.mark.parametrize('emitter', [None, CountWindow], ids=['size', 'emitter-CountWindow'])
def test_blocking_consumer_in_a_process_stopped_by_queue(store_url, emitter):
    name = name_of()
    stream = Stream.get_or_create(name, url=store_url)
    queue = multiprocessing.Queue()
    proc = multiprocessing.get_context('fork').Process(target=_consume_until_told,
                                                       args=(name, store_url, queue, emitter))
    proc.start()
    try:
        for i in range(10):
            stream.append({'index': i})
        wait_until(lambda: len(stream.window(processed=True)) == 5, timeout=60,
                   message='5 windows processed')
        queue.put(True)
        proc.join(30)
        assert proc.exitcode == 0
    finally:
        if proc.is_alive():
            proc.kill()
    windows = list(stream.window(processed=True))
    assert sorted(len(w.data) for w in windows) == [2] * 5
    assert sorted(d['index'] for w in windows for d in w.data) == list(range(10))
    assert stream.buffer(processed=True).count() == 10  # keep=True


# -- the emitter's 0.6 members ---------------------------------------------
def test_stop_by_setting_underscore_stop_and_sink_gets_window_data(store_url):
    # 0.6 users stop a threaded emitter with em._stop = True
    name = name_of()
    mb.stream(name, url=store_url).append({'foo': 'baz'})
    sink = ListSink()
    em = mb.make_emitter(name, url=store_url, sink=sink, emitfn=lambda window: window, executor='thread')
    thread = threading.Thread(target=em.run)
    thread.start()
    try:
        wait_until(lambda: sink.items, timeout=10, message='the sink to get the window')
    finally:
        em._stop = True
        thread.join(10)
    assert not thread.is_alive()
    assert em._stop is True and em.should_stop()
    assert sink.items == [[{'foo': 'baz'}]]


def test_run_once_commits_and_the_buffer_is_cleaned(store_url):
    name = name_of()
    stream = Stream.get_or_create(name, url=store_url)
    stream.append({'foo': 'bar1'})
    stream.append({'foo': 'bar2'})
    em = CountWindow(name, url=store_url)
    em._run_once()
    em._run_once()
    assert stream.buffer().count() == 0
    assert em.stats['committed'] == 2


def test_forwardfn_persist_and_forward(store_url):
    name = name_of()
    stream = mb.stream(name, url=store_url)
    stream.append({'i': 1})
    forwarded = []
    em = CountWindow(name, url=store_url, emitfn=lambda w: {'n': len(w.data)}, forwardfn=forwarded.append,
                     executor='inline')
    assert em._delete_on_commit is True
    em.persist(True)
    assert em._delete_on_commit is False and em.keep is True
    em._run_once()
    assert forwarded == [{'n': 1}]
    assert stream.buffer(processed=True).count() == 1  # kept
    em.forward({'by': 'hand'})
    assert forwarded[-1] == {'by': 'hand'}


def test_emitter_accepts_0_6_keywords_stream_and_stream_url(store_url):
    stream = mb.stream(name_of(), url=store_url)
    em = CountWindow('ignored', stream=stream)
    assert em.stream is stream and em.stream_name == stream.name
    em = CountWindow(stream.name, stream_url=store_url)
    assert em.stream.store is stream.store


# -- mb.stream(name, fn) and friends ---------------------------------------
def test_stream_with_a_function_consumes(store_url):
    name = name_of()
    mb.stream(name, url=store_url).append([{'i': 0}, {'i': 1}])
    fn = Windows()
    em = mb.stream(name, fn, url=store_url, size=2, executor='inline', blocking=False)
    try:
        wait_until(lambda: fn.seen, timeout=10, message='a window')
    finally:
        em.stop()
        em.thread.join(10)
    assert fn.seen == [[{'i': 0}, {'i': 1}]]


def test_stream_second_argument_string_is_the_url(tmp_path):
    url = f'sqlite:///{tmp_path}/other.db'
    stream = mb.stream(name_of(), url)
    assert stream.store.url == url
    with pytest.raises(ConfigurationError, match='fn must be a function'):
        mb.stream(name_of(), 42)


def test_make_emitter_attaches_a_source(store_url):
    name = name_of()

    class Counting:
        def stream(self, stream):
            stream.append([{'n': n} for n in range(3)])

    em = mb.make_emitter(name, Windows(), size=3, url=store_url, source=Counting(), executor='inline')
    wait_until(lambda: em.stream.stats()['available'] == 3, timeout=10, message='the source to append')
    assert isinstance(em.stream.source, Counting)


def test_streaming_decorator_has_apply_and_make(store_url):
    decorator = streaming(name_of(), size=1, url=store_url, executor='inline', blocking=False)
    assert callable(decorator.apply) and callable(decorator.make)
    em = decorator.apply(Windows())
    em.stop()
    em.thread.join(10)
    assert not em.thread.is_alive()


def test_buffer_and_window_answer_count(store_url):
    stream = mb.stream(name_of(), url=store_url)
    stream.append([{'i': 0}, {'i': 1}])
    assert stream.buffer().count() == 2
    assert stream.buffer(processed=False).count() == 2
    assert stream.window().count() == 0


def test_buffer_filters_beyond_processed_need_querysets(store_url):
    stream = mb.stream(name_of(), url=store_url)
    stream.append({'i': 0})
    if stream.store.querysets:
        assert stream.buffer(data__i=0).count() == 1
        assert stream.buffer(data__i=1).count() == 0
    else:
        with pytest.raises(mb.NotSupportedByStore, match='data__i'):
            stream.buffer(data__i=0)


def test_batchsize_property_and_source_default(store_url):
    stream = mb.stream(name_of(), url=store_url)
    assert stream.batchsize == 1 and stream.source is None
    stream.batchsize = 3
    stream.append({'i': 0})
    assert stream.stats()['available'] == 0  # collected, not yet written
    stream.batchsize = 1  # back to direct writes: what was collected is written now
    assert stream.stats()['available'] == 1
    with pytest.raises(ConfigurationError, match='batchsize'):
        stream.batchsize = 0


# -- 2. max_age is a retention limit ----------------------------------------
def test_max_age_removes_old_messages_in_the_background_and_counts_them(store_url, caplog):
    name = name_of()
    with caplog.at_level(logging.WARNING, logger='minibatch.housekeeping'):
        stream = Stream.get_or_create(name, url=store_url, max_age=0.5)
        try:
            stream.append([{'foo': 'bar'}] * 3)
            assert stream.buffer().count() == 3
            # no consumer runs: the housekeeping thread of this process removes them
            wait_until(lambda: stream.buffer().count() == 0, timeout=10, message='messages to expire')
            assert stream.stats()['expired'] == 3
        finally:
            stream.stop()
    assert any(name in r.getMessage() and '3 unprocessed' in r.getMessage() for r in caplog.records), caplog.text
    assert not retention.running(stream.store, name)


def test_max_age_as_timedelta_arguments(store_url):
    name = name_of()
    stream = Stream.get_or_create(name, url=store_url, max_age={'minutes': 5})
    try:
        assert stream.max_age == 300
        assert stream.store.get_stream(name).max_age == 300
        assert retention.running(stream.store, name)
    finally:
        stream.stop()


def test_stop_and_autoclear_none_end_the_housekeeping_thread(store_url):
    name = name_of()
    stream = Stream.get_or_create(name, url=store_url, max_age=60)
    keeper = retention.start(stream.store, name, 60)  # the running one, not a second thread
    assert [t for t in threading.enumerate() if t.name == f'minibatch-housekeeping-{name}'] == [keeper.thread]
    stream.stop()
    keeper.thread.join(5)
    assert not keeper.thread.is_alive()

    stream.autoclear(0.2)
    keeper = retention.start(stream.store, name, 0.2)
    stream.autoclear(None)
    keeper.thread.join(5)
    assert not keeper.thread.is_alive()
    assert stream.store.get_stream(name).max_age is None
    stream.append({'kept': True})
    # with the limit removed, a consumer's housekeeping does nothing either
    assert stream.housekeep() == 0 and stream.buffer().count() == 1


def test_max_age_leaves_claimed_messages_and_dead_letters(store_url):
    name = name_of()
    stream = mb.stream(name, url=store_url)
    stream.append([{'i': i} for i in range(3)])
    stream.reject({'bad': 1}, 'not JSON')
    held = stream.store.find_available(name, limit=1)
    stream.store.claim(name, held, 'token', 60)
    wait_until(lambda: stream.housekeep(max_age=0.05) or stream.stats()['available'] == 0, timeout=5,
               message='the waiting messages to expire')
    stats = stream.stats()
    assert (stats['claimed'], stats['dead'], stats['available'], stats['expired']) == (1, 1, 0, 2)


@pytest.mark.parametrize('max_age', [-1, 0, 'soon', True, {'fortnights': 1}, {'minutes': 'five'}])
def test_bad_max_age_is_refused(store_url, max_age):
    name = name_of()
    with pytest.raises(ConfigurationError, match='max_age'):
        Stream.get_or_create(name, url=store_url, max_age=max_age)
    assert mb.get_store(store_url).get_stream(name) is None  # nothing half-made


# -- 7. the public names of 0.6 and their signatures --------------------------
# (module, name, 0.6 parameters in order, with their defaults; inspect.Parameter.empty = required)
E = inspect.Parameter.empty
SIGNATURES_06 = [
    ('minibatch', 'streaming', [('name', E), ('fn', None), ('interval', None), ('size', None), ('emitter', None),
                                ('relaxed', True), ('keep', False), ('url', None), ('sink', None),
                                ('queue', None), ('source', None), ('blocking', True)]),
    ('minibatch', 'stream', [('name', E), ('fn', None), ('url', None)]),
    ('minibatch', 'make_emitter', [('name', E), ('emitfn', None), ('interval', None), ('size', None),
                                   ('relaxed', False), ('url', None), ('sink', None), ('emitter', None),
                                   ('keep', False), ('queue', None), ('source', None), ('cnx_kwargs', None)]),
    ('minibatch', 'connectdb', [('url', None), ('dbname', None), ('alias', None), ('authSource', 'admin'),
                                ('fast_insert', True)]),
    ('minibatch', 'authenticated_url', [('mongo_url', E), ('authSource', 'admin')]),
    ('minibatch', 'patch_mongoengine', []),
    ('minibatch', 'waitForConnection', [('client', E)]),
    ('minibatch.window', 'WindowEmitter', [('stream_name', E), ('interval', None), ('processfn', None),
                                           ('emitfn', None), ('emit_empty', False), ('executor', None),
                                           ('max_workers', None), ('stream', None), ('stream_url', None),
                                           ('forwardfn', None), ('queue', None)]),
    ('minibatch.window', 'CountWindow', [('stream_name', E), ('size', None), ('interval', None)]),
    ('minibatch.models', 'Stream.get_or_create', [('name', E), ('url', None), ('interval', None),
                                                  ('batchsize', 1), ('max_age', None)]),
    ('minibatch.models', 'Stream.attach', [('self', E), ('source', E), ('background', True)]),
    ('minibatch.models', 'Stream.streaming', [('self', E), ('fn', None)]),
    ('minibatch.models', 'Stream.autoclear', [('self', E), ('max_age', None)]),
    ('minibatch.tests.util', 'delete_database', [('url', None), ('dbname', 'test')]),
]
# 0.6 methods of WindowEmitter that custom emitters call or override, with their 0.6 parameters
EMITTER_METHODS_06 = {
    'query': [], 'window_ready': [], 'process': ['qs'], 'undo': ['qs', 'window'], 'persist': ['flag'],
    'commit': ['qs', 'window'], 'emit': ['qs', 'query_args'], 'forward': ['data'], 'sleep': [],
    'should_stop': [], 'run': ['blocking'], '_run_once': [], 'timestamp': [],
}


def _resolve(module, dotted):
    obj = __import__(module, fromlist=['_'])
    for part in dotted.split('.'):
        obj = getattr(obj, part)
    return obj


@pytest.mark.parametrize('module, name, params', SIGNATURES_06, ids=[f'{m}.{n}' for m, n, _ in SIGNATURES_06])
def test_06_signature_is_accepted_unchanged(module, name, params):
    obj = _resolve(module, name)
    ours = list(inspect.signature(obj.__init__ if inspect.isclass(obj) else obj).parameters.values())
    if inspect.isclass(obj):
        ours = ours[1:]  # self
    positional = [p for p in ours if p.kind is p.POSITIONAL_OR_KEYWORD]
    # every 0.6 parameter, in the same position, with the same default: positional calls mean the same
    assert [(p.name, p.default) for p in positional[:len(params)]] == params


@pytest.mark.parametrize('method, params', sorted(EMITTER_METHODS_06.items()))
def test_06_emitter_methods_exist_with_their_parameters(method, params):
    ours = list(inspect.signature(getattr(WindowEmitter, method)).parameters)[1:]
    assert ours[:len(params)] == params


def test_06_module_level_names_exist():
    for module, names in {'minibatch': ['Stream', 'Buffer', 'Window', 'IntegrityError', 'version', 'logger'],
                          'minibatch.window': ['WindowEmitter', 'CountWindow', 'FixedTimeWindow',
                                               'RelaxedTimeWindow'],
                          'minibatch.models': ['Stream', 'Buffer', 'Window'],
                          'minibatch.tests.util': ['LocalExecutor', 'delete_database']}.items():
        missing = [n for n in names if not hasattr(__import__(module, fromlist=['_']), n)]
        assert not missing, (module, missing)
    assert issubclass(mb.IntegrityError, Exception)


def test_authenticated_url_as_in_06():
    assert mb.authenticated_url('mongodb://u:p@h/db') == 'mongodb://u:p@h/db?authSource=admin'
    assert mb.authenticated_url('mongodb://h/db?x=1', 'other') == 'mongodb://h/db?x=1&authSource=other'
    assert mb.authenticated_url('mongodb://h/db?authSource=db') == 'mongodb://h/db?authSource=db'
    assert mb.authenticated_url('mongodb+srv://c.example/db') == 'mongodb+srv://c.example/db'


def test_mongodb_store_authenticates_against_admin_by_default():
    from minibatch.store.mongodb import MongoStore
    assert MongoStore('mongodb://u:p@127.0.0.1:1/db').client_options['authSource'] == 'admin'
    assert 'authSource' not in MongoStore('mongodb://127.0.0.1:1/db').client_options
    assert 'authSource' not in MongoStore('mongodb://u:p@127.0.0.1:1/db?authSource=db').client_options


def test_connectdb_dbname_and_delete_database(mongo_url):
    from minibatch.tests.util import delete_database
    dbname = 'mbcompat_' + uuid.uuid4().hex[:8]
    db = mb.connectdb(url=mongo_url, dbname=dbname)
    try:
        assert db.name == dbname
        db.processed.insert_one({'x': 1})
        assert dbname in db.client.list_database_names()
        emptied = delete_database(url=mongo_url, dbname=dbname)
        assert emptied.name == dbname and emptied.processed.count_documents({}) == 0
    finally:
        db.client.drop_database(dbname)
    with pytest.raises(ConfigurationError, match='alias'):
        mb.connectdb(url=mongo_url, alias='elsewhere')
