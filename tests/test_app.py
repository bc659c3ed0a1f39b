"""StreamingApp: consumers in supervised child processes, /status read over real HTTP.

Each test serves the app's Flask app with werkzeug on a free loopback port in
a thread, starts real consumer processes with ``start_streaming`` and reads
``/status`` with urllib, on the embedded store and on the MongoDB-wire server.
"""
import datetime
import importlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import types
import urllib.error
import urllib.request

import flask
import pytest
from werkzeug.serving import make_server

import minibatch as mb
from minibatch.contrib.apps import StreamingApp
from minibatch.contrib.apps.flask import plain
from minibatch.errors import ConfigurationError
from minibatch.window import CountWindow

from tests.helpers import wait_until

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# -- the consumers the tests run (module level: the children import them) ---
class QuickReports(CountWindow):
    """Reports its figures every 0.2 s instead of 5 s, so that /status catches up quickly.

    An idle consumer reports when it wakes up, so it also sleeps at most that long
    (and stops within that time on SIGTERM).
    """
    HEARTBEAT = 0.2
    MAX_POLL = MAX_PUSH_WAIT = 0.2


def count_consumer(url, stream, slow=0.0):
    """Windows of one message, processed inline, each taking ``slow`` seconds."""
    def process(window):
        time.sleep(slow)
    mb.streaming(stream, url=url, size=1, emitter=QuickReports, executor='inline')(process)


def crashing_consumer(url):
    raise RuntimeError('this consumer fails at once')


def stubborn_consumer(url, ready):
    """Ignores SIGTERM and never returns: only SIGKILL ends it."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    open(ready, 'w').close()
    while True:
        time.sleep(0.05)


# -- helpers -----------------------------------------------------------------
@pytest.fixture
def serve():
    """``serve(app)`` -> base URL of ``app`` served over HTTP on loopback; stops app and server afterwards."""
    started = []

    def start(app):
        server = make_server('127.0.0.1', 0, app, threaded=True)
        thread = threading.Thread(target=server.serve_forever, kwargs={'poll_interval': 0.05}, daemon=True)
        thread.start()
        started.append((app, server, thread))
        return f'http://127.0.0.1:{server.server_port}'
    yield start
    for app, server, thread in started:
        app.stop(timeout=5)
        server.shutdown()
        thread.join(5)
        server.server_close()


def get_status(base, query=''):
    with urllib.request.urlopen(f'{base}/status{query}', timeout=10) as response:
        assert response.status == 200 and response.headers['Content-Type'] == 'application/json'
        return json.load(response)


def processed(base, stream, n):
    """The /status document once stream ``stream`` reports ``n`` messages processed, else None."""
    status = get_status(base)
    figures = status['streams'].get(stream)
    return status if figures and figures['processed'] == n else None


def consumer_entry(status, name):
    (entry,) = [entry for entry in status['consumers'] if entry['name'] == name]
    return entry


def figures_only(stats):
    """A stream's figures without the per-consumer reports, whose ``seen`` moves with every heartbeat."""
    return {key: value for key, value in stats.items() if key != 'consumers'}


def gone(pid):
    """True if process ``pid`` has exited (a zombie not yet reaped by its new parent counts as exited)."""
    try:
        with open(f'/proc/{pid}/stat') as stat:
            return stat.read().rpartition(')')[2].split()[0] in ('Z', 'X')
    except FileNotFoundError:
        return True


def children_of(pid):
    """The pids of the live processes whose parent is ``pid``."""
    found = []
    for entry in os.listdir('/proc'):
        if entry.isdigit():
            try:
                with open(f'/proc/{entry}/stat') as stat:
                    fields = stat.read().rpartition(')')[2].split()
            except OSError:
                continue
            if int(fields[1]) == pid and fields[0] not in ('Z', 'X'):
                found.append(int(entry))
    return found


def is_utc_iso(text):
    return datetime.datetime.fromisoformat(text).utcoffset() == datetime.timedelta(0)


# -- the tests -----------------------------------------------------------------
def test_status_serves_stream_stats_of_the_apps_consumer(store_url, serve):
    app = StreamingApp(uri=store_url)
    base = serve(app)
    child = app.start_streaming(count_consumer, 'orders')
    stream = mb.stream('orders', url=store_url)
    stream.append([{'i': i} for i in range(20)])

    status = wait_until(lambda: processed(base, 'orders', 20), timeout=20, interval=0.1,
                        message='/status reports 20 processed')
    entry = consumer_entry(status, 'count_consumer')
    assert (entry['pid'], entry['alive'], entry['state'], entry['restarts'], entry['exitcode']) == \
        (child.pid, True, 'running', 0, None)
    assert entry['streams'] == ['orders'] and status['ok'] is True
    assert is_utc_iso(status['time']) and is_utc_iso(entry['started'])
    # the stream was found through the consumer reports of the app's own child
    (report,) = status['streams']['orders']['consumers']
    assert report['pid'] == child.pid and report['alive'] and is_utc_iso(report['seen'])

    # one source of truth: the served figures are stream.stats(), as JSON (retried: a heartbeat may
    # land between the two reads until the rate has settled)
    def same():
        served = get_status(base)['streams']['orders']
        direct = plain(stream.stats())
        return (figures_only(served) == figures_only(direct)
                and [c['id'] for c in served['consumers']] == [c['id'] for c in direct['consumers']]) and served
    served = wait_until(same, timeout=10, interval=0.1, message='/status equals stream.stats()')
    assert served['backlog'] == 0 and served['in_flight'] == 0 and served['consumers_alive'] == 1


def test_a_killed_consumer_is_reported_dead_then_restarted(store_url, serve):
    app = StreamingApp(uri=store_url)
    base = serve(app)
    child = app.start_streaming(count_consumer, 'jobs', restart_backoff=1.5)
    stream = mb.stream('jobs', url=store_url)
    stream.append([{'i': i} for i in range(3)])
    wait_until(lambda: processed(base, 'jobs', 3), timeout=20, interval=0.1, message='3 processed')
    first = child.pid

    os.kill(first, signal.SIGKILL)
    stream.append([{'i': i} for i in range(3, 7)])  # appended while no consumer runs
    dead = wait_until(lambda: (lambda e: e if not e['alive'] else None)(
        consumer_entry(get_status(base), 'count_consumer')), timeout=5, interval=0.02,
        message='/status reports the killed consumer dead')
    assert (dead['pid'], dead['exitcode'], dead['state'], dead['restarts']) == \
        (first, -signal.SIGKILL, 'restarting', 0)

    again = wait_until(lambda: (lambda e: e if e['alive'] and e['restarts'] == 1 else None)(
        consumer_entry(get_status(base), 'count_consumer')), timeout=10, interval=0.05,
        message='/status reports the consumer restarted')
    assert again['pid'] != first and again['last_exitcode'] == -signal.SIGKILL and again['state'] == 'running'
    assert again['pids'] == [first, again['pid']]
    # the restarted child processes what arrived while none ran; the dead one's count stays in the figures
    status = wait_until(lambda: processed(base, 'jobs', 7), timeout=20, interval=0.1, message='7 processed')
    assert status['streams']['jobs']['backlog'] == 0

    app.stop(timeout=10)
    assert all(gone(pid) for pid in (first, again['pid']))
    entry = consumer_entry(get_status(base), 'count_consumer')
    assert (entry['alive'], entry['state'], entry['exitcode'], entry['restarts']) == (False, 'stopped', 0, 1)


def test_stop_lets_the_window_in_flight_finish_and_leaves_no_child(store_url, serve):
    app = StreamingApp(uri=store_url)
    base = serve(app)
    # streams=: shown at once (found by itself only after the child's first report)
    child = app.start_streaming(count_consumer, 'slow', slow=1.0, streams=['slow'])
    stream = mb.stream('slow', url=store_url)
    stream.append({'i': 0})
    wait_until(lambda: get_status(base)['streams']['slow']['in_flight'] == 1, timeout=20,
               interval=0.05, message='the window is in flight')

    app.stop(timeout=20)
    assert child.exitcode == 0 and gone(child.pid)  # SIGTERM: a graceful stop, not a kill
    stats = stream.stats()
    assert (stats['processed'], stats['backlog'], stats['in_flight']) == (1, 0, 0)
    assert [c['state'] for c in stats['consumers']] == ['stopped']  # the consumer's own last report


def test_consumers_stop_when_the_app_process_dies(tmp_path):
    url = 'sqlite:///' + str(tmp_path / 'orphans.db')
    script = ('import sys, time; sys.path.insert(0, sys.argv[1]); from tests.test_app import count_consumer; '
              'from minibatch.contrib.apps import StreamingApp; app = StreamingApp(uri=sys.argv[2]); '
              'print(app.start_streaming(count_consumer, "orphans").pid, flush=True); time.sleep(120)')
    app = subprocess.Popen([sys.executable, '-c', script, ROOT, url], stdout=subprocess.PIPE, text=True)
    try:
        child = int(app.stdout.readline())
        stream = mb.stream('orphans', url=url)
        wait_until(lambda: stream.stats()['consumers_alive'] == 1, timeout=20, message='the consumer runs')
    finally:
        app.kill()  # no stop(), no atexit: the child must notice by itself
        app.wait()
    wait_until(lambda: gone(child), timeout=15, message='the orphaned consumer exits')
    assert [c['state'] for c in stream.stats()['consumers']] == ['stopped']  # it stopped gracefully


def test_a_module_that_starts_its_consumer_at_import_starts_it_once(tmp_path, monkeypatch):
    # the gunicorn style: the child imports the module again to find the function, and must not
    # start a consumer of its own from there (a chain of children without end)
    url = 'sqlite:///' + str(tmp_path / 'module.db')
    monkeypatch.setenv('APP_MODULE_URL', url)
    monkeypatch.delitem(sys.modules, 'tests.app_module', raising=False)
    module = importlib.import_module('tests.app_module')
    try:
        stream = mb.stream('app-module', url=url)
        stream.append([{'i': i} for i in range(3)])
        wait_until(lambda: (lambda s: s['backlog'] == 0 and s['in_flight'] == 0)(stream.stats()), timeout=20,
                   message='the module consumer processed the messages')
        assert children_of(module.child.pid) == []
        assert [c['pid'] for c in stream.stats()['consumers']] == [module.child.pid]
    finally:
        module.app.stop(timeout=10)
        sys.modules.pop('tests.app_module', None)


def test_a_child_ignoring_sigterm_is_killed_after_the_grace_period(tmp_path, serve):
    app = StreamingApp()
    base = serve(app)
    ready = tmp_path / 'ready'
    child = app.start_streaming(stubborn_consumer, str(ready))
    wait_until(ready.exists, timeout=20, message='the child ignores SIGTERM')
    begun = time.monotonic()
    app.stop(timeout=0.5)
    assert time.monotonic() - begun < 5
    assert child.exitcode == -signal.SIGKILL and gone(child.pid)
    entry = consumer_entry(get_status(base), 'stubborn_consumer')
    assert (entry['state'], entry['alive'], entry['exitcode']) == ('stopped', False, -signal.SIGKILL)


def test_gives_up_after_max_restarts_and_says_so(serve):
    app = StreamingApp()
    base = serve(app)
    app.start_streaming(crashing_consumer, max_restarts=2, restart_backoff=0.05)
    app.start_streaming(crashing_consumer, restart=False, name='once')

    def given_up():
        status = get_status(base)
        states = [entry['state'] for entry in status['consumers']]
        return status if states == ['dead', 'dead'] else None
    status = wait_until(given_up, timeout=30, interval=0.05, message='both consumers given up')
    retried, once = consumer_entry(status, 'crashing_consumer'), consumer_entry(status, 'once')
    assert (retried['restarts'], len(retried['pids']), retried['exitcode'], retried['alive']) == (2, 3, 1, False)
    assert (once['restarts'], len(once['pids']), once['exitcode']) == (0, 1, 1)
    assert status['ok'] is False


def test_status_picks_streams_by_query(store_url, serve):
    mb.stream('a', url=store_url).append([{'i': i} for i in range(3)])
    mb.stream('b', url=store_url).append({'i': 0})
    # an app without consumers (e.g. a status-only web process) shows every stream
    everything = get_status(serve(StreamingApp(uri=store_url, name='all')))
    assert sorted(everything['streams']) == ['a', 'b']
    assert everything['streams']['a']['backlog'] == 3 and everything['consumers'] == []

    base = serve(StreamingApp(uri=store_url, streams=['a']))
    assert list(get_status(base)['streams']) == ['a']
    assert list(get_status(base, '?stream=b')['streams']) == ['b']
    assert sorted(get_status(base, '?stream=a&stream=b')['streams']) == ['a', 'b']
    served = get_status(base, '?all=1')['streams']
    assert sorted(served) == ['a', 'b']
    assert served['b'] == plain(mb.stream('b', url=store_url).stats())


def test_status_answers_503_while_the_store_is_unreachable(serve):
    with socket.socket() as probe:  # a loopback port nobody listens on
        probe.bind(('127.0.0.1', 0))
        port = probe.getsockname()[1]
    base = serve(StreamingApp(uri=f'mongodb://127.0.0.1:{port}/nowhere', streams=['a']))
    with pytest.raises(urllib.error.HTTPError) as failed:
        urllib.request.urlopen(base + '/status', timeout=30)
    assert failed.value.code == 503
    body = json.load(failed.value)
    assert body['ok'] is False and body['consumers'] == [] and 'store unavailable' in body['error']


def test_attaches_to_an_existing_flask_app(serve):
    server = flask.Flask('host')

    @server.route('/')
    def home():
        return 'home'
    app = StreamingApp(server=server, url_prefix='/mb')

    @app.route('/extra')
    def extra():
        return 'extra'
    assert app.wsgi is server
    base = serve(app)
    with urllib.request.urlopen(base + '/', timeout=10) as response:
        assert response.read() == b'home'
    with urllib.request.urlopen(base + '/extra', timeout=10) as response:
        assert response.read() == b'extra'
    assert get_status(base + '/mb')['app'] == 'minibatch'


def test_consumers_that_cannot_run_in_a_child_are_refused_at_once():
    app = StreamingApp()
    with pytest.raises(ConfigurationError, match='picklable'):
        app.start_streaming(count_consumer, threading.Lock())
    with pytest.raises(ConfigurationError, match='max_restarts'):
        app.start_streaming(count_consumer, 's', max_restarts=-1)
    with pytest.raises(ConfigurationError, match='callable'):
        app.start_streaming('not a function')
    assert app.consumers == []


def test_omegaml_flavour_with_an_explicit_uri(mongo_url, serve):
    from minibatch.contrib.apps.omegaml import StreamingApp as OmegaApp
    app = OmegaApp(uri=mongo_url)
    assert app.url == mongo_url
    base = serve(app)
    app.start_streaming(count_consumer, 'omega')
    mb.stream('omega', url=mongo_url).append([{'i': i} for i in range(5)])
    wait_until(lambda: processed(base, 'omega', 5), timeout=20, interval=0.1, message='5 processed')

    # omegaml is imported only for the default URL (it takes seconds): checked in fresh interpreters
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, os.environ.get('PYTHONPATH', '')]),
               OMEGA_MONGO_URL=mongo_url)
    explicit = ('import sys; from minibatch.contrib.apps.omegaml import StreamingApp; '
                'app = StreamingApp(uri="sqlite:///unused.db"); print(app.url, "omegaml" in sys.modules)')
    out = subprocess.run([sys.executable, '-c', explicit], env=env, capture_output=True, text=True, timeout=60)
    assert out.stdout.split() == ['sqlite:///unused.db', 'False'], out.stderr
    # the default, as 0.6 and omega|ml itself connect: with authSource=admin
    default = 'from minibatch.contrib.apps.omegaml import StreamingApp; print(StreamingApp().url)'
    out = subprocess.run([sys.executable, '-c', default], env=env, capture_output=True, text=True, timeout=60)
    assert out.stdout.split()[-1:] == [mb.authenticated_url(mongo_url)], out.stderr


# -- programs written for minibatch 0.6 (docs/compatibility.rst) ---------------
def fake_om(url):
    """What 0.6's ``start_streaming(on=om)`` reads of an omega|ml instance: ``om.defaults.OMEGA_MONGO_URL``."""
    return types.SimpleNamespace(defaults=types.SimpleNamespace(OMEGA_MONGO_URL=url))


def legacy_consumer(url=None):
    """A consumer as 0.6 documented them: called with the store's url, @streaming blocks."""
    @mb.streaming('legacy-in', url=url, size=1, emitter=QuickReports, executor='inline')
    def processing(window):
        mb.stream('legacy-out', url=url).append(window.data)


def test_a_06_streaming_app_program_runs_unchanged(store_url):
    from minibatch.contrib.apps.omegaml import StreamingApp as OmegaApp
    om = fake_om(store_url)

    # 0.6's documented create_app, with on= naming the omega|ml instance
    def create_app(server=None, uri=None, **kwargs):
        app = OmegaApp(server=server, uri=uri)

        @app.route('/')
        def index():
            return str(mb.stream('legacy-out', url=store_url).stats()['backlog'])

        app.server.register_blueprint(app)
        app.start_streaming(legacy_consumer, on=om)
        return app

    app = create_app(server=True, uri='/stream')
    try:
        # the store is on's, with authSource=admin added to a MongoDB URL as 0.6 did
        assert app.url == (mb.authenticated_url(store_url) if store_url.startswith('mongodb') else store_url)
        (child,) = app.consumers
        mb.stream('legacy-in', url=store_url).append([{'i': i} for i in range(5)])
        client = app.server.test_client()
        wait_until(lambda: client.get('/stream/').data == b'5', timeout=20, interval=0.1,
                   message='the consumer wrote the 5 messages it was given')

        def reported():
            response = client.get('/stream/status')
            assert response.status_code == 200 and response.is_json
            figures = response.get_json()['streams'].get('legacy-in')
            return response.get_json() if figures and figures['processed'] == 5 else None
        status = wait_until(reported, timeout=20, interval=0.1, message='/stream/status reports 5 processed')
        entry = consumer_entry(status, 'legacy_consumer')
        assert (entry['pid'], entry['state'], entry['streams'], status['ok']) == \
            (child.pid, 'running', ['legacy-in'], True)
        assert client.get('/status').status_code == 404  # uri is the prefix of every route of the app
    finally:
        app.stop(timeout=10)
    assert child.exitcode == 0 and gone(child.pid)


def test_the_06_calling_forms(tmp_path):
    from minibatch.contrib.apps.omegaml import StreamingApp as OmegaApp
    url = 'sqlite:///' + str(tmp_path / 'forms.db')
    om = fake_om(url)
    seen = []

    def record(url=None, *args):
        seen.append((url, *args))
        return 'returned'

    # consumer= and import_name= at construction; debug=True calls the consumer here, with the url;
    # start and _start_consumer are start_streaming; on and debug positionally as 0.6's signature allows
    app = OmegaApp(consumer=record, import_name=__name__, server=True)
    assert app.server.import_name == __name__ and app.consumer is record
    assert app.start_streaming(on=om, debug=True) == 'returned'
    app.start(on=om, debug=True)
    app._start_consumer(None, om, True)
    assert seen == [(url,)] * 3 and app.consumers == [] and app.url == url

    # stop_streaming (and _stop_consumer) end the children as stop() does
    child = app.start(count_consumer, 'forms', on=om)
    wait_until(lambda: child.alive and mb.stream('forms', url=url).stats()['consumers_alive'] == 1,
               timeout=20, message='the child consumes')
    app.stop_streaming(timeout=10)
    app._stop_consumer()
    assert child.exitcode == 0 and gone(child.pid)

    # run_server is run: Flask's server (no reloader), then the consumers are stopped
    calls = []
    app.server.run = lambda *args, **kwargs: calls.append(kwargs)
    app.run_server('0.0.0.0', 8123)
    assert calls == [{'host': '0.0.0.0', 'port': 8123, 'debug': None, 'use_reloader': False}]

    # register_blueprint: harmless on app.server, registers /status on another Flask app
    app.server.register_blueprint(app)
    other = flask.Flask('other')
    other.register_blueprint(app, url_prefix='/mb')
    assert other.test_client().get('/mb/status').get_json()['app'] == 'minibatch'

    # uri: a URL prefix, or (with ://) a store URL; url= is the store URL
    assert OmegaApp(uri=url).url == url
    prefixed = OmegaApp(uri='/p', url=url, name='prefixed')
    assert (prefixed.url, prefixed.server.test_client().get('/p/status').status_code) == (url, 200)
    with pytest.raises(ConfigurationError, match='two store URLs'):
        OmegaApp(uri=url, url='sqlite:///other.db')
    with pytest.raises(ConfigurationError, match='two URL prefixes'):
        OmegaApp(uri='/a', url_prefix='/b')

    # the plain app: the same, without on=; a Flask app as first argument is the server (the earlier signature)
    plain_app = StreamingApp(server=True, uri='/p', url=url)
    assert plain_app.server.test_client().get('/p/status').status_code == 200
    with pytest.raises(ConfigurationError, match='omega'):
        plain_app.start_streaming(record, on=om)
    server = flask.Flask('mine')
    assert StreamingApp(server, url=url).server is server


def test_the_06_program_does_not_import_omegaml():
    # omega|ml's import takes seconds: with on= (or url=) it is never needed; checked in a fresh interpreter
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, os.environ.get('PYTHONPATH', '')]))
    script = ('import sys, types; from minibatch.contrib.apps.omegaml import StreamingApp; '
              'om = types.SimpleNamespace(defaults=types.SimpleNamespace(OMEGA_MONGO_URL="sqlite:///o.db")); '
              'app = StreamingApp(server=True, uri="/stream"); app.server.register_blueprint(app); '
              'print(app.start_streaming(lambda url: url, on=om, debug=True), "omegaml" in sys.modules)')
    out = subprocess.run([sys.executable, '-c', script], env=env, capture_output=True, text=True, timeout=60)
    assert out.stdout.split() == ['sqlite:///o.db', 'False'], out.stderr
