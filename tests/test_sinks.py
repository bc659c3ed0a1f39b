"""The Sink base of minibatch.contrib (issue 11): one normalisation of put()'s input for every sink.

A tiny subclass records what its ``write`` gets; each rule of
:class:`minibatch.contrib.base.Sink` is tested on it, then the ready-made sinks
are checked to be such sinks, with doubles in place of the outside systems.
"""
import datetime
from unittest.mock import MagicMock

import pytest

import minibatch as mb
from minibatch.contrib.base import Sink
from minibatch.errors import ConfigurationError, InvalidMessage, SinkError
from tests.helpers import wait_until


class ListSink(Sink):
    """Writes into a list; ``fail`` makes the next write raise it."""

    def __init__(self, **attributes):
        self.written = []
        self.calls = []
        self.fail = None
        for name, value in attributes.items():
            setattr(self, name, value)

    def write(self, messages, **options):
        self.calls.append((list(messages), options))
        if self.fail is not None:
            raise self.fail
        self.written.extend(messages)
        return len(messages)


class ListSinkError(SinkError):
    pass


def test_sink_is_abstract_write_is_the_one_method_to_implement():
    with pytest.raises(TypeError):
        Sink()

    class Minimal(Sink):
        def write(self, messages):
            self.got = messages

    sink = Minimal()
    assert sink.put({'a': 1}) == 1, 'write returning None counts as all written'
    assert sink.got == [{'a': 1}]
    assert sink.close() is None


def test_a_dict_is_one_message():
    sink = ListSink()
    assert sink.put({'a': 1}) == 1
    assert sink.calls == [([{'a': 1}], {})]


@pytest.mark.parametrize('data', [[{'a': 1}, {'a': 2}], ({'a': 1}, {'a': 2})], ids=['list', 'tuple'])
def test_a_list_or_a_tuple_is_its_items_in_one_write(data):
    sink = ListSink()
    assert sink.put(data) == 2
    assert sink.calls == [([{'a': 1}, {'a': 2}], {})], 'one write of all the items, in order'
    assert isinstance(sink.calls[0][0], list)


@pytest.mark.parametrize('data', [[], ()], ids=['list', 'tuple'])
def test_nothing_to_write_is_a_no_op_returning_0(data):
    sink = ListSink()
    assert sink.put(data) == 0
    assert sink.calls == [], 'write is never called with an empty batch'


def test_the_input_is_not_changed_and_write_gets_a_new_list():
    sink = ListSink()
    data = [{'a': 1}]
    sink.put(data)
    sink.written.append('x')
    assert data == [{'a': 1}]
    assert sink.calls[0][0] is not data


@pytest.mark.parametrize('data', ['text', 42, None, {'a'}], ids=['str', 'int', 'None', 'set'])
def test_a_sink_of_dicts_refuses_anything_else(data):
    sink = ListSink()
    with pytest.raises(InvalidMessage, match='takes a dict or a list of dicts'):
        sink.put(data)
    assert sink.calls == []


def test_a_bad_item_is_refused_before_anything_is_written():
    sink = ListSink()
    with pytest.raises(InvalidMessage, match="got an item 'text'"):
        sink.put([{'a': 1}, {'a': 2}, 'text'])
    assert sink.calls == [] and sink.written == []


def test_a_sink_of_any_value_takes_scalars_as_one_message():
    sink = ListSink(dicts_only=False)
    assert sink.put('text') == 1
    assert sink.put([1, 'two', None]) == 3
    assert sink.written == ['text', 1, 'two', None]


def test_expand_false_makes_anything_one_message_even_a_list():
    sink = ListSink(expand=False, dicts_only=False)
    assert sink.put([{'a': 1}, {'a': 2}]) == 1
    assert sink.put([]) == 1, 'an empty list is a value like any other when not expanded'
    assert sink.written == [[{'a': 1}, {'a': 2}], []]


def test_prepare_checks_every_item_first_and_its_result_is_what_write_gets():
    class Encoding(ListSink):
        def prepare(self, message):
            message = super().prepare(message)
            if 'id' not in message:
                raise InvalidMessage(f'no id in {message}')
            return f"#{message['id']}"

    sink = Encoding()
    assert sink.put([{'id': 1}, {'id': 2}]) == 2
    assert sink.written == ['#1', '#2']
    with pytest.raises(InvalidMessage, match='no id'):
        sink.put([{'id': 3}, {'x': 4}])
    with pytest.raises(InvalidMessage, match='takes a dict'):
        sink.put([{'id': 3}, 'x'])
    assert sink.written == ['#1', '#2'], 'nothing of a batch with a bad item was written'


def test_keyword_options_of_put_reach_write():
    sink = ListSink()
    sink.put({'a': 1}, topic='other')
    assert sink.calls == [([{'a': 1}], {'topic': 'other'})]


def test_a_foreign_failure_of_write_becomes_the_sinks_error_with_the_cause():
    sink = ListSink(error=ListSinkError, fail=OSError('disk full'))
    with pytest.raises(ListSinkError, match='writing 2 message.s. failed: OSError: disk full') as failure:
        sink.put([{'a': 1}, {'a': 2}])
    assert isinstance(failure.value, mb.SinkError) and isinstance(failure.value, ConnectionError)
    assert isinstance(failure.value.__cause__, OSError)
    plain = ListSink(fail=KeyError('k'))
    with pytest.raises(SinkError):
        plain.put({'a': 1})


@pytest.mark.parametrize('error', [ListSinkError('gone'), InvalidMessage('too big'), ConfigurationError('bad')],
                         ids=['SinkError', 'InvalidMessage', 'ConfigurationError'])
def test_minibatch_errors_of_write_pass_unchanged(error):
    sink = ListSink(fail=error)
    with pytest.raises(type(error)) as failure:
        sink.put({'a': 1})
    assert failure.value is error


def test_a_failing_sink_fails_the_window_which_is_retried_then_dead_lettered():
    stream = mb.stream(f'sinks-{id(object())}')
    stream.append({'a': 1})
    sink = ListSink(fail=OSError('target down'))
    em = mb.streaming(stream.name, size=1, executor='inline', max_attempts=2, retry_backoff=0.01,
                      sink=sink, blocking=False)(lambda window: window.data)
    try:
        dead = wait_until(stream.dead_letters, timeout=20, message='the window in the dead letters')
    finally:
        em.stop()
        em.thread.join(10)
    assert [m.data for m in dead] == [{'a': 1}]
    assert 'target down' in dead[0].error and 'SinkError' in dead[0].error
    assert len(sink.calls) == 2


# -- the ready-made sinks are Sinks ------------------------------------------------
def test_the_ready_made_sinks_are_sinks():
    from minibatch.contrib.mongodb import MongoSink, MongoSinkError
    from minibatch.contrib.omegaml import DatasetSink, DatasetSinkError
    assert issubclass(MongoSink, Sink) and MongoSink.error is MongoSinkError and MongoSink.dicts_only
    assert issubclass(DatasetSink, Sink) and DatasetSink.error is DatasetSinkError and DatasetSink.dicts_only
    pytest.importorskip('kafka')
    from minibatch.contrib.kafka import KafkaSink, KafkaSinkError
    assert issubclass(KafkaSink, Sink) and KafkaSink.error is KafkaSinkError and not KafkaSink.dicts_only
    pytest.importorskip('paho.mqtt.client')
    from minibatch.contrib.mqtt import MQTTPublishError, MQTTSink
    assert issubclass(MQTTSink, Sink) and MQTTSink.error is MQTTPublishError and not MQTTSink.dicts_only


class FakeCollection:
    """Enough of a pymongo Collection for MongoSink."""

    def __init__(self, fail=None):
        self.write_concern = MagicMock(acknowledged=True)
        self.database = MagicMock()
        self.database.name = 'db'
        self.name = 'coll'
        self.docs = []
        self.fail = fail

    def insert_one(self, doc):
        self.insert_many([doc])

    def insert_many(self, docs, ordered=True):
        if self.fail:
            raise self.fail
        self.docs.extend(docs)

    def bulk_write(self, requests, ordered=True):
        self.insert_many([r._doc for r in requests])


def test_mongo_sink_normalises_like_the_base():
    from minibatch.contrib.mongodb import MongoSink, MongoSinkError
    coll = FakeCollection()
    sink = MongoSink(coll)
    assert sink.put({'a': 1}) == 1
    assert sink.put(({'a': 2}, {'a': 3})) == 2, '0.6 took a list; a tuple is the same'
    assert sink.put([]) == 0
    assert coll.docs == [{'a': 1}, {'a': 2}, {'a': 3}]
    with pytest.raises(InvalidMessage):
        sink.put([{'a': 4}, 5])
    with pytest.raises(InvalidMessage, match='no .k.'):
        MongoSink(coll, key='k').put([{'k': 1}, {'a': 5}])
    assert len(coll.docs) == 3, 'nothing written from a batch with a bad item'
    with pytest.raises(MongoSinkError, match='E11000') as failure:
        MongoSink(FakeCollection(fail=RuntimeError('E11000 duplicate key'))).put({'a': 1})
    assert isinstance(failure.value.__cause__, RuntimeError)


def test_dataset_sink_puts_what_it_was_given_to_a_dataset_of_python_data():
    from minibatch.contrib.omegaml import DatasetSink, DatasetSinkError
    om = MagicMock()
    om.datasets.metadata.return_value.kind = 'python.data'
    sink = DatasetSink(om, 'objects')
    assert sink.put({'k': 1}) == 1
    om.datasets.put.assert_called_once_with({'k': 1}, 'objects', append=True)
    assert sink.put([]) == 0 and om.datasets.put.call_count == 1
    with pytest.raises(InvalidMessage):
        sink.put([{'k': 2}, 'x'])
    assert om.datasets.put.call_count == 1
    om.datasets.put.side_effect = ValueError('server gone')
    with pytest.raises(DatasetSinkError, match='server gone'):
        sink.put([{'k': 3}])


def test_kafka_sink_expand_and_any_json_value():
    pytest.importorskip('kafka')
    from minibatch.contrib.kafka import KafkaSink
    producer = MagicMock()
    assert KafkaSink('t', producer=producer).put(['a', 1]) == 2
    assert [c.kwargs['value'] for c in producer.send.call_args_list] == ['a', 1]
    producer.reset_mock()
    assert KafkaSink('t', expand=False, producer=producer).put([{'a': 1}, {'a': 2}]) == 1
    producer.send.assert_called_once_with('t', value=[{'a': 1}, {'a': 2}])
    producer.reset_mock()
    with pytest.raises(InvalidMessage):
        KafkaSink('t', producer=producer).put([{'a': 1}, {'b': object()}])
    producer.send.assert_not_called()
    assert KafkaSink('t', producer=producer).put([]) == 0
    producer.send.assert_not_called()


def test_mqtt_sink_publishes_each_item_and_refuses_a_bad_one_first():
    pytest.importorskip('paho.mqtt.client')
    from minibatch.contrib.mqtt import MQTTSink
    client = MagicMock()
    client.publish.return_value.rc = 0
    sink = MQTTSink('localhost', 't', client=client)
    assert sink.put([{'at': datetime.datetime(2024, 1, 2)}, 3]) == 2
    assert [c.args for c in client.publish.call_args_list] == [('t', '{"at": "2024-01-02T00:00:00"}'), ('t', '3')]
    client.publish.reset_mock()
    assert sink.put(({'a': 1},)) == 1
    client.publish.assert_called_once_with('t', '{"a": 1}')
    client.publish.reset_mock()
    with pytest.raises(InvalidMessage):
        sink.put([{'a': 1}, {'b': object()}])
    client.publish.assert_not_called()
    assert sink.put([]) == 0
    client.publish.assert_not_called()
