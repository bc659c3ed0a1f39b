"""Property (hypothesis): for random keyed event streams, arriving in random batches and out of order, the
windows an event-time consumer emits (key, start, end, sorted data) equal a reference computed in plain
Python from the rules of docs/windows.rst: the watermark is the latest event time seen minus grace; an
event whose every window has ended at or before the watermark is late (and in no window); a session takes
the events that come within ``gap`` of it; count windows per key hold each key's messages, ``size`` at a time,
in arrival order."""
import uuid

from hypothesis import HealthCheck, given, settings, strategies as st

import minibatch as mb
from minibatch.consumer import make_emitter
from minibatch.eventtime import hopping, session, tumbling

SENTINEL = 100_000  # a last event far ahead: the watermark passes every window of the test


def reference(kind, a, b, grace, arrivals):
    """The windows {(key, start, end, sorted values)} emitted once the watermark has passed them all."""
    if kind == 'count':  # per key, in arrival order, full windows of a only (positions, no times)
        per_key = {}
        for key, _, v in arrivals:
            per_key.setdefault(key, []).append(v)
        return sorted((key, None, None, tuple(vs[i:i + a]))
                      for key, vs in per_key.items() for i in range(0, len(vs) - a + 1, a))
    max_t = None
    windows = {}  # (key, start, end) -> values
    for key, t, v in arrivals:
        watermark = None if max_t is None else max_t - grace
        passed = (lambda end: watermark is not None and end <= watermark)
        if kind == 'session':
            touching = [w for w in windows if w[0] == key and w[1] < t + a and t < w[2]]
            if any(passed(w[2]) for w in touching) or (not touching and passed(t + a)):
                pass  # late
            else:
                values = [v] + [x for w in touching for x in windows.pop(w)]
                start = min([t] + [w[1] for w in touching])
                end = max([t + a] + [w[2] for w in touching])
                windows[(key, start, end)] = values
        else:
            size, step = (a, a) if kind == 'tumbling' else (a, b)
            covering = [(k * step, k * step + size) for k in range(-200, 200) if k * step <= t < k * step + size]
            open_ = [w for w in covering if not passed(w[1])]
            for start, end in open_:
                windows.setdefault((key, start, end), []).append(v)
        max_t = t if max_t is None else max(max_t, t)
    return sorted((k, s, e, tuple(sorted(vs))) for (k, s, e), vs in windows.items())


specs = st.one_of(
    st.tuples(st.just('tumbling'), st.sampled_from([5, 10]), st.just(0)),
    st.tuples(st.just('hopping'), st.sampled_from([6, 10]), st.sampled_from([3, 5])),
    st.tuples(st.just('session'), st.sampled_from([3, 5]), st.just(0)),
    st.tuples(st.just('count'), st.sampled_from([1, 3]), st.just(0)),
)
batches = st.lists(st.lists(st.tuples(st.sampled_from('abc'), st.integers(0, 60)), min_size=1, max_size=8),
                   min_size=1, max_size=5)


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(spec=specs, grace=st.sampled_from([0, 3, 10]), batches=batches)
def test_emitted_windows_equal_a_plain_python_reference(store_url, spec, grace, batches):
    kind, a, b = spec
    name = 'p' + uuid.uuid4().hex[:10]
    stream = mb.stream(name, url=store_url)
    got = []

    def seconds(when):
        return None if when is None else (when - EPOCH).total_seconds()

    def record(w):
        values = [d['v'] for d in w.data]
        got.append((w.key, seconds(w.start), seconds(w.end), tuple(values if kind == 'count' else sorted(values))))
    if kind == 'count':
        em = make_emitter(name, record, url=store_url, executor='inline', size=a, key='k')
    else:
        window = {'tumbling': lambda: tumbling(a), 'hopping': lambda: hopping(a, b),
                  'session': lambda: session(a)}[kind]()
        em = make_emitter(name, record, url=store_url, executor='inline', window=window, key='k', time='t',
                          grace=grace, close_by_clock=False, on_late='drop')
    arrivals, v = [], 0
    for batch in batches + [[('zz', SENTINEL)]]:
        docs = []
        for key, t in batch:
            arrivals.append((key, t, v))
            docs.append({'k': key, 't': t, 'v': v})
            v += 1
        stream.append(docs)
        settle(em)
    expected = [w for w in reference(kind, a, b, grace, arrivals) if w[0] != 'zz']
    assert sorted(w for w in got if w[0] != 'zz') == expected
    stream.delete()


def settle(em):
    """Rounds until one cuts no window (every window ready now is emitted)."""
    for _ in range(200):
        before = em.stats['windows']
        em.run(blocking=False)
        if em.stats['windows'] == before:
            return
    raise AssertionError('the consumer kept cutting windows')


EPOCH = __import__('datetime').datetime(1970, 1, 1)
