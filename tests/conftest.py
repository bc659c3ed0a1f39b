"""Shared fixtures: every store-facing test runs once per store.

The MongoDB store is tested against the server named by ``MINIBATCH_MONGO_URL``
(the test command starts a MongoDB-wire server on loopback and sets it). Without
it MongoDB tests are skipped on a laptop, but fail under ``CI=true``: a green CI
run must have exercised the real server.
"""
import importlib
import os
import uuid

import pytest

# Captured, then removed, so that the store the library picks by default inside
# the tests is decided by each test (explicit url= or the embedded default),
# never by the developer's shell.
# (kept under a private name too, so that importing this module again, e.g.
# ``from tests.conftest import require_mongo``, still sees it)
MONGO_URL = os.environ.get('MINIBATCH_MONGO_URL') or os.environ.get('_MINIBATCH_TEST_MONGO_URL')
if MONGO_URL:
    os.environ['_MINIBATCH_TEST_MONGO_URL'] = MONGO_URL
for _var in ('MINIBATCH_URL', 'MINIBATCH_MONGO_URL', 'MONGO_URL'):
    os.environ.pop(_var, None)

STORES = ['sqlite', 'mongodb']


def mongo_test_url(dbname):
    """MINIBATCH_MONGO_URL with the database replaced by ``dbname`` (query string kept)."""
    base, _, query = MONGO_URL.partition('?')
    scheme, _, rest = base.partition('://')
    hosts = rest.split('/', 1)[0]
    params = [p for p in query.split('&') if p]
    if not any(p.lower().startswith('retrywrites=') for p in params):
        params.append('retryWrites=false')  # see DESIGN.md §4: the wire server slows down with retryable writes
    return f'{scheme}://{hosts}/{dbname}?' + '&'.join(params)


def under_ci():
    """True when the tests run under CI (``CI=true``): a missing server or package then fails."""
    return os.environ.get('CI', '').lower() in ('1', 'true', 'yes')


def require_module(name, install):
    """Import and return module ``name``; skip without it (also at module level), fail under CI.

    ``install`` says how to get it, e.g. ``pip install 'minibatch[kafka]'``. Unlike
    ``pytest.importorskip``, a green CI run cannot have skipped an integration
    because its package was missing.
    """
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        if under_ci():
            pytest.fail(f'{name} is not installed under CI ({install}; scripts/test installs it): {exc}',
                        pytrace=False)
        pytest.skip(f'{name} is not installed ({install})', allow_module_level=True)


def require_mongo():
    if not MONGO_URL:
        if under_ci():
            pytest.fail('MINIBATCH_MONGO_URL is not set under CI: run the tests with scripts/test')
        pytest.skip('MINIBATCH_MONGO_URL not set (scripts/test starts a server and sets it)')


def require_service(var, what):
    """The address of a test server from ``var``; skip (or fail under CI) without it.

    scripts/test starts every server on loopback and exports its address:
    MINIBATCH_TEST_KAFKA (host:port of the tansu broker), MINIBATCH_TEST_MQTT
    (mqtt://host:port of mosquitto), MINIBATCH_TEST_REDIS (redis://host:port/0).
    """
    value = os.environ.get(var)
    if not value:
        if under_ci():
            pytest.fail(f'{var} is not set under CI: run the tests with scripts/test, which starts {what}')
        pytest.skip(f'{var} not set (scripts/test starts {what} and sets it)')
    return value


@pytest.fixture
def kafka_bootstrap():
    """host:port of the Kafka-protocol test broker (tansu)."""
    return require_service('MINIBATCH_TEST_KAFKA', 'a tansu Kafka broker')


@pytest.fixture
def mqtt_url():
    """mqtt://host:port of the mosquitto test broker."""
    return require_service('MINIBATCH_TEST_MQTT', 'mosquitto')


@pytest.fixture
def redis_url():
    """redis://host:port/0 of the Redis test server (Celery's broker)."""
    return require_service('MINIBATCH_TEST_REDIS', 'redis-server')


@pytest.fixture(autouse=True)
def isolated_home(tmp_path, monkeypatch):
    """The embedded default store lives in the test's own folder, never in ~/.local/share."""
    monkeypatch.setenv('MINIBATCH_HOME', str(tmp_path / 'mbhome'))
    yield
    from minibatch.store import reset_stores
    reset_stores()


@pytest.fixture
def mongo_url():
    """A URL of a fresh MongoDB database on the test server, dropped afterwards."""
    require_mongo()
    dbname = 'mbtest_' + uuid.uuid4().hex[:12]
    yield mongo_test_url(dbname)
    import pymongo
    client = pymongo.MongoClient(MONGO_URL, serverSelectionTimeoutMS=5000)
    try:
        client.drop_database(dbname)
    finally:
        client.close()


@pytest.fixture(params=STORES)
def store_url(request, tmp_path):
    """The URL of an empty store, once per store kind."""
    if request.param == 'sqlite':
        yield 'sqlite:///' + str(tmp_path / 'store.db')
    else:
        yield request.getfixturevalue('mongo_url')


@pytest.fixture
def store(store_url):
    """An empty store object, once per store kind."""
    from minibatch.store import get_store
    store = get_store(store_url)
    if hasattr(store, 'groups_ttl'):
        # registering a named group waits this long (MongoDB): the in-process contract tests have no other
        # process whose commits must learn of it; tests with consumer processes keep the default
        store.groups_ttl = 0.01
    yield store
