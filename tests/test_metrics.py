"""/metrics: the figures of stream.stats() in Prometheus' text format, served over real HTTP.

Parsed with prometheus_client's own parser; every value is compared with
what ``stream.stats()`` says at the same moment.
"""
import threading
import urllib.request

import pytest

import minibatch as mb
from minibatch.dashboard import create_app
from minibatch.dashboard.metrics import HISTOGRAM, merge_durations
from minibatch.dashboard.serving import BackgroundServer
from minibatch.store.base import utcnow
from minibatch.window import CountWindow

from tests.conftest import require_module
from tests.helpers import wait_until

parser = require_module('prometheus_client.parser', "pip install 'minibatch[apps]'")

#: metric family (as the parser names it) -> key of stream.stats()
FAMILIES = {'minibatch_backlog': 'backlog', 'minibatch_in_flight': 'in_flight', 'minibatch_processed': 'processed',
            'minibatch_failed': 'failed', 'minibatch_dead_letters': 'dead_lettered', 'minibatch_expired': 'expired',
            'minibatch_rate': 'rate', 'minibatch_consumers_alive': 'consumers_alive'}


def scrape(url):
    """``{family name: {stream: value}}`` and the families' types, from GET ``url``."""
    with urllib.request.urlopen(url, timeout=10) as response:
        assert response.status == 200
        assert response.headers['Content-Type'].startswith('text/plain; version=0.0.4')
        text = response.read().decode()
    values, types, samples = {}, {}, {}
    for family in parser.text_string_to_metric_families(text):
        types[family.name] = family.type
        samples[family.name] = family.samples
        for sample in family.samples:
            if sample.name in (family.name, family.name + '_total'):
                values.setdefault(family.name, {})[sample.labels['stream']] = sample.value
    return values, types, samples


def test_metrics_equal_stream_stats(store_url, monkeypatch):
    monkeypatch.setattr(CountWindow, 'HEARTBEAT', 0.2)
    done = mb.stream('done', url=store_url)
    done.append([{'i': i} for i in range(6)] + [{'i': 'poison'}])

    def fn(window):
        if any(m['i'] == 'poison' for m in window.data):
            raise ValueError('poison')

    emitter = mb.make_emitter('done', fn, size=1, url=store_url, executor='inline', max_attempts=2, retry_backoff=0)
    thread = threading.Thread(target=emitter.run)
    thread.start()
    try:
        wait_until(lambda: (lambda s: (s['processed'], s['failed'], s['dead']) == (6, 2, 1))(done.stats()),
                   timeout=20, message='6 processed, 2 failed attempts, 1 dead letter')
    finally:
        emitter.stop()
        thread.join(30)
    # a second stream: 4 waiting, 2 of them claimed, and a consumer report as a running consumer writes it
    waiting = mb.stream('waiting', url=store_url)
    before = utcnow()
    waiting.append([{'n': n} for n in range(4)])
    store = waiting.store
    store.claim('waiting', [m.id for m in store.find_available('waiting', limit=2)], 'token-1', 60)
    store.heartbeat('waiting', 'c1', {'state': 'running', 'heartbeat': 60.0, 'processed': 11, 'failed': 3,
                                      'rate': 2.5, 'in_flight': 1})

    with BackgroundServer(create_app(store_url, sample=False)) as server:
        values, types, _ = scrape(server.url + 'metrics')
    after = utcnow()
    for name in ('done', 'waiting'):
        stats = mb.stream(name, url=store_url).stats()
        for family, key in FAMILIES.items():
            assert values[family][name] == pytest.approx(float(stats[key])), (family, name)
    assert values['minibatch_backlog'] == {'done': 0, 'waiting': 2}
    assert values['minibatch_in_flight']['waiting'] == 2 and values['minibatch_rate']['waiting'] == 2.5
    assert values['minibatch_processed']['done'] == 6 and values['minibatch_dead_letters']['done'] == 1
    # the oldest waiting message of 'waiting' was appended between `before` and the scrape
    age = values['minibatch_oldest_age_seconds']['waiting']
    assert 0 <= age <= (after - before).total_seconds() + 0.01
    assert values['minibatch_oldest_age_seconds']['done'] == 0
    assert types['minibatch_processed'] == types['minibatch_failed'] == 'counter'
    assert types['minibatch_backlog'] == 'gauge' and types[HISTOGRAM] == 'histogram'


def test_window_durations_histogram_sums_consumer_reports(store_url):
    stream = mb.stream('timed', url=store_url)
    store = stream.store
    le = [0.1, 1.0, 10.0]
    store.heartbeat('timed', 'a', {'state': 'running', 'window_seconds': {'le': le, 'counts': [3, 1, 0, 1],
                                                                          'sum': 14.5}})
    store.heartbeat('timed', 'b', {'state': 'running', 'window_seconds': {'le': le, 'counts': [1, 0, 2, 0],
                                                                          'sum': 9.0}})
    store.heartbeat('timed', 'c', {'state': 'running', 'window_seconds': {'le': [5.0], 'counts': [1, 1], 'sum': 9}})
    store.heartbeat('timed', 'd', {'state': 'running', 'window_seconds': 'garbage'})
    mb.stream('untimed', url=store_url)
    with BackgroundServer(create_app(store_url, sample=False)) as server:
        _, _, samples = scrape(server.url + 'metrics')
    got = {(s.name, s.labels.get('le')): s.value for s in samples[HISTOGRAM] if s.labels['stream'] == 'timed'}
    assert got == {(HISTOGRAM + '_bucket', '0.1'): 4, (HISTOGRAM + '_bucket', '1.0'): 5,
                   (HISTOGRAM + '_bucket', '10.0'): 7, (HISTOGRAM + '_bucket', '+Inf'): 8,
                   (HISTOGRAM + '_count', None): 8, (HISTOGRAM + '_sum', None): 23.5}
    # a stream whose consumers report no durations has no histogram samples
    assert not [s for s in samples[HISTOGRAM] if s.labels['stream'] == 'untimed']


def test_merge_durations_of_no_reports_is_none():
    assert merge_durations([]) is None
    assert merge_durations([{'window_seconds': {'le': [1.0], 'counts': [1], 'sum': 1}}]) is None  # one count short


def test_metrics_of_an_empty_store_have_no_samples(tmp_path):
    with BackgroundServer(create_app('sqlite:///' + str(tmp_path / 'empty.db'), sample=False)) as server:
        values, types, _ = scrape(server.url + 'metrics')
    assert values == {} and set(types) >= set(FAMILIES) | {HISTOGRAM}


def test_streaming_app_serves_metrics(tmp_path):
    from minibatch.contrib.apps import StreamingApp
    url = 'sqlite:///' + str(tmp_path / 'app.db')
    mb.stream('app-stream', url=url).append([{'x': 1}, {'x': 2}])
    app = StreamingApp(url=url, url_prefix='/svc')
    with BackgroundServer(app.server) as server:
        values, _, _ = scrape(server.url + 'svc/metrics')
    app.stop()
    assert values['minibatch_backlog'] == {'app-stream': 2}


def test_group_gauges_equal_the_groups_of_stream_stats(store_url):
    orders = mb.stream('orders', url=store_url)
    orders.append([{'n': n} for n in range(5)])
    store = orders.store
    store.register_group('orders', 'billing')
    store.register_group('orders', 'audit')
    assert store.pull('orders', 'billing', 1000) == 5
    copies = store.find_available('orders[billing]', limit=3)
    store.claim('orders[billing]', [m.id for m in copies], 'token-1', 60)
    assert store.commit('orders[billing]', 'token-1', [m.id for m in copies], keep=True) == 3
    mb.stream('plain', url=store_url).append({'x': 1})
    with BackgroundServer(create_app(store_url, sample=False)) as server:
        with urllib.request.urlopen(server.url + 'metrics', timeout=10) as response:
            text = response.read().decode()
    families = {family.name: family for family in parser.text_string_to_metric_families(text)}
    stats = orders.stats()['groups']
    lag = {(s.labels['stream'], s.labels['group']): s.value for s in families['minibatch_group_lag'].samples}
    assert lag == {('orders', 'audit'): 5, ('orders', 'billing'): 2}  # no samples for streams without groups
    assert lag == {('orders', group): figures['lag'] for group, figures in stats.items()}
    seconds = {(s.labels['stream'], s.labels['group']): s.value
               for s in families['minibatch_group_lag_seconds'].samples}
    for group, figures in stats.items():
        # read a moment before stats(): at most that much younger
        assert 0 < seconds[('orders', group)] <= figures['lag_seconds']
    assert families['minibatch_group_lag'].type == families['minibatch_group_lag_seconds'].type == 'gauge'
