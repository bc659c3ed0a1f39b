"""The scenarios for our minibatch (either store), run from the orchestrator's process.

Each function takes a store URL and sizes, cleans up its stream, and returns a
dict of figures (``rate`` in messages per second where it applies).
"""
import json
import os
import sys
import time
import uuid

from common import (ROOT, proc_status_kib, rate, read_lines, run_latency, start, stop,
                    wait_for)

if ROOT not in sys.path:
    sys.path.append(ROOT)  # a fresh clone without an install still finds our minibatch

import minibatch as mb  # noqa: E402
import workload  # noqa: E402

CONSUMER = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'consumer.py')


def _name(scenario):
    return f'bench-{scenario}-{uuid.uuid4().hex[:8]}'


def _docs(n):
    return [{'i': i, 'payload': 'x' * 64} for i in range(n)]


def fill(stream, n, batch=1000):
    docs = _docs(n)
    for k in range(0, n, batch):
        stream.append(docs[k:k + batch])


def append_one(url, n):
    stream = mb.stream(_name('append1'), url=url)
    try:
        docs = _docs(n)
        started = time.perf_counter()
        for doc in docs:
            stream.append(doc)
        seconds = time.perf_counter() - started
        return {'rate': rate(n, seconds), 'n': n, 'seconds': seconds}
    finally:
        stream.delete()


def append_batch(url, n, batch=1000):
    """``stream.append(list)`` of ``batch`` messages at a time (one write each)."""
    stream = mb.stream(_name('appendN'), url=url)
    try:
        docs = _docs(n)
        started = time.perf_counter()
        for k in range(0, n, batch):
            stream.append(docs[k:k + batch])
        seconds = time.perf_counter() - started
        return {'rate': rate(n, seconds), 'n': n, 'batch': batch, 'seconds': seconds}
    finally:
        stream.delete()


def append_buffered(url, n, batchsize=1000):
    """``mb.stream(name, batchsize=...)``: appends of single dicts collected and written per batch."""
    stream = mb.stream(_name('appendB'), url=url, batchsize=batchsize)
    try:
        docs = _docs(n)
        started = time.perf_counter()
        for doc in docs:
            stream.append(doc)
        stream.flush()
        seconds = time.perf_counter() - started
        return {'rate': rate(n, seconds), 'n': n, 'batchsize': batchsize, 'seconds': seconds}
    finally:
        stream.delete()


class _Counter:
    """Sink that stops the emitter once ``n`` messages went through (called before each commit)."""

    def __init__(self, n):
        self.n, self.done, self.emitter = n, 0, None

    def put(self, data):
        self.done += len(data)
        if self.done >= self.n:
            self.emitter.stop()


def end_to_end(url, n, executor, size=100):
    """``n`` messages already in the stream, consumed by ``@streaming(size=size)`` until all are committed."""
    name = _name('e2e')
    stream = mb.stream(name, url=url)
    try:
        fill(stream, n)
        sink = _Counter(n)
        em = mb.streaming(name, size=size, url=url, executor=executor, sink=sink).make(workload.noop)
        sink.emitter = em
        em.stream  # connected before the clock starts, like a consumer that was already running
        started = time.perf_counter()
        em.run()  # returns after the last window is committed
        seconds = time.perf_counter() - started
        left = stream.stats()
        if sink.done < n or left.get('available', 0):
            raise RuntimeError(f'consumed {sink.done} of {n}; left in the store: {left}')
        return {'rate': rate(n, seconds), 'n': n, 'size': size, 'executor': executor, 'seconds': seconds,
                'windows': em.stats['windows']}
    finally:
        stream.delete()


def _consumer_cmd(opts):
    return [sys.executable, CONSUMER, json.dumps(opts)]


def latency(url, n, period, executor, outdir):
    name = _name('latency')
    stream = mb.stream(name, url=url)
    try:
        cmd = _consumer_cmd({'impl': 'ours', 'role': 'latency', 'url': url, 'stream': name, 'size': 1,
                             'executor': executor, 'outdir': outdir})
        return run_latency(stream.append, cmd, outdir, n, period)
    finally:
        stream.delete()


def _progress(outdir):
    rows = read_lines(outdir, 'done-')
    return sum(int(count) for count, _ in rows), max((float(t) for _, t in rows), default=None)


def run_consumers(url, name, n, consumers, role, outdir, work=0, timeout=600.0, sample=None):
    """Start ``consumers`` processes on the filled stream ``name``, release them together, wait for ``n``.

    Returns (seconds from release to the last window, [Popen]) with the
    processes still running: the caller stops them. ``sample(procs, done)``
    is called about every 20 ms while waiting (memory sampling, feeding).
    """
    procs = []
    try:
        for k in range(consumers):
            cmd = _consumer_cmd({'impl': 'ours', 'role': role, 'url': url, 'stream': name, 'size': 100,
                                 'executor': 'inline', 'outdir': outdir, 'work': work})
            procs.append(start(cmd, os.path.join(outdir, f'consumer-{k}.log')))
        wait_for(lambda: sum(f.startswith('ready-') for f in os.listdir(outdir)) >= consumers, 60,
                 'consumers ready', procs)
        released = time.time()
        with open(os.path.join(outdir, 'go'), 'w'):
            pass
        deadline = time.monotonic() + timeout
        while True:
            done, last = _progress(outdir)
            if sample is not None:
                sample(procs, done)
            if done >= n:
                return last - released, procs
            for proc in procs:
                if proc.poll() is not None:
                    raise RuntimeError(f'a consumer exited with {proc.returncode} after {done} of {n} messages')
            if time.monotonic() > deadline:
                raise TimeoutError(f'{done} of {n} messages consumed within {timeout:g} s')
            time.sleep(0.02)
    except BaseException:
        for proc in procs:
            stop(proc)
        raise


def scale_out(url_factory, n, consumer_counts, work, outdir_factory):
    """Throughput with 1, 2, 4... competing consumer processes, inline executor, CPU-bound function."""
    results = {}
    for consumers in consumer_counts:
        url = url_factory()
        outdir = outdir_factory(f'scale{consumers}')
        name = _name(f'scale{consumers}')
        stream = mb.stream(name, url=url)
        try:
            fill(stream, n)
            seconds, procs = run_consumers(url, name, n, consumers, 'scale', outdir, work=work)
            for proc in procs:
                stop(proc)
            per = [sum(int(c) for c, _ in read_lines(outdir, f'done-{proc.pid}')) for proc in procs]
            results[consumers] = {'rate': rate(n, seconds), 'n': n, 'seconds': seconds, 'per_consumer': per}
        finally:
            stream.delete()
    return results


def memory(url, n, backlog, outdir):
    """Peak RSS of one consumer (inline executor, no-op function) working through ``n`` messages.

    The stream is fed while the consumer runs, ``backlog`` (+1,000) messages
    at most ahead of it: the consumer sees a long stream, the store a short
    backlog (the MongoDB-wire test server slows down with a long one).
    """
    name = _name('memory')
    stream = mb.stream(name, url=url)
    chunk = _docs(1000)
    appended = [0]
    samples = []
    procs = []

    def feed(done):
        while appended[0] < n and appended[0] - done < backlog:
            k = min(len(chunk), n - appended[0])
            stream.append(chunk[:k])
            appended[0] += k

    def sample(procs, done):
        kib = proc_status_kib(procs[0].pid, 'VmRSS')
        if kib is not None:
            samples.append((time.time(), done, kib))
        feed(done)
    try:
        feed(0)
        seconds, procs = run_consumers(url, name, n, 1, 'memory', outdir, sample=sample)
        peak_hwm = proc_status_kib(procs[0].pid, 'VmHWM')
    finally:
        for proc in procs:
            stop(proc)
        stream.delete()

    def rss_at(fraction):
        # the first sample taken once that share of the stream was processed
        for _, done, kib in samples:
            if done >= fraction * n:
                return kib / 1024
        return None
    peak = max(kib for _, _, kib in samples) / 1024 if samples else None
    early, end = rss_at(0.1), rss_at(1.0)
    return {'rate': rate(n, seconds), 'n': n, 'backlog': backlog, 'peak_rss_mib': peak,
            'vm_hwm_mib': peak_hwm / 1024 if peak_hwm else None,
            'rss_at_10pct_mib': early, 'rss_at_50pct_mib': rss_at(0.5), 'rss_at_end_mib': end,
            'growth_mib': (end - early) if (end is not None and early is not None) else None,
            'samples': len(samples)}


# -- async def functions: windows that wait on I/O ---------------------------
class _SlowHandler:
    """Builds a ThreadingHTTPServer whose every GET answers after ``delay`` seconds (a slow service)."""

    @staticmethod
    def serve(delay):
        import http.server
        import threading

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 (http.server's name)
                time.sleep(delay)
                body = b'{"ok": true}'
                self.send_response(200)
                self.send_header('Content-Length', str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        class Server(http.server.ThreadingHTTPServer):
            request_queue_size = 1024  # the default backlog of 5 would make concurrent clients wait on SYN retries

        server = Server(('127.0.0.1', 0), Handler)
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, daemon=True).start()
        return server


async def _aget(port):
    import asyncio
    reader, writer = await asyncio.open_connection('127.0.0.1', port)
    writer.write(f'GET / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n'.encode())
    await writer.drain()
    answer = await reader.read()
    writer.close()
    return answer.split(b' ', 2)[1] == b'200'


def _get(port):
    import urllib.request
    with urllib.request.urlopen(f'http://127.0.0.1:{port}/', timeout=30) as response:
        return response.status == 200


def async_io(url, n, delay, mode):
    """``n`` windows of one message whose function calls a local HTTP service answering after ``delay`` s.

    ``mode`` ``'async'``: an ``async def`` function on the consumer's event loop
    (``concurrency=n``); ``'process'``: a plain function on the default process
    pool (one call per worker at a time), the reference.
    """
    server = _SlowHandler.serve(delay)
    port = server.server_address[1]
    name = _name('asyncio')
    stream = mb.stream(name, url=url)
    try:
        fill(stream, n)
        sink = _Counter(n)
        if mode == 'async':
            async def fn(window):
                return [await _aget(port)]  # the sink counts a list's items
            em = mb.streaming(name, size=1, url=url, sink=sink, concurrency=n).make(fn)
        else:
            em = mb.streaming(name, size=1, url=url, sink=sink, executor='process').make(lambda w: [_get(port)])
        sink.emitter = em
        em.stream
        started = time.perf_counter()
        em.run()
        seconds = time.perf_counter() - started
        if sink.done < n:
            raise RuntimeError(f'{sink.done} of {n} windows done')
        return {'seconds': seconds, 'n': n, 'delay': delay, 'mode': mode, 'capacity': em.capacity,
                'rate': rate(n, seconds)}
    finally:
        server.shutdown()
        stream.delete()
