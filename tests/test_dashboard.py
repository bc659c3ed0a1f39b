"""The dashboard: its JSON API and actions over real HTTP, its safety, its history, and its pages in Chromium.

The browser tests drive Debian's chromium (/usr/bin/chromium, which
scripts/test installs) with Playwright, one browser for the module; they
skip only when that browser is missing in a run without services
(MB_NO_SERVICES=1), and fail otherwise.
"""
import datetime
import json
import os
import signal
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request
import uuid

import pytest

import minibatch as mb
from minibatch.dashboard import Dashboard, create_app
from minibatch.dashboard.history import STATUS_PATH, History
from minibatch.dashboard.serving import BackgroundServer
from minibatch.errors import ConfigurationError

from tests.conftest import require_module
from tests.helpers import default_sigint, wait_until

require_module('flask', "pip install 'minibatch[apps]'")
CHROMIUM = '/usr/bin/chromium'
CHROMIUM_ARGS = ['--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update',
                 '--disable-sync', '--no-first-run']


def call(url, method='GET', body=None, headers=None):
    """``(status, parsed JSON or text)`` of one HTTP request to ``url``."""
    data = body if body is None or isinstance(body, bytes) else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method, headers=dict(headers or {}))
    if data is not None:
        request.add_header('Content-Type', 'application/json')
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            status, raw, kind = response.status, response.read().decode(), response.headers['Content-Type']
    except urllib.error.HTTPError as exc:
        status, raw, kind = exc.code, exc.read().decode(), exc.headers['Content-Type']
    return status, json.loads(raw) if kind.startswith('application/json') else raw


@pytest.fixture
def serve():
    """``serve(url, **options)``: the dashboard of store ``url`` on a free loopback port; its root URL."""
    servers = []

    def start(url, **options):
        options.setdefault('sample', False)
        servers.append(BackgroundServer(create_app(url, **options)))
        return servers[-1].url
    yield start
    for server in servers:
        server.stop()


def dead_stream(url, name='orders', letters=3, waiting=2):
    stream = mb.stream(name, url=url)
    stream.append([{'n': n} for n in range(waiting)])
    for n in range(letters):
        stream.reject({'bad': n}, f'ValueError: bad {n}')
    return stream


# -- API and actions ------------------------------------------------------------
def test_overview_lists_every_stream_with_its_figures(store_url, serve):
    orders = dead_stream(store_url)
    base = serve(store_url)
    status, body = call(base + 'api/overview')
    assert status == 200 and body['mode'] == 'read-only'
    (row,) = body['streams']
    stats = orders.stats()
    assert row['name'] == 'orders'
    assert {k: row[k] for k in ('backlog', 'in_flight', 'processed', 'failed', 'dead', 'rate', 'consumers_alive')} \
        == {k: stats[k] for k in ('backlog', 'in_flight', 'processed', 'failed', 'dead', 'rate', 'consumers_alive')}
    assert row['oldest_age'] >= 0 and len(row['history']) == 1
    mb.stream('later', url=store_url).append({'x': 1})  # created after the dashboard started
    assert [s['name'] for s in call(base + 'api/overview')[1]['streams']] == ['later', 'orders']
    status, body = call(base + 'api/streams/orders')
    assert status == 200 and [m['data'] for m in body['dead_letters']] == [{'bad': 0}, {'bad': 1}, {'bad': 2}]
    assert body['dead_letters'][0]['error'] == 'ValueError: bad 0' and body['figures']['backlog'] == 2
    assert call(base + 'api/streams/nope') == (404, {'error': "no stream named 'nope'"})


def test_requeue_and_purge_one_or_all(store_url, serve):
    orders = dead_stream(store_url, letters=4)
    base = serve(store_url, allow_write=True)
    api = base + 'api/streams/orders/dead-letters/'
    ids = [m['id'] for m in call(base + 'api/streams/orders')[1]['dead_letters']]
    assert call(api + 'requeue', 'POST', {'ids': [ids[0]]}) == (200, {'requeued': 1, 'stream': 'orders'})
    assert orders.stats()['backlog'] == 3 and orders.stats()['dead'] == 3
    # an unknown id changes nothing, and says which
    status, body = call(api + 'purge', 'POST', {'ids': [ids[1], ids[0]]})
    assert status == 404 and body['unknown'] == [str(ids[0])] and orders.stats()['dead'] == 3
    assert call(api + 'purge', 'POST', {'ids': [str(ids[1])]}) == (200, {'purged': 1, 'stream': 'orders'})
    assert call(api + 'requeue', 'POST') == (200, {'requeued': 2, 'stream': 'orders'})  # no body: all
    assert orders.stats()['backlog'] == 5 and orders.stats()['dead'] == 0
    for bad in (b'{not json', {'ids': 'x'}, {'ids': [True]}, {'other': 1}, [1]):
        status, body = call(api + 'purge', 'POST', bad)
        assert status == 400 and 'ids' in body['error'] or 'JSON' in body['error'], body
    assert call(base + 'api/streams/nope/dead-letters/purge', 'POST')[0] == 404


def test_writes_are_refused_unless_allowed(tmp_path, serve):
    url = 'sqlite:///' + str(tmp_path / 's.db')
    orders = dead_stream(url)
    read_only = serve(url) + 'api/streams/orders/dead-letters/'
    for action in ('requeue', 'purge'):
        status, body = call(read_only + action, 'POST', {'ids': []})
        assert status == 403 and '--allow-write' in body['error']
        status, body = call(read_only + action)
        assert status == 405 and 'POST' in body['error']
    assert orders.stats()['dead'] == 3
    writable = serve(url, allow_write=True) + 'api/streams/orders/dead-letters/'
    status, body = call(writable + 'purge', 'POST', headers={'Origin': 'http://evil.example'})
    assert status == 403 and 'cross-origin' in body['error'] and orders.stats()['dead'] == 3
    # a name that resolves to 127.0.0.1 (DNS rebinding) is not localhost: refused without a token
    status, body = call(writable + 'purge', 'POST', headers={'Host': 'evil.example:80'})
    assert status == 403 and 'localhost' in body['error'] and orders.stats()['dead'] == 3
    with_token = serve(url, token='s3cret-token') + 'api/streams/orders/dead-letters/'
    assert call(with_token + 'requeue', 'POST')[0] == 403
    assert call(with_token + 'requeue', 'POST', headers={'Authorization': 'Bearer wrong-token'})[0] == 403
    assert orders.stats()['dead'] == 3
    assert call(with_token + 'requeue', 'POST', headers={'Authorization': 'Bearer s3cret-token'})[1]['requeued'] == 3
    status, body = call(with_token.replace('api/streams/orders/dead-letters/', 'api/overview'))
    assert body['mode'] == 'token' and 's3cret' not in json.dumps(body)


def test_a_stream_name_with_a_slash_and_spaces(tmp_path, serve):
    url = 'sqlite:///' + str(tmp_path / 's.db')
    stream = dead_stream(url, name='shop/eu orders', letters=1)
    base = serve(url, allow_write=True)
    quoted = urllib.parse.quote('shop/eu orders', safe='')
    status, page = call(base + 'streams/' + quoted)
    assert status == 200 and 'data-stream="shop/eu orders"' in page
    assert call(base + 'api/streams/' + quoted)[1]['name'] == 'shop/eu orders'
    assert call(base + f'api/streams/{quoted}/dead-letters/requeue', 'POST')[1]['requeued'] == 1
    assert stream.stats()['backlog'] == 3


def grouped(url, name='orders'):
    """Stream ``name``: 4 messages; group 'billing' copied them and holds one in flight, group 'audit' copied none."""
    stream = mb.stream(name, url=url)
    stream.append([{'n': n} for n in range(4)])
    store = stream.store
    store.register_group(name, 'billing')
    store.register_group(name, 'audit')
    assert store.pull(name, 'billing', 1000) == 4
    copy = store.find_available(f'{name}[billing]', limit=1)[0]
    store.claim(f'{name}[billing]', [copy.id], 'token-1', 60)
    return stream


def test_stream_api_lists_the_groups_of_stream_stats(store_url, serve):
    orders = grouped(store_url)
    mb.stream('plain', url=store_url).append({'x': 1})
    base = serve(store_url)
    status, body = call(base + 'api/streams/orders')
    assert status == 200
    stats = orders.stats()['groups']
    assert [row['group'] for row in body['groups']] == ['audit', 'billing']
    for row in body['groups']:
        figures = stats[row['group']]
        for key in ('lag', 'in_flight', 'dead', 'consumers_alive', 'start', 'keep'):
            assert row[key] == figures[key], (row['group'], key)
        assert 0 <= row['lag_seconds'] <= figures['lag_seconds'] + 0.01
    assert body['groups'][1]['in_flight'] == 1 and body['groups'][0]['lag'] == 4
    assert call(base + 'api/streams/plain')[1]['groups'] == []
    status, page = call(base + 'streams/orders')
    assert status == 200 and 'id="groups"' in page and 'id="groups-section" hidden' in page


def test_streaming_app_status_has_the_groups(tmp_path):
    from minibatch.contrib.apps import StreamingApp
    url = 'sqlite:///' + str(tmp_path / 'app.db')
    orders = grouped(url)
    app = StreamingApp(url=url, streams=['orders'])
    try:
        with BackgroundServer(app.server) as server:
            status, body = call(server.url + 'status')
    finally:
        app.stop()
    assert status == 200
    groups = body['streams']['orders']['groups']
    stats = orders.stats()['groups']
    assert set(groups) == {'audit', 'billing'}
    assert {g: f['lag'] for g, f in groups.items()} == {g: f['lag'] for g, f in stats.items()}
    assert groups['billing']['in_flight'] == 1 and groups['billing']['start'] == 'earliest'


def test_bad_options_are_refused():
    for options in ({'refresh': 0}, {'windows': -1}, {'letters': 'all'}, {'token': 'short'}):
        with pytest.raises(ConfigurationError):
            Dashboard('sqlite:///x.db', **options)
    for interval, span in ((0, 60), (60, 30), (float('nan'), 60)):
        with pytest.raises(ConfigurationError):
            History(interval, span)


# -- history ----------------------------------------------------------------------
def test_history_is_sampled_bounded_and_kept_in_the_store(store_url, serve):
    stream = mb.stream('hist', url=store_url)
    store = stream.store
    history = History(interval=10, span=50)  # at most 6 samples, one per 10 s
    start = datetime.datetime(2030, 1, 1)
    for second in range(0, 115, 5):  # a sample is due every other call, up to 110 s
        now = start + datetime.timedelta(seconds=second)
        samples = history.record(store, store.get_stream('hist'), {'backlog': second, 'rate': 1.5}, now)
    assert len(samples) == history.limit == 6
    assert [s[1] for s in samples] == [60, 70, 80, 90, 100, 110] and samples[-1][2] == 1.5
    assert store.get_stream('hist').status['dashboard']['history'] == samples
    # the overview samples too, and another dashboard on the same store (a restart) draws the same samples
    base = serve(store_url)
    live = call(base + 'api/overview')[1]['streams'][0]['history']
    assert len(live) == 1 and live[0][1:] == [0, 0]  # samples from the future (2030) are dropped
    assert call(serve(store_url) + 'api/streams/hist')[1]['history'] == live
    # a damaged entry draws an empty chart, not an error
    store.set_status('hist', STATUS_PATH, [['x'], 'y', [1, 2]])
    assert call(base + 'api/streams/hist')[1]['history'] == []


def test_the_sampler_writes_history_without_a_viewer(tmp_path):
    url = 'sqlite:///' + str(tmp_path / 's.db')
    stream = mb.stream('quiet', url=url)
    dashboard = Dashboard(url, history=History(interval=0.05, span=60))
    dashboard.start_sampler()
    try:
        wait_until(lambda: len(stream.store.get_stream('quiet').status.get('dashboard', {}).get('history', [])) >= 2,
                   timeout=5, message='two samples by the sampler thread')
    finally:
        dashboard.stop()


# -- secrets ----------------------------------------------------------------------
@pytest.fixture
def password_url(mongo_url):
    """A URL of the MongoDB test database with a real user and password (dropped afterwards), and the password."""
    import pymongo
    db = mongo_url.split('/')[3].split('?')[0]
    password = 'Pw' + uuid.uuid4().hex
    client = pymongo.MongoClient(mongo_url, serverSelectionTimeoutMS=5000)
    client[db].command('createUser', 'dashboard-user', pwd=password, roles=[{'role': 'readWrite', 'db': db}])
    try:
        yield mongo_url.replace('mongodb://', f'mongodb://dashboard-user:{password}@') + f'&authSource={db}', password
    finally:
        client[db].command('dropUser', 'dashboard-user')
        client.close()


CLI = ('import sys; from minibatch.cli import cli; from minibatch.cli.dashboard import dashboard; '
       'cli.add_command(dashboard); cli.main(sys.argv[1:], prog_name="minibatch")')


def test_no_password_in_any_page_response_or_cli_output(password_url, tmp_path):
    url, password = password_url
    dead_stream(url)
    env = {**os.environ, 'MINIBATCH_HOME': str(tmp_path)}
    proc = subprocess.Popen([sys.executable, '-c', CLI, '--url', url, 'dashboard', '--port', '0', '--allow-write'],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            preexec_fn=default_sigint)
    try:
        first = proc.stderr.readline()
        assert first.startswith('minibatch dashboard: http://127.0.0.1:'), first
        base = first.split()[2]
        bodies = [first]
        for path in ('', 'streams/orders', 'api/overview', 'api/streams/orders', 'api/streams/nope', 'metrics',
                     'static/dashboard.js', 'api/streams/orders/dead-letters/requeue'):
            status, body = call(base + path)
            assert status in (200, 404, 405), (path, status)
            bodies.append(json.dumps(body))
        assert 'dashboard-user:***@' in json.dumps(call(base + 'api/overview')[1])
        status, body = call(base + 'api/streams/orders/dead-letters/requeue', 'POST')
        assert status == 200 and body['requeued'] == 3
    finally:
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err
    assert all(password not in text for text in bodies + [out, err])
    # the app's /status and mounted pages too
    from minibatch.contrib.apps import StreamingApp
    app = StreamingApp(url=url)
    client = app.server.test_client()
    for path in ('/status', '/dashboard/', '/dashboard/api/overview', '/metrics'):
        response = client.get(path)
        assert response.status_code == 200 and password not in response.get_data(as_text=True), path
    app.stop()


def test_an_unreachable_store_is_reported_without_its_password(serve):
    password = 'Pw' + uuid.uuid4().hex
    url = f'mongodb://someone:{password}@127.0.0.1:1/db?serverSelectionTimeoutMS=300'
    base = serve(url)
    for path in ('api/overview', 'api/streams/x', 'metrics'):
        status, body = call(base + path)
        assert status == 503 and password not in json.dumps(body) and 'someone:***@' in json.dumps(body), path
    result = subprocess.run([sys.executable, '-c', CLI, '--url', url, 'dashboard', '--port', '0'],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 1 and 'someone:***@' in result.stderr
    assert password not in result.stdout + result.stderr


def test_cli_refuses_writes_on_a_public_address_without_a_token(tmp_path):
    from click.testing import CliRunner

    from minibatch.cli.dashboard import dashboard
    from minibatch.cli.common import Settings
    result = CliRunner().invoke(dashboard, ['--host', '0.0.0.0', '--allow-write'],
                                obj=Settings('sqlite:///' + str(tmp_path / 's.db')))
    assert result.exit_code == 1 and '--token' in result.output


# -- in a real browser ------------------------------------------------------------
@pytest.fixture(scope='module')
def browser():
    """One headless Chromium (Debian's) for the module, driven by Playwright."""
    if not os.path.exists(CHROMIUM):
        if os.environ.get('MB_NO_SERVICES') == '1':
            pytest.skip(f'{CHROMIUM} is missing (MB_NO_SERVICES=1; scripts/test installs the chromium package)')
        pytest.fail(f'{CHROMIUM} is missing: scripts/test installs Debian\'s chromium package')
    sync_api = require_module('playwright.sync_api', "pip install -e '.[dev]'")
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser):
    """A fresh page; fails the test if the page logged a console error or raised."""
    context = browser.new_context(viewport={'width': 1280, 'height': 900})
    tab = context.new_page()
    errors = []
    tab.on('console', lambda message: errors.append(message.text) if message.type == 'error' else None)
    tab.on('pageerror', lambda exc: errors.append(str(exc)))
    tab.set_default_timeout(10000)
    yield tab
    context.close()
    assert errors == [], f'the page logged errors: {errors}'


def test_overview_updates_itself(tmp_path, serve, page):
    url = 'sqlite:///' + str(tmp_path / 's.db')
    orders = mb.stream('orders', url=url)
    orders.append([{'n': n} for n in range(3)])
    page.goto(serve(url, refresh=0.2))
    backlog = page.locator('tr[data-stream="orders"] td.backlog')
    backlog.filter(has_text='3').wait_for()
    page.evaluate('window.notReloaded = true')
    orders.append([{'n': n} for n in range(4)])
    backlog.filter(has_text='7').wait_for()
    mb.stream('new-stream', url=url).append({'x': 1})
    page.locator('tr[data-stream="new-stream"] td.backlog').filter(has_text='1').wait_for()
    assert page.evaluate('window.notReloaded') is True  # the same page, updated in place
    assert page.locator('tr[data-stream="orders"] td.chart svg polyline').count() == 2
    assert page.locator('#store').text_content().startswith('sqlite:///')


def test_stream_page_requeues_a_dead_letter(tmp_path, serve, page):
    url = 'sqlite:///' + str(tmp_path / 's.db')
    orders = dead_stream(url, letters=2, waiting=1)
    first = orders.dead_letters()[0].id
    page.goto(serve(url, allow_write=True, refresh=0.2) + 'streams/orders')
    letters = page.locator('#dead-letters tbody tr')
    wait_until(lambda: letters.count() == 2, message='two dead letters listed')
    assert 'ValueError: bad 0' in page.locator(f'#dead-letters tr[data-id="{first}"] td.error').text_content()
    page.locator('#figures .backlog .value').filter(has_text='1').wait_for()
    page.locator(f'#dead-letters tr[data-id="{first}"] button.requeue').click()
    page.locator(f'#dead-letters tr[data-id="{first}"]').wait_for(state='detached')
    page.locator('#figures .backlog .value').filter(has_text='2').wait_for()
    assert letters.count() == 1 and orders.stats()['backlog'] == 2 and orders.stats()['dead'] == 1
    assert 'requeued 1' in page.locator('#action-result').text_content()


def test_stream_page_asks_for_the_token_and_purges(tmp_path, serve, page):
    url = 'sqlite:///' + str(tmp_path / 's.db')
    orders = dead_stream(url, letters=2, waiting=0)
    asked = []

    def answer(dialog):
        asked.append(dialog.type)
        dialog.accept('s3cret-token') if dialog.type == 'prompt' else dialog.accept()
    page.on('dialog', answer)
    page.goto(serve(url, token='s3cret-token', refresh=0.2) + 'streams/orders')
    page.locator('#mode').filter(has_text='token').wait_for()
    wait_until(lambda: page.locator('#dead-letters tbody tr').count() == 2, message='two dead letters listed')
    page.locator('#purge-all').click()
    wait_until(lambda: page.locator('#dead-letters tbody tr').count() == 0, message='the list emptied')
    assert asked == ['confirm', 'prompt'] and orders.stats()['dead'] == 0
    assert 'purged 2' in page.locator('#action-result').text_content()


def test_stream_page_shows_the_groups(tmp_path, serve, page):
    url = 'sqlite:///' + str(tmp_path / 's.db')
    orders = grouped(url)
    mb.stream('plain', url=url).append({'x': 1})
    base = serve(url, refresh=0.2)
    page.goto(base + 'streams/orders')
    page.locator('#groups tr[data-id="audit"] td.lag').filter(has_text='4').wait_for()
    assert page.locator('#groups-section').is_visible()
    billing = page.locator('#groups tr[data-id="billing"]')
    assert billing.locator('td.in_flight').text_content() == '1'
    assert billing.locator('td.start').text_content() == 'earliest'
    assert billing.locator('td.lag').text_content() == '4'  # the copies, the one in flight among them
    orders.append({'n': 4})  # both groups lag one more
    billing.locator('td.lag').filter(has_text='5').wait_for()
    page.locator('#groups tr[data-id="audit"] td.lag').filter(has_text='5').wait_for()
    page.goto(base + 'streams/plain')
    page.locator('#figures .backlog .value').filter(has_text='1').wait_for()
    assert not page.locator('#groups-section').is_visible()
