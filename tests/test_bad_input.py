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
