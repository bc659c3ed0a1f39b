"""The MongoDB connection drops for a while: consumers wait it out and lose nothing.

Starts its own MongoDB-wire server (SecantusDB) so that it can stop and
restart it under a running consumer.
"""
import os
import socket
import subprocess
import sys
import threading
import time

import pytest

import minibatch as mb
from tests.conftest import require_module, require_mongo
from tests.helpers import free_port, wait_until


class WireServer:
    """A SecantusDB server on loopback that the test can stop and start again on the same data."""

    def __init__(self, path):
        self.path = str(path)
        self.port = free_port()
        self.proc = None

    @property
    def url(self):
        return f'mongodb://127.0.0.1:{self.port}/droptest?retryWrites=false'

    def start(self):
        # an empty config file of its own: else the server reads any secantusd.toml in ., ~/.secantus or /etc
        config = self.path + '-config.toml'
        open(config, 'w').close()
        self.proc = subprocess.Popen([sys.executable, '-m', 'secantus', '--config', config, '--host', '127.0.0.1',
                                      '--port', str(self.port), '--storage-path', self.path, '--log-level', 'WARNING'],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_until(self._answers, timeout=60, interval=0.2, message='the server to answer')

    def _answers(self):
        try:
            with socket.create_connection(('127.0.0.1', self.port), timeout=0.5):
                return True
        except OSError:
            return False

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture
def server(tmp_path):
    require_mongo()  # same rule as every MongoDB test: skipped on a laptop without it, required in CI
    require_module('secantus', 'pip install --pre secantusdb')
    wire = WireServer(tmp_path / 'data')
    wire.start()
    yield wire
    wire.stop()


def test_consumer_survives_database_outage(server):
    stream = mb.stream('outage', url=server.url, serverSelectionTimeoutMS=1000)
    seen = []
    lock = threading.Lock()

    def work(window):
        time.sleep(0.2)  # slow enough that the outage hits windows in flight
        with lock:
            seen.extend(m['i'] for m in window.data)

    em = mb.streaming('outage', size=5, url=server.url, executor='inline', blocking=False, lease=5,
                      cnx_kwargs={'serverSelectionTimeoutMS': 1000})(work)
    try:
        stream.append([{'i': i} for i in range(40)])
        wait_until(lambda: len(seen) >= 10, timeout=60, message='the first windows')
        server.stop()
        time.sleep(2)  # the outage itself: the consumer keeps trying meanwhile
        assert em.thread.is_alive(), 'the consumer survived the outage'
        server.start()
        assert len(seen) < 40, 'the outage interrupted the work'
        stream.append([{'i': i} for i in range(40, 60)])
        wait_until(lambda: set(seen) >= set(range(60)), timeout=90, message='every message, old and new')
        wait_until(lambda: stream.stats()['claimed'] == 0, timeout=30, message='the last commit')
    finally:
        em.stop()
        em.thread.join(timeout=30)
    # at least once: a window whose commit could not reach the server may run again
    assert set(seen) == set(range(60))
    stats = stream.stats()
    assert stats['available'] == stats['claimed'] == 0


def fail_point(url, **config):
    """Set a ``failCommand`` fail point on the server (mongod's test command); skip where it is off.

    scripts/test starts its server with test commands enabled and sets
    MINIBATCH_TEST_FAILPOINTS=1; there, a refusal fails the test. A real mongod
    runs them only with ``--setParameter enableTestCommands=1``.
    """
    import pymongo
    client = pymongo.MongoClient(url, serverSelectionTimeoutMS=5000)
    try:
        client.admin.command({'configureFailPoint': 'failCommand', **config})
    except pymongo.errors.OperationFailure as exc:
        if os.environ.get('MINIBATCH_TEST_FAILPOINTS') == '1':
            raise
        pytest.skip(f'the server does not run configureFailPoint (test commands off): {exc}')
    finally:
        client.close()


def test_connection_dropped_at_commit_is_retried_and_delivers_once(mongo_url):
    """The server closes the connection just as a finished window is committed (mongod's failCommand)."""
    stream = mb.stream('dropped', url=mongo_url)
    store = stream.store
    failures = []
    commit = store.commit

    def watched_commit(*args, **kwargs):
        try:
            return commit(*args, **kwargs)
        except store.transient_errors as exc:
            failures.append(exc)
            raise
    store.commit = watched_commit
    seen = []
    stream.append([{'i': i} for i in range(6)])
    # the next 'delete' (the first commit: keep=False deletes) finds its connection closed
    fail_point(mongo_url, mode={'times': 1}, data={'failCommands': ['delete'], 'closeConnection': True})
    try:
        em = mb.make_emitter('dropped', lambda window: seen.extend(m['i'] for m in window.data), size=2,
                             url=mongo_url, executor='inline', lease=30)
        thread = threading.Thread(target=em.run)
        thread.start()
        try:
            wait_until(lambda: stream.stats()['available'] == stream.stats()['claimed'] == 0, timeout=60,
                       message='every window committed')
        finally:
            em.stop()
            thread.join(30)
    finally:
        fail_point(mongo_url, mode='off')
        del store.commit
    assert failures, 'the fail point closed the connection of a commit'
    assert sorted(seen) == list(range(6)), 'each message delivered once: the commit was retried, not lost'
    assert em.stats['processed'] == 6 and em.stats['failed'] == 0


def test_a_consumer_started_while_its_first_commands_lose_the_connection_waits_it_out(mongo_url):
    """The server closes the connection of the consumer's first index command (as during a restart): it retries."""
    stream = mb.stream('late-start', url=mongo_url)
    stream.append([{'i': i} for i in range(4)])
    seen, died = [], []
    # a store object of its own (other client options): it makes its indexes when it first connects
    em = mb.make_emitter('late-start', lambda window: seen.extend(m['i'] for m in window.data), size=2,
                         url=mongo_url, executor='inline', cnx_kwargs={'appname': 'late-start'})

    def run():
        try:
            em.run()
        except BaseException as exc:  # noqa: BLE001 - the test reports it
            died.append(exc)
    fail_point(mongo_url, mode={'times': 1}, data={'failCommands': ['createIndexes'], 'closeConnection': True})
    try:
        thread = threading.Thread(target=run)
        thread.start()
        try:
            wait_until(lambda: sorted(seen) == list(range(4)) or died, timeout=60, message='every message delivered')
        finally:
            em.stop()
            thread.join(30)
    finally:
        fail_point(mongo_url, mode='off')
    assert not died, f'the consumer died at start: {died[0]!r}'
    assert sorted(seen) == list(range(4))
