"""CeleryEventSource against a real Celery worker on the Redis test broker.

The worker runs as a subprocess (tests/celery_tasks.py) on a queue of its own;
the sources only keep events of the tasks this test sent, so other Celery
traffic on the broker cannot confuse them. The restart test uses a
redis-server of its own on a free loopback port, to kill and start it again.
"""
import collections
import logging
import os
import shutil
import socket
import subprocess
import sys
import uuid

import pytest

import minibatch as mb
from minibatch.contrib.celery import TASK_EVENTS, CeleryEventSource
from minibatch.errors import ConfigurationError
from tests.conftest import require_module
from tests.helpers import attach, free_port, stop, wait_until

require_module('celery', "pip install 'minibatch[celery]'")
from tests.celery_tasks import make_app  # noqa: E402  (needs celery)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def start_worker(broker, queue, log):
    env = dict(os.environ, MINIBATCH_CELERY_BROKER=broker, MINIBATCH_CELERY_QUEUE=queue,
               PYTHONPATH=os.pathsep.join([ROOT, os.environ.get('PYTHONPATH', '')]))
    return subprocess.Popen(
        [sys.executable, '-m', 'celery', '-A', 'tests.celery_tasks', 'worker', '-E', '--pool=solo', '-c', '1',
         '--without-heartbeat', '--without-gossip', '--without-mingle', '-l', 'warning', '-Q', queue,
         '-n', f'{queue}@%h'],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)


def stop_worker(worker):
    if worker.poll() is None:
        worker.terminate()  # warm shutdown: the solo pool finishes its task and exits
        try:
            worker.wait(15)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait(5)


def events_by_task(stream, ids):
    """{task_id: {event type: message}} of the messages of ``stream`` about the tasks ``ids``."""
    found = collections.defaultdict(dict)
    for message in stream.buffer(processed=False):
        data = message.data
        if data['task_id'] in ids:
            found[data['task_id']][data['task_event']] = data
    return found


# -- configuration (no broker needed) -----------------------------------------------
def test_bad_arguments_are_refused():
    app = make_app('redis://127.0.0.1:1/0', 'unused')
    with pytest.raises(ConfigurationError, match='task-succeeded'):
        CeleryEventSource(app, events=['task-finished'])
    with pytest.raises(ConfigurationError, match='Celery app'):
        CeleryEventSource('not an app')
    assert CeleryEventSource(app).events == {'task-succeeded', 'task-failed'}  # 0.6's default
    assert CeleryEventSource(app, events='*').events == set(TASK_EVENTS)
    assert CeleryEventSource(app, events='task-failed').events == {'task-failed'}


# -- against a real worker ------------------------------------------------------------
def test_task_events_of_a_real_worker(redis_url, tmp_path):
    queue = 'mbtest-' + uuid.uuid4().hex[:8]
    log = open(tmp_path / 'worker.log', 'w+')
    worker = start_worker(redis_url, queue, log)  # boots while the sources connect
    app = make_app(redis_url, queue)
    every = mb.stream('celery-all')
    finished = mb.stream('celery-finished')
    try:
        source = attach(every, CeleryEventSource(app, events='*'))
        # only the outcomes; task names must still be known (from the task-received events it also saw)
        outcomes = attach(finished, CeleryEventSource(app, events=['task-succeeded', 'task-failed']))
        add, fail = app.tasks['tests.add'], app.tasks['tests.fail']
        ok = [add.delay(2, 3).id, add.apply_async((40, 2)).id]
        bad = fail.delay('boom').id
        ids = set(ok) | {bad}

        def complete():
            found = events_by_task(every, ids)
            return all({'task-received', 'task-started', 'task-succeeded'} <= set(found[i]) for i in ok) \
                and {'task-received', 'task-started', 'task-failed'} <= set(found[bad])
        try:
            wait_until(complete, timeout=30, interval=0.1, message='received/started/finished events of every task',
                       alive=[worker])
        except AssertionError as exc:
            log.seek(0)
            raise AssertionError(f'{exc}\nworker log:\n{log.read()[-3000:]}') from None
        wait_until(lambda: len(events_by_task(finished, ids)) == 3, timeout=10, message='3 outcomes')
    finally:
        stop(every, source)
        stop(finished, outcomes)
        stop_worker(worker)
        log.close()

    found = events_by_task(every, ids)
    for task_id in ok:
        events = found[task_id]
        assert {m['task_name'] for m in events.values()} == {'tests.add'}  # succeeded events carry no name
        assert events['task-received']['task_state'] == 'RECEIVED'
        assert events['task-started']['task_state'] == 'STARTED'
        done = events['task-succeeded']
        assert done['task_state'] == 'SUCCESS'
        assert isinstance(done['task_runtime'], float) and 0 <= done['task_runtime'] < 10
        assert events['task-received']['task_runtime'] is None
        assert done['task_info']['uuid'] == task_id and done['task_info']['type'] == 'task-succeeded'
        assert events['task-sent']['task_state'] == 'PENDING'  # sent by this process (task_send_sent_event)
    assert found[ok[0]]['task-succeeded']['task_info']['result'] == '5'
    failed = found[bad]['task-failed']
    assert failed['task_name'] == 'tests.fail' and failed['task_state'] == 'FAILURE'
    assert failed['task_runtime'] is None and 'boom' in failed['task_info']['exception']

    outcomes_found = events_by_task(finished, ids)
    assert {e for events in outcomes_found.values() for e in events} == {'task-succeeded', 'task-failed'}
    assert {m['task_name'] for events in outcomes_found.values() for m in events.values()} == \
        {'tests.add', 'tests.fail'}


# -- broker failures --------------------------------------------------------------------
def test_dead_broker_logs_one_line_and_stops(caplog):
    app = make_app(f'redis://127.0.0.1:{free_port()}/0', 'unused')
    stream = mb.stream('celery-dead')
    source = CeleryEventSource(app)
    source.retry_delay = 0.1
    with caplog.at_level(logging.WARNING):
        stream.attach(source)
        wait_until(lambda: source.failures >= 2, timeout=10, message='two failed attempts')
        stream.append({'still': 'usable'})
        assert [m.data for m in stream.buffer(processed=False)] == [{'still': 'usable'}]
        stop(stream, source, within=2.0)
    lines = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert lines and all(r.name == 'minibatch.contrib' for r in lines), [r.name for r in lines]
    for record in lines:
        assert '\n' not in record.getMessage() and record.exc_info is None
        assert 'Connection refused' in record.getMessage() or 'Error 111' in record.getMessage()


def redis_server_binary():
    binary = shutil.which('redis-server') or ('/usr/bin/redis-server' if os.path.exists('/usr/bin/redis-server')
                                              else None)
    if binary is None:
        if os.environ.get('CI', '').lower() in ('1', 'true', 'yes'):
            pytest.fail('redis-server is not installed under CI')
        pytest.skip('redis-server is not installed')
    return binary


def test_source_resumes_after_the_broker_restarts(tmp_path, caplog):
    """Redis killed and started again: one line per failed attempt, then events flow again."""
    binary, port = redis_server_binary(), free_port()
    command = [binary, '--port', str(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no',
               '--dir', str(tmp_path)]

    def start():
        proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_until(lambda: accepts(port), timeout=10, message='redis-server listening', alive=[proc])
        return proc

    def announce(task_id):
        # a task event over the real broker, as a worker would send it
        with app.events.default_dispatcher(hostname='mbtest@restart') as dispatcher:
            dispatcher.send('task-succeeded', uuid=task_id, result='1', runtime=0.5)

    redis = start()
    app = make_app(f'redis://127.0.0.1:{port}/0', 'unused')
    stream = mb.stream('celery-restart')
    source = CeleryEventSource(app)
    source.retry_delay = 0.1
    try:
        with caplog.at_level(logging.WARNING, logger='minibatch.contrib'):
            attach(stream, source)
            announce('before')
            wait_until(lambda: stream.stats()['available'] == 1, message='the first event')

            redis.kill()
            redis.wait(10)
            wait_until(lambda: not source.ready.is_set(), message='the source noticing the broker gone')
            redis = start()
            assert source.ready.wait(10), 'the source did not listen again'
            announce('after')
            wait_until(lambda: stream.stats()['available'] == 2, message='the event sent after the restart')
    finally:
        stop(stream, source)
        if redis.poll() is None:
            redis.kill()
            redis.wait(10)
    assert [m.data['task_id'] for m in stream.buffer(processed=False)] == ['before', 'after']
    assert stream.buffer(processed=False)[1].data['task_runtime'] == 0.5
    lines = [r.getMessage() for r in caplog.records if r.name == 'minibatch.contrib']
    assert lines and all('\n' not in line for line in lines)


def accepts(port):
    try:
        socket.create_connection(('127.0.0.1', port), timeout=0.5).close()
        return True
    except OSError:
        return False
