"""Bad input gets a clear error where it is given, and loses nothing (DESIGN.md §1.6)."""
import time
import uuid

import pytest

import minibatch as mb
from minibatch import CountWindow, streaming
from minibatch.errors import (ConfigurationError, InvalidMessage, InvalidWindowSpec, MinibatchError,
                              StoreUnavailable, UnknownStoreError)
from minibatch.store.base import STATES
from tests.conftest import require_module


def name_of(prefix='bad'):
    return f'{prefix}-{uuid.uuid4().hex[:8]}'


def total(stream):
    counts = stream.stats()
    return sum(counts[state] for state in STATES)


class Unserialisable:
    def __repr__(self):
        return '<Unserialisable thing>'


# -- messages --------------------------------------------------------------
@pytest.mark.parametrize('value, shown', [
    ('hello', "'hello'"),
    ([1, 2], '1'),
    (['a', 'b'], "'a'"),
    (None, 'None'),
    (42, '42'),
], ids=['str', 'list-of-ints', 'list-of-str', 'None', 'int'])
def test_append_non_dict_is_rejected(store_url, value, shown):
    stream = mb.stream(name_of(), url=store_url)
    with pytest.raises(TypeError) as excinfo:
        stream.append(value)
    assert isinstance(excinfo.value, InvalidMessage)
    assert isinstance(excinfo.value, MinibatchError)
    message = str(excinfo.value)
    assert 'dict' in message
    assert shown in message
    assert total(stream) == 0


@pytest.mark.parametrize('make_value, shown', [
    (lambda: Unserialisable(), 'Unserialisable'),
    (lambda: {1, 2}, 'set'),
    (lambda: {'inner': object()}, 'object'),
], ids=['object', 'set', 'nested-object'])
def test_append_unserialisable_value_is_rejected(store_url, make_value, shown):
    stream = mb.stream(name_of(), url=store_url)
    with pytest.raises((TypeError, ValueError)) as excinfo:
        stream.append({'ok': 1, 'culprit': make_value()})
    assert isinstance(excinfo.value, InvalidMessage)
    message = str(excinfo.value)
    assert 'culprit' in message, message
    assert shown in message, message
    assert total(stream) == 0


def test_list_with_one_bad_item_writes_nothing(store_url):
    stream = mb.stream(name_of(), url=store_url)
    with pytest.raises(InvalidMessage) as excinfo:
        stream.append([{'i': 0}, {'i': 1, 'bad': {1, 2}}, {'i': 2}])
    assert 'bad' in str(excinfo.value)
    assert total(stream) == 0
    with pytest.raises(InvalidMessage) as excinfo:
        stream.append([{'i': 0}, 'not a dict', {'i': 2}])
    assert 'not a dict' in str(excinfo.value)
    assert total(stream) == 0
    stream.append([{'i': 0}, {'i': 1}])  # the stream still works
    assert [b.data['i'] for b in stream.buffer()] == [0, 1]


def test_batched_bad_message_rejected_at_append_good_ones_still_written(store_url):
    stream = mb.stream(name_of(), url=store_url, batchsize=10)
    stream.append({'i': 0})
    stream.append({'i': 1})
    with pytest.raises(InvalidMessage) as excinfo:
        stream.append({'i': 2, 'bad': Unserialisable()})
    assert 'Unserialisable' in str(excinfo.value)
    with pytest.raises(InvalidMessage):
        stream.append('not a dict')
    with pytest.raises(InvalidMessage):
        stream.append([{'i': 3}, {'bad': {1}}])  # the whole list is refused, {'i': 3} included
    stream.append({'i': 4})
    assert total(stream) == 0  # still collecting
    stream.flush()
    assert [b.data['i'] for b in stream.buffer()] == [0, 1, 4]


def test_bad_stream_names_are_rejected(store_url):
    for bad in (None, '', 42):
        with pytest.raises((TypeError, ValueError)) as excinfo:
            mb.stream(bad, url=store_url)
        assert isinstance(excinfo.value, MinibatchError)
        assert repr(bad) in str(excinfo.value)
        assert 'name' in str(excinfo.value)


def test_bad_stream_names_are_rejected_by_streaming(store_url):
    for bad in (None, ''):
        with pytest.raises((TypeError, ValueError)) as excinfo:
            streaming(bad, size=1, url=store_url, executor='inline', blocking=False)
        assert isinstance(excinfo.value, MinibatchError)
        assert 'name' in str(excinfo.value)


def test_bad_batchsize_is_rejected(store_url):
    for bad in (0, -1, 1.5):
        with pytest.raises((TypeError, ValueError)) as excinfo:
            mb.stream(name_of(), url=store_url, batchsize=bad)
        assert 'batchsize' in str(excinfo.value)


# -- window specs ----------------------------------------------------------
class NotAnEmitter:
    pass


@pytest.mark.parametrize('kwargs, words', [
    (dict(size=0), ['size', '0']),
    (dict(size=-1), ['size', '-1']),
    (dict(size=1.5), ['size', '1.5']),
    (dict(size=True), ['size', 'True']),
    (dict(interval=0), ['interval', '0']),
    (dict(interval=-1), ['interval', '-1']),
    (dict(interval='soon'), ['interval', 'soon']),
    (dict(size=2, max_attempts=0), ['max_attempts', '0']),
    (dict(emitter=NotAnEmitter), ['WindowEmitter', 'NotAnEmitter']),
    (dict(emitter='CountWindow'), ['WindowEmitter', 'CountWindow']),
    (dict(emitter=CountWindow(name_of(), interval=1)), ['WindowEmitter', 'CountWindow']),
], ids=['size0', 'size-1', 'size1.5', 'sizeTrue', 'interval0', 'interval-1', 'interval-str',
        'max_attempts0', 'emitter-class', 'emitter-str', 'emitter-instance'])
def test_invalid_window_spec_rejected_at_decoration(store_url, kwargs, words):
    name = name_of()
    with pytest.raises(ValueError) as excinfo:
        streaming(name, url=store_url, executor='inline', blocking=False, **kwargs)
    assert isinstance(excinfo.value, (InvalidWindowSpec, ConfigurationError))
    message = str(excinfo.value)
    for word in words:
        assert word in message, message
    # nothing started, nothing created
    assert mb.get_store(store_url).get_stream(name) is None


def test_invalid_window_spec_rejected_by_make_emitter(store_url):
    with pytest.raises(InvalidWindowSpec, match='size'):
        mb.make_emitter(name_of(), size=0, url=store_url)
    with pytest.raises(InvalidWindowSpec, match='interval'):
        mb.make_emitter(name_of(), interval=-0.5, url=store_url)


def test_unknown_executor_rejected_at_decoration(store_url):
    name = name_of()
    with pytest.raises(ValueError) as excinfo:
        streaming(name, size=1, url=store_url, executor='no-such-executor', blocking=False)
    message = str(excinfo.value)
    assert isinstance(excinfo.value, ConfigurationError)
    assert 'no-such-executor' in message
    assert 'process' in message and 'inline' in message  # says what to use instead


def test_unknown_executor_rejected_by_run(store_url):
    stream = mb.stream(name_of(), url=store_url)
    stream.append([{'i': 0}])
    with pytest.raises(ConfigurationError, match='no-such-executor'):
        mb.make_emitter(stream.name, size=1, url=store_url, executor='no-such-executor',
                        emitfn=lambda w: None).run(blocking=False)
    assert stream.stats()['available'] == 1  # nothing was taken


def test_bad_workers_rejected(store_url):
    for bad in (0, -2, 'many'):
        with pytest.raises(ValueError, match='workers'):
            streaming(name_of(), size=1, url=store_url, executor='thread', workers=bad,
                      blocking=False).make(lambda w: None).run(blocking=False)


# -- URLs and servers -------------------------------------------------------
def test_unknown_url_scheme_lists_known_ones():
    with pytest.raises(UnknownStoreError) as excinfo:
        mb.stream('x', url='redis://x')
    message = str(excinfo.value)
    assert isinstance(excinfo.value, ValueError)
    assert 'redis://' in message
    for scheme in ('mongodb://', 'sqlite://'):
        assert scheme in message, message


def test_url_without_scheme_is_rejected():
    with pytest.raises(UnknownStoreError) as excinfo:
        mb.stream('x', url='localhost:27017')
    assert 'localhost:27017' in str(excinfo.value)
    assert 'mongodb://' in str(excinfo.value)


def test_unreachable_mongodb_fails_fast_with_the_url():
    url = 'mongodb://127.0.0.1:1/x'
    started = time.monotonic()
    with pytest.raises(StoreUnavailable) as excinfo:
        mb.stream(name_of(), url=url, serverSelectionTimeoutMS=500)
    elapsed = time.monotonic() - started
    assert elapsed < 3.0, f'took {elapsed:.1f}s to give up'
    assert isinstance(excinfo.value, ConnectionError)
    assert '127.0.0.1:1' in str(excinfo.value)


def test_unreachable_mongodb_default_timeout_is_bounded():
    started = time.monotonic()
    with pytest.raises(StoreUnavailable):
        mb.stream(name_of(), url='mongodb://127.0.0.1:1/x')
    assert time.monotonic() - started < 15.0


def test_unreachable_mongodb_error_hides_the_password():
    url = 'mongodb://alice:s3cr3t-pw@127.0.0.1:1/x'
    with pytest.raises(StoreUnavailable) as excinfo:
        mb.stream(name_of(), url=url, serverSelectionTimeoutMS=500)
    exc = excinfo.value
    texts = [str(exc), repr(exc), str(exc.__cause__ or ''), str(exc.__context__ or '')]
    assert '127.0.0.1:1' in str(exc)
    assert 'alice' in str(exc)  # the user name helps, the password must not show
    for text in texts:
        assert 's3cr3t-pw' not in text, text
    assert 's3cr3t-pw' not in mb.get_store(url, serverSelectionTimeoutMS=500).describe()


def test_dask_address_without_scheduler_is_refused():
    with pytest.raises(ValueError) as excinfo:
        streaming('never-run', size=1, executor='dask://')
    assert 'dask://host:port' in str(excinfo.value)


def test_unreachable_dask_scheduler_fails_when_the_consumer_starts(tmp_path, monkeypatch):
    require_module('distributed', "pip install 'minibatch[dask]'")
    from minibatch.dask import DaskExecutor
    monkeypatch.setattr(DaskExecutor, 'CONNECT_TIMEOUT', 1.0)
    emitter = streaming('never-run', size=1, executor='dask://127.0.0.1:1',
                        url='sqlite:///' + str(tmp_path / 's.db')).make(lambda window: None)
    with pytest.raises(ConnectionError, match='Dask scheduler at tcp://127.0.0.1:1'):
        emitter._setup(waiter=False)


def test_server_selection_timeout_in_the_url_is_honoured():
    url = 'mongodb://127.0.0.1:1/db?serverSelectionTimeoutMS=300'
    started = time.monotonic()
    with pytest.raises(mb.errors.StoreUnavailable):
        mb.get_store(url).counts('s')
    assert time.monotonic() - started < 3, 'the default 5 s timeout overrode the one in the URL'


# -- consumer options: one place, typos named ----------------------------------
@pytest.mark.parametrize('kwargs, words', [
    (dict(max_attemps=5), ['max_attemps', 'max_attempts']),
    (dict(retry_backof=2), ['retry_backof', 'retry_backoff']),
    (dict(kep=True), ['kep', 'keep']),
    (dict(colour='blue'), ['colour']),
], ids=['max_attemps', 'retry_backof', 'kep', 'colour'])
def test_an_option_no_strategy_knows_is_refused_naming_the_nearest(store_url, kwargs, words):
    name = name_of()
    with pytest.raises(ConfigurationError) as excinfo:
        streaming(name, size=1, url=store_url, executor='inline', blocking=False, **kwargs)
    for word in words:
        assert word in str(excinfo.value), str(excinfo.value)
    with pytest.raises(ConfigurationError, match=words[0]):
        mb.make_emitter(name, lambda w: None, interval=1, url=store_url, **kwargs)
    assert mb.get_store(store_url).get_stream(name) is None


def test_a_custom_emitter_still_gets_its_own_keywords(store_url):
    class Tagged(mb.WindowEmitter):
        def window_ready(self):
            return False, ()

    em = streaming(name_of(), emitter=Tagged, colour='blue', url=store_url, executor='inline').make(print)
    assert em.kwargs == {'colour': 'blue'}


@pytest.mark.parametrize('kwargs, word', [
    (dict(retry_backoff=-1), 'retry_backoff'), (dict(lease=0), 'lease'), (dict(max_attempts=1.5), 'max_attempts'),
    (dict(sink=object()), 'sink'), (dict(processfn='keep'), 'processfn'),
])
def test_bad_consumer_options_are_refused_where_written(store_url, kwargs, word):
    with pytest.raises(ValueError, match=word):
        streaming(name_of(), size=1, url=store_url, executor='inline', blocking=False, **kwargs)


def test_a_background_consumer_that_dies_logs_why_and_keeps_the_error(store_url, caplog):
    class Broken(CountWindow):
        def window_ready(self):
            raise RuntimeError('the strategy broke')

    with caplog.at_level('ERROR', logger='minibatch'):
        em = streaming(name_of(), emitter=Broken, size=1, url=store_url, executor='inline', blocking=False)(print)
        em.thread.join(10)
    assert not em.thread.is_alive()
    assert isinstance(em.error, RuntimeError) and 'the strategy broke' in str(em.error)
    assert any('background consumer' in r.getMessage() for r in caplog.records), caplog.text


# -- issue 12: messages read back the same, through every view ---------------------
import datetime as _dt  # noqa: E402
import decimal  # noqa: E402


def _same(a, b):
    """Equal, and of the same types all the way down (1 == True, and a tuple == nothing stored)."""
    if isinstance(a, dict):  # buffer() gives mongoengine's dict and list subclasses
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return isinstance(b, list) and len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    # (MongoDB gives 64-bit ints as bson.Int64, an int)
    return ((isinstance(b, type(a)) or isinstance(a, type(b))) and isinstance(b, bool) == isinstance(a, bool)
            and a == b)


SAME = object()
REFUSED = object()
_naive = _dt.datetime(2024, 1, 2, 3, 4, 5, 123456)
_aware = _dt.datetime(2024, 1, 2, 3, 4, 5, 123000, tzinfo=_dt.timezone(_dt.timedelta(hours=2)))
# (value, what SQLite reads back, what MongoDB reads back): the table of docs/streams.rst
ROUND_TRIPS = {
    'dict': ({'a': {'b': 1}, 'c': {}}, SAME, SAME),
    'list': ([1, 'a', None, [], [2.5]], SAME, SAME),
    'str': ('héllo ☃ 😀 \x00 "$date"', SAME, SAME),
    'int': (-2 ** 63, SAME, SAME),
    'int-beyond-64-bits': (2 ** 70, SAME, REFUSED),
    'float': (1.5e-300, SAME, SAME),
    'float-inf': (float('inf'), SAME, SAME),
    'bool': (True, SAME, SAME),
    'None': (None, SAME, SAME),
    'datetime': (_naive, SAME, _dt.datetime(2024, 1, 2, 3, 4, 5, 123000)),
    'datetime-aware': (_aware, SAME, _dt.datetime(2024, 1, 2, 1, 4, 5, 123000)),
    'date': (_dt.date(2024, 1, 2), SAME, REFUSED),
    'tuple': ((1, 'a'), [1, 'a'], [1, 'a']),
    'bytes': (b'\x00\xff', REFUSED, SAME),
    'bytearray': (bytearray(b'\x00\xff'), REFUSED, REFUSED),
    'set': ({1, 2}, REFUSED, REFUSED),
    'Decimal': (decimal.Decimal('1.5'), REFUSED, REFUSED),
    'lone-surrogate': ('\ud800', SAME, REFUSED),
}


def _views(stream):
    """The message data as every view reads it: the store, stream.buffer(), a consumer's window."""
    store = stream.store
    found = [m.data for m in store.find_available(stream.name)]
    listed = [m.data for m in store.messages(stream.name)]
    buffered = [b.data for b in stream.buffer()]
    claimed = store.claim(stream.name, [m.id for m in store.find_available(stream.name)], 'tok', 30)
    window_id = store.save_window(stream.name, [m.data for m in claimed])
    windowed = [w.data for w in stream.window() if w.id == window_id][0]
    return {'find_available': found, 'messages': listed, 'buffer': buffered,
            'claim': [m.data for m in claimed], 'window': windowed}


@pytest.mark.parametrize('row', list(ROUND_TRIPS))
@pytest.mark.parametrize('batchsize', [1, 10])
def test_round_trip_table(store_url, row, batchsize):
    value, on_sqlite, on_mongo = ROUND_TRIPS[row]
    expected = on_sqlite if store_url.startswith('sqlite') else on_mongo
    stream = mb.stream(name_of('rt'), url=store_url, batchsize=batchsize)
    if expected is REFUSED:
        with pytest.raises(InvalidMessage):
            stream.append({'v': value})
        stream.flush()
        assert total(stream) == 0
        return
    stream.append({'v': value, 'nested': [{'v': value}]})
    stream.flush()
    want = value if expected is SAME else expected
    want = {'v': want, 'nested': [{'v': want}]}
    for view, data in _views(stream).items():
        assert len(data) == 1 and _same(data[0], want), (view, data)


def test_random_json_like_messages_round_trip_through_every_view(store_url):
    """A small property test (seeded, no hypothesis): JSON-like values read back the same."""
    import random
    rnd = random.Random(12)
    keys = ['a', '$date', '$$x', '$', 'b.c', 'é', '"$date"']

    def value(depth):
        kind = rnd.randrange(8 if depth < 5 else 5)
        if kind == 0:
            return rnd.choice([None, True, False])
        if kind == 1:
            return rnd.randint(-2 ** 62, 2 ** 62)
        if kind == 2:
            return rnd.choice([0.0, -1.25, 1e300, rnd.random()])
        if kind == 3:
            return ''.join(rnd.choice('ab$"\\é😀 ') for _ in range(rnd.randrange(6)))
        if kind == 4:
            return rnd.choice(['2024-01-02', '2024-01-02T03:04:05', '$date'])
        if kind in (5, 6):
            return {rnd.choice(keys): value(depth + 1) for _ in range(rnd.randrange(4))}
        return [value(depth + 1) for _ in range(rnd.randrange(4))]

    docs = [{rnd.choice(keys): value(0) for _ in range(rnd.randrange(1, 4))} for _ in range(40)]
    if not store_url.startswith('sqlite'):  # MongoDB itself refuses some keys at the top of a document
        docs = [{'m': doc} for doc in docs]
    stream = mb.stream(name_of('prop'), url=store_url)
    stream.append(docs)
    for view, data in _views(stream).items():
        assert len(data) == len(docs), view
        for got, want in zip(data, docs):
            assert _same(got, want), (view, got, want)


def test_absurd_nesting_is_refused_at_append_on_every_path(store_url):
    from minibatch.store.records import MAX_NESTING
    deep = {}
    for _ in range(989):
        deep = {'d': deep}
    for batchsize in (1, 10):
        stream = mb.stream(name_of('deep'), url=store_url, batchsize=batchsize)
        with pytest.raises(InvalidMessage) as excinfo:
            stream.append({'deep': deep})
        assert f'{MAX_NESTING} levels' in str(excinfo.value)
        stream.append({'ok': 1})
        stream.flush()
        assert [b.data for b in stream.buffer()] == [{'ok': 1}]


def test_circular_message_and_lone_surrogate_are_invalid_messages(store_url):
    circular = {'a': 1}
    circular['me'] = circular
    for batchsize in (1, 10):
        stream = mb.stream(name_of('circ'), url=store_url, batchsize=batchsize)
        with pytest.raises(InvalidMessage):
            stream.append({'c': circular})
        if store_url.startswith('sqlite'):
            stream.append({'s': '\ud800'})  # JSON text carries it escaped: it reads back the same
        else:
            with pytest.raises(InvalidMessage):
                stream.append({'s': '\ud800'})
        stream.flush()


def test_batched_message_changed_after_append_cannot_poison_the_batch(store_url):
    stream = mb.stream(name_of('mut'), url=store_url, batchsize=100)
    first = {'i': 1, 'inner': {'x': 1}}
    stream.append(first)
    first['bad'] = {1, 2}  # would make the whole batch fail to write
    first['inner']['x'] = 99
    first['i'] = 'changed'
    second = [{'i': 2}]
    stream.append(second)
    second[0]['i'] = 'changed'
    stream.flush()  # writes both, unchanged
    assert [b.data for b in stream.buffer()] == [{'i': 1, 'inner': {'x': 1}}, {'i': 2}]


# -- malformed store URLs and secrets in them (issue 12, items 10 and 11) ------
@pytest.mark.parametrize('url, secret, shown', [
    ('mongodb://u:pwSECRET1@ss@h/x', 'pwSECRET1', 'escaped'),
    ('mongodb://h:abc/x', None, 'non-digit'),
    ('mongodb://h/x?tlsCertificateKeyFilePassword=KEYSECRET2&bogus=1', 'KEYSECRET2', 'Unknown option'),
    ('mongodb://u:pwSECRET3@h/a.b', 'pwSECRET3', "'.'"),
], ids=['unescaped-at', 'port', 'unknown-option', 'database-name'])
def test_a_malformed_mongodb_url_is_a_configuration_error_where_given(url, secret, shown):
    require_module('pymongo', 'mongodb')
    with pytest.raises(ConfigurationError) as excinfo:
        mb.stream(name_of(), url=url)
    error = excinfo.value
    assert type(error).__module__.startswith('minibatch'), repr(error)
    assert shown in str(error) and 'MongoDB' in str(error)
    if secret:
        assert secret not in str(error) and '***' in str(error)
        assert error.__cause__ is None or secret not in str(error.__cause__)


def test_an_unknown_scheme_does_not_repeat_the_password():
    with pytest.raises(UnknownStoreError) as excinfo:
        mb.stream(name_of(), url='user:pwSECRET4@host/x')
    assert 'pwSECRET4' not in str(excinfo.value) and 'user:***@host/x' in str(excinfo.value)


def test_a_failed_login_is_store_unavailable_without_the_password(mongo_url):
    url = mongo_url.replace('mongodb://', 'mongodb://nobody:pwSECRET5@', 1)
    with pytest.raises(StoreUnavailable) as excinfo:
        mb.stream(name_of(), url=url)
    assert 'pwSECRET5' not in str(excinfo.value) and 'nobody:***@' in str(excinfo.value)
    assert 'authentication failed' in str(excinfo.value)
    assert '\n' not in str(excinfo.value)


SECRET_URL = ('mongodb://u:pwSECRET6@127.0.0.1:1/x?serverSelectionTimeoutMS=300'
              '&tlsCertificateKeyFilePassword=KEYSECRET7')


def test_describe_and_unreachable_errors_mask_every_secret():
    require_module('pymongo', 'mongodb')
    store = mb.get_store(SECRET_URL)
    assert store.describe().startswith('mongodb://u:***@127.0.0.1:1/x?serverSelectionTimeoutMS=300'
                                       '&tlsCertificateKeyFilePassword=***')
    with pytest.raises(StoreUnavailable) as excinfo:
        mb.stream(name_of(), url=SECRET_URL)
    for secret in ('pwSECRET6', 'KEYSECRET7'):
        assert secret not in store.describe() and secret not in str(excinfo.value)


@pytest.mark.parametrize('url, expected', [
    ('mongodb://u:p@ss@h/x', 'mongodb://u:***@h/x'),
    ('mongodb://u:pa/ss@h/x', 'mongodb://u:***@h/x'),
    ('mongodb://u:p?ss@h/x', 'mongodb://u:***@h/x'),
    ('user:pw@host/x', 'user:***@host/x'),
    ('mongodb://u@h/x?appName=a@b', 'mongodb://u@h/x?appName=a@b'),
    ('mongodb://h/x?tlsCertificateKeyFilePassword=s3&retryWrites=false',
     'mongodb://h/x?tlsCertificateKeyFilePassword=***&retryWrites=false'),
    ('mongodb://h/x?authMechanism=MONGODB-AWS&authMechanismProperties=AWS_SESSION_TOKEN:t0k,SERVICE_NAME:s',
     'mongodb://h/x?authMechanism=MONGODB-AWS&authMechanismProperties=AWS_SESSION_TOKEN:***,SERVICE_NAME:s'),
    ('mongodb://h/x?authMechanismProperties=AWS_SESSION_TOKEN%3At0k', 'mongodb://h/x?authMechanismProperties=AWS_SESSION_TOKEN:***'),
    ('mongodb://h/x?apiKey=k&clientSecret=c&accessToken=t', 'mongodb://h/x?apiKey=***&clientSecret=***&accessToken=***'),
    ('mongodb://h:27017/x?w=1', 'mongodb://h:27017/x?w=1'),
    ('sqlite:////tmp/x.db?timeout=3', 'sqlite:////tmp/x.db?timeout=3'),
])
def test_redact_url_masks_passwords_and_secret_looking_parameters(url, expected):
    from minibatch.store.mongodb import redact
    from minibatch.store.redaction import redact_url
    assert redact_url(url) == expected
    assert redact(url) == expected  # the old name, still importable


def test_the_apps_status_does_not_show_the_stores_secrets():
    require_module('flask', 'apps')
    from minibatch.contrib.apps.flask import StreamingApp
    app = StreamingApp(url=SECRET_URL, streams=['a'])
    try:
        response = app.server.test_client().get('/status')
    finally:
        app.stop(timeout=5)
    assert response.status_code == 503
    body = response.get_data(as_text=True)
    assert 'store unavailable' in body
    assert 'pwSECRET6' not in body and 'KEYSECRET7' not in body
