"""A benchmark consumer in its own process, for our minibatch or for minibatch 0.6.0.

    python benchmarks/consumer.py '{"impl": "ours"|"v060", "role": ..., "url": ..., "stream": ...,
                                    "size": N, "executor": "inline"|"process", "outdir": DIR, ...}'

Run with the interpreter of the library under test (our venv or 0.6.0's).
Roles:

* ``latency``: the function writes each message's age when it starts (workload.record_latency);
* ``idle``: counts the database operations this process issues while idle
  (``warmup`` s ignored, then ``duration`` s) and writes ``outdir/idle-<pid>.json``;
* ``scale`` (CPU-bound function, ``work`` iterations) and ``memory`` (no-op
  function): wait for ``outdir/go``, then consume; the sink logs progress.

Every role writes ``outdir/ready-<pid>`` once connected and about to consume.
The consumer runs until SIGTERM (ours stops gracefully; 0.6.0 simply dies).
"""
import json
import os
import sys
import threading
import time

from common import ROOT


class OpCounter:
    """Counts database operations: MongoDB commands, or SQLite round-trip units (see ``sqlite_statement``)."""

    def __init__(self):
        self.lock = threading.Lock()
        self.ops = {}
        self.statements = 0
        self.polls = 0
        self._local = threading.local()

    def add(self, kind):
        with self.lock:
            self.ops[kind] = self.ops.get(kind, 0) + 1

    def sqlite_statement(self, sql):
        # one operation = a read statement outside a transaction, or a whole
        # BEGIN ... COMMIT write transaction: the analogue of one MongoDB round trip
        words = sql.split(None, 2)
        verb = words[0].upper() if words else ''
        with self.lock:
            self.statements += 1
        if verb == 'BEGIN':
            self._local.tx = []
        elif verb in ('COMMIT', 'ROLLBACK', 'END'):
            tx = getattr(self._local, 'tx', None) or []
            self._local.tx = None
            self.add('transaction(' + '+'.join(sorted(set(tx))) + ')')
        elif verb == 'PRAGMA':
            self.add('PRAGMA')
        elif getattr(self._local, 'tx', None) is not None:
            self._local.tx.append(verb)
        else:
            self.add(verb)

    def snapshot(self):
        with self.lock:
            return dict(self.ops), self.statements, self.polls


def install_counter(url, impl):
    counter = OpCounter()
    if url.startswith('sqlite'):
        import sqlite3
        connect = sqlite3.connect

        def traced_connect(*args, **kwargs):
            conn = connect(*args, **kwargs)
            conn.set_trace_callback(counter.sqlite_statement)
            return conn
        # the store calls sqlite3.connect() when it opens a connection: every one is traced
        sqlite3.connect = traced_connect
    else:
        import pymongo.monitoring

        class Listener(pymongo.monitoring.CommandListener):
            def started(self, event):
                counter.add(event.command_name)

            def succeeded(self, event):
                pass

            def failed(self, event):
                pass
        # global listeners apply to clients created afterwards: this runs before the library connects
        pymongo.monitoring.register(Listener())
    return counter


def count_waiter_polls(counter):
    """Count our SQLite waiter's file polls (stat calls, not database operations), if it has one."""
    try:
        from minibatch.store.sqlite import FileWaiter
    except ImportError:
        return
    signature = getattr(FileWaiter, '_signature', None)
    if signature is None:
        return

    def counted(self):
        with counter.lock:
            counter.polls += 1
        return signature(self)
    FileWaiter._signature = counted


def measure_idle(counter, outdir, warmup, duration):
    time.sleep(warmup)  # the consumer backs off to its idle poll interval first
    ops0, statements0, polls0 = counter.snapshot()
    started = time.monotonic()
    time.sleep(duration)
    seconds = time.monotonic() - started
    ops1, statements1, polls1 = counter.snapshot()
    by_kind = {k: ops1.get(k, 0) - ops0.get(k, 0) for k in ops1 if ops1.get(k, 0) - ops0.get(k, 0)}
    result = {'seconds': seconds, 'ops': sum(by_kind.values()), 'ops_per_s': sum(by_kind.values()) / seconds,
              'by_kind': by_kind, 'statements_per_s': (statements1 - statements0) / seconds,
              'waiter_polls_per_s': (polls1 - polls0) / seconds}
    path = os.path.join(outdir, f'idle-{os.getpid()}.json')
    with open(path + '.tmp', 'w') as f:
        json.dump(result, f)
    os.replace(path + '.tmp', path)


def build_emitter(opts, fn, sink):
    if opts['impl'] == 'ours':
        import minibatch as mb
        group = {'group': opts['group']} if opts.get('group') else {}  # a consumer group (the groups scenario)
        em = mb.streaming(opts['stream'], size=opts['size'], url=opts['url'], executor=opts['executor'],
                          sink=sink, **group).make(fn)
        em.stream  # connect now: start-up is not part of what is measured
        return em
    import minibatch as mb  # 0.6.0: connects while building the emitter
    from minibatch.tests.util import LocalExecutor
    kwargs = {'executor': LocalExecutor()} if opts['executor'] == 'inline' else {}
    return mb.streaming(opts['stream'], size=opts['size'], url=opts['url'], sink=sink, **kwargs).make(fn)


def main(argv):
    opts = json.loads(argv[1])
    role, outdir = opts['role'], opts['outdir']
    os.environ['MB_BENCH_OUTDIR'] = outdir
    os.environ['MB_BENCH_WORK'] = str(opts.get('work', 0))
    if opts['impl'] == 'ours' and ROOT not in sys.path:
        sys.path.append(ROOT)  # a fresh clone without an install still finds our minibatch
    counter = install_counter(opts['url'], opts['impl']) if role == 'idle' else None
    import workload
    fn = {'latency': workload.record_latency, 'idle': workload.noop, 'scale': workload.burn,
          'memory': workload.noop}[role]
    sink = workload.ProgressSink(outdir) if role in ('scale', 'memory') else None
    if counter is not None and opts['impl'] == 'ours' and opts['url'].startswith('sqlite'):
        count_waiter_polls(counter)
    em = build_emitter(opts, fn, sink)
    if counter is not None:
        threading.Thread(target=measure_idle, args=(counter, outdir, opts['warmup'], opts['duration']),
                         daemon=True).start()
    with open(os.path.join(outdir, f'ready-{os.getpid()}'), 'w'):
        pass
    if role in ('scale', 'memory'):
        go = os.path.join(outdir, 'go')
        while not os.path.exists(go):
            time.sleep(0.002)
    em.run()


if __name__ == '__main__':
    main(sys.argv)
