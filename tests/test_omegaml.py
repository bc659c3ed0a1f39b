"""DatasetSource and DatasetSink with the real omega|ml package, against the MongoDB-wire test server.

omega|ml needs nothing but MongoDB for datasets: ``Omega(mongo_url=...)``
points an instance at the fixture's fresh database.
"""
import datetime
import os
import uuid

import pytest

import minibatch as mb
from minibatch.contrib.omegaml import DatasetSink, DatasetSource
from minibatch.errors import ConfigurationError, InvalidMessage
from tests.helpers import wait_until

pytestmark = [
    pytest.mark.mongodb,
    # omega|ml's own warnings about its pandas/sqlalchemy shims, not ours
    pytest.mark.filterwarnings('ignore:Patching pandas:UserWarning'),
    pytest.mark.filterwarnings('ignore:A value is trying to be set on a copy:FutureWarning'),
]


def import_omegaml():
    try:
        import omegaml  # noqa: F401 (large: imported only by these tests)
    except ImportError:
        if os.environ.get('CI', '').lower() in ('1', 'true', 'yes'):
            pytest.fail('omegaml is not installed under CI (it is part of the dev extra)')
        pytest.skip("omegaml is not installed (pip install 'minibatch[omegaml]')")
    import pandas
    from omegaml import Omega
    return Omega, pandas


@pytest.fixture
def om(mongo_url):
    """An omega|ml instance on the test database; its connections are closed afterwards."""
    Omega, _ = import_omegaml()
    from mongoengine.connection import _connections, disconnect
    before = set(_connections)
    yield Omega(mongo_url=mongo_url)
    for alias in set(_connections) - before:
        disconnect(alias)


@pytest.fixture
def pd():
    return import_omegaml()[1]


def unique(prefix='d'):
    return f'{prefix}_{uuid.uuid4().hex[:8]}'


def messages(stream):
    return [m.data for m in stream.store.messages(stream.name)]


def rows(om, dataset):
    """The dataset's rows as a list of dicts ([] while it does not exist)."""
    df = om.datasets.get(dataset)
    return [] if df is None else df.to_dict('records')


def stop(stream):
    """Stop the stream's sources and wait until they have ended."""
    stream.stop()
    for source in stream._sources:
        assert source.stopped.wait(10), f'{source} did not stop'



# -- round trip ----------------------------------------------------------------
def test_dataset_to_stream_to_consumer_to_dataset(om, pd, mongo_url):
    om.datasets.put(pd.DataFrame({'x': [1, 2, 3, 4, 5, 6], 'name': list('abcdef')}), 'readings', append=True)

    def double(window):
        return [{'x': row['x'] * 2, 'name': row['name']} for row in window.data]

    em = mb.streaming(unique('s'), size=3, url=mongo_url, executor='thread', workers=2, blocking=False,
                      source=DatasetSource(om, 'readings', delay=0.05), sink=DatasetSink(om, 'doubled'))(double)
    try:
        wait_until(lambda: len(rows(om, 'doubled')) >= 6, timeout=30, interval=0.1, message='6 rows in doubled')
        om.datasets.put(pd.DataFrame({'x': [7, 8, 9], 'name': list('ghi')}), 'readings', append=True)
        wait_until(lambda: len(rows(om, 'doubled')) >= 9, timeout=30, interval=0.1, message='9 rows in doubled')
    finally:
        em.stop()
        em.thread.join(10)
        em.stream.stop()
    result = sorted(rows(om, 'doubled'), key=lambda row: row['x'])
    assert result == [{'x': 2 * i, 'name': name} for i, name in zip(range(1, 10), 'abcdefghi')]
    assert om.datasets.metadata('doubled').kind == 'pandas.dfrows'


# -- the source ------------------------------------------------------------------
def test_rows_and_python_objects_become_messages(om, pd):
    when = datetime.datetime(2024, 3, 4, 5, 6, 7)
    frame = pd.DataFrame({'v': [1.5, 2.5], 'at': [when, when]}, index=pd.Index(['p', 'q'], name='key'))
    om.datasets.put(frame, 'frame')
    om.datasets.put(pd.DataFrame({'v': [3]}), 'plain')
    om.datasets.put({'a': 1}, 'objects')
    om.datasets.put([{'b': 1}, {'b': 2}], 'objects', append=True)
    om.datasets.put([1, 2], 'objects', append=True)

    got = {}
    for dataset, count in (('frame', 2), ('plain', 1), ('objects', 4)):
        stream = mb.stream(unique('s'))
        stream.attach(DatasetSource(om, dataset, delay=0.05))
        try:
            wait_until(lambda: len(messages(stream)) >= count, timeout=10, message=f'{count} messages of {dataset}')
        finally:
            stop(stream)
        got[dataset] = messages(stream)
    assert got['frame'] == [{'key': 'p', 'v': 1.5, 'at': when}, {'key': 'q', 'v': 2.5, 'at': when}]
    assert got['plain'] == [{'v': 3}], 'an unnamed index and the bookkeeping fields are left out'
    assert got['objects'] == [{'a': 1}, {'b': 1}, {'b': 2}, {'data': [1, 2]}]


def test_a_new_dataset_source_continues_where_the_last_stopped(om, pd):
    om.datasets.put(pd.DataFrame({'i': [0, 1, 2]}), 'series')
    stream = mb.stream(unique('s'))
    stream.attach(DatasetSource(om, 'series', delay=0.05))
    try:
        wait_until(lambda: len(messages(stream)) == 3, timeout=10, message='3 messages')
    finally:
        stop(stream)
    om.datasets.put(pd.DataFrame({'i': [3, 4]}), 'series', append=True)  # while no source runs

    stream = mb.stream(stream.name)
    stream.attach(DatasetSource(om, 'series', delay=0.05))  # a NEW source object
    try:
        wait_until(lambda: len(messages(stream)) >= 5, timeout=10, message='the rows added meanwhile')
        om.datasets.put(pd.DataFrame({'i': [5]}), 'series', append=True)  # a sentinel: all before it is in
        wait_until(lambda: messages(stream)[-1] == {'i': 5}, timeout=10, message='the sentinel row')
    finally:
        stop(stream)
    assert [m['i'] for m in messages(stream)] == [0, 1, 2, 3, 4, 5], 'each row exactly once'
    assert list(stream.store.get_stream(stream.name).status['checkpoints']) == ['DatasetSource:omegaml:series']


def test_omegaml_streams_attach_a_dataset_source(om, pd, monkeypatch):
    om.datasets.put(pd.DataFrame({'i': [1, 2]}), 'events')
    # a source instance is attached as it is
    stream = om.streams.get(unique('s'), source=DatasetSource(om, 'events', delay=0.05))
    try:
        wait_until(lambda: len(list(stream.buffer())) == 2, timeout=10, message='2 rows via om.streams')
    finally:
        stop(stream)
    # a dataset name is resolved by omega|ml through its *default* instance (omegaml.setup()),
    # which reads the process configuration, not this instance's URL: point it here
    monkeypatch.setattr(om.defaults, 'OMEGA_MONGO_URL', om.mongo_url)
    stream = om.streams.get(unique('s'), source='events')
    try:
        assert [type(s).__name__ for s in stream._sources] == ['DatasetSource']
        wait_until(lambda: len(list(stream.buffer())) == 2, timeout=10, message='2 rows via a dataset name')
    finally:
        stop(stream)
    assert sorted(m.data['i'] for m in stream.buffer()) == [1, 2]


# -- the sink --------------------------------------------------------------------
def test_sink_appends_rows_or_objects_by_the_dataset_kind(om, pd):
    sink = DatasetSink(om, 'table')
    sink.put({'a': 1, 'b': 'x'})
    sink.put([])
    sink.put([{'a': 2, 'b': 'y'}, {'a': 3, 'b': 'z'}])
    assert om.datasets.metadata('table').kind == 'pandas.dfrows'
    assert rows(om, 'table') == [{'a': 1, 'b': 'x'}, {'a': 2, 'b': 'y'}, {'a': 3, 'b': 'z'}]

    om.datasets.put({'k': 0}, 'objects')  # python.data: the sink puts what it gets
    DatasetSink(om, 'objects').put({'k': 1})
    assert om.datasets.metadata('objects').kind == 'python.data'
    assert om.datasets.get('objects') == [{'k': 0}, {'k': 1}]

    latest = DatasetSink(om, 'latest', append=False)
    latest.put([{'n': 1}, {'n': 2}])
    latest.put({'n': 3})
    assert rows(om, 'latest') == [{'n': 3}], 'append=False replaces the dataset'

    with pytest.raises(InvalidMessage):
        sink.put('text')
    with pytest.raises(ConfigurationError):
        DatasetSink(object(), 'x')
    with pytest.raises(ConfigurationError):
        DatasetSource(om, '')


def test_sink_failure_raises_and_the_window_is_retried_then_dead_lettered(om, pd, mongo_url):
    om.datasets.put(pd.DataFrame({'x': [1]}), 'unique_x')
    om.datasets.collection('unique_x').create_index('x', unique=True)  # a real constraint the server enforces
    calls = []

    class CountingSink(DatasetSink):
        def put(self, data):
            calls.append(data)
            super().put(data)

    stream = mb.stream(unique('s'), url=mongo_url)
    stream.append({'x': 1})
    em = mb.streaming(stream.name, size=1, url=mongo_url, executor='inline', max_attempts=2, retry_backoff=0.05,
                      sink=CountingSink(om, 'unique_x'), blocking=False)(lambda window: window.data)
    try:
        dead = wait_until(stream.dead_letters, timeout=30, message='the window in the dead letters')
    finally:
        em.stop()
        em.thread.join(10)
    assert [m.data for m in dead] == [{'x': 1}]
    assert 'duplicate key' in dead[0].error.lower() or 'E11000' in dead[0].error
    assert len(calls) == 2, 'tried max_attempts times'
    assert rows(om, 'unique_x') == [{'x': 1}]
