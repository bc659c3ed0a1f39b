"""Celery tasks for the test worker of tests/test_celery.py.

The worker is started with ``celery -A tests.celery_tasks worker ...`` and takes
its broker from ``MINIBATCH_CELERY_BROKER`` and its queue from
``MINIBATCH_CELERY_QUEUE`` (one per test, so that concurrent runs do not take
each other's tasks). The test builds its own app with :func:`make_app` and the
same values, so both sides know the tasks by the same names.
"""
import os

from celery import Celery


def make_app(broker, queue):
    """A Celery app on ``broker`` that sends to and consumes ``queue``, with every task event on."""
    app = Celery('minibatch-tests', broker=broker)
    app.conf.update(
        task_default_queue=queue,
        task_send_sent_event=True,        # the client announces task-sent events
        worker_send_task_events=True,     # same as the worker's -E
        broker_connection_retry_on_startup=True,
        task_ignore_result=True,          # no result backend needed
        worker_hijack_root_logger=False,
    )

    @app.task(name='tests.add', shared=False)  # not shared: each test app has its own
    def add(x, y):
        return x + y

    @app.task(name='tests.fail', shared=False)
    def fail(message):
        raise ValueError(message)

    return app


app = make_app(os.environ.get('MINIBATCH_CELERY_BROKER', 'redis://127.0.0.1:6379/0'),
               os.environ.get('MINIBATCH_CELERY_QUEUE', 'minibatch-tests'))
