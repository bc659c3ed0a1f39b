"""The scenarios for the original minibatch 0.6.0 (MongoDB only), run in its own virtualenv.

    <0.6.0 venv>/bin/python benchmarks/legacy.py '{"scenario": ..., "url": ..., "n": ..., ...}'

Prints ``RESULT {json}`` as its last line. Scenarios: ``append_one``,
``append_batch`` (0.6.0's ``batchsize=``), ``end_to_end`` (``executor``
``inline``: 0.6.0's ``minibatch.tests.util.LocalExecutor``; ``process``: its
default process pool) and ``latency``. Only 0.6.0's public API is used.
"""
import json
import os
import sys
import time
import uuid

from common import ROOT, emit_result, rate, run_latency

import minibatch as mb  # noqa: E402

if os.path.abspath(mb.__file__).startswith(os.path.join(ROOT, 'minibatch')):
    raise SystemExit("legacy.py imported this repository's minibatch, not 0.6.0: run it without PYTHONPATH")

import workload  # noqa: E402

CONSUMER = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'consumer.py')


def _name(scenario):
    return f'bench060-{scenario}-{uuid.uuid4().hex[:8]}'


def _docs(n):
    return [{'i': i, 'payload': 'x' * 64} for i in range(n)]


def _cleanup(name):
    mb.Buffer.objects(stream=name).delete()
    mb.Window.objects(stream=name).delete()
    mb.Stream.objects(name=name).delete()


def append_one(url, n, **_):
    name = _name('append1')
    stream = mb.stream(name, url=url)
    try:
        started = time.perf_counter()
        for doc in _docs(n):
            stream.append(doc)
        seconds = time.perf_counter() - started
        return {'rate': rate(n, seconds), 'n': n, 'seconds': seconds}
    finally:
        _cleanup(name)


def _fill_batched(stream, docs):
    for doc in docs:
        stream.append(doc)
    stream.flush()


def append_batch(url, n, batch=1000, **_):
    """0.6.0's batching: ``mb.stream(name, batchsize=...)``, single appends written per batch."""
    name = _name('appendB')
    stream = mb.stream(name, url=url, batchsize=batch)
    try:
        started = time.perf_counter()
        _fill_batched(stream, _docs(n))
        seconds = time.perf_counter() - started
        return {'rate': rate(n, seconds), 'n': n, 'batchsize': batch, 'seconds': seconds}
    finally:
        _cleanup(name)


def end_to_end(url, n, executor='inline', size=100, **_):
    from minibatch.tests.util import LocalExecutor
    name = _name('e2e')
    stream = mb.stream(name, url=url, batchsize=1000)
    try:
        _fill_batched(stream, _docs(n))
        done = [0]

        class Sink:
            def put(self, data):  # called after the window was committed
                done[0] += len(data)
                if done[0] >= n:
                    em._stop = True  # 0.6.0 has no stop(): run() checks this flag between rounds

        kwargs = {'executor': LocalExecutor()} if executor == 'inline' else {}
        em = mb.streaming(name, size=size, url=url, sink=Sink(), **kwargs).make(workload.noop)
        started = time.perf_counter()
        em.run()  # with a pool: shutdown(wait=True) waits for the last commits
        seconds = time.perf_counter() - started
        left = mb.Buffer.objects(stream=name).count()
        if done[0] < n or left:
            raise RuntimeError(f'consumed {done[0]} of {n}; {left} left in the buffer')
        return {'rate': rate(n, seconds), 'n': n, 'size': size, 'executor': executor, 'seconds': seconds}
    finally:
        _cleanup(name)


def latency(url, n, period, executor='process', outdir=None, **_):
    name = _name('latency')
    stream = mb.stream(name, url=url)
    try:
        cmd = [sys.executable, CONSUMER, json.dumps({'impl': 'v060', 'role': 'latency', 'url': url,
                                                     'stream': name, 'size': 1, 'executor': executor,
                                                     'outdir': outdir})]
        return run_latency(stream.append, cmd, outdir, n, period, legacy=True)
    finally:
        _cleanup(name)


def versions():
    from importlib.metadata import version
    return {pkg: version(pkg) for pkg in ('minibatch', 'mongoengine', 'pymongo', 'dill')}


SCENARIOS = {'append_one': append_one, 'append_batch': append_batch, 'end_to_end': end_to_end,
             'latency': latency, 'versions': lambda **_: versions()}


def main(argv):
    opts = json.loads(argv[1])
    emit_result(SCENARIOS[opts.pop('scenario')](**opts))


if __name__ == '__main__':
    main(sys.argv)
