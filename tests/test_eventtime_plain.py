"""The plain case of reading key and event time (extract.plain_reader, EventTimeState.unindexed_fields).

Indexing reads most messages without the full readers: a field path to a ``str`` or
``int`` key and to epoch seconds. It must read exactly what the full readers read,
and leave everything else to them, in arrival order.
"""
import datetime
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import minibatch as mb
from minibatch.consumer import make_emitter
from minibatch.eventtime.extract import EventReadError, key_reader, plain_reader, time_reader

from tests.test_eventtime import Collect, consumer, rounds

VALUES = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-2 ** 70, max_value=2 ** 70),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=8),
    st.datetimes(min_value=datetime.datetime(1, 1, 2), max_value=datetime.datetime(9999, 12, 30)),
    st.lists(st.integers(), max_size=2), st.dictionaries(st.sampled_from(['a', 'b']), st.integers(), max_size=2))
DOCS = st.recursive(st.dictionaries(st.sampled_from(['k', 'ts', 'a', 'b', '0']), VALUES, max_size=4),
                    lambda inner: st.dictionaries(st.sampled_from(['k', 'ts', 'a', 'b', '0']), inner, max_size=3),
                    max_leaves=8)
PATHS = st.sampled_from(['k', 'ts', 'a', 'a.k', 'a.ts', 'a.0', 'b.a.k'])


def full_read(key, time, counting, data):
    """What the full readers make of ``data``: (key, time), or the EventReadError type."""
    try:
        text = key_reader(key)(data)
        return text, 0.0 if counting else time_reader(time)(data, None)
    except EventReadError:
        return EventReadError


@settings(max_examples=400, deadline=None)
@given(doc=DOCS, key=st.one_of(st.none(), PATHS), time=PATHS, counting=st.booleans())
def test_the_plain_reader_reads_what_the_full_readers_read_or_leaves_the_message_to_them(doc, key, time, counting):
    read = plain_reader(key, time, counting)
    got = read(doc)
    if got is not None:
        assert got == full_read(key, time, counting, doc)
        assert type(got[1]) is float and math.isfinite(got[1])


def test_no_plain_reader_for_functions_or_the_append_time():
    assert plain_reader(lambda d: d['k'], 'ts') is None
    assert plain_reader('k', lambda d: d['ts']) is None
    assert plain_reader('k', None) is None  # the append time: read from the message, not its data
    assert plain_reader('k', None, counting=True) is not None  # count windows read no time


def test_plain_and_other_messages_are_indexed_in_arrival_order_and_the_unreadable_dead_lettered(store_url):
    """Epoch seconds (plain), ISO strings and datetimes (full readers) interleaved: the watermark follows
    arrival order across both, so an event the plain ones put behind the watermark is late."""
    stream = mb.stream('mixed', url=store_url)
    fn = Collect()
    em = consumer(store_url, 'mixed', fn, grace=0, on_late='window')
    stream.append([{'k': 'a', 'ts': 1, 'v': 1},
                   {'k': 'a', 'ts': '1970-01-01T00:00:02', 'v': 2},
                   {'k': 'a', 'ts': datetime.datetime(1970, 1, 1, 0, 0, 3), 'v': 3},
                   {'k': 7, 'ts': 4.5, 'v': 4},
                   {'k': 'a', 'ts': 'not a time', 'v': 5},
                   {'k': 'b', 'ts': 25.0, 'v': 6},  # plain: the watermark passes 20
                   {'k': 'a', 'ts': '1970-01-01T00:00:09', 'v': 7},  # full reader, behind it: late
                   {'k': 'é', 'ts': 31, 'v': 8}])
    rounds(em)
    assert sorted((w for w in fn.windows if not w[4]), key=str) == [('a', 0.0, 10.0, [1, 2, 3], False),
                                                                     ('b', 20.0, 30.0, [6], False),
                                                                     (7, 0.0, 10.0, [4], False)]
    assert [w for w in fn.windows if w[4]] == [('a', 0.0, 10.0, [7], True)]
    dead = stream.dead_letters()
    assert [m.data['v'] for m in dead] == [5] and 'not an ISO 8601 time' in dead[0].error


@pytest.mark.parametrize('batches', [1, 3])
def test_count_windows_per_key_number_plain_and_other_keys_in_arrival_order(store_url, batches):
    """A str key is read plainly, a list key by the full reader: each key's numbers follow arrival order."""
    stream = mb.stream('counted', url=store_url)
    got = []
    em = make_emitter('counted', got.append, url=store_url, executor='inline', size=2, key='k')
    docs = [{'k': 'a', 'v': 1}, {'k': ['x'], 'v': 2}, {'k': 'a', 'v': 3}, {'k': ['x'], 'v': 4}, {'k': 'a', 'v': 5}]
    for part in range(batches):
        stream.append(docs[part::batches])
    rounds(em, 6)
    windows = sorted((str(w.key), [d['v'] for d in w.data]) for w in got)
    if batches == 1:
        assert windows == [("['x']", [2, 4]), ('a', [1, 3])]
    else:  # appended as [1, 4], [2, 5], [3]: that is the arrival order
        assert windows == [("['x']", [4, 2]), ('a', [1, 5])]
