"""Celery task events as a stream: what a worker does, window by window.

    MINIBATCH_REDIS=redis://localhost:6379/0 python examples/celery_events.py

Needs celery with Redis (``pip install 'minibatch[celery]'``) and a Redis
server (MINIBATCH_REDIS, default redis://localhost:6379/0) as Celery's broker.
The example starts a Celery worker itself, as a subprocess running this
file's tasks on a queue of its own (``celery -A celery_events worker -E``:
``-E`` makes the worker send task events), and stops it at the end:

1. a CeleryEventSource listens to the app's events and appends one message
   per task event to the stream 'celery-events';
2. the example sends three tasks: two additions and one that fails;
3. a consumer prints each window of events as it comes: the event, the task
   name (also for task-succeeded events, which carry only the task id), the
   state and the runtime.

It stops by itself once every task has finished (or after 60 s).
"""
import os
import subprocess
import sys
import tempfile
import time
import uuid

from celery import Celery

import minibatch as mb
from minibatch.contrib.celery import CeleryEventSource

BROKER = os.environ.get('MINIBATCH_REDIS', 'redis://localhost:6379/0')
# the worker subprocess gets the queue from the example that started it
QUEUE = os.environ.setdefault('MINIBATCH_EXAMPLE_QUEUE', f'minibatch-example-{uuid.uuid4().hex[:8]}')

app = Celery('celery_events', broker=BROKER)
app.conf.update(task_default_queue=QUEUE, task_ignore_result=True, task_send_sent_event=True,
                broker_connection_retry_on_startup=True)


@app.task
def add(x, y):
    return x + y


@app.task
def divide(x, y):
    return x / y


def start_worker(log):
    here = os.path.dirname(os.path.abspath(__file__))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in [here, os.environ.get('PYTHONPATH')] if p))
    return subprocess.Popen([sys.executable, '-m', 'celery', '-A', 'celery_events', 'worker', '-E', '--pool=solo',
                             '--without-heartbeat', '--without-gossip', '--without-mingle', '-l', 'warning',
                             '-Q', QUEUE, '-n', f'{QUEUE}@%h'], cwd=here, env=env, stdout=log, stderr=subprocess.STDOUT)


def wait_for(condition, timeout, worker):
    deadline = time.monotonic() + timeout
    while not condition():
        if worker.poll() is not None or time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def show(window):
    # runs once per window of events, in this process (executor='inline')
    for event in window.data:
        runtime = f'{event["task_runtime"]:.4f}s' if event['task_runtime'] is not None else ''
        detail = event['task_info'].get('result') or event['task_info'].get('exception') or ''
        print(f'  {event["task_event"]:<15} {event["task_name"]:<22} {event["task_id"][:8]} '
              f'{event["task_state"]:<9} {runtime:<9} {detail}')


def main():
    stream = mb.stream('celery-events')
    stream.clear()
    source = stream.attach(CeleryEventSource(app))
    if not source.ready.wait(10):
        sys.exit(f'cannot listen to Celery events on {BROKER} (set MINIBATCH_REDIS): {source.last_error}')
    log = tempfile.NamedTemporaryFile('w+', prefix='celery-worker-', suffix='.log', delete=False)
    worker = start_worker(log)  # its banner and the failing task's traceback go to the log
    consumer = mb.streaming(stream.name, interval=0.5, executor='inline', blocking=False)(show)
    try:
        ids = {add.delay(2, 3).id, add.delay(40, 2).id, divide.delay(1, 0).id}
        print(f'sent 3 tasks to queue {QUEUE}; events:')

        def all_finished():
            return ids <= {m.data['task_id'] for m in stream.buffer()
                           if m.data['task_event'] in ('task-succeeded', 'task-failed')}

        def all_shown():
            stats = stream.stats()
            return stats['available'] == stats['claimed'] == 0
        if not (wait_for(all_finished, 60, worker) and wait_for(all_shown, 10, worker)):
            log.seek(0)
            sys.exit(f'the tasks did not finish (worker log {log.name}):\n{log.read()[-2000:]}')
    finally:
        stream.stop()
        consumer.stop()
        consumer.thread.join()
        worker.terminate()
        worker.wait(30)
    log.close()
    os.unlink(log.name)  # kept only when something went wrong
    print(f'worker stopped; {stream.stats()["windows"]} windows shown')


if __name__ == '__main__':
    main()
